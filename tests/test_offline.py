"""The test run itself stays off the network (the guard in conftest.py)."""

from __future__ import annotations

import socket
import urllib.request

import conftest
import pytest


def test_reaching_beyond_this_machine_is_refused_and_recorded() -> None:
    before = len(conftest.REFUSED)
    with pytest.raises(OSError, match="the test run is offline"):
        urllib.request.urlopen("http://example.com/", timeout=5)
    with pytest.raises(OSError, match="the test run is offline"), socket.socket() as sock:
        sock.connect(("93.184.215.14", 80))
    assert len(conftest.REFUSED) == before + 2
    del conftest.REFUSED[before:]  # these two were this test's own, on purpose


def test_this_machine_stays_reachable() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=5):
            pass
    assert socket.getaddrinfo("localhost", 80)
