"""Hand messages to the simulation engine's workers in one scan per sweep, not one per node.

Flower 1.42's simulation engine feeds its Ray actors from a thread
(``vce_api.add_messages_to_queue``) that, every 0.1 s, asks the link state node by
node for that node's next message. Each ask scans every stored message, so one
sweep costs N x (stored messages) checks: with every device of a 1000-device fleet
sampled, about 10^6 per sweep, which keeps one core of the machine busy for the
whole round -- the core the devices train on (a profile of ``bench/fleet_scale.py``
at 1000 devices put 60% of the server process's CPU time there, in both arms).

:func:`install` replaces that thread's function with one that scans the stored
messages once per sweep: the same checks (expiry, federation: the link state's
own ``_check_stored_messages``), each message delivered once and marked delivered
as Flower marks it, at most one message per node per sweep, in the order the
server pushed them. Link states other than Flower's in-memory one keep Flower's
function.
"""

from __future__ import annotations

import threading
from queue import Queue
from typing import Any

from flwr.app import Message
from flwr.server.superlink.linkstate import InMemoryLinkState
from flwr.supercore.date import now

__all__ = ["install", "take_undelivered"]

#: Seconds between two sweeps (Flower's own interval).
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


def install() -> None:
    """Use :func:`take_undelivered` in the simulation engine (idempotent)."""
    from flwr.server.superlink.fleet.vce import vce_api

    stock = vce_api.add_messages_to_queue
    if getattr(stock, "fededge", False):
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
