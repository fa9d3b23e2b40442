"""The ``fededge`` command line: the parser, its help, and what every command's exit means.

Subcommands, one module each: ``run`` (:mod:`fededge.cli.run`: a scenario on
Flower's simulation engine), ``train`` (:mod:`fededge.cli.train`: one device, no
Flower), ``compare`` and ``report`` (:mod:`fededge.cli.compare`), ``calibrate``
(:mod:`fededge.cli.calibrate`), ``deploy`` (:mod:`fededge.cli.deploy`).
User mistakes (a :class:`~fededge.errors.FedEdgeError`) print a short message
and exit with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from fededge import __version__
from fededge.cli.calibrate import add_calibrate
from fededge.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    add_verbose_everywhere,
)
from fededge.cli.compare import add_compare, add_report
from fededge.cli.deploy import add_deploy
from fededge.cli.run import add_run
from fededge.cli.train import add_train
from fededge.errors import FedEdgeError

Handler = Callable[[argparse.Namespace], int]


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
    """Help that shows each option's default, unless its text already says it.

    The ``example:`` epilog keeps its lines.
    """

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
    """Use :class:`DefaultsHelpFormatter` in ``parser`` and every subcommand's parser.

    Each one's help ends with its example from :data:`EXAMPLES`.
    """
    parser.formatter_class = DefaultsHelpFormatter
    if words in EXAMPLES and not parser.epilog:
        parser.epilog = f"example:\n  {EXAMPLES[words]}"
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                _show_defaults(child, f"{words} {name}".strip())


_SUBCOMMANDS: list[Callable[[Any], None]] = [
    add_run,
    add_train,
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
