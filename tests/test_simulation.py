"""Ray settings of a simulation (no Ray started): resources, concurrency, address, Ctrl-C."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fededge.cli.main import build_parser
from fededge.cli.simulation import _graceful_ctrl_c, backend_config
from fededge.config.scenario import Scenario, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[1]

SCENARIO = """
[data]
dataset = "mnist"
[[fleet.tiers]]
name = "a"
profile = "phone"
count = 4
"""


def _scenario(*overrides: str) -> Scenario:
    return parse_scenario(SCENARIO, overrides=overrides)


def test_max_concurrent_caps_the_cpus_ray_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = backend_config(_scenario("simulation.client_cpus=0.5", "simulation.max_concurrent=6"))
    assert config["client_resources"] == {"num_cpus": 0.5, "num_gpus": 0.0}
    init_args = config["init_args"]
    assert isinstance(init_args, dict)
    assert init_args["num_cpus"] == 3  # 6 clients x 0.5 CPU: Flower's pool holds 3 / 0.5 = 6
    assert init_args["_node_ip_address"] == "127.0.0.1"
    assert "address" not in init_args


def test_temp_dir_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("FEDEDGE_RAY_TMPDIR", str(tmp_path))
    init_args = backend_config(_scenario())["init_args"]
    assert isinstance(init_args, dict)
    assert init_args["_temp_dir"] == str(tmp_path)


def test_a_cluster_address_is_all_ray_init_gets(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    scenario = _scenario("simulation.max_concurrent=4", "simulation.client_cpus=2.0")
    with caplog.at_level(logging.WARNING, logger="fededge.cli.simulation"):
        config = backend_config(scenario, ray_address="10.0.0.5:6379")
    assert config["init_args"] == {"address": "10.0.0.5:6379"}
    assert config["client_resources"] == {"num_cpus": 2.0, "num_gpus": 0.0}
    assert "max_concurrent=4 does not apply" in caplog.text


def test_address_precedence_argument_then_scenario_then_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "env-host:1")
    assert backend_config(_scenario())["init_args"] == {"address": "env-host:1"}
    in_file = _scenario('simulation.ray_address="file-host:2"')
    assert backend_config(in_file)["init_args"] == {"address": "file-host:2"}
    assert backend_config(in_file, ray_address="arg-host:3")["init_args"] == {
        "address": "arg-host:3"
    }
    local = backend_config(_scenario(), ray_address="local")["init_args"]
    assert isinstance(local, dict) and "address" not in local and "num_cpus" in local


def test_run_flags_become_simulation_overrides(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: dict[str, Scenario] = {}

    def fake_simulate(scenario: Scenario, out_dir: Path, **kwargs: object) -> None:
        seen["scenario"] = scenario
        raise KeyboardInterrupt  # stop before anything runs

    monkeypatch.setattr("fededge.cli.simulation.simulate", fake_simulate)
    args = build_parser().parse_args(
        [
            "run",
            str(ROOT / "scenarios" / "fleet-500.toml"),
            "--client-cpus",
            "0.5",
            "--max-concurrent",
            "8",
            "--threads-per-client",
            "2",
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    assert args.handler(args) == 130
    sim = seen["scenario"].simulation
    assert (sim.client_cpus, sim.max_concurrent, sim.threads_per_client) == (0.5, 8, 2)


def test_fleet_500_scenario_is_a_full_participation_fleet() -> None:
    scenario = load_scenario(ROOT / "scenarios" / "fleet-500.toml")
    assert scenario.num_devices == 500
    assert scenario.server.fraction == 1.0
    assert len(scenario.tiers) >= 3
    assert all(t.budget_macs < float("inf") for t in scenario.tiers)
    assert scenario.savers.eif.enabled and scenario.savers.emp.enabled
    assert scenario.simulation.max_concurrent is not None


@contextlib.contextmanager
def _sigint_handler(handler: Any) -> Iterator[None]:
    """SIGINT handled by ``handler`` inside the block; the test run's handler after it."""
    before = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def _send_sigint(until: threading.Event | None = None) -> None:
    """SIGINT to this process; then up to 5 s (or until ``until``) for the handler to run."""
    os.kill(os.getpid(), signal.SIGINT)
    deadline = time.monotonic() + 5
    while not (until and until.is_set()) and time.monotonic() < deadline:
        time.sleep(0.01)  # the handler runs between bytecodes of this loop


def test_first_ctrl_c_asks_for_a_clean_stop_the_second_stops_at_once() -> None:
    stop = threading.Event()
    with _sigint_handler(signal.default_int_handler):
        with _graceful_ctrl_c(stop):
            assert not stop.is_set()
            _send_sigint(until=stop)
            assert stop.is_set()  # no KeyboardInterrupt yet
            with pytest.raises(KeyboardInterrupt):
                _send_sigint()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_a_run_that_ignores_ctrl_c_keeps_ignoring_it() -> None:
    stop = threading.Event()
    with _sigint_handler(signal.SIG_IGN):
        with _graceful_ctrl_c(stop):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
        assert not stop.is_set()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_outside_the_main_thread_ctrl_c_handling_is_left_alone() -> None:
    seen: list[object] = []

    def body() -> None:
        with _graceful_ctrl_c(threading.Event()):
            seen.append(signal.getsignal(signal.SIGINT))

    before = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [before]
