"""The fleet report: per-round, per-device and per-tier tables, summary and plots.

Written into the output folder as each round finishes (write to a temporary
file, then rename, so a crash never leaves a half-written table):

* ``rounds.csv`` / ``rounds.parquet`` -- one row per round: devices sampled,
  replies by status, instances, requested (budget), spent, baseline and saved
  MACs, computation saved (round and cumulative), accuracy, simulated round
  time and energy;
* ``devices.csv`` / ``devices.parquet`` -- one row per device and round: the
  device's ledger, status (ok / dropped / failed / rejected), real or simulated;
* ``tiers.csv`` / ``tiers.parquet`` -- cumulative totals per tier;
* ``summary.json`` -- the final (or latest) totals;
* ``columns.json`` -- what every column means, with its unit (:mod:`fededge.reports.columns`);
* ``accuracy.png``, ``macs.png``, ``saving_per_tier.png``.

Simulated round time is the slowest selected device's download + compute +
upload time (its profile's numbers); energy is spent MACs x the profile's J/MAC.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from fededge.cost.ledger import MAC_FIELDS, Ledger, share
from fededge.files import atomic_write_text
from fededge.reports.columns import as_json as columns_json
from fededge.reports.device_rows import (
    INSTRUMENT_FIELDS,
    STATUSES,
    TierTotals,
    ratio_saved,
)
from fededge.reports.tables import AppendedTable, atomic_write_frame


class FleetReport:
    """Accumulates rounds and writes the report files.

    Parameters
    ----------
    out_dir : output folder (created).
    name : scenario name (for titles).
    tiers : tier names in scenario order.
    plots : draw PNG plots when the tables are written.
    plot_every_s : draw them at most this often (seconds of wall time; the
        tables are always written); :meth:`flush` draws any that are behind.
        Drawing takes ~0.5 s, which fast rounds of large fleets should not pay each time.
    """

    def __init__(
        self,
        out_dir: str | Path,
        name: str,
        tiers: Iterable[str],
        *,
        plots: bool = True,
        plot_every_s: float = 0.0,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.tier_names = list(tiers)
        self.plots = plots
        self.plot_every_s = plot_every_s
        self._plotted_at = -math.inf  # time.monotonic() of the last drawing
        self._plots_behind = False
        self.rounds: list[dict[str, Any]] = []
        self.devices: list[dict[str, Any]] = []
        #: rounds.csv and devices.csv grow by one append per round (fededge.reports.tables).
        self.appended = {
            stem: AppendedTable(self.out_dir / f"{stem}.csv") for stem in ("rounds", "devices")
        }
        self._tiers = TierTotals(self.tier_names)
        self._devices_parquet_behind = False
        #: What produced the run (:func:`fededge.reports.provenance.provenance`), in summary.json.
        self.provenance: dict[str, Any] | None = None

    # -------------------------------------------------------------- rounds
    def add_round(
        self,
        server_round: int,
        rows: list[dict[str, Any]],
        *,
        selected: int,
        accuracy: float | None,
        loss: float | None,
        skipped: bool,
        wall_s: float,
        rolled_back: bool = False,
    ) -> dict[str, Any]:
        """Record one finished round and write every file. Returns the round's row.

        ``rolled_back``: the round's model was lost (non-finite) and the last
        good one kept.
        """
        self.devices.extend(rows)
        self._tiers.add(rows)
        frame = pd.DataFrame(rows)
        ok = frame[frame["status"] == "ok"] if len(frame) else frame
        prev = self.rounds[-1] if self.rounds else None
        # devices sampled this round ("selected" is the filter's count of kept instances)
        row: dict[str, Any] = {"round": server_round, "sampled": selected}
        for status in STATUSES:
            row[status] = int((frame["status"] == status).sum()) if len(frame) else 0
        row["skipped"] = int(skipped)
        row["rolled_back"] = int(rolled_back)
        row["foreign"] = int((ok["kind"] == "foreign").sum()) if len(ok) else 0
        for name in (
            "arrived",
            "streamed",
            "trained",
            "filtered_out",
            "uncertainty_sampled",
            "unprocessed",
            "budget_exhausted",
            *MAC_FIELDS,
            "baseline_macs",
            "precision_saved_macs",
            *INSTRUMENT_FIELDS,
        ):
            row[name] = float(ok[name].sum()) if len(ok) else 0.0
        # why a round went well or badly (fededge.method.single.instruments, fleet-wide)
        probe = Ledger(**{k: row[k] for k in ("filtered_out", *INSTRUMENT_FIELDS)})
        for name in Ledger.INSTRUMENTS:
            row[name] = getattr(probe, name)
        budgets = ok["budget_macs"] if len(ok) else pd.Series(dtype=float)
        row["requested_macs"] = float(budgets[budgets.map(math.isfinite)].sum())
        row["spent_macs"] = float(sum(row[k] for k in MAC_FIELDS))
        row["saved_macs"] = row["baseline_macs"] - row["spent_macs"]
        row["aimed_ratio"] = share(row["aimed_trained"], row["streamed"])
        row["budget_used"] = share(row["spent_macs"], row["requested_macs"])
        row["computation_saved"] = ratio_saved(row["spent_macs"], row["baseline_macs"])
        row["cum_spent_macs"] = row["spent_macs"] + (prev["cum_spent_macs"] if prev else 0.0)
        row["cum_baseline_macs"] = row["baseline_macs"] + (
            prev["cum_baseline_macs"] if prev else 0.0
        )
        row["cum_computation_saved"] = ratio_saved(row["cum_spent_macs"], row["cum_baseline_macs"])
        # 32-bit-equivalent cost: low-bit MACs at a·b/32² of a 32x32 MAC (fededge.method.quantize).
        row["spent_macs_32eq"] = row["spent_macs"] - row["precision_saved_macs"]
        row["computation_saved_32eq"] = ratio_saved(row["spent_macs_32eq"], row["baseline_macs"])
        row["cum_spent_macs_32eq"] = row["spent_macs_32eq"] + (
            prev.get("cum_spent_macs_32eq", prev["cum_spent_macs"]) if prev else 0.0
        )
        row["cum_computation_saved_32eq"] = ratio_saved(
            row["cum_spent_macs_32eq"], row["cum_baseline_macs"]
        )
        row["accuracy"] = math.nan if accuracy is None else accuracy
        row["loss"] = math.nan if loss is None else loss
        row["sim_round_s"] = float(ok["round_time_s"].max()) if len(ok) else 0.0
        row["cum_sim_s"] = row["sim_round_s"] + (prev["cum_sim_s"] if prev else 0.0)
        row["energy_j"] = float(ok["energy_j"].sum()) if len(ok) else 0.0
        row["cum_energy_j"] = row["energy_j"] + (prev["cum_energy_j"] if prev else 0.0)
        row["train_wall_s"] = float(ok["wall_s"].sum()) if len(ok) else 0.0
        row["wall_s"] = wall_s
        self.rounds.append(row)
        self.write(rows)
        return row

    # -------------------------------------------------------------- tables
    def rounds_frame(self) -> pd.DataFrame:
        """The per-round table."""
        return pd.DataFrame(self.rounds)

    def devices_frame(self) -> pd.DataFrame:
        """The per-device-round table."""
        return pd.DataFrame(self.devices)

    def tiers_frame(self) -> pd.DataFrame:
        """Cumulative totals per tier (successful replies only)."""
        return self._tiers.frame()

    def table_marks(self) -> dict[str, dict[str, Any]]:
        """What the appended CSVs hold, for the checkpoint.

        ``{"rounds.csv": {"bytes", "sha256"}, ...}``.
        """
        return {t.path.name: t.mark() for t in self.appended.values() if t.nbytes}

    def summary(self) -> dict[str, Any]:
        """Final (latest) totals as a flat dict."""
        rounds = self.rounds_frame()
        if rounds.empty:
            return {"name": self.name, "rounds": 0, "provenance": self.provenance}
        last = rounds.iloc[-1]
        acc = rounds["accuracy"].dropna()
        return {
            "name": self.name,
            "rounds": int(last["round"]),
            "final_accuracy": float(acc.iloc[-1]) if len(acc) else None,
            "best_accuracy": float(acc.max()) if len(acc) else None,
            "spent_macs": float(last["cum_spent_macs"]),
            "baseline_macs": float(last["cum_baseline_macs"]),
            "computation_saved": float(last["cum_computation_saved"]),
            "computation_saved_32eq": float(
                last.get("cum_computation_saved_32eq", last["cum_computation_saved"])
            ),
            "energy_j": float(last["cum_energy_j"]),
            "sim_time_s": float(last["cum_sim_s"]),
            "trained": float(rounds["trained"].sum()),
            "streamed": float(rounds["streamed"].sum()),
            "arrived": float(rounds["arrived"].sum()),
            "unprocessed": float(rounds["unprocessed"].sum()),
            "budget_exhausted": float(rounds["budget_exhausted"].sum()),
            "dropped": int(rounds["dropped"].sum()),
            "failed": int(rounds["failed"].sum()),
            "rejected": int(rounds["rejected"].sum()),
            "skipped_rounds": int(rounds["skipped"].sum()),
            "wall_s": float(rounds["wall_s"].sum()),
            "tiers": self.tiers_frame().to_dict(orient="records"),
            "provenance": self.provenance,
        }

    # --------------------------------------------------------------- files
    def write(self, rows: list[dict[str, Any]]) -> None:
        """Write the round just recorded (its device ``rows``).

        It is appended to the CSVs; the small tables, the summary and
        (optionally) the plots are rewritten.

        Each round costs its own rows, not the run's: ``rounds.parquet`` and the
        tier tables are one row per round or tier; ``devices.parquet`` is written
        by :meth:`flush` (until then an older one is removed, never left stale).
        """
        out = self.out_dir
        self.appended["rounds"].append(self.rounds[-1:])
        self.appended["devices"].append(rows)
        rounds, tiers = self.rounds_frame(), self.tiers_frame()
        atomic_write_frame(rounds, out / "rounds.parquet")
        (out / "devices.parquet").unlink(missing_ok=True)
        self._devices_parquet_behind = True
        atomic_write_frame(tiers, out / "tiers.csv")
        atomic_write_frame(tiers, out / "tiers.parquet")
        atomic_write_text(
            out / "summary.json", json.dumps(jsonable(self.summary()), indent=2) + "\n"
        )
        if not (out / "columns.json").exists():  # what every column means (fededge.reports.columns)
            atomic_write_text(out / "columns.json", columns_json() + "\n")
        if self.plots:
            self._plots_behind = True
            if time.monotonic() - self._plotted_at >= self.plot_every_s:
                self._plot(rounds, tiers)

    def flush(self) -> None:
        """Write ``devices.parquet`` and draw the plots, if rounds were recorded since."""
        if self._devices_parquet_behind and self.devices:
            atomic_write_frame(self.devices_frame(), self.out_dir / "devices.parquet")
        self._devices_parquet_behind = False
        if self.plots and self._plots_behind:
            self._plot(self.rounds_frame(), self.tiers_frame())

    def _plot(self, rounds: pd.DataFrame, tiers: pd.DataFrame) -> None:
        from fededge.reports.plots import fleet_plots

        fleet_plots(rounds, tiers, self.out_dir, title=self.name)
        self._plotted_at = time.monotonic()
        self._plots_behind = False

    @classmethod
    def load(
        cls,
        out_dir: str | Path,
        name: str,
        tiers: Iterable[str],
        marks: Mapping[str, Mapping[str, Any]],
        *,
        plots: bool = True,
        plot_every_s: float = 0.0,
    ) -> FleetReport:
        """A report continuing the tables in ``out_dir`` (for ``--resume``).

        Each CSV is cut back to what the checkpoint's ``marks`` (:meth:`table_marks`) say it
        held, and its rows are loaded (rows of later rounds are thereby dropped).

        Raises
        ------
        ValueError
            When a table does not match its mark (the checkpoint checks this first).
        """
        report = cls(out_dir, name, tiers, plots=plots, plot_every_s=plot_every_s)
        for stem, table in report.appended.items():
            mark = marks.get(table.path.name)
            if mark is not None:
                setattr(report, stem, _records(table.resume(mark)))
        report._tiers.add(report.devices)
        report._devices_parquet_behind = True
        return report

    def failure(self) -> str | None:
        """Why this run produced nothing (no device trained an instance), or None."""
        rounds = self.rounds_frame()
        if rounds.empty:
            return None
        trained = float(rounds["trained"].sum()) + float(rounds.get("foreign", 0).sum())
        last = rounds.iloc[-1]
        if trained > 0:
            if last.get("rolled_back", 0) and not math.isfinite(last["accuracy"]):
                lost = int(rounds["rolled_back"].sum())
                return (
                    f"the global model was lost: {lost} rounds ended in a non-finite model, "
                    "and none evaluated finite (diverged? lower train.lr)"
                )
            final = [d for d in self.devices if d["round"] == last["round"]]
            diverged = [d for d in final if str(d.get("reason", "")).startswith("diverged")]
            if diverged and not any(d["status"] == "ok" for d in final):
                return (
                    f"training diverged: in the last round {len(diverged)} of {len(final)} "
                    f"devices reported a NaN/Inf loss ({diverged[0]['reason']}) and none "
                    "trained; the global model is the last good one"
                )
            return None
        reasons = {str(d["reason"]) for d in self.devices if d.get("reason")}
        why = f"; reasons: {'; '.join(sorted(reasons)[:3])}" if reasons else ""
        return (
            f"no device trained a single instance in {len(rounds)} rounds "
            f"(ok {int(rounds['ok'].sum())}, failed {int(rounds['failed'].sum())}, "
            f"rejected {int(rounds['rejected'].sum())} replies){why}; "
            f"see devices.csv in {self.out_dir}"
        )

    def summary_text(self) -> str:
        """A console table of the per-tier totals and the fleet line."""
        tiers = self.tiers_frame()
        s = self.summary()
        lines = [
            f"{'tier':<16}{'devices':>8}{'trained':>10}{'spent MACs':>13}{'baseline':>13}"
            f"{'saved':>8}{'energy J':>11}{'budget out':>11}"
        ]
        for _, t in tiers.iterrows():
            lines.append(
                f"{t['tier']:<16}{int(t['devices']):>8}{int(t['trained']):>10}"
                f"{t['spent_macs']:>13.3g}{t['baseline_macs']:>13.3g}"
                f"{100 * t['computation_saved']:>7.1f}%{t['energy_j']:>11.3g}"
                f"{int(t['budget_exhausted']):>11}"
            )
        if s.get("rounds"):
            acc = s["final_accuracy"]
            lines.append(
                f"{'fleet':<16}{'':>8}{int(s['trained']):>10}{s['spent_macs']:>13.3g}"
                f"{s['baseline_macs']:>13.3g}{100 * s['computation_saved']:>7.1f}%"
                f"{s['energy_j']:>11.3g}{int(s['budget_exhausted']):>11}"
            )
            lines.append(f"final accuracy {100 * acc:.2f}%" if acc is not None else "no evaluation")
            lines.append(
                f"simulated time {s['sim_time_s']:.1f} s | dropped {s['dropped']} | "
                f"failed {s['failed']} | rejected {s['rejected']} | skipped rounds "
                f"{s['skipped_rounds']} | wall time in rounds {s['wall_s']:.1f} s"
            )
        return "\n".join(lines)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): v for k, v in r.items()} for r in frame.to_dict(orient="records")]


def jsonable(value: Any) -> Any:
    """``value`` with inf/NaN as None and numpy scalars as Python numbers (JSON has neither)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return jsonable(value.item())
    return value
