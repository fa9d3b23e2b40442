"""Plots of fleet reports and budget sweeps, as PNG and SVG (matplotlib, headless Agg backend).

MACs are drawn in GMAC (10^9 multiply-accumulates), times in simulated seconds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

GIGA = 1e9


def _legend_beside(ax: Axes, **kwargs: Any) -> None:
    """The legend to the right of ``ax``, outside it, so that it never covers data."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, **kwargs)


def _save(fig: Figure, path: Path) -> None:
    """Write ``path`` (PNG) and the same figure as SVG beside it, each atomically."""
    fig.tight_layout()
    for target, fmt in ((path, "png"), (path.with_suffix(".svg"), "svg")):
        tmp = target.with_name(f".{target.stem}.tmp.{fmt}")
        fig.savefig(tmp, dpi=110, format=fmt, bbox_inches="tight")  # keeps outside legends
        tmp.replace(target)
    plt.close(fig)


def fleet_plots(rounds: pd.DataFrame, tiers: pd.DataFrame, out_dir: Path, *, title: str) -> None:
    """Accuracy per round, cumulative MACs spent vs baseline, saving per tier."""
    if rounds.empty:
        return
    evaluated = rounds.dropna(subset=["accuracy"])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(evaluated["round"], 100 * evaluated["accuracy"], marker="o")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{title}: accuracy per round")
    ax.grid(alpha=0.3)
    _save(fig, out_dir / "accuracy.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    base, spent = rounds["cum_baseline_macs"] / GIGA, rounds["cum_spent_macs"] / GIGA
    ax.plot(rounds["round"], base, label="baseline (plain SGD)", ls="--")
    ax.plot(rounds["round"], spent, label="spent", marker="o")
    ax.set_xlabel("round")
    ax.set_ylabel("cumulative GMAC")
    ax.set_title(f"{title}: MACs spent vs baseline")
    _legend_beside(ax)
    ax.grid(alpha=0.3)
    _save(fig, out_dir / "macs.png")

    # time- and energy-to-accuracy: what a device team asks
    fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    ax_t.plot(evaluated["cum_sim_s"], 100 * evaluated["accuracy"], marker="o")
    ax_t.set_xlabel("simulated time (s, cumulative)")
    ax_t.set_ylabel("test accuracy (%)")
    ax_e.plot(evaluated["cum_energy_j"], 100 * evaluated["accuracy"], marker="o", color="tab:red")
    ax_e.set_xlabel("fleet energy (J, cumulative)")
    for ax in (ax_t, ax_e):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: accuracy vs simulated time and energy")
    _save(fig, out_dir / "accuracy_vs_time.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(tiers["tier"], 100 * tiers["computation_saved"], color="tab:green")
    for x, v in enumerate(100 * tiers["computation_saved"]):
        ax.text(x, v, f"{v:.1f}%", ha="center", va="bottom")
    ax.set_ylabel("computation saved (%)")
    ax.set_title(f"{title}: saving per tier")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3, axis="y")
    _save(fig, out_dir / "saving_per_tier.png")


# --------------------------------------------------------------------------- sweeps
SAVER_COLORS = {
    "none": "tab:gray",
    "eif": "tab:blue",
    "emp": "tab:orange",
    "eif+emp": "tab:green",
    "eif:auto": "tab:purple",
    "eif+emp:auto": "tab:red",
}


def compare_plots(
    variants: pd.DataFrame,
    rounds: dict[str, pd.DataFrame],
    tiers: pd.DataFrame,
    out_dir: Path,
    *,
    title: str,
    target: float | None = None,
    spread_table: pd.DataFrame | None = None,
) -> list[Path]:
    """The plots of a budget sweep (see :mod:`fededge.reports.compare`); returns the files written.

    * ``accuracy_vs_macs.png``: accuracy against cumulative fleet MACs, one
      panel per budget level, one curve per saver setting, a point per round;
    * ``accuracy_vs_budget.png``: final accuracy against the budget level
      (several seeds: the mean over seeds, error bars one sd, from ``spread_table``);
    * ``saving_per_tier.png``: computation saved per tier and budget level,
      one panel per saver setting other than ``none`` (which saves 0%).
    """
    written: list[Path] = []
    have = variants[variants["status"] != "missing"] if len(variants) else variants
    if have.empty:
        return written
    levels = sorted(dict.fromkeys(have["budget"]))
    settings = list(dict.fromkeys(have["savers"]))

    # accuracy vs fleet MACs: one panel per budget level
    ncols = min(len(levels), 4)
    nrows = math.ceil(len(levels) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), sharey=True, squeeze=False
    )
    for ax, level in zip(axes.flat, levels, strict=False):
        for setting in settings:
            row = have[(have["budget"] == level) & (have["savers"] == setting)]
            labelled = False  # one curve per seed, one label
            for name in row["variant"]:
                frame = rounds.get(str(name))
                if frame is None or frame.empty:
                    continue
                ev = frame.dropna(subset=["accuracy"])
                ax.plot(
                    ev["cum_spent_macs"] / GIGA,
                    100 * ev["accuracy"],
                    marker="o",
                    ms=3.5,
                    lw=1.5 if len(row) == 1 else 1.0,
                    alpha=1.0 if len(row) == 1 else 0.7,
                    color=SAVER_COLORS.get(setting),
                    label=None if labelled else setting,
                )
                labelled = True
        if target is not None:
            ax.axhline(100 * target, color="black", ls=":", lw=1, label="target")
        ax.set_title(f"budget {level:g}x")
        ax.set_xlabel("fleet GMAC spent (cumulative)")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(levels) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy (%)")
    _legend_beside(axes.flat[min(len(levels), axes.shape[1]) - 1])
    fig.suptitle(f"{title}: accuracy vs fleet MACs (points = rounds)")
    _save(fig, out_dir / "accuracy_vs_macs.png")
    written.append(out_dir / "accuracy_vs_macs.png")

    # final accuracy vs budget level
    fig, ax = plt.subplots(figsize=(6, 4))
    spread = spread_table is not None and bool((spread_table.get("seeds", pd.Series()) > 1).any())
    for setting in settings:
        if spread:
            assert spread_table is not None
            rows = spread_table[spread_table["savers"] == setting].sort_values("budget")
            ax.errorbar(
                rows["budget"],
                100 * rows["final_accuracy"],
                yerr=100 * rows["final_accuracy_sd"].fillna(0.0),
                marker="o",
                capsize=3,
                color=SAVER_COLORS.get(setting),
                label=f"{setting} (mean ± sd over seeds)",
            )
            continue
        rows = have[have["savers"] == setting].sort_values("budget")
        ax.plot(
            rows["budget"],
            100 * rows["final_accuracy"],
            marker="o",
            color=SAVER_COLORS.get(setting),
            label=setting,
        )
    if target is not None:
        ax.axhline(100 * target, color="black", ls=":", lw=1, label="target")
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [f"{level:g}x" for level in levels])
    ax.minorticks_off()
    ax.set_xlabel("budget level (x every tier's budget)")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title(f"{title}: accuracy vs budget")
    _legend_beside(ax)
    ax.grid(alpha=0.3)
    _save(fig, out_dir / "accuracy_vs_budget.png")
    written.append(out_dir / "accuracy_vs_budget.png")

    # saving per tier: one panel per saver setting other than none
    path = out_dir / "saving_per_tier.png"
    savers_on = [s for s in settings if s != "none"]
    if not savers_on or tiers.empty:
        path.unlink(missing_ok=True)
        path.with_suffix(".svg").unlink(missing_ok=True)
        return written
    tier_names = list(dict.fromkeys(tiers["tier"]))
    ncols = min(len(savers_on), 3)
    nrows = math.ceil(len(savers_on) / ncols)
    panel_w = max(3.8, 0.35 * len(tier_names) * len(levels) + 1.5)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(panel_w * ncols + 1.0, 3.6 * nrows), sharey=True, squeeze=False
    )
    width = 0.8 / len(levels)
    cmap = plt.get_cmap("viridis")
    for ax, setting in zip(axes.flat, savers_on, strict=False):
        for j, level in enumerate(levels):
            t = tiers[(tiers["savers"] == setting) & (tiers["budget"] == level)]
            saved = [
                float(t.loc[t["tier"] == name, "computation_saved"].iloc[0])
                if (t["tier"] == name).any()
                else math.nan
                for name in tier_names
            ]
            xs = [i + (j - (len(levels) - 1) / 2) * width for i in range(len(tier_names))]
            color = cmap(0.15 + 0.7 * j / max(1, len(levels) - 1))
            bars = ax.bar(xs, [100 * v for v in saved], width, label=f"{level:g}x", color=color)
            if len(levels) * len(tier_names) <= 16:
                ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
        ax.set_xticks(range(len(tier_names)), tier_names)
        ax.set_ylim(0, 100)
        ax.set_title(setting)
        ax.grid(alpha=0.3, axis="y")
    for ax in axes.flat[len(savers_on) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("computation saved (%)")
    _legend_beside(axes[0, ncols - 1], title="budget")
    fig.suptitle(f"{title}: saving per tier")
    _save(fig, path)
    written.append(path)
    return written
