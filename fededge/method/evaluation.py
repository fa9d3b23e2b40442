"""Test accuracy and loss of a net on a dataset, in fixed-size batches."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from fededge.method.training import BatchSource

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: BatchSource,
    num_instances: int,
    *,
    batch_size: int = 1000,
    device: torch.device | str = "cpu",
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` on the first ``num_instances``.

    The model is put in eval mode and restored afterwards.
    """
    was_training = model.training
    model.eval()
    correct = 0
    loss_sum = 0.0
    for start in range(0, num_instances, batch_size):
        idx = torch.arange(start, min(start + batch_size, num_instances))
        x, y = data.batch(idx, None)
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    model.train(was_training)
    return correct / max(num_instances, 1), loss_sum / max(num_instances, 1)
