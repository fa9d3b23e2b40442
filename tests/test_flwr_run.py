"""`flwr run .` from the project root: Flower's own command runs the quickstart fleet.

Flower's local simulation SuperLink (127.0.0.1:39091, its own FLWR_HOME under
tmp_path, no dependency installation: offline) runs the ServerApp and ClientApp of
pyproject.toml; the tables equal those of `fededge run` on the same scenario, and
a federation smaller than the fleet fails with the fix in its message.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
FLWR = str(Path(sys.executable).with_name("flwr"))
TIMING = ["wall_s", "train_wall_s", "client_wall_s"]
OVERRIDES = "run.rounds=2;data.arrivals_per_round=64"

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.process]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",  # offline: the installed packages
        FLWR_TELEMETRY_ENABLED="0",
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
    )
    return env


def _flwr_run(home: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    config = f"output-dir='{out}' overrides='{OVERRIDES}'"
    cmd = [FLWR, "run", ".", "--stream", "--run-config", config, *extra]
    return subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, env=_env(home), timeout=900
    )


def _stop_superlink(home: Path) -> None:
    """Stop the local SuperLink this test's FLWR_HOME started, and its children."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        if str(home) in " ".join(proc.info["cmdline"] or []):
            procs = [proc, *proc.children(recursive=True)]
            for p in procs:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.send_signal(signal.SIGKILL)
            psutil.wait_procs(procs, timeout=10)


def _tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    rounds = pd.read_csv(out / "rounds.csv").drop(columns=TIMING, errors="ignore")
    devices = pd.read_csv(out / "devices.csv").drop(columns=TIMING, errors="ignore")
    return rounds, devices


def test_flwr_run_runs_the_quickstart_fleet_and_refuses_a_smaller_federation(
    tmp_path: Path,
) -> None:
    if _port_open(39091):
        pytest.skip("a Flower local SuperLink already listens on 127.0.0.1:39091")
    home = tmp_path / "flwr"
    try:
        few = _flwr_run(home, tmp_path / "few")  # Flower's default: 2 simulated SuperNodes
        text = few.stdout + few.stderr
        assert "the federation has 2 SuperNodes, scenario 'quickstart' has 20 devices" in text
        assert '--federation-config "num-supernodes=20"' in text
        status = json.loads((tmp_path / "few" / "status.json").read_text())
        assert status["status"] == "failed" and "2 SuperNodes" in status["reason"]

        out = tmp_path / "flwr-run"
        started = time.monotonic()
        full = _flwr_run(home, out, "--federation-config", "num-supernodes=20")
        text = full.stdout + full.stderr
        assert full.returncode == 0, text[-3000:]
        assert "round   1/2" in text and "round   2/2" in text, text[-3000:]
        assert "ETA" in text and "Traceback" not in text, text[-3000:]
        assert json.loads((out / "status.json").read_text())["status"] == "completed"
        assert time.monotonic() - started < 600
    finally:
        _stop_superlink(home)
    assert (out / "report.html").exists() and (out / "accuracy.png").exists()

    reference = tmp_path / "fededge-run"
    quickstart = ROOT / "scenarios" / "quickstart.toml"
    sets = [a for o in OVERRIDES.split(";") for a in ("--set", o)]
    cmd = [sys.executable, "-m", "fededge.cli", "run", str(quickstart), "--out", str(reference)]
    result = subprocess.run(
        [*cmd, *sets], capture_output=True, text=True, env=_env(home), timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for mine, theirs in zip(_tables(out), _tables(reference), strict=True):
        pd.testing.assert_frame_equal(mine, theirs)
