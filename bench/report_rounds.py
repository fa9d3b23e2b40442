"""Benchmark: what the fleet report costs per round as a run grows.

A run's tables are written after every round (``fededge.reports.fleet_report.FleetReport``) and
the checkpoint manifest records them. If a round rewrote every table in full, the
cost of round ``r`` would grow with ``r`` (quadratic over the run). This times
:meth:`FleetReport.add_round` plus :func:`server.checkpoint.save_checkpoint`'s
table bookkeeping for ``--rounds`` rounds of ``--devices`` device rows each
(realistic ledgers, no training), then the end-of-run :meth:`FleetReport.flush`,
and prints the mean cost of the first and the last ``--window`` rounds and their
ratio (1.0: a round costs the same however long the run has been going).

Usage::

    python bench/report_rounds.py --devices 1000 --rounds 60
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from flwr.app import Array, ArrayRecord

from fededge.config.scenario import parse_scenario
from fededge.reports.device_rows import device_row
from fededge.reports.fleet_report import FleetReport
from server.checkpoint import save_checkpoint

SCENARIO = """
[run]
name = "report-bench"
rounds = 1000
[data]
dataset = "mnist"
[model]
main = "lenet5"
[[fleet.tiers]]
name = "phone"
count = 1000
profile = "phone"
"""


def metrics(rng: np.random.Generator) -> dict[str, float]:
    """One device's reply metrics: a ledger of a round of EIF + EMP training."""
    streamed = int(rng.integers(200, 400))
    trained = int(streamed * 0.2)
    return {
        "arrived": streamed,
        "streamed": streamed,
        "trained": trained,
        "filtered_out": streamed - trained,
        "steps": trained // 32,
        "filter_steps": streamed // 64,
        "filter_forward_macs": streamed * 120_000,
        "filter_train_macs": streamed * 30_000,
        "main_forward_macs": trained * 420_000,
        "main_grad_input_macs": trained * 300_000,
        "main_grad_weight_macs": trained * 420_000,
        "baseline_macs": streamed * 1_260_000,
        "budget_macs": 2e8,
        "selected": trained,
        "selected_loss_sum": float(rng.random() * trained),
        "aimed_trained": streamed * 0.2,
        "wall_s": float(rng.random()),
        "compute_s": float(rng.random() * 10),
        "energy_j": float(rng.random()),
        "threshold": float(rng.random()),
        "num-examples": trained,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000, help="device rows per round")
    parser.add_argument("--rounds", type=int, default=60, help="rounds to record")
    parser.add_argument("--window", type=int, default=5, help="rounds averaged at each end")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    scenario = parse_scenario(SCENARIO)
    arrays = ArrayRecord({"w": Array(np.zeros(61_706, np.float32))})
    costs: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        report = FleetReport(out, "report-bench", ["phone"], plots=False)
        device_rounds: dict[str, int] = {}
        for rnd in range(1, args.rounds + 1):
            rows = [
                device_row(rnd, d, "phone", "phone", "ok", metrics(rng))
                for d in range(args.devices)
            ]
            start = time.perf_counter()
            report.add_round(
                rnd, rows, selected=args.devices, accuracy=0.9, loss=0.3, skipped=False, wall_s=1.0
            )
            save_checkpoint(
                out,
                scenario,
                rnd,
                arrays,
                report,
                run_id="bench",
                state_dir="",
                device_rounds=device_rounds,
            )
            costs.append(time.perf_counter() - start)
        start = time.perf_counter()
        report.flush()
        end_s = time.perf_counter() - start
        size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    w = min(args.window, len(costs) // 2) or 1
    first, last = statistics.mean(costs[:w]), statistics.mean(costs[-w:])
    print(
        f"{args.devices} device rows x {args.rounds} rounds "
        f"({args.devices * args.rounds} rows, tables {size / 1e6:.1f} MB)"
    )
    print(f"first {w} rounds: {1e3 * first:.1f} ms/round")
    print(f"last {w} rounds:  {1e3 * last:.1f} ms/round")
    print(f"ratio last/first: {last / first:.2f}")
    print(f"all rounds: {sum(costs):.2f} s; end of run (flush): {1e3 * end_s:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
