"""Command lines, environment and connection file of Flower's programs for a deployment.

Pure functions used by ``fededge deploy`` (:mod:`fededge.cli.deploy`) and
tested on their own: the ``flower-superlink`` and ``flower-supernode``
arguments (TLS unless ``--insecure`` is asked for; device authentication only
with TLS), a real device's node config, the SuperLink connection in
``$FLWR_HOME/config.toml`` and the run config of ``flwr run``. No Flower
import: the programs run as separate processes.

``FLWR_HOME``: every command points it into the deployment folder, so the
user's ``~/.flwr`` is left alone; the connection ``fededge`` is written there
(pyproject.toml has no legacy ``[tool.flwr.federations]`` for ``flwr run`` to
move into it).
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from fededge.errors import ConfigError, ConfigIssue

#: Keep Flower and Ray offline and quiet (see TOOLCHAIN.md).
OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}

#: Name of the SuperLink connection written to ``<dir>/flwr/config.toml``.
CONNECTION = "fededge"

#: The connection a command given ``--superlink`` etc. uses (the recorded one stays).
EXPLICIT_CONNECTION = "fededge-explicit"

#: Where the Control and Runtime APIs listen: the server's loopback only.
LOOPBACK = "127.0.0.1"


def superlink_command(
    deploy_dir: Path,
    *,
    host: str,
    port: int,
    insecure: bool,
    auth: bool,
    database: Path | None = None,
    control_port: int | None = None,
) -> list[str]:
    """The ``flower-superlink`` command line for a deployment folder.

    Its ``--host/--port`` is the *operator* address, ``127.0.0.1:control_port``
    (default ``port + 1``): Control and Runtime APIs never listen on the
    network. Devices reach the Fleet API on ``host:port`` through
    :func:`server.superlink.serve`, which runs this configuration. Isolation is
    ``process``: the SuperExec is started separately, with the shared secret of
    :func:`superexec_secret` (``--superexec-auth-secret-file``).

    ``database``: an SQLite file for the SuperLink's state (registered
    devices survive a restart), else state in memory -- much faster: a file
    database commits every message to disk and doubled round times on loopback.

    Raises
    ------
    ConfigError
        TLS files missing (and not ``insecure``), ``auth`` with ``insecure``,
        a control port equal to the device port.
    """
    certs = deploy_dir / "certs"
    control = port + 1 if control_port is None else control_port
    issues = []
    if insecure and auth:
        issues.append(ConfigIssue("--auth", "device authentication needs TLS; drop --insecure"))
    if control == port:
        issues.append(
            ConfigIssue("--control-port", f"must differ from --port ({port}): got {control}")
        )
    if not insecure:
        missing = [p for p in ("ca.crt", "server.pem", "server.key") if not (certs / p).exists()]
        if missing:
            issues.append(
                ConfigIssue(
                    str(certs),
                    f"no {', '.join(missing)}: run `fededge deploy certs --dir {deploy_dir}` "
                    "(with --host NAME for every name devices use), or pass --insecure",
                )
            )
    if issues:
        raise ConfigError(issues)
    cmd = [
        program("flower-superlink"),
        "--host",
        LOOPBACK,
        "--port",
        str(control),
        "--isolation",
        "process",
        "--superexec-auth-secret-file",
        str(superexec_secret_path(deploy_dir).resolve()),
        "--disable-runtime-dependency-installation",
    ]
    if database is not None:
        cmd += ["--database", str(database.resolve())]
    if insecure:
        cmd.append("--insecure")
    else:
        cmd += [
            "--ssl-ca-certfile",
            str((certs / "ca.crt").resolve()),
            "--ssl-certfile",
            str((certs / "server.pem").resolve()),
            "--ssl-keyfile",
            str((certs / "server.key").resolve()),
        ]
    if auth:
        cmd.append("--enable-supernode-auth")
    return cmd


def superexec_command(deploy_dir: Path, *, control_port: int, insecure: bool) -> list[str]:
    """``flower-superexec`` for the SuperLink's ServerApps, with the shared secret.

    It connects to the Runtime API on the loopback; :func:`server.superlink.serve`
    adds ``--parent-pid``.
    """
    cmd = [program("flower-superexec"), "--runtime-api-address", f"{LOOPBACK}:{control_port}"]
    if insecure:
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str((deploy_dir / "certs" / "ca.crt").resolve())]
    cmd += ["--superexec-auth-secret-file", str(superexec_secret_path(deploy_dir).resolve())]
    return cmd


def superexec_secret_path(deploy_dir: Path) -> Path:
    """Where the SuperExec shared secret of a deployment folder is kept."""
    return deploy_dir / "flwr" / "superexec.secret"


def superexec_secret(deploy_dir: Path) -> Path:
    """The SuperExec shared secret file (32 random bytes, mode 0600), made if missing."""
    path = superexec_secret_path(deploy_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.stat().st_size == 0:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
    path.chmod(0o600)
    return path


def write_connection(
    deploy_dir: Path, address: str, root_certificates: Path | None, *, name: str = CONNECTION
) -> Path:
    """Write the SuperLink connection ``name`` to ``<dir>/flwr/config.toml`` (kept others).

    ``name`` :data:`CONNECTION` also becomes the default connection.
    """
    home = deploy_dir / "flwr"
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    config: dict[str, Any] = tomllib.loads(path.read_text()) if path.exists() else {}
    superlink = config.setdefault("superlink", {})
    superlink.setdefault("default", CONNECTION)
    entry: dict[str, Any] = {"address": address}
    if root_certificates is None:
        entry["insecure"] = True
    else:
        entry["root-certificates"] = str(root_certificates.resolve())
    superlink[name] = entry
    path.write_text(tomli_w.dumps(config))
    return path


def node_config_values(
    *,
    device_id: int,
    simulated: bool = False,
    profile: str | None = None,
    tier: str | None = None,
    data_dir: str | None = None,
    data: str = "partition",
    threads: int | None = None,
    state_dir: str | None = None,
) -> dict[str, int | str]:
    """The node config of a device (see :mod:`fededge.deploy.node_config`); paths made absolute.

    ``simulated``: the node stands in for a simulated device (``partition-id``).
    """
    values: dict[str, int | str] = {"partition-id" if simulated else "device-id": device_id}
    if profile is not None:
        profile_path = Path(profile).expanduser()
        values["device-profile"] = str(profile_path.resolve()) if profile_path.exists() else profile
    if tier is not None:
        values["tier"] = tier
    if data_dir is not None:
        values["data-dir"] = str(Path(data_dir).expanduser().resolve())
    if data != "partition":
        values["data"] = data
    if threads is not None:
        values["threads"] = threads
    if state_dir is not None:
        values["state-dir"] = str(Path(state_dir).expanduser().resolve())
    return values


def node_config_text(values: dict[str, int | str]) -> str:
    """``values`` as a ``flower-supernode --node-config`` string (``key=1 key="text"``)."""
    return " ".join(
        f"{k}={v}" if isinstance(v, int) else f"{k}={_quoted(v)}" for k, v in values.items()
    )


def supernode_args(
    *,
    superlink: str,
    node_config: str,
    port: int,
    isolation: str,
    root_certificates: Path | None,
    auth_key: Path | None,
    insecure: bool,
) -> list[str]:
    """``flower-supernode`` arguments (without the program name).

    Raises
    ------
    ConfigError
        Neither TLS nor ``insecure``; ``auth_key`` with ``insecure``; missing files.
    """
    issues = []
    if insecure and auth_key is not None:
        issues.append(ConfigIssue("--auth-key", "authentication needs TLS; drop --insecure"))
    if not insecure and root_certificates is None:
        issues.append(
            ConfigIssue(
                "--root-certificates",
                "the SuperLink's CA (ca.crt from `fededge deploy certs`) is needed for TLS; "
                "or pass --insecure",
            )
        )
    for option, path in (("--root-certificates", root_certificates), ("--auth-key", auth_key)):
        if path is not None and not path.exists():
            issues.append(ConfigIssue(option, f"{path} not found"))
    if issues:
        raise ConfigError(issues)
    args = ["--superlink", superlink, "--node-config", node_config, "--port", str(port)]
    args += ["--isolation", isolation, "--max-retries", "30", "--max-wait-time", "300"]
    if insecure:
        args.append("--insecure")
    else:
        assert root_certificates is not None
        args += ["--root-certificates", str(root_certificates.resolve())]
    if auth_key is not None:
        args += ["--auth-supernode-private-key", str(auth_key.resolve())]
    return args


#: ``[tool.flwr.app]`` of the Flower app (the same as in the source checkout's pyproject.toml).
FLOWER_APP: dict[str, Any] = {
    "publisher": "fededge",
    "fab-include": ["fededge/**/*.py", "clients/*.py", "server/*.py", "scenarios/*.toml"],
    "components": {"serverapp": "server.app:app", "clientapp": "clients.app:app"},
    "config": {
        "scenario": "scenarios/quickstart.toml",
        "scenario-text": "",
        "overrides": "",
        "output-dir": "",
        "device-wait-s": 600.0,
        "run-token": "",
    },
}

#: The packages a Flower app bundle of fededge holds.
APP_PACKAGES = ("fededge", "clients", "server")


def app_dir(deploy_dir: Path) -> Path:
    """The Flower app folder ``flwr run`` bundles and sends to the SuperLink.

    In a source checkout, the project's root (its pyproject.toml has
    ``[tool.flwr.app]``). In an installed fededge (``pip install .``), an app
    folder assembled in ``<deploy_dir>/flwr/app``: the installed packages'
    Python files and a pyproject.toml with :data:`FLOWER_APP`, so the ServerApp
    and the devices run exactly the code of this installation.
    """
    root = Path(__file__).resolve().parents[2]  # fededge/<package>/<module>.py
    pyproject = root / "pyproject.toml"
    if pyproject.exists() and "[tool.flwr.app]" in pyproject.read_text():
        return root
    return assemble_app(deploy_dir / "flwr" / "app")


def assemble_app(folder: Path) -> Path:
    """Write the Flower app of the installed fededge into ``folder`` (replacing it)."""
    import importlib
    import importlib.metadata

    if folder.exists():
        shutil.rmtree(folder)
    for name in APP_PACKAGES:
        source = Path(importlib.import_module(name).__file__ or "").resolve().parent
        for path in sorted(source.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            target = folder / name / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    try:
        version = importlib.metadata.version("fededge")
    except importlib.metadata.PackageNotFoundError:
        version = "0.0.0"
    project = {
        "name": "fededge",
        "version": version,
        "description": "fededge's ServerApp and ClientApp (assembled from the installed package)",
        "license": "Apache-2.0",
        "dependencies": [],
    }
    # no scenario files in an installation: `deploy run` sends the scenario's text
    include = [p for p in FLOWER_APP["fab-include"] if not p.startswith("scenarios/")]
    app = {**FLOWER_APP, "fab-include": include}
    text = tomli_w.dumps({"project": project, "tool": {"flwr": {"app": app}}})
    (folder / "pyproject.toml").write_text(text)
    return folder


def run_config(
    scenario_path: str,
    scenario_text: str,
    out_dir: Path,
    device_wait_s: float,
    run_token: str = "",
) -> dict[str, object]:
    """The run config ``flwr run`` hands the ServerApp (see ``server.deployment.RunSettings``)."""
    return {
        "scenario": scenario_path,
        "scenario-text": scenario_text,
        "overrides": "",  # already applied to the text
        "output-dir": str(out_dir.resolve()),
        "device-wait-s": float(device_wait_s),
        "run-token": run_token,  # the ServerApp writes it into <out>/status.json
    }


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment of this process, offline, with ``FLWR_HOME`` set.

    This Python's script folder goes first on ``PATH``: Flower starts its
    helpers (``flower-superexec``, ``flwr-serverapp``...) by name.
    """
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, **OFFLINE_ENV, "FLWR_HOME": str(flwr_home.resolve()), "PATH": path}


def program(name: str) -> str:
    """A console script of the running environment (beside this Python), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ConfigError(
            [ConfigIssue(name, "not found: install Flower (pip install 'flwr[simulation]')")]
        )
    return found


def _quoted(text: str) -> str:
    """A node-config string value (TOML basic string)."""
    return tomli_w.dumps({"v": text}).split("=", 1)[1].strip()
