"""fededge.wire: reading Flower Arrays without np.load gives what np.load gives."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fededge.wire import array_numpy, record_tensors


def npy_array(value: np.ndarray) -> Array:
    """An Array holding exactly what ``np.save`` writes for ``value`` (any order, endianness)."""
    buffer = io.BytesIO()
    np.save(buffer, value, allow_pickle=False)
    return Array(
        dtype=str(value.dtype),
        shape=tuple(value.shape),
        stype="numpy.ndarray",
        data=buffer.getvalue(),
    )


VALUES = [
    np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    np.arange(24, dtype=np.float64).reshape(2, 3, 4),
    np.array([-3, 0, 2**40], dtype=np.int64),
    np.array([True, False, True]),
    np.arange(5, dtype=np.uint8),
    np.array([0.5, -1.25], dtype=np.float16),
    np.array(3.5, dtype=np.float32),  # 0-d
    np.zeros((0, 4), dtype=np.float32),  # empty
    np.arange(6, dtype=">f4").reshape(2, 3),  # big-endian
    np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),  # Fortran order
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: f"{v.dtype.str}{v.shape}")
def test_same_as_flowers_reader(value: np.ndarray) -> None:
    array = npy_array(value)
    ours, flowers = array_numpy(array), array.numpy()
    assert ours.dtype == flowers.dtype and ours.shape == flowers.shape
    np.testing.assert_array_equal(ours, flowers)
    np.testing.assert_array_equal(ours, value)


def test_reads_flowers_own_encoding_without_copy() -> None:
    record = ArrayRecord({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)})
    view = array_numpy(record["w"])
    assert not view.flags.writeable  # a view of the message's bytes
    np.testing.assert_array_equal(view, [[0, 1, 2], [3, 4, 5]])


def test_wrong_size_or_type_is_left_to_flower() -> None:
    good = npy_array(np.arange(4, dtype=np.float32))
    truncated = Array(dtype="float32", shape=(4,), stype="numpy.ndarray", data=good.data[:-4])
    with pytest.raises(ValueError):  # np.load's complaint, not a silently short array
        array_numpy(truncated)
    other = Array(dtype="float32", shape=(4,), stype="torch.Tensor", data=good.data)
    with pytest.raises(TypeError, match="Unsupported serialization type"):
        array_numpy(other)


def test_record_tensors_are_writable_copies() -> None:
    weights = {"a": torch.randn(3, 2), "b": torch.arange(4)}
    record = ArrayRecord(weights)
    tensors = record_tensors(record)
    assert list(tensors) == ["a", "b"]
    for name, tensor in tensors.items():
        assert torch.equal(tensor, weights[name])
        tensor.add_(1)  # writable, and not the message's bytes
    assert torch.equal(record_tensors(record)["a"], weights["a"])


def test_the_ledger_round_trips_exactly_through_reply_metrics() -> None:
    import math

    from flwr.app import MetricRecord
    from flwr.common.serde import metric_record_from_proto, metric_record_to_proto

    from fededge.cost.ledger import Ledger
    from fededge.wire import ledger_metrics, metrics_ledger

    ledgers = [
        Ledger(arrived=64, streamed=64, trained=13, steps=1, main_forward_macs=10**12 + 1),
        Ledger(budget_macs=math.inf, loss_sum=math.nan, wall_s=0.1 + 0.2),
        Ledger(budget_macs=2.5e9, precision_saved_macs=1 / 3, loss_sum=-math.inf),
    ]
    for ledger in ledgers:
        # through Flower's own (protobuf) serialisation, as a reply travels
        sent = metric_record_to_proto(MetricRecord(ledger_metrics(ledger))).SerializeToString()
        proto = type(metric_record_to_proto(MetricRecord({})))()
        proto.ParseFromString(sent)
        back = metrics_ledger(dict(metric_record_from_proto(proto)))
        assert repr(back) == repr(ledger)  # NaN included (NaN != NaN: compare the reprs)
    no_budget = {k: 0.0 for k in Ledger.field_names() if k != "budget_macs"}
    assert metrics_ledger(no_budget).budget_macs == math.inf  # absent: no budget
