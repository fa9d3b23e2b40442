"""Device-local state in Flower's ``context.state`` (kept across rounds by Flower).

The state (stream position and backlog, the trainer's queue of kept
instances, the filter net's weights and optimizer, T_l and the R_TH window)
is stored as one ``ConfigRecord`` under :data:`STATE_KEY`: a blob plus
readable scalars (round, threshold). When a state directory is
given (simulation with checkpoints), the same blob is also written to
``<dir>/device-<id>/r<round>.pt`` so an interrupted run can resume with device state.

The blob travels with every message in simulation (Flower ships the Context
to the Ray worker and back); its format, shared with the server's checkpoint,
is :func:`fededge.wire.encode`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, RecordDict

from fededge.files import atomic_write_bytes
from fededge.wire import decode, encode

__all__ = ["STATE_KEY", "decode", "encode", "load", "read_file", "save", "write_file"]

STATE_KEY = "fededge.device"

def save(records: RecordDict, state: dict[str, Any], server_round: int, threshold: float) -> bytes:
    """Store ``state`` in ``records`` (a Context's state); returns the blob."""
    blob = encode(state)
    records[STATE_KEY] = ConfigRecord(
        {"blob": blob, "round": server_round, "threshold": float(threshold)}
    )
    return blob


def load(records: RecordDict) -> tuple[dict[str, Any] | None, int]:
    """The state stored by :func:`save` and its round, or ``(None, 0)``."""
    if STATE_KEY not in records:
        return None, 0
    record = records.config_records[STATE_KEY]
    blob, server_round = record["blob"], record["round"]
    assert isinstance(blob, bytes) and isinstance(server_round, int)
    return decode(blob), server_round


def write_file(directory: str, device_id: int, server_round: int, blob: bytes) -> None:
    """Atomically write a device's state after ``server_round``.

    One file per round (``device-<id>/r<round>.pt``: a folder per device, so
    keeping it tidy never lists the states of a whole fleet); all but the
    newest two of a device are removed. A run interrupted during round r may
    have written some round-r files; resuming reads the newest file *before* r.
    """
    folder = Path(directory) / f"device-{device_id}"
    path = folder / f"r{server_round}.pt"
    try:
        atomic_write_bytes(path, blob)
    except FileNotFoundError:  # the device's first state: make its folder
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, blob)
    for old in _rounds_on_disk(folder)[:-2]:
        (folder / f"r{old}.pt").unlink(missing_ok=True)


def read_file(
    directory: str, device_id: int, before_round: int
) -> tuple[dict[str, Any] | None, int]:
    """The newest state a device wrote before ``before_round`` and its round, or ``(None, 0)``."""
    folder = Path(directory) / f"device-{device_id}"
    rounds = [r for r in _rounds_on_disk(folder) if r < before_round]
    if not rounds:
        return None, 0
    path = folder / f"r{rounds[-1]}.pt"
    try:
        return decode(path.read_bytes()), rounds[-1]
    except Exception as exc:  # name the file, whatever the decoder said
        raise ValueError(
            f"device state file {path} is corrupt ({type(exc).__name__}: {exc})"
        ) from exc


def _rounds_on_disk(folder: Path) -> list[int]:
    """Rounds of the state files in a device's folder (none if it does not exist)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    digits = (n[1:-3] for n in names if n.startswith("r") and n.endswith(".pt"))
    return sorted(int(d) for d in digits if d.isdigit())
