"""Every use the server side makes of Flower's internals, fenced in one module.

fededge's server uses Flower's public API (``flwr.app``, ``flwr.serverapp``,
``flwr.simulation``) everywhere else. Three things it needs are not public in
Flower 1.42, and they live here, each applied for a ``with`` block and
restored after it:

* :func:`one_scan_dispatch` -- the simulation engine feeds its Ray actors from
  a thread (``vce_api.add_messages_to_queue``) that, every 0.1 s, asks the link
  state node by node for that node's next message. Each ask scans every stored
  message, so one sweep costs N x (stored messages) checks: with every device of
  a 1000-device fleet sampled, about 10^6 per sweep, which keeps one core busy
  for the whole round -- the core the devices train on (a profile of
  ``bench/fleet_scale.py`` at 1000 devices put 60% of the server process's CPU
  time there, in both arms). The replacement scans the stored messages once per
  sweep (:func:`take_undelivered`): the same checks (expiry, federation: the link
  state's own ``_check_stored_messages``), each message delivered once and marked
  delivered as Flower marks it, at most one message per node per sweep, in the
  order the server pushed them. Link states other than Flower's in-memory one
  keep Flower's function.
* :func:`keep_ray_session` -- Flower's Ray backend starts Ray only when it is
  not running but shuts it down when a simulation ends
  (``RayBackend.terminate``); while active, that step stops the simulation's
  actors only, so the next simulation (the next variant of a budget sweep)
  reuses the running session. :func:`init_ray` starts Ray the way the backend
  would, so the caller can start it first (and take SIGTERM back from Ray).
* :func:`superlink_app` -- the SuperLink's FastAPI app and configuration, built
  by Flower's own ``flower-superlink`` argument parsing, for
  :func:`server.superlink.serve` to serve on two sockets.
* :func:`shortened_object_pulls` -- a message travels as a tree of objects
  pulled one by one; an object not uploaded yet is retried after 1 s, then
  2 s, 4 s... (``pull_objects``' keyword defaults). Whoever polls fast finds the
  message before its objects and waits a second or three for nothing; here the
  retries start at 0.05 s, doubling up to 0.5 s.

Importing this module checks the installed Flower: another version than
:data:`~fededge.flower_release.SUPPORTED` fails at once with a message naming both, rather than
misbehaving in the middle of a run.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from queue import Queue
from typing import Any
from unittest import mock

from fededge.flower_release import SUPPORTED, require_flower

#: The installed Flower (the import fails on another release line than fededge's).
FLOWER_VERSION = require_flower("server")

from flwr.app import Message  # noqa: E402 - after the version check
from flwr.server.superlink.fleet.vce import vce_api  # noqa: E402
from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend  # noqa: E402
from flwr.server.superlink.linkstate import InMemoryLinkState  # noqa: E402
from flwr.supercore.date import now  # noqa: E402
from flwr.supercore.inflatable import inflatable_utils  # noqa: E402

__all__ = [
    "FLOWER_VERSION",
    "SUPPORTED",
    "init_ray",
    "keep_ray_session",
    "one_scan_dispatch",
    "shortened_object_pulls",
    "superlink_app",
    "take_undelivered",
]

#: Seconds between two sweeps of the engine's feeder (Flower's own interval).
SWEEP_S = 0.1


def take_undelivered(state: InMemoryLinkState, nodes: Any) -> list[Message]:
    """Undelivered messages for ``nodes`` (at most one each), marked delivered.

    One pass over the state's stored messages; invalid ones (expired, nodes left
    the federation) are dropped by the state's own check first.
    """
    taken: dict[int, Message] = {}
    with state.lock:
        ids = list(state.message_ins_store)
        state._check_stored_messages(set(ids))
        for msg_id in ids:
            msg = state.message_ins_store.get(msg_id)
            if msg is None or msg.metadata.delivered_at != "":
                continue
            node = msg.metadata.dst_node_id
            if node in nodes and node not in taken:
                taken[node] = msg
    delivered_at = now().isoformat()
    for msg in taken.values():
        msg.metadata.delivered_at = delivered_at
    return list(taken.values())


@contextmanager
def one_scan_dispatch() -> Iterator[None]:
    """While active, the simulation engine's feeder uses :func:`take_undelivered`.

    Nested blocks keep the outer one's feeder; the stock feeder is back when
    the outermost block ends.
    """
    stock = vce_api.add_messages_to_queue
    if getattr(stock, "fededge", False):  # already inside a block
        yield
        return

    def add_messages_to_queue(
        state: Any, queue: Queue[Message], nodes_mapping: Any, f_stop: threading.Event
    ) -> None:
        if not isinstance(state, InMemoryLinkState):
            stock(state, queue, nodes_mapping, f_stop)
            return
        while not f_stop.is_set():
            for msg in take_undelivered(state, nodes_mapping):
                queue.put(msg)
            f_stop.wait(SWEEP_S)

    add_messages_to_queue.fededge = True  # type: ignore[attr-defined]
    vce_api.add_messages_to_queue = add_messages_to_queue
    try:
        yield
    finally:
        vce_api.add_messages_to_queue = stock


@contextmanager
def keep_ray_session() -> Iterator[None]:
    """While active, a finished Flower simulation stops its actors but leaves Ray running."""
    original = RayBackend.terminate

    def terminate_actors_only(self: Any) -> None:
        import ray

        # ray.kill frees the actors' CPUs at once (and quietly) for the next simulation;
        # Flower's own path (actor.terminate.remote()) logs a warning per actor.
        for actor in getattr(self.pool, "pool", None) or ():
            ray.kill(actor, no_restart=True)

    RayBackend.terminate = terminate_actors_only  # type: ignore[method-assign]
    try:
        yield
    finally:
        RayBackend.terminate = original  # type: ignore[method-assign]


def init_ray(backend_config: dict[str, Any]) -> None:
    """Start (or join) Ray with a backend config, exactly as Flower's Ray backend does."""

    class _Backend:
        init_args_key = "init_args"

    RayBackend.init_ray(_Backend(), backend_config)  # type: ignore[arg-type]


_PULLS = (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree)
if not all({"initial_backoff", "backoff_cap"} <= set(f.__kwdefaults__ or {}) for f in _PULLS):
    raise ImportError(f"flwr {FLOWER_VERSION} pulls message objects without backoff settings")


@contextmanager
def shortened_object_pulls(initial_s: float = 0.05, cap_s: float = 0.5) -> Iterator[None]:
    """While active, a missing object waits ``initial_s`` to retry (doubling to ``cap_s``)."""
    first, second = (
        mock.patch.dict(f.__kwdefaults__ or {}, initial_backoff=initial_s, backoff_cap=cap_s)
        for f in _PULLS
    )
    with first, second:
        yield


def superlink_app(flower_args: Sequence[str]) -> tuple[Any, Any, dict[str, Any]]:
    """``(app, config, uvicorn log config)`` of a SuperLink run with ``flower-superlink`` args."""
    import importlib

    from flwr.superlink.main import create_app

    # the module, not the function of the same name that flwr.superlink.cli exports
    cli = importlib.import_module("flwr.superlink.cli.flower_superlink")
    sys.argv = ["flower-superlink", *flower_args]  # Flower's parser reads sys.argv
    config = cli._parse_superlink_lifespan_config()
    app = create_app(config, cli.SuperLinkLifespan)
    return app, config, cli.get_uvicorn_log_config(cli.console_handler.level)
