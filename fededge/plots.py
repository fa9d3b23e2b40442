"""PNG plots of fleet reports (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure


def _save(fig: Figure, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


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
    ax.plot(rounds["round"], rounds["cum_baseline_macs"], label="baseline (plain SGD)", ls="--")
    ax.plot(rounds["round"], rounds["cum_spent_macs"], label="spent", marker="o")
    ax.set_xlabel("round")
    ax.set_ylabel("cumulative MACs")
    ax.set_title(f"{title}: MACs spent vs baseline")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, out_dir / "macs.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(tiers["tier"], 100 * tiers["computation_saved"], color="tab:green")
    for x, v in enumerate(100 * tiers["computation_saved"]):
        ax.text(x, v, f"{v:.1f}%", ha="center", va="bottom")
    ax.set_ylabel("computation saved (%)")
    ax.set_title(f"{title}: saving per tier")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3, axis="y")
    _save(fig, out_dir / "saving_per_tier.png")
