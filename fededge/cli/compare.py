"""The ``fededge compare`` and ``fededge report`` subcommands (see :mod:`~fededge.cli.main`).

``compare`` runs a scenario under several budget levels and saver settings and
renders the comparison; ``report`` re-renders a sweep folder, or a single run
folder, from what it saved, without running anything.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from fededge import __version__
from fededge.cli.common import add_resource_flags, add_set_flag, duration_text, resource_overrides
from fededge.config.schema import SAVER_SETTINGS
from fededge.errors import ConfigError, ConfigIssue

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def add_compare(sub: Any) -> None:
    """Register ``fededge compare``."""
    p = sub.add_parser(
        "compare",
        help="compare budget levels and saver settings across a fleet (a sweep)",
        description="Run a scenario under every combination of budget level and saver "
        "setting (same streams and seed), then write side-by-side tables, plots and a "
        "self-contained HTML report. Defaults come from the scenario's [sweep] section. "
        "Finished variants are skipped when the command is run again.",
    )
    p.add_argument("scenario", help="scenario TOML file")
    p.add_argument(
        "--budgets",
        default=None,
        metavar="LEVELS",
        help="budget levels, multipliers of every tier's budget, e.g. 0.25,0.5,1,2 "
        "(tiers without a budget stay unlimited; default: [sweep] budgets or 1)",
    )
    p.add_argument(
        "--savers",
        default=None,
        metavar="SETTINGS",
        help=(
            "saver settings among none,eif,emp,eif+emp; eif:auto and eif+emp:auto choose "
            "R_set from each device's budget (default: [sweep] savers or none,eif+emp)"
        ),
    )
    p.add_argument(
        "--seeds",
        default=None,
        metavar="SEEDS",
        help="run every budget level x saver setting once per seed, e.g. 0,1,2, and report "
        "mean +- sd over seeds (default: [sweep] seeds or the scenario's run.seed)",
    )
    p.add_argument(
        "--target",
        type=float,
        default=None,
        help="target accuracy in (0, 1] for time-to-target (default: [sweep] target_accuracy)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default: runs/NAME-compare)"
    )
    add_set_flag(p, "override a scenario field for every variant, e.g. --set run.rounds=5")
    p.add_argument("--ray-address", default=None, help="join an existing Ray cluster")
    add_resource_flags(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-round progress lines")
    p.set_defaults(handler=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    """``fededge compare``: plan, run (skipping finished variants) and render a sweep."""
    from fededge.config.scenario import load_scenario
    from fededge.reports.compare_page import render_compare
    from fededge.reports.sweep import variant_state
    from fededge.reports.sweep_plan import plan_sweep

    scenario = load_scenario(args.scenario, resource_overrides(args))
    budgets = parse_levels(args.budgets) if args.budgets else None
    savers = parse_savers(args.savers) if args.savers else None
    seeds = parse_seeds(args.seeds) if args.seeds else None
    out = args.out or Path("runs") / f"{scenario.run.name}-compare"
    plan = plan_sweep(
        scenario, out, budgets=budgets, savers=savers, target_accuracy=args.target, seeds=seeds
    )
    print(
        f"fededge {__version__}: {scenario.run.name}: {len(plan.variants)} variants = budget "
        f"levels {', '.join(f'{b:g}x' for b in plan.budgets)} x savers {', '.join(plan.savers)}"
        + (f" x seeds {', '.join(map(str, plan.seeds))}" if plan.seeds else "")
        + "; "
        f"{scenario.num_devices} devices, {scenario.run.rounds} rounds -> {out}"
    )
    for tier in plan.tiers:
        budget = (
            f"{tier.macs:.3g} MACs/round at 1x ({tier.field} = {tier.value:g})"
            if tier.limited
            else "no budget: unlimited at every level"
        )
        print(f"  tier {tier.name} ({tier.count} x {tier.profile}): {budget}")
    todo = [
        p
        for p in plan.variants
        if variant_state(p.folder, p.scenario.digest, p.scenario.run.rounds) != "finished"
    ]
    if len(todo) < len(plan.variants):
        print(f"  {len(plan.variants) - len(todo)} variant(s) already finished: skipped")
    if args.dry_run:
        for p in plan.variants:
            mark = "run" if p in todo else "done"
            print(f"  [{mark}] {p.variant.name} -> {p.folder}")
        return 0

    from fededge.cli.simulation import run_compare
    from fededge.reports.progress import Progress, round_line

    position = {p.variant.name: i + 1 for i, p in enumerate(plan.variants)}
    total = sum(p.scenario.run.rounds for p in todo)  # an upper bound when one resumes
    with Progress("sweep rounds", total, skip_first=False) as bar:  # start-up per variant
        done = [0]  # rounds finished in this invocation

        def on_start(planned: Any, resume: bool) -> None:
            name = planned.variant.name
            verb = "resuming" if resume else "running"
            bar.print(
                f"[{position[name]}/{len(plan.variants)}] {verb} {name}  "
                f"(elapsed {duration_text(bar.pace.elapsed())})"
            )

        def on_round(planned: Any, outcome: Any) -> None:
            done[0] += 1
            line = round_line(
                outcome.server_round, planned.scenario.run.rounds, outcome.row, bar.pace.elapsed()
            )
            bar.step(done[0], None if args.quiet else f"    {line}")

        def after_variant(planned: Any, status: str) -> None:
            if status != "skipped":
                render_compare(out)

        try:
            outcome = run_compare(
                plan,
                ray_address=args.ray_address,
                on_start=on_start,
                on_round=on_round,
                after_variant=after_variant,
            )
        except KeyboardInterrupt:
            bar.close()
            render_compare(out)
            print(
                f"\ninterrupted: finished variants are saved in {out}; run the same command "
                "again to continue (finished variants are skipped, the interrupted one resumes)",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
    comparison = render_compare(out)
    print(f"\nsweep wall time {duration_text(bar.pace.elapsed())}")
    _print_comparison(comparison)
    for name, reason in outcome.failed.items():
        print(f"FAILED {name}: {reason}", file=sys.stderr)
    return EXIT_FAILED if outcome.failed else 0


def _print_comparison(comparison: Any) -> None:
    from fededge.reports.compare_page import H2H_COLUMNS, VARIANT_COLUMNS
    from fededge.reports.pages import formatted_markdown

    print()
    print(formatted_markdown(comparison.variants, VARIANT_COLUMNS[:9]))
    if len(comparison.head_to_head):
        print()
        for line in comparison.findings:
            print(f"- {line}")
        print()
        print(formatted_markdown(comparison.head_to_head, H2H_COLUMNS[:8]))
    print(f"\nreport: {comparison.html}\ntables: {comparison.markdown}")


def add_report(sub: Any) -> None:
    """Register ``fededge report``."""
    p = sub.add_parser(
        "report",
        help="re-render the tables, plots and HTML report of a saved sweep or run",
        description="Re-render from saved results, running nothing: a folder written by "
        "fededge compare (tables, plots, report.html) or by fededge run (plots, report.html).",
    )
    p.add_argument(
        "folder", type=Path, nargs="?", default=None, help="a compare or run output folder"
    )
    p.add_argument(
        "--columns",
        action="store_true",
        help="print what every column of the result tables means, with its unit, and exit",
    )
    p.add_argument(
        "--target", type=float, default=None, help="new target accuracy (sweeps; it is recorded)"
    )
    p.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """``fededge report``: re-render a sweep or run folder."""
    from fededge.reports.compare_page import render_compare
    from fededge.reports.pages import render_run
    from fededge.reports.sweep import MANIFEST

    if args.columns:
        from fededge.reports.columns import as_text

        print(as_text())
        return 0
    if args.folder is None:
        raise ConfigError(
            [
                ConfigIssue(
                    "folder",
                    "missing: pass the --out folder of fededge run or compare (or --columns)",
                )
            ]
        )
    folder: Path = args.folder
    if args.target is not None and not 0 < args.target <= 1:
        raise ConfigError([ConfigIssue("--target", f"must be in (0, 1], got {args.target}")])
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ConfigError(
            [ConfigIssue(str(folder), f"{what}: pass the --out folder of fededge run or compare")]
        )
    if (folder / MANIFEST).exists():
        _print_comparison(render_compare(folder, target_accuracy=args.target))
        return 0
    if (folder / "rounds.parquet").exists() or (folder / "rounds.csv").exists():
        print(f"report: {render_run(folder)}")
        return 0
    raise ConfigError(
        [
            ConfigIssue(
                str(folder),
                f"holds neither a sweep ({MANIFEST}, from fededge compare) nor a run "
                "(rounds.parquet, from fededge run); pass one of those folders",
            )
        ]
    )


# ------------------------------------------------------------------ the flags' lists
def parse_levels(text: str, *, where: str = "--budgets") -> tuple[float, ...]:
    """``"0.25,0.5,1,2"`` -> ``(0.25, 0.5, 1.0, 2.0)``.

    Raises
    ------
    ConfigError
        When an entry is not a finite number > 0 or the list is empty.
    """
    levels: list[float] = []
    issues = []
    for part in (p.strip() for p in text.split(",")):
        try:
            value = float(part)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            issues.append(ConfigIssue(where, f"budget levels must be numbers > 0, got {part!r}"))
        else:
            levels.append(value)
    if not levels and not issues:
        issues.append(ConfigIssue(where, "expected at least one budget level, e.g. 0.5,1,2"))
    if issues:
        raise ConfigError(issues)
    return tuple(levels)


def parse_savers(text: str, *, where: str = "--savers") -> tuple[str, ...]:
    """``"none,eif+emp"`` -> ``("none", "eif+emp")`` (``emp+eif`` is read as ``eif+emp``).

    Raises
    ------
    ConfigError
        When an entry is not one of ``none``, ``eif``, ``emp``, ``eif+emp``,
        ``eif:auto``, ``eif+emp:auto``.
    """
    settings: list[str] = []
    issues = []
    for part in (p.strip().lower() for p in text.split(",")):
        normal = part.replace("emp+eif", "eif+emp")
        if normal not in SAVER_SETTINGS:
            issues.append(
                ConfigIssue(where, f"expected one of {', '.join(SAVER_SETTINGS)}, got {part!r}")
            )
        else:
            settings.append(normal)
    if issues:
        raise ConfigError(issues)
    return tuple(settings)


def parse_seeds(text: str, *, where: str = "--seeds") -> tuple[int, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)``.

    Raises
    ------
    ConfigError
        When an entry is not an integer >= 0.
    """
    seeds: list[int] = []
    issues = []
    for part in (p.strip() for p in text.split(",")):
        if part.isdigit():
            seeds.append(int(part))
        else:
            issues.append(ConfigIssue(where, f"expected integers >= 0, e.g. 0,1,2, got {part!r}"))
    if issues:
        raise ConfigError(issues)
    return tuple(seeds)
