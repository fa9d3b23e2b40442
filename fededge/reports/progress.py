"""Progress of long jobs: a bar with elapsed time and ETA in a terminal, plain lines otherwise.

Every long command (``fededge run``, ``train``, ``compare``, and the ServerApp under
``flwr run``) reports through :class:`Progress`: in a terminal a `rich
<https://rich.readthedocs.io>`_ progress bar (what the job is doing, steps done,
elapsed, ETA) with each step's line printed above it; when the output is not a
terminal (a pipe, CI, a log file) the same lines and nothing else, each with its
own ``ETA``. The pace behind the ETA leaves out the first step, which carries the
start-up (data, the engine, the devices connecting).
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from fededge.cli.common import duration_text


class Pace:
    """An ETA from the pace of the steps after the first one seen.

    The first includes start-up; while it is the only one, its pace is used.

    With ``skip_first=False`` the pace is the average over every step so far: right
    for a job whose start-up recurs (a sweep starts the engine for every variant).
    """

    def __init__(self, *, skip_first: bool = True) -> None:
        self.skip_first = skip_first
        self.started = time.perf_counter()
        self._first: tuple[float, float] | None = None  # (done, elapsed) at the first step

    def elapsed(self) -> float:
        """Seconds since the job started."""
        return time.perf_counter() - self.started

    def eta(self, done: float, total: float) -> float | None:
        """Seconds left after ``done`` of ``total`` (None when done or unknown)."""
        elapsed = self.elapsed()
        if done <= 0 or done >= total:
            return None
        if self._first is None:
            self._first = (done, elapsed)
        first_done, first_elapsed = self._first
        if done <= first_done or not self.skip_first:
            return elapsed / done * (total - done)
        return (elapsed - first_elapsed) / (done - first_done) * (total - done)

    def eta_text(self, done: float, total: float) -> str:
        """``"  ETA 1m15s"``, or ``""`` when there is none."""
        left = self.eta(done, total)
        return "" if left is None else f"  ETA {duration_text(left)}"


class Progress:
    """One job's progress (see the module docstring); use it as a context manager.

    Parameters
    ----------
    what : what the bar says while the job runs ("rounds", "streamed").
    total : steps in the job.
    stream : where it goes (default stdout); a bar only when it is a terminal.
    skip_first : see :class:`Pace`; the bar shows the same ETA as the plain lines.
    """

    def __init__(
        self,
        what: str,
        total: float,
        *,
        stream: IO[str] | None = None,
        skip_first: bool = True,
    ) -> None:
        from rich.console import Console

        self.what, self.total = what, total
        self.pace = Pace(skip_first=skip_first)
        self.console = Console(file=stream or sys.stdout, highlight=False, soft_wrap=True)
        self.live = self.console.is_terminal
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import (
                Progress as Bar,
            )

            self._bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("elapsed"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[eta]}"),
                console=self.console,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.what, total=self.total, eta="")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the bar (it stays on screen, as finished as the job got)."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def set_total(self, total: float) -> None:
        """The job's size, once it is known."""
        self.total = total
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def phase(self, text: str) -> None:
        """What the job is doing before its steps start (loading data, starting the engine)."""
        if self._bar is not None:
            self._bar.update(self._task, description=f"{self.what}: {text}")
        else:
            print(f"  {text}", flush=True)

    def step(self, done: float, line: str | None = None) -> None:
        """``done`` of ``total`` steps finished.

        ``line`` says how it went (printed above the bar, or as a plain line
        ending in the ETA).
        """
        eta = self.pace.eta_text(done, self.total)
        if self._bar is not None:
            self._bar.update(self._task, completed=done, description=self.what, eta=eta.strip())
            if line is not None:
                self.console.print(line, markup=False)
        elif line is not None:
            print(line + eta, flush=True)

    def print(self, line: str) -> None:
        """A line of its own (above the bar in a terminal)."""
        if self._bar is not None:
            self.console.print(line, markup=False)
        else:
            print(line, flush=True)


def round_line(server_round: int, rounds: int, row: dict[str, Any], elapsed: float) -> str:
    """A fleet round as the progress lines print it."""
    acc = row["accuracy"]
    acc_text = f"{100 * acc:6.2f}%" if acc == acc else "   -   "
    return (
        f"round {server_round:>3}/{rounds}  acc {acc_text}  "
        f"saved {100 * row['cum_computation_saved']:5.1f}%  ok {row['ok']}/{row['sampled']}"
        f"  dropped {row['dropped']}  failed {row['failed'] + row['rejected']}  "
        f"budget out {int(row['budget_exhausted'])}  sim {row['cum_sim_s']:8.1f}s  "
        f"elapsed {duration_text(elapsed)}"
    )
