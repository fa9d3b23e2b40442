"""Run a scenario on Flower's simulation engine (Ray backend), locally or on a Ray cluster."""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

from fededge.report import FleetReport
from fededge.scenario import Scenario
from server.strategy import RoundOutcome

log = logging.getLogger(__name__)

QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


def quiet_environment() -> None:
    """Telemetry and update checks off; nothing reaches the network."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def backend_config(scenario: Scenario, *, ray_address: str | None = None) -> dict[str, object]:
    """Flower's Ray backend settings for a scenario.

    Resources per client come from ``[simulation]``; ``max_concurrent`` caps the
    CPUs Ray sees so that at most that many clients run at once. With a Ray
    cluster address (scenario, argument or ``RAY_ADDRESS``) Ray joins it and
    nothing else is passed to ``ray.init``.
    """
    sim = scenario.simulation
    address = ray_address or sim.ray_address or os.environ.get("RAY_ADDRESS")
    resources = {"num_cpus": sim.client_cpus, "num_gpus": sim.client_gpus}
    if address:
        init_args: dict[str, object] = {"address": address}
    else:
        cpus = os.cpu_count() or 1
        if sim.max_concurrent is not None:
            cpus = max(1, int(sim.max_concurrent * sim.client_cpus))
        temp_dir = Path(
            os.environ.get("FEDEDGE_RAY_TMPDIR")
            or Path(tempfile.gettempdir()) / f"fededge-ray-{os.getuid()}"
        )
        init_args = {
            "num_cpus": cpus,
            "include_dashboard": False,
            "_temp_dir": str(temp_dir),
            "_node_ip_address": "127.0.0.1",
            "logging_level": logging.ERROR,
        }
    return {"client_resources": resources, "init_args": init_args}


def simulate(
    scenario: Scenario,
    out_dir: Path,
    *,
    resume: bool = False,
    on_round: Callable[[RoundOutcome], None] | None = None,
    ray_address: str | None = None,
) -> FleetReport:
    """Run ``scenario`` on the simulation engine; returns its fleet report."""
    quiet_environment()
    import ray
    from flwr.simulation import run_simulation

    from clients.app import app as client_app
    from server.app import make_server_app

    result: dict[str, FleetReport] = {}
    server_app = make_server_app(scenario, out_dir, resume=resume, on_round=on_round, result=result)
    config = backend_config(scenario, ray_address=ray_address)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=scenario.num_devices,
                backend_config=config,  # type: ignore[arg-type]
            )
    finally:
        if ray.is_initialized():
            ray.shutdown()
    if "report" not in result:
        raise RuntimeError("the simulation ended without a report (see the log above)")
    return result["report"]
