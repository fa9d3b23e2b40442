"""The run's checkpoint: one manifest that says what a resume needs and proves it belongs here.

After every round the server writes, in this order:

1. the round's tables (:class:`fededge.reports.fleet_report.FleetReport`): rows appended to
   ``rounds.csv`` and ``devices.csv``, the small tables rewritten atomically;
2. ``checkpoint/global-r<round>.npz`` -- the global weights (a new file per round);
3. ``checkpoint/state.json`` -- the **manifest**, atomically (write, then rename): the
   round, the scenario digest, the run id (fixed when the run started), the weights
   file and its SHA-256, each appended table's length in bytes and the SHA-256 of
   those bytes, and, per device, the round of the newest state it saved.

Only then are older weight files removed. A run interrupted anywhere leaves a
manifest that describes files which all exist: the one of the round before. Resume
(:func:`verify_checkpoint`) checks every file the manifest names -- the weights
against their digest, each table's first ``bytes`` against theirs (rows appended
after the manifest, even a partial line, are cut off by :meth:`FleetReport.load`),
each device's state file of its round (it must be there and decode) -- and
refuses with :class:`~fededge.errors.ConfigError` (exit 2), naming the file and
the fix, instead of a traceback or a silent restart.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from flwr.app import Array, ArrayRecord

from fededge.config.scenario import Scenario
from fededge.errors import ConfigError, ConfigIssue
from fededge.files import atomic_write, atomic_write_text
from fededge.reports.fleet_report import FleetReport
from fededge.reports.tables import prefix_sha256
from fededge.wire import array_numpy, decode

FOLDER = "checkpoint"
MANIFEST = "state.json"
#: The tables a resume continues (append-only; floats written to round-trip exactly).
TABLES = ("rounds.csv", "devices.csv")
#: Manifest format (3: tables by length and prefix digest).
VERSION = 3


class Checkpoint(NamedTuple):
    """What a resume starts from (:func:`load_checkpoint`)."""

    round: int
    run_id: str
    arrays: ArrayRecord
    #: device -> round of its newest saved state
    device_rounds: dict[str, int]
    #: table file -> {"bytes", "sha256"} (:meth:`FleetReport.load`)
    tables: dict[str, dict[str, Any]]


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def new_run_id() -> str:
    """An id for a new run (kept across resumes)."""
    return uuid.uuid4().hex[:16]


def save_checkpoint(
    out_dir: Path,
    scenario: Scenario,
    server_round: int,
    arrays: ArrayRecord,
    report: FleetReport,
    *,
    run_id: str,
    state_dir: str,
    device_rounds: dict[str, int],
) -> None:
    """Write the round's weights, then the manifest (see the module docstring).

    ``device_rounds`` (device -> round of its newest state) is the previous
    manifest's, updated here with this round's rows of ``report``, so a round
    costs its own rows, not the whole run's.
    """
    folder = out_dir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    name = f"global-r{server_round}.npz"
    weights = {k: array_numpy(v) for k, v in arrays.items()}
    atomic_write(folder / name, lambda fh: np.savez(fh, allow_pickle=False, **weights))
    if state_dir:  # this round's trained devices saved state: the newest round of each
        for row in reversed(report.devices):
            if row["round"] != server_round:
                break
            if row["status"] == "ok" and row.get("kind") == "simulated":
                device_rounds[str(int(row["device"]))] = server_round
    manifest: dict[str, Any] = {
        "version": VERSION,
        "round": server_round,
        "digest": scenario.digest,
        "name": scenario.run.name,
        "run_id": run_id,
        "global": {"file": name, "sha256": sha256(folder / name)},
        "tables": report.table_marks(),
        "device_state": {"dir": "device_state" if state_dir else "", "rounds": device_rounds},
    }
    atomic_write_text(folder / MANIFEST, json.dumps(manifest) + "\n")
    for old in folder.glob("global-r*.npz"):
        if old.name != name:
            old.unlink(missing_ok=True)


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    """The manifest, or None when there is none. Raises ConfigError when unreadable."""
    path = out_dir / FOLDER / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        int(manifest["round"]), str(manifest["digest"]), str(manifest["global"]["file"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            [_refuse(path, f"is unreadable or incomplete ({exc})", out_dir)]
        ) from None
    if not isinstance(manifest, dict):
        raise ConfigError([_refuse(path, "is not a checkpoint manifest", out_dir)])
    return manifest


def verify_checkpoint(out_dir: Path, digest: str) -> dict[str, Any]:
    """Check everything a resume of ``out_dir`` needs; returns the manifest.

    Raises
    ------
    ConfigError
        Listing every missing, corrupt or foreign file, each with the fix.
    """
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise ConfigError([ConfigIssue("--resume", f"no checkpoint in {out_dir} to resume from")])
    if manifest.get("digest") != digest:
        raise ConfigError(
            [
                ConfigIssue(
                    "--resume",
                    f"{out_dir} holds a run of a different scenario (digest "
                    f"{manifest.get('digest')}, this one {digest}); resume with the same "
                    "scenario and --set overrides",
                )
            ]
        )
    issues: list[ConfigIssue] = []
    if manifest.get("version") != VERSION:
        issues.append(
            _refuse(out_dir / FOLDER / MANIFEST, "was written by an older fededge", out_dir)
        )
        raise ConfigError(issues)
    weights = out_dir / FOLDER / manifest["global"]["file"]
    issues += _check_digest(weights, manifest["global"]["sha256"], out_dir)
    for table in TABLES:
        mark = manifest["tables"].get(table)
        path = out_dir / table
        if mark is None:
            issues.append(_refuse(path, "is not in the checkpoint", out_dir))
        elif not path.exists():
            issues.append(_refuse(path, "is missing", out_dir))
        elif prefix_sha256(path, int(mark["bytes"])) != mark["sha256"]:
            issues.append(
                _refuse(path, "does not match the checkpoint (changed or truncated)", out_dir)
            )
    states = manifest["device_state"]
    if states["dir"]:
        folder = out_dir / states["dir"]
        for device, last in sorted(states["rounds"].items(), key=lambda kv: int(kv[0])):
            path = folder / f"device-{device}" / f"r{last}.pt"
            try:
                decode(path.read_bytes())
            except FileNotFoundError:
                issues.append(_refuse(path, f"is missing (device {device}'s state)", out_dir))
            except Exception as exc:  # any decoding error: the file is not a state
                issues.append(_refuse(path, f"is corrupt ({type(exc).__name__})", out_dir))
            if len(issues) >= 10:
                break
    if issues:
        raise ConfigError(issues)
    return manifest


def load_checkpoint(out_dir: Path, digest: str) -> Checkpoint:
    """What a verified checkpoint holds.

    The round, run id, global weights, device state rounds and table marks.
    """
    manifest = verify_checkpoint(out_dir, digest)
    path = out_dir / FOLDER / manifest["global"]["file"]
    with np.load(path) as data:
        arrays = ArrayRecord({k: Array(np.array(data[k])) for k in data.files})
    rounds = {str(k): int(v) for k, v in manifest["device_state"]["rounds"].items()}
    tables = {str(k): dict(v) for k, v in manifest["tables"].items()}
    return Checkpoint(int(manifest["round"]), str(manifest["run_id"]), arrays, rounds, tables)


def _check_digest(path: Path, expected: str, out_dir: Path) -> list[ConfigIssue]:
    if not path.exists():
        return [_refuse(path, "is missing", out_dir)]
    if sha256(path) != expected:
        return [_refuse(path, "does not match the checkpoint (changed or truncated)", out_dir)]
    return []


def _refuse(path: Path, what: str, out_dir: Path) -> ConfigIssue:
    return ConfigIssue(
        "--resume",
        f"{path} {what}: this run cannot be resumed as it is; restore the file, or start "
        f"over with a new --out (or delete {out_dir})",
    )
