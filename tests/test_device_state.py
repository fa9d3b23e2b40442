"""The device-state codec (fededge/wire.py): exact round trips, no code run on decode."""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np
import pytest
import torch

from fededge import wire as device_state


def _same(a: Any, b: Any, path: str = "state") -> None:
    """Deep equality: dict keys and order, list lengths, tensor dtype/shape/values, NaN."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), path
        for key in a:
            _same(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor | np.ndarray):
        expected = torch.as_tensor(a)
        assert isinstance(b, torch.Tensor), path
        assert (b.dtype, tuple(b.shape)) == (expected.dtype, tuple(expected.shape)), path
        assert torch.equal(b, expected), path
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    else:
        assert type(a) is type(b) and a == b, path


def test_round_trip_is_exact_for_every_kind_of_value() -> None:
    # Prepare: what devices keep (nested dicts, an optimizer's int-keyed state, a
    # generator state, numpy backlog, NaN threshold, an empty queue) and edge cases.
    optimizer = torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=0.1, momentum=0.9)
    optimizer.zero_grad()
    for p in optimizer.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    optimizer.step()
    state = {
        "stream": {"position": 64, "round": 1, "backlog": np.arange(5, dtype=np.int64)},
        "trainer": {
            "queue": torch.empty(0, dtype=torch.long),
            "generator": torch.Generator().manual_seed(3).get_state(),
            "filter": {"optimizer": optimizer.state_dict(), "threshold": math.nan},
            "window": [[1.0, 0.5], [2.0, -math.inf]],
        },
        "misc": {"flag": True, "none": None, "name": "x", 7: "int key", "t": (1, 2.5)},
        "dtypes": {
            "bool": torch.tensor([True, False, True]),
            "half": torch.randn(3, dtype=torch.float16),
            "scalar": torch.tensor(3.25),
            "odd": torch.arange(3, dtype=torch.uint8),  # 3 bytes: the next tensor is realigned
            "after": torch.randn(2, 3, dtype=torch.float64),
        },
    }

    # Execute
    blob = device_state.encode(state)
    back = device_state.decode(blob)

    # Assert
    assert blob.startswith(device_state.MAGIC)
    _same(state, back)
    assert back["trainer"]["filter"]["optimizer"]["state"].keys() == {0, 1}  # ints stay ints


def test_decoded_tensors_are_writable_and_restore_an_optimizer() -> None:
    net = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    back = device_state.decode(device_state.encode({"opt": optimizer.state_dict()}))
    fresh = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    fresh.load_state_dict(back["opt"])
    net(torch.ones(1, 4)).sum().backward()
    fresh.step()  # updates the momentum buffers in place
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_blobs_written_by_torch_save_are_still_read() -> None:
    buffer = io.BytesIO()
    torch.save({"queue": torch.arange(3)}, buffer)
    back = device_state.decode(buffer.getvalue())
    assert torch.equal(back["queue"], torch.arange(3))


def test_values_that_cannot_be_stored_are_refused() -> None:
    with pytest.raises(TypeError, match="cannot hold a object"):
        device_state.encode({"x": object()})


def test_a_tensor_of_an_unknown_dtype_is_refused_on_decode() -> None:
    blob = device_state.encode({"x": torch.zeros(2)})
    start = len(device_state.MAGIC) + 8
    size = int.from_bytes(blob[len(device_state.MAGIC) : start], "little")
    skeleton = json.loads(blob[start : start + size])
    skeleton["d"][0][1]["t"][0] = "complex64"
    text = json.dumps(skeleton).encode()
    forged = device_state.MAGIC + len(text).to_bytes(8, "little") + text + blob[start + size :]
    with pytest.raises(ValueError, match="dtype 'complex64'"):
        device_state.decode(forged)
