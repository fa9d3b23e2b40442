"""FleetStrategy: Flower's FedAvg with a fleet ledger, failure tolerance and resume.

It keeps FedAvg's message construction and adds what a fleet of constrained
devices needs:

* aggregation weighted by instances *trained* (not arrived), over replies sorted
  by device id, so the same seed gives the same model whatever order replies
  arrive in; filter nets never leave their devices (only the main net is sent);
* every reply is checked before aggregation: error replies, timeouts and
  dropouts are counted; replies with NaN/Inf weights, wrong names or shapes,
  or missing ledger keys are *rejected* and reported, never aggregated;
* a round with fewer than ``server.min_replies`` good replies is skipped and
  the global model kept; nothing stops the run;
* central evaluation every ``eval_every`` rounds (and at the last round);
* after each round the fleet report and a checkpoint (global weights, round)
  are written, so ``--resume`` continues from the last completed round.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from clients.transport import array_numpy
from fededge.ledger import Ledger
from fededge.report import FleetReport, device_row
from fededge.scenario import Scenario

log = logging.getLogger(__name__)

#: Seconds between two pulls of replies: at least Flower's ``InMemoryGrid.pull_interval``,
#: longer while many replies are outstanding (see :meth:`FleetStrategy.exchange`).
PULL_INTERVAL_S = (0.1, 0.5)
#: Outstanding messages a pull may scan per second of waiting (sets the longer interval).
PULL_SCANS_PER_S = 2000

#: Metric keys every train reply must carry (the ledger minus the optional budget).
REQUIRED_METRICS = (
    *(k for k in Ledger.field_names() if k != "budget_macs"),
    "num-examples",
    "device-id",
    "dropped",
)


class RunStopped(RuntimeError):
    """The run was asked to stop (Ctrl-C) between or during rounds."""


@dataclass
class RoundOutcome:
    """What one round produced (for the progress line and tests)."""

    server_round: int
    row: dict[str, Any]
    arrays: ArrayRecord


class FleetStrategy(FedAvg):
    """FedAvg for a fleet of budgeted edge devices (see module docstring).

    Parameters
    ----------
    scenario : the validated scenario (sampling, min replies, evaluation).
    report : where rounds are recorded.
    evaluate_fn : ``(round, arrays) -> (accuracy, loss)`` central evaluation.
    expected : ``{name: shape}`` of the main net's transported weights.
    on_round : called with each :class:`RoundOutcome` (progress, checkpoints).
    state_dir : where simulated devices also keep their state ("" for none).
    """

    def __init__(
        self,
        scenario: Scenario,
        report: FleetReport,
        *,
        evaluate_fn: Callable[[int, ArrayRecord], tuple[float, float]],
        expected: dict[str, tuple[int, ...]],
        on_round: Callable[[RoundOutcome], None] | None = None,
        state_dir: str = "",
        stop: threading.Event | None = None,
    ) -> None:
        super().__init__(
            fraction_train=scenario.server.fraction,
            fraction_evaluate=1.0,  # unused: evaluation is central (run() never asks devices)
            min_train_nodes=1,
            min_evaluate_nodes=0,
            min_available_nodes=scenario.num_devices,
            weighted_by_key="num-examples",
        )
        self.scenario = scenario
        self.report = report
        self.evaluate_global = evaluate_fn
        self.expected = expected
        self.on_round = on_round
        self.state_dir = state_dir
        self.stop = stop or threading.Event()
        self.node_to_device: dict[int, int] = {}
        # device -> (tier, profile, kind) as the device reported them (real devices differ)
        self.device_names: dict[int, tuple[str, str, str]] = {}
        #: How long round 1 waits for the fleet's nodes (a deployment sets it from its run config).
        self.device_wait_s = 900.0
        self._rows: list[dict[str, Any]] = []
        self._skipped = False

    # ------------------------------------------------------------ sampling
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global weights and the scenario to the sampled devices.

        With ``fraction < 1`` the sample is drawn from sorted node ids with a
        generator seeded by (seed, round): the same scenario samples the same nodes.
        """
        nodes = sorted(grid.get_node_ids())
        k = max(1, math.ceil(len(nodes) * self.fraction_train))
        if k < len(nodes):
            rng = np.random.default_rng([self.scenario.run.seed, server_round, 11])
            # draw positions, not the ids: numpy turns ids above 2**63 into rounded floats
            picked = rng.choice(len(nodes), size=k, replace=False)
            nodes = sorted(nodes[int(i)] for i in picked)
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, nodes, MessageType.TRAIN)

    # ----------------------------------------------------------- aggregation
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, None]:
        """Check every reply, record it in the report rows, average the good ones."""
        good: list[tuple[int, dict[str, np.ndarray], float]] = []
        rows: list[dict[str, Any]] = []
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                rows.append(
                    self._row(
                        server_round,
                        self.node_to_device.get(node, -1),
                        "failed",
                        None,
                        short_reason(str(msg.error.reason)),
                    )
                )
                continue
            problem, metrics, weights = self._check_reply(msg)
            device = int(metrics.get("device-id", self.node_to_device.get(node, -1)))
            if device >= 0:
                self.node_to_device[node] = device
            if "device" in msg.content.config_records:  # tier and profile as the device has them
                info = msg.content.config_records["device"]
                self.device_names[device] = (
                    str(info["tier"]),
                    str(info["profile"]),
                    str(info.get("kind", "simulated")),
                )
            if problem:
                rows.append(self._row(server_round, device, "rejected", None, problem))
                log.warning(
                    "round %d: rejected reply of device %d: %s", server_round, device, problem
                )
                continue
            if metrics["dropped"]:
                rows.append(self._row(server_round, device, "dropped", metrics))
                continue
            rows.append(self._row(server_round, device, "ok", metrics))
            good.append((device, weights, float(metrics["num-examples"])))
        self._rows = rows
        self._skipped = len(good) < self.scenario.server.min_replies
        if self._skipped:
            log.warning(
                "round %d: %d good replies < min_replies=%d; round skipped, global model kept",
                server_round,
                len(good),
                self.scenario.server.min_replies,
            )
            return None, None
        return self._average(good), None

    def _average(self, good: list[tuple[int, dict[str, np.ndarray], float]]) -> ArrayRecord | None:
        good.sort(key=lambda item: item[0])
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
        return _record(out)

    def _check_reply(self, msg: Message) -> tuple[str, dict[str, float], dict[str, np.ndarray]]:
        """``(problem or "", metrics, weights)``; the weights are decoded once, here."""
        content = msg.content
        if "metrics" not in content.metric_records:
            return "no metrics in reply", {}, {}
        metrics = {
            k: v for k, v in content.metric_records["metrics"].items() if isinstance(v, int | float)
        }
        missing = [k for k in REQUIRED_METRICS if k not in metrics]
        if missing:
            return f"ledger keys missing: {', '.join(missing[:5])}", metrics, {}
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad:
            return f"non-finite metrics: {', '.join(bad[:5])}", metrics, {}
        if metrics["dropped"]:
            return "", metrics, {}
        if "arrays" not in content.array_records:
            return "no weights in reply", metrics, {}
        record = content.array_records["arrays"]
        names = set(record.keys())
        if names != set(self.expected):
            extra, lost = names - set(self.expected), set(self.expected) - names
            return (
                f"weight names differ (unexpected {sorted(extra)[:3]}, missing {sorted(lost)[:3]})",
                metrics,
                {},
            )
        weights: dict[str, np.ndarray] = {}
        for name, shape in self.expected.items():
            array = record[name]
            if tuple(array.shape) != shape:
                problem = f"weight {name} has shape {tuple(array.shape)}, expected {shape}"
                return problem, metrics, {}
            weights[name] = array_numpy(array)
            if not np.isfinite(weights[name]).all():
                return f"weight {name} has NaN/Inf values", metrics, {}
        if metrics["num-examples"] < 0:
            return "negative num-examples", metrics, {}
        return "", metrics, weights

    def _row(
        self,
        server_round: int,
        device: int,
        status: str,
        metrics: dict[str, float] | None,
        reason: str = "",
    ) -> dict[str, Any]:
        kind = None
        if device in self.device_names:
            tier_name, profile, kind = self.device_names[device]
        elif 0 <= device < self.scenario.num_devices:
            tier = self.scenario.tier_of(device)
            tier_name, profile = tier.name, tier.profile.name
        else:
            tier_name, profile = "?", "?"
        row = device_row(server_round, device, tier_name, profile, status, metrics, reason)
        if kind is not None and metrics is None:  # a failure: the kind it reported before
            row["kind"] = kind
        return row

    def exchange(self, grid: Grid, messages: Iterable[Message], timeout_s: float) -> list[Message]:
        """Send ``messages`` and collect replies until all arrived or ``timeout_s`` passed.

        Like ``Grid.send_and_receive`` but it also returns early, raising
        :class:`RunStopped`, when :attr:`stop` is set (Ctrl-C), so the server
        thread never outlives an interrupted run.
        """
        waiting = set(grid.push_messages(messages))
        deadline = time.monotonic() + timeout_s
        replies: list[Message] = []
        while waiting and time.monotonic() < deadline:
            if self.stop.is_set():
                raise RunStopped("the run was stopped")
            got = list(grid.pull_messages(waiting))
            replies.extend(got)
            waiting.difference_update(m.metadata.reply_to_message_id for m in got)
            if waiting:
                # A pull scans every outstanding message under the state's lock, on the
                # CPU the devices train on: with hundreds outstanding, pull less often
                # (at most PULL_SCANS_PER_S scans a second); the last replies of a
                # round, few outstanding, are still pulled every 0.1 s as Flower does.
                low, high = PULL_INTERVAL_S
                self.stop.wait(min(high, max(low, len(waiting) / PULL_SCANS_PER_S)))
        return replies

    def wait_for_nodes(self, grid: Grid, timeout_s: float) -> list[int]:
        """Node ids once every device of the scenario is connected (or at the timeout).

        In simulation the nodes register while the ServerApp already runs; in a
        deployment devices connect over time.
        """
        deadline = time.monotonic() + timeout_s
        expected = self.scenario.num_devices
        while True:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) >= expected or time.monotonic() >= deadline:
                break
            if self.stop.is_set():
                raise RunStopped("the run was stopped")
            self.stop.wait(0.1)
        if len(nodes) < expected:
            log.warning("only %d of %d devices connected; going on with them", len(nodes), expected)
        return nodes

    def discover(self, grid: Grid, config: ConfigRecord, timeout_s: float = 900.0) -> int:
        """Ask every node once which device it is (``query`` message); returns replies.

        Gives the node -> device map used to attribute failures and timeouts to
        tiers, and lets every node load the scenario before round 1 (in
        simulation, Ray and the workers start while this waits).
        """
        nodes = self.wait_for_nodes(grid, timeout_s)
        record = RecordDict({self.configrecord_key: ConfigRecord(dict(config))})
        messages = self._construct_messages(record, nodes, MessageType.QUERY)
        replies = self.exchange(grid, messages, timeout_s)
        known = 0
        for msg in replies:
            if msg.has_error() or "metrics" not in msg.content.metric_records:
                continue
            device = msg.content.metric_records["metrics"].get("device-id")
            if isinstance(device, int | float):
                self.node_to_device[msg.metadata.src_node_id] = int(device)
                known += 1
        log.info("discovered %d of %d devices", known, len(nodes))
        return known

    # ------------------------------------------------------------ the loop
    def run(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        *,
        train_config: ConfigRecord,
        start_round: int = 1,
    ) -> ArrayRecord:
        """Rounds ``start_round .. scenario.run.rounds``; returns the final global weights.

        Like :meth:`Strategy.start`, without client-side evaluation and with a
        report row, progress callback and checkpoint hook after every round.
        """
        rounds = self.scenario.run.rounds
        arrays = initial_arrays
        self.discover(grid, train_config, timeout_s=self.device_wait_s)
        for server_round in range(start_round, rounds + 1):
            started = time.perf_counter()
            messages = list(
                self.configure_train(server_round, arrays, ConfigRecord(dict(train_config)), grid)
            )
            replies = list(self.exchange(grid, messages, self.scenario.server.timeout_s))
            self._rows = []
            new_arrays, _ = self.aggregate_train(server_round, replies)
            rows = self._rows
            answered = {m.metadata.src_node_id for m in replies}
            for msg in messages:
                if msg.metadata.dst_node_id not in answered:
                    node = msg.metadata.dst_node_id
                    rows.append(
                        self._row(
                            server_round,
                            self.node_to_device.get(node, -1),
                            "failed",
                            None,
                            "timeout: no reply",
                        )
                    )
            skipped = self._skipped
            if new_arrays is not None:
                arrays = new_arrays
            accuracy = loss = None
            if server_round % self.scenario.server.eval_every == 0 or server_round == rounds:
                accuracy, loss = self.evaluate_global(server_round, arrays)
            rows.sort(key=lambda r: (r["device"], r["status"]))
            row = self.report.add_round(
                server_round,
                rows,
                selected=len(messages),
                accuracy=accuracy,
                loss=loss,
                skipped=skipped,
                wall_s=time.perf_counter() - started,
            )
            if self.on_round is not None:
                self.on_round(RoundOutcome(server_round, row, arrays))
        return arrays


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def short_reason(reason: str, limit: int = 200) -> str:
    """The last meaningful line of an error reply's reason (no traceback, no colours)."""
    text = _ANSI.sub("", reason)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and ln.strip() != "'>"]
    last = lines[-1] if lines else text.strip()
    last = last.removeprefix("Exception ClientAppException occurred. Message:").strip()
    last = last.removesuffix("'>").strip()
    return last if len(last) <= limit else last[: limit - 3] + "..."


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord of float32 copies, in the given order."""
    from flwr.app import Array

    return ArrayRecord(
        {name: Array(np.ascontiguousarray(v, dtype=np.float32)) for name, v in arrays.items()}
    )
