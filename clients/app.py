"""The fededge ClientApp (Flower Message API): one simulated or real edge device.

A device is built from its node config -- ``partition-id`` on a simulated
device, ``device-id`` (plus optional ``device-profile``, ``tier``, ``data-dir``,
``data``, ``threads``) on a real one, see :mod:`fededge.deploy.node_config` -- and the
scenario the server sends with every train message (TOML text; parsed once per
process and cached by digest, with the datasets, partitions and model costs it
needs). Its local state lives in ``context.state`` across rounds.

Reply: ``arrays`` (the main net's weights after local training),
``metrics`` (the round's ledger, simulated time and energy, measured wall
time, identity) and ``device`` (tier, profile and kind: real or simulated).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients import state as device_state
from fededge.config.scenario import Scenario, Tier, parse_scenario
from fededge.deploy.node_config import DeviceSetup, device_tier, parse_node_config
from fededge.fleet import FleetRuntime
from fededge.wire import ledger_metrics, record_tensors

app = ClientApp()


class _ProcessCache:
    """Per-process cache of parsed scenarios and their runtimes (data, nets, costs).

    A Ray worker hosts many devices over a run: it parses the scenario and loads
    the dataset once, not per message. Only the most recent scenario is kept.
    """

    def __init__(self) -> None:
        self.key: tuple[str, tuple[str, ...]] | None = None
        self.runtime: FleetRuntime | None = None
        self.devices: dict[tuple[Any, ...], tuple[DeviceSetup, Tier]] = {}

    def runtime_for(self, text: str, digest: str, overrides: tuple[str, ...] = ()) -> FleetRuntime:
        """The runtime of a scenario (with a real device's overrides, e.g. its data_dir)."""
        if self.runtime is None or self.key != (digest, overrides):
            scenario: Scenario = parse_scenario(text, source="<server>", overrides=overrides)
            self.runtime = None  # release the old one before loading the new
            self.runtime = FleetRuntime(scenario)
            self.key = (digest, overrides)
            self.devices = {}
        return self.runtime

    def device(self, msg: Message, context: Context) -> tuple[FleetRuntime, DeviceSetup, Tier]:
        """The runtime of the message's scenario, and this node's setup and tier.

        The node config and the tier it implies are resolved once per process and
        scenario (a worker hosts many simulated devices: one entry each).
        """
        config = msg.content.config_records["config"]
        node = tuple(sorted(context.node_config.items()))
        setup = self.devices[node][0] if node in self.devices else parse_node_config(
            context.node_config
        )
        text, digest = str(config["scenario"]), str(config["scenario-digest"])
        runtime = self.runtime_for(text, digest, tuple(setup.scenario_overrides()))
        if node not in self.devices:
            self.devices[node] = (setup, device_tier(runtime.scenario, setup))
        return runtime, *self.devices[node]


_CACHE = _ProcessCache()


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Introduce this node to the server: its device id and tier.

    The server asks every node once before round 1; answering it also loads
    the scenario's data and nets into this process, so round 1's timings do not
    include start-up.
    """
    runtime, setup, tier = _CACHE.device(msg, context)
    device_id = setup.device_id
    metrics = MetricRecord(
        {
            "device-id": device_id,
            "tier-index": [t.name for t in runtime.scenario.tiers].index(tier.name),
            "real_device": int(setup.real),
        }
    )
    return Message(
        RecordDict({"metrics": metrics, "device": _device_record(tier, setup)}), reply_to=msg
    )


def _device_record(tier: Tier, setup: DeviceSetup) -> ConfigRecord:
    """Tier, profile and kind of this device, as the server reports them."""
    return ConfigRecord({"tier": tier.name, "profile": tier.profile.name, "kind": setup.kind})


def _state_dir(setup: DeviceSetup, config: ConfigRecord, scenario: Scenario) -> str:
    """Where this device keeps its state files ("" for nowhere).

    A simulated device: the folder the server names (its output folder). A real
    device: its own folder (node config ``state-dir``), one subfolder per
    scenario -- never a path the server chose.
    """
    if not setup.real:
        return str(config.get("state-dir", ""))
    if not str(config.get("state-dir", "")):
        return ""  # the server keeps no state for this run (no checkpoints)
    digest = str(config.get("scenario-digest", ""))[:12]
    return str(setup.own_state_dir() / f"{scenario.run.name}-{digest}")


def attacked(
    tier: Tier, received: dict[str, torch.Tensor], trained: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The weights a device of ``tier`` sends: its own, or an attack on the global model.

    ``scale``: ``w + s * u``; ``sign_flip``: ``w - s * u`` (``u`` the device's
    update, ``s`` = ``attack_scale``); ``nan``: NaN weights. Simulation only,
    to measure a defence (``server.aggregation``, ``server.norm_bound``).
    """
    if tier.attack == "none":
        return trained
    out: dict[str, torch.Tensor] = {}
    for name, value in trained.items():
        update = value - received[name].to(value.dtype)
        if tier.attack == "scale":
            out[name] = received[name] + tier.attack_scale * update
        elif tier.attack == "sign_flip":
            out[name] = received[name] - tier.attack_scale * update
        else:
            out[name] = torch.full_like(value, math.nan)
    return out


class Diverged(RuntimeError):
    """Local training produced a NaN/Inf loss: no weights are sent."""


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
    runtime, setup, tier = _CACHE.device(msg, context)
    device_id = setup.device_id
    # a real device trains on all its cores unless told otherwise
    threads = setup.threads or (
        None if setup.real else runtime.scenario.simulation.threads_per_client
    )
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    server_round = int(str(config["server-round"]))
    state_dir = _state_dir(setup, config, runtime.scenario)

    state, state_round = device_state.load(context.state)
    if state_dir and (state is None or state_round >= server_round):
        # a resumed run: this process has no state for the device (or a newer one
        # from the interrupted round); take the newest kept before this round
        state, state_round = device_state.read_file(state_dir, device_id, server_round)

    _inject_faults(runtime.scenario, device_id, server_round)
    weights = record_tensors(msg.content.array_records["arrays"])
    result, new_state = runtime.train_round(
        device_id, weights, server_round, state, tier=tier, local_data=setup.local_data
    )
    if not result.dropped and not math.isfinite(result.ledger.loss_sum):
        # the update is garbage: say so (the server keeps its model), keep the old state
        raise Diverged(
            f"diverged: device {device_id}'s training loss is {result.ledger.loss_sum} in "
            f"round {server_round} (lr {runtime.scenario.train.lr:g} too high?)"
        )
    if not result.dropped:
        blob = device_state.save(context.state, new_state, server_round, result.threshold)
        if state_dir:
            device_state.write_file(state_dir, device_id, server_round, blob)

    content = RecordDict()
    if not result.dropped:
        content["arrays"] = ArrayRecord(attacked(tier, weights, result.weights))
    metrics: dict[str, int | float | list[int] | list[float]] = {
        **ledger_metrics(result.ledger),
        "num-examples": result.ledger.trained,
        "device-id": device_id,
        "tier-index": [t.name for t in runtime.scenario.tiers].index(tier.name),
        "dropped": int(result.dropped),
        "compute_s": result.compute_s,
        "energy_j": result.energy_j,
        "upload_s": result.upload_s,
        "download_s": result.download_s,
        "threshold": result.threshold,  # NaN without EIF (fededge.wire.NON_FINITE)
        "real_device": int(setup.real),
        "client_wall_s": time.perf_counter() - started,
        "pid": os.getpid(),
    }
    content["metrics"] = MetricRecord(metrics)
    content["device"] = _device_record(tier, setup)
    return Message(content, reply_to=msg)
