"""Error map pruning (EMP): a channel-pruned backward pass for convolutions.

Wu et al. 2020 (``docs/method.md`` §2). In the backward pass of every pruned
``nn.Conv2d`` the error map δ = ∂L/∂out, shape (N, C_out, H_out, W_out), is
scored per output channel j, once per mini-batch, and only the top
k = ⌈α·C_out⌉ channels are back-propagated (α = ``keep_ratio``). For the other
channels **both** backward products are skipped: the input gradient is the
transposed convolution of δ[:, kept] with W[kept], and the weight (and bias)
gradient is computed for the kept filters only and scattered into a zero tensor of
the full shape. The saving is real: the kernels run on the gathered, smaller
tensors (nothing is multiplied by a mask). The first conv of a network (whose
input needs no gradient) computes no input gradient at all.

Score (the paper's s_j = γ1·‖W_j‖₁ + γ2·‖δ_j‖₁, made scale-free)::

    w_j = ‖W_j‖₁ = Σ_{c,u,v} |W[j, c, u, v]|          (the whole filter j)
    e_j = ‖δ_j‖₁ = Σ_{n,p,q} |δ[n, j, p, q]|          (summed over the batch)
    s_j = γ_w · w_j / mean_i(w_i)  +  γ_e · e_j / mean_i(e_i)

The two norms live on very different scales (w_j is O(1–10), e_j is tiny and grows
with the batch size), so each is divided by its mean over the layer's channels
(a term whose mean is 0 contributes 0). With the default γ_w = γ_e = 1 both terms
average 1; errors spread much more across channels than filter norms do, so the
ranking follows the error and the filter norm separates channels whose errors are
close. The k highest scores are kept; ties go to the lower channel index (a stable
sort) and the kept indices are sorted, so the choice is deterministic.

Cost, in MACs (:mod:`fededge.cost.flops` units): a conv's backward with k of C_out
channels kept costs k/C_out of its dense grad-input and grad-weight MACs. The
selection costs ``numel(δ) + numel(W) + 4·C_out`` per backward pass: one add per
element for each L1 norm (|·| clears a sign bit, not counted), C_out adds for
each of the two means and 2 MACs per channel for the weighted sum; the sort only
compares (not counted, like ReLU and max pooling in :mod:`fededge.cost.flops`). With
k = C_out nothing is selected and the selection costs 0.

The pruned products run on kernels chosen per case by
:class:`~fededge.method.emp_kernels.KernelPlans` (``kernels=``: autotuned online
by default, or a fixed rule or plan; see :mod:`fededge.method.emp_kernels`).
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from fededge.errors import ConfigIssue
from fededge.method.emp_config import EMPConfig, EMPConfigError
from fededge.method.emp_kernels import KERNELS, Geometry, KernelPlans, Kernels, conv_geometry

if TYPE_CHECKING:
    from fededge.cost.flops import ModelCost

__all__ = [
    "KERNELS",
    "EMPConfig",
    "EMPConfigError",
    "ErrorMapPruner",
    "KernelPlans",
    "Kernels",
    "LayerStats",
    "StepCost",
    "channel_scores",
    "kept_channels",
    "num_kept",
]

logger = logging.getLogger(__name__)


def num_kept(keep_ratio: float, c_out: int) -> int:
    """K = ⌈α·C_out⌉, at least 1 (a 1e-9 slack absorbs float error: ⌈0.3·10⌉ = 3)."""
    return max(1, min(c_out, math.ceil(keep_ratio * c_out - 1e-9)))


def channel_scores(
    grad_out: Tensor, weight: Tensor, gamma_weight: float, gamma_error: float
) -> Tensor:
    """Score s_j = γ_w·w_j/mean(w) + γ_e·e_j/mean(e) of every output channel.

    Parameters
    ----------
    grad_out : Tensor
        δ, (N, C_out, H_out, W_out), in any memory format.
    weight : Tensor
        (C_out, C_in, k_H, k_W).
    gamma_weight, gamma_error : float
        γ_w and γ_e.

    Returns
    -------
    Tensor
        (C_out,) scores, in δ's dtype.
    """
    n, c = grad_out.shape[:2]
    if grad_out.is_contiguous():  # two contiguous reductions: ~3x faster than over (0, 2, 3)
        e = grad_out.view(n, c, -1).abs().sum(dim=2).sum(dim=0)  # (C_out,) ‖δ_j‖₁
    elif grad_out.is_contiguous(memory_format=torch.channels_last):
        e = grad_out.permute(0, 2, 3, 1).reshape(-1, c).abs().sum(dim=0)
    else:
        e = grad_out.abs().sum(dim=(0, 2, 3))
    w = weight.detach().reshape(c, -1).abs().sum(dim=1).to(e.dtype)  # (C_out,) ‖W_j‖₁
    w_mean, e_mean = float(w.mean()), float(e.mean())
    w_scale = gamma_weight / w_mean if w_mean > 0 else 0.0
    e_scale = gamma_error / e_mean if e_mean > 0 else 0.0
    return torch.add(w * w_scale, e, alpha=e_scale)


def kept_channels(scores: Tensor, k: int) -> Tensor:
    """Indices of the k highest scores (ties to the lower index), sorted ascending."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:k].sort().values


@dataclass(frozen=True)
class LayerStats:
    """What one pruned conv did in the backward passes since the last pop.

    Attributes
    ----------
    c_out : int
        Output channels of the conv.
    steps : int
        Pruned backward passes recorded.
    kept_sum : int
        Σ over those passes of the channels kept.
    kept_instances : int
        Σ over those passes of (channels kept × batch size).
    instances : int
        Σ over those passes of the batch size.
    selection_macs : int
        MACs spent scoring channels (formula in the module docstring).
    """

    c_out: int
    steps: int = 0
    kept_sum: int = 0
    kept_instances: int = 0
    instances: int = 0
    selection_macs: int = 0

    @property
    def kept_fraction(self) -> float:
        """Instance-weighted fraction of channels back-propagated (1.0 if none recorded)."""
        return self.kept_instances / (self.instances * self.c_out) if self.instances else 1.0


@dataclass(frozen=True)
class StepCost:
    """Backward MACs of the whole main net since the last pop (see ``pop_step_cost``)."""

    grad_input_macs: int
    grad_weight_macs: int
    selection_macs: int


# --------------------------------------------------------------------------- autograd


@dataclass(eq=False)
class _Layer:
    """Per-conv state of a pruner: geometry, k and the counters since the last pop."""

    name: str
    geometry: Geometry
    c_out: int
    k: int
    pruner: ErrorMapPruner
    steps: int = 0
    kept_sum: int = 0
    kept_instances: int = 0
    instances: int = 0
    selection_macs: int = 0
    error_elems: int | None = None  # δ elements per instance, seen in the last forward
    last_kept: Tensor | None = None
    last_kernel: str | None = None


class _PrunedConv2d(torch.autograd.Function):
    """conv2d forward (exactly nn.Conv2d's); channel-pruned backward."""

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
        need = ctx.needs_input_grad
        mask = (bool(need[0]), bool(need[1]), bool(need[2]))
        c_out, k, n = layer.c_out, layer.k, grad_out.shape[0]
        idx = None
        if k < c_out:
            cfg = layer.pruner.config
            scores = channel_scores(grad_out, weight, cfg.gamma_weight, cfg.gamma_error)
            idx = kept_channels(scores, k)
            layer.selection_macs += grad_out.numel() + weight.numel() + 4 * c_out
        layer.last_kept = idx
        layer.steps += 1
        layer.kept_sum += k
        layer.kept_instances += k * n
        layer.instances += n
        pruner = layer.pruner
        (gi, gw_k, gb_k), layer.last_kernel = pruner.plans.run(
            pruner.kernels, layer.geometry, k, grad_out, x, weight, idx, mask
        )
        if idx is None:
            return gi, gw_k, gb_k, None
        gw = gb = None
        if gw_k is not None:  # scatter the k filters into the full weight shape
            gw = torch.zeros_like(weight).index_copy_(0, idx, gw_k.to(weight.dtype))
        if gb_k is not None:
            gb = weight.new_zeros(c_out).index_copy_(0, idx, gb_k.to(weight.dtype))
        return gi, gw, gb, None


class _PrunedForward:
    """The instance ``forward`` of a pruned conv (a plain object: deep-copies and pickles)."""

    def __init__(self, conv: nn.Conv2d, layer: _Layer) -> None:
        self.conv = conv
        self.layer = layer

    def __call__(self, x: Tensor) -> Tensor:
        conv, layer = self.conv, self.layer
        if (
            layer.pruner.enabled
            and torch.is_grad_enabled()
            and (x.requires_grad or conv.weight.requires_grad)
        ):
            out: Tensor = _PrunedConv2d.apply(x, conv.weight, conv.bias, layer)
        else:
            out = nn.Conv2d.forward(conv, x)
        layer.error_elems = out[0].numel()
        return out


# --------------------------------------------------------------------------- the pruner


class ErrorMapPruner:
    """Error map pruning for every non-exempt ``nn.Conv2d`` of a model.

    Each such conv gets an instance ``forward`` (removed by :meth:`remove`) that
    runs the same ``F.conv2d`` through an autograd function whose backward is
    pruned; other layers keep their normal autograd, and ``loss.backward()`` works
    as usual. The original forward runs, and nothing is recorded, under
    ``torch.no_grad()``, when neither the input nor the weight requires grad, or
    while :attr:`enabled` is False. Double backward is not supported.

    Parameters
    ----------
    model : nn.Module
        The main network.
    config : EMPConfig
        α, γ_w, γ_e and the exempt layers.
    kernels : {"autotune", "rule", "aten", "cl", "cl-swap", "nchw-swap"}
        How the backward kernels are chosen (see the module docstring).
    plans : KernelPlans, optional
        Where autotuned choices are kept; pass one shared object to reuse them
        across pruners. Default: a new one, owned by this pruner.

    Raises
    ------
    EMPConfigError
        If an ``exempt`` entry matches no conv, a conv cannot be pruned (groups >
        1, padding mode other than zeros, a subclass with its own forward) and is
        not exempt, or ``kernels`` is unknown.

    Examples
    --------
    >>> pruner = ErrorMapPruner(model, EMPConfig(keep_ratio=0.3))
    >>> loss.backward()                    # conv backward on the kept channels only
    >>> pruner.pop_stats()["layer1.0.conv1"].kept_fraction
    0.3125
    >>> pruner.remove()                    # dense backward again
    """

    def __init__(
        self,
        model: nn.Module,
        config: EMPConfig,
        *,
        kernels: Kernels = "autotune",
        plans: KernelPlans | None = None,
    ) -> None:
        convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
        issues = []
        if kernels not in KERNELS:
            issues.append(ConfigIssue("kernels", f"must be one of {KERNELS}, got {kernels!r}"))
        issues += [
            ConfigIssue("exempt", f"{p!r} matches no conv layer; the convs are {sorted(convs)}")
            for p in config.exempt
            if not fnmatch.filter(convs, p)
        ]
        exempt = {name for p in config.exempt for name in fnmatch.filter(convs, p)}
        geometries = {}
        for name, conv in convs.items():
            if name not in exempt:
                geometry, why = conv_geometry(name, conv)
                if geometry is None:
                    issues.append(
                        ConfigIssue(
                            f"conv {name!r}",
                            f"cannot be pruned: {why}; add {name!r} to EMPConfig.exempt",
                        )
                    )
                geometries[name] = geometry
        if issues:
            raise EMPConfigError(issues, source="ErrorMapPruner")
        self.config = config
        self.kernels = kernels
        self.enabled = True
        self.plans = plans if plans is not None else KernelPlans()
        self._layers: dict[str, _Layer] = {}
        self._modules: dict[str, nn.Conv2d] = {}
        for name, geometry in geometries.items():
            conv = convs[name]
            assert geometry is not None
            layer = _Layer(
                name, geometry, conv.out_channels, num_kept(config.keep_ratio, conv.out_channels),
                self,
            )  # fmt: skip
            conv.forward = _PrunedForward(conv, layer)  # type: ignore[method-assign,assignment]
            self._layers[name] = layer
            self._modules[name] = conv
        logger.debug("EMP on %d convs, %d exempt", len(self._layers), len(exempt))

    # ------------------------------------------------------------------ attach / detach
    def remove(self) -> None:
        """Give every conv its original forward (and dense backward) back; idempotent."""
        for conv in self._modules.values():
            conv.__dict__.pop("forward", None)
        self._modules.clear()
        self._layers.clear()

    def __enter__(self) -> ErrorMapPruner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Dense backward inside the block (e.g. for a reference gradient)."""
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
        """Output channels each conv kept in its last backward (sorted, int64)."""
        return {
            name: la.last_kept if la.last_kept is not None else torch.arange(la.c_out)
            for name, la in self._layers.items()
            if la.last_kernel is not None
        }

    def kernel_choices(self) -> dict[str, str]:
        """Plan (``aten``, ``cl``, ``cl-swap``, ``nchw-swap``) each conv used last."""
        return {n: la.last_kernel for n, la in self._layers.items() if la.last_kernel}

    # ------------------------------------------------------------------ accounting
    def pop_stats(self) -> dict[str, LayerStats]:
        """Per-conv statistics since the last call (``steps == 0``: none); resets them."""
        stats = {}
        for name, la in self._layers.items():
            stats[name] = LayerStats(
                la.c_out, la.steps, la.kept_sum, la.kept_instances, la.instances, la.selection_macs
            )
            la.steps = la.kept_sum = la.kept_instances = la.instances = la.selection_macs = 0
        return stats

    def pop_step_cost(self, cost: ModelCost, n: int) -> StepCost:
        """Backward MACs of the whole net since the last pop, from per-instance ``cost``.

        A pruned conv costs its dense per-instance grad-input and grad-weight MACs
        × Σ(kept · batch size) / C_out; every other layer — and a pruned conv that
        recorded no pruned backward (pruner disabled) — costs ``n`` × its dense
        MACs. Resets the statistics like :meth:`pop_stats`.
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

    def planned_step_cost(self, cost: ModelCost, n: int) -> StepCost:
        """What a backward over ``n`` instances will cost, before it runs.

        Each pruned conv keeps its fixed ``k`` of ``C_out`` channels for every
        instance, so this is :meth:`pop_step_cost` of that step (the same
        rule), known in advance -- what a device plans its kept share with.
        """
        gi = gw = 0
        for layer in cost.layers:
            la = self._layers.get(layer.name)
            share = (la.k, la.c_out) if la is not None and la.k < la.c_out else (1, 1)
            gi += n * layer.grad_input_macs * share[0] // share[1]
            gw += n * layer.grad_weight_macs * share[0] // share[1]
        return StepCost(gi, gw, self.selection_macs_bound(n, cost))

    def selection_macs_bound(self, n: int, cost: ModelCost | None = None) -> int:
        """Selection MACs of one backward pass over ``n`` instances (exact).

        δ sizes per instance come from ``cost`` (a conv's forward MACs divided by
        C_in·k_H·k_W) or, without it, from each conv's last forward.

        Raises
        ------
        ValueError
            If ``cost`` is None and some pruned conv has not run forward yet.
        """
        total = 0
        for name, la in self._layers.items():
            if la.k >= la.c_out:
                continue
            weight_numel = self._modules[name].weight.numel()
            if cost is not None:
                elems = cost.layer(name).forward_macs // (weight_numel // la.c_out)
            elif la.error_elems is not None:
                elems = la.error_elems
            else:
                raise ValueError(
                    f"EMP cannot bound the selection cost: conv {name!r} has not run forward "
                    "yet; pass cost=model_cost(model, input_shape)"
                )
            total += n * elems + weight_numel + 4 * la.c_out
        return total
