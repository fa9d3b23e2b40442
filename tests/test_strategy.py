"""FleetStrategy: weighted averaging, rejection of poisoned replies, failures, skipped rounds."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fededge.ledger import Ledger
from fededge.report import FleetReport
from fededge.scenario import parse_scenario
from server.strategy import FleetStrategy

SCENARIO = """
[run]
name = "strategy-test"
[data]
arrivals_per_round = 64
[[fleet.tiers]]
name = "a"
profile = "phone"
count = 4
[[fleet.tiers]]
name = "b"
profile = "rpi4"
count = 2
[server]
min_replies = 2
"""
SHAPES = {"w": (2, 2), "b": (2,)}


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0


def _strategy(tmp_path: Path, min_replies: int = 2) -> FleetStrategy:
    scenario = parse_scenario(SCENARIO, overrides=[f"server.min_replies={min_replies}"])
    report = FleetReport(tmp_path, "t", [t.name for t in scenario.tiers], plots=False)
    return FleetStrategy(scenario, report, evaluate_fn=lambda r, a: (0.5, 1.0), expected=SHAPES)


def _metrics(device: int, trained: int, **changes: Any) -> dict[str, Any]:
    m: dict[str, Any] = {k: 0.0 for k in Ledger.field_names() if k != "budget_macs"}
    m.update(
        trained=trained,
        streamed=trained,
        arrived=trained,
        baseline_macs=10 * trained,
        main_forward_macs=3 * trained,
    )
    m.update(
        {
            "num-examples": trained,
            "device-id": device,
            "dropped": 0,
            "compute_s": 0.1,
            "energy_j": 0.2,
            "upload_s": 0.0,
            "download_s": 0.0,
            "threshold": -1.0,
        }
    )
    m.update(changes)
    return {k: v for k, v in m.items() if v is not None}


def _reply(
    device: int,
    value: float,
    trained: int,
    *,
    arrays: dict[str, np.ndarray] | None = None,
    **changes: Any,
) -> Message:
    request = Message(RecordDict(), dst_node_id=100 + device, message_type="train")
    if arrays is None:
        arrays = {"w": np.full((2, 2), value, np.float32), "b": np.full(2, value, np.float32)}
    content = RecordDict({"metrics": MetricRecord(_metrics(device, trained, **changes))})
    content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return Message(content, reply_to=request)


def _error(device: int) -> Message:
    request = Message(RecordDict(), dst_node_id=100 + device, message_type="train")
    return Message(Error(code=0, reason="boom"), reply_to=request)


def test_average_is_weighted_by_instances_trained(tmp_path: Path) -> None:
    strategy = _strategy(tmp_path)
    arrays, _ = strategy.aggregate_train(1, [_reply(0, 1.0, 1), _reply(1, 3.0, 3)])
    assert arrays is not None
    # (1 * 1.0 + 3 * 3.0) / 4 = 2.5
    np.testing.assert_allclose(arrays["w"].numpy(), np.full((2, 2), 2.5))
    assert [r["status"] for r in strategy._rows] == ["ok", "ok"]


def test_reply_order_does_not_change_the_average(tmp_path: Path) -> None:
    strategy = _strategy(tmp_path)
    replies = [_reply(d, 0.1 * d + 1 / 3, d + 1) for d in range(6)]
    first, _ = strategy.aggregate_train(1, replies)
    random.Random(0).shuffle(replies)
    second, _ = strategy.aggregate_train(1, replies)
    assert first is not None and second is not None
    assert np.array_equal(first["w"].numpy(), second["w"].numpy())


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (
            dict(arrays={"w": np.full((2, 2), np.nan, np.float32), "b": np.zeros(2, np.float32)}),
            "NaN",
        ),
        (
            dict(arrays={"w": np.full((2, 2), np.inf, np.float32), "b": np.zeros(2, np.float32)}),
            "NaN/Inf",
        ),
        (dict(arrays={"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}), "shape"),
        (dict(arrays={"w": np.zeros((2, 2), np.float32)}), "names differ"),
        (dict(filter_forward_macs=None), "ledger keys missing: filter_forward_macs"),
        (dict(spent_macs=float("nan")), "non-finite"),
    ],
    ids=["nan", "inf", "shape", "missing-array", "missing-ledger-key", "nan-metric"],
)
def test_poisoned_replies_are_rejected_and_never_aggregated(
    tmp_path: Path, bad: dict[str, Any], reason: str
) -> None:
    strategy = _strategy(tmp_path)
    poisoned = _reply(2, 1000.0, 100, **bad)
    arrays, _ = strategy.aggregate_train(1, [_reply(0, 1.0, 1), _reply(1, 1.0, 1), poisoned])
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), np.ones((2, 2)))  # the poison is not in it
    rejected = [r for r in strategy._rows if r["status"] == "rejected"]
    assert len(rejected) == 1 and reason in rejected[0]["reason"]


def test_failures_and_dropouts_are_counted_and_round_skipped_below_minimum(tmp_path: Path) -> None:
    strategy = _strategy(tmp_path, min_replies=2)
    dropped = _reply(3, 9.0, 0, dropped=1)
    arrays, _ = strategy.aggregate_train(1, [_reply(0, 1.0, 4), _error(1), dropped])
    assert arrays is None  # 1 good reply < min_replies = 2: the global model is kept
    assert strategy._skipped
    statuses = sorted(r["status"] for r in strategy._rows)
    assert statuses == ["dropped", "failed", "ok"]


class _Grid:
    """The one Grid call configure_train makes."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids

    def get_node_ids(self) -> list[int]:
        return list(self.ids)


@pytest.mark.parametrize(("fraction", "expected"), [(0.1, 2), (0.5, 10)])
def test_partial_participation_sends_to_real_node_ids(
    tmp_path: Path, fraction: float, expected: int
) -> None:
    # Prepare: Flower's node ids are unsigned 64-bit, often above 2**63
    ids = [2**64 - 1 - 7919 * i for i in range(19)] + [12345]
    strategy = _strategy(tmp_path)
    strategy.fraction_train = fraction
    # Execute
    first = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), _Grid(ids)))
    again = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), _Grid(ids)))
    # Assert: ceil(20 * fraction) distinct ids, every one a real node, the same each time
    chosen = [m.metadata.dst_node_id for m in first]
    assert len(set(chosen)) == len(chosen) == expected
    assert set(chosen) <= set(ids)
    assert chosen == [m.metadata.dst_node_id for m in again]
