"""8-bit training as a saver: Banner et al. 2018, simulated by fake quantization.

docs/method.md §3: the paper's "96%" results combine EIF and EMP with the 8-bit training
scheme of Banner, Hubara, Hoffer and Soudry, *Scalable methods for 8-bit training
of neural networks* (NeurIPS 2018). This CPU has no int8 training kernels, so the
scheme is **simulated** in float32 by quantize-dequantize ("fake quantization"):
each tensor is rounded onto the grid of a b-bit integer and scaled back. The
saving is therefore *counted* (see "Cost" below), not timed.

What is quantized, for every ``nn.Conv2d`` and ``nn.Linear`` not ``exempt``:

==============  ==========================  ======  ===============  ===================
tensor          role                        bits    range            rounding
==============  ==========================  ======  ===============  ===================
W               weights, every forward      8       max-abs (±)      nearest
x               the layer's input           8       min-max          nearest
δ = ∂L/∂y       error map (layer gradient)  8       max-abs (±)      stochastic
∂L/∂W           weight gradient             16      max-abs (±)      stochastic
==============  ==========================  ======  ===============  ===================

* Forward: ``y = layer(Q(x), Q(W))``. The backward of the rounding is the identity
  (straight-through estimator): ∂L/∂W and ∂L/∂x are taken at the quantized
  point and applied to the float32 master weights by the optimizer.
* Backward: δ is quantized by a hook on the layer's output *before* the layer's
  backward runs, so both backward products (grad-input δ·Wᵀ and grad-weight
  x ⋆ δ) read the 8-bit δ -- with EMP on, EMP's pruned backward receives it.
  Banner et al. *bifurcate* δ: 8 bits for the grad-input product, 16 bits for
  the grad-weight product. EMP (:mod:`fededge.method.error_map`) runs both products
  from one δ, so here the grad-weight product reads the 8-bit δ (less precise
  than Banner's) and its result ∂L/∂W is rounded to ``grad_bits``. The cost is
  still charged at Banner's widths (activation_bits x 16): the simulation is at
  most as precise as the paper's scheme and the charge at least as high.
* Batch norm: ``range_bn`` switches every ``nn.BatchNorm2d`` to
  :class:`~fededge.method.range_bn.RangeBatchNorm2d` (Range BN) for as long as the quantizer is
  attached; its scale is the mean range of ``range_bn_chunks`` groups of samples
  (10, as in Banner et al.'s code: with one range per mini-batch, ResNet-20 lost
  2.1 pt on CIFAR-10 against float32, with 10 groups 0.9 pt). Batch-norm arithmetic,
  pooling, residual adds and the optimizer step stay in float32.
* The filter net of EIF is quantized the same way (``include_filter``), whole:
  ``exempt`` names layers of the main net.

Rounding. Round to nearest is ``torch.round`` (ties to even). Stochastic
rounding of ``v`` (in units of the grid step) is ``floor(v + u)``, ``u ~ U[0, 1)``
from the quantizer's seeded generator: it returns one of the two neighbours
``floor(v)``, ``ceil(v)``, the upper with probability ``v - floor(v)``, so its
expectation is ``v`` (unbiased: small gradients are not flushed to zero on average).

Ranges, per tensor (or per slice along ``dim``), for b bits:

* max-abs (signed tensors): ``L = 2^(b-1) - 1``, step ``Δ = max|x| / L``,
  ``Q(x) = Δ·clamp(round(x/Δ), -L, L)``; 0 and ±max|x| are exact; all-zero stays 0.
* min-max (activations): ``Δ = (max x - min x) / (2^b - 1)``,
  ``Q(x) = min x + Δ·round((x - min x)/Δ)``; both extremes are exact (so is 0
  after a ReLU, where min x = 0); a constant tensor is returned unchanged.

Cost, in 32-bit-equivalent MACs. A MAC whose operands have a and b bits costs
``a·b / 32²`` of a 32x32-bit MAC: an 8x8 MAC 1/16, an 8x16 MAC 1/8. Reason: an
array multiplier has a·b partial-product cells, so its area and energy grow with
the product of the operand widths. Horowitz's energy table (ISSCC 2014,
"Computing's energy problem", 45 nm, 0.9 V) gives an 8-bit integer multiply
0.2 pJ against 3.1 pJ for a 32-bit integer multiply (1/15.5; the rule says 1/16)
and 3.7 pJ for a 32-bit float multiply (1/18.5); a 16-bit float multiply 1.1 pJ
(0.30 of the 32-bit float one; the rule's 16x16 gives 1/4). The rule ignores the
accumulator's adds (a 32-bit integer add: 0.1 pJ) and memory traffic (which
dominates real energy), so it is a statement about arithmetic only.
Widths charged per product of a quantized layer:

* forward: weight_bits x activation_bits (8x8: 1/16);
* grad-input: error_bits x weight_bits (8x8: 1/16);
* grad-weight: activation_bits x max(error_bits, grad_bits) (8x16: 1/8).

Every other MAC (batch norm, pooling, residual adds, EMP's channel selection,
exempt layers) is charged as 32x32 (1). The :class:`~fededge.cost.ledger.Ledger`
keeps its exact MAC counts unchanged and adds the low-bit MACs by product and
``precision_saved_macs`` = Σ low-bit MACs x (1 - a·b/32²), so that
``spent_macs_32eq = spent_macs - precision_saved_macs``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from fededge.errors import ConfigIssue, SettingsError
from fededge.method.fake_quant import (
    FakeQuant,
    quantize_max_abs,
    quantize_min_max,
    round_stochastic,
)
from fededge.method.range_bn import CHUNKS, RangeBatchNorm2d

if TYPE_CHECKING:
    from fededge.cost.flops import ModelCost
    from fededge.cost.ledger import Ledger
    from fededge.method.error_map import ErrorMapPruner

__all__ = [
    "FULL_BITS",
    "LowBitMacs",
    "ModelQuantizer",
    "QuantConfig",
    "QuantConfigError",
    "mac_cost_32eq",
    "quantize_max_abs",
    "quantize_min_max",
    "round_stochastic",
]

FULL_BITS = 32
"""A width of 32 bits means "not quantized" (float32)."""


class QuantConfigError(SettingsError):
    """Invalid quantization settings (:class:`~fededge.errors.ConfigError`, ValueError)."""


@dataclass(frozen=True)
class QuantConfig:
    """Parameters of quantized training (defaults: Banner et al. 2018).

    Parameters
    ----------
    weight_bits, activation_bits, error_bits : int
        Bits of the weights, of the layers' inputs and of the error maps δ:
        2 to 16, or 32 for "not quantized".
    grad_bits : int
        Bits of the weight gradients (and the width the grad-weight MACs are
        charged at, see the module docstring): 2 to 16, or 32.
    stochastic : bool
        Stochastic rounding for δ and weight gradients (else round to nearest).
    range_bn : bool
        Replace batch norm's variance by Range BN's scaled range.
    range_bn_chunks : int
        Groups of samples whose ranges Range BN averages (>= 1; Banner et al.'s
        code: 10; see :class:`~fededge.method.range_bn.RangeBatchNorm2d`).
    weight_per_channel : bool
        One max-abs range per output channel of W instead of one per tensor.
    exempt : tuple of str
        Conv/linear layers of the main net kept in float32: qualified names
        (``"conv1"``, ``"fc3"``) or :mod:`fnmatch` patterns; each must match one.
    include_filter : bool
        Quantize EIF's filter net too (all of its conv/linear layers).

    Raises
    ------
    QuantConfigError
        Listing every invalid field with the value received.
    """

    weight_bits: int = 8
    activation_bits: int = 8
    error_bits: int = 8
    grad_bits: int = 16
    stochastic: bool = True
    range_bn: bool = True
    range_bn_chunks: int = CHUNKS
    weight_per_channel: bool = False
    exempt: tuple[str, ...] = ()
    include_filter: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.exempt, list):
            object.__setattr__(self, "exempt", tuple(self.exempt))
        issues = []
        for name in ("weight_bits", "activation_bits", "error_bits", "grad_bits"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not (2 <= value <= 16 or value == FULL_BITS)
            ):
                issues.append(ConfigIssue(name, f"must be an integer 2..16 or 32, got {value!r}"))
        chunks = self.range_bn_chunks
        if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
            issues.append(
                ConfigIssue("range_bn_chunks", f"must be an integer >= 1, got {chunks!r}")
            )
        for name in ("stochastic", "range_bn", "weight_per_channel", "include_filter"):
            if not isinstance(getattr(self, name), bool):
                value = getattr(self, name)
                issues.append(ConfigIssue(name, f"must be true or false, got {value!r}"))
        if not isinstance(self.exempt, tuple) or not all(
            isinstance(p, str) and p for p in self.exempt
        ):
            issues.append(
                ConfigIssue("exempt", f"must be a tuple of non-empty strings, got {self.exempt!r}")
            )
        if issues:
            raise QuantConfigError(issues, source="QuantConfig")

    @property
    def forward_bits(self) -> tuple[int, int]:
        """Operand widths of a forward MAC: (weight, activation)."""
        return self.weight_bits, self.activation_bits

    @property
    def grad_input_bits(self) -> tuple[int, int]:
        """Operand widths of a grad-input MAC: (error, weight)."""
        return self.error_bits, self.weight_bits

    @property
    def grad_weight_bits(self) -> tuple[int, int]:
        """Operand widths charged for a grad-weight MAC: (activation, max(error, grad))."""
        return self.activation_bits, max(self.error_bits, self.grad_bits)


def mac_cost_32eq(a_bits: int, b_bits: int) -> float:
    """Cost of one a-bit x b-bit MAC in 32x32-bit MACs: ``a·b / 32²`` (8x8: 1/16)."""
    return a_bits * b_bits / FULL_BITS**2


@dataclass(frozen=True)
class LowBitMacs:
    """MACs done with quantized operands, by product (per instance or per step)."""

    forward_macs: int = 0
    grad_input_macs: int = 0
    grad_weight_macs: int = 0

    def times(self, n: int) -> LowBitMacs:
        """These MACs for ``n`` instances."""
        return LowBitMacs(
            n * self.forward_macs, n * self.grad_input_macs, n * self.grad_weight_macs
        )

    def forward_only(self) -> LowBitMacs:
        """The forward part (a forward pass without backward)."""
        return LowBitMacs(self.forward_macs)


class ModelQuantizer:
    """Quantized training for every non-exempt ``nn.Conv2d`` / ``nn.Linear`` of a model.

    Attaches hooks (removed by :meth:`remove`), so the model's own forward -- or
    the one EMP gave a conv -- runs unchanged on quantized tensors:

    * a forward pre-hook quantizes the layer's input and, for the duration of
      the call, exposes the quantized weight as ``layer.weight`` (the float32
      Parameter is put back by a forward hook that runs even on errors; the
      state dict, the optimizer and ``model.parameters()`` only ever see it);
    * the forward hook registers a gradient hook on the layer's output that
      quantizes the error map δ before the layer's backward reads it;
    * a gradient hook on each weight Parameter rounds ∂L/∂W to ``grad_bits``;
    * with ``range_bn``, each ``nn.BatchNorm2d`` becomes a
      :class:`~fededge.method.range_bn.RangeBatchNorm2d` in place (its class is switched, as
      ``torch.nn.utils.parametrize`` does; same object, parameters and buffers)
      and is switched back on :meth:`remove`.

    Parameters
    ----------
    model : nn.Module
        The network (quantized in place until :meth:`remove`).
    config : QuantConfig
        Bit widths, rounding, Range BN and exempt layers.
    seed : int
        Seeds the stochastic rounding.

    Raises
    ------
    QuantConfigError
        If an ``exempt`` entry matches no conv or linear layer.
    """

    def __init__(self, model: nn.Module, config: QuantConfig, *, seed: int = 0) -> None:
        layers = {
            name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)
        }
        unmatched = [p for p in config.exempt if not fnmatch.filter(layers, p)]
        if unmatched:
            raise QuantConfigError(
                [
                    ConfigIssue("exempt", f"{p!r} matches no conv or linear layer; they are "
                                f"{sorted(layers)}")
                    for p in unmatched
                ],
                source="ModelQuantizer",
            )  # fmt: skip
        exempt = {name for p in config.exempt for name in fnmatch.filter(layers, p)}
        self.config = config
        self.seed = seed
        self._layers = {name: m for name, m in layers.items() if name not in exempt}
        self._generators: dict[torch.device, torch.Generator] = {}
        self._masters: dict[nn.Module, nn.Parameter] = {}
        self._handles: list[RemovableHandle] = []
        self._range_bn: list[nn.BatchNorm2d] = []
        for module in self._layers.values():
            self._handles.append(module.register_forward_pre_hook(self._before))
            self._handles.append(module.register_forward_hook(self._after, always_call=True))
            weight = module.weight
            if config.grad_bits < FULL_BITS and weight.requires_grad:
                handle = weight.register_hook(self._quantize_weight_grad)  # type: ignore[no-untyped-call]
                self._handles.append(handle)
        if config.range_bn:
            for bn in model.modules():
                if type(bn) is nn.BatchNorm2d:
                    bn.__class__ = RangeBatchNorm2d
                    cast(RangeBatchNorm2d, bn).chunks = config.range_bn_chunks
                    self._range_bn.append(bn)

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Qualified names of the quantized layers, in ``named_modules()`` order."""
        return tuple(self._layers)

    def remove(self) -> None:
        """Detach every hook and give batch norm back its class; idempotent."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module in self._range_bn:
            module.__class__ = nn.BatchNorm2d
            del module.chunks
        self._range_bn.clear()
        self._layers.clear()

    def __enter__(self) -> ModelQuantizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # ------------------------------------------------------------------ hooks
    def _generator(self, device: torch.device) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = torch.Generator(device=device).manual_seed(self.seed)
            self._generators[device] = gen
        return gen

    def _before(self, module: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
        cfg = self.config
        x, *rest = inputs
        if cfg.activation_bits < FULL_BITS:
            bits = cfg.activation_bits
            x = FakeQuant.apply(x, lambda t: quantize_min_max(t, bits))
        if cfg.weight_bits < FULL_BITS:
            bits, dim = cfg.weight_bits, (0 if cfg.weight_per_channel else None)
            master = module._parameters["weight"]
            assert master is not None
            self._masters[module] = master
            quantized = FakeQuant.apply(master, lambda t: quantize_max_abs(t, bits, dim=dim))
            module._parameters["weight"] = cast(nn.Parameter, quantized)  # for this call only
        return (x, *rest)

    def _after(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        master = self._masters.pop(module, None)
        if master is not None:
            module._parameters["weight"] = master
        if (
            self.config.error_bits < FULL_BITS
            and isinstance(output, Tensor)
            and output.requires_grad
        ):
            output.register_hook(self._quantize_error)  # type: ignore[no-untyped-call]

    def _quantize_error(self, grad: Tensor) -> Tensor:
        cfg = self.config
        return quantize_max_abs(
            grad, cfg.error_bits, stochastic=cfg.stochastic, generator=self._generator(grad.device)
        )

    def _quantize_weight_grad(self, grad: Tensor) -> Tensor:
        cfg = self.config
        return quantize_max_abs(
            grad, cfg.grad_bits, stochastic=cfg.stochastic, generator=self._generator(grad.device)
        )

    # ------------------------------------------------------------------ accounting
    def lowbit_macs(self, cost: ModelCost) -> LowBitMacs:
        """Per-instance MACs of the quantized layers in ``cost``, by product."""
        layers = [layer for layer in cost.layers if layer.name in self._layers]
        return LowBitMacs(
            sum(layer.forward_macs for layer in layers),
            sum(layer.grad_input_macs for layer in layers),
            sum(layer.grad_weight_macs for layer in layers),
        )

    def step_lowbit_macs(
        self,
        cost: ModelCost,
        n: int,
        grad_input_macs: int,
        grad_weight_macs: int,
        pruner: ErrorMapPruner | None = None,
    ) -> LowBitMacs:
        """Low-bit MACs of one training step on ``n`` instances.

        Without EMP: ``n`` x :meth:`lowbit_macs`. With EMP the step's backward
        MACs (``grad_input_macs``, ``grad_weight_macs``, as EMP accounted them)
        minus those of the float32 layers: ``n`` x dense for layers EMP does not
        prune (batch norm, pooling, adds, linear) and, for an exempt conv EMP
        prunes, dense x (kept channels x n) / C_out as in
        :meth:`~fededge.method.error_map.ErrorMapPruner.pop_step_cost`.
        """
        per = self.lowbit_macs(cost)
        if pruner is None:
            return per.times(n)
        pruned = set(pruner.layer_names)
        kept = pruner.kept_indices() if pruned else {}
        fp_gi = fp_gw = 0
        for layer in cost.layers:
            if layer.name in self._layers:
                continue
            if layer.name in pruned and layer.name in kept and layer.out_channels:
                share = len(kept[layer.name]) * n
                fp_gi += layer.grad_input_macs * share // layer.out_channels
                fp_gw += layer.grad_weight_macs * share // layer.out_channels
            else:
                fp_gi += n * layer.grad_input_macs
                fp_gw += n * layer.grad_weight_macs
        return LowBitMacs(n * per.forward_macs, grad_input_macs - fp_gi, grad_weight_macs - fp_gw)

    def precision_saved_macs(self, macs: LowBitMacs) -> float:
        """32-bit-equivalent MACs saved: Σ over products of MACs x (1 - a·b/32²)."""
        cfg = self.config
        return (
            macs.forward_macs * (1.0 - mac_cost_32eq(*cfg.forward_bits))
            + macs.grad_input_macs * (1.0 - mac_cost_32eq(*cfg.grad_input_bits))
            + macs.grad_weight_macs * (1.0 - mac_cost_32eq(*cfg.grad_weight_bits))
        )

    def charge(self, ledger: Ledger, macs: LowBitMacs) -> None:
        """Add low-bit MACs and their precision saving to ``ledger``."""
        ledger.lowbit_forward_macs += macs.forward_macs
        ledger.lowbit_grad_input_macs += macs.grad_input_macs
        ledger.lowbit_grad_weight_macs += macs.grad_weight_macs
        ledger.precision_saved_macs += self.precision_saved_macs(macs)
