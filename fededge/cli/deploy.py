"""``fededge deploy ...``: real devices on Flower's deployment engine.

Registered by :mod:`fededge.cli.main`. A deployment folder (``--dir``, default
``runs/deploy``) keeps what the commands share::

    certs/       ca.crt (give to devices), ca.key, server.pem, server.key
    keys/        device-N, device-N.pub (ECDSA P-384; the private key goes to device N)
    flwr/        FLWR_HOME of the SuperLink side: config.toml (connection "fededge"),
                 installed apps, run configs
    devices/N/   FLWR_HOME of a device started from this folder

Subcommands of ``fededge deploy``:

* ``certs``     -- a CA, a SuperLink certificate and device keys (:mod:`fededge.deploy.security`);
* ``key``       -- one device key pair (run it on the device; register the ``.pub``);
* ``superlink`` -- start ``flower-superlink`` (TLS by default, ``--auth`` for
  device authentication) and record the connection for ``flwr``;
* ``register``  -- ``flwr supernode register`` a device's public key;
* ``device``    -- start a device: a SuperNode whose ClientApp runs in a warm,
  long-lived worker (:mod:`clients.device`), with its profile, tier and data
  in the node config (:mod:`fededge.deploy.node_config`);
* ``run``       -- ``flwr run`` a scenario against the SuperLink.

This module holds the options; what each subcommand does is in
:mod:`fededge.cli.deploy_commands`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fededge.cli.common import add_set_flag
from fededge.cli.deploy_commands import (
    cmd_certs,
    cmd_device,
    cmd_key,
    cmd_register,
    cmd_run,
    cmd_superlink,
)

DEFAULT_DIR = Path("runs/deploy")
DEFAULT_PORT = 8000


# --------------------------------------------------------------------------- deploy
def add_deploy(sub: Any) -> None:
    """Register ``fededge deploy`` and its subcommands."""
    p = sub.add_parser(
        "deploy",
        help="real devices: certificates, SuperLink, devices, runs (Flower deployment engine)",
        description="Run a scenario on real devices with Flower's deployment engine: "
        "`certs` once, `superlink` on the server, `register` each device's key, "
        "`device` on each device, then `run` the scenario.",
    )
    deploy = p.add_subparsers(dest="deploy_command", metavar="STEP", required=True)

    c = deploy.add_parser("certs", help="make a CA, the SuperLink's certificate and device keys")
    _dir_option(c)
    c.add_argument(
        "--host",
        action="append",
        default=[],
        help="a name or IP address devices use to reach the SuperLink (repeatable; "
        "localhost and 127.0.0.1 are always included)",
    )
    c.add_argument("--devices", type=int, default=0, help="also make N device key pairs")
    c.add_argument("--days", type=int, default=365, help="certificate validity")
    c.add_argument("--overwrite", action="store_true", help="replace existing files")
    c.set_defaults(handler=cmd_certs)

    k = deploy.add_parser("key", help="make one device key pair (ECDSA P-384, OpenSSH format)")
    k.add_argument("path", type=Path, help="private key file; the public key gets .pub added")
    k.add_argument("--overwrite", action="store_true", help="replace an existing key pair")
    k.set_defaults(handler=cmd_key)

    s = deploy.add_parser("superlink", help="start the SuperLink (runs until Ctrl-C)")
    _dir_option(s)
    s.add_argument(
        "--host",
        default="0.0.0.0",
        help="address devices connect to (default: all interfaces); only the Fleet API "
        "is served there",
    )
    s.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="the devices' port (Fleet API only)"
    )
    s.add_argument(
        "--control-port",
        type=int,
        default=None,
        help="port of the Control and Runtime APIs (`deploy register`, `deploy run`), on "
        "127.0.0.1 only (default: --port + 1)",
    )
    s.add_argument(
        "--auth",
        action="store_true",
        help="accept only registered devices (`fededge deploy register`); needs TLS",
    )
    s.add_argument(
        "--database",
        type=Path,
        default=None,
        help="keep the SuperLink's state (e.g. registered devices) in this SQLite file "
        "across restarts; slower rounds (default: in memory, register devices after a restart)",
    )
    s.add_argument("--insecure", action="store_true", help="no TLS (prints a warning)")
    s.set_defaults(handler=cmd_superlink)

    r = deploy.add_parser("register", help="register a device's public key with the SuperLink")
    _dir_option(r)
    r.add_argument("public_key", type=Path, help="the device's .pub file")
    r.add_argument("--name", default=None, help="a name for the device")
    _connection_options(r)
    r.set_defaults(handler=cmd_register)

    d = deploy.add_parser("device", help="start a real device (runs until Ctrl-C)")
    _dir_option(d)
    d.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the SuperLink")
    d.add_argument("--device-id", type=int, required=True, help="the device's slot in the fleet")
    d.add_argument(
        "--profile",
        default=None,
        help="catalog name (rpi4, laptop, ...) or a profile file from `fededge calibrate` "
        "(default: its tier's profile)",
    )
    d.add_argument("--tier", default=None, help="tier whose budget applies (default: by slot)")
    d.add_argument(
        "--simulated",
        action="store_true",
        help="stand in for a simulated device of the fleet (reported as kind 'simulated')",
    )
    d.add_argument("--data-dir", default=None, help="where the device's dataset files are")
    d.add_argument(
        "--data",
        choices=["partition", "local"],
        default="partition",
        help="its share of the dataset (default) or all of --data-dir's training split",
    )
    d.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    d.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where this device keeps its state across rounds and restarts, on its own disk "
        "(default: DIR/devices/ID/state)",
    )
    d.add_argument("--root-certificates", type=Path, default=None, help="the CA (ca.crt)")
    d.add_argument("--auth-key", type=Path, default=None, help="the device's private key")
    d.add_argument("--insecure", action="store_true", help="no TLS (prints a warning)")
    d.add_argument("--port", type=int, default=9094, help="the SuperNode's local Runtime API port")
    d.add_argument(
        "--isolation",
        choices=["worker", "subprocess"],
        default="worker",
        help="worker: one warm process serves every round (default); subprocess: Flower's "
        "stock fresh process per message",
    )
    d.add_argument(
        "--poll",
        type=float,
        default=None,
        metavar="SECONDS",
        help="cap on the SuperNode's waits between polls of the SuperLink (default: Flower's "
        "3 s); 0.2 cuts up to 3 s per round, at the cost of more requests to the SuperLink",
    )
    d.add_argument(
        "--client-app",
        default=None,
        metavar="MODULE:ATTR",
        help="serve this ClientApp instead of fededge's (e.g. a stock Flower client, to try "
        "server.foreign_devices; the module is imported from the working folder); "
        "needs --isolation worker",
    )
    d.set_defaults(handler=cmd_device)

    u = deploy.add_parser("run", help="run a scenario on the deployment (`flwr run`)")
    _dir_option(u)
    u.add_argument("scenario", help="scenario TOML file")
    add_set_flag(u, "override a scenario field (repeatable)")
    u.add_argument("--out", type=Path, default=None, help="report folder (on the SuperLink)")
    u.add_argument(
        "--wait",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long the server waits for the fleet's devices before starting with those "
        "connected (default: 600)",
    )
    _connection_options(u)
    u.set_defaults(handler=cmd_run)


def _dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help=f"deployment folder (default: {DEFAULT_DIR})"
    )


def _connection_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--superlink",
        default=None,
        metavar="HOST:PORT",
        help="the SuperLink (default: the one `deploy superlink` recorded in --dir)",
    )
    p.add_argument("--root-certificates", type=Path, default=None, help="the CA (ca.crt)")
    p.add_argument("--insecure", action="store_true", help="no TLS (prints a warning)")
