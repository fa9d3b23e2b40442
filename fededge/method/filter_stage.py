"""EIF's share of the training loop: the filter's decisions, its labels, its training.

:class:`FilterStage` is what :class:`~fededge.method.training.LocalTrainer` does with a
streamed mini-batch before (and after) the main net trains on it, and the MACs of
each piece: the filter's inference, the main net's forward-only pass over the
sampled instances (uncertain and explored) whose losses label them, and the
filter's training step on its waiting labels. The loop decides *whether* a piece
still fits the budget; the stage does it and charges the ledger.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fededge.cost.flops import ModelCost
from fededge.cost.ledger import Ledger
from fededge.method.batchnorm import (
    batchnorm_modules,
    frozen_batchnorm_stats,
    running_batchnorm_stats,
)
from fededge.method.instance_filter import EIFConfig, FilterDecision, InstanceFilter
from fededge.method.pieces import PieceClock
from fededge.method.quantize import LowBitMacs, ModelQuantizer

__all__ = ["FilterStage"]


def _lowbit(quantizer: ModelQuantizer | None, cost: ModelCost) -> LowBitMacs:
    """Per-instance MACs with quantized operands (zero without quantization)."""
    return quantizer.lowbit_macs(cost) if quantizer is not None else LowBitMacs()


class FilterStage:
    """The early instance filter inside the loop, with its MACs.

    Parameters
    ----------
    filter_net, config : the filter net and EIF's parameters.
    cost : the filter net's per-instance cost.
    model, main_cost : the main net (its forward-only pass labels the sampled
        instances) and its per-instance cost.
    clock : the loop's clock (the filter's training step is a piece of its own).
    quantizer, main_quantizer : the filter net's and the main net's quantizers
        (None: float32), for the low-bit MACs charged.
    """

    def __init__(
        self,
        filter_net: nn.Module,
        config: EIFConfig,
        cost: ModelCost,
        model: nn.Module,
        main_cost: ModelCost,
        clock: PieceClock,
        *,
        quantizer: ModelQuantizer | None = None,
        main_quantizer: ModelQuantizer | None = None,
    ) -> None:
        self.filter = InstanceFilter(filter_net, config)
        self.cost = cost
        self.model = model
        self.main_cost = main_cost
        self.clock = clock
        self.quantizer = quantizer
        self.main_quantizer = main_quantizer
        self._lowbit = _lowbit(quantizer, cost)
        self._main_lowbit = _lowbit(main_quantizer, main_cost)
        # how the forward-only pass of sampled instances normalises (``sample_bn``),
        # and over which modules: found once, not on every streamed mini-batch
        self._batchnorms = batchnorm_modules(model)
        self._statistics = (
            frozen_batchnorm_stats if config.sample_bn == "batch" else running_batchnorm_stats
        )
        #: instances the filter decided on in the current run
        self.streamed = 0

    @property
    def config(self) -> EIFConfig:
        """EIF's parameters."""
        return self.filter.config

    def forward_macs(self, m: int) -> int:
        """MACs of the filter's inference on ``m`` instances."""
        return m * self.cost.forward_macs

    def step_macs(self, n: int) -> int:
        """MACs of the filter's training step on ``n`` labelled instances."""
        return n * self.cost.training_macs

    def kept_bound(self, m: int) -> int:
        """The most instances the filter keeps of a streamed batch of ``m``."""
        if math.isnan(self.filter.threshold) or self.config.keep_rule in ("argmax", "rank"):
            return m  # the first batch is kept whole; these rules can keep any number
        return min(m, math.ceil(self.filter.target_ratio * m))

    def decide(
        self, x: Tensor, y: Tensor, generator: torch.Generator, ledger: Ledger
    ) -> FilterDecision:
        """The filter's keep / sample decision on a streamed batch, charged."""
        m = len(x)
        self.streamed += m
        decision = self.filter.decide(x, generator)
        ledger.filter_forward_macs += self.forward_macs(m)
        self._charge(ledger, self.quantizer, self._lowbit.forward_only().times(m))
        if self.config.keep_rule == "oracle" and not math.isnan(self.filter.threshold):
            decision = self._oracle(x, y, decision, ledger)
        ledger.filtered_out += int((~decision.keep).sum())
        return decision

    def _oracle(
        self, x: Tensor, y: Tensor, decision: FilterDecision, ledger: Ledger
    ) -> FilterDecision:
        """``keep_rule = "oracle"``: the main net's top-R_set losses, from a forward pass over all.

        A control, not a saver: the forward pass over the whole streamed batch is
        charged (as sampled forward MACs), so it shows what a perfect filter's
        choice would buy, not what it would save.
        """
        m = len(x)
        if not self.model.training:
            self.model.train()
        with torch.no_grad(), self._statistics(self._batchnorms):
            losses = F.cross_entropy(self.model(x), y, reduction="none")
        ledger.sampled_forward_macs += m * self.main_cost.forward_macs
        self._charge(ledger, self.main_quantizer, self._main_lowbit.forward_only().times(m))
        k = min(m, math.ceil(self.filter.target_ratio * m))
        keep = torch.zeros(m, dtype=torch.bool, device=losses.device)
        keep[torch.topk(losses, k).indices] = True
        explored = decision.explored & ~keep
        return replace(decision, keep=keep, sample=explored, explored=explored, prob_keep=None)

    def label_sampled(self, x: Tensor, y: Tensor, decision: FilterDecision, ledger: Ledger) -> None:
        """Run the sampled instances forward-only through the main net; their losses label them."""
        sample = decision.sample
        n_sample = int(sample.sum())
        if not self.model.training:
            self.model.train()
        with torch.no_grad(), self._statistics(self._batchnorms):
            losses = F.cross_entropy(self.model(x[sample]), y[sample], reduction="none")
        explored = decision.explored[sample]
        self.filter.observe(x[sample], losses, predicted_high=False, explored=explored)
        ledger.uncertainty_sampled += n_sample
        ledger.sampled_forward_macs += n_sample * self.main_cost.forward_macs
        lowbit = self._main_lowbit.forward_only().times(n_sample)
        self._charge(ledger, self.main_quantizer, lowbit)
        explored_losses = losses[explored]
        ledger.explored += len(explored_losses)
        ledger.explored_high += int((explored_losses >= self.filter.threshold).sum())
        ledger.explored_loss_sum += float(explored_losses.sum())

    def observe_trained(
        self, x: Tensor, losses: Tensor, ledger: Ledger, *, selected: bool, loss_sum: float
    ) -> None:
        """Label the main net's trained instances with their losses; ``selected``: kept by it."""
        n = len(x)
        high = self.filter.observe(x, losses, predicted_high=True)
        if selected:
            ledger.selected += n
            ledger.selected_high += high
            ledger.selected_loss_sum += loss_sum
        else:
            ledger.full_trained += n

    def train(self, ledger: Ledger, budget: float, *, force: bool = False) -> None:
        """Train the filter on its waiting labels when it is ready (and the budget allows)."""
        if not (self.filter.ready or (force and self.filter.pending)):
            return
        if ledger.spent_macs + self.step_macs(self.filter.pending) > budget:
            self.filter.discard_pending()
            return
        self.clock.lap("bookkeeping")
        trained = self.filter.train_pending()
        self.clock.lap("filter_train")
        ledger.filter_train_macs += self.step_macs(trained)
        ledger.filter_steps += 1
        self._charge(ledger, self.quantizer, self._lowbit.times(trained))

    @staticmethod
    def _charge(ledger: Ledger, quantizer: ModelQuantizer | None, macs: LowBitMacs) -> None:
        """Record low-bit MACs (and their 32-bit-equivalent saving) when quantizing."""
        if quantizer is not None:
            quantizer.charge(ledger, macs)
