"""The fededge ClientApp (Flower Message API): one simulated or real edge device.

A device is built from its partition id (``context.node_config["partition-id"]``)
and the scenario the server sends with every train message (TOML text; parsed
once per process and cached by digest, with the datasets, partitions and model
costs it needs). Its local state lives in ``context.state`` across rounds.

Reply: ``arrays`` (the main net's weights after local training) and
``metrics`` (the round's ledger, simulated time and energy, identity).
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients import state as device_state
from fededge.fleet import FleetRuntime
from fededge.scenario import Scenario, parse_scenario

app = ClientApp()


class _ProcessCache:
    """Per-process cache of parsed scenarios and their runtimes (data, nets, costs).

    A Ray worker hosts many devices over a run: it parses the scenario and loads
    the dataset once, not per message. Only the most recent scenario is kept.
    """

    def __init__(self) -> None:
        self.digest: str | None = None
        self.runtime: FleetRuntime | None = None

    def runtime_for(self, text: str, digest: str) -> FleetRuntime:
        if self.runtime is None or self.digest != digest:
            scenario: Scenario = parse_scenario(text, source="<server>")
            self.runtime = None  # release the old one before loading the new
            self.runtime = FleetRuntime(scenario)
            self.digest = digest
        return self.runtime


_CACHE = _ProcessCache()


def device_id_of(context: Context) -> int:
    """The device (partition) id of this node."""
    config = context.node_config
    for key in ("partition-id", "device-id"):
        if key in config:
            return int(str(config[key]))
    raise KeyError("node_config has no 'partition-id' (simulation) or 'device-id' (deployment)")


class InjectedFault(RuntimeError):
    """Raised on purpose by a device whose tier has ``fail_probability`` > 0."""


def _inject_faults(scenario: Scenario, device_id: int, server_round: int) -> None:
    """The tier's injected faults for this device and round (seeded, reproducible)."""
    tier = scenario.tier_of(device_id)
    if not (tier.fail_probability or tier.slow_probability):
        return
    rng = np.random.default_rng([scenario.run.seed, device_id, server_round, 13])
    fail, slow = rng.random(2)
    if fail < tier.fail_probability:
        raise InjectedFault(f"injected fault: device {device_id} failed in round {server_round}")
    if slow < tier.slow_probability:
        time.sleep(tier.slow_delay_s)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Run one round of local training on this device's stream under its budget."""
    started = time.perf_counter()
    config = msg.content.config_records["config"]
    runtime = _CACHE.runtime_for(str(config["scenario"]), str(config["scenario-digest"]))
    threads = runtime.scenario.simulation.threads_per_client
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    device_id = device_id_of(context)
    server_round = int(str(config["server-round"]))
    state_dir = str(config.get("state-dir", ""))

    state, state_round = device_state.load(context.state)
    if state_dir and (state is None or state_round >= server_round):
        # a resumed run: this process has no state for the device (or a newer one
        # from the interrupted round); take the newest kept before this round
        state, state_round = device_state.read_file(state_dir, device_id, server_round)

    _inject_faults(runtime.scenario, device_id, server_round)
    weights = msg.content.array_records["arrays"].to_torch_state_dict()
    result, new_state = runtime.train_round(device_id, weights, server_round, state)
    if not result.dropped:
        blob = device_state.save(context.state, new_state, server_round, result.threshold)
        if state_dir:
            device_state.write_file(state_dir, device_id, server_round, blob)

    tier = runtime.scenario.tier_of(device_id)
    metrics: dict[str, int | float | list[int] | list[float]] = {
        **{k: v for k, v in result.ledger.to_metrics().items() if math.isfinite(v)},
        "num-examples": result.ledger.trained,
        "device-id": device_id,
        "tier-index": runtime.scenario.tiers.index(tier),
        "dropped": int(result.dropped),
        "compute_s": result.compute_s,
        "energy_j": result.energy_j,
        "upload_s": result.upload_s,
        "download_s": result.download_s,
        "threshold": result.threshold if math.isfinite(result.threshold) else -1.0,
        "real_device": int("device-id" in context.node_config),
        "client_wall_s": time.perf_counter() - started,
        "pid": os.getpid(),
    }
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if not result.dropped:
        content["arrays"] = ArrayRecord(result.weights)
    return Message(content, reply_to=msg)
