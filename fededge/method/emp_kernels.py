"""The kernels of error map pruning's backward pass, and how one is chosen per case.

Kernels ("plans"). Which kernels run the pruned backward fastest depends on the
layer's shape, the batch size and the CPU (``bench/conv_backward.py`` measures
them). The candidates, all computing on the gathered tensors only:

- ``aten``: PyTorch's ``convolution_backward`` in δ's layout, both products in
  one call — what autograd runs for a dense ``nn.Conv2d``. oneDNN pads the k kept
  channels to blocks of 16, so at small k it saves little.
- ``cl``: channels-last tensors; grad-input = ``conv_transpose2d(δ_k, W_k)``,
  grad-weight = ``convolution_backward`` for the weights only.
- ``cl-swap`` (stride 1): as ``cl``, but the weight gradient is taken as the weight
  gradient of the grad-input convolution, whose output channels are the C_in
  input channels and whose input channels are the k kept ones: no padding of k
  to 16, 2–3x faster than the direct form at k < 16.
- ``nchw-swap`` (stride 1): as ``cl-swap``, but the grad-input is the forward
  convolution conv2d(δ_k, flip(W_k)ᵀ) on δ_k as gathered (NCHW), which oneDNN
  reads in place for few input channels: one layout conversion fewer.

The input gradient is handed back in x's memory format (a channels-last error
map would slow down the batch-norm and ReLU backward that consume it).

``kernels="autotune"`` (default) tunes online: the first backward passes of each
case (input shape, weight shape, k, batch size rounded up to a power of two,
dtype, layouts) run the eligible plans in turn, each timed where it runs — real
caches, real neighbours, no extra work — and after one warm-up and three timed
runs of every plan the fastest median is kept for that case. The choices live in
the pruner's :class:`KernelPlans` (shareable between pruners), never in module
state. Plans differ only in floating-point rounding.
``kernels="rule"`` needs no timing (bitwise reproducible): ``aten`` when nothing
is pruned or C_in < 8, ``nchw-swap`` for stride 1 with k < 16, ``cl-swap`` for
stride 1 with k >= 16, ``cl`` otherwise — what autotuning chose for ResNet-20 on
a 2-core AVX-512 CPU. A plan name forces that plan where it is eligible.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["KERNELS", "Geometry", "Grads", "KernelPlans", "Kernels", "conv_geometry"]

logger = logging.getLogger("fededge.method.error_map")

_CL = torch.channels_last
_TUNE_ROUNDS = 3
Kernels = Literal["autotune", "rule", "aten", "cl", "cl-swap", "nchw-swap"]
KERNELS: tuple[str, ...] = ("autotune", "rule", "aten", "cl", "cl-swap", "nchw-swap")
"""Accepted values of ``ErrorMapPruner(kernels=...)``."""


@dataclass(frozen=True)
class Geometry:
    """A conv's stride, padding, dilation and kernel size: what its backward kernels need."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    kernel: tuple[int, int]

    @property
    def swappable(self) -> bool:
        """Stride 1 and padding <= dilation·(k − 1): ``cl-swap`` applies."""
        return self.stride == (1, 1) and all(
            p <= d * (k - 1)
            for p, d, k in zip(self.padding, self.dilation, self.kernel, strict=True)
        )


def _layout(t: Tensor) -> torch.memory_format:
    """channels_last if t is stored so (and not also plainly contiguous), else contiguous."""
    if t.is_contiguous(memory_format=_CL) and not t.is_contiguous():
        return _CL
    return torch.contiguous_format


def _gather_cl(grad_out: Tensor, idx: Tensor | None) -> Tensor:
    """δ[:, idx] as a channels-last (N, k, H, W) tensor."""
    if idx is None:
        return grad_out.contiguous(memory_format=_CL)
    if _layout(grad_out) == _CL:  # gather along the innermost dimension: one copy
        return grad_out.permute(0, 2, 3, 1).index_select(3, idx).permute(0, 3, 1, 2)
    return grad_out.index_select(1, idx).contiguous(memory_format=_CL)  # whole planes, then NHWC


def _grad_input_transposed(x: Tensor, dk: Tensor, wk: Tensor, g: Geometry) -> Tensor:
    """Grad-input as conv_transpose2d(δ_k, W_k), (N, C_in, H, W), channels last."""
    output_padding = [
        x.shape[2 + i]
        - (
            (dk.shape[2 + i] - 1) * g.stride[i]
            - 2 * g.padding[i]
            + g.dilation[i] * (g.kernel[i] - 1)
            + 1
        )
        for i in range(2)
    ]  # picks the input size among those a strided conv maps to δ's size
    wk = wk.contiguous(memory_format=_CL)
    return F.conv_transpose2d(dk, wk, None, g.stride, g.padding, output_padding, 1, g.dilation)


def _grad_input_forward(dk: Tensor, wk: Tensor, g: Geometry) -> Tensor:
    """Grad-input (stride 1) as conv2d(δ_k, W'), W'[c, j] = flip(W[j, c]), in δ_k's layout."""
    w_flipped = wk.flip(2, 3).transpose(0, 1)  # (C_in, k, kH, kW)
    padding = [d * (k - 1) - p for p, d, k in zip(g.padding, g.dilation, g.kernel, strict=True)]
    return F.conv2d(dk, w_flipped.contiguous(), None, 1, padding, g.dilation)


def _grad_weight_direct(x: Tensor, dk: Tensor, wk: Tensor, g: Geometry) -> Tensor:
    """Grad-weight of the kept filters by convolution_backward, (k, C_in, kH, kW)."""
    xin = x.contiguous(memory_format=_CL)
    mask = [False, True, False]
    grads = torch.ops.aten.convolution_backward(
        dk, xin, wk.contiguous(memory_format=_CL), None, g.stride, g.padding, g.dilation,
        False, [0, 0], 1, mask,
    )  # fmt: skip
    gw: Tensor = grads[1]
    return gw


def _grad_weight_swapped(x: Tensor, dk: Tensor, wk: Tensor, g: Geometry) -> Tensor:
    """Grad-weight (stride 1) as the weight gradient of the grad-input convolution.

    For stride 1 the grad-input is conv2d(δ, W') with W'[c, j] = flip(W[j, c]) and
    padding P' = d·(k − 1) − P. The weight gradient of *that* conv, with x in the
    role of its output error, is ∂L/∂W'[c, j, u, v] = Σ x[n, c, ·]·δ_pad[n, j, · + (u, v)],
    which is ∂L/∂W[j, c] flipped. Its output channels are C_in and its input
    channels the k kept ones, so oneDNN does not pad k to a block of 16.
    """
    xin = x.contiguous(memory_format=_CL)
    w_swapped = wk.transpose(0, 1).contiguous(memory_format=_CL)  # (C_in, k, kH, kW)
    padding = [d * (k - 1) - p for p, d, k in zip(g.padding, g.dilation, g.kernel, strict=True)]
    grads = torch.ops.aten.convolution_backward(
        xin, dk, w_swapped, None, [1, 1], padding, g.dilation, False, [0, 0], 1,
        [False, True, False],
    )  # fmt: skip
    gw: Tensor = grads[1]
    return gw.flip(2, 3).transpose(0, 1)  # (k, C_in, kH, kW)


Grads = tuple[Tensor | None, Tensor | None, Tensor | None]


def _run_plan(
    plan: str,
    grad_out: Tensor,
    x: Tensor,
    weight: Tensor,
    idx: Tensor | None,
    g: Geometry,
    mask: tuple[bool, bool, bool],
) -> Grads:
    """Grad-input, grad-weight (k filters) and grad-bias (k) from the kept channels."""
    need_x, need_w, need_b = mask
    wk = weight if idx is None else weight.index_select(0, idx)  # (k, C_in, kH, kW)
    if plan == "aten":  # one fused call, δ's layout
        dk = grad_out if idx is None else grad_out.index_select(1, idx)  # (N, k, H, W)
        gi, gw, gb = torch.ops.aten.convolution_backward(
            dk, x, wk, [wk.shape[0]] if need_b else None, g.stride, g.padding, g.dilation,
            False, [0, 0], 1, [need_x, need_w, need_b],
        )  # fmt: skip
        return gi, gw, gb
    gi = None
    if plan == "nchw-swap":  # grad-input by a forward conv that reads δ_k in place (NCHW)
        dk = grad_out if idx is None else grad_out.index_select(1, idx)  # (N, k, H, W)
        if need_x:
            gi = _grad_input_forward(dk, wk, g).contiguous(memory_format=_layout(x))
        dk = dk.contiguous(memory_format=_CL)
    else:
        dk = _gather_cl(grad_out, idx)  # (N, k, H, W) channels last
        if need_x:
            gi = _grad_input_transposed(x, dk, wk, g).contiguous(memory_format=_layout(x))
    gw = None
    if need_w:
        gw = (_grad_weight_direct if plan == "cl" else _grad_weight_swapped)(x, dk, wk, g)
    gb = dk.sum(dim=(0, 2, 3)) if need_b else None
    return gi, gw, gb



def conv_geometry(name: str, conv: nn.Conv2d) -> tuple[Geometry | None, str]:
    """The conv's geometry, or None and the reason it cannot be pruned."""
    problems = []
    if type(conv).forward is not nn.Conv2d.forward:
        problems.append(f"{type(conv).__name__} overrides forward")
    if "forward" in conv.__dict__:
        problems.append("its forward is already replaced (another ErrorMapPruner?)")
    if conv.groups != 1:
        problems.append(f"groups={conv.groups} (only 1 is supported)")
    if conv.padding_mode != "zeros":
        problems.append(f"padding_mode={conv.padding_mode!r} (only 'zeros' is supported)")
    dilation, kernel = conv.dilation, conv.kernel_size
    padding: Any = conv.padding
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same":
        if any(d * (k - 1) % 2 for d, k in zip(dilation, kernel, strict=True)):
            problems.append("padding='same' with an even kernel extent (asymmetric padding)")
        padding = tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel, strict=True))
    if problems:
        return None, "; ".join(problems)
    return Geometry(
        stride=(int(conv.stride[0]), int(conv.stride[1])),
        padding=(int(padding[0]), int(padding[1])),
        dilation=(int(dilation[0]), int(dilation[1])),
        kernel=(int(kernel[0]), int(kernel[1])),
    ), ""


def _rule(g: Geometry, k: int, c_out: int, c_in: int) -> str:
    """The plan ``kernels="rule"`` picks (see the module docstring)."""
    if k == c_out or c_in < 8:
        return "aten"
    if g.swappable:
        return "nchw-swap" if k < 16 else "cl-swap"
    return "cl"


def _candidates(g: Geometry) -> tuple[str, ...]:
    """Plans eligible for a conv geometry (the swapped ones need stride 1)."""
    return ("aten", "cl", "cl-swap", "nchw-swap") if g.swappable else ("aten", "cl")


class KernelPlans:
    """Kernel plans learned by autotuning, shareable between pruners.

    A pruner tunes each case once; a training loop that builds a new pruner per
    round (or per client) can hand the same ``KernelPlans`` to each, e.g. one per
    process, so the tuning is not repeated. Not thread-safe.
    """

    def __init__(self) -> None:
        self.chosen: dict[tuple[Any, ...], str] = {}
        self.trials: dict[tuple[Any, ...], dict[str, list[float]]] = {}

    def __len__(self) -> int:
        return len(self.chosen)

    def run(
        self,
        kernels: Kernels,
        geometry: Geometry,
        k: int,
        grad_out: Tensor,
        x: Tensor,
        weight: Tensor,
        idx: Tensor | None,
        mask: tuple[bool, bool, bool],
    ) -> tuple[Grads, str]:
        """The pruned backward of one conv on the plan for its case, and that plan's name.

        ``kernels`` is the pruner's setting: ``"autotune"`` (try the eligible
        plans in turn on this case's first backward passes, then keep the fastest),
        ``"rule"`` or a plan name (see the module docstring).
        """
        g = geometry
        n, c_out = x.shape[0], weight.shape[0]
        key = (
            tuple(x.shape[1:]), 1 << (n - 1).bit_length(), tuple(weight.shape), g, k, mask,
            x.dtype, _layout(x) == _CL, _layout(grad_out) == _CL,
        )  # fmt: skip
        plan = self.chosen.get(key)
        if plan is None and kernels != "autotune":
            plan = kernels
            if plan == "rule":
                plan = _rule(g, k, c_out, x.shape[1])
            elif plan in ("cl-swap", "nchw-swap") and not g.swappable:
                plan = "cl"
            self.chosen[key] = plan
        if plan is not None:
            return _run_plan(plan, grad_out, x, weight, idx, g, mask), plan
        # Online autotuning: successive backward passes of this case try the plans in
        # turn, each timed in place (real caches, real neighbours), no extra work.
        trials = self.trials.setdefault(key, {p: [] for p in _candidates(g)})
        plan = min(trials, key=lambda p: len(trials[p]))  # the least tried, in order
        start = time.perf_counter()
        grads = _run_plan(plan, grad_out, x, weight, idx, g, mask)
        trials[plan].append(time.perf_counter() - start)
        if all(len(t) > _TUNE_ROUNDS for t in trials.values()):  # first run of each: warm-up
            times = {p: statistics.median(t[1:]) for p, t in trials.items()}
            self.chosen[key] = min(times, key=times.__getitem__)
            del self.trials[key]
            report = ", ".join(f"{p} {1e3 * t:.2f} ms" for p, t in times.items())
            logger.debug(
                "EMP plan for x %s, W %s, k=%d: %s (%s)", tuple(x.shape), tuple(weight.shape),
                k, self.chosen[key], report,
            )  # fmt: skip
        return grads, plan
