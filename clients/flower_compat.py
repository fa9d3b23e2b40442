"""Every use the device side makes of Flower's internals, fenced in one module.

A device on the deployment engine (:mod:`clients.device`) runs Flower's
SuperNode in its own process and plays the ClientApp process itself (a
:class:`~clients.device.DeviceWorker`), so torch, the scenario, the data and
the nets stay loaded from round to round. That takes names Flower 1.42 does
not make public -- the SuperNode's Runtime API client and requests, and the
three steps ``flwr-clientapp`` runs per task -- which are imported here and
nowhere else, plus two of Flower's fixed waits, shortened for a ``with`` block
and restored after it:

* :func:`shortened_object_pulls` -- a message travels as a tree of objects
  pulled one by one; an object not uploaded yet is retried after 1 s, then
  2 s, 4 s... (``pull_objects``' keyword defaults). The worker claims a task
  before the SuperNode has its objects and would wait a second or three for
  nothing; here the retries start at 0.05 s, doubling up to 0.5 s.
* :func:`shortened_supernode_polls` -- the SuperNode asks the SuperLink for work
  every 3 s when idle and checks for the ClientApp's reply every 0.5 s; both
  are capped. Every device then asks the SuperLink that often, which a large
  fleet pays for on the SuperLink: opt-in.

Importing this module checks the installed Flower: another version than
:data:`~fededge.flower_release.SUPPORTED` fails at once with a message naming both.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any
from unittest import mock

from fededge.flower_release import SUPPORTED, require_flower

#: The installed Flower (the import fails on another release line than fededge's).
FLOWER_VERSION = require_flower("devices")

# ruff: noqa: E402 - the imports below come after the version check
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest, SendTaskHeartbeatRequest
from flwr.supercore.inflatable import inflatable_utils
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode import start_client_internal as supernode_loop
from flwr.supernode.cli.flower_supernode import flower_supernode
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

__all__ = [
    "FLOWER_VERSION",
    "SUPPORTED",
    "AcquireTaskRequest",
    "ErrorCode",
    "SendTaskHeartbeatRequest",
    "SubStatus",
    "flower_supernode",
    "pull_task_input",
    "push_message",
    "push_task_output",
    "runtime_client",
    "shortened_object_pulls",
    "shortened_supernode_polls",
]

_PULLS = (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree)
for _function in _PULLS:
    if not {"initial_backoff", "backoff_cap"} <= set(_function.__kwdefaults__ or {}):
        raise ImportError(
            f"flwr {FLOWER_VERSION}'s {_function.__name__} takes no initial_backoff/backoff_cap"
        )
if "time.sleep(3)" not in inspect.getsource(supernode_loop.start_client_internal):
    raise ImportError(f"flwr {FLOWER_VERSION}'s SuperNode loop is not the one of Flower 1.42")


def runtime_client(address: str, token: str | None = None) -> Any:
    """A client of a SuperNode's Runtime API on this device's loopback (``host:port``).

    With ``token`` it acts for the task of that token, as ``flwr-clientapp`` does.
    """
    interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp")]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,  # the Runtime API listens on this device's loopback
        root_certificates=None,
        interceptors=interceptors,
    )


@contextlib.contextmanager
def shortened_object_pulls(initial_s: float = 0.05, cap_s: float = 0.5) -> Iterator[None]:
    """While active, a missing object waits ``initial_s`` to retry (doubling to ``cap_s``)."""
    with contextlib.ExitStack() as stack:
        for function in _PULLS:
            defaults = function.__kwdefaults__
            assert defaults is not None
            stack.enter_context(
                mock.patch.dict(defaults, initial_backoff=initial_s, backoff_cap=cap_s)
            )
        yield


class _CappedSleep(ModuleType):
    """The ``time`` module with ``sleep`` capped at ``cap_s`` seconds."""

    def __init__(self, cap_s: float) -> None:
        super().__init__("time")
        self.cap_s = cap_s

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap_s))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@contextlib.contextmanager
def shortened_supernode_polls(cap_s: float) -> Iterator[None]:
    """While active, the SuperNode's waits (3 s idle poll, 0.5 s reply wait) last <= ``cap_s``."""
    with mock.patch.object(supernode_loop, "time", _CappedSleep(cap_s)):
        yield
