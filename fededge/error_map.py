"""Error map pruning (EMP): a channel-pruned backward pass for convolutions.

Wu et al. 2020 (``PAPER.md`` §2). In the backward pass of every pruned
``nn.Conv2d`` the error map δ = ∂L/∂out, shape (N, C_out, H_out, W_out), is
scored per output channel j, once per mini-batch, and only the top
k = ⌈α·C_out⌉ channels are back-propagated (α = ``keep_ratio``). For the other
channels **both** backward products are skipped: the input gradient is the
transposed convolution of δ[:, kept] with W[kept], and the weight (and bias)
gradient is computed for the kept filters only and scattered into a zero tensor of
the full shape. The saving is real: the kernels run on the gathered, smaller
tensors (nothing is multiplied by a mask).

Score (the paper's s_j = γ1·‖W_j‖₁ + γ2·‖δ_j‖₁, made scale-free)::

    w_j = ‖W_j‖₁ = Σ_{c,u,v} |W[j, c, u, v]|          (the whole filter j)
    e_j = ‖δ_j‖₁ = Σ_{n,p,q} |δ[n, j, p, q]|          (summed over the batch)
    s_j = γ_w · w_j / mean_i(w_i)  +  γ_e · e_j / mean_i(e_i)

The two norms live on very different scales (w_j is O(1–10), e_j is tiny and grows
with the batch size), so each is divided by its mean over the layer's channels
(a term whose mean is 0 contributes 0). With the default γ_w = γ_e = 1 both terms
average 1: channels are ranked mostly by their error, since errors spread much
more across channels than filter norms do, and the filter norm separates channels
whose errors are close. The k highest scores are kept; ties go to the lower channel
index (a stable sort) and the kept indices are sorted, so the choice is
deterministic.

Cost, in MACs (:mod:`fededge.flops` units): a conv's backward with k of C_out
channels kept costs k/C_out of its dense grad-input and grad-weight MACs. The
selection costs ``numel(δ) + numel(W) + 4·C_out`` per backward pass: one add per
element for each L1 norm (|·| clears a sign bit, not counted), C_out adds for
each of the two means and 2 MACs per channel for the weighted sum; the sort only
compares (not counted, like ReLU and max pooling in :mod:`fededge.flops`). With
k = C_out nothing is selected and the selection costs 0.

Kernels. Which kernels run the pruned backward fastest depends on the layer's
shape, the batch size and the CPU (measured numbers: ``bench/conv_backward.py``).
The candidates, all on the gathered tensors:

- ``aten``: PyTorch's ``convolution_backward`` on NCHW tensors, both products in
  one call (what autograd runs for a dense ``nn.Conv2d``);
- ``cl``: channels-last tensors; grad-input as ``conv_transpose2d(δ_k, W_k)``,
  grad-weight as ``convolution_backward`` (weights only);
- ``cl-swap`` (stride 1): as ``cl`` but the weight gradient is taken as the
  weight gradient of the grad-input convolution, whose "output channels" are
  the C_in input channels and whose "input channels" are the k kept ones. oneDNN
  blocks the output channels of a weight gradient by 16, so with k < 16 this is
  up to 3x faster than the direct form.

With ``autotune=True`` (the default) the pruner times every eligible candidate
the first time it meets a (shape, k) pair (batch size rounded up to a power of
two), three interleaved rounds each, and keeps the fastest for that pair. The
choice is cached in the pruner, never in module state. Candidates differ only in
floating-point rounding. ``autotune=False`` uses the rule measured on x86 CPUs
with AVX-512 (``cl-swap`` where eligible, else ``cl``), with no timing.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from fededge.errors import ConfigError, ConfigIssue

if TYPE_CHECKING:
    from fededge.flops import ModelCost

__all__ = [
    "EMPConfig",
    "EMPConfigError",
    "ErrorMapPruner",
    "LayerStats",
    "StepCost",
    "channel_scores",
    "kept_channels",
    "num_kept",
]

logger = logging.getLogger(__name__)

_CL = torch.channels_last
_AUTOTUNE_ROUNDS = 3


class EMPConfigError(ConfigError, ValueError):
    """Invalid :class:`EMPConfig` (both a :class:`~fededge.errors.ConfigError` and a ValueError)."""


@dataclass(frozen=True)
class EMPConfig:
    """Parameters of error map pruning.

    Parameters
    ----------
    keep_ratio : float
        α in (0, 1]: each pruned conv back-propagates k = ⌈α·C_out⌉ output channels.
    gamma_weight : float
        γ_w >= 0, weight of the mean-normalised filter norm ‖W_j‖₁ in the score.
    gamma_error : float
        γ_e >= 0, weight of the mean-normalised error norm ‖δ_j‖₁ in the score.
        γ_w and γ_e must not both be 0.
    exempt : tuple of str
        Conv layers that keep their dense backward: qualified names from
        ``model.named_modules()`` (``"conv1"``, ``"layer3.0.conv2"``) or
        :mod:`fnmatch` patterns (``"layer1.*"``). Each must match a conv.

    Raises
    ------
    EMPConfigError
        Listing every invalid field, with the value received.
    """

    keep_ratio: float = 0.5
    gamma_weight: float = 1.0
    gamma_error: float = 1.0
    exempt: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.exempt, list):
            object.__setattr__(self, "exempt", tuple(self.exempt))
        issues = []
        alpha = self.keep_ratio
        if not _is_real(alpha) or not 0.0 < alpha <= 1.0:
            issues.append(ConfigIssue("keep_ratio", f"must be a number in (0, 1], got {alpha!r}"))
        for name in ("gamma_weight", "gamma_error"):
            value = getattr(self, name)
            if not _is_real(value) or not 0.0 <= value < math.inf:
                issues.append(ConfigIssue(name, f"must be a finite number >= 0, got {value!r}"))
        gammas = (self.gamma_weight, self.gamma_error)
        if all(_is_real(g) and g == 0 for g in gammas):
            issues.append(
                ConfigIssue("gamma_weight, gamma_error", "must not both be 0 (no score), got 0, 0")
            )
        if not isinstance(self.exempt, tuple) or not all(
            isinstance(p, str) and p for p in self.exempt
        ):
            issues.append(
                ConfigIssue("exempt", f"must be a tuple of non-empty strings, got {self.exempt!r}")
            )
        if issues:
            raise EMPConfigError(issues, source="EMPConfig")


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def num_kept(keep_ratio: float, c_out: int) -> int:
    """k = ⌈α·C_out⌉ channels kept (at least 1; 1e-9 absorbs float error, ⌈0.3·10⌉ = 3)."""
    return max(1, min(c_out, math.ceil(keep_ratio * c_out - 1e-9)))


def channel_scores(
    grad_out: Tensor, weight: Tensor, gamma_weight: float, gamma_error: float
) -> Tensor:
    """Score s_j = γ_w·w_j/mean(w) + γ_e·e_j/mean(e) of every output channel.

    Parameters
    ----------
    grad_out : Tensor
        δ, (N, C_out, H_out, W_out).
    weight : Tensor
        (C_out, C_in / groups, k_H, k_W).
    gamma_weight, gamma_error : float
        γ_w and γ_e.

    Returns
    -------
    Tensor
        (C_out,) scores, in δ's dtype.
    """
    n, c = grad_out.shape[:2]
    if grad_out.is_contiguous():  # two contiguous reductions: ~3x faster than one over (0, 2, 3)
        e = grad_out.view(n, c, -1).abs().sum(dim=2).sum(dim=0)  # (C_out,) ‖δ_j‖₁
    else:
        e = grad_out.abs().sum(dim=(0, 2, 3))
    w = weight.detach().abs().sum(dim=(1, 2, 3)).to(e.dtype)  # (C_out,) ‖W_j‖₁
    tiny = torch.finfo(e.dtype).tiny
    return gamma_weight * w / w.mean().clamp_min(tiny) + gamma_error * e / e.mean().clamp_min(tiny)


def kept_channels(scores: Tensor, k: int) -> Tensor:
    """Indices of the k highest scores, ties to the lower index, sorted ascending."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:k].sort().values


@dataclass(frozen=True)
class LayerStats:
    """What one pruned conv did in the backward passes since the last :meth:`pop_stats`.

    Attributes
    ----------
    c_out : int
        Output channels of the conv.
    steps : int
        Backward passes recorded.
    kept_sum : int
        Σ over those passes of the channels kept.
    kept_instances : int
        Σ over those passes of (channels kept × batch size).
    instances : int
        Σ over those passes of the batch size.
    selection_macs : int
        MACs spent scoring channels (see the module docstring).
    """

    c_out: int
    steps: int = 0
    kept_sum: int = 0
    kept_instances: int = 0
    instances: int = 0
    selection_macs: int = 0

    @property
    def kept_fraction(self) -> float:
        """Instance-weighted fraction of channels back-propagated (1.0 if nothing recorded)."""
        return self.kept_instances / (self.instances * self.c_out) if self.instances else 1.0


@dataclass(frozen=True)
class StepCost:
    """Backward MACs of the main net for the passes since the last pop (all layers)."""

    grad_input_macs: int
    grad_weight_macs: int
    selection_macs: int


# --------------------------------------------------------------------------- kernels


@dataclass(frozen=True)
class _Geometry:
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    kernel: tuple[int, int]

    @property
    def swappable(self) -> bool:
        """Stride 1 and padding <= dilation·(k - 1): the swapped weight gradient applies."""
        return self.stride == (1, 1) and all(
            p <= d * (k - 1) for p, d, k in zip(self.padding, self.dilation, self.kernel, strict=True)
        )


def _gather_cl(grad_out: Tensor, idx: Tensor | None) -> Tensor:
    """δ[:, idx] as a channels-last (N, k, H, W) tensor."""
    if idx is not None:
        grad_out = grad_out.index_select(1, idx)  # (N, k, H, W), copies whole planes
    return grad_out.contiguous(memory_format=_CL)


def _memory_format(x: Tensor) -> torch.memory_format:
    """channels_last if x is stored so (and not also contiguous), else contiguous."""
    if x.is_contiguous(memory_format=_CL) and not x.is_contiguous():
        return _CL
    return torch.contiguous_format


def _output_padding(x: Tensor, dk: Tensor, wk: Tensor, g: _Geometry) -> list[int]:
    """Output padding making conv_transpose2d(δ) the shape of x (stride > 1 is ambiguous)."""
    return [
        x.shape[2 + i]
        - ((dk.shape[2 + i] - 1) * g.stride[i] - 2 * g.padding[i] + g.dilation[i] * (wk.shape[2 + i] - 1) + 1)
        for i in range(2)
    ]


def _grad_input_transposed(x: Tensor, dk: Tensor, wk: Tensor, g: _Geometry) -> Tensor:
    """Grad-input as conv_transpose2d(δ_k, W_k): (N, C_in, H, W)."""
    return F.conv_transpose2d(
        dk, wk, None, g.stride, g.padding, _output_padding(x, dk, wk, g), 1, g.dilation
    )


def _grad_weight_direct(x: Tensor, dk: Tensor, wk: Tensor, g: _Geometry) -> Tensor:
    """Grad-weight by convolution_backward in x's layout (weights only): (k, C_in, kH, kW)."""
    xin = x.contiguous(memory_format=_CL) if dk.is_contiguous(memory_format=_CL) else x
    out = torch.ops.aten.convolution_backward(
        dk, xin, wk, None, g.stride, g.padding, g.dilation, False, [0, 0], 1, [False, True, False]
    )
    gw: Tensor = out[1]
    return gw


def _grad_weight_swapped(x: Tensor, dk: Tensor, wk: Tensor, g: _Geometry) -> Tensor:
    """Grad-weight (stride 1) as the weight gradient of the grad-input convolution.

    The grad-input of a stride-1 conv is conv2d(δ, W'), W'[c, j] = flip(W[j, c]),
    padding P' = d·(k − 1) − P. The weight gradient of *that* conv, with x in the
    role of its output error, is ∂L/∂W'[c, j, u, v] = Σ δ_pad[n, j, ·+u, ·+v]·x[n, c],
    i.e. ∂L/∂W[j, c] flipped. Its "output channels" are C_in, not k.
    """
    xin = x.contiguous(memory_format=_CL)
    w_swapped = wk.transpose(0, 1).contiguous(memory_format=_CL)  # (C_in, k, kH, kW)
    padding = [d * (k - 1) - p for p, d, k in zip(g.padding, g.dilation, g.kernel, strict=True)]
    out = torch.ops.aten.convolution_backward(
        xin, dk, w_swapped, None, [1, 1], padding, g.dilation, False, [0, 0], 1,
        [False, True, False],
    )  # fmt: skip
    gw: Tensor = out[1]
    return gw.flip(2, 3).transpose(0, 1)  # (k, C_in, kH, kW)


@dataclass(frozen=True)
class _Plan:
    """A way to run the pruned backward; ``name`` is reported by the bench."""

    name: str
    channels_last: bool
    grad_input: Callable[[Tensor, Tensor, Tensor, _Geometry], Tensor] | None
    grad_weight: Callable[[Tensor, Tensor, Tensor, _Geometry], Tensor] | None


_ATEN = _Plan("aten", False, None, None)  # one fused convolution_backward call, NCHW
_CL_DIRECT = _Plan("cl", True, _grad_input_transposed, _grad_weight_direct)
_CL_SWAP = _Plan("cl-swap", True, _grad_input_transposed, _grad_weight_swapped)


def _candidates(g: _Geometry) -> tuple[_Plan, ...]:
    return (_ATEN, _CL_DIRECT, _CL_SWAP) if g.swappable else (_ATEN, _CL_DIRECT)


def _run_plan(
    plan: _Plan,
    grad_out: Tensor,
    x: Tensor,
    weight: Tensor,
    idx: Tensor | None,
    g: _Geometry,
    mask: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Grad-input, grad-weight (k rows) and grad-bias (k) from the kept channels."""
    need_x, need_w, need_b = mask
    wk = weight if idx is None else weight.index_select(0, idx)  # (k, C_in, kH, kW)
    if plan.grad_input is None or plan.grad_weight is None:  # fused aten
        dk = grad_out if idx is None else grad_out.index_select(1, idx)  # (N, k, H, W)
        gi, gw, gb = torch.ops.aten.convolution_backward(
            dk, x, wk, [wk.shape[0]] if need_b else None, g.stride, g.padding, g.dilation,
            False, [0, 0], 1, [need_x, need_w, need_b],
        )  # fmt: skip
        return gi, gw, gb
    dk = _gather_cl(grad_out, idx)  # (N, k, H, W) channels last
    gi = None
    if need_x:  # back to x's layout: a channels-last error map slows BN / ReLU backward
        gi = plan.grad_input(x, dk, wk.contiguous(memory_format=_CL), g)
        gi = gi.contiguous(memory_format=_memory_format(x))
    gw = plan.grad_weight(x, dk, wk, g) if need_w else None
    gb = dk.sum(dim=(0, 2, 3)) if need_b else None
    return gi, gw, gb


# --------------------------------------------------------------------------- autograd


@dataclass(eq=False)
class _Layer:
    """Per-conv state of a pruner (mutable counters; one per attached conv)."""

    name: str
    module: nn.Conv2d
    geometry: _Geometry
    k: int
    pruner: ErrorMapPruner
    original_forward: Callable[..., Tensor]
    steps: int = 0
    kept_sum: int = 0
    kept_instances: int = 0
    instances: int = 0
    selection_macs: int = 0
    error_elems: int | None = None  # δ elements per instance, from the last forward
    last_kept: Tensor | None = None
    last_kernel: str | None = None

    @property
    def c_out(self) -> int:
        return int(self.module.out_channels)


class _PrunedConv2d(torch.autograd.Function):
    """conv2d forward (as nn.Conv2d); channel-pruned backward."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None, layer: _Layer
    ) -> Tensor:
        g = layer.geometry
        ctx.save_for_backward(x, weight)
        ctx.layer = layer  # type: ignore[attr-defined]
        return F.conv2d(x, weight, bias, g.stride, g.padding, g.dilation, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        layer: _Layer = ctx.layer
        pruner = layer.pruner
        mask = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        c_out, k, n = layer.c_out, layer.k, grad_out.shape[0]
        idx: Tensor | None = None
        if k < c_out:
            cfg = pruner.config
            scores = channel_scores(grad_out, weight, cfg.gamma_weight, cfg.gamma_error)
            idx = kept_channels(scores, k)
            layer.selection_macs += grad_out.numel() + weight.numel() + 4 * c_out
        layer.last_kept = idx if idx is not None else torch.arange(c_out, device=weight.device)
        layer.steps += 1
        layer.kept_sum += k
        layer.kept_instances += k * n
        layer.instances += n
        gi, gw_k, gb_k = pruner._backward(layer, grad_out, x, weight, idx, mask)
        if idx is None:
            return gi, gw_k, gb_k, None
        gw = gb = None
        if gw_k is not None:
            gw = weight.new_zeros(weight.shape).index_copy_(0, idx, gw_k.to(weight.dtype))
        if gb_k is not None:
            gb = weight.new_zeros(c_out).index_copy_(0, idx, gb_k.to(weight.dtype))
        return gi, gw, gb, None


# --------------------------------------------------------------------------- the pruner


def _geometry(name: str, conv: nn.Conv2d) -> _Geometry:
    problems = []
    if conv.groups != 1:
        problems.append(f"groups={conv.groups} (only 1 is supported)")
    if conv.padding_mode != "zeros":
        problems.append(f"padding_mode={conv.padding_mode!r} (only 'zeros' is supported)")
    padding = conv.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif all(d * (k - 1) % 2 == 0 for d, k in zip(conv.dilation, conv.kernel_size, strict=True)):
            padding = tuple(d * (k - 1) // 2 for d, k in zip(conv.dilation, conv.kernel_size, strict=True))
        else:
            problems.append("padding='same' with an even kernel (asymmetric padding)")
    if problems:
        raise EMPConfigError(
            [ConfigIssue(f"exempt (conv {name!r})", f"cannot be pruned: {'; '.join(problems)}; "
                         f"add {name!r} to EMPConfig.exempt")],
            source="ErrorMapPruner",
        )  # fmt: skip
    return _Geometry(
        stride=(int(conv.stride[0]), int(conv.stride[1])),
        padding=(int(padding[0]), int(padding[1])),
        dilation=(int(conv.dilation[0]), int(conv.dilation[1])),
        kernel=(int(conv.kernel_size[0]), int(conv.kernel_size[1])),
    )


class ErrorMapPruner:
    """Attach error map pruning to every non-exempt ``nn.Conv2d`` of a model.

    Each such conv's ``forward`` is replaced (per instance, reversibly) by one that
    runs the same ``F.conv2d`` through an autograd function whose backward is
    pruned; other layers keep their normal autograd. Under ``torch.no_grad`` (or
    when neither input nor weight requires grad, or when :attr:`enabled` is False)
    the original forward runs and nothing is recorded. Double backward is not
    supported.

    Parameters
    ----------
    model : nn.Module
        The main network.
    config : EMPConfig
        α, γ_w, γ_e and the exempt layers.
    autotune : bool
        Time the candidate kernels at the first backward of each (shape, k) pair
        and keep the fastest (see the module docstring); False uses the fixed rule.

    Raises
    ------
    EMPConfigError
        If an ``exempt`` entry matches no conv, or a conv cannot be pruned
        (groups > 1, a padding mode other than zeros) and is not exempt.

    Examples
    --------
    >>> pruner = ErrorMapPruner(model, EMPConfig(keep_ratio=0.3))
    >>> loss.backward()                       # pruned conv backward
    >>> stats = pruner.pop_stats()            # {"layer1.0.conv1": LayerStats(...), ...}
    >>> pruner.remove()                       # dense backward again
    """

    def __init__(self, model: nn.Module, config: EMPConfig, *, autotune: bool = True) -> None:
        self.config = config
        self.autotune = autotune
        self.enabled = True
        self._plans: dict[tuple[Any, ...], _Plan] = {}
        convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
        unmatched = [p for p in config.exempt if not fnmatch.filter(convs, p)]
        if unmatched:
            raise EMPConfigError(
                [ConfigIssue("exempt", f"{p!r} matches no conv layer; convs are {sorted(convs)}")
                 for p in unmatched],
                source="ErrorMapPruner",
            )  # fmt: skip
        exempt = {n for p in config.exempt for n in fnmatch.filter(convs, p)}
        geometries = {n: _geometry(n, m) for n, m in convs.items() if n not in exempt}
        self._layers: dict[str, _Layer] = {}
        for name, geometry in geometries.items():
            conv = convs[name]
            layer = _Layer(
                name, conv, geometry, num_kept(config.keep_ratio, conv.out_channels), self,
                conv.forward,
            )  # fmt: skip
            self._layers[name] = layer
            conv.forward = self._forward_for(layer)  # type: ignore[method-assign]
        logger.debug("EMP attached to %d convs (%d exempt)", len(self._layers), len(exempt))

    # ------------------------------------------------------------------ attach / detach
    def _forward_for(self, layer: _Layer) -> Callable[[Tensor], Tensor]:
        conv = layer.module

        def forward(x: Tensor) -> Tensor:
            weight = conv.weight
            if not (
                self.enabled
                and torch.is_grad_enabled()
                and (x.requires_grad or weight.requires_grad)
            ):
                out = layer.original_forward(x)
            else:
                out = _PrunedConv2d.apply(x, weight, conv.bias, layer)
            layer.error_elems = out[0].numel()
            return out

        return forward

    def remove(self) -> None:
        """Give every conv its original forward (dense backward) back; idempotent."""
        for layer in self._layers.values():
            if "forward" in layer.module.__dict__:
                del layer.module.forward
        self._layers.clear()

    def __enter__(self) -> ErrorMapPruner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Run dense backward inside the block (e.g. for a reference gradient)."""
        previous, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = previous

    # ------------------------------------------------------------------ introspection
    @property
    def layer_names(self) -> tuple[str, ...]:
        """Qualified names of the pruned convs, in ``named_modules()`` order."""
        return tuple(self._layers)

    def kept_indices(self) -> dict[str, Tensor]:
        """Output channels each conv kept in its last backward (sorted; all if k = C_out)."""
        return {n: l.last_kept for n, l in self._layers.items() if l.last_kept is not None}

    def kernels(self) -> dict[str, str]:
        """Kernel plan (``aten``, ``cl``, ``cl-swap``) each conv used in its last backward."""
        return {n: l.last_kernel for n, l in self._layers.items() if l.last_kernel is not None}

    # ------------------------------------------------------------------ accounting
    def pop_stats(self) -> dict[str, LayerStats]:
        """Return the per-conv statistics since the last call and reset them.

        Returns
        -------
        dict of str to LayerStats
            One entry per pruned conv (``steps == 0`` if it ran no pruned backward).
        """
        stats = {}
        for name, layer in self._layers.items():
            stats[name] = LayerStats(
                layer.c_out, layer.steps, layer.kept_sum, layer.kept_instances, layer.instances,
                layer.selection_macs,
            )  # fmt: skip
            layer.steps = layer.kept_sum = layer.kept_instances = layer.instances = 0
            layer.selection_macs = 0
        return stats

    def pop_step_cost(self, cost: ModelCost, n: int) -> StepCost:
        """Backward MACs of the passes since the last pop, from the per-instance ``cost``.

        A pruned conv costs its dense per-instance grad-input and grad-weight MACs
        × Σ(kept·batch)/C_out; every other layer, and a pruned conv that recorded
        no pruned backward (pruner disabled), costs ``n`` × its dense MACs.
        Resets the statistics like :meth:`pop_stats`.
        """
        stats = self.pop_stats()
        gi = gw = sel = 0
        for layer in cost.layers:
            s = stats.get(layer.name)
            if s is None or s.steps == 0:
                gi += n * layer.grad_input_macs
                gw += n * layer.grad_weight_macs
            else:
                gi += layer.grad_input_macs * s.kept_instances // s.c_out
                gw += layer.grad_weight_macs * s.kept_instances // s.c_out
                sel += s.selection_macs
        return StepCost(gi, gw, sel)

    def selection_macs_bound(self, n: int, cost: ModelCost | None = None) -> int:
        """Selection MACs of one backward pass over ``n`` instances (exact, not a guess).

        δ sizes come from ``cost`` (a conv's forward MACs / (C_in·k_H·k_W) per
        instance) or, without it, from the last forward through each conv.

        Raises
        ------
        ValueError
            If ``cost`` is None and some conv has not run forward yet.
        """
        total = 0
        for layer in self._layers.values():
            if layer.k >= layer.c_out:
                continue
            w = layer.module.weight
            if cost is not None:
                elems = cost.layer(layer.name).forward_macs // (w[0].numel())
            elif layer.error_elems is not None:
                elems = layer.error_elems
            else:
                raise ValueError(
                    f"EMP cannot bound the selection cost: conv {layer.name!r} has not run "
                    "forward yet; pass cost=model_cost(model, input_shape)"
                )
            total += n * elems + w.numel() + 4 * layer.c_out
        return total

    # ------------------------------------------------------------------ kernels
    def _backward(
        self,
        layer: _Layer,
        grad_out: Tensor,
        x: Tensor,
        weight: Tensor,
        idx: Tensor | None,
        mask: tuple[bool, bool, bool],
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        g = layer.geometry
        key = (
            tuple(x.shape[1:]), 1 << (x.shape[0] - 1).bit_length(), tuple(weight.shape), g,
            layer.k, mask, x.dtype, x.is_contiguous(), grad_out.is_contiguous(),
        )  # fmt: skip
        plan = self._plans.get(key)
        if plan is None and not self.autotune:
            plan = self._plans[key] = _CL_SWAP if g.swappable else _CL_DIRECT
        if plan is None:
            plan, grads = self._tune(grad_out, x, weight, idx, g, mask)
            self._plans[key] = plan
        else:
            grads = _run_plan(plan, grad_out, x, weight, idx, g, mask)
        layer.last_kernel = plan.name
        return grads

    def _tune(
        self,
        grad_out: Tensor,
        x: Tensor,
        weight: Tensor,
        idx: Tensor | None,
        g: _Geometry,
        mask: tuple[bool, bool, bool],
    ) -> tuple[_Plan, tuple[Tensor | None, Tensor | None, Tensor | None]]:
        """Time every candidate plan; return the fastest and its gradients."""
        candidates = _candidates(g)
        times: dict[str, list[float]] = {p.name: [] for p in candidates}
        results = {}
        for plan in candidates:  # warm-up: kernel selection, page faults
            _run_plan(plan, grad_out, x, weight, idx, g, mask)
        for _ in range(_AUTOTUNE_ROUNDS):
            for plan in candidates:
                start = time.perf_counter()
                results[plan.name] = _run_plan(plan, grad_out, x, weight, idx, g, mask)
                times[plan.name].append(time.perf_counter() - start)
        best = min(candidates, key=lambda p: statistics.median(times[p.name]))
        logger.debug(
            "EMP kernel for x %s, W %s, k=%d: %s (%s)", tuple(x.shape), tuple(weight.shape),
            len(idx) if idx is not None else weight.shape[0], best.name,
            ", ".join(f"{n}={1e3 * statistics.median(t):.2f} ms" for n, t in times.items()),
        )  # fmt: skip
        return best, results[best.name]

