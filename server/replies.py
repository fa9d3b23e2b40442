"""Checking a device's reply before it can touch the global model or the report.

:class:`ReplyChecker` turns a Flower train reply into a :class:`Checked`: a
``problem`` (the reply is rejected with it) or what aggregation needs. Every
check of docs/device-contract.md lives here: weights (names, shapes, float32,
finite), the ledger against what the server knows (non-negative, ``num-examples``
= ``trained`` <= ``streamed`` <= ``arrived`` <= the tier's arrivals, spent <= budget <=
the tier's budget), identity (a node keeps the device it said it is, one reply per
device and round, known tiers), and foreign devices (weights and ``num-examples``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict

from fededge.config.scenario import Scenario
from fededge.cost.ledger import MAC_FIELDS, Ledger
from fededge.wire import NON_FINITE, array_numpy

#: Metric keys every train reply must carry (the ledger minus the optional budget).
REQUIRED_METRICS = (
    *(k for k in Ledger.field_names() if k != "budget_macs"),
    "num-examples",
    "device-id",
    "dropped",
)


def _allowed(key: str, value: float) -> bool:
    """Whether a non-finite metric has a meaning (:data:`fededge.wire.NON_FINITE`)."""
    meant = NON_FINITE.get(key)
    if meant is None:
        return False
    return math.isnan(value) if math.isnan(meant[0]) else value == meant[0]


@dataclass
class Checked:
    """A reply after its checks: ``problem`` (rejected) or what aggregation needs."""

    problem: str
    metrics: dict[str, float] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    weight: float = 0.0  # in the average
    device: int | None = None  # the device id it claims
    names: tuple[str, str, str] | None = None  # (tier, profile, kind) it reports
    foreign: bool = False  # a device on another stack (no ledger)


def device_id(value: object) -> int | None:
    """A reply's ``device-id`` as an int, or None when it is not a whole finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value != int(value):
        return None
    return int(value)


def device_names(record: ConfigRecord) -> tuple[str, str, str] | None:
    """``(tier, profile, kind)`` of a reply's ``device`` record, None if incomplete."""
    values = [record.get(key) for key in ("tier", "profile", "kind")]
    if not all(isinstance(v, str) for v in values[:2]):
        return None
    kind = values[2] if values[2] in ("real", "simulated") else "simulated"
    return str(values[0])[:64], str(values[1])[:64], str(kind)


class ReplyChecker:
    """The checks of one run's replies (see the module docstring).

    Parameters
    ----------
    scenario : the run's scenario (tiers, arrivals, budgets, foreign devices).
    expected : ``{name: shape}`` of the main net's transported weights.
    train_size : instances of the training split (bounds a backlog); None: unbounded-ish.

    ``node_to_device`` (node id -> device, from the query phase and first replies)
    and ``claimed`` (device -> node, this round; reset by the caller each round)
    are the identity the checks hold replies to.
    """

    def __init__(
        self,
        scenario: Scenario,
        expected: dict[str, tuple[int, ...]],
        train_size: int | None = None,
    ) -> None:
        self.scenario = scenario
        self.expected = expected
        self.tiers = {tier.name: tier for tier in scenario.tiers}
        #: Instances of the training split: bounds a backlog (``data.leftover = "queue"``).
        self.train_size = train_size or 10**7
        self.node_to_device: dict[int, int] = {}
        self.claimed: dict[int, int] = {}

    def check(self, msg: Message) -> Checked:
        """The checked reply: a problem (rejected), or its metrics and decoded weights."""
        content = msg.content
        if "metrics" not in content.metric_records:
            return Checked("no metrics in reply")
        metrics = {
            k: v for k, v in content.metric_records["metrics"].items() if isinstance(v, int | float)
        }
        checked = Checked("", metrics=metrics, device=device_id(metrics.get("device-id")))
        if checked.device is not None and "device" in content.config_records:
            checked.names = device_names(content.config_records["device"])
        missing = [k for k in REQUIRED_METRICS if k not in metrics]
        if missing:
            if self.scenario.server.foreign_devices == "accept" and "num-examples" in metrics:
                return self._check_foreign(content, metrics)
            hint = (
                ""
                if self.scenario.server.foreign_devices == "accept"
                else ' (a device on another stack? server.foreign_devices = "accept" takes '
                "weights and num-examples; see docs/device-contract.md)"
            )
            checked.problem = f"ledger keys missing: {', '.join(missing[:5])}{hint}"
            return checked
        bad = [k for k, v in metrics.items() if not (math.isfinite(v) or _allowed(k, v))]
        if bad:
            checked.problem = f"non-finite metrics: {', '.join(bad[:5])}"
            return checked
        if metrics["num-examples"] < 0:
            checked.problem = "negative num-examples"
            return checked
        checked.problem = self._identity_problem(msg.metadata.src_node_id, checked)
        if not checked.problem and not metrics["dropped"]:
            checked.problem = self._ledger_problem(metrics, checked.names)
        if checked.problem or metrics["dropped"]:
            return checked
        checked.problem, checked.weights = self._check_weights(content)
        checked.weight = float(metrics["num-examples"])
        return checked

    def _identity_problem(self, node: int, checked: Checked) -> str:
        """A reply must come from the device this node said it is, once per round."""
        device = checked.device
        if device is None or not 0 <= device < self.scenario.num_devices:
            claimed, last = checked.metrics.get("device-id"), self.scenario.num_devices - 1
            return f"device-id {claimed!r} is not a device of the fleet (0..{last})"
        known = self.node_to_device.get(node)
        if known is not None and known != device:
            return f"device-id {device}, but this node is device {known}"
        owner = self.claimed.get(device)
        if owner is not None and owner != node:
            return f"device {device} already replied this round (from another node)"
        self.claimed[device] = node
        if checked.names is not None and checked.names[0] not in self.tiers:
            return f"unknown tier {checked.names[0]!r}"
        return ""

    def _ledger_problem(self, metrics: dict[str, float], names: tuple[str, str, str] | None) -> str:
        """What makes a ledger impossible for this device and round ("" when plausible)."""
        negative = [k for k in REQUIRED_METRICS if metrics[k] < 0 and k != "device-id"]
        if negative:
            return f"negative ledger values: {', '.join(negative[:5])}"
        trained, streamed, arrived = metrics["trained"], metrics["streamed"], metrics["arrived"]
        if metrics["num-examples"] != trained:
            return f"num-examples {metrics['num-examples']:g} differs from trained {trained:g}"
        if not trained <= streamed <= arrived:
            return f"trained {trained:g} <= streamed {streamed:g} <= arrived {arrived:g} fails"
        if metrics["filtered_out"] > streamed:
            return f"filtered_out {metrics['filtered_out']:g} > streamed {streamed:g}"
        device = int(metrics["device-id"])
        tier = self.tiers.get(names[0]) if names else None
        tier = tier or self.scenario.tier_of(device)
        cap = self._arrivals_cap(tier.arrivals_per_round)
        if arrived > cap:
            return f"arrived {arrived:g} > {cap:g}, the most a device of tier {tier.name!r} gets"
        spent = sum(metrics[k] for k in MAC_FIELDS)
        budget = float(metrics.get("budget_macs", math.inf))
        if spent > budget * (1 + 1e-9):
            return f"spent {spent:.4g} MACs > its budget {budget:.4g}"
        simulated = names is None or names[2] == "simulated"
        if simulated and budget > tier.budget_macs * (1 + 1e-9):
            return f"budget {budget:.4g} MACs > tier {tier.name!r}'s {tier.budget_macs:.4g}"
        return ""

    def _arrivals_cap(self, rate: int) -> float:
        """The most instances a device can have arrived in one round."""
        data = self.scenario.data
        if data.leftover == "queue":  # a backlog can hold what the partition holds
            return float(self.train_size * data.passes)
        if data.arrival_process == "poisson":  # beyond 10 sigma: never drawn
            return rate + 10 * math.sqrt(rate) + 10
        return float(rate)

    def _check_foreign(self, content: RecordDict, metrics: dict[str, float]) -> Checked:
        """A reply of a device on another stack: weights and ``num-examples`` only.

        Its weight in the average is its ``num-examples``, at most the most
        instances a fleet device receives in a round (a foreign device cannot
        outweigh the fleet by claiming more).
        """
        checked = Checked("", metrics={}, foreign=True)
        examples = metrics["num-examples"]
        if not (math.isfinite(examples) and examples >= 0):
            checked.problem = f"num-examples must be a number >= 0, got {examples!r}"
            return checked
        checked.problem, checked.weights = self._check_weights(content)
        cap = max(tier.arrivals_per_round for tier in self.scenario.tiers)
        checked.weight = float(min(examples, cap))
        checked.metrics = {"num-examples": checked.weight}
        return checked

    def _check_weights(self, content: RecordDict) -> tuple[str, dict[str, np.ndarray]]:
        """``(problem or "", weights)``: exactly the names, shapes and dtype sent, finite."""
        if "arrays" not in content.array_records:
            return "no weights in reply", {}
        record = content.array_records["arrays"]
        names = set(record.keys())
        if names != set(self.expected):
            extra, lost = names - set(self.expected), set(self.expected) - names
            return (
                f"weight names differ (unexpected {sorted(extra)[:3]}, missing {sorted(lost)[:3]})",
                {},
            )
        weights: dict[str, np.ndarray] = {}
        for name, shape in self.expected.items():
            array = record[name]
            if tuple(array.shape) != shape:
                return f"weight {name} has shape {tuple(array.shape)}, expected {shape}", {}
            weights[name] = array_numpy(array)
            if weights[name].dtype != np.float32:
                return f"weight {name} has dtype {weights[name].dtype}, expected float32", {}
            if not np.isfinite(weights[name]).all():
                return f"weight {name} has NaN/Inf values", {}
        return "", weights
