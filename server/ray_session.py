"""The server's Ray session: started, used by Flower's simulation engine, shut down once.

:func:`start_ray` starts (or joins) Ray the way Flower's Ray backend would, after
stopping what a killed run left behind (:func:`reap_orphans`);
:func:`run_on_engine` runs a ServerApp and a ClientApp on the simulation engine
in it. Several simulations can share one Ray session (the variants of a budget sweep,
:func:`server.flower_compat.keep_ray_session`); the caller shuts Ray down at the
end (:func:`shutdown_ray`). Every simulation in one session uses the first one's
``ray.init`` settings (CPUs, temp dir, cluster address).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def start_ray(config: dict[str, Any]) -> None:
    """Start (or join) Ray here, in the main thread, as Flower's Ray backend would.

    Flower starts Ray only when it is not running; starting it first lets the
    caller take SIGTERM back from Ray's handler (which dumps a stack and aborts).
    ``config`` is the engine's backend config (``init_args``, ``client_resources``).
    """
    import ray

    from server.flower_compat import init_ray

    if ray.is_initialized():
        return
    temp_dir = config["init_args"].get("_temp_dir")
    if temp_dir:  # a local session: first stop what a killed run left behind
        reap_orphans(temp_dir)
    init_ray(config)


def run_on_engine(server_app: Any, client_app: Any, devices: int, config: dict[str, Any]) -> None:
    """Run ``server_app`` with ``devices`` simulated SuperNodes of ``client_app`` on the engine."""
    from flwr.simulation import run_simulation

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=devices,
        backend_config=config,
    )


def shutdown_ray() -> None:
    """Shut Ray down if this process started or joined it."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def reap_orphans(temp_dir: str | os.PathLike[str]) -> list[int]:
    """Stop the leftovers of a killed run: Ray processes of ``temp_dir`` whose parent died.

    After the driver of a local Ray session is killed (SIGKILL), Ray's node
    processes go, but its dashboard and runtime-env agents can stay behind,
    adopted by init (parent 1). They are recognised by parent 1, this user,
    and a file open under ``temp_dir`` (their logs: a folder only fededge's local
    sessions use), so a Ray cluster started with ``ray start`` is never touched.
    Returns the process ids stopped.
    """
    import psutil

    root = str(Path(temp_dir).resolve())
    found = []
    for proc in psutil.process_iter(["ppid", "uids", "pid"]):
        try:
            if proc.info["ppid"] != 1 or proc.info["uids"].real != os.getuid():
                continue
            if any(f.path.startswith(root + os.sep) for f in proc.open_files()):
                found.append(proc)
        except (psutil.Error, AttributeError):
            continue
    for proc in found:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(found, timeout=5)
    for proc in alive:  # the agents often ignore SIGTERM
        with contextlib.suppress(psutil.Error):
            proc.kill()
    if found:
        log.info("stopped %d processes left behind by a killed run", len(found))
    return [p.pid for p in found]
