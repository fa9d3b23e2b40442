"""Pricing a scenario's nets: per-instance costs by name, and the least round a budget must buy.

The scenario validator needs the nets' per-instance MACs to say whether a
tier's budget can pay for one mini-batch; a fleet's runtime needs the same
numbers for every device it hosts. :func:`net_costs` gives both from the nets'
names and the dataset's shape, once per process: the nets are built with torch's
random generator forked (its state afterwards is what it was before: validating
a scenario draws nothing a run would see), traced by
:func:`~fededge.cost.flops.model_cost` and dropped; the costs are kept.
(PyTorch's ``meta`` device would skip the weights, but its first use costs a
process about 1.1 s and 150 MB; the nets here take milliseconds.)
"""

from __future__ import annotations

from functools import lru_cache

import torch

from fededge.cost.flops import ModelCost, model_cost
from fededge.models import build_filter, build_model

__all__ = ["minimum_round_macs", "net_costs"]


@lru_cache(maxsize=32)
def net_costs(
    main_model: str, filter_model: str, *, channels: int, image_size: int, num_classes: int
) -> tuple[ModelCost, ModelCost]:
    """Per-instance costs of a main net and a filter net for ``(channels, image_size)`` inputs."""
    shape = (channels, image_size, image_size)
    with torch.random.fork_rng(devices=[]):
        main = build_model(
            main_model, num_classes=num_classes, in_channels=channels, image_size=image_size
        )
        filt = build_filter(filter_model, in_channels=channels, image_size=image_size)
    return model_cost(main, shape), model_cost(filt, shape)


def minimum_round_macs(
    main: ModelCost, filt: ModelCost, *, batch_size: int, eif: bool
) -> int:
    """The least budget that lets a device train one mini-batch in a round.

    With EIF on, the device must also be able to filter and to train the
    filter on that batch; the bound is the loop's own worst case for one
    streamed mini-batch (:meth:`~fededge.method.training.LocalTrainer._stream_batch`).
    """
    needed = batch_size * main.training_macs
    if eif:
        needed += batch_size * (filt.forward_macs + filt.training_macs)
    return needed
