"""``fededge run``: a scenario's fleet on Flower's simulation engine, with its report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fededge import __version__
from fededge.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    add_resource_flags,
    add_set_flag,
    resource_overrides,
)
from fededge.errors import ConfigError, ConfigIssue


def add_run(sub: Any) -> None:
    """Register ``fededge run`` with the subcommands ``sub``."""
    p = sub.add_parser(
        "run",
        help="run a scenario on Flower's simulation engine (Ray)",
        description="Run a scenario file on Flower's simulation engine and write its fleet report.",
    )
    p.add_argument("scenario", help="scenario TOML file")
    add_set_flag(p, "override a scenario field, e.g. --set run.rounds=5 (repeatable)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: run.output_dir or runs/NAME)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last completed round in the output folder",
    )
    p.add_argument(
        "--move-aside",
        action="store_true",
        help="when the output folder already holds a run, rename it to DIR.old-N first "
        "(without it such a folder is refused)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="HOST:PORT",
        help="join an existing Ray cluster (default: simulation.ray_address, else "
        "$RAY_ADDRESS; 'local' starts a local Ray)",
    )
    add_resource_flags(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no per-round progress lines")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the scenario and its data, print the fleet (tiers, budgets, savers) "
        "and exit: nothing is created or started",
    )
    p.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    """``fededge run``: simulate a scenario and print its summary."""
    from fededge.config.scenario import load_scenario

    scenario = load_scenario(args.scenario, resource_overrides(args))
    out_dir = args.out or scenario.output_dir()
    check_data(scenario)  # before anything is created or started
    if args.dry_run:
        print(fleet_text(scenario, out_dir))
        return 0
    _check_output_dir(out_dir, scenario.digest, resume=args.resume, move_aside=args.move_aside)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scenario.toml").write_text(scenario.text)
    print(
        f"fededge {__version__}: {scenario.run.name}: {scenario.num_devices} devices in "
        f"{len(scenario.tiers)} tiers, {scenario.run.rounds} rounds -> {out_dir}"
    )
    from fededge.cli.simulation import simulate
    from fededge.reports.progress import Progress, round_line

    rounds = scenario.run.rounds
    with Progress("rounds", rounds) as bar:

        def on_round(outcome: Any) -> None:
            line = round_line(outcome.server_round, rounds, outcome.row, bar.pace.elapsed())
            bar.step(outcome.server_round, None if args.quiet else line)

        bar.phase(
            f"loading data, starting the engine and {scenario.num_devices} devices "
            "(round 1 includes start-up)"
        )
        try:
            report = simulate(
                scenario,
                out_dir,
                resume=args.resume,
                on_round=on_round,
                ray_address=args.ray_address,
            )
        except KeyboardInterrupt:
            bar.close()
            print(
                f"\ninterrupted: every finished round is in {out_dir}; "
                f"continue with: fededge run {args.scenario} --out {out_dir} --resume",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
    print()
    print(report.summary_text())
    from fededge.reports.pages import render_run

    try:
        page = f" (report: {render_run(out_dir, plots=False)})"  # the run drew its plots
    except FileNotFoundError:  # no round finished: no tables to render
        page = ""
    print(f"\nresults: {out_dir}{page}")
    failure = report.failure()
    if failure is not None:
        print(f"error: {failure}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def fleet_text(scenario: Any, out_dir: Path) -> str:
    """The resolved fleet of a scenario, as ``fededge run --dry-run`` prints it."""
    import math

    run, server = scenario.run, scenario.server
    lines = [
        f"{run.name}: {scenario.num_devices} devices, {run.rounds} rounds, seed {run.seed}, "
        f"{scenario.data.dataset} -> {scenario.main_model} (filter {scenario.filter_model}) "
        f"-> {out_dir}",
        f"{'tier':<16}{'profile':<18}{'devices':>8}{'budget MACs/round':>19}"
        f"{'arrivals':>10}{'dropout':>9}  savers",
    ]
    for tier in scenario.tiers:
        budget = tier.budget_macs
        lines.append(
            f"{tier.name:<16}{tier.profile.name:<18}{tier.count:>8}"
            f"{'unlimited' if math.isinf(budget) else f'{budget:.3g}':>19}"
            f"{tier.arrivals_per_round:>10}{tier.dropout:>9.2f}  {tier.savers.label}"
            + (f" (attack {tier.attack})" if tier.attack != "none" else "")
        )
    lines.append(
        f"server: fraction {server.fraction}, min_replies {server.min_replies}, aggregation "
        f"{server.aggregation}, norm_bound {server.norm_bound} ({server.norm_action}), "
        f"foreign devices {server.foreign_devices}"
    )
    return "\n".join(lines)


def check_data(scenario: Any) -> None:
    """Both splits of the scenario's dataset are there (or may be downloaded): else exit 2."""
    from fededge.config.scenario import data_dir_of
    from fededge.data.loading import locate
    from fededge.errors import DataError

    data = scenario.data
    for split in ("train", "test"):
        try:
            locate(data.dataset, split, data_dir_of(scenario))
        except DataError as exc:
            if data.download and data.data_dir is None:
                return  # asked for: the run downloads it
            field = "data.data_dir" if data.data_dir is not None else "data.dataset"
            raise ConfigError([ConfigIssue(field, str(exc))]) from None


#: Files that mark a folder as holding a run (a finished or an interrupted one).
RUN_MARKERS = ("summary.json", "rounds.parquet", "rounds.csv", "checkpoint", "device_state")


def _check_output_dir(
    out_dir: Path, digest: str, *, resume: bool, move_aside: bool = False
) -> None:
    """The output folder is fit for this run: never overwrite (or mix in) another run.

    With ``--resume`` everything the resume needs must be there and belong to
    this scenario (:func:`server.checkpoint.verify_checkpoint`). Without it, a
    folder that already holds a run is refused (exit 2), or with
    ``--move-aside`` renamed to ``<out>.old-N`` first; nothing in it is changed.
    """
    if resume:
        from server.checkpoint import verify_checkpoint

        verify_checkpoint(out_dir, digest)
        return
    found = [name for name in RUN_MARKERS if (out_dir / name).exists()]
    if not found:
        return
    if move_aside:
        from fededge.reports.sweep import move_aside as rename

        print(f"moved the run in {out_dir} aside to {rename(out_dir, 'old')}", file=sys.stderr)
        return
    raise ConfigError(
        [
            ConfigIssue(
                "--out",
                f"{out_dir} already holds a run ({', '.join(found)}): nothing was changed; "
                "continue it with --resume, choose another --out, or pass --move-aside to "
                f"rename it to {out_dir}.old-N first",
            )
        ]
    )
