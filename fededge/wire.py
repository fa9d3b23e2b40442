"""What crosses the wire between devices and the server, in one place for both sides.

Devices (``clients/``) and the server (``server/``) meet only through Flower
messages; this module is the format of what those messages carry, free of
Flower imports (a Flower ``Array`` is read through the attributes it has):

* **weights** -- :func:`array_numpy` / :func:`record_tensors` read the ``.npy``
  bytes of a Flower ``Array`` without ``np.load``. ``Array.numpy()`` parses the
  header with ``ast.literal_eval`` for every array; in a fleet every reply's
  weights are read on the server and every round's global weights on each
  device, so that parse is a cost per device-round (LeNet-5's ten arrays:
  0.31 ms against 0.06 ms here). Anything not recognised (another serialisation
  type, Fortran order, a size that does not match the shape) goes to
  ``Array.numpy()``, which then raises or reads it exactly as Flower does. No
  pickle is ever loaded.
* **device state** -- :func:`encode` / :func:`decode`: the blob a device keeps
  across rounds (stream position and backlog, the trainer's queue, the filter
  net and its optimizer, T_l, the R_TH window), also what the server's
  checkpoint holds per device. A JSON skeleton of the nested dicts, lists and
  numbers, followed by the tensors' raw bytes (~0.1 ms for a LeNet device's
  state, against ~4 ms for ``torch.save`` + weights-only ``torch.load``).
  Decoding runs no code: only JSON, and tensors of the dtypes in :data:`DTYPES`.
* **the ledger** -- :func:`ledger_metrics` / :func:`metrics_ledger`: a round's
  :class:`~fededge.cost.ledger.Ledger` as the reply's metrics, one number per
  stored field (its derived totals are recomputed from them, never sent).
  Flower's metric values are IEEE doubles, so every value travels as it is --
  ``budget_macs = inf`` (no budget) and NaN included -- and
  ``metrics_ledger(ledger_metrics(x)) == x`` for every ledger. A device on
  another stack may leave ``budget_macs`` out: absent means ``inf``.
  :data:`NON_FINITE` says which reply metrics the server accepts non-finite
  (``server/replies.py`` refuses every other NaN or infinity).
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import torch

from fededge.cost.ledger import Ledger

__all__ = [
    "DTYPES",
    "MAGIC",
    "NON_FINITE",
    "WireArray",
    "array_numpy",
    "decode",
    "encode",
    "ledger_metrics",
    "metrics_ledger",
    "record_tensors",
]


class WireArray(Protocol):
    """What this module reads of a Flower ``Array``."""

    @property
    def data(self) -> bytes:
        """The serialised array (``.npy`` bytes for NumPy arrays)."""
        ...

    @property
    def stype(self) -> str:
        """The serialisation type (``"numpy.ndarray"``)."""
        ...

    @property
    def shape(self) -> tuple[int, ...]:
        """The array's shape."""
        ...

    def numpy(self) -> np.ndarray:
        """Flower's own reading of the array."""
        ...


_MAGIC = b"\x93NUMPY"
_DESCR = re.compile(rb"'descr':\s*'([<>|=]?[a-zA-Z][0-9]*)'")
_C_ORDER = re.compile(rb"'fortran_order':\s*False")


def array_numpy(array: WireArray) -> np.ndarray:
    """The array in a Flower ``Array`` (a read-only view of its bytes when possible)."""
    data = array.data
    if array.stype == "numpy.ndarray" and data[:6] == _MAGIC and len(data) > 12:
        size_bytes = 2 if data[6] == 1 else 4 if data[6] in (2, 3) else 0
        if size_bytes:
            header_len = int.from_bytes(data[8 : 8 + size_bytes], "little")
            start = 8 + size_bytes + header_len
            header = data[8 + size_bytes : start]
            descr = _DESCR.search(header)
            if descr and _C_ORDER.search(header):
                dtype = np.dtype(descr.group(1).decode())
                shape = tuple(int(n) for n in array.shape)
                count = math.prod(shape)
                if not dtype.hasobject and len(data) - start == count * dtype.itemsize:
                    flat = np.frombuffer(data, dtype=dtype, count=count, offset=start)
                    return flat.reshape(shape)
    return array.numpy()


def record_tensors(record: Mapping[str, WireArray]) -> dict[str, torch.Tensor]:
    """The arrays of a record as (writable) torch tensors, in the record's order."""
    return {name: torch.from_numpy(array_numpy(array).copy()) for name, array in record.items()}


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


# ------------------------------------------------------------------ the ledger
#: Reply metrics that may be non-finite, and what the value means there.
NON_FINITE: dict[str, tuple[float, str]] = {
    "budget_macs": (math.inf, "the round had no budget"),
    "threshold": (math.nan, "the device runs no EIF (no T_l)"),
}


def ledger_metrics(ledger: Ledger) -> dict[str, float]:
    """A ledger as reply metrics: ``{field: value}`` for every stored field, values as they are."""
    return {name: float(getattr(ledger, name)) for name in Ledger.field_names()}


def metrics_ledger(metrics: Mapping[str, float]) -> Ledger:
    """Inverse of :func:`ledger_metrics` (absent ``budget_macs``: no budget).

    Raises
    ------
    KeyError
        Naming the first stored field that is missing.
    """
    return Ledger.from_metrics({"budget_macs": math.inf, **metrics})
