"""Flower 1.42's fixed waits on the deployment path, and switches that shorten them.

A round on the deployment engine crosses several processes that poll each
other. Flower exposes some intervals (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``)
but not these two, which fededge shortens in its own processes only:

* **object pulls** -- a message travels as a tree of objects pulled one by
  one; an object not uploaded yet is retried after 1 s, then 2 s, 4 s...
  (``PULL_INITIAL_BACKOFF``/``PULL_BACKOFF_CAP``). Whoever polls fast finds
  the message before its objects and waits a second or three for nothing.
  :func:`shorten_object_pulls` retries after 0.05 s, doubling up to 0.5 s.
* **the SuperNode's polls** -- it asks the SuperLink for work every 3 s when
  idle and checks for the ClientApp's reply every 0.5 s.
  :func:`shorten_supernode_polls` caps both. Every device then asks the
  SuperLink that often, which a large fleet pays for on the SuperLink: opt-in.

Both change defaults of Flower 1.42 functions in the running process; on
another Flower version they log a warning and change nothing.
"""

from __future__ import annotations

import inspect
import logging
import time
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)


class _CappedSleep(ModuleType):
    """The ``time`` module with ``sleep`` capped at ``cap_s`` seconds."""

    def __init__(self, cap_s: float) -> None:
        super().__init__("time")
        self.cap_s = cap_s

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap_s))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def shorten_supernode_polls(cap_s: float) -> bool:
    """Cap the SuperNode's waits (3 s idle poll, 0.5 s reply wait) at ``cap_s`` seconds.

    Returns False, changing nothing, when the installed Flower's SuperNode loop
    is not the one this was written for (Flower 1.42).
    """
    from flwr.supernode import start_client_internal as loop

    source = inspect.getsource(loop.start_client_internal)
    if "time.sleep(3)" not in source or getattr(loop, "time", None) is not time:
        log.warning(
            "this Flower's SuperNode loop is not the one fededge knows (1.42); "
            "keeping its poll interval"
        )
        return False
    vars(loop)["time"] = _CappedSleep(cap_s)
    return True


def shorten_object_pulls(initial_s: float = 0.05, cap_s: float = 0.5) -> bool:
    """Retry a missing message object after ``initial_s`` (doubling up to ``cap_s``), not 1 s.

    Returns False, changing nothing, when Flower's pull functions do not take
    these settings (another Flower version).
    """
    from flwr.supercore.inflatable import inflatable_utils

    functions = (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree)
    for function in functions:
        defaults = function.__kwdefaults__ or {}
        if "initial_backoff" not in defaults or "backoff_cap" not in defaults:
            log.warning("this Flower pulls objects differently (not 1.42); keeping its retries")
            return False
    for function in functions:
        assert function.__kwdefaults__ is not None
        function.__kwdefaults__["initial_backoff"] = initial_s
        function.__kwdefaults__["backoff_cap"] = cap_s
    return True
