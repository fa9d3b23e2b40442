"""Simulated low-bit numbers: quantize-dequantize in float, with stochastic rounding.

The functions :class:`~fededge.method.quantize.ModelQuantizer` applies to
weights, activations, errors and gradients (Banner et al. 2018): a value is
rounded to one of ``2^bits`` levels and stored back as float32, so the training
computes on exactly the values a ``bits``-wide kernel would, and
:class:`FakeQuant` lets the gradient pass through the rounding unchanged
(the straight-through estimator).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["FakeQuant", "quantize_max_abs", "quantize_min_max", "round_stochastic"]


def round_stochastic(v: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``floor(v + u)``, ``u ~ U[0, 1)``: ``floor(v)`` or ``ceil(v)``, expectation ``v``."""
    noise = torch.rand(v.shape, generator=generator, dtype=v.dtype, device=v.device)
    return torch.floor(v + noise)


def _reduce(x: Tensor, dim: int | None, fn: Callable[..., Tensor]) -> Tensor:
    """``fn`` over all of x (dim None) or over every dimension but ``dim`` (kept, size 1)."""
    if dim is None:
        return fn(x)
    dims = [d for d in range(x.dim()) if d != dim % x.dim()]
    return fn(x, dim=dims, keepdim=True)


def _round(v: Tensor, stochastic: bool, generator: torch.Generator | None) -> Tensor:
    return round_stochastic(v, generator) if stochastic else torch.round(v)


def quantize_max_abs(
    x: Tensor,
    bits: int,
    *,
    dim: int | None = None,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Symmetric quantize-dequantize: ``Δ·clamp(round(x/Δ), -L, L)``, ``Δ = max|x| / L``.

    Parameters
    ----------
    x : Tensor
        Any shape.
    bits : int
        b >= 2; ``L = 2^(b-1) - 1`` levels each side of 0 (127 for 8 bits).
    dim : int, optional
        One range per slice along ``dim`` (e.g. 0: per output channel of W).
    stochastic : bool
        Stochastic rounding (:func:`round_stochastic`) instead of round to nearest.
    generator : torch.Generator, optional
        Source of the stochastic rounding's noise (on x's device).

    Returns
    -------
    Tensor
        Same shape and dtype as x, on the grid ``Δ·{-L, ..., L}``.
    """
    levels = 2 ** (bits - 1) - 1
    step = _reduce(x.abs(), dim, torch.amax) / levels
    step = torch.where(step > 0, step, torch.ones_like(step))  # all-zero slice: x/1 = 0
    return torch.clamp(_round(x / step, stochastic, generator), -levels, levels) * step


def quantize_min_max(
    x: Tensor,
    bits: int,
    *,
    dim: int | None = None,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Asymmetric quantize-dequantize: ``lo + Δ·round((x - lo)/Δ)``, ``Δ = (hi - lo)/(2^b - 1)``.

    ``lo`` and ``hi`` are the minimum and maximum of x (per slice along ``dim``);
    both are exact after quantization. Parameters as in :func:`quantize_max_abs`.
    """
    levels = 2**bits - 1
    lo = _reduce(x, dim, torch.amin)
    step = (_reduce(x, dim, torch.amax) - lo) / levels
    step = torch.where(step > 0, step, torch.ones_like(step))  # constant slice: unchanged
    return lo + torch.clamp(_round((x - lo) / step, stochastic, generator), 0, levels) * step


class FakeQuant(torch.autograd.Function):
    """``y = fn(x)`` forward; identity backward (the straight-through estimator)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        """``fn(x)``: the quantized values."""
        return fn(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        """The gradient, unchanged."""
        return grad, None
