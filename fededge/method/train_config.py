"""The training loop's inputs and output: its data, the main net's optimizer, a run's result.

:class:`TrainConfig` is what :class:`~fededge.method.training.LocalTrainer` reads for
the main net; a scenario's ``[train]`` section becomes one when the scenario is
loaded (:mod:`fededge.config.savers`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from fededge.cost.ledger import Ledger
from fededge.errors import SettingsError

__all__ = ["BatchSource", "TrainConfig", "TrainResult", "loss_divisor"]


class BatchSource(Protocol):
    """What the loop needs from a dataset: a vectorised, seeded batch accessor."""

    def batch(
        self, indices: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """The images and labels of ``indices``, augmented with ``generator``'s draws."""
        ...


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer and batching of the main net.

    Parameters
    ----------
    batch_size : instances per main-net mini-batch (and per streamed mini-batch).
    lr, momentum, weight_decay, nesterov : SGD hyper-parameters.
    """

    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.5
    weight_decay: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size!r}")
        if not self.lr > 0.0:
            problems.append(f"lr must be > 0, got {self.lr!r}")
        if not 0.0 <= self.momentum < 1.0:
            problems.append(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0.0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.nesterov and self.momentum == 0.0:
            problems.append("nesterov needs momentum > 0")
        if problems:
            raise SettingsError.from_problems("TrainConfig", problems)


@dataclass(frozen=True)
class TrainResult:
    """A run's ledger and the arrivals it left unprocessed (budget ran out)."""

    ledger: Ledger
    leftover: Tensor  # (k,) int64 dataset indices, in arrival order


def loss_divisor(rule: str, kept: int, streamed: int) -> float:
    """What a step's summed loss over ``kept`` instances is divided by (``loss_norm``)."""
    if rule == "kept":
        return float(kept)
    if rule == "streamed":
        return float(streamed)
    return math.sqrt(kept * streamed)
