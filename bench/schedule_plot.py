"""Accuracy against schedule length, from ``bench/reproduce.py --json`` files.

Each file is one schedule length (``--iterations``); the plot has one line per arm
(``none`` = SGD, a saver arm, and ``smb:<arm>``, SGD at that arm's MACs) and the
table the gaps of the saver arm to SMB and to full SGD, so a user sees from which
training length on the savers pay.

Example::

    python bench/reproduce.py cifar --data-dir ../shared/data --iterations 500 \\
        --arms none,eif+emp --json runs/len500.json      # and 1000, 2000, ...
    python bench/schedule_plot.py runs/len*.json --arm eif+emp --out docs/cifar-schedule.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from reproduce import BATCH  # this script's folder is on sys.path when run as a script


def load(paths: list[Path], arm: str) -> list[dict[str, float]]:
    """One row per file: iterations, and the accuracy and saving of each arm found."""
    rows = []
    for path in paths:
        data = json.loads(path.read_text())
        batch = BATCH[data["suite"]]
        row: dict[str, float] = {}
        for result in data["results"]:
            name = result["name"].rsplit("/", 1)[1]
            if name == "none":
                row["iterations"] = math.ceil(result["streamed"] / batch)
                row["sgd"] = result["accuracy"]
            elif name == arm:
                row["iterations"] = math.ceil(result["streamed"] / batch)
                row["saver"] = result["accuracy"]
                row["saved"] = result["computation_saved"]
            elif name == f"smb:{arm}":
                row["smb"] = result["accuracy"]
                row["smb_steps"] = result["steps"]
        rows.append(row)
    return sorted(rows, key=lambda r: r.get("iterations", 0))


def table(rows: list[dict[str, float]], arm: str) -> str:
    nan = math.nan
    lines = [
        f"| streamed mini-batches | SGD | {arm} (saved) | SMB (steps) "
        f"| {arm} − SMB | {arm} − SGD |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        sgd, saver, smb = r.get("sgd", nan), r.get("saver", nan), r.get("smb", nan)
        lines.append(
            f"| {r.get('iterations', nan):,.0f} | {100 * sgd:.2f}% "
            f"| {100 * saver:.2f}% ({100 * r.get('saved', nan):.1f}%) "
            f"| {100 * smb:.2f}% ({r.get('smb_steps', nan):,.0f}) "
            f"| {100 * (saver - smb):+.2f} pt | {100 * (saver - sgd):+.2f} pt |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="bench/reproduce.py --json files")
    parser.add_argument("--arm", default="eif+emp", help="the saver arm (default: eif+emp)")
    parser.add_argument("--out", type=Path, default=None, help="write the plot here (PNG)")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.files if not p.is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    rows = load(args.files, args.arm)
    print(table(rows, args.arm))
    if args.out:
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, label in (
            ("sgd", "SGD"),
            ("saver", args.arm),
            ("smb", f"SMB at {args.arm}'s MACs"),
        ):
            points = [(r["iterations"], 100 * r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("streamed mini-batches (schedule length)")
        ax.set_ylabel("test accuracy (%)")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=120)
        print(f"plot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
