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
- ``slim-resnet8`` — ResNet-8 at half the width with a stride-2 first conv (1/16 of
  its MACs), for main nets small enough that ResNet-8's bill outweighs what it saves.

Every operation that costs MACs is a module (the residual addition is ``ResidualAdd``),
so :mod:`fededge.cost.flops` can count it with forward hooks. The building blocks
are in :mod:`fededge.models.layers`, the networks in :mod:`fededge.models.nets`;
this module is the registry: names, checks and builders.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from types import MappingProxyType

from torch import nn

from fededge.errors import ModelError
from fededge.models.layers import BasicBlock, MaxPool2d, ResidualAdd, ZeroPadShortcut
from fededge.models.nets import (
    _RESNET_NAME,
    VGG16,
    CifarResNet,
    LeNet5,
    SlimLeNetFilter,
    _nearest_depth,
    cifar_resnet,
    lenet5,
    resnet8_filter,
    slim_lenet_filter,
    slim_resnet8_filter,
    vgg16,
)

__all__ = [
    "FILTER_NAMES",
    "HIGH_LOSS",
    "LOW_LOSS",
    "MODEL_NAMES",
    "VGG16",
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
    "slim_resnet8_filter",
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

FILTER_NAMES: tuple[str, ...] = ("slim-lenet", "resnet8", "slim-resnet8")
"""Filter-network names accepted by :func:`build_filter`."""


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
_FILTERS_FOR_SIZE: Mapping[int, str] = MappingProxyType(
    {28: "slim-lenet", 32: "resnet8 or slim-resnet8"}
)


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
        ``"slim-lenet"`` (28x28), ``"resnet8"`` or ``"slim-resnet8"`` (32x32).
    in_channels, image_size : int
        The input images' channels and height (= width), as for :func:`build_model`.

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
    if name == "slim-resnet8":
        return slim_resnet8_filter(in_channels)
    return resnet8_filter(in_channels)
