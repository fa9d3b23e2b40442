"""The MACs of a main-net training step: its bound before the step, and its charge after.

EMP decides how many channels each conv back-propagates only during the
backward pass, so the training loop (:class:`~fededge.method.training.LocalTrainer`)
checks its budget against an upper bound before a step (a dense backward plus
EMP's selection work) and charges the ledger what the step did once it is done.
"""

from __future__ import annotations

from fededge.cost.flops import ModelCost
from fededge.cost.ledger import Ledger
from fededge.method.error_map import ErrorMapPruner
from fededge.method.quantize import ModelQuantizer

__all__ = ["charge_step", "planned_step_macs", "step_bound"]


def step_bound(cost: ModelCost, n: int, pruner: ErrorMapPruner | None) -> int:
    """Upper bound on the MACs of training ``n`` instances (before EMP's choice)."""
    bound = n * cost.training_macs
    if pruner is not None:
        bound += pruner.selection_macs_bound(n, cost)
    return bound


def planned_step_macs(cost: ModelCost, m: int, pruner: ErrorMapPruner | None) -> float:
    """Per-instance MACs of a step on a mini-batch of ``m``, EMP's fixed channel counts included."""
    if pruner is None:
        return float(cost.training_macs)
    step = pruner.planned_step_cost(cost, m)
    total = m * cost.forward_macs + step.grad_input_macs + step.grad_weight_macs
    return (total + step.selection_macs) / m


def charge_step(
    ledger: Ledger,
    cost: ModelCost,
    n: int,
    pruner: ErrorMapPruner | None,
    quantizer: ModelQuantizer | None,
) -> None:
    """Charge a finished step on ``n`` instances: forward, backward as EMP chose, low-bit MACs."""
    ledger.main_forward_macs += n * cost.forward_macs
    if pruner is None:
        gi, gw = n * cost.grad_input_macs, n * cost.grad_weight_macs
    else:
        step = pruner.pop_step_cost(cost, n)
        gi, gw = step.grad_input_macs, step.grad_weight_macs
        ledger.selection_macs += step.selection_macs
    ledger.main_grad_input_macs += gi
    ledger.main_grad_weight_macs += gw
    if quantizer is not None:
        quantizer.charge(ledger, quantizer.step_lowbit_macs(cost, n, gi, gw, pruner))
    ledger.trained += n
    ledger.steps += 1
