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
    """Atomically write a device's state blob for ``server_round``."""
    path = Path(directory) / f"device-{device_id}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(server_round.to_bytes(8, "little") + blob)
    os.replace(tmp, path)


def read_file(directory: str, device_id: int) -> tuple[dict[str, Any] | None, int]:
    """The state blob last written for a device and its round, or ``(None, 0)``."""
    path = Path(directory) / f"device-{device_id}.pt"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, 0
    return decode(raw[8:]), int.from_bytes(raw[:8], "little")


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
