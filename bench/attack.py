"""Defences against attacking devices, side by side: ``scenarios/attack.toml``.

The quickstart fleet (20 MNIST devices, LeNet-5, EIF + EMP) where 2 devices (10%)
send ``w - 10 u`` instead of their update ``u``. Each arm is one ``fededge run``
of the same scenario and seed; the table gives final and best accuracy, and how
many replies the defence clipped or rejected::

    python bench/attack.py                      # every arm, results in runs/attack/
    python bench/attack.py --arms clean,none,median --rounds 6
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "attack.toml"

#: arm -> (what it is, scenario overrides)
ARMS: dict[str, tuple[str, list[str]]] = {
    "clean": ("no attackers, FedAvg (default norm bound)", ['fleet.tiers[3].attack="none"']),
    "none": ("attackers, FedAvg, no defence", ["server.norm_bound=0.0"]),
    "norm-bound": ("attackers, FedAvg + norm bound 10x median (default)", []),
    "norm-bound-2": ("attackers, FedAvg + norm bound 2x median", ["server.norm_bound=2.0"]),
    "median": ("attackers, coordinate-wise median", ['server.aggregation="median"']),
    "trimmed_mean": (
        "attackers, trimmed mean (20% each end)",
        ['server.aggregation="trimmed_mean"'],
    ),
    "krum": ("attackers, Krum (f = 2)", ['server.aggregation="krum"', "server.byzantine=2"]),
    "multikrum": (
        "attackers, Multi-Krum (f = 2)",
        ['server.aggregation="multikrum"', "server.byzantine=2"],
    ),
}


def run_arm(arm: str, out: Path, rounds: int | None) -> dict[str, object]:
    """One ``fededge run`` of an arm; its summary and defence counts."""
    overrides = list(ARMS[arm][1]) + ([f"run.rounds={rounds}"] if rounds else [])
    cmd = [sys.executable, "-m", "fededge.cli", "run", str(SCENARIO), "--out", str(out), "-q"]
    cmd.append("--move-aside")  # a re-run keeps the previous one as <arm>.old-N
    for item in overrides:
        cmd += ["--set", item]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{arm} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    devices = pd.read_csv(out / "devices.csv")
    clipped = int(devices["reason"].astype(str).str.startswith("clipped").sum())
    return {
        "arm": arm,
        "what": ARMS[arm][0],
        "final": summary["final_accuracy"],
        "best": summary["best_accuracy"],
        "clipped": clipped,
        "rejected": summary["rejected"],
        "wall_s": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms")
    parser.add_argument("--rounds", type=int, default=None, help="override run.rounds")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "attack")
    args = parser.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arms {unknown}; expected some of {', '.join(ARMS)}")
    rows = []
    for arm in arms:
        rows.append(run_arm(arm, args.out / arm, args.rounds))
        r = rows[-1]
        print(f"{arm}: final {100 * r['final']:.2f}%  ({r['wall_s']:.0f} s)", flush=True)
    clean = next((r["final"] for r in rows if r["arm"] == "clean"), None)
    print("\n| arm | what | final acc | best acc | vs clean | clipped | rejected |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        gap = f"{100 * (r['final'] - clean):+.2f} pt" if clean is not None else "-"
        print(
            f"| {r['arm']} | {r['what']} | {100 * r['final']:.2f}% | {100 * r['best']:.2f}% | "
            f"{gap} | {r['clipped']} | {r['rejected']} |"
        )
    (args.out / "table.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
