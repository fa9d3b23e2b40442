"""The training loop's instruments: where its wall time goes, and which classes it trains.

The loop (:class:`~fededge.method.training.LocalTrainer`) laps a
:class:`PieceClock` after each piece of work; ``bench/reproduce.py`` prints the
seconds beside each piece's MACs (README, "Seconds, not only MACs").
:class:`ClassCounts` counts the labels streamed and trained, so a trace can
show whether the filter favours some classes.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

__all__ = ["PIECES", "ClassCounts", "PieceClock"]

PIECES: tuple[str, ...] = (
    "fetch",
    "filter_decide",
    "sampled_forward",
    "main_forward",
    "main_backward",
    "optimizer",
    "filter_train",
    "bookkeeping",
)
"""The loop's pieces whose wall time :class:`PieceClock` keeps apart.

``fetch``: gather and augment a batch; ``filter_decide``: the filter's
inference and keep/sample decision; ``sampled_forward``: the main net's
forward-only pass on the uncertainty-sampled instances and the filter's labels
from it; ``main_forward``: the main net's forward and loss on the trained
instances; ``main_backward``: ``zero_grad`` and ``loss.backward()`` (EMP's
scoring, selection and pruned products included); ``optimizer``: the SGD step;
``filter_train``: the filter's training step; ``bookkeeping``: the rest (budget
checks, the ledger, the queue, the filter's labels from the trained losses).
"""


class PieceClock:
    """Wall seconds of the training loop, piece by piece (:data:`PIECES`).

    Each :meth:`lap` charges the time since the previous lap (or :meth:`mark`) to
    one piece, so the pieces add up to the loop's whole wall time: nothing goes
    uncounted. One ``perf_counter`` call per piece of work (~0.1 µs).
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(PIECES, 0.0)
        self._mark = time.perf_counter()

    def mark(self) -> None:
        """Start timing from now (what came before is charged to nothing)."""
        self._mark = time.perf_counter()

    def lap(self, piece: str) -> None:
        """Charge the time since the previous lap or mark to ``piece``."""
        now = time.perf_counter()
        self.seconds[piece] += now - self._mark
        self._mark = now


class ClassCounts:
    """Labels streamed through the filter (or trained in a full phase) and labels trained.

    Off unless ``enabled``: a label count per step (and its copy off an
    accelerator) that only a researcher's trace reads.

    Attributes
    ----------
    counts : dict of str to Tensor
        ``"streamed"`` and ``"trained"``: int64 counts per class, as long as the
        largest label seen so far (+1).
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.counts = {
            "streamed": torch.zeros(0, dtype=torch.long),
            "trained": torch.zeros(0, dtype=torch.long),
        }

    def add(self, kind: str, y: Tensor) -> None:
        """Count the labels ``y`` under ``kind`` (``"streamed"`` or ``"trained"``)."""
        if not self.enabled:
            return
        seen = self.counts[kind]
        counts = torch.bincount(y.cpu(), minlength=len(seen))
        if len(counts) > len(seen):
            grown = torch.zeros(len(counts), dtype=torch.long)
            grown[: len(seen)] = seen
            self.counts[kind] = seen = grown
        seen[: len(counts)] += counts
