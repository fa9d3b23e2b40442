"""Side-by-side comparison of a budget sweep's variants: tables, findings, plots, report.

Everything here reads what a sweep saved (``compare.json`` and each variant's
run report, see :mod:`fededge.reports.sweep`), so :func:`render_compare` re-renders a
sweep folder at any time -- while it runs, after it was interrupted, or with
another target accuracy -- without running anything. It writes:

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
* ``columns.json`` -- what every column means (:mod:`fededge.reports.columns`);
* ``report.md`` and ``report.html`` (self-contained), and the plots
  ``accuracy_vs_macs.png``, ``accuracy_vs_budget.png``, ``saving_per_tier.png``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from fededge.files import atomic_write_text
from fededge.reports.columns import as_json as columns_json
from fededge.reports.pages import (
    Column,
    fmt_count,
    fmt_level,
    fmt_number,
    fmt_percent,
    fmt_points,
    fmt_si,
    formatted_html,
    formatted_markdown,
    h2,
    html_image,
    html_links,
    html_list,
    html_page,
    paragraph,
    read_rounds,
    read_tiers,
    render_run,
)
from fededge.reports.sweep import (
    SweepManifest,
    VariantEntry,
    read_manifest,
    variant_state,
    write_manifest,
)
from fededge.reports.tables import atomic_write_frame

PLOTS = (
    (
        "accuracy_vs_macs.png",
        "Test accuracy of the global model against cumulative fleet MACs spent, one panel per "
        "budget level, one curve per saver setting; each point is a round.",
    ),
    (
        "accuracy_vs_budget.png",
        "Final test accuracy against the budget level (multiplier of every tier's budget), "
        "one curve per saver setting.",
    ),
    (
        "saving_per_tier.png",
        "Computation saved per tier against plain SGD on the same instances, per saver setting "
        "and budget level (plain SGD saves 0% by definition and is left out).",
    ),
)


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
    """One row per budget level x saver setting: ``seeds`` (how many finished) and the
    mean and standard deviation (``*_sd``, ddof 1; NaN with one seed) over seeds of
    :data:`SPREAD_KEYS`. A target never reached by a seed makes its time NaN there;
    ``target_reached`` counts the seeds that reached it."""
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


# --------------------------------------------------------------------------- display
def _time_or_unreached(value: Any) -> str:
    return "not reached" if pd.isna(value) else fmt_number(value)


def fmt_spread(value: Any) -> str:
    """A standard deviation of accuracies in percentage points, unsigned (``1.73 pp``)."""
    return "–" if pd.isna(value) else f"{100 * float(value):.2f} pp"


VARIANT_COLUMNS = (
    Column("variant", "variant"),
    Column("seed", "seed", fmt_count),
    Column("status", "status"),
    Column("final_accuracy", "final acc.", fmt_percent),
    Column("best_accuracy", "best acc.", fmt_percent),
    Column("rounds_to_target", "rounds to target", fmt_count),
    Column("time_to_target_s", "sim. s to target", _time_or_unreached),
    Column("spent_macs", "fleet MACs", fmt_si),
    Column("computation_saved", "saved", fmt_percent),
    Column("energy_j", "energy (J)", fmt_number),
    Column("streamed", "streamed", fmt_count),
    Column("trained", "trained", fmt_count),
    Column("budget_exhausted", "budget ran out", fmt_count),
    Column("replies", "replies", fmt_count),
    Column("failed_replies", "failed replies", fmt_count),
    Column("skipped_rounds", "skipped rounds", fmt_count),
    Column("sim_time_s", "sim. time (s)", fmt_number),
    Column("wall_s", "wall (s)", fmt_number),
)
TIER_COLUMNS = (
    Column("variant", "variant"),
    Column("tier", "tier"),
    Column("budget_macs", "budget MACs/round", fmt_si),
    Column("streamed", "streamed", fmt_count),
    Column("trained", "trained", fmt_count),
    Column("unprocessed", "unprocessed", fmt_count),
    Column("spent_macs", "spent MACs", fmt_si),
    Column("computation_saved", "saved", fmt_percent),
    Column("energy_j", "energy (J)", fmt_number),
    Column("budget_exhausted", "budget ran out", fmt_count),
    Column("replies", "replies", fmt_count),
)
H2H_COLUMNS = (
    Column("budget", "budget", fmt_level),
    Column("savers", "savers"),
    Column("seeds", "seeds", fmt_count),
    Column("sgd_final_accuracy", "plain SGD acc.", fmt_percent),
    Column("savers_final_accuracy", "savers acc.", fmt_percent),
    Column("delta_final_accuracy", "Δ acc.", fmt_points),
    Column("delta_final_accuracy_sd", "sd of Δ (seeds)", fmt_spread),
    Column("delta_best_accuracy", "Δ best acc.", fmt_points),
    Column("sgd_time_to_target_s", "SGD sim. s to target", _time_or_unreached),
    Column("savers_time_to_target_s", "savers sim. s to target", _time_or_unreached),
    Column("sgd_streamed_limited", "SGD streamed (limited tiers)", fmt_count),
    Column("savers_streamed_limited", "savers streamed (limited tiers)", fmt_count),
    Column("sgd_trained_limited", "SGD trained (limited tiers)", fmt_count),
    Column("savers_trained_limited", "savers trained (limited tiers)", fmt_count),
    Column("sgd_exhausted_share_limited", "SGD budget ran out", fmt_percent),
    Column("savers_exhausted_share_limited", "savers budget ran out", fmt_percent),
    Column("savers_saved_limited", "savers saved (limited tiers)", fmt_percent),
)


def _mean_sd(mean: Any, sd: Any, fmt: Callable[[Any], str]) -> str:
    return fmt(mean) if pd.isna(sd) else f"{fmt(mean)} ± {fmt(sd)}"


def spread_frame(settings: pd.DataFrame) -> pd.DataFrame:
    """:func:`setting_table` with each figure as one ``mean ± sd`` text column."""
    out = settings[["budget", "savers", "seeds", "target_reached"]].copy()
    for key, fmt in (
        ("final_accuracy", fmt_percent),
        ("best_accuracy", fmt_percent),
        ("time_to_target_s", fmt_number),
        ("computation_saved", fmt_percent),
        ("spent_macs", fmt_si),
    ):
        out[key] = [
            _mean_sd(m, sd, fmt) for m, sd in zip(settings[key], settings[f"{key}_sd"], strict=True)
        ]
    return out


SPREAD_COLUMNS = (
    Column("budget", "budget", fmt_level),
    Column("savers", "savers"),
    Column("seeds", "seeds", fmt_count),
    Column("final_accuracy", "final acc."),
    Column("best_accuracy", "best acc."),
    Column("time_to_target_s", "sim. s to target"),
    Column("target_reached", "seeds at target", fmt_count),
    Column("computation_saved", "saved"),
    Column("spent_macs", "fleet MACs"),
)
BUDGET_COLUMNS = (
    Column("tier", "tier"),
    Column("profile", "profile"),
    Column("devices", "devices", fmt_count),
    Column("budget", "budget per device and round (level 1×)"),
    Column("budget_macs", "in MACs", fmt_si),
)


# --------------------------------------------------------------------------- render
@dataclass(frozen=True)
class Comparison:
    """The rendered tables of a sweep folder."""

    manifest: SweepManifest
    variants: pd.DataFrame
    tiers: pd.DataFrame
    head_to_head: pd.DataFrame
    findings: tuple[str, ...]
    html: Path
    markdown: Path


def render_compare(
    out_dir: str | Path, *, target_accuracy: float | None = None, plots: bool = True
) -> Comparison:
    """Build every table, plot and page of a sweep folder from what it saved.

    ``target_accuracy`` replaces the recorded target (and is recorded).

    Raises
    ------
    ConfigError
        When ``out_dir`` holds no sweep (no readable ``compare.json``).
    """
    out = Path(out_dir)
    manifest = read_manifest(out)
    if target_accuracy is not None and target_accuracy != manifest.target_accuracy:
        manifest = replace(manifest, target_accuracy=target_accuracy)
        write_manifest(out, manifest)
    target = manifest.target_accuracy
    results = load_results(out, manifest)
    variants = variant_table(manifest, results, target)
    tiers = tier_table(manifest, results)
    h2h = head_to_head(variants, tiers)
    settings = setting_table(variants)
    lines = tuple(findings(h2h, target, manifest.rounds))
    tables = (
        (variants, "variants"),
        (tiers, "tiers"),
        (h2h, "head_to_head"),
        (settings, "settings"),
    )
    atomic_write_text(out / "columns.json", columns_json() + "\n")
    for frame, stem in tables:
        atomic_write_frame(frame, out / f"{stem}.csv")
        atomic_write_frame(frame, out / f"{stem}.parquet")  # exact types for pandas users
    if plots:
        from fededge.reports.plots import compare_plots

        rounds = {r.entry.name: r.rounds for r in results if r.status != "missing"}
        compare_plots(
            variants, rounds, tiers, out, title=manifest.name, target=target, spread_table=settings
        )
    for r in results:  # each variant's own run report, linked from the sweep's
        if r.status != "missing" and _stale(out / r.entry.folder):
            render_run(out / r.entry.folder, plots=False)
    md_path, html_path = out / "report.md", out / "report.html"
    atomic_write_text(md_path, compare_markdown(manifest, variants, tiers, h2h, lines, settings))
    atomic_write_text(html_path, compare_html(out, manifest, variants, tiers, h2h, lines, settings))
    return Comparison(manifest, variants, tiers, h2h, lines, html_path, md_path)


def _stale(folder: Path) -> bool:
    """A run folder whose report.html is missing or older than its rounds table."""
    page, rounds = folder / "report.html", folder / "rounds.parquet"
    if not page.exists():
        return True
    return rounds.exists() and rounds.stat().st_mtime_ns > page.stat().st_mtime_ns


def _setup_text(manifest: SweepManifest) -> list[str]:
    m = manifest
    limited = [t.name for t in m.tiers if t.limited]
    unlimited = [t.name for t in m.tiers if not t.limited]
    lines = [
        f"{m.num_devices} devices in {len(m.tiers)} tiers, {m.rounds} rounds; budget levels "
        f"{', '.join(fmt_level(b) for b in m.budgets)} and saver settings {', '.join(m.savers)}: "
        f"{len(m.variants)} variants on the same streams and seed (scenario digest {m.digest}).",
        "A budget level multiplies every tier's per-round budget; "
        + (
            f"tiers without a budget ({', '.join(unlimited)}) stay unlimited at every level."
            if unlimited
            else "every tier has a budget."
        ),
        "Accuracy is the global model's test accuracy (a fleet figure, not per tier). "
        + (
            f"Budget-limited tiers: {', '.join(limited)}."
            if limited
            else "No tier has a budget: the levels change nothing."
        ),
    ]
    target = m.target_accuracy
    lines.append(
        f"Target accuracy {fmt_percent(target)}: time to target is the simulated time "
        "(slowest selected device per round, summed) until the global model first reached it."
        if target is not None
        else "No target accuracy set (sweep.target_accuracy or --target): no time-to-target."
    )
    return lines


def compare_markdown(
    manifest: SweepManifest,
    variants: pd.DataFrame,
    tiers: pd.DataFrame,
    h2h: pd.DataFrame,
    lines: tuple[str, ...],
    settings: pd.DataFrame | None = None,
) -> str:
    """The comparison as a Markdown document (plots linked, not embedded)."""
    parts = [f"# Budget sweep: {manifest.name}", "", *_setup_text(manifest), ""]
    parts += [
        "## Tier budgets",
        "",
        formatted_markdown(tier_budget_table(manifest), BUDGET_COLUMNS),
    ]
    if len(h2h):
        parts += ["", "## Savers vs plain SGD at equal budget", ""]
        parts += [f"- {line}" for line in lines]
        parts += ["", formatted_markdown(h2h, H2H_COLUMNS)]
    if manifest.seeds and settings is not None and len(settings):
        parts += [
            "",
            "## Over seeds (mean ± sd)",
            "",
            formatted_markdown(spread_frame(settings), SPREAD_COLUMNS),
        ]
    parts += ["", "## Variants", "", formatted_markdown(variants, VARIANT_COLUMNS)]
    parts += ["", "## Variants per tier", "", formatted_markdown(tiers, TIER_COLUMNS), ""]
    parts += ["## Plots", ""]
    parts += [f"![{caption}]({name})" for name, caption in PLOTS]
    return "\n".join(parts) + "\n"


def compare_html(
    out_dir: Path,
    manifest: SweepManifest,
    variants: pd.DataFrame,
    tiers: pd.DataFrame,
    h2h: pd.DataFrame,
    lines: tuple[str, ...],
    settings: pd.DataFrame | None = None,
) -> str:
    """The comparison as one self-contained HTML page (plots embedded)."""
    blocks = [paragraph(t) for t in _setup_text(manifest)]
    blocks += [h2("Tier budgets"), formatted_html(tier_budget_table(manifest), BUDGET_COLUMNS)]
    if len(h2h):
        blocks += [h2("Savers vs plain SGD at equal budget"), html_list(lines, "findings")]
        blocks.append(formatted_html(h2h, H2H_COLUMNS))
    if manifest.seeds and settings is not None and len(settings):
        blocks += [
            h2("Over seeds (mean ± sd)"),
            formatted_html(spread_frame(settings), SPREAD_COLUMNS),
        ]
    blocks.append(h2("Plots"))
    blocks += [html_image(out_dir / name, caption) for name, caption in PLOTS]
    blocks += [h2("Variants"), formatted_html(variants, VARIANT_COLUMNS)]
    missing = variants[variants["status"] != "finished"] if len(variants) else variants
    if len(missing):
        blocks.append(
            paragraph(
                f"{len(missing)} variant(s) not finished: {', '.join(missing['variant'])}. "
                "Run the same fededge compare command again to finish them; finished variants "
                "are skipped.",
                "note",
            )
        )
    blocks += [h2("Variants per tier"), formatted_html(tiers, TIER_COLUMNS)]
    reports = [
        (e.name, f"{e.folder}/report.html")
        for e in manifest.variants
        if (out_dir / e.folder / "report.html").exists()
    ]
    if reports:
        blocks += [
            h2("Each variant's own report"),
            paragraph("Rounds, devices, tiers, the R_set each tier aimed at, and plots."),
            html_links(reports),
        ]
    return html_page(f"fededge budget sweep: {manifest.name}", blocks, meta=str(out_dir))
