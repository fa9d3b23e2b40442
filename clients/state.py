"""Device-local state in Flower's ``context.state`` (kept across rounds by Flower).

The state (stream position and backlog, the trainer's queue of kept
instances, the filter net's weights and optimizer, T_l and the R_TH window)
is stored as one ``ConfigRecord`` under :data:`STATE_KEY`: a ``torch.save``
blob plus readable scalars (round, threshold). When a state directory is
given (simulation with checkpoints), the same blob is also written to
``<dir>/device-<id>.pt`` so an interrupted run can resume with device state.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from flwr.app import ConfigRecord, RecordDict

STATE_KEY = "fededge.device"


def encode(state: dict[str, Any]) -> bytes:
    """Serialise a device state (tensors, numbers, lists, dicts)."""
    buffer = io.BytesIO()
    torch.save(_to_torch(state), buffer)
    return buffer.getvalue()


def decode(blob: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode` (weights-only unpickling: no code runs)."""
    return dict(torch.load(io.BytesIO(blob), weights_only=True))


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

    One file per round (``device-<id>.r<round>.pt``); all but the newest two
    of a device are removed. A run interrupted during round r may have written
    some round-r files; resuming reads the newest file *before* r.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"device-{device_id}.r{server_round}.pt"
    tmp = folder / f".device-{device_id}.tmp{os.getpid()}"
    tmp.write_bytes(blob)
    os.replace(tmp, path)
    for old in _rounds_on_disk(folder, device_id)[:-2]:
        (folder / f"device-{device_id}.r{old}.pt").unlink(missing_ok=True)


def read_file(
    directory: str, device_id: int, before_round: int
) -> tuple[dict[str, Any] | None, int]:
    """The newest state a device wrote before ``before_round`` and its round, or ``(None, 0)``."""
    folder = Path(directory)
    rounds = [r for r in _rounds_on_disk(folder, device_id) if r < before_round]
    if not rounds:
        return None, 0
    blob = (folder / f"device-{device_id}.r{rounds[-1]}.pt").read_bytes()
    return decode(blob), rounds[-1]


def _rounds_on_disk(folder: Path, device_id: int) -> list[int]:
    prefix = f"device-{device_id}.r"
    found = []
    for path in folder.glob(f"{prefix}*.pt"):
        digits = path.name[len(prefix) : -len(".pt")]
        if digits.isdigit():
            found.append(int(digits))
    return sorted(found)


def _to_torch(value: Any) -> Any:
    """Numpy arrays become tensors and deques lists, so weights-only loading accepts them."""
    import numpy as np

    if isinstance(value, dict):
        return {k: _to_torch(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_torch(v) for v in value]
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value
