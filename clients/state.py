"""Device-local state in Flower's ``context.state`` (kept across rounds by Flower).

The state (stream position and backlog, the trainer's queue of kept
instances, the filter net's weights and optimizer, T_l and the R_TH window)
is stored as one ``ConfigRecord`` under :data:`STATE_KEY`: a blob plus
readable scalars (round, threshold). When a state directory is
given (simulation with checkpoints), the same blob is also written to
``<dir>/device-<id>/r<round>.pt`` so an interrupted run can resume with device state.

The blob travels with every message in simulation (Flower ships the Context
to the Ray worker and back), so it is encoded for speed: a JSON skeleton of
the nested dicts, lists and numbers, followed by the tensors' raw bytes
(:func:`encode`, :func:`decode`; ~0.1 ms for a LeNet device's state, against
~4 ms for ``torch.save`` + weights-only ``torch.load``). Decoding runs no code:
only JSON, and tensors of the dtypes in :data:`DTYPES`.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, RecordDict

STATE_KEY = "fededge.device"

#: Blob header: format name and version.
MAGIC = b"FEDEDGE-STATE-1\n"

#: Tensor dtypes a blob may hold, by name.
DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
    )
}


def encode(state: dict[str, Any]) -> bytes:
    """Serialise a device state (tensors, numpy arrays, numbers, strings, lists, dicts).

    Layout: :data:`MAGIC`, the length of a UTF-8 JSON skeleton (8 bytes,
    little-endian), the skeleton, then the tensors' bytes. In the skeleton a
    dict is ``{"d": [[key, value], ...]}`` (keys may be ints, as in an
    optimizer's state), a list or tuple ``{"l": [...]}`` and a tensor
    ``{"t": [dtype, shape, offset, nbytes]}`` (offsets 8-byte aligned);
    numbers, strings, booleans and None stand for themselves (NaN and
    infinities included).

    Raises
    ------
    TypeError
        For a value of another type.
    """
    chunks: list[bytes] = []
    offset = 0

    def pack(value: Any) -> Any:
        nonlocal offset
        if isinstance(value, dict):
            return {"d": [[k, pack(v)] for k, v in value.items()]}
        if isinstance(value, list | tuple):
            return {"l": [pack(v) for v in value]}
        if isinstance(value, torch.Tensor | np.ndarray):
            tensor = torch.as_tensor(value).detach().cpu().contiguous()
            data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
            dtype = str(tensor.dtype).removeprefix("torch.")
            entry = [dtype, list(tensor.shape), offset, len(data)]
            padding = -len(data) % 8  # every tensor starts 8-byte aligned
            chunks.extend((data, bytes(padding)))
            offset += len(data) + padding
            return {"t": entry}
        if isinstance(value, np.integer | np.floating | np.bool_):
            return value.item()
        if value is None or isinstance(value, bool | int | float | str):
            return value
        raise TypeError(f"device state cannot hold a {type(value).__name__}: {value!r:.60}")

    skeleton = json.dumps(pack(state), separators=(",", ":")).encode()
    return b"".join([MAGIC, len(skeleton).to_bytes(8, "little"), skeleton, *chunks])


def decode(blob: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode`: dicts, lists, numbers and tensors; no code runs.

    Blobs written by ``torch.save`` (fededge before this format) are read with
    weights-only unpickling.

    Raises
    ------
    ValueError
        If a tensor has a dtype outside :data:`DTYPES` or the blob is not a dict.
    """
    if not blob.startswith(MAGIC):
        return dict(torch.load(io.BytesIO(blob), weights_only=True))
    start = len(MAGIC) + 8
    size = int.from_bytes(blob[len(MAGIC) : start], "little")
    skeleton = json.loads(blob[start : start + size])
    data = bytearray(blob[start + size :])  # one writable copy; tensors are views into it

    def unpack(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        if "d" in node:
            return {k: unpack(v) for k, v in node["d"]}
        if "l" in node:
            return [unpack(v) for v in node["l"]]
        dtype_name, shape, offset, nbytes = node["t"]
        dtype = DTYPES.get(dtype_name)
        if dtype is None:
            raise ValueError(
                f"device state holds a tensor of dtype {dtype_name!r}; "
                f"expected one of {', '.join(DTYPES)}"
            )
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        raw = torch.frombuffer(data, dtype=torch.uint8, count=nbytes, offset=offset)
        return raw.view(dtype).reshape(shape)

    state = unpack(skeleton)
    if not isinstance(state, dict):
        raise ValueError(f"device state must be a dict, got a {type(state).__name__}")
    return state


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
    tmp = folder / f".tmp{os.getpid()}"
    try:
        tmp.write_bytes(blob)
    except FileNotFoundError:  # the device's first state: make its folder
        folder.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(blob)
    os.replace(tmp, folder / f"r{server_round}.pt")
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
