"""A real device on Flower's deployment engine, without the per-message process start.

Stock ``flower-supernode`` (``--isolation subprocess``) starts a SuperExec
that polls the SuperNode every second and launches a fresh ``flwr-clientapp``
process for every message; that process imports torch, parses the scenario,
loads the dataset and builds the nets again before a single step trains, and
the SuperNode itself polls the SuperLink every 3 s. On a small model that is
most of a round's time.

:func:`run_device` runs the SuperNode with ``--isolation process`` (Flower's
mode for an app process managed outside the SuperNode) in this process, plus
a :class:`DeviceWorker` thread that plays the app process: it claims each
ClientApp task from the SuperNode's Runtime API (the same calls
``flwr-clientapp`` makes) and runs :data:`clients.app.app` in place, so torch,
the scenario, the data and the nets stay loaded from round to round.

Two of Flower's waits are shortened in this process (:mod:`clients.flower_compat`,
which also holds every other Flower internal a device uses):
retries of message objects that are not there yet (1 s, then 2 s...; the
worker claims a task before the SuperNode has its objects) with the worker,
and the SuperNode's own polls (3 s when idle) when ``supernode_poll_s`` is
given. Without both (``--isolation subprocess``), the SuperNode is Flower's
as shipped.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
from flwr.app import Error, Message
from flwr.clientapp import ClientApp

from clients import flower_compat as flower
from fededge.cost.ledger import MAC_FIELDS

log = logging.getLogger(__name__)

#: Flower's task type of a ClientApp.
CLIENT_APP_TASK = "flwr-clientapp"

#: The app a worker serves: ``[tool.flwr.app] publisher/name``.
FEDEDGE_FAB_ID = "fededge/fededge"


class DeviceWorker(threading.Thread):
    """Claims ClientApp tasks from a SuperNode's Runtime API and runs them in this process.

    Parameters
    ----------
    runtime_address : the SuperNode's Runtime API, ``host:port`` (``--port`` of the SuperNode).
    client_app : the ClientApp to run (default: :data:`clients.app.app`).
    poll_s : seconds between two claims while idle.
    on_reply : called with each request, its reply and the seconds the task took.
    """

    def __init__(
        self,
        runtime_address: str,
        client_app: ClientApp | None = None,
        *,
        poll_s: float = 0.05,
        on_reply: Callable[[Message, Message, float], None] | None = None,
    ) -> None:
        super().__init__(name="fededge-device-worker", daemon=True)
        self.runtime_address = runtime_address
        self.client_app = client_app
        self.poll_s = poll_s
        self.on_reply = on_reply
        self.tasks_done = 0
        self._stop = threading.Event()

    def stop(self) -> None:
        """Stop after the current task."""
        self._stop.set()

    def run(self) -> None:
        """Claim and run tasks until stopped."""
        if self.client_app is None:
            from clients.app import app

            self.client_app = app
        client = flower.runtime_client(self.runtime_address)
        request = flower.AcquireTaskRequest(supported_task_types=[CLIENT_APP_TASK])
        try:
            while not self._stop.is_set():
                try:
                    claimed = client.AcquireTask(request)
                except httpx.TransportError:  # the SuperNode is starting (or gone)
                    self._stop.wait(0.5)
                    continue
                if claimed.HasField("task") and claimed.token:
                    self._run_task(claimed.token)
                    self.tasks_done += 1
                else:
                    self._stop.wait(self.poll_s)
        finally:
            client.close()

    def _run_task(self, token: str) -> None:
        """One task, as ``flwr-clientapp`` runs it, minus the process start and the FAB install.

        Any failure becomes an error reply (the server logs it and the round
        goes on); the worker keeps serving.
        """
        client = flower.runtime_client(self.runtime_address, token)
        heartbeat = _TaskHeartbeat(client)
        started = time.perf_counter()
        times: dict[str, float] = {}
        message = context = reply = None
        status, details = flower.SubStatus.FAILED, "ClientApp task failed"
        try:
            heartbeat.start()
            message, context, run, _fab = flower.pull_task_input(client)
            times["pull"] = time.perf_counter()
            if run.fab_id != FEDEDGE_FAB_ID:
                raise RuntimeError(
                    f"this device runs fededge's ClientApp ({FEDEDGE_FAB_ID}); the run "
                    f"{run.run_id} is of app {run.fab_id!r}. Start a stock flower-supernode "
                    "for other apps."
                )
            assert self.client_app is not None
            reply = self.client_app(message=message, context=context)
            times["app"] = time.perf_counter()
            status, details = flower.SubStatus.COMPLETED, ""
        except Exception as exc:  # a failed task is an error reply, never a dead device
            log.exception("ClientApp task failed")
            details = f"{type(exc).__name__}: {exc}"
            if message is not None:
                reply = Message(
                    Error(code=flower.ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details),
                    reply_to=message,
                )
        finally:
            try:
                if reply is not None and context is not None:
                    flower.push_message(client, reply, context)
                    times["push reply"] = time.perf_counter()
                flower.push_task_output(
                    client=client, context=context, sub_status=status, details=details
                )
                times["push state"] = time.perf_counter()
            except httpx.HTTPError:
                log.exception("could not hand the reply to the SuperNode")
            heartbeat.stop()
            client.close()
            previous = started
            for phase, at in times.items():
                log.info("task %s: %.3f s", phase, at - previous)
                previous = at
        if message is not None and reply is not None and self.on_reply is not None:
            self.on_reply(message, reply, time.perf_counter() - started)


def print_reply(request: Message, reply: Message, seconds: float) -> None:
    """One console line per task: which round, what the device trained and spent, how long."""
    if reply.has_error():
        print(f"task failed: {reply.error.reason}", flush=True)
        return
    metrics = reply.content.metric_records.get("metrics")

    def number(key: str) -> float:
        value = metrics.get(key, 0.0) if metrics is not None else 0.0
        return float(value) if isinstance(value, int | float) else 0.0

    if request.metadata.message_type != "train":
        what = f"{request.metadata.message_type}: device {number('device-id'):.0f} answered"
    else:
        config = request.content.config_records.get("config")
        value = config.get("server-round") if config is not None else None
        server_round = value if isinstance(value, int) else "?"
        if number("dropped"):
            status = "unavailable (dropout)"
        else:
            spent = sum(number(k) for k in MAC_FIELDS)
            status = (
                f"trained {number('trained'):.0f} of {number('arrived'):.0f} instances, "
                f"{spent:.3g} MACs in {number('wall_s'):.2f} s"
            )
        what = f"round {server_round}: {status}"
    print(f"{what}; task {seconds:.2f} s", flush=True)


class _TaskHeartbeat:
    """Tells the SuperNode a long task is alive (without Flower's SIGINT on failure)."""

    def __init__(self, client: Any, interval_s: float = 10.0) -> None:
        self.client = client
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="task-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.client.SendTaskHeartbeat(flower.SendTaskHeartbeatRequest())
            except httpx.HTTPError:
                log.debug("task heartbeat failed", exc_info=True)


def load_client_app(spec: str, option: str = "client app") -> ClientApp:
    """The ClientApp object named by ``MODULE:ATTR`` (imported from the working folder).

    Raises
    ------
    ConfigError
        Naming ``option``: not ``MODULE:ATTR``, not importable, not a ClientApp.
    """
    import importlib
    import os

    from fededge.errors import ConfigError, ConfigIssue

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError([ConfigIssue(option, f"expected MODULE:ATTR, got {spec!r}")])
    sys.path.insert(0, os.getcwd())
    try:
        app = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError([ConfigIssue(option, f"{spec}: {exc}")]) from None
    if not isinstance(app, ClientApp):
        raise ConfigError(
            [ConfigIssue(option, f"{spec} is a {type(app).__name__}, not a ClientApp")]
        )
    return app


def run_device(
    supernode_args: Sequence[str],
    *,
    runtime_port: int,
    worker: bool = True,
    worker_poll_s: float = 0.05,
    supernode_poll_s: float | None = None,
    client_app: ClientApp | None = None,
) -> None:
    """Run a SuperNode and (``worker``) a :class:`DeviceWorker` in this process.

    Parameters
    ----------
    supernode_args : ``flower-supernode`` arguments, with ``--port runtime_port``
        and ``--isolation process`` (``worker``) or ``subprocess`` (Flower's
        stock process per message, then no worker).
    runtime_port : the SuperNode's Runtime API port (on 127.0.0.1).
    worker : serve the ClientApp from this process.
    worker_poll_s : seconds between the worker's claims while idle.
    supernode_poll_s : cap on the SuperNode's own waits (None: Flower's 3 s).
    client_app : the ClientApp the worker serves (default: fededge's,
        :data:`clients.app.app`); another app stands in for a device built on
        another stack (see docs/device-contract.md).

    Returns when the SuperNode stops (Ctrl-C, SIGTERM, refused by the SuperLink):
    Flower exits the process with its exit code.
    """
    import contextlib

    with contextlib.ExitStack() as waits:
        if worker or supernode_poll_s is not None:
            # a message found before its objects: retry in 0.05 s, not after 1 s, 2 s...
            waits.enter_context(flower.shortened_object_pulls())
        if supernode_poll_s is not None:
            waits.enter_context(flower.shortened_supernode_polls(supernode_poll_s))
        _serve(supernode_args, runtime_port, worker, worker_poll_s, client_app)


def _serve(
    supernode_args: Sequence[str],
    runtime_port: int,
    worker: bool,
    worker_poll_s: float,
    client_app: ClientApp | None,
) -> None:
    """The SuperNode and its worker (see :func:`run_device`)."""
    if worker and client_app is None:
        # the app's imports (torch, the core) load now, not in the first round
        import clients.app  # noqa: F401
    if worker:
        address = f"127.0.0.1:{runtime_port}"
        DeviceWorker(address, client_app, poll_s=worker_poll_s, on_reply=print_reply).start()
    # flower-supernode parses its own command line: hand it its arguments
    sys.argv = ["flower-supernode", *supernode_args]
    flower.flower_supernode()
