"""One scan per sweep (server.flower_compat) hands out the messages Flower's own sweep would."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from queue import Queue
from typing import Any

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.task_pb2 import Task  # pylint: disable=no-name-in-module
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState, RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from server import flower_compat as dispatch

RUN_ID, TASK_ID = 7, 9


@pytest.fixture
def link() -> Iterator[tuple[InMemoryLinkState, InMemoryGrid, list[int]]]:
    """A link state with one run and three nodes, set up as the simulation engine does."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    factory = LinkStateFactory(
        FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()
    )
    state = factory.state()
    assert isinstance(state, InMemoryLinkState)
    run = Run.create_empty(run_id=RUN_ID)
    run.primary_task_id, run.federation_id = TASK_ID, NOOP_FEDERATION_ID
    state.run_ids[RUN_ID] = RunRecord(run=run)
    state.task_store[TASK_ID] = Task(task_id=TASK_ID, run_id=RUN_ID)
    nodes = list(vce_api._register_nodes(3, factory))
    TaskIdentity.task_id, TaskIdentity.run_id = TASK_ID, RUN_ID
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    try:
        yield state, grid, nodes
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def push(grid: InMemoryGrid, destinations: list[int]) -> None:
    grid.push_messages(
        [
            Message(
                RecordDict({"c": ConfigRecord({"i": i})}), dst_node_id=node, message_type="train"
            )
            for i, node in enumerate(destinations)
        ]
    )


def numbers(messages: list[Message]) -> list[int]:
    return [int(str(m.content.config_records["c"]["i"])) for m in messages]


def test_one_message_per_node_per_sweep_each_once(link: Any) -> None:
    state, grid, nodes = link
    a, b, c = nodes
    push(grid, [a, b, a, c, a])
    sweeps = [numbers(dispatch.take_undelivered(state, nodes)) for _ in range(4)]
    assert sweeps == [[0, 1, 3], [2], [4], []]
    assert all(m.metadata.delivered_at for m in state.message_ins_store.values())


def test_same_messages_as_flowers_own_sweep(link: Any) -> None:
    state, grid, nodes = link
    push(grid, [nodes[2], nodes[0], nodes[2], nodes[1]])
    stock = [m for node in nodes for m in state.get_message_ins(node_id=node, limit=1)]
    for m in state.message_ins_store.values():
        m.metadata.delivered_at = ""  # undeliver: the same store, swept our way
    ours = dispatch.take_undelivered(state, nodes)
    assert sorted(numbers(ours)) == sorted(numbers(stock)) == [0, 1, 3]


def test_nodes_outside_the_mapping_and_expired_messages_are_left(link: Any) -> None:
    state, grid, nodes = link
    push(grid, [nodes[0], nodes[1]])
    expired = next(
        m for m in state.message_ins_store.values() if m.metadata.dst_node_id == nodes[1]
    )
    expired.metadata.ttl = 0.0  # expired already: the state's own check drops it
    assert numbers(dispatch.take_undelivered(state, {nodes[1]: 1, nodes[2]: 2})) == []
    assert len(state.message_ins_store) == 1  # the expired one is deleted, node 0's kept
    assert numbers(dispatch.take_undelivered(state, nodes)) == [0]


def test_install_feeds_the_engine_queue(link: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    state, grid, nodes = link
    monkeypatch.setattr(vce_api, "add_messages_to_queue", vce_api.add_messages_to_queue)
    stock = vce_api.add_messages_to_queue
    with dispatch.one_scan_dispatch(), dispatch.one_scan_dispatch():  # nested: the same feeder
        feeder = vce_api.add_messages_to_queue
    assert vce_api.add_messages_to_queue is stock  # restored when the block ends
    assert getattr(feeder, "fededge", False)
    push(grid, [nodes[1], nodes[1]])
    queue: Queue[Message] = Queue()
    stop = threading.Event()
    thread = threading.Thread(target=feeder, args=(state, queue, dict.fromkeys(nodes), stop))
    thread.start()
    got = [queue.get(timeout=5), queue.get(timeout=5)]
    stop.set()
    thread.join(timeout=5)
    assert numbers(got) == [0, 1] and queue.empty()
