"""A whole deployment on one machine (127.0.0.1): a SuperLink and devices as child processes.

For trying the deployment path without devices, for the process tests and for
``bench/deploy_latency.py``. Each process is a ``fededge deploy ...`` command
(the same commands a user runs); every process started is stopped by its
process id -- and, if they outlive it, the processes *it* started (Flower's
SuperExec and app processes) -- when the :class:`LoopbackDeployment` closes::

    with LoopbackDeployment(tmp_path, insecure=True) as deployment:
        deployment.start_superlink()
        deployment.start_device(0, threads=1)
        deployment.start_device(1, threads=1)
        result = deployment.run("scenario.toml", out_dir=tmp_path / "report")
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fededge.deploy.flower_commands import OFFLINE_ENV


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Child:
    """A started process, its log file and its command."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    command: list[str]

    def output(self) -> str:
        """What it printed so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class LoopbackDeployment:
    """SuperLink + devices on 127.0.0.1, in a folder of their own (their ``FLWR_HOME``s too).

    Parameters
    ----------
    folder : deployment folder (``--dir`` of every command) and log files.
    insecure : no TLS (else ``fededge deploy certs`` runs first).
    auth : the SuperLink accepts registered devices only (needs TLS).
    """

    def __init__(self, folder: str | Path, *, insecure: bool = False, auth: bool = False) -> None:
        self.folder = Path(folder).resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.insecure = insecure
        self.auth = auth
        self.port = free_port()  # the devices' port (Fleet API)
        self.control_port = free_port()  # the operator's (Control and Runtime APIs)
        self.children: list[Child] = []
        self.env = {**os.environ, **OFFLINE_ENV}

    # ------------------------------------------------------------------ commands
    def fededge(self, *args: str) -> list[str]:
        """The command line of ``fededge ARGS`` in this Python environment."""
        return [sys.executable, "-m", "fededge.cli", *args]

    def security(self) -> list[str]:
        """``--insecure`` when insecure (else TLS files come from the folder)."""
        return ["--insecure"] if self.insecure else []

    def make_certificates(self, devices: int = 0) -> None:
        """``fededge deploy certs`` (CA, server certificate, ``devices`` keys)."""
        self.check(["deploy", "certs", "--dir", str(self.folder), "--devices", str(devices)])

    def start_superlink(self, timeout_s: float = 60.0) -> Child:
        """Start ``fededge deploy superlink`` and wait until its port accepts connections."""
        if not self.insecure and not (self.folder / "certs" / "ca.crt").exists():
            self.make_certificates()
        args = ["deploy", "superlink", "--dir", str(self.folder), "--host", "127.0.0.1"]
        args += ["--port", str(self.port), "--control-port", str(self.control_port)]
        args += self.security()
        if self.auth:
            args.append("--auth")
        child = self.start("superlink", self.fededge(*args))
        wait_for_port(self.port, timeout_s, child)
        wait_for_port(self.control_port, timeout_s, child)
        return child

    def register(
        self, public_key: Path, *extra: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``fededge deploy register`` a device's public key (``check``: raise if it fails)."""
        args = ["deploy", "register", str(public_key), "--dir", str(self.folder), *extra]
        return self.check(args) if check else self.attempt(args)

    def start_device(
        self,
        device_id: int,
        *extra: str,
        auth_key: Path | None = None,
        cwd: Path | None = None,
    ) -> Child:
        """Start ``fededge deploy device`` (extra arguments: ``--threads 1``, ``--poll 0.2``...).

        ``cwd``: the device's working folder (default: the deployment folder).
        """
        args = ["deploy", "device", "--dir", str(self.folder), "--device-id", str(device_id)]
        args += ["--superlink", f"127.0.0.1:{self.port}", "--port", str(free_port())]
        args += [*self.security(), *extra]
        if auth_key is not None:
            args += ["--auth-key", str(auth_key)]
        return self.start(f"device-{device_id}", self.fededge(*args), cwd=cwd)

    def run(
        self,
        scenario: str | Path,
        *extra: str,
        out_dir: Path,
        wait_s: float = 120.0,
        timeout_s: float = 600.0,
    ) -> subprocess.CompletedProcess[str]:
        """``fededge deploy run`` a scenario (extra arguments: ``--set k=v``, ``--reply-poll 3``).

        Returns the finished process, output captured.
        """
        args = ["deploy", "run", str(scenario), "--dir", str(self.folder), "--out", str(out_dir)]
        args += ["--wait", str(wait_s), *self.security(), *extra]
        return subprocess.run(
            self.fededge(*args),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def attempt(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        """Run ``fededge ARGS`` to completion, output captured (whatever its exit code)."""
        return subprocess.run(
            self.fededge(*args),
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    def check(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        """Run ``fededge ARGS`` to completion; raise with its output if it fails."""
        done = self.attempt(args)
        if done.returncode != 0:
            raise RuntimeError(
                f"fededge {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            )
        return done

    # ------------------------------------------------------------------ processes
    def start(self, name: str, command: list[str], cwd: Path | None = None) -> Child:
        """Start ``command`` with its output in ``<folder>/<name>.log`` (``<name>-2.log``...)."""
        taken = {child.name for child in self.children}
        base, n = name, 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        log = self.folder / f"{name}.log"
        with log.open("wb") as fh:
            process = subprocess.Popen(
                command, stdout=fh, stderr=subprocess.STDOUT, env=self.env, cwd=cwd or self.folder
            )
        child = Child(name, process, log, command)
        self.children.append(child)
        return child

    def stop(self, child: Child, timeout_s: float = 20.0) -> None:
        """Stop ``child`` (SIGTERM, then SIGKILL), then any process it started that outlived it."""
        descendants = _descendants(child.process.pid)
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
            try:
                child.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait(10)
        for pid in descendants:
            _stop_pid(pid)

    def close(self) -> None:
        """Stop every child, devices first."""
        for child in reversed(self.children):
            with contextlib.suppress(ProcessLookupError):
                self.stop(child)
        self.children.clear()

    def __enter__(self) -> LoopbackDeployment:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def wait_for_port(port: int, timeout_s: float, child: Child | None = None) -> None:
    """Wait until 127.0.0.1:``port`` accepts connections.

    Raises
    ------
    RuntimeError
        When the time is up, or ``child`` exited first (its output is included).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child is not None and child.process.poll() is not None:
            raise RuntimeError(
                f"{child.name} exited ({child.process.returncode}):\n{child.output()}"
            )
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:.0f} s")


def _descendants(pid: int) -> list[int]:
    """Process ids of everything ``pid`` started (children first), if psutil is installed."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with ray
        return []
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _stop_pid(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM ``pid``, SIGKILL it if it is still there after ``timeout_s``."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
