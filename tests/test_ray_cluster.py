"""Past one machine: ``fededge run --ray-address`` joins a Ray cluster started with ``ray start``.

The test starts a one-node Ray "cluster" (a head on this machine, its own temp
dir and free ports), runs a small scenario against it from a separate
``fededge run`` process, checks the report and that the run really used that
cluster, then stops exactly the processes ``ray start`` started. ``ray stop``
is not used: it stops every Ray on the machine, other users' included (Ray
2.55 has no ``ray stop --address``), and the daemons ignore SIGTERM. They are
found by their process group (``ray start`` runs in a new session here, and
its daemons and their workers keep its group), by the temp dir in their
command lines and as descendants of those, and killed by PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psutil
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

SCENARIO = """
[run]
name = "ray-cluster"
seed = 3
rounds = 2
[data]
dataset = "mnist"
arrivals_per_round = 64
[train]
batch_size = 32
[savers.eif]
enabled = true
[savers.emp]
enabled = true
[[fleet.tiers]]
name = "phones"
profile = "phone"
count = 2
[[fleet.tiers]]
name = "pis"
profile = "rpi4"
count = 1
budget_seconds = 0.05
[server]
eval_instances = 500
[simulation]
client_cpus = 1.0
"""


@dataclass
class RayHead:
    """A head node started by this test."""

    address: str
    temp_dir: Path
    group: int  # process group of `ray start` and its daemons


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(
        RAY_USAGE_STATS_ENABLED="0",
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def _started_by(head: RayHead) -> list[psutil.Process]:
    """Every live process of this head: its process group, its temp dir, their descendants."""
    marker = str(head.temp_dir)
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if os.getpgid(proc.pid) == head.group or marker in " ".join(proc.info["cmdline"] or ()):
                found[proc.pid] = proc
        except (ProcessLookupError, psutil.Error):
            continue
    for proc in list(found.values()):
        try:
            found.update({child.pid: child for child in proc.children(recursive=True)})
        except psutil.Error:
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def _stop(head: RayHead) -> None:
    """SIGKILL exactly this head's processes (they ignore SIGTERM) and reap them."""
    for _ in range(3):  # a dying raylet may still spawn a worker: look again
        procs = _started_by(head)
        if not procs:
            return
        for proc in procs:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.Error:
                continue
        psutil.wait_procs(procs, timeout=15)


@pytest.fixture
def ray_head() -> Iterator[RayHead]:
    temp_dir = Path(tempfile.mkdtemp(prefix="fe-rc-", dir="/tmp"))  # short: socket paths
    port, client_port, dashboard_port, agent_port = _free_ports(4)
    command = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--num-cpus=2",
        f"--temp-dir={temp_dir}",
        "--include-dashboard=false",
        f"--dashboard-port={dashboard_port}",
        f"--dashboard-agent-listen-port={agent_port}",
        f"--ray-client-server-port={client_port}",
        "--disable-usage-stats",
    ]
    starter = subprocess.Popen(
        command,
        env=_env(),
        start_new_session=True,  # its own process group, inherited by the daemons
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    head = RayHead(f"127.0.0.1:{port}", temp_dir, starter.pid)
    try:
        output, _ = starter.communicate(timeout=180)
        assert starter.returncode == 0, f"ray start failed:\n{output[-3000:]}"
        yield head
    finally:
        if starter.poll() is None:
            starter.kill()
        _stop(head)
        leftover = [p.pid for p in _started_by(head)]
        subprocess.run(["rm", "-rf", str(temp_dir)], check=False)
        assert not leftover, f"Ray processes left running: {leftover}"


def test_run_joins_a_ray_cluster_by_address(ray_head: RayHead, tmp_path: Path) -> None:
    # Prepare: a scenario, and a local-Ray temp dir that must stay unused.
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO)
    local_ray = tmp_path / "local-ray"
    env = {**_env(), "FEDEDGE_RAY_TMPDIR": str(local_ray)}
    out = tmp_path / "out"

    # Execute
    run = subprocess.run(
        [
            *(str(BIN / "fededge"), "run", str(scenario), "--out", str(out), "-q"),
            *("--ray-address", ray_head.address),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )

    # Assert: the report is complete ...
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    rounds = pd.read_csv(out / "rounds.csv")
    devices = pd.read_csv(out / "devices.csv")
    assert list(rounds["round"]) == [1, 2]
    assert list(rounds["ok"]) == [3, 3]
    assert (rounds["failed"] + rounds["rejected"]).sum() == 0
    assert sorted(devices["device"].unique()) == [0, 1, 2]
    assert (devices["streamed"] == 64).all()  # every device took its arrivals each round
    assert devices["trained"].sum() > 0
    assert rounds["accuracy"].notna().all()
    # ... and the run used the cluster: its driver and workers logged in the head's
    # session, and no local Ray was started.
    logs = ray_head.temp_dir / "session_latest" / "logs"
    assert list(logs.glob("python-core-driver-*")), "no driver joined the cluster"
    assert list(logs.glob("worker-*.out")), "no worker ran on the cluster"
    assert not local_ray.exists() or not any(local_ray.iterdir())
