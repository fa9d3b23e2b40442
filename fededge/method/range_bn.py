"""Range batch norm (Banner et al. 2018): batch norm with the variance replaced by a range.

Used by quantized training (:mod:`fededge.method.quantize`, ``range_bn``), which
switches every ``nn.BatchNorm2d`` of a model to :class:`RangeBatchNorm2d` in
place while it is attached.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["CHUNKS", "RangeBatchNorm2d", "range_scale"]

CHUNKS = 10
"""Default number of sample groups whose ranges Range BN averages (Banner et al.'s code)."""


def range_scale(n: int) -> float:
    """C(n) = 1 / (2·sqrt(2·ln n)): Range BN's factor from range to standard deviation.

    For n samples of a Gaussian N(μ, σ²) the expected maximum is about
    μ + σ·sqrt(2 ln n) (the extreme-value argument Banner et al. use), so the
    range max - min, spanning both tails, is about 2σ·sqrt(2 ln n), and
    C(n)·range ≈ σ (measured on Gaussian samples: 0.81σ for n = 64, 0.91σ for n = 10^5).
    """
    if n < 2:
        raise ValueError(f"Range BN needs at least 2 values per channel, got {n}")
    return 1.0 / (2.0 * math.sqrt(2.0 * math.log(n)))


class RangeBatchNorm2d(nn.BatchNorm2d):
    """Range batch norm (Banner et al. 2018): the variance replaced by a scaled range.

    In training, per channel c: the mini-batch is split along the batch
    dimension into ``chunks`` groups of samples (``torch.tensor_split``; fewer when
    the batch is too small for every group to hold 2 values of a channel),
    group k holding n_k values of the channel, and::

        μ_c = mean(x_c),  s_c = mean_k C(n_k)·(max x_c,k - min x_c,k),
        y = γ_c·(x - μ_c)/(s_c + ε) + β_c

    with C(n) from :func:`range_scale`. Max and min need only comparisons (no
    squares, no square root), and an outlier moves s_c linearly, not
    quadratically -- the tolerance to quantization noise Banner et al. report.
    Gradients flow through μ and through the max and min elements of every
    group. Averaging the ranges of groups is what Banner et al.'s reference
    implementation does (10 groups): with a single range (``chunks = 1``) the
    whole scale gradient of a channel lands on 2 of its values, and on
    CIFAR-10/ResNet-20 the training gradient then differs from batch norm's
    by 0.86 of its norm (10 groups: see ``bench/quant_grad_error.py``).
    ``running_var`` tracks s_c² (so ``sqrt(running_var)`` estimates s_c) and
    evaluation is plain batch norm on the running statistics; parameters,
    buffers and state-dict keys are those of ``nn.BatchNorm2d``. Momentum
    (including None, a cumulative average) works as in ``nn.BatchNorm2d``.
    """

    chunks: int = CHUNKS
    """Groups of samples whose ranges are averaged (per instance; set by the quantizer)."""

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` by its range-based batch statistics (the running ones in eval mode)."""
        if not self.training and self.track_running_stats:
            return super().forward(x)
        if x.dim() != 4:
            raise ValueError(f"RangeBatchNorm2d expects (N, C, H, W) input, got {tuple(x.shape)}")
        dims = (0, 2, 3)
        mean = x.mean(dim=dims)  # (C,)
        per_sample = x.shape[2] * x.shape[3]  # values of a channel in one sample
        k = min(self.chunks, x.shape[0] if per_sample >= 2 else x.shape[0] // 2)
        groups = torch.tensor_split(x, max(k, 1), dim=0)  # sizes differ by at most 1
        scale = torch.stack(
            [
                range_scale(g.numel() // x.shape[1]) * (g.amax(dim=dims) - g.amin(dim=dims))
                for g in groups
            ]
        ).mean(dim=0)  # (C,)
        if self.training and self.track_running_stats:
            assert self.num_batches_tracked is not None
            assert self.running_mean is not None and self.running_var is not None
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(scale.detach() ** 2, factor)
        shape = (1, -1, 1, 1)
        y = (x - mean.view(shape)) / (scale.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y
