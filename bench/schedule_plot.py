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
    """One row per schedule length: the accuracy and saving of each arm found.

    Files of the same length (e.g. SGD run on its own) fill the same row.
    """
    rows: dict[int, dict[str, float]] = {}
    for path in paths:
        data = json.loads(path.read_text())
        batch = BATCH[data["suite"]]
        found: dict[str, float] = {}
        length = None
        for result in data["results"]:
            name = result["name"].rsplit("/", 1)[1]
            if name == "none":
                length = math.ceil(result["streamed"] / batch)
                found["sgd"] = result["accuracy"]
            elif name == arm:
                length = math.ceil(result["streamed"] / batch)
                found["saver"] = result["accuracy"]
                found["saved"] = result["computation_saved"]
            elif name == f"smb:{arm}":
                found["smb"] = result["accuracy"]
                found["smb_steps"] = result["steps"]
        if length is not None:
            rows.setdefault(length, {"iterations": length}).update(found)
    return [rows[length] for length in sorted(rows)]


def table(rows: list[dict[str, float]], arm: str) -> str:
    nan = math.nan
    lines = [
        f"| streamed mini-batches | SGD | {arm} (saved) | SMB (steps) "
        f"| {arm} − SMB | {arm} − SGD |",
        "|---:|---:|---:|---:|---:|---:|",
    ]

    def pct(value: float, sign: str = "", unit: str = "%") -> str:  # "–": an arm not run
        return "–" if math.isnan(value) else f"{100 * value:{sign}.2f}{unit}"

    for r in rows:
        sgd, saver, smb = r.get("sgd", nan), r.get("saver", nan), r.get("smb", nan)
        lines.append(
            f"| {r.get('iterations', nan):,.0f} | {pct(sgd)} "
            f"| {pct(saver)} ({100 * r.get('saved', nan):.1f}%) "
            f"| {pct(smb)} ({r.get('smb_steps', nan):,.0f}) "
            f"| {pct(saver - smb, '+', ' pt')} | {pct(saver - sgd, '+', ' pt')} |"
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
        lengths = [r["iterations"] for r in rows]
        ax.set_xticks(lengths, [f"{n:,.0f}" for n in lengths])
        ax.minorticks_off()
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
