"""Shared pytest fixtures, and the guard that keeps the test run off the network.

No test may reach beyond this machine: every in-process name lookup and TCP connection
to a host that is not this machine is refused (as an offline machine would refuse it)
and recorded, and a test run that made any such attempt fails at the end, naming them.
Servers the tests start on 127.0.0.1 or on this machine's own addresses are unaffected.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any

import pytest

#: network attempts the guard refused during this run: (what, where)
REFUSED: list[tuple[str, str]] = []


def _own_addresses() -> set[str]:
    import psutil

    return {
        addr.address.split("%")[0]
        for addrs in psutil.net_if_addrs().values()
        for addr in addrs
        if addr.family in (socket.AF_INET, socket.AF_INET6)
    }


def _is_local(host: Any, own: set[str]) -> bool:
    if host in (None, "", "localhost", socket.gethostname()):
        return True
    if isinstance(host, bytes):
        host = host.decode()
    try:
        ip = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return False  # a name other than this machine's: resolving it is network access
    return ip.is_loopback or ip.is_unspecified or str(ip) in own


def _guard_network() -> None:
    own = _own_addresses()
    getaddrinfo, connect, connect_ex = (
        socket.getaddrinfo,
        socket.socket.connect,
        socket.socket.connect_ex,
    )

    def refuse(what: str, where: Any) -> OSError:
        REFUSED.append((what, str(where)))
        return OSError(f"the test run is offline: {what} {where!r} refused")

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_local(host, own):
            raise refuse("name lookup of", host)
        return getaddrinfo(host, *args, **kwargs)

    def remote(sock: socket.socket, address: Any) -> bool:
        # UDP "connects" send nothing (Ray finds its own address that way); TCP does
        return (
            sock.family in (socket.AF_INET, socket.AF_INET6)
            and sock.type == socket.SOCK_STREAM
            and isinstance(address, tuple)
            and not _is_local(address[0], own)
        )

    def guarded_connect(sock: socket.socket, address: Any) -> None:
        if remote(sock, address):
            raise refuse("TCP connection to", address)
        connect(sock, address)

    def guarded_connect_ex(sock: socket.socket, address: Any) -> int:
        if remote(sock, address):
            raise refuse("TCP connection to", address)
        return connect_ex(sock, address)

    socket.getaddrinfo = guarded_getaddrinfo  # type: ignore[assignment]
    socket.socket.connect = guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = guarded_connect_ex  # type: ignore[method-assign]


def pytest_configure(config: pytest.Config) -> None:
    _guard_network()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if REFUSED:
        lines = "\n".join(f"  {what} {where}" for what, where in REFUSED)
        print(f"\nthe test run tried to reach the network ({len(REFUSED)} attempts):\n{lines}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The offline datasets in ``../shared/data`` beside the repository (skip when absent)."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"offline datasets not found at {path} (see shared/data/README.md)")
    return path
