"""The networks: LeNet-5, the CIFAR ResNets, VGG-16, and the two filter networks.

Built by name through :func:`fededge.models.build_model` / :func:`~fededge.models.build_filter`.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from fededge.errors import ModelError
from fededge.models.layers import (
    BasicBlock,
    MaxPool2d,
    _check_positive,
    _kaiming_init,
)

_RESNET_NAME = re.compile(r"resnet(\d+)")
_VGG16_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class LeNet5(nn.Module):
    """LeNet-5 for 28x28 inputs; see :func:`lenet5` for the architecture."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)  # (B, 6, 28, 28)
        self.relu1 = nn.ReLU()
        self.pool1 = MaxPool2d(2)  # (B, 6, 14, 14)
        self.conv2 = nn.Conv2d(6, 16, 5)  # (B, 16, 10, 10)
        self.relu2 = nn.ReLU()
        self.pool2 = MaxPool2d(2)  # (B, 16, 5, 5)
        self.flatten = nn.Flatten()  # (B, 400)
        self.fc1 = nn.Linear(400, 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of a batch ``x``."""
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.fc1(self.flatten(x)))
        logits: torch.Tensor = self.fc3(self.relu4(self.fc2(x)))  # (B, num_classes)
        return logits


def lenet5(num_classes: int = 10, in_channels: int = 1) -> LeNet5:
    """Build the classic LeNet-5 for 28x28 inputs.

    Architecture (shapes per instance, C = ``in_channels``)::

        input                              C x 28 x 28
        conv1  6 @ 5x5, pad 2, bias  ReLU  6 x 28 x 28
        pool1  max 2x2, stride 2           6 x 14 x 14
        conv2 16 @ 5x5, pad 0, bias  ReLU 16 x 10 x 10
        pool2  max 2x2, stride 2          16 x  5 x  5  -> flatten 400
        fc1   400 -> 120             ReLU
        fc2   120 -> 84              ReLU
        fc3    84 -> num_classes

    61,706 parameters for C = 1 and 10 classes; 416,520 forward MACs per instance
    (C = 1). PyTorch's default initialisation.

    Parameters
    ----------
    num_classes : int
        Number of output logits.
    in_channels : int
        Channels of the input image (1 for MNIST).

    Returns
    -------
    LeNet5
        The network, in training mode.
    """
    _check_positive("num_classes", num_classes)
    _check_positive("in_channels", in_channels)
    return LeNet5(num_classes, in_channels)


class CifarResNet(nn.Module):
    """ResNet of depth 6n+2 for 32x32 inputs; see :func:`cifar_resnet`."""

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: tuple[int, int, int] = (16, 32, 64),
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        n = (depth - 2) // 6
        w1, w2, w3 = widths
        self.depth = depth
        # shapes for the default widths and stem stride 1 (stem stride 2 halves each side)
        self.conv1 = nn.Conv2d(
            in_channels, w1, 3, stride=stem_stride, padding=1, bias=False
        )  # (B, 16, 32, 32)
        self.bn1 = nn.BatchNorm2d(w1)
        self.relu = nn.ReLU()
        self.layer1 = self._stage(w1, w1, n, stride=1)  # (B, 16, 32, 32)
        self.layer2 = self._stage(w1, w2, n, stride=2)  # (B, 32, 16, 16)
        self.layer3 = self._stage(w2, w3, n, stride=2)  # (B, 64, 8, 8)
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # (B, 64, 1, 1)
        self.flatten = nn.Flatten()  # (B, 64)
        self.fc = nn.Linear(w3, num_classes)
        _kaiming_init(self)

    @staticmethod
    def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride)]
        layers += [BasicBlock(out_channels, out_channels, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of a batch ``x``."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        logits: torch.Tensor = self.fc(self.flatten(self.avgpool(x)))  # (B, num_classes)
        return logits


def cifar_resnet(depth: int, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """Build the CIFAR ResNet of He et al. 2016 (§4.2) with ``depth = 6n + 2`` layers.

    Architecture (shapes per instance)::

        conv1 16 @ 3x3, BN, ReLU               16 x 32 x 32
        layer1: n BasicBlocks, 16 channels     16 x 32 x 32
        layer2: n BasicBlocks, 32 channels     32 x 16 x 16   (first block stride 2)
        layer3: n BasicBlocks, 64 channels     64 x  8 x  8   (first block stride 2)
        global average pool -> 64 -> fc -> num_classes

    A BasicBlock is conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU.
    Convolutions have no bias. Shortcuts use **option A**: identity, or, where
    the shape changes, stride-2 subsampling with zero-padded extra channels
    (:class:`ZeroPadShortcut`) — parameter-free, as in the original CIFAR ResNets.
    Hence the usual parameter counts: ResNet-20 0.27M (269,722), ResNet-56 0.85M,
    ResNet-110 1.73M (1,727,962) for 10 classes. Convolutions are initialised
    Kaiming-normal (fan_out, ReLU gain), BN to weight 1 / bias 0, the linear layer
    with PyTorch's default.

    Parameters
    ----------
    depth : int
        6n+2 with n >= 1: 8, 20, 32, 44, 56, 74, 110, ...
    num_classes : int
        Number of output logits.
    in_channels : int
        Channels of the input image.

    Returns
    -------
    CifarResNet
        The network, in training mode.

    Raises
    ------
    ModelError
        If ``depth`` is not of the form 6n+2 with n >= 1.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ModelError(
            f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 20, 32, 44, 56, 74, 110, ...), "
            f"got {depth!r}{_depth_hint(depth)}"
        )
    _check_positive("num_classes", num_classes)
    _check_positive("in_channels", in_channels)
    return CifarResNet(depth, num_classes, in_channels)


def _nearest_depth(depth: int) -> int:
    return 6 * max(1, round((depth - 2) / 6)) + 2


def _depth_hint(depth: object) -> str:
    if isinstance(depth, int) and not isinstance(depth, bool):
        return f"; the nearest valid depth is {_nearest_depth(depth)}"
    return ""


class VGG16(nn.Module):
    """VGG-16 with batch norm for 32x32 inputs; see :func:`vgg16`."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in _VGG16_CONFIG:
            if isinstance(item, str):  # "M"
                layers.append(MaxPool2d(2))
            else:
                layers += [
                    nn.Conv2d(channels, item, 3, padding=1, bias=False),
                    nn.BatchNorm2d(item),
                    nn.ReLU(),
                ]
                channels = item
        self.features = nn.Sequential(*layers)  # (B, 512, 1, 1)
        self.flatten = nn.Flatten()  # (B, 512)
        self.classifier = nn.Linear(512, num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of a batch ``x``."""
        logits: torch.Tensor = self.classifier(self.flatten(self.features(x)))
        return logits


def vgg16(num_classes: int = 10, in_channels: int = 3) -> VGG16:
    """Build VGG-16 with batch norm, the common CIFAR variant (32x32 inputs).

    Conv configuration (3x3, pad 1, no bias, each followed by BN and ReLU;
    M = max pool 2x2)::

        64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M

    After the fifth pool the map is 512 x 1 x 1; the classifier is a **single**
    linear layer 512 -> num_classes (the common CIFAR variant, not ImageNet's three
    4096-wide layers). 14,724,042 parameters for 10 classes; the convs have no bias
    (BN follows), which the other common count (14,728,266) includes.
    Kaiming-normal convs, BN weight 1 / bias 0.

    Parameters
    ----------
    num_classes : int
        Number of output logits.
    in_channels : int
        Channels of the input image.

    Returns
    -------
    VGG16
        The network, in training mode.
    """
    _check_positive("num_classes", num_classes)
    _check_positive("in_channels", in_channels)
    return VGG16(num_classes, in_channels)


# --------------------------------------------------------------------------- filter networks


class SlimLeNetFilter(nn.Module):
    """Slim LeNet early instance filter for 28x28 inputs; see :func:`slim_lenet_filter`."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 3, stride=2, padding=1)  # (B, 6, 14, 14)
        self.relu1 = nn.ReLU()
        self.pool1 = MaxPool2d(2)  # (B, 6, 7, 7)
        self.conv2 = nn.Conv2d(6, 16, 3)  # (B, 16, 5, 5)
        self.relu2 = nn.ReLU()
        self.pool2 = MaxPool2d(2, ceil_mode=True)  # (B, 16, 3, 3)
        self.flatten = nn.Flatten()  # (B, 144)
        self.fc = nn.Linear(144, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of a batch ``x``."""
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        logits: torch.Tensor = self.fc(self.flatten(x))  # (B, 2): L, H
        return logits


def slim_lenet_filter(in_channels: int = 1) -> SlimLeNetFilter:
    """Build the paper's slim LeNet filter (3x3 kernels, {6, 16} filters), 28x28 inputs.

    Architecture and forward MACs per instance (C = ``in_channels``)::

        conv1  6 @ 3x3, stride 2, pad 1, ReLU  6 x 14 x 14   14*14*6*9*C  = 10,584*C
        pool1  max 2x2                         6 x  7 x  7
        conv2 16 @ 3x3, pad 0, ReLU           16 x  5 x  5    5*5*16*54   = 21,600
        pool2  max 2x2, ceil mode             16 x  3 x  3 -> flatten 144
        fc    144 -> 2                                        144*2       =    288

    32,472 forward MACs for C = 1: 7.8% of LeNet-5's forward pass (416,520) and
    2.9% of its training step per instance (1,131,960); the paper's slim LeNet cost
    about 9.5% of LeNet's training. The stride-2 first convolution and the early pool
    are what make it cheap. 1,230 parameters (C = 1), PyTorch's default init.

    The head has two logits: index ``LOW_LOSS`` = 0 is L (predicted low loss: drop
    the instance), index ``HIGH_LOSS`` = 1 is H (predicted high loss: train on it).

    Parameters
    ----------
    in_channels : int
        Channels of the input image.

    Returns
    -------
    SlimLeNetFilter
        The filter network, in training mode.
    """
    _check_positive("in_channels", in_channels)
    return SlimLeNetFilter(in_channels)


def resnet8_filter(in_channels: int = 3) -> CifarResNet:
    """Build the paper's ResNet-8 filter for 32x32 inputs.

    3x3 conv 16 (BN, ReLU) -> three stages of {16, 32, 64} channels, one
    :class:`BasicBlock` each (stride 1, 2, 2; option-A shortcuts) -> global average
    pool -> fc 64 -> 2. That is ``cifar_resnet(8, num_classes=2)``: 74,770
    parameters, 12.4M forward MACs per 32x32 instance (see :mod:`fededge.cost.flops`).

    Its two logits mean what :func:`slim_lenet_filter`'s do (``LOW_LOSS``, ``HIGH_LOSS``).

    Parameters
    ----------
    in_channels : int
        Channels of the input image.

    Returns
    -------
    CifarResNet
        The filter network, in training mode.
    """
    return cifar_resnet(8, num_classes=2, in_channels=in_channels)


def slim_resnet8_filter(in_channels: int = 3) -> CifarResNet:
    """Build a slim ResNet-8 filter for 32x32 inputs, 1/16 of ResNet-8's MACs.

    ResNet-8's layout with the slim LeNet filter's two economies: a stride-2 first
    convolution (every map a quarter of the area) and half the channels::

        conv1  8 @ 3x3, stride 2, BN, ReLU    8 x 16 x 16
        layer1 one BasicBlock,  8 channels     8 x 16 x 16
        layer2 one BasicBlock, 16 channels    16 x  8 x  8
        layer3 one BasicBlock, 32 channels    32 x  4 x  4
        avgpool, fc 32 -> 2

    0.79M forward MACs per instance against ResNet-8's 12.4M: 1.9% of ResNet-20's
    forward pass (41M) and 0.6% of its training step per instance, where ResNet-8
    costs 30% and 10% -- the share the paper's ResNet-8 had of ResNet-110 (about
    5% of its training), which a net 5x smaller than ResNet-110 cannot afford.
    The two logits mean what :func:`slim_lenet_filter`'s do; the parameter and
    the return value are :func:`resnet8_filter`'s.
    """
    _check_positive("in_channels", in_channels)
    return CifarResNet(8, 2, in_channels, widths=(8, 16, 32), stem_stride=2)


# --------------------------------------------------------------------------- registry
