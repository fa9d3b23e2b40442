"""FleetStrategy: weighted averaging, rejection of poisoned replies, failures, skipped rounds."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fededge.config.scenario import parse_scenario
from fededge.cost.ledger import Ledger
from fededge.reports.fleet_report import FleetReport
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


def _metrics(device: int, n: int, /, **changes: Any) -> dict[str, Any]:
    m: dict[str, Any] = {k: 0.0 for k in Ledger.field_names() if k != "budget_macs"}
    m.update(
        trained=n,
        streamed=n,
        arrived=n,
        baseline_macs=10 * n,
        main_forward_macs=3 * n,
    )
    m.update(
        {
            "num-examples": n,
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
    n: int,
    /,
    *,
    arrays: dict[str, np.ndarray] | None = None,
    **changes: Any,
) -> Message:
    request = Message(RecordDict(), dst_node_id=100 + device, message_type="train")
    if arrays is None:
        arrays = {"w": np.full((2, 2), value, np.float32), "b": np.full(2, value, np.float32)}
    content = RecordDict({"metrics": MetricRecord(_metrics(device, n, **changes))})
    content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return Message(content, reply_to=request)


def _error(device: int) -> Message:
    request = Message(RecordDict(), dst_node_id=100 + device, message_type="train")
    return Message(Error(code=0, reason="boom"), reply_to=request)


def test_average_is_weighted_by_instances_trained(tmp_path: Path) -> None:
    strategy = _strategy(tmp_path)
    got = strategy.aggregate_round(1, [_reply(0, 1.0, 1), _reply(1, 3.0, 3)])
    arrays = got.arrays
    assert arrays is not None
    # (1 * 1.0 + 3 * 3.0) / 4 = 2.5
    np.testing.assert_allclose(arrays["w"].numpy(), np.full((2, 2), 2.5))
    assert [r["status"] for r in got.rows] == ["ok", "ok"]


def test_reply_order_does_not_change_the_average(tmp_path: Path) -> None:
    strategy = _strategy(tmp_path)
    replies = [_reply(d, 0.1 * d + 1 / 3, d + 1) for d in range(6)]
    got = strategy.aggregate_round(1, replies)
    first = got.arrays
    random.Random(0).shuffle(replies)
    got = strategy.aggregate_round(1, replies)
    second = got.arrays
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
    poisoned = _reply(2, 1000.0, 50, **bad)
    got = strategy.aggregate_round(1, [_reply(0, 1.0, 1), _reply(1, 1.0, 1), poisoned])
    arrays = got.arrays
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), np.ones((2, 2)))  # the poison is not in it
    rejected = [r for r in got.rows if r["status"] == "rejected"]
    assert len(rejected) == 1 and reason in rejected[0]["reason"]


def test_failures_and_dropouts_are_counted_and_round_skipped_below_minimum(tmp_path: Path) -> None:
    strategy = _strategy(tmp_path, min_replies=2)
    dropped = _reply(3, 9.0, 0, dropped=1)
    got = strategy.aggregate_round(1, [_reply(0, 1.0, 4), _error(1), dropped])
    arrays = got.arrays
    assert arrays is None  # 1 good reply < min_replies = 2: the global model is kept
    assert got.skipped
    statuses = sorted(r["status"] for r in got.rows)
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


def _stock_reply(node: int, value: float, examples: float) -> Message:
    """What a stock Flower client sends: weights and num-examples, no ledger."""
    request = Message(RecordDict(), dst_node_id=node, message_type="train")
    arrays = {"w": np.full((2, 2), value, np.float32), "b": np.full(2, value, np.float32)}
    content = RecordDict({"metrics": MetricRecord({"num-examples": examples})})
    content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return Message(content, reply_to=request)


def test_stock_flower_reply_is_rejected_naming_the_missing_keys_unless_foreign_accepted(
    tmp_path: Path,
) -> None:
    strategy = _strategy(tmp_path, min_replies=1)
    got = strategy.aggregate_round(1, [_reply(0, 1.0, 4), _stock_reply(900, 5.0, 10)])
    rejected = [r for r in got.rows if r["status"] == "rejected"]
    assert len(rejected) == 1
    assert "ledger keys missing: arrived, streamed" in rejected[0]["reason"]
    assert 'server.foreign_devices = "accept"' in rejected[0]["reason"]

    scenario = parse_scenario(
        SCENARIO, overrides=["server.min_replies=1", 'server.foreign_devices="accept"']
    )
    report = FleetReport(tmp_path / "accept", "t", ["a", "b"], plots=False)
    strategy = FleetStrategy(scenario, report, evaluate_fn=lambda r, a: (0.5, 1.0), expected=SHAPES)
    # a foreign device claiming 1e308 examples counts for one round's arrivals (64)
    got = strategy.aggregate_round(1, [_reply(0, 1.0, 64), _stock_reply(900, 5.0, 1e308)])
    arrays = got.arrays
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), np.full((2, 2), 3.0))  # (64*1 + 64*5) / 128
    foreign = next(r for r in got.rows if r["kind"] == "foreign")
    assert foreign["status"] == "ok" and foreign["device"] == 6  # after the fleet's 0..5
    assert foreign["tier"] == "foreign" and foreign["num_examples"] == 64
    assert np.isnan(foreign["spent_macs"]) and np.isnan(foreign["baseline_macs"])
    row = report.add_round(
        1, got.rows, selected=2, accuracy=None, loss=None, skipped=False, wall_s=0.0
    )
    assert row["foreign"] == 1 and row["trained"] == 64  # its compute is not counted
    assert row["sampled"] == 2  # devices the round was sent to (not the filter's "selected")
    assert row["spent_macs"] == 3 * 64 and row["baseline_macs"] == 10 * 64


def _with_device_record(msg: Message, record: dict[str, Any]) -> Message:
    msg.content["device"] = ConfigRecord(record)
    return msg


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (lambda: _reply(0, 1.0, 4, **{"device-id": float("nan")}), "non-finite metrics"),
        (lambda: _reply(0, 1.0, 4, **{"device-id": float("inf")}), "non-finite metrics"),
        (
            lambda: _with_device_record(_reply(0, 1.0, 4), {"profile": "x"}),  # no tier
            "",
        ),
        (
            lambda: _reply(
                0, 1.0, 4, arrays={"w": np.ones((2, 2), np.float64), "b": np.ones(2, np.float64)}
            ),
            "dtype float64, expected float32",
        ),
        (
            lambda: _reply(0, 1.0, 4, arrays={"w": np.ones((2, 2), bool), "b": np.ones(2, bool)}),
            "dtype bool",
        ),
        (
            lambda: _reply(
                0, 1.0, 4, arrays={"w": np.ones((2, 2), np.int64), "b": np.ones(2, np.int64)}
            ),
            "dtype int64",
        ),
        (
            lambda: _reply(
                0,
                1.0,
                4,
                arrays={"w": np.array([["a", "b"], ["c", "d"]]), "b": np.ones(2, np.float32)},
            ),
            "dtype <U1",
        ),
    ],
)
def test_crafted_replies_never_raise_out_of_aggregation(
    tmp_path: Path, reply: Any, reason: str
) -> None:
    strategy = _strategy(tmp_path, min_replies=1)
    try:
        crafted = reply()
    except Exception:  # Flower itself refuses to build it: nothing reaches the server
        pytest.skip("Flower refuses to build this reply")
    got = strategy.aggregate_round(1, [_reply(1, 2.0, 4), crafted])
    arrays = got.arrays
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), np.full((2, 2), 2.0 if reason else 1.5))
    statuses = {r["device"]: r["status"] for r in got.rows}
    assert statuses[1] == "ok"
    if reason:
        bad = next(r for r in got.rows if r["status"] == "rejected")
        assert reason in bad["reason"]


def test_round_config_carries_what_a_stock_flower_client_reads(tmp_path: Path) -> None:
    strategy = _strategy(tmp_path)

    class Grid:
        def get_node_ids(self) -> list[int]:
            return [1, 2]

    messages = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), Grid()))  # type: ignore[arg-type]
    config = messages[0].content["config"]
    assert config["lr"] == strategy.scenario.train.lr and config["local-epochs"] == 1
    assert config["batch-size"] == strategy.scenario.train.batch_size


def test_a_run_in_which_nothing_trained_is_a_failure(tmp_path: Path) -> None:
    strategy = _strategy(tmp_path, min_replies=1)
    got = strategy.aggregate_round(1, [_reply(0, 1.0, 0), _error(1)])
    strategy.report.add_round(
        1, got.rows, selected=2, accuracy=0.1, loss=2.3, skipped=False, wall_s=0.0
    )
    failure = strategy.report.failure()
    assert failure is not None and "no device trained a single instance in 1 rounds" in failure
    assert "boom" in failure  # the reasons the devices gave
    got = strategy.aggregate_round(2, [_reply(0, 1.0, 4)])
    strategy.report.add_round(
        2, got.rows, selected=1, accuracy=0.2, loss=2.0, skipped=False, wall_s=0.0
    )
    assert strategy.report.failure() is None


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"num-examples": 1e308}, "num-examples 1e+308 differs from trained 4"),
        ({"trained": 1e12, "num-examples": 1e12}, "trained 1e+12 <= streamed 4"),
        ({"main_forward_macs": -5.0}, "negative ledger values: main_forward_macs"),
        ({"arrived": 1e6, "streamed": 1e6}, "arrived 1e+06 > 64"),
        ({"budget_macs": 1.0}, "spent 12 MACs > its budget 1"),
        ({"filtered_out": 9.0}, "filtered_out 9 > streamed 4"),
    ],
)
def test_impossible_ledgers_are_rejected(
    tmp_path: Path, changes: dict[str, Any], reason: str
) -> None:
    strategy = _strategy(tmp_path, min_replies=1)
    got = strategy.aggregate_round(1, [_reply(1, 2.0, 4), _reply(0, 9.0, 4, **changes)])
    arrays = got.arrays
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), np.full((2, 2), 2.0))
    bad = next(r for r in got.rows if r["status"] == "rejected")
    assert reason in bad["reason"]


def test_a_node_cannot_speak_for_another_device_or_invent_a_tier(tmp_path: Path) -> None:
    strategy = _strategy(tmp_path, min_replies=1)
    strategy.node_to_device = {100: 0, 101: 1}  # what the query phase found
    # node 101 (device 1) claims to be device 0; node 100 is device 0
    liar = _reply(0, 9.0, 4)
    liar.metadata.__dict__["_src_node_id"] = 101
    got = strategy.aggregate_round(1, [_reply(0, 2.0, 4), liar])
    arrays = got.arrays
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), np.full((2, 2), 2.0))
    reasons = [r["reason"] for r in got.rows if r["status"] == "rejected"]
    assert reasons == ["device-id 0, but this node is device 1"]
    fake = _with_device_record(_reply(1, 9.0, 4), {"tier": "vip", "profile": "x", "kind": "real"})
    got = strategy.aggregate_round(2, [_reply(0, 2.0, 4), fake])
    reasons = [r["reason"] for r in got.rows if r["status"] == "rejected"]
    assert reasons == ["unknown tier 'vip'"]


def _sent(strategy: FleetStrategy, value: float = 0.0) -> None:
    """Have ``strategy`` send global weights of ``value`` (what updates are measured from)."""

    class Grid:
        def get_node_ids(self) -> list[int]:
            return [1]

    arrays = ArrayRecord(
        {"w": Array(np.full((2, 2), value, np.float32)), "b": Array(np.full(2, value, np.float32))}
    )
    list(strategy.configure_train(1, arrays, ConfigRecord(), Grid()))  # type: ignore[arg-type]


@pytest.mark.parametrize("action", ["clip", "reject"])
def test_an_update_far_longer_than_the_rounds_others_is_clipped_or_rejected(
    tmp_path: Path, action: str
) -> None:
    scenario = parse_scenario(
        SCENARIO, overrides=["server.min_replies=1", f'server.norm_action="{action}"']
    )
    report = FleetReport(tmp_path, "t", ["a", "b"], plots=False)
    strategy = FleetStrategy(scenario, report, evaluate_fn=lambda r, a: (0.5, 1.0), expected=SHAPES)
    _sent(strategy)
    honest = [_reply(d, 1.0, 4) for d in range(3)]  # updates of length sqrt(6)
    got = strategy.aggregate_round(1, [*honest, _reply(3, 1000.0, 4)])
    arrays = got.arrays
    assert arrays is not None
    attacker = next(r for r in got.rows if r["device"] == 3)
    if action == "reject":
        assert attacker["status"] == "rejected" and "update norm" in attacker["reason"]
        np.testing.assert_allclose(arrays["w"].numpy(), np.ones((2, 2)))
    else:  # clipped to 10 x the median length: 10.0 per coordinate
        assert attacker["status"] == "ok" and attacker["reason"].startswith("clipped")
        np.testing.assert_allclose(arrays["w"].numpy(), np.full((2, 2), (3 + 10) / 4), rtol=1e-6)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [("fedavg", 250.75), ("median", 1.0), ("trimmed_mean", 1.0), ("krum", 1.0), ("multikrum", 1.0)],
)
def test_robust_aggregation_resists_an_outlier(tmp_path: Path, rule: str, expected: float) -> None:
    overrides = ["server.min_replies=1", f'server.aggregation="{rule}"', "server.norm_bound=0.0"]
    overrides.append("server.trim_fraction=0.25")
    scenario = parse_scenario(SCENARIO, overrides=overrides)
    report = FleetReport(tmp_path, "t", ["a", "b"], plots=False)
    strategy = FleetStrategy(scenario, report, evaluate_fn=lambda r, a: (0.5, 1.0), expected=SHAPES)
    replies = [_reply(d, 1.0, 4) for d in range(3)] + [_reply(3, 1000.0, 4)]
    got = strategy.aggregate_round(1, replies)
    arrays = got.arrays
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), np.full((2, 2), expected), rtol=1e-6)


def test_attack_tiers_send_what_they_are_told() -> None:
    import torch

    from clients.app import attacked

    text = SCENARIO.replace('profile = "rpi4"', 'profile = "rpi4"\nattack = "sign_flip"')
    scenario = parse_scenario(text, overrides=["fleet.tiers[1].attack_scale=2.0"])
    received = {"w": torch.zeros(2)}
    trained = {"w": torch.tensor([1.0, -1.0])}
    honest, flipped = scenario.tiers
    assert attacked(honest, received, trained) is trained
    assert attacked(flipped, received, trained)["w"].tolist() == [-2.0, 2.0]
