"""Round latency of real devices on Flower's deployment engine, measured on 127.0.0.1.

What it measures: a SuperLink and two devices (``fededge deploy superlink`` /
``fededge deploy device``, TLS off, everything on this machine) run ROUNDS
rounds of a tiny scenario -- LeNet-5 on MNIST, 64 instances per device per
round, one torch thread per device, central evaluation on 200 test images.
For each setup it reports the server's round time (the report's ``wall_s``:
send the global weights, wait for both replies, aggregate, evaluate), for the
first round (which loads data and nets) and the median of the later ones, plus
the devices' own training time (``wall_s`` of their ledgers).

Setups (the server pulls replies every 0.05 s in all of them; Flower's own
``Grid.send_and_receive`` waits 3 s between pulls)::

    stock        Flower's device side as shipped (``--isolation subprocess``): a
                 fresh flwr-clientapp process per message (imports torch, loads the
                 scenario and data), SuperExec polls every 1 s, SuperNode every 3 s
    fast-polls   the same processes; SuperNode and SuperExec wait at most 0.2 s
    worker       fededge's warm worker (one process serves every round), the
                 SuperNode's stock 3 s poll
    worker+poll  the warm worker and --poll 0.2: as fast as Flower 1.42 goes

Usage::

    python bench/deploy_latency.py [--rounds 5] [--setups stock,worker,worker+poll]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

from fededge.deploy.loopback import LoopbackDeployment

SCENARIO = """
[run]
name = "latency"
seed = 0
rounds = {rounds}

[data]
dataset = "mnist"
arrivals_per_round = 64

[model]
main = "lenet5"

[train]
batch_size = 32

[[fleet.tiers]]
name = "pis"
profile = "rpi4"
count = 2

[server]
eval_instances = 200
"""

SETUPS: dict[str, tuple[list[str], list[str]]] = {
    # name: (device arguments, run arguments)
    "stock": (["--isolation", "subprocess"], []),
    "fast-polls": (["--isolation", "subprocess", "--poll", "0.2"], []),
    "worker": ([], []),
    "worker+poll": (["--poll", "0.2"], []),
}


def measure(setup: str, rounds: int, folder: Path) -> dict[str, object]:
    """One setup: start SuperLink + 2 devices, run, read the report, stop everything."""
    device_args, run_args = SETUPS[setup]
    scenario = folder / "latency.toml"
    scenario.write_text(SCENARIO.format(rounds=rounds))
    out = folder / "report"
    with LoopbackDeployment(folder / "deploy", insecure=True) as deployment:
        deployment.start_superlink()
        for device in (0, 1):
            deployment.start_device(device, "--threads", "1", *device_args)
        started = time.perf_counter()
        done = deployment.run(scenario, *run_args, out_dir=out, wait_s=120)
        total_s = time.perf_counter() - started
    if done.returncode != 0 or not (out / "rounds.csv").exists():
        raise RuntimeError(f"{setup}: the run failed:\n{done.stdout}\n{done.stderr}")
    rounds_table = pd.read_csv(out / "rounds.csv")
    devices = pd.read_csv(out / "devices.csv")
    later = rounds_table["wall_s"].iloc[1:].tolist() or rounds_table["wall_s"].tolist()
    return {
        "setup": setup,
        "first_round_s": float(rounds_table["wall_s"].iloc[0]),
        "later_rounds_s": statistics.median(later),
        "later_min_s": min(later),
        "later_max_s": max(later),
        "device_train_s": float(devices.loc[devices["round"] > 1, "wall_s"].median()),
        "run_total_s": total_s,
        "kinds": ",".join(sorted(devices["kind"].unique())),
    }


def main() -> None:
    """Measure every setup asked for and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--setups", default=",".join(SETUPS))
    args = parser.parse_args()
    rows = []
    for setup in args.setups.split(","):
        with tempfile.TemporaryDirectory(prefix=f"fededge-latency-{setup}-") as tmp:
            row = measure(setup, args.rounds, Path(tmp))
        rows.append(row)
        first, later = row["first_round_s"], row["later_rounds_s"]
        print(f"{setup:<12} first round {first:6.2f} s, later rounds {later:6.2f} s", flush=True)
    table = pd.DataFrame(rows)
    print()
    print(f"round latency on 127.0.0.1, 2 devices, {args.rounds} rounds (seconds)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
