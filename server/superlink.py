"""A SuperLink that shows the network only its Fleet API.

Flower 1.42's ``flower-superlink`` serves its three APIs -- Fleet (devices),
Control (``flwr run``, ``flwr supernode register``) and Runtime (the
ServerApp and its SuperExec) -- from one FastAPI app on one ``--host/--port``
(``--fleet-api-address`` and ``--control-api-address`` are deprecated and no
longer bind anything). Listening on ``0.0.0.0`` therefore lets anyone who can
reach the port register device keys and start ServerApps on the server.

:func:`serve` runs that same Flower app (the same state, middleware and
lifespan) on two sockets:

* the **device address** (``--host/--port``, e.g. ``0.0.0.0:8000``) answers
  only the Fleet API's routes (``/v1/fleet/...``, the exact paths Flower's
  router declares) and ``403`` to everything else;
* the **operator address** (``127.0.0.1:<control port>``) serves all three
  APIs; only processes on the server machine can reach it.

The SuperLink runs in Flower's ``process`` isolation and :func:`serve` starts
the SuperExec itself, with a shared secret (``--superexec-auth-secret-file``),
so a process that reaches the Runtime API still cannot claim the ServerApp's
task without the secret file (mode 0600, the operator's).

Flower's own argument parsing (:func:`server.flower_compat.superlink_app`)
builds the configuration, so every ``flower-superlink`` option keeps its meaning.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from types import FrameType
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Prefix of the Fleet API's routes in Flower's SuperLink app.
FLEET_PREFIX = "/v1/fleet/"

REFUSED = (
    b"fededge: this address serves only the Fleet API (devices). "
    b"Control and Runtime APIs listen on the server's loopback.\n"
)


def fleet_paths(app: Any) -> frozenset[str]:
    """The exact paths of the Fleet API's routes in Flower's FastAPI ``app``."""
    from fastapi.routing import iter_route_contexts

    paths = (str(getattr(c.route, "path", "")) for c in iter_route_contexts(app.routes))
    return frozenset(path for path in paths if path.startswith(FLEET_PREFIX))


class FleetOnly:
    """ASGI wrapper: passes the Fleet API's exact paths to ``app``, refuses the rest (403).

    Parameters
    ----------
    app : the SuperLink's ASGI app.
    allowed : the paths passed on (:func:`fleet_paths`).
    """

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        if not allowed:
            raise RuntimeError("no Fleet API routes found in the SuperLink app")
        self.app = app
        self.allowed = allowed
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request if its path is the Fleet API's; answer 403 otherwise."""
        if scope["type"] == "http" and scope.get("path") in self.allowed:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "lifespan":  # the operator address runs the lifespan
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            return
        self.refused += 1
        if scope["type"] == "http":
            headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(REFUSED))]
            await send({"type": "http.response.start", "status": 403, "headers": headers})
            await send({"type": "http.response.body", "body": REFUSED})
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})


def serve(
    flower_args: Sequence[str],
    *,
    public_host: str,
    public_port: int,
    superexec_command: Sequence[str],
    env: dict[str, str],
) -> int:
    """Run the SuperLink: Fleet API on ``public_host:public_port``, all APIs on the loopback.

    Parameters
    ----------
    flower_args : ``flower-superlink`` arguments; ``--host/--port`` among them
        are the operator (loopback) address, ``--isolation process`` and the
        SuperExec secret file are expected.
    public_host, public_port : where devices connect.
    superexec_command : the SuperExec to start once the APIs listen (it gets
        ``--parent-pid`` of this process, so it ends with it).
    env : environment of the SuperExec (FLWR_HOME, offline settings).

    Returns
    -------
    int
        0 after Ctrl-C or SIGTERM.
    """
    import uvicorn

    from server.flower_compat import superlink_app

    app, config, logging_config = superlink_app(flower_args)
    tls: dict[str, Any] = {"ssl_keyfile": config.ssl_keyfile, "ssl_certfile": config.ssl_certfile}
    operator = uvicorn.Server(
        uvicorn.Config(app, host=config.host, port=config.port, log_config=logging_config, **tls)
    )
    devices = uvicorn.Server(
        uvicorn.Config(
            FleetOnly(app, fleet_paths(app)),
            host=public_host,
            port=public_port,
            lifespan="off",
            log_config=logging_config,
            **tls,
        )
    )
    superexec: subprocess.Popen[bytes] | None = None

    async def main() -> None:
        nonlocal superexec
        tasks = [asyncio.create_task(operator.serve()), asyncio.create_task(devices.serve())]
        while not (operator.started and devices.started):
            if any(task.done() for task in tasks):  # a port was taken, TLS files unreadable
                break
            await asyncio.sleep(0.05)
        if operator.started and devices.started:
            command = [*superexec_command, "--parent-pid", str(os.getpid())]
            superexec = subprocess.Popen(command, env=env)
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        operator.should_exit = devices.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()

    # uvicorn hands a signal it caught on to the handler it found: make that a clean stop
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        if superexec is not None and superexec.poll() is None:
            superexec.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                superexec.wait(5)
    if not (operator.started and devices.started):
        return 1
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM stops like Ctrl-C."""
    raise KeyboardInterrupt
