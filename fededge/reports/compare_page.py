"""The comparison page of a budget sweep: its tables formatted, findings, plots, Markdown and HTML.

:func:`render_compare` writes ``variants.csv``, ``tiers.csv``,
``head_to_head.csv``, ``settings.csv``, ``columns.json`` (see
:mod:`fededge.reports.compare`), ``report.md`` and ``report.html``
(self-contained), and the plots ``accuracy_vs_macs.png``,
``accuracy_vs_budget.png``, ``saving_per_tier.png``.
"""


from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from fededge.files import atomic_write_text
from fededge.reports.columns import as_json as columns_json
from fededge.reports.compare import (
    findings,
    fmt_spread,
    head_to_head,
    load_results,
    setting_table,
    tier_budget_table,
    tier_table,
    variant_table,
)
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
    render_run,
    shown,
)
from fededge.reports.sweep import read_manifest, write_manifest
from fededge.reports.sweep_plan import SweepManifest
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



# --------------------------------------------------------------------------- display
def _time_or_unreached(value: Any) -> str:
    return "not reached" if pd.isna(value) else fmt_number(value)


VARIANT_COLUMNS = shown(
    "variant",
    Column("seed", "seed", fmt_count),
    Column("status", "status"),
    Column("final_accuracy", "final acc.", fmt_percent),
    Column("best_accuracy", "best acc.", fmt_percent),
    Column("rounds_to_target", "rounds to target", fmt_count),
    Column("time_to_target_s", "sim. s to target", _time_or_unreached),
    Column("spent_macs", "fleet MACs", fmt_si),
    "computation_saved",
    "energy_j",
    "streamed",
    "trained",
    "budget_exhausted",
    "replies",
    Column("failed_replies", "failed replies", fmt_count),
    Column("skipped_rounds", "skipped rounds", fmt_count),
    Column("sim_time_s", "sim. time (s)", fmt_number),
    Column("wall_s", "wall (s)", fmt_number),
)
TIER_COLUMNS = shown(
    "variant",
    "tier",
    Column("budget_macs", "budget MACs/round", fmt_si),
    "streamed",
    "trained",
    "unprocessed",
    "spent_macs",
    "computation_saved",
    "energy_j",
    "budget_exhausted",
    "replies",
)
H2H_COLUMNS = shown(
    "budget",
    "savers",
    "seeds",
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


SPREAD_COLUMNS = shown(
    "budget",
    "savers",
    "seeds",
    Column("final_accuracy", "final acc."),
    Column("best_accuracy", "best acc."),
    Column("time_to_target_s", "sim. s to target"),
    Column("target_reached", "seeds at target", fmt_count),
    Column("computation_saved", "saved"),
    Column("spent_macs", "fleet MACs"),
)
BUDGET_COLUMNS = shown(
    "tier",
    Column("profile", "profile"),
    "devices",
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
