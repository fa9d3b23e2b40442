"""Batch norm inside the training loop: forwards that use or leave its running statistics.

The loop runs forward-only passes through a training net (the uncertainty-sampled
instances, the filter's labels); these helpers keep them from disturbing what
batch norm has learned, or make them use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["BatchNorms", "batchnorm_modules", "frozen_batchnorm_stats", "running_batchnorm_stats"]

BatchNorms = tuple[nn.modules.batchnorm._BatchNorm, ...]


def batchnorm_modules(model: nn.Module) -> BatchNorms:
    """The batch-norm modules of ``model`` (empty for a net without batch norm)."""
    return tuple(m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


@contextmanager
def running_batchnorm_stats(batchnorms: BatchNorms) -> Iterator[None]:
    """Run a forward in which these batch norms use (and leave) their running statistics.

    Only the batch-norm modules switch to evaluation mode; the rest of the net
    keeps its mode.
    """
    switched = [module for module in batchnorms if module.training]
    for module in switched:
        module.train(False)
    try:
        yield
    finally:
        for module in switched:
            module.train(True)


@contextmanager
def frozen_batchnorm_stats(batchnorms: BatchNorms) -> Iterator[None]:
    """Run a train-mode forward without updating these batch norms' running statistics."""
    saved = [(module, module.momentum) for module in batchnorms]
    for module, _ in saved:
        module.momentum = 0.0
    try:
        yield
    finally:
        for module, momentum in saved:
            module.momentum = momentum
