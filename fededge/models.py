"""The CNNs fededge trains: main networks, early-instance-filter networks and a registry.

Main networks (``build_model``):

- ``lenet5`` — LeNet-5 for 28x28 inputs (MNIST-like), 61,706 parameters.
- ``resnetN`` — the CIFAR ResNets of He et al. 2016 (§4.2), depth N = 6n+2
  (8, 20, 32, 44, 56, 74, 110, ...), option-A (parameter-free) shortcuts,
  32x32 inputs: ResNet-20 has 0.27M parameters, ResNet-110 1.73M.
- ``vgg16`` — VGG-16 with batch norm for 32x32 inputs, one linear classifier.

Filter networks (``build_filter``), the paper's early instance filter: a separate
small network with a 2-way head whose logit index ``LOW_LOSS`` (0) means "low loss,
drop" (L) and ``HIGH_LOSS`` (1) means "high loss, train" (H):

- ``slim-lenet`` — a slim LeNet (3x3 kernels, {6, 16} filters) for 28x28 inputs.
- ``resnet8`` — ResNet-8 (3x3 conv 16, three stages {16, 32, 64} of one block each).

Every operation that costs MACs is a module (the residual addition is ``ResidualAdd``),
so :mod:`fededge.flops` can count it with forward hooks.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import nn

from fededge.errors import ModelError

__all__ = [
    "FILTER_NAMES",
    "HIGH_LOSS",
    "LOW_LOSS",
    "MODEL_NAMES",
    "BasicBlock",
    "CifarResNet",
    "LeNet5",
    "MaxPool2d",
    "ResidualAdd",
    "SlimLeNetFilter",
    "ZeroPadShortcut",
    "build_filter",
    "build_model",
    "check_filter_name",
    "check_model_name",
    "cifar_resnet",
    "lenet5",
    "resnet8_filter",
    "slim_lenet_filter",
    "vgg16",
]

LOW_LOSS = 0
"""Index of the filter's "low loss" (L, drop the instance) logit."""
HIGH_LOSS = 1
"""Index of the filter's "high loss" (H, train on the instance) logit."""

MODEL_NAMES: tuple[str, ...] = (
    "lenet5",
    "resnet8",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet74",
    "resnet110",
    "vgg16",
)
"""Main-network names. Any ``resnetN`` with N = 6n+2 is accepted, not only those listed."""

FILTER_NAMES: tuple[str, ...] = ("slim-lenet", "resnet8")
"""Filter-network names accepted by :func:`build_filter`."""

_RESNET_NAME = re.compile(r"resnet(\d+)")
_VGG16_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


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
        x = x[:, :, :: self.stride, :: self.stride]  # (B, C_in, H/s, W/s)
        return F.pad(x, (0, 0, 0, 0, 0, self.out_channels - self.in_channels))

    def extra_repr(self) -> str:
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

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)  # (B, 16, 32, 32)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._stage(16, 16, n, stride=1)  # (B, 16, 32, 32)
        self.layer2 = self._stage(16, 32, n, stride=2)  # (B, 32, 16, 16)
        self.layer3 = self._stage(32, 64, n, stride=2)  # (B, 64, 8, 8)
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # (B, 64, 1, 1)
        self.flatten = nn.Flatten()  # (B, 64)
        self.fc = nn.Linear(64, num_classes)
        _kaiming_init(self)

    @staticmethod
    def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride)]
        layers += [BasicBlock(out_channels, out_channels, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
    parameters, 12.4M forward MACs per 32x32 instance (see :mod:`fededge.flops`).

    The head has two logits: index ``LOW_LOSS`` = 0 is L (predicted low loss: drop
    the instance), index ``HIGH_LOSS`` = 1 is H (predicted high loss: train on it).

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


# --------------------------------------------------------------------------- registry


def _suggest(name: str, candidates: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name.lower(), candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_model_name(name: str) -> str | None:
    """Check a main-network name without building it.

    Parameters
    ----------
    name : str
        A name such as ``"lenet5"``, ``"resnet110"`` or ``"vgg16"``.

    Returns
    -------
    str or None
        None if the name is valid, else a message saying what was expected and,
        where one is close, which valid name was probably meant.
    """
    if not isinstance(name, str):
        return f"model name must be a string, got {name!r}"
    if name in ("lenet5", "vgg16"):
        return None
    match = _RESNET_NAME.fullmatch(name)
    if match:
        depth = int(match.group(1))
        if depth >= 8 and (depth - 2) % 6 == 0:
            return None
        return (
            f"unknown model {name!r}: a CIFAR ResNet's depth must be 6n+2 with n >= 1 "
            f"(8, 20, 32, 44, 56, 74, 110, ...); did you mean 'resnet{_nearest_depth(depth)}'?"
        )
    return (
        f"unknown model {name!r}: expected one of lenet5, resnetN (N = 6n+2, e.g. "
        f"resnet20, resnet110), vgg16{_suggest(name, MODEL_NAMES)}"
    )


def check_filter_name(name: str) -> str | None:
    """Check a filter-network name; like :func:`check_model_name` for ``FILTER_NAMES``."""
    if not isinstance(name, str):
        return f"filter name must be a string, got {name!r}"
    if name in FILTER_NAMES:
        return None
    return (
        f"unknown filter {name!r}: expected one of {', '.join(FILTER_NAMES)}"
        f"{_suggest(name, FILTER_NAMES)}"
    )


_MODELS_FOR_SIZE: Mapping[int, str] = MappingProxyType({28: "lenet5", 32: "resnetN or vgg16"})
_FILTERS_FOR_SIZE: Mapping[int, str] = MappingProxyType({28: "slim-lenet", 32: "resnet8"})


def _check_image_size(name: str, expected: int, image_size: int, fits: Mapping[int, str]) -> None:
    if image_size != expected:
        hint = ""
        if image_size in fits:
            hint = f"; for {image_size}x{image_size} data use {fits[image_size]}"
        raise ModelError(
            f"{name!r} expects {expected}x{expected} inputs (image_size={expected}), "
            f"got image_size={image_size}{hint}, or resize the data to {expected}x{expected}"
        )


def build_model(name: str, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """Build a main network by name, checking that it fits the data.

    Parameters
    ----------
    name : str
        ``"lenet5"`` (28x28), ``"resnetN"`` with N = 6n+2 (32x32) or ``"vgg16"`` (32x32).
    num_classes : int
        Number of classes of the data set.
    in_channels : int
        Channels of the input images.
    image_size : int
        Height (= width) of the input images.

    Returns
    -------
    nn.Module
        The network, freshly initialised (seed with ``torch.manual_seed`` first
        for a reproducible initialisation).

    Raises
    ------
    ModelError
        For an unknown name (the message suggests the closest valid one) or an
        image size the network does not accept.
    """
    problem = check_model_name(name)
    if problem is not None:
        raise ModelError(problem)
    if name == "lenet5":
        _check_image_size(name, 28, image_size, _MODELS_FOR_SIZE)
        return lenet5(num_classes, in_channels)
    _check_image_size(name, 32, image_size, _MODELS_FOR_SIZE)
    if name == "vgg16":
        return vgg16(num_classes, in_channels)
    return cifar_resnet(int(name.removeprefix("resnet")), num_classes, in_channels)


def default_filter(dataset: str) -> str:
    """The paper's filter net for a dataset: slim LeNet for 28x28, ResNet-8 otherwise."""
    return "slim-lenet" if dataset in ("mnist", "fashion-mnist") else "resnet8"


def build_filter(name: str, *, in_channels: int, image_size: int) -> nn.Module:
    """Build an early-instance-filter network by name (2 logits: L = 0, H = 1).

    Parameters
    ----------
    name : str
        ``"slim-lenet"`` (28x28) or ``"resnet8"`` (32x32).
    in_channels : int
        Channels of the input images.
    image_size : int
        Height (= width) of the input images.

    Returns
    -------
    nn.Module
        The filter network, freshly initialised.

    Raises
    ------
    ModelError
        For an unknown name (with a suggestion) or an unsupported image size.
    """
    problem = check_filter_name(name)
    if problem is not None:
        raise ModelError(problem)
    if name == "slim-lenet":
        _check_image_size(name, 28, image_size, _FILTERS_FOR_SIZE)
        return slim_lenet_filter(in_channels)
    _check_image_size(name, 32, image_size, _FILTERS_FOR_SIZE)
    return resnet8_filter(in_channels)
