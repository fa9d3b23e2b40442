"""The ``fededge`` command line.

Subcommands: ``run`` (a scenario on Flower's simulation engine), ``train`` (one
device, no Flower), and those of later modules (``compare``, ``report``, ...).
User mistakes (a :class:`~fededge.config.errors.FedEdgeError`) print a short message
and exit with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fededge import __version__
from fededge.cli.calibrate import add_calibrate
from fededge.cli.common import (
    add_resource_flags,
    add_verbose_everywhere,
    duration_text,
    resource_overrides,
)
from fededge.cli.compare import add_compare, add_report
from fededge.cli.deploy import add_deploy
from fededge.config.errors import ConfigError, ConfigIssue, FedEdgeError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: The run finished but produced nothing usable (no device trained).
EXIT_FAILED = 1

Handler = Callable[[argparse.Namespace], int]


def _add_run(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run a scenario on Flower's simulation engine (Ray)",
        description="Run a scenario file on Flower's simulation engine and write its fleet report.",
    )
    p.add_argument("scenario", help="scenario TOML file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario field, e.g. --set run.rounds=5 (repeatable)",
    )
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
    from fededge.config.errors import ConfigError, ConfigIssue, DataError
    from fededge.config.scenario import data_dir_of
    from fededge.data.loading import locate

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
    from fededge.config.errors import ConfigError, ConfigIssue

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


def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train one device on a stream, no Flower (quick look at the savers)",
        description="Stream a dataset through the local training loop and print the ledger.",
    )
    p.add_argument(
        "--dataset",
        default="mnist",
        choices=["mnist", "fashion-mnist", "cifar10", "imagefolder"],
        help="dataset to stream",
    )
    p.add_argument(
        "--data-dir", default=None, help="folder with the dataset (MNIST needs none: bundled)"
    )
    p.add_argument("--model", default="lenet5", help="main net (lenet5, resnetN, vgg16, ...)")
    p.add_argument("--filter", default=None, help="filter net (default: by dataset)")
    p.add_argument(
        "--savers",
        default="none",
        choices=["none", "eif", "emp", "eif+emp", "q", "eif+q", "emp+q", "eif+emp+q"],
        help="q: 8-bit training (fededge.method.quantize)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="also write the ledger, accuracy curve and provenance to this JSON file "
        "(an existing file is refused)",
    )
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the training set")
    p.add_argument("--batch-size", type=int, default=64, help="streamed mini-batch size")
    p.add_argument("--lr", type=float, default=0.01, help="main net's learning rate")
    p.add_argument("--momentum", type=float, default=0.5, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=0.0, help="SGD weight decay")
    p.add_argument("--keep-ratio", type=float, default=0.5, help="EMP keep ratio alpha")
    p.add_argument("--target-ratio", type=float, default=0.2, help="EIF R_set")
    p.add_argument("--seed", type=int, default=0, help="seeds the stream, nets and draws")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.set_defaults(handler=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """``fededge train``: one device, one stream, printed ledger and test accuracy."""
    from fededge.method.single import train_single

    _check_train_args(args)
    if args.out is not None and args.out.exists():
        raise ConfigError(
            [ConfigIssue("--out", f"{args.out} exists: nothing was changed; choose another file")]
        )
    from fededge.reports.progress import Progress

    with Progress("streamed", 1) as bar:
        bar.phase("loading data and building the nets")
        result = _train_with_progress(args, train_single, bar)
    print(result.table())
    if args.out is not None:
        _write_train_json(args, result)
        print(f"\nresults: {args.out}")
    return 0


def _train_with_progress(args: argparse.Namespace, train_single: Any, bar: Any) -> Any:
    """``train_single`` with the bar following the stream: in a terminal every
    mini-batch; as plain lines every tenth of the stream."""
    marks = [0]  # the last tenth printed

    def on_streamed(position: int, total: int) -> None:
        if bar.total != total:
            bar.set_total(total)
        tenth = 10 * position // max(total, 1)
        line = None
        if not bar.live and tenth > marks[0]:
            marks[0] = tenth
            line = (
                f"streamed {position:,}/{total:,} ({10 * tenth}%)  "
                f"elapsed {duration_text(bar.pace.elapsed())}"
            )
        bar.step(position, line)

    return train_single(
        dataset=args.dataset,
        data_dir=args.data_dir,
        model=args.model,
        filter_model=args.filter,
        savers=args.savers,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        keep_ratio=args.keep_ratio,
        target_ratio=args.target_ratio,
        seed=args.seed,
        threads=args.threads,
        progress=bar.print,
        on_streamed=on_streamed,
    )


def _write_train_json(args: argparse.Namespace, result: Any) -> None:
    """``fededge train --out``: the ledger, curves and what produced them, as JSON."""
    import json

    from fededge.files import atomic_write_text
    from fededge.reports.fleet_report import jsonable
    from fededge.reports.provenance import code_provenance

    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    options.pop("handler", None)
    data = {
        "name": result.name,
        "accuracy": result.accuracy,
        "loss": result.loss,
        "wall_s": result.wall_s,
        "ledger": result.ledger.to_metrics(),
        "curve": [{"streamed": s, "accuracy": a} for s, a in result.curve],
        "trace": result.trace,
        "options": options,
        "provenance": code_provenance(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(jsonable(data), indent=2) + "\n")


def _check_train_args(args: argparse.Namespace) -> None:
    """Every out-of-range option of ``fededge train`` at once (exit 2, no traceback)."""
    import math

    from fededge.config.errors import ConfigError, ConfigIssue

    rules = [
        ("--epochs", args.epochs, math.isfinite(args.epochs) and args.epochs > 0, "a number > 0"),
        ("--batch-size", args.batch_size, args.batch_size >= 1, "an integer >= 1"),
        ("--lr", args.lr, math.isfinite(args.lr) and args.lr > 0, "a number > 0"),
        ("--momentum", args.momentum, 0 <= args.momentum < 1, "in [0, 1)"),
        ("--weight-decay", args.weight_decay, args.weight_decay >= 0, "a number >= 0"),
        ("--keep-ratio", args.keep_ratio, 0 < args.keep_ratio <= 1, "in (0, 1]"),
        ("--target-ratio", args.target_ratio, 0 < args.target_ratio < 1, "in (0, 1)"),
        ("--threads", args.threads, args.threads is None or args.threads >= 1, "an integer >= 1"),
    ]
    issues = [
        ConfigIssue(flag, f"must be {want}, got {value}")
        for flag, value, ok, want in rules
        if not ok
    ]
    if issues:
        raise ConfigError(issues)


def build_parser() -> argparse.ArgumentParser:
    """The ``fededge`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="fededge",
        description="Federated learning on fleets of constrained edge devices, with "
        "self-supervised instance filtering and error map pruning.",
    )
    parser.add_argument("--version", action="version", version=f"fededge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show Flower/Ray logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    add_verbose_everywhere(parser)
    _show_defaults(parser)
    return parser


#: The example that ends each command's help (keyed by the command's words after ``fededge``).
EXAMPLES: dict[str, str] = {
    "": "fededge run scenarios/quickstart.toml\n  fededge compare scenarios/sweep-budgets.toml "
    "--budgets 0.5,1,2 --savers none,eif+emp\n  fededge train --savers eif+emp --epochs 1",
    "run": "fededge run scenarios/quickstart.toml\n  fededge run scenarios/quickstart.toml "
    "--set savers.eif.enabled=false --set run.name=quickstart-sgd\n  fededge run "
    "scenarios/quickstart.toml --dry-run",
    "train": "fededge train --savers eif+emp --epochs 1\n  fededge train --dataset cifar10 "
    "--data-dir ../shared/data --model resnet20 --savers eif+emp --epochs 1",
    "compare": "fededge compare scenarios/sweep-budgets.toml --budgets 0.5,1,2 "
    "--savers none,eif+emp,eif+emp:auto\n  fededge compare scenarios/sweep-budgets.toml "
    "--budgets 1 --seeds 0,1,2",
    "report": "fededge report runs/quickstart\n  fededge report runs/sweep-budgets-compare "
    "--target 0.95\n  fededge report --columns",
    "calibrate": "fededge calibrate --model lenet5 --out my.json",
    "deploy": "fededge deploy certs --devices 2\n  fededge deploy superlink\n  fededge deploy "
    "run scenarios/real-devices.toml",
    "deploy certs": "fededge deploy certs --devices 2",
    "deploy key": "fededge deploy key runs/deploy/keys/device-2",
    "deploy superlink": "fededge deploy superlink",
    "deploy register": "fededge deploy register runs/deploy/keys/device-0.pub --name pi-kitchen",
    "deploy device": "fededge deploy device --superlink 192.168.1.10:8000 --device-id 0 "
    "--root-certificates ca.crt --auth-key device-0",
    "deploy run": "fededge deploy run scenarios/real-devices.toml",
}


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, unless its text already says it;
    the ``example:`` epilog keeps its lines."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("example"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or action.default is argparse.SUPPRESS:
            return text
        if not action.option_strings:
            return text
        if action.default is None:
            return f"{text} (default: none)"
        return f"{text} (default: %(default)s)"


def _show_defaults(parser: argparse.ArgumentParser, words: str = "") -> None:
    """Use :class:`DefaultsHelpFormatter` in ``parser`` and every subcommand's parser,
    and end each one's help with its example from :data:`EXAMPLES`."""
    parser.formatter_class = DefaultsHelpFormatter
    if words in EXAMPLES and not parser.epilog:
        parser.epilog = f"example:\n  {EXAMPLES[words]}"
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                _show_defaults(child, f"{words} {name}".strip())


_SUBCOMMANDS: list[Callable[[Any], None]] = [
    _add_run,
    _add_train,
    add_compare,
    add_report,
    add_calibrate,
    add_deploy,
]


def _configure_logging(verbose: bool) -> None:
    """Our warnings on stderr; Flower's and Ray's chatter only with ``--verbose``."""
    handler = logging.StreamHandler()
    handler.setLevel(logging.DEBUG if verbose else logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.propagate = verbose
    if not verbose:
        flwr_logger.addFilter(lambda record: record.levelno >= logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fededge`` console command."""
    for key, value in (
        ("FLWR_TELEMETRY_ENABLED", "0"),
        ("RAY_USAGE_STATS_ENABLED", "0"),
        ("FLWR_DISABLE_UPDATE_CHECK", "1"),
    ):
        os.environ.setdefault(key, value)
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    handler: Handler = args.handler
    try:
        code = handler(args)
    except BrokenPipeError:  # `fededge compare ... | head`: the reader left; so do we, quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except FedEdgeError as exc:
        print(f"fededge: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\nfededge: interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    if code == EXIT_INTERRUPTED:
        _exit_despite_stuck_threads(code)
    return code


def _exit_despite_stuck_threads(code: int, grace_s: float = 5.0) -> None:
    """After Ctrl-C, end the process even if a library thread never returns.

    Flower's simulation engine runs ClientApp calls on worker threads that wait
    in ``ray.get``; when Ctrl-C stops the run, Ray is shut down under them and
    such a thread can wait forever -- and the interpreter joins those threads at
    exit. Everything worth keeping is on disk by now (rounds are written
    atomically, Ray is shut down), so after a short grace period the process
    exits without joining them. Does nothing when no other thread is left.
    """
    import threading

    deadline = time.monotonic() + grace_s
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.daemon:
            continue
        thread.join(max(deadline - time.monotonic(), 0.0))
    stuck = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if stuck:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
