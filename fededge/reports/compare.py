"""Side-by-side comparison of a budget sweep's variants: results, tables and findings.

Everything here reads what a sweep saved (``compare.json`` and each variant's
run report, see :mod:`fededge.reports.sweep`), so
:func:`fededge.reports.compare_page.render_compare` re-renders a sweep folder at
any time -- while it runs, after it was interrupted, or with another target
accuracy -- without running anything. The tables (written by it):

* ``variants.csv`` -- one row per variant: final and best accuracy, rounds and
  simulated seconds to the target accuracy, fleet MACs spent and the plain-SGD
  baseline on the same instances, computation saved, energy, instances
  arrived/streamed/trained/unprocessed, device-rounds whose budget ran out;
* ``tiers.csv`` -- the same per variant and tier (accuracy is the global
  model's, so it is a fleet column only);
* ``head_to_head.csv`` -- each saver setting against plain SGD (``none``) at
  the same budget level, with the budget-limited tiers' totals (several seeds:
  means over seed pairs and the sd of the per-seed differences);
* ``settings.csv`` -- one row per budget level x saver setting: mean and sd
  over seeds of the variant figures (one seed: sd NaN);
* ``columns.json`` -- what every column means (:mod:`fededge.reports.columns`).

The page (``report.md``, ``report.html``) and its plots are
:mod:`fededge.reports.compare_page`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fededge.reports.pages import (
    fmt_count,
    fmt_level,
    fmt_percent,
    fmt_points,
    fmt_si,
    read_rounds,
    read_tiers,
)
from fededge.reports.sweep import variant_state
from fededge.reports.sweep_plan import SweepManifest, VariantEntry


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class VariantResult:
    """What one variant's folder holds.

    ``status`` is ``finished``, ``partial`` (some rounds saved: still running,
    interrupted or failed) or ``missing`` (nothing of this scenario saved).
    """

    entry: VariantEntry
    status: str
    rounds: pd.DataFrame
    tiers: pd.DataFrame


def load_results(out_dir: Path, manifest: SweepManifest) -> list[VariantResult]:
    """Every planned variant's saved tables, in plan order."""
    results = []
    for entry in manifest.variants:
        folder = out_dir / entry.folder
        state = variant_state(folder, entry.digest, manifest.rounds)
        if state in ("finished", "resumable"):
            rounds, tiers = read_rounds(folder), read_tiers(folder)
            status = "finished" if state == "finished" else "partial"
            if rounds.empty:
                status = "missing"
        else:
            rounds, tiers, status = pd.DataFrame(), pd.DataFrame(), "missing"
        results.append(VariantResult(entry, status, rounds, tiers))
    return results


def time_to_target(rounds: pd.DataFrame, target: float | None) -> tuple[float, float]:
    """``(round, simulated seconds)`` at which accuracy first reached ``target`` (nan if never)."""
    if target is None or rounds.empty or "accuracy" not in rounds:
        return math.nan, math.nan
    hit = rounds[rounds["accuracy"] >= target - 1e-12]
    if hit.empty:
        return math.nan, math.nan
    first = hit.iloc[0]
    return float(first["round"]), float(first["cum_sim_s"])


def _sum(frame: pd.DataFrame, column: str) -> float:
    return float(frame[column].sum()) if column in frame and len(frame) else 0.0


def _saved(spent: float, baseline: float) -> float:
    return 1.0 - spent / baseline if baseline > 0 else 0.0


# --------------------------------------------------------------------------- tables
def variant_table(
    manifest: SweepManifest, results: list[VariantResult], target: float | None
) -> pd.DataFrame:
    """One row per variant (see the module docstring); missing variants have NaNs."""
    rows = []
    for r in results:
        e, rounds = r.entry, r.rounds
        row: dict[str, Any] = {
            "variant": e.name,
            "budget": e.budget,
            "savers": e.savers,
            "seed": e.seed if e.seed is not None else manifest.seed,
            "status": r.status,
            "rounds": int(rounds["round"].max()) if len(rounds) else 0,
        }
        acc = rounds["accuracy"].dropna() if "accuracy" in rounds else pd.Series(dtype=float)
        row["final_accuracy"] = float(acc.iloc[-1]) if len(acc) else math.nan
        row["best_accuracy"] = float(acc.max()) if len(acc) else math.nan
        row["target_accuracy"] = math.nan if target is None else target
        row["rounds_to_target"], row["time_to_target_s"] = time_to_target(rounds, target)
        last = rounds.iloc[-1] if len(rounds) else None
        spent = float(last["cum_spent_macs"]) if last is not None else math.nan
        baseline = float(last["cum_baseline_macs"]) if last is not None else math.nan
        row["spent_macs"], row["baseline_macs"] = spent, baseline
        row["computation_saved"] = _saved(spent, baseline) if last is not None else math.nan
        row["energy_j"] = float(last["cum_energy_j"]) if last is not None else math.nan
        for key in ("arrived", "streamed", "trained", "unprocessed", "budget_exhausted"):
            row[key] = _sum(rounds, key) if len(rounds) else math.nan
        row["replies"] = _sum(rounds, "ok") if len(rounds) else math.nan
        row["failed_replies"] = (
            _sum(rounds, "failed") + _sum(rounds, "rejected") if len(rounds) else math.nan
        )
        row["skipped_rounds"] = _sum(rounds, "skipped") if len(rounds) else math.nan
        row["budget_exhausted_share"] = (
            row["budget_exhausted"] / row["replies"] if row["replies"] > 0 else math.nan
        )
        row["sim_time_s"] = float(last["cum_sim_s"]) if last is not None else math.nan
        row["wall_s"] = _sum(rounds, "wall_s") if len(rounds) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


TIER_KEYS = (
    "replies",
    "arrived",
    "streamed",
    "trained",
    "unprocessed",
    "spent_macs",
    "baseline_macs",
    "energy_j",
    "budget_exhausted",
)


def tier_table(manifest: SweepManifest, results: list[VariantResult]) -> pd.DataFrame:
    """One row per variant and tier: its budget at that level and the tier's totals."""
    rows = []
    for r in results:
        by_name = {str(t["tier"]): t for _, t in r.tiers.iterrows()} if not r.tiers.empty else {}
        for tier in manifest.tiers:
            t = by_name.get(tier.name)
            row: dict[str, Any] = {
                "variant": r.entry.name,
                "budget": r.entry.budget,
                "savers": r.entry.savers,
                "tier": tier.name,
                "profile": tier.profile,
                "devices": tier.count,
                "limited": tier.limited,
                "budget_macs": tier.macs_at(r.entry.budget),
            }
            for key in TIER_KEYS:
                row[key] = float(t[key]) if t is not None and key in t else math.nan
            row["computation_saved"] = (
                _saved(row["spent_macs"], row["baseline_macs"]) if t is not None else math.nan
            )
            row["budget_exhausted_share"] = (
                row["budget_exhausted"] / row["replies"] if row["replies"] > 0 else math.nan
            )
            rows.append(row)
    return pd.DataFrame(rows)


#: Figures of a variant summarised over seeds (mean, sd) in ``settings.csv``.
SPREAD_KEYS = (
    "final_accuracy",
    "best_accuracy",
    "rounds_to_target",
    "time_to_target_s",
    "spent_macs",
    "computation_saved",
    "energy_j",
    "trained",
    "streamed",
)


def setting_table(variants: pd.DataFrame) -> pd.DataFrame:
    """One row per budget level x saver setting, over its seeds.

    ``seeds`` (how many finished) and the mean and standard deviation (``*_sd``,
    ddof 1; NaN with one seed) over seeds of :data:`SPREAD_KEYS`. A target never
    reached by a seed makes its time NaN there; ``target_reached`` counts the
    seeds that reached it.
    """
    done = variants[variants["status"] == "finished"] if len(variants) else variants
    rows = []
    for (level, setting), group in (
        done.groupby(["budget", "savers"], sort=False) if len(done) else ()
    ):
        row: dict[str, Any] = {"budget": level, "savers": setting, "seeds": len(group)}
        for key in SPREAD_KEYS:
            values = group[key].astype(float)
            row[key] = float(values.mean())
            row[f"{key}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        row["target_reached"] = int(group["time_to_target_s"].notna().sum())
        rows.append(row)
    return pd.DataFrame(rows)


def head_to_head(variants: pd.DataFrame, tiers: pd.DataFrame) -> pd.DataFrame:
    """Each saver setting against plain SGD (``none``) at the same budget level.

    Accuracy columns are the global model's; ``*_limited`` columns add up the
    tiers that have a budget (instances streamed and trained, how often their
    budget ran out). With several seeds every figure is the mean over the seeds
    both sides finished, paired by seed; ``delta_final_accuracy_sd`` is the
    standard deviation of the per-seed differences (NaN with one seed) and
    ``beyond_spread`` says whether the mean difference exceeds it. Empty when
    ``none`` was not part of the sweep.
    """
    have = variants[variants["status"] != "missing"] if len(variants) else variants
    rows = []
    for level in dict.fromkeys(have["budget"]) if len(have) else ():
        at = have[have["budget"] == level]
        base = at[at["savers"] == "none"]
        if base.empty:
            continue
        by_seed = {_seed_key(b["seed"]): b for _, b in base.iterrows()}
        for setting in dict.fromkeys(at.loc[at["savers"] != "none", "savers"]):
            pairs = [
                (by_seed[_seed_key(v["seed"])], v)
                for _, v in at[at["savers"] == setting].iterrows()
                if _seed_key(v["seed"]) in by_seed
            ]
            if pairs:
                rows.append(_pair_row(level, setting, pairs, tiers))
    return pd.DataFrame(rows)


def _seed_key(seed: Any) -> int | None:
    """A variant's seed as a pairing key (a manifest from before seeds has none: None)."""
    return None if pd.isna(seed) else int(seed)


def _pair_row(
    level: float, setting: str, pairs: list[tuple[pd.Series, pd.Series]], tiers: pd.DataFrame
) -> dict[str, Any]:
    """The head-to-head row of one setting at one level, over its seed pairs."""

    def mean(side: int, key: str) -> float:  # NaN when any seed has none (a target not reached)
        return float(pd.Series([p[side][key] for p in pairs], dtype=float).mean(skipna=False))

    def limited(side: int, key: str) -> float:
        values = [_limited(tiers, str(p[side]["variant"]))[key] for p in pairs]
        return float(pd.Series(values, dtype=float).mean())

    deltas = pd.Series([v["final_accuracy"] - b["final_accuracy"] for b, v in pairs], dtype=float)
    delta = float(deltas.mean())
    spread = float(deltas.std(ddof=1)) if len(deltas) > 1 else math.nan
    return {
        "budget": level,
        "savers": setting,
        "seeds": len(pairs),
        "sgd_final_accuracy": mean(0, "final_accuracy"),
        "savers_final_accuracy": mean(1, "final_accuracy"),
        "delta_final_accuracy": delta,
        "delta_final_accuracy_sd": spread,
        "beyond_spread": bool(abs(delta) > spread) if len(deltas) > 1 else None,
        "sgd_best_accuracy": mean(0, "best_accuracy"),
        "savers_best_accuracy": mean(1, "best_accuracy"),
        "delta_best_accuracy": mean(1, "best_accuracy") - mean(0, "best_accuracy"),
        "sgd_time_to_target_s": mean(0, "time_to_target_s"),
        "savers_time_to_target_s": mean(1, "time_to_target_s"),
        "sgd_streamed_limited": limited(0, "streamed"),
        "savers_streamed_limited": limited(1, "streamed"),
        "sgd_trained_limited": limited(0, "trained"),
        "savers_trained_limited": limited(1, "trained"),
        "sgd_exhausted_share_limited": limited(0, "exhausted_share"),
        "savers_exhausted_share_limited": limited(1, "exhausted_share"),
        "savers_saved_limited": limited(1, "saved"),
        "complete": all(b["status"] == "finished" and v["status"] == "finished" for b, v in pairs),
        "caution": "; ".join(
            filter(None, (t for b, v in pairs for t in (_trouble(b), _trouble(v))))
        ),
    }


def _trouble(variant: pd.Series) -> str:
    """``"x1-none: 2 skipped rounds, 7 failed replies"`` (empty when all went well)."""
    parts = []
    for key, what in (("skipped_rounds", "skipped rounds"), ("failed_replies", "failed replies")):
        count = variant.get(key, 0)
        if not pd.isna(count) and count > 0:
            parts.append(f"{int(count)} {what}")
    return f"{variant['variant']}: {', '.join(parts)}" if parts else ""


def _limited(tiers: pd.DataFrame, variant: str) -> dict[str, float]:
    """Totals over a variant's budget-limited tiers."""
    t = tiers[(tiers["variant"] == variant) & tiers["limited"]] if len(tiers) else tiers
    if t.empty:
        return dict.fromkeys(("streamed", "trained", "exhausted_share", "saved"), math.nan)
    replies = float(t["replies"].sum())
    return {
        "streamed": float(t["streamed"].sum()),
        "trained": float(t["trained"].sum()),
        "exhausted_share": float(t["budget_exhausted"].sum()) / replies if replies else math.nan,
        "saved": _saved(float(t["spent_macs"].sum()), float(t["baseline_macs"].sum())),
    }


#: Fewer rounds than this and the findings say the comparison means little.
FEW_ROUNDS = 5


def findings(h2h: pd.DataFrame, target: float | None, rounds: int | None = None) -> list[str]:
    """One sentence per head-to-head row, plus a verdict per saver setting.

    With several seeds a difference is called higher or lower only when the
    mean difference exceeds the standard deviation of the per-seed differences;
    otherwise it is "within the seed spread". With one seed the spread is
    unknown and the sentence says so.
    """
    lines = []
    if rounds is not None and rounds < FEW_ROUNDS:
        lines.append(
            f"Caution: only {rounds} rounds per variant; accuracies this early mostly show how "
            "fast training starts, not where it ends (use run.rounds of at least "
            f"{FEW_ROUNDS})."
        )
    for _, r in h2h.iterrows():
        delta = r["delta_final_accuracy"]
        if pd.isna(delta):
            continue
        seeds = int(r.get("seeds", 1) or 1)
        spread = r.get("delta_final_accuracy_sd", math.nan)
        if seeds > 1 and not pd.isna(spread):
            word = (
                ("higher" if delta > 0 else "lower")
                if abs(delta) > spread
                else "within the seed spread"
            )
            word = f"{word}; sd of the per-seed difference {fmt_spread(spread)} over {seeds} seeds"
        else:
            word = "higher" if delta > 0 else "lower" if delta < 0 else "the same"
            word += "; one seed: the spread is not measured"
        text = (
            f"At {fmt_level(r['budget'])} budget, {r['savers']} ended at "
            f"{fmt_percent(r['savers_final_accuracy'])} vs {fmt_percent(r['sgd_final_accuracy'])} "
            f"for plain SGD ({fmt_points(delta)}, {word})"
        )
        if not pd.isna(r["savers_streamed_limited"]) and r["sgd_streamed_limited"] > 0:
            ratio = r["savers_streamed_limited"] / r["sgd_streamed_limited"]
            text += (
                f"; on the budget-limited tiers it looked at {ratio:.1f}x as many instances "
                f"({fmt_count(r['savers_streamed_limited'])} vs "
                f"{fmt_count(r['sgd_streamed_limited'])}) and trained "
                f"{fmt_count(r['savers_trained_limited'])} vs {fmt_count(r['sgd_trained_limited'])}"
            )
        if target is not None:
            text += (
                f"; simulated time to {fmt_percent(target)}: "
                f"{_seconds(r['savers_time_to_target_s'])} vs "
                f"{_seconds(r['sgd_time_to_target_s'])}"
            )
        text += "." if r["complete"] else " (not all rounds finished yet)."
        if r.get("caution"):
            text += f" Caution, failures distort this pair: {r['caution']}."
        lines.append(text)
    for setting in dict.fromkeys(h2h["savers"]) if len(h2h) else ():
        rows = h2h[(h2h["savers"] == setting) & h2h["delta_final_accuracy"].notna()]
        if len(rows) > 1:
            ahead = rows["delta_final_accuracy"] > 0
            if "beyond_spread" in rows and rows["beyond_spread"].notna().all():
                ahead &= rows["beyond_spread"].astype(bool)
                how = "by more than the seed spread "
            else:
                how = ""
            wins = int(ahead.sum())
            lines.append(
                f"{setting} beat plain SGD's final accuracy {how}at {wins} of {len(rows)} budget "
                f"levels (mean difference {fmt_points(rows['delta_final_accuracy'].mean())})."
            )
    return lines


def _seconds(value: Any) -> str:
    return "not reached" if pd.isna(value) else f"{float(value):,.0f} s"


def tier_budget_table(manifest: SweepManifest) -> pd.DataFrame:
    """The tiers' budgets at level 1, as written in the scenario."""
    units = {"budget_macs": "MACs", "budget_seconds": "s", "budget_joules": "J"}
    return pd.DataFrame(
        [
            {
                "tier": t.name,
                "profile": t.profile,
                "devices": t.count,
                "budget": _budget_text(t.value, units[t.field]) if t.field else "unlimited",
                "budget_macs": t.macs,
            }
            for t in manifest.tiers
        ]
    )


def _budget_text(value: float | None, unit: str) -> str:
    return f"{fmt_si(value)} MACs" if unit == "MACs" else f"{value:g} {unit}"


def fmt_spread(value: Any) -> str:
    """A standard deviation of accuracies in percentage points, unsigned (``1.73 pp``)."""
    return "–" if pd.isna(value) else f"{100 * float(value):.2f} pp"
