"""What ``fededge deploy``'s subcommands do (their options: :mod:`fededge.cli.deploy`).

Flower and the ``clients``/``server`` packages are imported inside the command
functions only; ``flwr``/``flower-*`` programs run as subprocesses (or replace
this process, so that a process id stays the same when it is stopped). Their
command lines are built by :mod:`fededge.deploy.flower_commands`.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from fededge.deploy.flower_commands import (
    CONNECTION,
    EXPLICIT_CONNECTION,
    LOOPBACK,
    app_dir,
    flower_env,
    node_config_text,
    node_config_values,
    program,
    run_config,
    superexec_command,
    superexec_secret,
    superlink_command,
    supernode_args,
    write_connection,
)
from fededge.errors import ConfigError, ConfigIssue

INSECURE_WARNING = (
    "WARNING: --insecure: traffic between devices and the SuperLink is NOT encrypted and "
    "devices are NOT authenticated. Use it only on loopback or a network you trust; "
    "`fededge deploy certs` makes what TLS needs."
)


# ------------------------------------------------------------------ certs and keys
def cmd_certs(args: argparse.Namespace) -> int:
    """``fededge deploy certs``: CA + server certificate (+ device keys)."""
    from fededge.deploy.security import make_certificates, make_device_key

    if args.devices < 0:
        raise ConfigError([ConfigIssue("--devices", f"must be >= 0, got {args.devices}")])
    files = make_certificates(
        args.dir / "certs", tuple(args.host), days=args.days, overwrite=args.overwrite
    )
    print(f"CA            {files.ca_cert}   (copy to every device: --root-certificates)")
    print(f"server cert   {files.server_cert}  for {', '.join(files.hosts)}")
    print(f"private keys  {files.ca_key}, {files.server_key}  (keep on the SuperLink's machine)")
    for i in range(args.devices):
        pub = make_device_key(
            args.dir / "keys" / f"device-{i}",
            comment=f"fededge device {i}",
            overwrite=args.overwrite,
        )
        print(f"device {i:<6} {pub.with_suffix('')} (to the device), {pub} (register)")
    return 0


def cmd_key(args: argparse.Namespace) -> int:
    """``fededge deploy key``: one device key pair."""
    from fededge.deploy.security import make_device_key

    pub = make_device_key(args.path, overwrite=args.overwrite)
    print(f"private key {args.path} (stays here: fededge deploy device --auth-key {args.path})")
    print(f"public key  {pub} (register it: fededge deploy register {pub.name})")
    return 0


# ------------------------------------------------------------------ superlink
def cmd_superlink(args: argparse.Namespace) -> int:
    """``fededge deploy superlink``: Fleet API on ``--host:--port``, the rest on the loopback."""
    from server.superlink import serve

    control_port = args.port + 1 if args.control_port is None else args.control_port
    cmd = superlink_command(
        args.dir,
        host=args.host,
        port=args.port,
        insecure=args.insecure,
        auth=args.auth,
        database=args.database,
        control_port=control_port,
    )
    superexec_secret(args.dir)
    ca = None if args.insecure else args.dir / "certs" / "ca.crt"
    config = write_connection(args.dir, f"{LOOPBACK}:{control_port}", ca)
    if args.insecure:
        print(INSECURE_WARNING, file=sys.stderr)
    print(f"SuperLink: devices (Fleet API only) on {args.host}:{args.port}", flush=True)
    print(
        f"  operator (Control and Runtime APIs) on {LOOPBACK}:{control_port}, this machine only; "
        f"connection '{CONNECTION}' in {config}",
        flush=True,
    )
    print(f"  {shlex.join(cmd)}", flush=True)
    # the SuperExec polls for ServerApp tasks every 1 s by default; 0.1 s starts a run sooner
    env = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1", **flower_env(args.dir / "flwr")}
    os.environ.update(env)
    return serve(
        cmd[1:],
        public_host=args.host,
        public_port=args.port,
        superexec_command=superexec_command(
            args.dir, control_port=control_port, insecure=args.insecure
        ),
        env=env,
    )


def _connection(args: argparse.Namespace) -> str:
    """The ``flwr`` connection a command uses; returns its name.

    Without options: the one ``deploy superlink`` recorded (the operator
    address on the loopback). ``--superlink/--root-certificates/--insecure``
    write a connection of their own (:data:`EXPLICIT_CONNECTION`), so the
    recorded one is never replaced by a one-off address.
    """
    path = args.dir / "flwr" / "config.toml"
    recorded: dict[str, Any] = {}
    if path.exists():
        recorded = tomllib.loads(path.read_text()).get("superlink", {}).get(CONNECTION, {})
    explicit = bool(args.superlink or args.root_certificates or args.insecure)
    address = args.superlink or recorded.get("address")
    if address is None:
        raise ConfigError(
            [
                ConfigIssue(
                    "--superlink",
                    f"no SuperLink recorded in {path}: pass --superlink HOST:PORT "
                    "(or start it with `fededge deploy superlink --dir ...`)",
                )
            ]
        )
    if not explicit:
        return CONNECTION
    ca: Path | None
    if args.insecure:
        print(INSECURE_WARNING, file=sys.stderr)
        ca = None
    elif args.root_certificates is not None:
        ca = args.root_certificates
    elif args.superlink is None and recorded:
        ca = Path(recorded["root-certificates"]) if "root-certificates" in recorded else None
    else:
        ca = args.dir / "certs" / "ca.crt"
    if ca is not None and not ca.exists():
        raise ConfigError(
            [ConfigIssue("--root-certificates", f"{ca} not found (the CA; or pass --insecure)")]
        )
    write_connection(args.dir, address, ca, name=EXPLICIT_CONNECTION)
    return EXPLICIT_CONNECTION


def cmd_register(args: argparse.Namespace) -> int:
    """``fededge deploy register``: ``flwr supernode register`` a device key."""
    if not args.public_key.exists():
        raise ConfigError([ConfigIssue(str(args.public_key), "public key file not found")])
    connection = _connection(args)
    cmd = [program("flwr"), "supernode", "register", str(args.public_key), connection]
    if args.name:
        cmd += ["--name", args.name]
    done = subprocess.run(
        cmd, env=flower_env(args.dir / "flwr"), check=False, capture_output=True, text=True
    )
    output = f"{done.stdout or ''}{done.stderr or ''}"
    if done.returncode == 0:
        print(output.strip())
        return 0
    if "code: 23" in output or "already" in output.lower():
        raise ConfigError(
            [ConfigIssue(str(args.public_key), "is already registered with this SuperLink")]
        )
    if "403" in output:
        raise ConfigError(
            [
                ConfigIssue(
                    "--superlink",
                    "the SuperLink refused (403): register on the server machine, through the "
                    "operator address `fededge deploy superlink` recorded (no --superlink)",
                )
            ]
        )
    print(output.strip(), file=sys.stderr)
    return done.returncode


# ------------------------------------------------------------------ devices
def cmd_device(args: argparse.Namespace) -> int:
    """``fededge deploy device``: a SuperNode with a warm ClientApp worker (or stock)."""
    from fededge.deploy.node_config import parse_node_config

    values = node_config_values(
        device_id=args.device_id,
        simulated=args.simulated,
        profile=args.profile,
        tier=args.tier,
        data_dir=args.data_dir,
        data=args.data,
        threads=args.threads,
        state_dir=None
        if args.simulated
        else str(args.state_dir or args.dir / "devices" / str(args.device_id) / "state"),
    )
    setup = parse_node_config(values)  # a bad profile or option fails here, not in a round
    ca = args.root_certificates
    if ca is None and not args.insecure and (args.dir / "certs" / "ca.crt").exists():
        ca = args.dir / "certs" / "ca.crt"
    worker = args.isolation == "worker"
    sn_args = supernode_args(
        superlink=args.superlink,
        node_config=node_config_text(values),
        port=args.port,
        isolation="process" if worker else "subprocess",
        root_certificates=ca,
        auth_key=args.auth_key,
        insecure=args.insecure,
    )
    if args.poll is not None and not args.poll > 0:
        raise ConfigError([ConfigIssue("--poll", f"must be > 0 seconds, got {args.poll}")])
    if args.insecure:
        print(INSECURE_WARNING, file=sys.stderr)
    profile = setup.profile.name if setup.profile else "its tier's"
    print(
        f"device {setup.device_id} ({profile} profile, {setup.data} data) -> {args.superlink} "
        f"[{'warm worker' if worker else 'stock subprocess'}]",
        flush=True,
    )
    os.environ.update(flower_env(args.dir / "devices" / str(args.device_id) / "flwr"))
    if not worker and args.poll is not None:
        # Flower's app runner (SuperExec) polls the SuperNode every 1 s by default
        os.environ["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(max(args.poll, 0.01))
    from clients.device import load_client_app, run_device

    if args.client_app and not worker:
        raise ConfigError([ConfigIssue("--client-app", "needs --isolation worker")])
    client_app = load_client_app(args.client_app, "--client-app") if args.client_app else None

    run_device(
        sn_args,
        runtime_port=args.port,
        worker=worker,
        supernode_poll_s=args.poll,
        client_app=client_app,
    )
    return 0


# ------------------------------------------------------------------ runs
def cmd_run(args: argparse.Namespace) -> int:
    """``fededge deploy run``: validate the scenario here, then ``flwr run`` it."""
    from fededge.config.scenario import load_scenario
    from fededge.deploy.node_config import portable_scenario_text

    if not args.wait >= 0:
        raise ConfigError([ConfigIssue("--wait", f"must be >= 0 seconds, got {args.wait}")])
    scenario = load_scenario(args.scenario, args.overrides)
    out_dir: Path = args.out or scenario.output_dir()
    app = app_dir(args.dir)
    connection = _connection(args)
    config_file = args.dir / "flwr" / f"run-{scenario.run.name}.toml"
    token = secrets.token_hex(8)
    config = run_config(
        str(Path(args.scenario).resolve()),
        portable_scenario_text(scenario),
        out_dir,
        args.wait,
        run_token=token,
    )
    config_file.write_text(tomli_w.dumps(config))
    print(
        f"{scenario.run.name}: {scenario.num_devices} devices, {scenario.run.rounds} rounds "
        f"on the deployment -> {out_dir}",
        flush=True,
    )
    cmd = [
        program("flwr"),
        "run",
        str(app),
        connection,
        "--run-config",
        str(config_file.resolve()),
        "--stream",
    ]
    code = subprocess.run(cmd, env=flower_env(args.dir / "flwr"), check=False).returncode
    if code != 0:
        return code
    return _run_outcome(out_dir, token)


def _run_outcome(out_dir: Path, token: str) -> int:
    """0 when the ServerApp wrote this run's status as completed, else 1 (with the reason).

    ``flwr run --stream`` exits 0 even when the ServerApp raised; the
    ServerApp's ``status.json`` (with the token this command gave it) says how it ended.
    """
    import json

    path = out_dir / "status.json"
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        status = {}
    if status.get("token") != token:
        print(
            f"error: the run left no status in {path}: the ServerApp did not finish "
            "(see its output above)",
            file=sys.stderr,
        )
        return 1
    if status.get("status") != "completed":
        print(f"error: the run failed: {status.get('reason', '?')}", file=sys.stderr)
        return 1
    return 0
