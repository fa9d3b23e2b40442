"""The ClientApp on its own: replies, device state kept across rounds, dropouts."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

import clients.app as client_module
from clients import state as device_state
from fededge.config.scenario import parse_scenario
from fededge.fleet import FleetRuntime, transported_weights
from server.replies import REQUIRED_METRICS

SCENARIO = """
[run]
name = "client-test"
seed = 1
rounds = 3
[data]
dataset = "mnist"
arrivals_per_round = 192
[train]
batch_size = 32
[savers.eif]
enabled = true
target_ratio = 0.25
[savers.emp]
enabled = true
[[fleet.tiers]]
name = "a"
profile = "phone"
count = 2
[[fleet.tiers]]
name = "flaky"
profile = "rpi4"
count = 1
dropout = 0.99
"""


@pytest.fixture(scope="module", autouse=True)
def _task_identity() -> None:
    """Messages built outside a Flower run need the process's task identity set."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0


@pytest.fixture(scope="module")
def scenario_and_weights() -> tuple[Any, dict[str, torch.Tensor]]:
    scenario = parse_scenario(SCENARIO)
    runtime = FleetRuntime(scenario)
    return scenario, transported_weights(runtime.main_net, runtime.weight_names)


def _message(scenario: Any, weights: dict[str, torch.Tensor], server_round: int) -> Message:
    config = ConfigRecord(
        {
            "scenario": scenario.text,
            "scenario-digest": scenario.digest,
            "server-round": server_round,
            "state-dir": "",
        }
    )
    content = RecordDict({"arrays": ArrayRecord(weights), "config": config})
    return Message(content, dst_node_id=1, message_type="train")


def _context(device: int) -> Context:
    return Context(
        run_id=1,
        node_id=device + 1,
        node_config={"partition-id": device},
        state=RecordDict(),
        run_config={},
    )


def test_reply_carries_weights_and_a_complete_ledger(scenario_and_weights: Any) -> None:
    scenario, weights = scenario_and_weights
    reply = client_module.train(_message(scenario, weights, 1), _context(0))
    metrics = reply.content.metric_records["metrics"]
    assert all(key in metrics for key in REQUIRED_METRICS)
    assert metrics["streamed"] == 192 and metrics["dropped"] == 0
    assert metrics["num-examples"] == metrics["trained"] > 0
    arrays = reply.content.array_records["arrays"]
    assert set(arrays.keys()) == set(weights)


def test_filter_and_threshold_carry_over_to_the_next_round(
    scenario_and_weights: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario, weights = scenario_and_weights
    context = _context(1)
    client_module.train(_message(scenario, weights, 1), context)
    saved, saved_round = device_state.load(context.state)
    assert saved is not None and saved_round == 1
    threshold_1 = saved["trainer"]["filter"]["threshold"]
    filter_1 = saved["trainer"]["filter"]["net"]
    position_1 = saved["stream"]["position"]
    assert context.state.config_records[device_state.STATE_KEY]["threshold"] == threshold_1

    seen: dict[str, Any] = {}
    original = FleetRuntime.train_round

    def spy(self: FleetRuntime, device: int, w: Any, rnd: int, state: Any, **kw: Any) -> Any:
        seen["state"] = state
        return original(self, device, w, rnd, state, **kw)

    monkeypatch.setattr(FleetRuntime, "train_round", spy)
    client_module.train(_message(scenario, weights, 2), context)
    received = seen["state"]["trainer"]["filter"]
    assert received["threshold"] == threshold_1
    for name, value in filter_1.items():
        assert torch.equal(received["net"][name], value)
    assert seen["state"]["stream"]["position"] == position_1 == 192
    after, after_round = device_state.load(context.state)
    assert after is not None and after_round == 2
    assert after["stream"]["position"] == 384
    assert after["trainer"]["filter"]["threshold"] != threshold_1  # T_l kept adapting


def test_unavailable_device_replies_dropped_without_weights(scenario_and_weights: Any) -> None:
    scenario, weights = scenario_and_weights
    reply = client_module.train(_message(scenario, weights, 1), _context(2))
    assert reply.content.metric_records["metrics"]["dropped"] == 1
    assert "arrays" not in reply.content.array_records
