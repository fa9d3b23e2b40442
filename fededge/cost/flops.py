"""Exact per-instance cost of a network's forward and backward pass, in MACs.

Unit: **MACs** (multiply-accumulates) everywhere. One multiply-accumulate counts 1;
a lone elementwise add or multiply also counts 1. (FLOPs ≈ 2 x MACs for the
convolution and matrix products; ``torch.utils.flop_counter`` reports those FLOPs.)
The paper (Wu et al. 2020, §4 of ``docs/method.md``) counted with THOP, which also counts
MACs; we follow THOP's conventions where it has one and say where we depart.

Costs are per **instance** (one input image) and split three ways, because the
savers act on them separately:

- ``forward_macs`` — the forward pass;
- ``grad_input_macs`` — backward, the gradient with respect to the layer's input
  (the "error map" passed down); counted only if the layer's input requires grad:
  the first layer of a network reads the data, which does not, and PyTorch skips
  that product (``convolution_backward`` with ``output_mask[0] = False``);
- ``grad_weight_macs`` — backward, the gradient with respect to the layer's
  weights; counted only if the weight requires grad (frozen layers cost nothing).

Formulas, per instance, for a layer whose output has E_out elements and input E_in:

==========  ====================================  ====================  ==================
kind        forward                               grad-input            grad-weight
==========  ====================================  ====================  ==================
conv        H_out·W_out·C_out·(C_in/g)·k_H·k_W    = forward             = forward
linear      R·N_in·N_out (R rows, 1 for (B, N))   = forward             = forward
bn          4·E (2 if not affine)                 4·E (+2·E, see below) 2·E
act (ReLU)  0                                     0                     —
pool (max)  0                                     0                     —
pool (avg)  Σ over outputs of the window size     = forward             —
add         (n_inputs − 1)·E_out                  0                     —
==========  ====================================  ====================  ==================

- **conv** (THOP, ``FlopCounterMode``): one MAC per weight per output position; g =
  groups. The bias add is not counted (neither THOP nor ``FlopCounterMode`` does;
  our ResNets and VGG have no conv bias). The input gradient is the transposed
  convolution of the error map with the weights and the weight gradient the
  correlation of the input with the error map: each pairs exactly the operands the
  forward pass paired, so each costs the forward's MACs.
- **linear** (THOP): N_in·N_out per row; bias not counted. Backward: one matrix
  product each for the input and the weight gradient.
- **bn** (batch norm, training): forward 4 per element as THOP counts an affine
  norm (normalise ``(x − μ)·σ⁻¹``: 2; scale and shift ``γ·x̂ + β``: 2); THOP leaves
  out the batch statistics and so do we. Backward (THOP has no backward) with
  g = ∂L/∂y: grad-weight ``∂γ = Σ g·x̂`` (1 MAC) and ``∂β = Σ g`` (1 add), 2 per
  element; grad-input ``γσ⁻¹·(g − mean(g) − x̂·mean(g·x̂))``, 4 per element, plus the
  two reductions (2 per element) when grad-weight does not already compute them
  (frozen or non-affine BN). Running-statistics updates are per channel: not counted.
- **act**: ReLU and ReLU6 are comparisons and selections, not adds or multiplies:
  0 (THOP's ``zero_ops``), and their backward (a select) 0 too.
- **pool**: max pooling compares: 0 forward (THOP) and 0 backward (a scatter).
  Average pooling sums each window and scales once: window size per output
  (k_H·k_W for ``AvgPool2d``; the exact adaptive windows for ``AdaptiveAvgPool2d``).
  THOP counts 1 (fixed) or window + 1 (adaptive) per output; the difference is
  at most one op per output element. Its input gradient spreads each error back
  over its window: the transposed operation, the same count.
- **add** (:class:`fededge.models.ResidualAdd`): one add per output element per
  extra operand; the backward hands the error map to both operands unchanged: 0.
  THOP does not see residual additions written inline as ``a + b``.

Modules that only move data (``Identity``, ``Flatten``, ``Dropout``, the option-A
:class:`fededge.models.ZeroPadShortcut`) cost 0 and get no :class:`LayerCost`.
Only modules are seen: arithmetic written inline in a ``forward()`` is invisible,
which is why the residual addition is a module. A leaf module of any other type
raises :class:`fededge.errors.ModelError` rather than being silently ignored.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import torch
from torch import nn

from fededge.errors import ModelError
from fededge.models import ResidualAdd, ZeroPadShortcut

__all__ = [
    "BN_FORWARD_MACS_PER_ELEMENT",
    "BN_GRAD_INPUT_MACS_PER_ELEMENT",
    "BN_GRAD_WEIGHT_MACS_PER_ELEMENT",
    "KINDS",
    "LayerCost",
    "ModelCost",
    "model_cost",
]

KINDS: tuple[str, ...] = ("conv", "linear", "bn", "act", "pool", "add")
"""Layer kinds, in the order :meth:`ModelCost.by_kind` reports them."""

BN_FORWARD_MACS_PER_ELEMENT = 4
"""Affine batch norm forward: ``(x − μ)·σ⁻¹`` then ``γ·x̂ + β`` (THOP's count)."""
BN_GRAD_INPUT_MACS_PER_ELEMENT = 4
"""Batch norm input gradient given the two per-channel reductions."""
BN_GRAD_WEIGHT_MACS_PER_ELEMENT = 2
"""Batch norm ``∂γ = Σ g·x̂`` and ``∂β = Σ g``: the two per-channel reductions."""

_ZERO_COST = (nn.Identity, nn.Flatten, nn.Dropout, nn.Dropout2d, ZeroPadShortcut)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6)
_MAX_POOLS = (nn.MaxPool2d, nn.AdaptiveMaxPool2d)


class _Macs(NamedTuple):
    kind: str
    forward: int
    grad_input: int
    grad_weight: int


@dataclass(frozen=True)
class LayerCost:
    """Per-instance cost of one module, in MACs.

    Attributes
    ----------
    name : str
        The module's qualified name in ``model.named_modules()`` (e.g.
        ``"layer2.0.conv1"``), so costs map back onto modules.
    kind : str
        One of :data:`KINDS`: ``"conv"``, ``"linear"``, ``"bn"``, ``"act"``,
        ``"pool"``, ``"add"``.
    forward_macs : int
        Forward pass.
    grad_input_macs : int
        Backward, gradient with respect to the input (0 if the input needs none).
    grad_weight_macs : int
        Backward, gradient with respect to the weights (0 if frozen or none).
    out_channels : int or None
        Output channels (conv), output features (linear), channels (bn); else None.
    params : int
        Number of parameters the module holds.
    """

    name: str
    kind: str
    forward_macs: int
    grad_input_macs: int
    grad_weight_macs: int
    out_channels: int | None
    params: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"LayerCost.kind must be one of {KINDS}, got {self.kind!r}")
        for field in ("forward_macs", "grad_input_macs", "grad_weight_macs", "params"):
            value = getattr(self, field)
            if value < 0:
                raise ValueError(f"LayerCost.{field} must be >= 0, got {value} for {self.name!r}")

    @property
    def backward_macs(self) -> int:
        """Backward pass: grad-input + grad-weight MACs."""
        return self.grad_input_macs + self.grad_weight_macs

    @property
    def training_macs(self) -> int:
        """One training pass of one instance: forward + backward MACs."""
        return self.forward_macs + self.backward_macs


@dataclass(frozen=True)
class ModelCost:
    """Per-instance cost of a network: its :class:`LayerCost` in forward order.

    Attributes
    ----------
    layers : tuple of LayerCost
        One entry per costed module, in the order the forward pass first called it;
        names are unique.
    """

    layers: tuple[LayerCost, ...]

    def __post_init__(self) -> None:
        if len(self._index) != len(self.layers):
            names = [layer.name for layer in self.layers]
            repeated = sorted({name for name in names if names.count(name) > 1})
            raise ValueError(f"ModelCost layer names must be unique; repeated: {repeated}")

    @cached_property
    def _index(self) -> dict[str, LayerCost]:
        return {layer.name: layer for layer in self.layers}

    @property
    def forward_macs(self) -> int:
        """Forward pass MACs per instance."""
        return sum(layer.forward_macs for layer in self.layers)

    @property
    def grad_input_macs(self) -> int:
        """Backward MACs per instance spent on gradients with respect to layer inputs."""
        return sum(layer.grad_input_macs for layer in self.layers)

    @property
    def grad_weight_macs(self) -> int:
        """Backward MACs per instance spent on gradients with respect to weights."""
        return sum(layer.grad_weight_macs for layer in self.layers)

    @property
    def backward_macs(self) -> int:
        """Backward pass MACs per instance: grad-input + grad-weight."""
        return sum(layer.backward_macs for layer in self.layers)

    @property
    def training_macs(self) -> int:
        """Forward + backward MACs per instance (the optimizer step is not counted)."""
        return sum(layer.training_macs for layer in self.layers)

    @property
    def params(self) -> int:
        """Parameters held by the costed modules."""
        return sum(layer.params for layer in self.layers)

    def by_kind(self) -> dict[str, ModelCost]:
        """Split the cost by layer kind.

        Returns
        -------
        dict of str to ModelCost
            One entry per kind present, in :data:`KINDS` order; e.g.
            ``cost.by_kind()["conv"].backward_macs``.
        """
        return {
            kind: ModelCost(tuple(layer for layer in self.layers if layer.kind == kind))
            for kind in KINDS
            if any(layer.kind == kind for layer in self.layers)
        }

    def layer(self, name: str) -> LayerCost:
        """Return the cost of the module named ``name`` (as in ``named_modules()``).

        Raises
        ------
        KeyError
            If no costed module has that name (the message suggests the closest).
        """
        try:
            return self._index[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._index, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise KeyError(f"no costed layer named {name!r}{hint}") from None


# --------------------------------------------------------------------------- per-module counts

_COSTED = (
    nn.Conv2d,
    nn.Linear,
    nn.BatchNorm2d,
    *_ACTIVATIONS,
    *_MAX_POOLS,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    ResidualAdd,
)


def _adaptive_window_total(size_in: int, size_out: int) -> int:
    """Σ over the adaptive pooling windows along one axis of the window length."""
    # window i spans [floor(i·In/Out), ceil((i+1)·In/Out))
    return sum(
        -((-(i + 1) * size_in) // size_out) - (i * size_in) // size_out for i in range(size_out)
    )


def _layer_macs(module: nn.Module, inputs: tuple[Any, ...], out: torch.Tensor) -> _Macs:
    """MACs of one call of a costed leaf module on ONE instance.

    Returns (kind, forward, grad-input if the input needs grad, grad-weight if the
    weight needs grad); the caller applies the two conditions.
    """
    elements = out.numel()  # E_out
    if isinstance(module, nn.Conv2d):
        macs = elements * math.prod(module.weight.shape[1:])  # H_out·W_out·C_out·(C_in/g)·k_H·k_W
        return _Macs("conv", macs, macs, macs)
    if isinstance(module, nn.Linear):
        macs = elements * module.in_features  # R·N_out·N_in
        return _Macs("linear", macs, macs, macs)
    if isinstance(module, nn.BatchNorm2d):
        forward = (BN_FORWARD_MACS_PER_ELEMENT if module.affine else 2) * elements
        grad_input = BN_GRAD_INPUT_MACS_PER_ELEMENT * elements
        grad_weight = BN_GRAD_WEIGHT_MACS_PER_ELEMENT * elements if module.affine else 0
        if not (module.affine and module.weight.requires_grad):
            grad_input += BN_GRAD_WEIGHT_MACS_PER_ELEMENT * elements  # reductions done here
        return _Macs("bn", forward, grad_input, grad_weight)
    if isinstance(module, _ACTIVATIONS):
        return _Macs("act", 0, 0, 0)
    if isinstance(module, _MAX_POOLS):
        return _Macs("pool", 0, 0, 0)
    if isinstance(module, nn.AvgPool2d):
        kernel = module.kernel_size
        k_h, k_w = (kernel, kernel) if isinstance(kernel, int) else kernel
        macs = elements * k_h * k_w  # (k_H·k_W − 1) adds + 1 scale per output
        return _Macs("pool", macs, macs, 0)
    if isinstance(module, nn.AdaptiveAvgPool2d):
        (h_in, w_in), (h_out, w_out) = inputs[0].shape[-2:], out.shape[-2:]
        windows = _adaptive_window_total(h_in, h_out) * _adaptive_window_total(w_in, w_out)
        macs = elements // (h_out * w_out) * windows  # C · Σ window sizes
        return _Macs("pool", macs, macs, 0)
    if isinstance(module, ResidualAdd):
        return _Macs("add", (len(inputs) - 1) * elements, 0, 0)
    raise TypeError(f"no MAC count for {type(module).__name__}")  # _check_leaf rules this out


def _check_leaf(name: str, module: nn.Module) -> bool:
    """True if the leaf module is costed, False if it costs nothing; ModelError if unknown."""
    if isinstance(module, _COSTED):
        return True
    if isinstance(module, _ZERO_COST):
        return False
    raise ModelError(
        f"model_cost cannot count module {name!r} of type {type(module).__name__}: it knows "
        "Conv2d, Linear, BatchNorm2d, ReLU, ReLU6, max/avg pooling, ResidualAdd and the "
        "zero-cost Identity, Flatten, Dropout, ZeroPadShortcut; build the network from these "
        "or add a count to fededge.cost.flops"
    )


# --------------------------------------------------------------------------- model_cost


@dataclass
class _Tally:
    kind: str
    forward_macs: int = 0
    grad_input_macs: int = 0
    grad_weight_macs: int = 0


def _out_channels(module: nn.Module) -> int | None:
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.BatchNorm2d):
        return module.num_features
    return None


def model_cost(model: nn.Module, input_shape: tuple[int, int, int]) -> ModelCost:
    """Count the MACs of one training instance through ``model``, layer by layer.

    Runs one forward pass of a single all-zero instance with forward hooks on every
    leaf module, in eval mode with autograd on (even inside ``torch.no_grad``), so
    each hook sees whether its input requires grad. No backward pass runs. The
    model's train/eval flags are restored; its parameters, gradients and buffers
    (BN running statistics: eval mode leaves them alone) are not changed. Costs do
    not depend on the batch size, the train/eval mode or the weights' values;
    BN is costed as in training. About one batch-1 forward pass of time (tens of
    milliseconds for ResNet-110 on a CPU): compute it once per model and keep it.

    Parameters
    ----------
    model : nn.Module
        The network; each module called more than once is counted at every call
        (costs summed under its name).
    input_shape : tuple of int
        One instance's shape ``(C, H, W)``, without the batch dimension.

    Returns
    -------
    ModelCost
        Per-instance MACs of every costed module, in the order of the forward pass.

    Raises
    ------
    ModelError
        If ``input_shape`` is not three positive ints, the model does not accept
        that shape, or it holds a leaf module this accounting does not know.
    """
    if (
        not isinstance(input_shape, tuple)
        or len(input_shape) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape)
    ):
        raise ModelError(f"input_shape must be (C, H, W) with positive ints, got {input_shape!r}")

    costed = {
        name: module
        for name, module in model.named_modules()
        if next(module.children(), None) is None and _check_leaf(name, module)
    }

    tallies: dict[str, _Tally] = {}  # insertion order = order of first call

    def make_hook(name: str) -> Callable[[nn.Module, tuple[Any, ...], torch.Tensor], None]:
        def hook(module: nn.Module, inputs: tuple[Any, ...], out: torch.Tensor) -> None:
            macs = _layer_macs(module, inputs, out)
            weight = getattr(module, "weight", None)
            tally = tallies.setdefault(name, _Tally(macs.kind))
            tally.forward_macs += macs.forward
            if any(isinstance(x, torch.Tensor) and x.requires_grad for x in inputs):
                tally.grad_input_macs += macs.grad_input
            if isinstance(weight, torch.Tensor) and weight.requires_grad:
                tally.grad_weight_macs += macs.grad_weight

        return hook

    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    modes = [(module, module.training) for module in model.modules()]
    handles = [module.register_forward_hook(make_hook(name)) for name, module in costed.items()]
    try:
        model.eval()  # BN uses (and does not update) its running statistics
        with torch.inference_mode(False), torch.enable_grad():
            x = torch.zeros((1, *input_shape), dtype=dtype, device=device)  # (1, C, H, W)
            model(x)
    except (RuntimeError, ValueError, IndexError) as exc:
        raise ModelError(
            f"{type(model).__name__} does not accept inputs of shape {input_shape} (C, H, W): {exc}"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training

    layers = []
    for name, tally in tallies.items():
        module = costed[name]
        layers.append(
            LayerCost(
                name=name,
                kind=tally.kind,
                forward_macs=tally.forward_macs,
                grad_input_macs=tally.grad_input_macs,
                grad_weight_macs=tally.grad_weight_macs,
                out_channels=_out_channels(module),
                params=sum(p.numel() for p in module.parameters()),
            )
        )
    return ModelCost(tuple(layers))
