"""A device in the fleet follows the single-device loop's update rule and phases across rounds."""

from __future__ import annotations

from typing import Any

import torch

from fededge.config.scenario import parse_scenario
from fededge.fleet import FleetRuntime, transported_weights

SCENARIO = """
[run]
name = "rules"
seed = 3
rounds = 4
[data]
dataset = "mnist"
arrivals_per_round = 160
[train]
batch_size = 32
[savers.eif]
enabled = true
target_ratio = 0.25
full_first = 0.25
full_last = 0.25
[[fleet.tiers]]
name = "phones"
profile = "phone"
count = 1
"""


def test_phases_follow_the_round_and_steps_follow_the_stream() -> None:
    # Prepare: 4 rounds of 160 arrivals (5 streamed batches of 32); rounds 1 and 4 are full
    runtime = FleetRuntime(parse_scenario(SCENARIO))
    weights = transported_weights(runtime.main_net, runtime.weight_names)
    state: dict[str, Any] | None = None
    ledgers = []
    # Execute
    for server_round in range(1, 5):
        result, state = runtime.train_round(0, weights, server_round, state)
        weights = result.weights
        ledgers.append(result.ledger)
    # Assert: full rounds train all 160 without filter inference; filtered rounds keep
    # about a quarter, one main-net step per streamed batch (the paper's rule)
    first, second, third, last = ledgers
    for full in (first, last):
        assert (full.full_trained, full.selected, full.filter_forward_macs) == (160, 0, 0)
        assert full.steps == 5
    for filtered in (second, third):
        assert filtered.full_trained == 0
        assert filtered.filter_forward_macs > 0
        assert filtered.steps == 5
        assert 20 <= filtered.selected <= 60
    assert state is not None and int(state["trainer"]["position"]) == 640
    assert torch.equal(state["trainer"]["queue"], torch.empty(0, dtype=torch.long))
