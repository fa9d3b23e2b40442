"""Combining the good replies of a round into the next global model.

``server.aggregation``: FedAvg (weighted by instances trained, the default) or a
robust rule from Flower's strategies -- coordinate-wise median, trimmed mean
(``flwr.serverapp.strategy.fedtrimmedavg.trim_mean``), Krum and Multi-Krum
(``flwr.serverapp.strategy.multikrum.select_multikrum``). Replies are taken in
device order, so the same seed gives the same model whatever order they arrived in.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from fededge.config.schema import ServerSection
from fededge.wire import array_numpy

#: ``(device, weights, weight in the average)`` of one good reply.
Good = tuple[int, dict[str, np.ndarray], float]


def aggregate(good: list[Good], server: ServerSection) -> ArrayRecord | None:
    """The aggregate of the good replies by ``server.aggregation`` (in device order)."""
    good.sort(key=lambda item: item[0])
    rule = server.aggregation
    if rule in ("median", "trimmed_mean"):
        from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

        beta = server.trim_fraction
        out = {}
        for name in good[0][1]:
            stacked = np.stack([weights[name].astype(np.float64) for _, weights, _ in good])
            out[name] = np.median(stacked, axis=0) if rule == "median" else trim_mean(stacked, beta)
        return record_of(out)
    if rule in ("krum", "multikrum"):
        from flwr.serverapp.strategy.multikrum import select_multikrum

        contents = [
            RecordDict({"arrays": record_of(weights), "metrics": MetricRecord({"i": i})})
            for i, (_, weights, _) in enumerate(good)
        ]
        f = server.byzantine
        select = 1 if rule == "krum" else max(1, len(good) - f)
        chosen = select_multikrum(contents, f, select)
        picked = {int(str(c.metric_records["metrics"]["i"])) for c in chosen}
        good = [item for i, item in enumerate(good) if i in picked]
    return weighted_mean(good)


def weighted_mean(good: list[Good]) -> ArrayRecord | None:
    """FedAvg: the mean weighted by each reply's weight (None when they sum to 0)."""
    total = sum(weight for _, _, weight in good)
    if total <= 0:
        return None  # nobody trained: keep the global model
    out: dict[str, np.ndarray] = {}
    for _, arrays, weight in good:
        for name, array in arrays.items():
            value = array.astype(np.float64) * (weight / total)
            if name in out:
                out[name] += value
            else:
                out[name] = value
    return record_of(out)


def update_norm(weights: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    """L2 length of ``weights - reference`` over every array."""
    total = sum(
        float(np.sum((v.astype(np.float64) - reference[k]) ** 2)) for k, v in weights.items()
    )
    return math.sqrt(total)


def all_finite(record: ArrayRecord) -> bool:
    """True when every array of ``record`` is finite."""
    return all(np.isfinite(array_numpy(array)).all() for array in record.values())


def record_of(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord of float32 copies, in the given order."""
    return ArrayRecord(
        {name: Array(np.ascontiguousarray(v, dtype=np.float32)) for name, v in arrays.items()}
    )
