"""Benchmark: hundreds of devices on Flower's Ray simulation engine, fededge vs plain Flower.

What it measures, for each fleet size N (``--devices``), every device taking part
in every round (fraction 1.0), ``--rounds`` rounds, the same Ray settings for
both (``[simulation]`` of ``scenarios/fleet-500.toml``: 1 CPU per client,
``--max-concurrent`` clients at once, one torch thread each):

- **fededge**: ``scenarios/fleet-500.toml`` scaled to N devices (tiers 40/40/20 %,
  budgets, EIF + EMP on, device state, ledger, fleet report written every round,
  central evaluation on 2000 test images), run by :func:`fededge.cli.simulation.simulate`;
- **flower**: a minimal, bench-local ClientApp / ServerApp (:data:`plain_client_app`,
  :func:`plain_server_app`): the same LeNet-5, the same arrivals per device and
  round (same partition, same stream order, ``--arrivals`` instances), plain SGD
  over all of them, no savers, no ledger, no device state, stock ``FedAvg``
  (its only setting: the train metrics are summed, not averaged) and the same
  central evaluation, on Flower's stock simulation engine;
- **flower+dispatch**: the same plain app on the engine as fededge runs it, with
  :func:`server.flower_compat.one_scan_dispatch` (messages handed to the workers in one scan
  per sweep
  instead of one scan per device): the like-for-like baseline for what fededge's
  device model, streams and ledger add.

Each arm runs in its own child process (a fresh Ray), one after the other.
Columns of the table:

- *first round*: wall seconds from the start of the simulation to the end of
  round 1 (Ray starts, actors import torch and load data and models: once per
  worker process);
- *round*: mean wall seconds of the later rounds (steady state), from the end of
  one round to the end of the next (fededge: after its report and checkpoint are
  written; flower: after its central evaluation);
- *train / client / overhead*, in ms per device-round over the later rounds:
  ``train`` = measured local training time (fededge: the ledger's ``wall_s``,
  i.e. the whole training loop with its savers; flower: the SGD loop),
  ``client`` = the whole ClientApp call (decode, device state, training, reply),
  ``overhead`` = ``(round wall x concurrent clients - sum of train) / replies``:
  the worker time per device-round not spent training (framework, transport,
  (de)serialisation, device state, ledger, server aggregation, report, evaluation);
- *ratio*: fededge's overhead / plain Flower's (stock engine) at the same N, in
  the same run; *ratio, same engine*: / flower+dispatch's;
- *CPU*: CPU seconds (user + system) of the whole process tree during the later
  rounds per device-round, training included: robust to other load on the
  machine, which inflates the wall-clock columns;
- *load*: the machine's 1-minute load average around the run (2 cores here);
- *peak PSS / RSS*: peak over the run of the summed proportional / resident set
  size of the whole process tree (driver + raylet + GCS + Ray workers + helpers),
  sampled every ``--sample-s`` seconds with psutil in a background thread.
  PSS counts shared pages (torch's libraries, the memory-mapped dataset) once;
  RSS counts them in every process.

Usage::

    FEDEDGE_RAY_TMPDIR=/tmp/fededge-ray-scale python bench/fleet_scale.py --devices 50 200 500
    python bench/fleet_scale.py --devices 1000 --arms fededge

Timings on a shared 2-core machine are noisy: compare arms of the same run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fededge.data.streams import DeviceStream

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SCENARIO = REPO / "scenarios" / "fleet-500.toml"
ARMS = ("fededge", "flower", "flower+dispatch")


# --------------------------------------------------------------------------- scenario
def scaled_scenario(devices: int, rounds: int, arrivals: int, max_concurrent: int) -> Any:
    """``fleet-500.toml`` with ``devices`` devices (tiers 40/40/20 %) and the bench's knobs."""
    from fededge.config.scenario import load_scenario

    phones = max(1, round(0.4 * devices))
    pis = max(1, round(0.4 * devices))
    mcus = devices - phones - pis
    # Each device's share of MNIST (60000 / devices) is replayed often enough that
    # every round brings ``arrivals`` new instances (else FedAvg's total weight is 0).
    passes = max(2, math.ceil(rounds * arrivals * devices / 60_000))
    overrides = [
        f"data.passes={passes}",
        f"fleet.tiers[0].count={phones}",
        f"fleet.tiers[1].count={pis}",
        f"fleet.tiers[2].count={max(mcus, 1)}",
        f"server.min_replies={max(1, devices // 2)}",
        f"run.rounds={rounds}",
        f"data.arrivals_per_round={arrivals}",
        f"simulation.max_concurrent={max_concurrent}",
        f"run.name=bench-{devices}",
    ]
    scenario = load_scenario(SCENARIO, overrides)
    if scenario.num_devices != devices:
        raise SystemExit(f"fleet of {scenario.num_devices} devices, expected {devices}")
    return scenario


# --------------------------------------------------------------------------- plain Flower
# The plain arm's ClientApp is imported by module name (``fleet_scale``) in the
# Ray workers, so its functions are pickled by reference and this per-process
# cache survives across messages, as fededge's does.
_PLAIN: dict[str, Any] = {}


def _plain_setup(devices: int, seed: int) -> dict[str, Any]:
    """Per-process data, partitions and model of the plain arm (built once)."""
    key = f"{devices}-{seed}"
    if _PLAIN.get("key") != key:
        from fededge.data import load_dataset
        from fededge.data.streams import partition
        from fededge.models import build_model

        data = load_dataset("mnist", "train")
        parts = partition(data.labels.numpy(), devices, "iid", seed=seed, min_size=1)
        torch.manual_seed(seed)
        model = build_model("lenet5", num_classes=10, in_channels=1, image_size=28)
        _PLAIN.clear()
        _PLAIN.update(key=key, data=data, parts=parts, model=model)
    return _PLAIN


plain_client_app = ClientApp()


@plain_client_app.train()
def plain_train(msg: Message, context: Context) -> Message:
    """Plain SGD over this round's arrivals of the device; weights and timings back."""
    started = time.perf_counter()
    torch.set_num_threads(1)
    config = {k: _number(v) for k, v in msg.content.config_records["config"].items()}
    devices, seed = int(config["devices"]), int(config["seed"])
    arrivals, passes = int(config["arrivals"]), int(config["passes"])
    batch_size, server_round = int(config["batch-size"]), int(config["server-round"])
    cache = _plain_setup(devices, seed)
    device = int(str(context.node_config["partition-id"]))
    # The device's arrivals of this round: the same stream order fededge uses.
    stream = DeviceStream(
        indices=cache["parts"][device], rate=arrivals, seed=seed * 1_000_003 + device, passes=passes
    )
    stream.position = (server_round - 1) * arrivals
    indices = torch.from_numpy(stream.next_round())
    model: torch.nn.Module = cache["model"]
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"])
    train_started = time.perf_counter()
    model.train()
    for start in range(0, len(indices), batch_size):
        x, y = cache["data"].batch(indices[start : start + batch_size])
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    train_s = time.perf_counter() - train_started
    arrays = ArrayRecord(model.state_dict())
    metrics = MetricRecord(
        {
            "num-examples": len(indices),
            "train_wall_s": train_s,
            "client_wall_s": time.perf_counter() - started,
            "replies": 1,
        }
    )
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


def _number(value: object) -> float:
    """A record's scalar as a float (the plain arm's records hold numbers only)."""
    if not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r:.40}")
    return float(value)


def _sum_metrics(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Train metrics summed over replies (FedAvg's ``train_metrics_aggr_fn``)."""
    total: dict[str, int | float | list[int] | list[float]] = {}
    for record in records:
        for metrics in record.metric_records.values():
            for key, value in metrics.items():
                total[key] = _number(total.get(key, 0.0)) + _number(value)
    return MetricRecord(total)


def plain_server_app(scenario: Any, rounds_out: list[dict[str, float]]) -> Any:
    """A stock-FedAvg ServerApp over the plain ClientApp; fills ``rounds_out``."""
    from fededge.data import load_dataset
    from fededge.method.evaluation import evaluate
    from fededge.models import build_model

    app = ServerApp()
    n = scenario.num_devices

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        torch.manual_seed(scenario.run.seed)
        model = build_model("lenet5", num_classes=10, in_channels=1, image_size=28)
        test = load_dataset("mnist", "test")
        eval_n = scenario.server.eval_instances or len(test)
        marks: list[float] = []

        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            model.load_state_dict(arrays.to_torch_state_dict())
            accuracy, loss = evaluate(model, test, eval_n)
            marks.append(time.time())
            return MetricRecord({"accuracy": accuracy, "loss": loss})

        strategy = FedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=n,
            min_evaluate_nodes=0,
            min_available_nodes=n,
            train_metrics_aggr_fn=_sum_metrics,
        )
        config = ConfigRecord(
            {
                "devices": n,
                "seed": scenario.run.seed,
                "arrivals": scenario.data.arrivals_per_round,
                "passes": scenario.data.passes,
                "batch-size": scenario.train.batch_size,
                "lr": scenario.train.lr,
                "momentum": scenario.train.momentum,
            }
        )
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=scenario.run.rounds,
            train_config=config,
            evaluate_fn=evaluate_fn,
        )
        for r in range(1, scenario.run.rounds + 1):
            m = dict(result.train_metrics_clientapp.get(r, MetricRecord()))
            rounds_out.append(
                {
                    "round": r,
                    "wall_s": marks[r] - marks[r - 1],
                    "end": marks[r],
                    "train_s": _number(m.get("train_wall_s", 0.0)),
                    "client_s": _number(m.get("client_wall_s", 0.0)),
                    "replies": _number(m.get("replies", 0.0)),
                    "accuracy": _number(result.evaluate_metrics_serverapp[r]["accuracy"]),
                }
            )

    return app


# --------------------------------------------------------------------------- child runs
def run_fededge(scenario: Any, out_dir: Path) -> list[dict[str, float]]:
    """Run the scenario with fededge; per-round wall, train and client seconds."""
    from fededge.cli.simulation import simulate

    ends: dict[int, float] = {}
    report = simulate(
        scenario, out_dir, on_round=lambda outcome: ends.update({outcome.server_round: time.time()})
    )
    devices = report.devices_frame()
    rows = []
    for row in report.rounds:
        r = int(row["round"])
        ok = devices[(devices["round"] == r) & (devices["status"] == "ok")]
        rows.append(
            {
                "round": r,
                # end to end, like the plain arm's: the report and checkpoint writes count
                "wall_s": ends[r] - ends[r - 1] if r - 1 in ends else float(row["wall_s"]),
                "end": ends[r],
                "train_s": float(row["train_wall_s"]),
                "client_s": float(ok["client_wall_s"].sum()),
                "replies": float(len(ok)),
                "accuracy": float(row["accuracy"]),
            }
        )
    return rows


def run_flower(scenario: Any, *, dispatch: bool = False) -> list[dict[str, float]]:
    """Run the plain Flower arm; per-round wall, train and client seconds.

    With ``dispatch`` the engine hands out messages as fededge's does
    (:func:`server.flower_compat.one_scan_dispatch`).
    """
    import contextlib
    import warnings

    from flwr.simulation import run_simulation

    from fededge.cli.simulation import backend_config, quiet_environment
    from server.flower_compat import one_scan_dispatch

    quiet_environment()
    sys.path.insert(0, str(BENCH_DIR))
    import fleet_scale  # by name, so Ray workers import it rather than unpickle copies

    rounds: list[dict[str, float]] = []
    feeder = one_scan_dispatch() if dispatch else contextlib.nullcontext()
    with feeder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_simulation(
            server_app=fleet_scale.plain_server_app(scenario, rounds),
            client_app=fleet_scale.plain_client_app,
            num_supernodes=scenario.num_devices,
            backend_config=backend_config(scenario),  # type: ignore[arg-type]
        )
    return rounds


def child(args: argparse.Namespace) -> None:
    """Run one arm at one size in this process and write its JSON result."""
    import logging

    logging.getLogger("flwr").setLevel(logging.ERROR)
    started = time.perf_counter()
    scenario = scaled_scenario(args.child_devices, args.rounds, args.arrivals, args.max_concurrent)
    with tempfile.TemporaryDirectory(prefix="fleet-scale-") as tmp:
        start = time.time()  # the simulation starts: Ray, actors, data, first round
        if args.child == "fededge":
            rounds = run_fededge(scenario, Path(tmp) / "out")
        else:
            rounds = run_flower(scenario, dispatch=args.child == "flower+dispatch")
    result = {"rounds": rounds, "total_s": time.perf_counter() - started, "start": start}
    Path(args.result).write_text(json.dumps(result))


# --------------------------------------------------------------------------- parent
@dataclass
class TreeStats:
    """What the watcher saw of a process tree: peak memory and a CPU-time series."""

    pss: int = 0  # peak of the summed PSS, bytes
    rss: int = 0  # peak of the summed RSS, bytes
    processes: int = 0  # most processes seen at once
    cpu: list[tuple[float, float]] = field(default_factory=list)  # (epoch s, CPU s so far)

    def cpu_at(self, when: float) -> float:
        """CPU seconds the tree had used by ``when`` (linear between samples)."""
        series = self.cpu
        if not series:
            return 0.0
        for (t0, c0), (t1, c1) in itertools.pairwise(series):
            if t0 <= when <= t1:
                return c0 + (c1 - c0) * (when - t0) / max(t1 - t0, 1e-9)
        return series[0][1] if when < series[0][0] else series[-1][1]


def watch_tree(
    pid: int, stats: TreeStats, stop: threading.Event, cpu_every_s: float, memory_every_s: float
) -> None:
    """Sample the CPU time and memory of ``pid`` and its descendants until ``stop`` is set.

    CPU: user + system seconds of every process seen, each counted up to its
    last sample (so processes that exit keep their share). Memory: summed PSS
    and RSS of the live processes, every ``memory_every_s`` seconds.
    """
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    cpu_of: dict[int, float] = {}
    next_memory = 0.0
    while not stop.is_set():
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        now = time.time()
        memory = now >= next_memory
        pss = rss = count = 0
        for proc in procs:
            try:
                times = proc.cpu_times()
                cpu_of[proc.pid] = times.user + times.system
                if memory:
                    info = proc.memory_full_info()
                    pss += getattr(info, "pss", info.rss)
                    rss += info.rss
                    count += 1
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        stats.cpu.append((now, sum(cpu_of.values())))
        if memory:
            stats.pss, stats.rss = max(stats.pss, pss), max(stats.rss, rss)
            stats.processes = max(stats.processes, count)
            next_memory = now + memory_every_s
        stop.wait(cpu_every_s)


def run_arm(arm: str, devices: int, args: argparse.Namespace) -> dict[str, Any]:
    """One arm at one size in a child process, its process tree watched."""
    with tempfile.TemporaryDirectory(prefix="fleet-scale-result-") as tmp:
        result_path = Path(tmp) / "result.json"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            *("--child", arm, "--child-devices", str(devices), "--result", str(result_path)),
            *("--rounds", str(args.rounds), "--arrivals", str(args.arrivals)),
            *("--max-concurrent", str(args.max_concurrent)),
        ]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(BENCH_DIR)])}
        env.setdefault("FEDEDGE_RAY_TMPDIR", str(Path(tempfile.gettempdir()) / "fleet-scale-ray"))
        stats, stop = TreeStats(), threading.Event()
        load_before = os.getloadavg()[0]
        proc = subprocess.Popen(command, env=env, cwd=REPO)
        watcher = threading.Thread(
            target=watch_tree, args=(proc.pid, stats, stop, args.cpu_sample_s, args.sample_s)
        )
        watcher.start()
        try:
            code = proc.wait(timeout=args.timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        finally:
            stop.set()
            watcher.join()
        if code != 0 or not result_path.exists():
            return {"arm": arm, "devices": devices, "error": f"exit code {code}"}
        result: dict[str, Any] = json.loads(result_path.read_text())
    rounds = result["rounds"]
    for previous, row in itertools.pairwise(rounds):
        row["cpu_s"] = stats.cpu_at(row["end"]) - stats.cpu_at(previous["end"])
    result.update(arm=arm, devices=devices, peak_pss=stats.pss, peak_rss=stats.rss)
    result.update(processes=stats.processes, load=(load_before + os.getloadavg()[0]) / 2)
    return result


def summarize(result: dict[str, Any], concurrent: int) -> dict[str, float]:
    """Per-round and per-device-round numbers of one run (rounds 2+ = steady state)."""
    rounds = result["rounds"]
    later = rounds[1:] or rounds
    wall = sum(r["wall_s"] for r in later)
    train = sum(r["train_s"] for r in later)
    client = sum(r["client_s"] for r in later)
    cpu = sum(r.get("cpu_s", math.nan) for r in later)
    replies = max(sum(r["replies"] for r in later), 1.0)
    return {
        "first_s": rounds[0]["end"] - result["start"],
        "round_s": wall / len(later),
        "train_ms": 1e3 * train / replies,
        "client_ms": 1e3 * client / replies,
        "overhead_ms": 1e3 * (wall * concurrent - train) / replies,
        "cpu_ms": 1e3 * cpu / replies,
        "accuracy": rounds[-1]["accuracy"],
    }


def best_runs(results: list[dict[str, Any]], concurrent: int) -> list[dict[str, Any]]:
    """Per (devices, arm): the repeat with the median overhead (the only one if not repeated)."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["devices"], r["arm"]), []).append(r)
    chosen = []
    for runs in groups.values():
        ok = [r for r in runs if "error" not in r]
        if not ok:
            chosen.append(runs[0])
            continue
        ok.sort(key=lambda r: summarize(r, concurrent)["overhead_ms"])
        chosen.append({**ok[(len(ok) - 1) // 2], "repeats": len(ok)})
    return chosen


def _ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}" if base else "-"


def table(results: list[dict[str, Any]], concurrent: int) -> str:
    """The markdown table of every (devices, arm); repeats reduced to their median run."""
    lines = [
        "| devices | framework | first round s | round s | train ms/dev-round | "
        "client ms/dev-round | overhead ms/dev-round | overhead ratio | ratio, same engine | "
        "CPU ms/dev-round | peak PSS GB | peak RSS GB | processes | load | total s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    runs = best_runs(results, concurrent)

    def overheads(arm: str) -> dict[int, float]:
        return {
            r["devices"]: summarize(r, concurrent)["overhead_ms"]
            for r in runs
            if r["arm"] == arm and "error" not in r
        }

    plain, same_engine = overheads("flower"), overheads("flower+dispatch")
    for r in runs:
        if "error" in r:
            lines.append(f"| {r['devices']} | {r['arm']} | failed: {r['error']} |")
            continue
        s = summarize(r, concurrent)
        ratio = _ratio(s["overhead_ms"], plain.get(r["devices"]))
        ratio_same = _ratio(s["overhead_ms"], same_engine.get(r["devices"]))
        lines.append(
            f"| {r['devices']} | {r['arm']} | {s['first_s']:.1f} | {s['round_s']:.2f} | "
            f"{s['train_ms']:.1f} | {s['client_ms']:.1f} | {s['overhead_ms']:.1f} | "
            f"{ratio} | {ratio_same} | "
            f"{s['cpu_ms']:.1f} | {r['peak_pss'] / 2**30:.2f} | {r['peak_rss'] / 2**30:.2f} | "
            f"{r['processes']} | {r['load']:.1f} | {r['total_s']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Parse the command line; run the children (or be one)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[50, 200, 500])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--arrivals", type=int, default=64, help="instances per device-round")
    parser.add_argument("--max-concurrent", type=int, default=2, help="clients at once")
    parser.add_argument("--repeat", type=int, default=1, help="runs per arm (alternating)")
    parser.add_argument("--sample-s", type=float, default=1.0, help="memory sampling period")
    parser.add_argument("--cpu-sample-s", type=float, default=0.2, help="CPU sampling period")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="per child run")
    parser.add_argument("--json", type=Path, default=None, help="also write raw results here")
    parser.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--child-devices", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    results = []
    for devices in args.devices:
        for repeat in range(args.repeat):
            for arm in args.arms:
                print(
                    f"== {arm}: {devices} devices x {args.rounds} rounds ({repeat + 1})", flush=True
                )
                results.append(run_arm(arm, devices, args))
                if args.json:
                    args.json.write_text(json.dumps(results, indent=1))
    print()
    print(
        f"{args.rounds} rounds, fraction 1.0, {args.arrivals} arrivals per device-round, "
        f"{args.max_concurrent} clients at once (1 CPU, 1 torch thread each); "
        "per device-round numbers over rounds 2+"
        + (f"; median of {args.repeat} runs by overhead" if args.repeat > 1 else "")
    )
    print(table(results, args.max_concurrent))


if __name__ == "__main__":
    main()
