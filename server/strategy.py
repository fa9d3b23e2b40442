"""FleetStrategy: Flower's FedAvg with a fleet ledger, failure tolerance and resume.

It keeps FedAvg's message construction and adds what a fleet of constrained
devices needs:

* aggregation (:mod:`server.aggregation`: FedAvg weighted by instances
  *trained*, or a robust rule) over replies sorted by device id, so the same
  seed gives the same model whatever order replies arrive in; updates far
  longer than the round's median are clipped or rejected; filter nets never
  leave their devices (only the main net is sent);
* every reply is checked before aggregation (:mod:`server.replies`): error
  replies, timeouts and dropouts are counted; a reply that breaks the device
  contract is *rejected* with the reason, never aggregated, and never raises;
* a non-finite average, or a model that evaluates to a NaN loss, is rolled
  back to the last good one;
* a round with fewer than ``server.min_replies`` good replies is skipped and
  the global model kept; nothing stops the run;
* central evaluation every ``eval_every`` rounds (and at the last round);
* after each round the fleet report and a checkpoint (:mod:`server.checkpoint`)
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

from fededge.config.scenario import Scenario
from fededge.reports.device_rows import device_row
from fededge.reports.fleet_report import FleetReport
from fededge.wire import array_numpy
from server.aggregation import aggregate, all_finite, update_norm
from server.replies import Checked, ReplyChecker, device_id, device_names

log = logging.getLogger(__name__)

#: Seconds between two pulls of replies: at least Flower's ``InMemoryGrid.pull_interval``,
#: longer while many replies are outstanding (see :meth:`FleetStrategy.exchange`).
PULL_INTERVAL_S = (0.1, 0.5)
#: Outstanding messages a pull may scan per second of waiting (sets the longer interval).
PULL_SCANS_PER_S = 2000


#: Seconds without a new node after which a simulation's federation is complete.
SETTLED_S = 5.0



def messages_to(nodes: Iterable[int], record: RecordDict, message_type: str) -> list[Message]:
    """One message per node, all carrying ``record`` (Flower's public ``Message``)."""
    return [Message(record, dst_node_id=node, message_type=message_type) for node in nodes]

class FleetIncomplete(RuntimeError):
    """Fewer devices connected than the scenario's fleet, where all must be there."""


class RunStopped(RuntimeError):
    """The run was asked to stop (Ctrl-C) between or during rounds."""


@dataclass(frozen=True)
class Aggregated:
    """One round's aggregation: the new weights (None: keep the old), the rows, skipped or not."""

    arrays: ArrayRecord | None
    rows: list[dict[str, Any]]
    skipped: bool  # fewer good replies than server.min_replies


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
    train_size : instances in the training split (bounds what a device can report).
    """

    def __init__(
        self,
        scenario: Scenario,
        report: FleetReport,
        *,
        evaluate_fn: Callable[[int, ArrayRecord], tuple[float, float]],
        expected: dict[str, tuple[int, ...]],
        on_round: Callable[[RoundOutcome], None] | None = None,
        stop: threading.Event | None = None,
        train_size: int | None = None,
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
        self.stop = stop or threading.Event()
        self.checker = ReplyChecker(scenario, expected, train_size)
        # device -> (tier, profile, kind) as the device reported them (real devices differ)
        self.device_names: dict[int, tuple[str, str, str]] = {}
        #: How long round 1 waits for the fleet's nodes (a deployment sets it from its run config).
        self.device_wait_s = 900.0
        #: Set (to the fix, for the message) where every device must connect: a simulation
        #: federation's SuperNodes are all there at once, and too few is a setting error.
        self.complete_fleet: str | None = None
        self._global: dict[str, np.ndarray] | None = None  # the weights sent this round

    @property
    def node_to_device(self) -> dict[int, int]:
        """Node id -> device id (query phase, then first accepted replies)."""
        return self.checker.node_to_device

    @node_to_device.setter
    def node_to_device(self, value: dict[int, int]) -> None:
        self.checker.node_to_device = value

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
        if self.scenario.server.norm_bound:  # updates are measured from what was sent
            self._global = {k: array_numpy(v).astype(np.float64) for k, v in arrays.items()}
        # what a stock Flower client reads (docs/device-contract.md); fededge devices
        # take their settings from the scenario
        train = self.scenario.train
        config["lr"] = train.lr_at_round(server_round, self.scenario.run.rounds)
        config["local-epochs"] = 1
        config["batch-size"] = train.batch_size
        config["momentum"] = train.momentum
        config["weight-decay"] = train.weight_decay
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return messages_to(nodes, record, MessageType.TRAIN)

    # ----------------------------------------------------------- aggregation
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, None]:
        """Flower's aggregation step: the good replies' average (:meth:`aggregate_round`)."""
        return self.aggregate_round(server_round, replies).arrays, None

    def aggregate_round(self, server_round: int, replies: Iterable[Message]) -> Aggregated:
        """Check every reply, make its report row, average the good ones.

        Nothing a reply holds can raise out of here: a reply that cannot be
        read is rejected with the reason.
        """
        good: list[tuple[int, dict[str, np.ndarray], float]] = []
        rows: list[dict[str, Any]] = []
        self.checker.claimed = {}
        # replies in node order: which of two nodes claiming one device wins does not
        # depend on arrival order
        for msg in sorted(replies, key=lambda m: m.metadata.src_node_id):
            node = msg.metadata.src_node_id
            if msg.has_error():
                rows.append(self._failed(server_round, node, short_reason(str(msg.error.reason))))
                continue
            try:
                checked = self.checker.check(msg)
            except Exception as exc:  # a malformed reply, never the server's end
                checked = Checked(f"unreadable reply: {type(exc).__name__}: {exc}"[:200])
            device = self._device_of(node, checked)
            if checked.problem:
                rows.append(self._row(server_round, device, "rejected", None, checked.problem))
                log.warning(
                    "round %d: rejected reply of device %d: %s",
                    server_round,
                    device,
                    checked.problem,
                )
                continue
            if checked.metrics.get("dropped"):
                rows.append(self._row(server_round, device, "dropped", checked.metrics))
                continue
            rows.append(
                self._row(server_round, device, "ok", checked.metrics, foreign=checked.foreign)
            )
            good.append((device, checked.weights, checked.weight))
        good = self._bound_updates(server_round, good, rows)
        if len(good) < self.scenario.server.min_replies:
            log.warning(
                "round %d: %d good replies < min_replies=%d; round skipped, global model kept",
                server_round,
                len(good),
                self.scenario.server.min_replies,
            )
            return Aggregated(None, rows, skipped=True)
        return Aggregated(aggregate(good, self.scenario.server), rows, skipped=False)

    def _device_of(self, node: int, checked: Checked) -> int:
        """The device a reply is from: the one this node is known as, else the one it claims.

        A node keeps the identity it first had (query phase, or its first
        accepted reply); a rejected reply never gives a node an identity.
        """
        known = self.node_to_device.get(node)
        if checked.foreign and known is None:
            taken = set(self.node_to_device.values())
            known = self.scenario.num_devices
            while known in taken:
                known += 1
            self.node_to_device[node] = known
            self.device_names[known] = ("foreign", "?", "foreign")
        if known is not None:
            if known == checked.device and checked.names is not None and not checked.problem:
                self.device_names[known] = checked.names
            return known
        device = checked.device
        if checked.problem or device is None or not 0 <= device < self.scenario.num_devices:
            return -1
        self.node_to_device[node] = device
        if checked.names is not None:
            self.device_names[device] = checked.names
        return device

    def _bound_updates(
        self,
        server_round: int,
        good: list[tuple[int, dict[str, np.ndarray], float]],
        rows: list[dict[str, Any]],
    ) -> list[tuple[int, dict[str, np.ndarray], float]]:
        """Clip (or reject) updates longer than ``norm_bound`` x the round's median length."""
        factor = self.scenario.server.norm_bound
        if not factor or self._global is None or len(good) < 2:
            return good
        norms = [update_norm(weights, self._global) for _, weights, _ in good]
        bound = factor * float(np.median(norms))
        if not bound > 0:
            return good
        row_of = {r["device"]: r for r in rows if r["status"] == "ok"}
        kept = []
        for (device, weights, weight), norm in zip(good, norms, strict=True):
            if norm <= bound:
                kept.append((device, weights, weight))
                continue
            what = f"update norm {norm:.3g} > {factor:g} x the round's median ({bound:.3g})"
            row = row_of[device]
            if self.scenario.server.norm_action == "reject":
                rows[rows.index(row)] = self._row(server_round, device, "rejected", None, what)
                log.warning("round %d: rejected device %d: %s", server_round, device, what)
                continue
            scale = bound / norm
            clipped = {
                k: self._global[k] + scale * (v - self._global[k]) for k, v in weights.items()
            }
            row["reason"] = f"clipped: {what}"
            kept.append((device, clipped, weight))
        return kept

    def _failed(self, server_round: int, node: int, reason: str) -> dict[str, Any]:
        """The report row of a node whose call failed (an error reply, or none in time)."""
        return self._row(server_round, self.node_to_device.get(node, -1), "failed", None, reason)

    def _row(
        self,
        server_round: int,
        device: int,
        status: str,
        metrics: dict[str, float] | None,
        reason: str = "",
        *,
        foreign: bool = False,
    ) -> dict[str, Any]:
        kind = None
        if device in self.device_names:
            tier_name, profile, kind = self.device_names[device]
        elif 0 <= device < self.scenario.num_devices:
            tier = self.scenario.tier_of(device)
            tier_name, profile = tier.name, tier.profile.name
        else:
            tier_name, profile = "?", "?"
        row = device_row(
            server_round, device, tier_name, profile, status, metrics, reason, accounted=not foreign
        )
        if kind is not None and (metrics is None or foreign):  # the kind it reported before
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
        count, since = -1, time.monotonic()  # the node count and when it last changed
        while True:
            nodes = sorted(grid.get_node_ids())
            now = time.monotonic()
            if len(nodes) != count:
                count, since = len(nodes), now
            if len(nodes) >= expected or now >= deadline:
                break
            if self.complete_fleet is not None and nodes and now - since >= SETTLED_S:
                break  # a simulation's SuperNodes register at once: no more are coming
            if self.stop.is_set():
                raise RunStopped("the run was stopped")
            self.stop.wait(0.1)
        if len(nodes) < expected and self.complete_fleet is not None:
            raise FleetIncomplete(
                f"the federation has {len(nodes)} SuperNodes, scenario "
                f"{self.scenario.run.name!r} has {expected} devices: {self.complete_fleet}"
            )
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
        messages = messages_to(nodes, record, MessageType.QUERY)
        replies = self.exchange(grid, messages, timeout_s)
        known = 0
        for msg in replies:
            if msg.has_error() or "metrics" not in msg.content.metric_records:
                continue
            device = device_id(msg.content.metric_records["metrics"].get("device-id"))
            if device is None or not 0 <= device < self.scenario.num_devices:
                continue
            self.node_to_device[msg.metadata.src_node_id] = device
            if "device" in msg.content.config_records:  # real devices report it here first
                names = device_names(msg.content.config_records["device"])
                if names is not None:
                    self.device_names[device] = names
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
        # (weights, accuracy, loss) of the last model that evaluated finite
        last_good: tuple[ArrayRecord, float | None, float | None] = (arrays, None, None)
        for server_round in range(start_round, rounds + 1):
            started = time.perf_counter()
            messages = list(
                self.configure_train(server_round, arrays, ConfigRecord(dict(train_config)), grid)
            )
            replies = list(self.exchange(grid, messages, self.scenario.server.timeout_s))
            result = self.aggregate_round(server_round, replies)
            new_arrays, rows, skipped = result.arrays, result.rows, result.skipped
            answered = {m.metadata.src_node_id for m in replies}
            for node in (m.metadata.dst_node_id for m in messages):
                if node not in answered:
                    rows.append(self._failed(server_round, node, "timeout: no reply"))
            rolled_back = False
            if new_arrays is not None and not all_finite(new_arrays):
                # finite replies can still average to Inf after the float32 cast
                log.warning("round %d: the average is not finite; global model kept", server_round)
                new_arrays, rolled_back = None, True
            if new_arrays is not None:
                arrays = new_arrays
            accuracy = loss = None
            if server_round % self.scenario.server.eval_every == 0 or server_round == rounds:
                accuracy, loss = self.evaluate_global(server_round, arrays)
                if math.isfinite(loss):
                    last_good = (arrays, accuracy, loss)
                else:  # the model is lost: back to the last one that evaluated finite
                    log.warning(
                        "round %d: global model's loss is %s; rolled back to the last good model",
                        server_round,
                        loss,
                    )
                    arrays, accuracy, loss = last_good
                    rolled_back = True
            rows.sort(key=lambda r: (r["device"], r["status"]))
            row = self.report.add_round(
                server_round,
                rows,
                selected=len(messages),
                accuracy=accuracy,
                loss=loss,
                skipped=skipped,
                wall_s=time.perf_counter() - started,
                rolled_back=rolled_back,
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
