"""Building blocks of the CNNs: pooling, the residual addition and shortcut, a ResNet block.

Every operation that costs MACs is a module (the residual addition is
:class:`ResidualAdd`), so :mod:`fededge.cost.flops` can count it with forward hooks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fededge.errors import ModelError

# --------------------------------------------------------------------------- building blocks


def _max_pool_2x2(x: torch.Tensor, ceil_mode: bool) -> torch.Tensor:
    """2x2, stride-2 max pooling as the maximum of the windows' four strided corners."""
    height, width = x.shape[-2:]
    if height % 2 or width % 2:
        if ceil_mode:  # the last window hangs over the edge: pad it with -inf
            x = F.pad(x, (0, width % 2, 0, height % 2), value=-math.inf)
        else:  # the last row / column belongs to no window
            x = x[..., : height - height % 2, : width - width % 2]
    top = torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2])
    return torch.maximum(top, torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2]))


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` with a faster inference path for 2x2 windows at stride 2.

    PyTorch's CPU ``max_pool2d`` on NCHW maps runs a scalar loop: on the 2-core
    reference machine (one thread) pooling LeNet-5's first map of a 64-instance
    batch (64 x 6 x 28 x 28) took 3.4 ms, against 0.5 ms for three elementwise
    ``maximum`` of the windows' four strided corners (the second map: 1.2 vs
    0.2 ms). Where no gradient is needed (the filter's inference on every streamed
    instance, the sampled forwards, evaluation) that path runs; it computes the
    same values (a maximum is exact), so the numbers are bitwise equal
    (``tests/test_models.py``). With a gradient, and for other window settings,
    ``max_pool2d`` runs (a backward through saved argmax indices was not faster).
    It stays an ``nn.MaxPool2d``, so MAC counting and state dicts are unchanged.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        # the window settings are fixed: which path can run is decided once
        self._corners = (
            self.kernel_size in (2, (2, 2))
            and self.stride in (2, (2, 2))
            and self.padding in (0, (0, 0))
            and self.dilation in (1, (1, 1))
            and not self.return_indices
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The module's output for a batch."""
        if (
            self._corners
            and x.dim() in (3, 4)
            and not (x.requires_grad and torch.is_grad_enabled())
        ):
            return _max_pool_2x2(x, self.ceil_mode)
        out: torch.Tensor = super().forward(x)
        return out


class ResidualAdd(nn.Module):
    """Elementwise sum of the residual branch and the shortcut, ``y = a + b``.

    A module (not an inline ``+``) so that cost hooks see it.
    """

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The module's output for a batch."""
        return a + b


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut of He et al. 2016: parameter-free, no arithmetic.

    Subsamples with ``stride`` (keeps every ``stride``-th pixel, like a 1x1 average
    pool of stride 2 in fb.resnet.torch) and appends ``out_channels - in_channels``
    zero channels.

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts before and after; ``out_channels >= in_channels``.
    stride : int
        Spatial subsampling factor.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ModelError(
                f"ZeroPadShortcut can only add channels: got {in_channels} -> {out_channels}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The module's output for a batch."""
        x = x[:, :, :: self.stride, :: self.stride]  # (B, C_in, H/s, W/s)
        return F.pad(x, (0, 0, 0, 0, 0, self.out_channels - self.in_channels))

    def extra_repr(self) -> str:
        """What ``print(module)`` shows beside the name."""
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (He et al. 2016, CIFAR).

    ``relu2(add(bn2(conv2(relu1(bn1(conv1(x))))), shortcut(x)))``; the shortcut is
    the identity, or a :class:`ZeroPadShortcut` (option A) when the block changes
    the stride or the channel count.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels entering and leaving the block.
    stride : int
        Stride of the first convolution (2 at the start of stages 2 and 3).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.shortcut = ZeroPadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()
        self.add = ResidualAdd()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The module's output for a batch."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        y: torch.Tensor = self.relu2(self.add(out, self.shortcut(x)))
        return y


def _kaiming_init(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convs; BN weight 1, bias 0; Linear keeps PyTorch's."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _check_positive(what: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{what} must be a positive integer, got {value!r}")


# --------------------------------------------------------------------------- main networks


