"""Run a scenario on Flower's simulation engine (Ray backend), locally or on a Ray cluster.

The simulation runner hosts both Flower apps in one process -- the ServerApp
(``server/``) and the ClientApp of every simulated device (``clients/``) -- so it
is neither the server nor a device: it lives with the command line, the one
part of fededge that imports both. :func:`simulate` runs one scenario;
:func:`run_compare` runs a budget sweep's variants in one Ray session (the
plan, skip/resume logic and comparison live in :mod:`fededge.reports.sweep`
and :mod:`fededge.reports.compare`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

from fededge.config.scenario import Scenario
from fededge.reports.fleet_report import FleetReport
from fededge.reports.sweep import SweepOutcome, run_sweep
from fededge.reports.sweep_plan import PlannedVariant, SweepPlan
from server.ray_session import shutdown_ray
from server.strategy import RoundOutcome, RunStopped

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
    cluster address (the argument, else ``simulation.ray_address``, else
    ``RAY_ADDRESS``; ``"local"`` forces a local Ray) Ray joins that cluster and
    nothing else is passed to ``ray.init`` (anything more makes it hang). On a
    cluster every node runs ``node CPUs / client_cpus`` clients at once, so
    ``max_concurrent`` does not apply there (a warning says so).
    """
    sim = scenario.simulation
    address = ray_address or sim.ray_address or os.environ.get("RAY_ADDRESS")
    resources = {"num_cpus": sim.client_cpus, "num_gpus": sim.client_gpus}
    if address and address != "local":
        init_args: dict[str, object] = {"address": address}
        if sim.max_concurrent is not None:
            log.warning(
                "simulation.max_concurrent=%d does not apply on the Ray cluster at %s: each "
                "node runs (its CPUs / client_cpus=%g) clients at once; set client_cpus or "
                "the nodes' `ray start --num-cpus` instead",
                sim.max_concurrent,
                address,
                sim.client_cpus,
            )
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
            # the devices' own log lines (Ray's coloured "(ClientAppActor pid=...)" echo)
            # only with --verbose; a device's failure still reaches the round as an error
            "log_to_driver": logging.getLogger().isEnabledFor(logging.INFO),
        }
    return {"client_resources": resources, "init_args": init_args}


def simulate(
    scenario: Scenario,
    out_dir: Path,
    *,
    resume: bool = False,
    on_round: Callable[[RoundOutcome], None] | None = None,
    ray_address: str | None = None,
    keep_ray: bool = False,
) -> FleetReport:
    """Run ``scenario`` on the simulation engine; returns its fleet report.

    With ``keep_ray`` the Ray session stays up afterwards (a running one is
    reused), so several simulations share it; the caller then shuts Ray down
    (:func:`server.ray_session.shutdown_ray`).
    """
    quiet_environment()
    from clients.app import app as client_app
    from server.app import BoundServerApp
    from server.flower_compat import keep_ray_session, one_scan_dispatch
    from server.ray_session import run_on_engine, start_ray

    stop = threading.Event()
    server = BoundServerApp(scenario, out_dir, resume=resume, on_round=on_round, stop=stop)
    config = backend_config(scenario, ray_address=ray_address)
    session = keep_ray_session() if keep_ray else contextlib.nullcontext()
    try:
        with (
            _graceful_ctrl_c(stop) as take_signals_back,
            session,
            one_scan_dispatch(),  # one scan of the messages per sweep, not one per device
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            start_ray(config)
            take_signals_back()  # Ray's core worker installs its own SIGTERM handler
            try:
                run_on_engine(server.app, client_app, scenario.num_devices, config)
            except RunStopped:
                if not stop.is_set():  # only a Ctrl-C sets it while the run is on
                    raise
        if stop.is_set() and server.report is None:
            raise KeyboardInterrupt  # stopped cleanly before the last round
    except KeyboardInterrupt:
        _silence_flower()
        raise
    finally:
        stop.set()
        if not keep_ray:
            shutdown_ray()
    if server.report is None:
        raise RuntimeError("the simulation ended without a report (see the log above)")
    return server.report


def _drop(record: logging.LogRecord) -> bool:
    return False


def _silence_flower() -> None:
    """Flower's log ends here: after Ctrl-C its lost calls are expected, not news."""
    logging.getLogger("flwr").addFilter(_drop)  # once: a logger keeps no duplicate filters


@contextlib.contextmanager
def _graceful_ctrl_c(stop: threading.Event) -> Iterator[Callable[[], None]]:
    """The first Ctrl-C (or SIGTERM) sets ``stop`` (a clean stop); a second one stops at once.

    On the first SIGINT the server leaves its round (:class:`RunStopped`),
    Flower's engine lets the devices finish the calls they are in and stops
    its workers, and only then is Ray shut down; :func:`simulate` then raises
    ``KeyboardInterrupt``. It yields a function that installs the handlers
    again (Ray's core worker replaces SIGTERM's when Ray starts).
    Interrupting the engine's threads instead (Python's
    default) shuts Ray down under a worker blocked in ``ray.get``, and Ray's
    core worker then ends the whole process (exit 1), before the finished
    rounds could be reported. A second Ctrl-C raises ``KeyboardInterrupt`` at
    once. Outside the main thread (no signals there), or when Ctrl-C is
    ignored, nothing changes.
    """

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        _silence_flower()
        print(
            "\nstopping: the devices finish their current calls (Ctrl-C again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield lambda: None
        return
    previous = signal.signal(signal.SIGINT, handle)
    # SIGTERM (a scheduler, `kill`, a container stop) stops the same clean way
    previous_term = signal.signal(signal.SIGTERM, handle)

    def take_back() -> None:
        signal.signal(signal.SIGINT, handle)
        signal.signal(signal.SIGTERM, handle)

    try:
        yield take_back
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)


def run_compare(
    plan: SweepPlan,
    *,
    ray_address: str | None = None,
    on_start: Callable[[PlannedVariant, bool], None] | None = None,
    on_round: Callable[[PlannedVariant, RoundOutcome], None] | None = None,
    after_variant: Callable[[PlannedVariant, str], None] | None = None,
) -> SweepOutcome:
    """Run every unfinished variant of ``plan`` (see :func:`fededge.reports.sweep.run_sweep`).

    Parameters
    ----------
    plan : the validated sweep.
    ray_address : join an existing Ray cluster (else the scenario's / ``RAY_ADDRESS``).
    on_start : called with each variant about to run and whether it resumes.
    on_round : called after each round of a variant.
    after_variant : called after each variant with ``ran``, ``skipped`` or ``failed``.
    """
    by_digest = {p.scenario.digest: p for p in plan.variants}

    def runner(scenario: Scenario, folder: Path, resume: bool) -> FleetReport:
        planned = by_digest[scenario.digest]
        if on_start is not None:
            on_start(planned, resume)

        def progress(outcome: RoundOutcome) -> None:
            if on_round is not None:
                on_round(planned, outcome)

        return simulate(
            scenario,
            folder,
            resume=resume,
            on_round=progress,
            ray_address=ray_address,
            keep_ray=True,
        )

    try:
        return run_sweep(plan, runner, after_variant=after_variant)
    finally:
        shutdown_ray()
