"""The one local training loop: plain SGD over a stream, with savers as switches.

Baseline SGD, EIF, EMP and EIF+EMP are this same loop (STYLE.md habit 5):

* without EIF the main net takes one step per streamed mini-batch on all of it;
* with EIF (:class:`~fededge.method.instance_filter.InstanceFilter`) the filter net
  reads each streamed mini-batch first and the main net takes one step on its
  predicted-high instances (``update = "per_batch"``, the paper's rule; the
  loss divisor is ``loss_norm``), or they are queued into full mini-batches of
  ``batch_size`` that persist across calls unless a call flushes them
  (``update = "queued"``; a fleet device flushes at the end of each round); uncertain
  drops are run forward through the main net to label them; in a full-training
  phase (``full_first`` / ``full_last``) every instance is trained;
* with EMP (:class:`~fededge.method.error_map.ErrorMapPruner`) the conv layers of the
  main net back-propagate only their top-scoring output channels;
* with quantization (:class:`~fededge.method.quantize.ModelQuantizer`) the main net
  (and the filter net) train in 8 bits (simulated), EMP's backward included.

Every MAC is accounted in a :class:`~fededge.cost.ledger.Ledger` from the exact
per-layer costs of :mod:`fededge.cost.flops`, and a budget in MACs is enforced
*before* each piece of work, so ``spent_macs <= budget_macs`` always holds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fededge.cost.flops import ModelCost, model_cost
from fededge.cost.ledger import Ledger
from fededge.errors import SettingsError
from fededge.method.auto_ratio import RatioChoice, RatioCosts, choose_ratio
from fededge.method.batchnorm import (
    batchnorm_modules,
    frozen_batchnorm_stats,
    running_batchnorm_stats,
)
from fededge.method.error_map import EMPConfig, ErrorMapPruner, KernelPlans, Kernels
from fededge.method.instance_filter import EIFConfig, FilterDecision, InstanceFilter
from fededge.method.pieces import PieceClock
from fededge.method.quantize import LowBitMacs, ModelQuantizer, QuantConfig


class BatchSource(Protocol):
    """What the loop needs from a dataset: a vectorised, seeded batch accessor."""

    def batch(
        self, indices: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """The images and labels of ``indices``, augmented with ``generator``'s draws."""
        ...


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer and batching of the main net.

    Parameters
    ----------
    batch_size : instances per main-net mini-batch (and per streamed mini-batch).
    lr, momentum, weight_decay, nesterov : SGD hyper-parameters.
    """

    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.5
    weight_decay: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size!r}")
        if not self.lr > 0.0:
            problems.append(f"lr must be > 0, got {self.lr!r}")
        if not 0.0 <= self.momentum < 1.0:
            problems.append(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0.0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.nesterov and self.momentum == 0.0:
            problems.append("nesterov needs momentum > 0")
        if problems:
            raise SettingsError.from_problems("TrainConfig", problems)


@dataclass(frozen=True)
class TrainResult:
    """A run's ledger and the arrivals it left unprocessed (budget ran out)."""

    ledger: Ledger
    leftover: Tensor  # (k,) int64 dataset indices, in arrival order


def _loss_divisor(rule: str, kept: int, streamed: int) -> float:
    """What a step's summed loss over ``kept`` instances is divided by (``loss_norm``)."""
    if rule == "kept":
        return float(kept)
    if rule == "streamed":
        return float(streamed)
    return math.sqrt(kept * streamed)


class LocalTrainer:
    """Trains a main net on a stream of instances, with optional EIF and EMP.

    Parameters
    ----------
    model : the main net (trained in place).
    data : the device's dataset (anything with ``batch(indices, generator)``).
    input_shape : (C, H, W) of one instance, for cost accounting.
    config : optimizer and batch size.
    filter_net, eif : the filter net and EIF parameters (both or neither).
    emp : EMP parameters, or None for dense backward.
    seed : seeds the trainer's generator (augmentation, data order within the loop).
    device : where the nets run.
    main_cost, filter_cost : the nets' per-instance costs (computed when omitted).
    emp_kernels : how EMP picks its backward kernels: ``"rule"`` (default) is
        bitwise reproducible -- same seed, same numbers; ``"autotune"`` times the
        candidates online and may pick differently run to run (faster, but the
        results then differ in floating-point rounding).
    emp_plans : EMP kernel choices shared with other trainers (e.g. one per process,
        for every device it hosts), so autotuning is not repeated per trainer.
    quant : quantized-training parameters, or None for float32 training.
    count_classes : keep :attr:`class_counts` (labels streamed and trained).
    """

    def __init__(
        self,
        model: nn.Module,
        data: BatchSource,
        input_shape: tuple[int, int, int],
        config: TrainConfig,
        *,
        filter_net: nn.Module | None = None,
        eif: EIFConfig | None = None,
        emp: EMPConfig | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
        main_cost: ModelCost | None = None,
        filter_cost: ModelCost | None = None,
        emp_plans: KernelPlans | None = None,
        emp_kernels: Kernels = "rule",
        quant: QuantConfig | None = None,
        count_classes: bool = False,
    ) -> None:
        if (filter_net is None) != (eif is None):
            raise ValueError("EIF needs both a filter net and an EIFConfig (or neither)")
        self.model = model
        self.data = data
        self.config = config
        self.device = torch.device(device)
        self.main_cost: ModelCost = main_cost or model_cost(model, input_shape)
        self.optimizer = torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=config.nesterov,
        )
        self.filter: InstanceFilter | None = None
        self.filter_cost: ModelCost | None = None
        if filter_net is not None and eif is not None:
            self.filter = InstanceFilter(filter_net, eif)
            self.filter_cost = filter_cost or model_cost(filter_net, input_shape)
        # how the forward-only pass of sampled instances normalises (EIF's sample_bn),
        # and over which modules: found once, not on every streamed mini-batch
        self._batchnorms = batchnorm_modules(model)
        self._sampled_statistics = (
            frozen_batchnorm_stats
            if eif is not None and eif.sample_bn == "batch"
            else running_batchnorm_stats
        )
        self.pruner = (
            ErrorMapPruner(model, emp, kernels=emp_kernels, plans=emp_plans)
            if emp is not None
            else None
        )
        self.quantizer: ModelQuantizer | None = None
        self.filter_quantizer: ModelQuantizer | None = None
        if quant is not None:
            self.quantizer = ModelQuantizer(model, quant, seed=seed)
            if filter_net is not None and quant.include_filter:
                whole = replace(quant, exempt=())  # exempt names main-net layers
                self.filter_quantizer = ModelQuantizer(filter_net, whole, seed=seed + 1)
        # Per-instance MACs with quantized operands (zero without quantization).
        self._main_lowbit = (
            self.quantizer.lowbit_macs(self.main_cost) if self.quantizer else LowBitMacs()
        )
        self._filter_lowbit = (
            self.filter_quantizer.lowbit_macs(self.filter_cost)
            if self.filter_quantizer and self.filter_cost
            else LowBitMacs()
        )
        self.generator = torch.Generator().manual_seed(seed)
        self.queue = torch.empty(0, dtype=torch.long)
        self.position = 0  # instances streamed over the trainer's lifetime
        self._streamed_since_step = 0
        self._progress: Callable[[int], float] | None = None
        # target_ratio = "auto": this run trains everything (the budget pays for it),
        # last run's choice, and the per-instance costs it measured
        self._round_full = False
        self._auto: dict[str, float] = {}
        self._filter_streamed = 0
        # labels of the instances streamed through the filter (or trained in a full
        # phase) and of those trained: does the filter favour some classes? Off by
        # default: a label count per step (and its copy off an accelerator) that
        # only a researcher's trace reads.
        self.count_classes = count_classes
        #: wall seconds of the loop's pieces over the trainer's lifetime (:data:`PIECES`)
        self.clock = PieceClock()
        self.class_counts = {
            "streamed": torch.zeros(0, dtype=torch.long),
            "trained": torch.zeros(0, dtype=torch.long),
        }

    def set_lr(self, lr: float) -> None:
        """Set the main net's learning rate."""
        self._set_lr(self.optimizer, lr)

    def close(self) -> None:
        """Detach EMP and quantization (the nets get their float32, dense backward back)."""
        if self.pruner is not None:
            self.pruner.remove()
            self.pruner = None
        for quantizer in (self.quantizer, self.filter_quantizer):
            if quantizer is not None:
                quantizer.remove()
        self.quantizer = self.filter_quantizer = None

    # ------------------------------------------------------------------ costs
    @property
    def dense_step_macs(self) -> int:
        """Per-instance MACs of one dense training step of the main net."""
        return self.main_cost.training_macs

    def _main_step_bound(self, n: int) -> int:
        """Upper bound on the MACs of training ``n`` instances (before EMP's choice)."""
        bound = n * self.dense_step_macs
        if self.pruner is not None:
            bound += self.pruner.selection_macs_bound(n, self.main_cost)
        return bound

    def _filter_step_macs(self, n: int) -> int:
        assert self.filter_cost is not None
        return n * self.filter_cost.training_macs

    @staticmethod
    def _charge_lowbit(ledger: Ledger, quantizer: ModelQuantizer | None, macs: LowBitMacs) -> None:
        """Record low-bit MACs (and their 32-bit-equivalent saving) when quantizing."""
        if quantizer is not None:
            quantizer.charge(ledger, macs)

    # ------------------------------------------------------------------- run
    def run(
        self,
        indices: Tensor,
        *,
        budget_macs: float = math.inf,
        lr_schedule: Callable[[int], float] | None = None,
        filter_lr_schedule: Callable[[int], float] | None = None,
        progress: Callable[[int], float] | None = None,
        flush: bool = False,
        on_batch: Callable[[int], None] | None = None,
    ) -> TrainResult:
        """Stream ``indices`` (dataset indices in arrival order) through the loop.

        Parameters
        ----------
        indices : (N,) int64 dataset indices, in arrival order.
        budget_macs : stop before any piece of work that would exceed it.
        lr_schedule, filter_lr_schedule : learning rate as a function of
            :attr:`position` (instances streamed so far), applied per streamed batch.
        progress : the share of the whole run (0..1) done at a :attr:`position`;
            EIF's full-training phases (``full_first``, ``full_last``) need it.
        flush : after the stream, also train the queued remainder (< batch_size)
            as a final smaller batch; when the budget cannot pay for that step
            (or stopped the stream), the remainder is dropped -- streamed, never
            trained -- so a run trains only instances it streamed (a fleet
            device's round: ``trained <= streamed``, which the server checks).
        on_batch : called with :attr:`position` after each streamed mini-batch
            (progress display; it must not touch the trainer).

        Returns
        -------
        TrainResult with the ledger and the unprocessed arrivals.
        """
        start = time.perf_counter()
        clock = self.clock
        clock.mark()
        self._progress = progress
        ledger = Ledger(arrived=len(indices), budget_macs=budget_macs)
        self._round_full = False
        self._filter_streamed = 0
        if self.filter is not None and self.filter.config.auto:
            self._apply_choice(self.choose_ratio(budget_macs, len(indices)))
        m = self.config.batch_size
        cursor = 0
        stopped = False
        while cursor < len(indices):
            idx = indices[cursor : cursor + m]
            if lr_schedule is not None:
                self._set_lr(self.optimizer, lr_schedule(self.position))
            if self.filter is not None and filter_lr_schedule is not None:
                self.filter.set_lr(filter_lr_schedule(self.position))
            before = ledger.streamed
            going = self._stream_batch(idx, ledger, budget_macs)
            cursor += ledger.streamed - before
            if on_batch is not None:
                on_batch(self.position)
            if not going:
                stopped = True
                break
        if flush and not stopped and len(self.queue):
            if ledger.spent_macs + self._main_step_bound(len(self.queue)) <= budget_macs:
                batch, self.queue = self.queue, self.queue[:0]
                full = self.filter is None or self._in_full_phase()
                self._train_main(
                    batch,
                    ledger,
                    denominator=self._denominator(len(batch), full=full),
                    selected=not full,
                )
                if self.filter is not None:
                    self._train_filter(ledger, budget_macs, force=True)
            else:
                stopped = True
        if flush:
            self.queue = self.queue[:0]
        if self.filter is not None and self.filter.config.auto:
            self._measure_costs(ledger)
        clock.lap("bookkeeping")
        leftover = indices[cursor:]
        ledger.unprocessed = len(leftover)
        ledger.budget_exhausted = int(stopped)
        ledger.wall_s = time.perf_counter() - start
        return TrainResult(ledger=ledger, leftover=leftover)

    # ------------------------------------------------------ auto R_set
    def ratio_costs(self) -> RatioCosts:
        """Per-instance costs for :func:`~fededge.method.auto_ratio.choose_ratio`.

        Measured in the last run, or the loop's worst case before any (a dense
        step, the caps).
        """
        assert self.filter is not None and self.filter_cost is not None
        cfg = self.filter.config
        return RatioCosts(
            filter_forward=self.filter_cost.forward_macs,
            filter_step=self.filter_cost.training_macs,
            main_forward=self.main_cost.forward_macs,
            main_step=self._auto.get("main_step", self._planned_step_macs()),
            sample_share=self._auto.get(
                "sample_share", min(1.0, cfg.explore_ratio + cfg.max_sample_ratio)
            ),
        )

    def choose_ratio(self, budget_macs: float, arrivals: int) -> RatioChoice:
        """The R_set a run of ``arrivals`` instances under ``budget_macs`` would use."""
        assert self.filter is not None
        cfg = self.filter.config
        return choose_ratio(
            budget_macs,
            arrivals,
            self.ratio_costs(),
            min_ratio=cfg.min_ratio,
            max_ratio=cfg.max_ratio,
            previous=self._auto.get("previous"),
            smoothing=cfg.ratio_smoothing,
        )

    def _apply_choice(self, choice: RatioChoice) -> None:
        assert self.filter is not None
        self._round_full = choice.full
        if not choice.full:
            self.filter.target_ratio = choice.ratio
        self._auto["previous"] = choice.ratio

    def _planned_step_macs(self) -> float:
        """Per-instance MACs of a main-net step on a mini-batch of ``batch_size``.

        EMP's fixed channel counts included.
        """
        m = self.config.batch_size
        if self.pruner is None:
            return float(self.dense_step_macs)
        step = self.pruner.planned_step_cost(self.main_cost, m)
        total = m * self.main_cost.forward_macs + step.grad_input_macs + step.grad_weight_macs
        return (total + step.selection_macs) / m

    def _measure_costs(self, ledger: Ledger) -> None:
        """Keep this run's per-instance costs for the next run's choice."""
        if ledger.trained:
            main = ledger.main_forward_macs + ledger.main_backward_macs + ledger.selection_macs
            self._auto["main_step"] = main / ledger.trained
        if self._filter_streamed:
            self._auto["sample_share"] = ledger.uncertainty_sampled / self._filter_streamed

    def _in_full_phase(self) -> bool:
        """Whether every instance is trained now.

        True inside a full-training phase of EIF (``full_first`` / ``full_last``),
        or in a run whose budget pays for training everything (``"auto"``).
        """
        assert self.filter is not None
        if self._round_full:
            return True
        cfg = self.filter.config
        if not (cfg.full_first or cfg.full_last) or self._progress is None:
            return False
        done = self._progress(self.position)
        return done < cfg.full_first or done >= 1.0 - cfg.full_last

    def _stream_batch(self, idx: Tensor, ledger: Ledger, budget: float) -> bool:
        """Process one streamed mini-batch; False when the budget stops the run.

        Every piece of work is checked against the budget just before it is
        done. A streamed mini-batch is only started when its filter inference
        *and* one more main-net step still fit; uncertainty sampling and filter
        training are skipped (not half-done) when they no longer fit.
        """
        clock = self.clock
        clock.lap("bookkeeping")  # the loop between batches: schedules, progress
        m = len(idx)
        step = self._main_step_bound(self.config.batch_size)
        if self.filter is None or self._in_full_phase():
            # plain SGD, or a full-training phase (the filter learns from every loss)
            if ledger.spent_macs + step > budget:
                return False
            self._account_streamed(idx, ledger)
            ledger.aimed_trained += m
            self.queue = torch.cat([self.queue, idx])
            going = self._drain_queue(ledger, budget, full=True)
            if self.filter is not None:
                self._train_filter(ledger, budget)
                self.filter.end_batch(m)
            clock.lap("bookkeeping")
            return going

        assert self.filter_cost is not None
        cfg = self.filter.config
        if cfg.update == "per_batch":  # the step is on this batch's kept instances only
            step = self._main_step_bound(self._kept_bound(m))
        if ledger.spent_macs + m * self.filter_cost.forward_macs + step > budget:
            return False
        self._account_streamed(idx, ledger)
        self._filter_streamed += m
        ledger.aimed_trained += self.filter.target_ratio * m
        clock.lap("bookkeeping")
        x, y = self._fetch(idx)
        clock.lap("fetch")
        self._count_classes("streamed", y)
        decision = self.filter.decide(x, self.generator)
        ledger.filter_forward_macs += m * self.filter_cost.forward_macs
        lowbit = self._filter_lowbit.forward_only().times(m)
        self._charge_lowbit(ledger, self.filter_quantizer, lowbit)
        clock.lap("filter_decide")
        keep = decision.keep
        sample = decision.sample
        ledger.filtered_out += int((~keep).sum())
        n_sample = int(sample.sum())
        sample_macs = n_sample * self.main_cost.forward_macs
        if n_sample and ledger.spent_macs + sample_macs + step <= budget:
            if not self.model.training:
                self.model.train()
            with torch.no_grad(), self._sampled_statistics(self._batchnorms):
                losses = F.cross_entropy(self.model(x[sample]), y[sample], reduction="none")
            explored = decision.explored[sample]
            self.filter.observe(x[sample], losses, predicted_high=False, explored=explored)
            ledger.uncertainty_sampled += n_sample
            ledger.sampled_forward_macs += sample_macs
            lowbit = self._main_lowbit.forward_only().times(n_sample)
            self._charge_lowbit(ledger, self.quantizer, lowbit)
            explored_losses = losses[explored]
            ledger.explored += len(explored_losses)
            ledger.explored_high += int((explored_losses >= self.filter.threshold).sum())
            ledger.explored_loss_sum += float(explored_losses.sum())
            clock.lap("sampled_forward")
        if cfg.update == "queued":
            self.queue = torch.cat([self.queue, idx[keep.cpu()]])
            going = self._drain_queue(ledger, budget, full=False)
        else:
            going = self._train_kept(idx, x, y, decision, ledger, budget)
        self._train_filter(ledger, budget)
        self.filter.end_batch(m)
        clock.lap("bookkeeping")
        return going

    def _kept_bound(self, m: int) -> int:
        """The most instances the filter keeps of a streamed batch of ``m``."""
        assert self.filter is not None
        if math.isnan(self.filter.threshold) or self.filter.config.keep_rule in ("argmax", "rank"):
            return m  # the first batch is kept whole; these rules can keep any number
        return min(m, math.ceil(self.filter.target_ratio * m))

    def _train_kept(
        self,
        idx: Tensor,
        x: Tensor,
        y: Tensor,
        decision: FilterDecision,
        ledger: Ledger,
        budget: float,
    ) -> bool:
        """The paper's update: one main-net step on this streamed batch's kept instances."""
        assert self.filter is not None
        cfg = self.filter.config
        keep = decision.keep
        n = int(keep.sum())
        if not n:
            return True
        if ledger.spent_macs + self._main_step_bound(n) > budget:
            return False
        weights = None
        if cfg.rescale and decision.prob_keep is not None:
            # 1/p, with p floored at R_set: a rarely kept easy instance does not dominate
            weights = 1.0 / decision.prob_keep[keep].clamp(min=self.filter.target_ratio)
        denominator = _loss_divisor(cfg.loss_norm, n, len(idx))
        self._train_main(
            idx[keep.cpu()],
            ledger,
            xy=(x[keep], y[keep]),
            weights=weights,
            denominator=denominator,
            selected=True,
        )
        return True

    def _train_filter(self, ledger: Ledger, budget: float, *, force: bool = False) -> None:
        """Train the filter on its waiting labels when it is ready (and the budget allows)."""
        assert self.filter is not None
        if not (self.filter.ready or (force and self.filter.pending)):
            return
        macs = self._filter_step_macs(self.filter.pending)
        if ledger.spent_macs + macs > budget:
            self.filter.discard_pending()
            return
        self.clock.lap("bookkeeping")
        trained = self.filter.train_pending()
        self.clock.lap("filter_train")
        ledger.filter_train_macs += self._filter_step_macs(trained)
        ledger.filter_steps += 1
        self._charge_lowbit(ledger, self.filter_quantizer, self._filter_lowbit.times(trained))

    def _account_streamed(self, idx: Tensor, ledger: Ledger) -> None:
        ledger.streamed += len(idx)
        ledger.baseline_macs += len(idx) * self.dense_step_macs
        self.position += len(idx)
        self._streamed_since_step += len(idx)

    def _drain_queue(self, ledger: Ledger, budget: float, *, full: bool) -> bool:
        """Train every full mini-batch in the queue; False if the budget stopped it.

        ``full``: the queue holds every streamed instance (plain SGD or a
        full-training phase), so the loss is a plain mean; otherwise it holds the
        filter's kept instances and ``loss_norm`` decides the divisor.
        """
        m = self.config.batch_size
        while len(self.queue) >= m:
            if ledger.spent_macs + self._main_step_bound(m) > budget:
                return False
            batch, self.queue = self.queue[:m], self.queue[m:]
            self._train_main(
                batch, ledger, denominator=self._denominator(m, full=full), selected=not full
            )
        return True

    def _denominator(self, n: int, *, full: bool) -> float:
        """Divisor of a step's summed loss over ``n`` instances."""
        if full or self.filter is None:
            return float(n)
        return _loss_divisor(self.filter.config.loss_norm, n, max(n, self._streamed_since_step))

    def _count_classes(self, kind: str, y: Tensor) -> None:
        if not self.count_classes:
            return
        counts = torch.bincount(y.cpu(), minlength=len(self.class_counts[kind]))
        if len(counts) > len(self.class_counts[kind]):
            grown = torch.zeros(len(counts), dtype=torch.long)
            grown[: len(self.class_counts[kind])] = self.class_counts[kind]
            self.class_counts[kind] = grown
        self.class_counts[kind][: len(counts)] += counts

    def _fetch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        x, y = self.data.batch(idx, self.generator)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _train_main(
        self,
        idx: Tensor,
        ledger: Ledger,
        *,
        xy: tuple[Tensor, Tensor] | None = None,
        weights: Tensor | None = None,
        denominator: float | None = None,
        selected: bool = False,
    ) -> None:
        """One SGD step of the main net on ``idx``; accounts MACs from EMP's choices.

        The loss is ``sum_i w_i * loss_i / denominator`` (``w_i = 1`` and
        ``denominator = n`` -- a plain mean -- by default). ``xy``: the
        instances already fetched (so the filter and main net see the same
        augmented views); ``selected``: they were kept by the filter.
        """
        clock = self.clock
        clock.lap("bookkeeping")
        if xy is None:
            x, y = self._fetch(idx)
            clock.lap("fetch")
        else:
            x, y = xy
        n = len(idx)
        if not self.model.training:  # (a whole-tree walk otherwise, every step)
            self.model.train()
        losses = F.cross_entropy(self.model(x), y, reduction="none")
        weighted = losses if weights is None else losses * weights
        total = weighted.sum() / (denominator if denominator is not None else n)
        clock.lap("main_forward")
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()  # type: ignore[no-untyped-call]
        clock.lap("main_backward")
        self.optimizer.step()
        clock.lap("optimizer")
        self._streamed_since_step = 0
        cost = self.main_cost
        ledger.main_forward_macs += n * cost.forward_macs
        if self.pruner is None:
            gi, gw = n * cost.grad_input_macs, n * cost.grad_weight_macs
        else:
            step = self.pruner.pop_step_cost(cost, n)
            gi, gw = step.grad_input_macs, step.grad_weight_macs
            ledger.selection_macs += step.selection_macs
        ledger.main_grad_input_macs += gi
        ledger.main_grad_weight_macs += gw
        if self.quantizer is not None:
            lowbit = self.quantizer.step_lowbit_macs(cost, n, gi, gw, self.pruner)
            self.quantizer.charge(ledger, lowbit)
        ledger.trained += n
        ledger.steps += 1
        loss_sum = float(losses.detach().sum())
        ledger.loss_sum += loss_sum
        self._count_classes("trained", y)
        if self.filter is not None:
            high = self.filter.observe(x, losses, predicted_high=True)
            if selected:
                ledger.selected += n
                ledger.selected_high += high
                ledger.selected_loss_sum += loss_sum
            else:
                ledger.full_trained += n
                self._count_classes("streamed", y)

    @staticmethod
    def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Device-local state kept across rounds (not the main net's weights)."""
        state: dict[str, Any] = {
            "queue": self.queue.clone(),
            "position": self.position,
            "streamed_since_step": self._streamed_since_step,
            "generator": self.generator.get_state(),
        }
        if self._auto:
            state["auto"] = dict(self._auto)
        if self.filter is not None:
            state["filter"] = self.filter.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.queue = state["queue"].clone()
        self.position = int(state["position"])
        self._streamed_since_step = int(state.get("streamed_since_step", 0))
        self.generator.set_state(state["generator"])
        self._auto = {k: float(v) for k, v in state.get("auto", {}).items()}
        if self.filter is not None and "filter" in state:
            self.filter.load_state_dict(state["filter"])
