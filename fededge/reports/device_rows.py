"""The fleet report's rows: one per device and round from its reply, and running per-tier totals.

:func:`device_row` turns a reply's metrics (the ledger crossing the wire,
:mod:`fededge.wire`) into a row of the device table; :class:`TierTotals` keeps
the ``tiers`` table's sums as rows arrive. :class:`~fededge.reports.fleet_report.FleetReport`
writes both.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from fededge.cost.ledger import Ledger, share
from fededge.wire import metrics_ledger

__all__ = [
    "INSTRUMENT_FIELDS",
    "LEDGER_COLUMNS",
    "STATUSES",
    "TierTotals",
    "device_row",
    "ratio_saved",
]

STATUSES = ("ok", "dropped", "failed", "rejected")
LEDGER_COLUMNS = list(Ledger.field_names())
#: Ledger counts behind the per-round instruments (main-net steps, the filter's choices).
INSTRUMENT_FIELDS = (
    "steps",
    "selected",
    "selected_high",
    "selected_loss_sum",
    "explored",
    "explored_high",
    "explored_loss_sum",
    "full_trained",
    "aimed_trained",
)


def device_row(
    server_round: int,
    device: int,
    tier: str,
    profile: str,
    status: str,
    metrics: Mapping[str, float] | None = None,
    reason: str = "",
    *,
    accounted: bool = True,
) -> dict[str, Any]:
    """One row of the device table from a reply's metrics (None for failures).

    ``accounted=False``: a foreign device (no ledger): its ledger, MACs, time
    and energy are NaN -- unaccounted, never summed as spent or saved -- and
    ``num_examples`` is what it claimed (capped) and was weighted by.
    """
    row: dict[str, Any] = {
        "round": server_round,
        "device": device,
        "tier": tier,
        "profile": profile,
        "status": status,
        "kind": "simulated",
        "reason": reason,
    }
    m = dict(metrics or {})
    for name in LEDGER_COLUMNS:
        row[name] = float(m.get(name, math.inf if name == "budget_macs" else 0.0))
    ledger = metrics_ledger(row)  # the reply's ledger (fededge.wire), zeros for a failure
    if status == "ok":  # what the round's totals measure savings against
        row["baseline_macs"] = float(ledger.counted_baseline_macs)
    row["spent_macs"] = float(ledger.spent_macs)
    row["computation_saved"] = ledger.computation_saved
    row["spent_macs_32eq"] = ledger.spent_macs_32eq  # 32-bit-equivalent (fededge.method.quantize)
    row["computation_saved_32eq"] = ledger.computation_saved_32eq
    row["aimed_ratio"] = ledger.aimed_ratio  # R_set chosen or set (1: everything trained)
    row["budget_used"] = ledger.budget_used  # spent / budget (nan: no budget)
    for name in ("compute_s", "energy_j", "upload_s", "download_s", "client_wall_s"):
        row[name] = float(m.get(name, 0.0))
    threshold = float(m.get("threshold", math.nan))  # NaN: no EIF (negative: older devices)
    row["threshold"] = threshold if threshold >= 0 else math.nan
    row["kind"] = "real" if m.get("real_device", 0) else "simulated"
    row["round_time_s"] = (
        row["download_s"] + row["compute_s"] + row["upload_s"] if status == "ok" else 0.0
    )
    row["num_examples"] = float(m.get("num-examples", 0.0))
    if not accounted:
        unaccounted = [*LEDGER_COLUMNS, "spent_macs", "computation_saved", "spent_macs_32eq"]
        unaccounted += ["computation_saved_32eq", "compute_s", "energy_j", "upload_s"]
        unaccounted += ["download_s", "round_time_s", "threshold", "aimed_ratio", "budget_used"]
        for name in unaccounted:
            row[name] = math.nan
        row["kind"] = "foreign"
    return row


#: The ledger's work counters, summed per tier and shown in this order.
_WORK = (
    "arrived",
    "streamed",
    "trained",
    "unprocessed",
    "budget_exhausted",
    "spent_macs",
    "baseline_macs",
)


class TierTotals:
    """Running per-tier totals of device rows (the ``tiers`` table).

    Each row is added once: a round costs its own rows, not the whole run's.
    """

    COLUMNS = (
        "tier",
        "devices",
        "replies",
        "dropped",
        "failed",
        "rejected",
        *_WORK,
        "computation_saved",
        "aimed_ratio",
        "budget_used",
        "energy_j",
        "compute_s",
    )
    #: Summed over a tier's ok rows.
    SUMS = (
        *_WORK,
        "energy_j",
        "compute_s",
        "aimed_trained",
    )

    def __init__(self, tier_names: Iterable[str]) -> None:
        self.tier_names = list(tier_names)
        self._devices: dict[str, set[int]] = defaultdict(set)
        self._statuses: dict[str, Counter[str]] = defaultdict(Counter)
        self._sums: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(self.SUMS, 0.0))
        self._limited: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # spent, budget

    def add(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Count device rows in."""
        for row in rows:
            tier = row["tier"]
            self._devices[tier].add(int(row["device"]))
            self._statuses[tier][row["status"]] += 1
            if row["status"] != "ok":
                continue
            sums = self._sums[tier]
            for name in self.SUMS:
                value = float(row[name])
                if not math.isnan(value):  # a foreign device's unaccounted ledger
                    sums[name] += value
            budget = float(row["budget_macs"])
            if math.isfinite(budget):
                limited = self._limited[tier]
                limited[0] += float(row["spent_macs"]) if math.isfinite(row["spent_macs"]) else 0.0
                limited[1] += budget

    def frame(self) -> pd.DataFrame:
        """One row per tier, in scenario order."""
        rows = []
        for tier in self.tier_names:
            sums, statuses = self._sums[tier], self._statuses[tier]
            spent, base = sums["spent_macs"], sums["baseline_macs"]
            rows.append(
                {
                    "tier": tier,
                    "devices": len(self._devices[tier]),
                    "replies": statuses["ok"],
                    **{s: statuses[s] for s in ("dropped", "failed", "rejected")},
                    **{k: sums[k] for k in self.SUMS[:5]},
                    "spent_macs": spent,
                    "baseline_macs": base,
                    "computation_saved": ratio_saved(spent, base),
                    "aimed_ratio": share(sums["aimed_trained"], sums["streamed"]),
                    "budget_used": share(*self._limited[tier]),
                    "energy_j": sums["energy_j"],
                    "compute_s": sums["compute_s"],
                }
            )
        return pd.DataFrame(rows, columns=list(self.COLUMNS))


def ratio_saved(spent: float, baseline: float) -> float:
    """Computation saved against ``baseline``: ``1 - spent / baseline`` (0 without one)."""
    return 1.0 - spent / baseline if baseline > 0 else 0.0
