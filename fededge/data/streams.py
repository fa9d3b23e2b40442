"""Per-device partitions of a dataset and the streams that deliver them.

Partitions (:func:`partition`) split the training set over the fleet:

* ``iid`` -- a seeded permutation cut into near-equal parts;
* ``dirichlet`` -- per class, proportions drawn from Dirichlet(alpha) over the
  devices (small alpha: few classes per device); re-drawn until every device
  holds at least ``min_size`` instances;
* ``shards`` -- the label-sorted set cut into ``devices * shards_per_device``
  shards, each device taking ``shards_per_device`` at random (McMahan et al.).

A :class:`DeviceStream` delivers a device's partition in arrival order (a
seeded shuffle, replayed ``passes`` times, reshuffled per pass): each round the
device receives its next ``rate`` arrivals (fixed, or Poisson with mean
``rate``). Each instance is seen once per pass. Arrivals the device could not
process in its round are either dropped or carried into the next round
(``leftover = "queue"``); both are counted in the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

PartitionScheme = Literal["iid", "dirichlet", "shards"]
LeftoverPolicy = Literal["drop", "queue"]
ArrivalProcess = Literal["fixed", "poisson"]


def partition(
    labels: np.ndarray,
    num_devices: int,
    scheme: PartitionScheme,
    *,
    seed: int,
    alpha: float = 0.5,
    shards_per_device: int = 2,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Split instance indices ``0..len(labels)-1`` over ``num_devices`` devices.

    Returns one sorted-by-arrival int64 index array per device (the order is
    the partition's; streams shuffle it). Deterministic in ``seed``.
    """
    n = len(labels)
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}")
    if num_devices > n:
        raise ValueError(f"cannot split {n} instances over {num_devices} devices")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        return [part.astype(np.int64) for part in np.array_split(rng.permutation(n), num_devices)]
    if scheme == "shards":
        num_shards = num_devices * shards_per_device
        if num_shards > n:
            raise ValueError(f"{num_shards} shards exceed {n} instances")
        order = np.argsort(labels, kind="stable")
        shards = np.array_split(order, num_shards)
        assignment = rng.permutation(num_shards).reshape(num_devices, shards_per_device)
        return [np.concatenate([shards[s] for s in row]).astype(np.int64) for row in assignment]
    if scheme == "dirichlet":
        return _dirichlet(labels, num_devices, alpha, rng, min_size)
    raise ValueError(f"unknown partition scheme {scheme!r}; expected iid, dirichlet or shards")


def _dirichlet(
    labels: np.ndarray, num_devices: int, alpha: float, rng: np.random.Generator, min_size: int
) -> list[np.ndarray]:
    classes = np.unique(labels)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    for _attempt in range(1000):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_devices)]
        for idx in by_class:
            proportions = rng.dirichlet(np.full(num_devices, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(idx)).astype(np.int64)
            for device, piece in enumerate(np.split(idx, cuts)):
                parts[device].append(piece)
        merged = [np.concatenate(p).astype(np.int64) for p in parts]
        if min(len(p) for p in merged) >= min_size:
            return merged
    raise ValueError(
        f"Dirichlet(alpha={alpha}) could not give every one of {num_devices} devices "
        f"at least {min_size} instances in 1000 draws; raise alpha or use fewer devices"
    )


@dataclass
class DeviceStream:
    """The arrivals of one device, round after round.

    Parameters
    ----------
    indices : the device's partition (dataset indices).
    rate : mean arrivals per round.
    seed : seeds the arrival order (per pass) and Poisson draws (per round).
    passes : how often the partition is replayed (each pass reshuffled).
    process : ``fixed`` (exactly ``rate`` per round) or ``poisson``.
    leftover : what happens to arrivals left unprocessed: ``drop`` or ``queue``.

    State (kept by the device across rounds): ``position``, ``backlog``, ``round``.
    """

    indices: np.ndarray
    rate: int
    seed: int
    passes: int = 1
    process: ArrivalProcess = "fixed"
    leftover: LeftoverPolicy = "drop"
    position: int = 0
    round: int = 0
    backlog: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    def __post_init__(self) -> None:
        rng = np.random.default_rng([self.seed, 0])
        self._order = np.concatenate(
            [rng.permutation(self.indices) for _ in range(self.passes)]
        ).astype(np.int64)

    @property
    def length(self) -> int:
        """Total arrivals over the whole stream."""
        return len(self._order)

    @property
    def exhausted(self) -> bool:
        """True once every arrival was delivered and nothing is backlogged."""
        return self.position >= len(self._order) and len(self.backlog) == 0

    def next_round(self) -> np.ndarray:
        """Arrivals of the next round: the backlog first, then new arrivals."""
        if self.process == "poisson":
            count = int(np.random.default_rng([self.seed, 1, self.round]).poisson(self.rate))
        else:
            count = self.rate
        new = self._order[self.position : self.position + count]
        self.position += len(new)
        self.round += 1
        arrivals = np.concatenate([self.backlog, new])
        self.backlog = np.empty(0, dtype=np.int64)
        return arrivals

    def settle(self, leftover: np.ndarray) -> None:
        """Hand back the arrivals the device could not process this round."""
        if self.leftover == "queue":
            self.backlog = np.asarray(leftover, dtype=np.int64)

    def state(self) -> dict[str, int | np.ndarray]:
        """What a device keeps across rounds."""
        return {"position": self.position, "round": self.round, "backlog": self.backlog.copy()}

    def load_state(self, state: dict[str, int | np.ndarray]) -> None:
        """Restore :meth:`state`."""
        self.position = int(state["position"])
        self.round = int(state["round"])
        self.backlog = np.asarray(state["backlog"], dtype=np.int64)
