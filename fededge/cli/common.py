"""What the commands share: flags, exit codes, and how progress lines write a duration.

The fleet-resource flags (``fededge run`` and ``compare``), ``--set``, ``-v``
after any subcommand.
"""

from __future__ import annotations

import argparse
from typing import Any

#: Exit status of a user mistake (a :class:`~fededge.errors.FedEdgeError`).
EXIT_USAGE = 2
#: Exit status after Ctrl-C (or SIGTERM).
EXIT_INTERRUPTED = 130
#: The run finished but produced nothing usable (no device trained).
EXIT_FAILED = 1


def add_set_flag(p: Any, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable): scenario overrides, collected in ``args.overrides``."""
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )


def add_resource_flags(p: Any) -> None:
    """The ``[simulation]`` resources as flags.

    ``--client-cpus``, ``--max-concurrent``, ``--threads-per-client``.
    """
    p.add_argument("--client-cpus", type=float, default=None, help="CPUs per simulated client")
    p.add_argument("--max-concurrent", type=int, default=None, help="clients running at once")
    p.add_argument(
        "--threads-per-client", type=int, default=None, help="torch threads in each client"
    )


def resource_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` overrides for the resource flags given (``--set`` ones first, flags win)."""
    overrides = list(args.overrides)
    if args.client_cpus is not None:
        overrides.append(f"simulation.client_cpus={float(args.client_cpus)}")
    if args.max_concurrent is not None:
        overrides.append(f"simulation.max_concurrent={int(args.max_concurrent)}")
    if args.threads_per_client is not None:
        overrides.append(f"simulation.threads_per_client={int(args.threads_per_client)}")
    return overrides


def add_verbose_everywhere(parser: argparse.ArgumentParser) -> None:
    """Accept ``-v`` after any subcommand too (``fededge run X -v``), not only before it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.add_argument(
                    "-v",
                    "--verbose",
                    action="store_true",
                    default=argparse.SUPPRESS,  # absent: the top-level flag's value stands
                    help="show Flower/Ray logs (also accepted before the command)",
                )
                add_verbose_everywhere(child)


def duration_text(seconds: float) -> str:
    """``75.0`` -> ``1m15s``; ``3725`` -> ``1h02m``."""
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
