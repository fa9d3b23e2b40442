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
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fededge.cost.flops import ModelCost, model_cost
from fededge.cost.ledger import Ledger
from fededge.method.auto_ratio import RatioChoice, RatioCosts, RatioPlanner
from fededge.method.error_map import EMPConfig, ErrorMapPruner, KernelPlans, Kernels
from fededge.method.filter_stage import FilterStage
from fededge.method.instance_filter import EIFConfig, FilterDecision, InstanceFilter
from fededge.method.pieces import ClassCounts, PieceClock
from fededge.method.quantize import ModelQuantizer, QuantConfig
from fededge.method.step_costs import charge_step, planned_step_macs, step_bound
from fededge.method.train_config import BatchSource, TrainConfig, TrainResult, loss_divisor

__all__ = ["BatchSource", "LocalTrainer", "TrainConfig", "TrainResult"]


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
        self.pruner = (
            ErrorMapPruner(model, emp, kernels=emp_kernels, plans=emp_plans)
            if emp is not None
            else None
        )
        self.quantizer = ModelQuantizer(model, quant, seed=seed) if quant is not None else None
        #: wall seconds of the loop's pieces over the trainer's lifetime (:data:`PIECES`)
        self.clock = PieceClock()
        self.stage: FilterStage | None = None
        if filter_net is not None and eif is not None:
            filter_quantizer = None
            if quant is not None and quant.include_filter:
                whole = replace(quant, exempt=())  # exempt names main-net layers
                filter_quantizer = ModelQuantizer(filter_net, whole, seed=seed + 1)
            self.stage = FilterStage(
                filter_net,
                eif,
                filter_cost or model_cost(filter_net, input_shape),
                model,
                self.main_cost,
                self.clock,
                quantizer=filter_quantizer,
                main_quantizer=self.quantizer,
            )
        self.generator = torch.Generator().manual_seed(seed)
        self.queue = torch.empty(0, dtype=torch.long)
        self.position = 0  # instances streamed over the trainer's lifetime
        self._streamed_since_step = 0
        self._progress: Callable[[int], float] | None = None
        # target_ratio = "auto": this run trains everything (the budget pays for it),
        # and what the device remembers between runs to choose R_set
        self._round_full = False
        self.planner = RatioPlanner()
        #: labels streamed and trained (``count_classes``): does the filter favour some?
        self.classes = ClassCounts(count_classes)

    @property
    def filter(self) -> InstanceFilter | None:
        """The early instance filter (None without EIF)."""
        return self.stage.filter if self.stage is not None else None

    @property
    def filter_cost(self) -> ModelCost | None:
        """The filter net's per-instance cost (None without EIF)."""
        return self.stage.cost if self.stage is not None else None

    @property
    def class_counts(self) -> dict[str, Tensor]:
        """Labels streamed and trained so far, per class (:class:`ClassCounts`)."""
        return self.classes.counts

    def set_lr(self, lr: float) -> None:
        """Set the main net's learning rate."""
        self._set_lr(self.optimizer, lr)

    def close(self) -> None:
        """Detach EMP and quantization (the nets get their float32, dense backward back)."""
        if self.pruner is not None:
            self.pruner.remove()
            self.pruner = None
        for quantizer in (self.quantizer, self.stage.quantizer if self.stage else None):
            if quantizer is not None:
                quantizer.remove()
        self.quantizer = None
        if self.stage is not None:
            self.stage.quantizer = self.stage.main_quantizer = None

    # ------------------------------------------------------------------ costs
    @property
    def dense_step_macs(self) -> int:
        """Per-instance MACs of one dense training step of the main net."""
        return self.main_cost.training_macs

    def _main_step_bound(self, n: int) -> int:
        """Upper bound on the MACs of training ``n`` instances (before EMP's choice)."""
        return step_bound(self.main_cost, n, self.pruner)

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
        if self.stage is not None:
            self.stage.streamed = 0
        if self.stage is not None and self.stage.config.auto:
            self._apply_choice(self.choose_ratio(budget_macs, len(indices)))
        m = self.config.batch_size
        cursor = 0
        stopped = False
        while cursor < len(indices):
            idx = indices[cursor : cursor + m]
            if lr_schedule is not None:
                self._set_lr(self.optimizer, lr_schedule(self.position))
            if self.stage is not None and filter_lr_schedule is not None:
                self.stage.filter.set_lr(filter_lr_schedule(self.position))
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
                full = self.stage is None or self._in_full_phase()
                self._train_main(
                    batch,
                    ledger,
                    denominator=self._denominator(len(batch), full=full),
                    selected=not full,
                )
                if self.stage is not None:
                    self.stage.train(ledger, budget_macs, force=True)
            else:
                stopped = True
        if flush:
            self.queue = self.queue[:0]
        if self.stage is not None and self.stage.config.auto:
            self.planner.measure(ledger, self.stage.streamed)
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
        assert self.stage is not None
        return self.planner.costs(
            self.stage.config,
            self.stage.cost,
            self.main_cost,
            planned_step_macs(self.main_cost, self.config.batch_size, self.pruner),
        )

    def choose_ratio(self, budget_macs: float, arrivals: int) -> RatioChoice:
        """The R_set a run of ``arrivals`` instances under ``budget_macs`` would use."""
        assert self.stage is not None
        return self.planner.choose(self.stage.config, budget_macs, arrivals, self.ratio_costs())

    def _apply_choice(self, choice: RatioChoice) -> None:
        assert self.stage is not None
        self._round_full = choice.full
        if not choice.full:
            self.stage.filter.target_ratio = choice.ratio
        self.planner.remember(choice)

    def _in_full_phase(self) -> bool:
        """Whether every instance is trained now.

        True inside a full-training phase of EIF (``full_first`` / ``full_last``),
        or in a run whose budget pays for training everything (``"auto"``).
        """
        assert self.stage is not None
        if self._round_full:
            return True
        cfg = self.stage.config
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
        stage = self.stage
        if stage is None or self._in_full_phase():
            # plain SGD, or a full-training phase (the filter learns from every loss)
            if ledger.spent_macs + step > budget:
                return False
            self._account_streamed(idx, ledger)
            ledger.aimed_trained += m
            self.queue = torch.cat([self.queue, idx])
            going = self._drain_queue(ledger, budget, full=True)
            if stage is not None:
                stage.train(ledger, budget)
                stage.filter.end_batch(m)
            clock.lap("bookkeeping")
            return going

        cfg = stage.config
        if cfg.update == "per_batch":  # the step is on this batch's kept instances only
            step = self._main_step_bound(stage.kept_bound(m))
        if ledger.spent_macs + stage.forward_macs(m) + step > budget:
            return False
        self._account_streamed(idx, ledger)
        ledger.aimed_trained += stage.filter.target_ratio * m
        clock.lap("bookkeeping")
        x, y = self._fetch(idx)
        clock.lap("fetch")
        self.classes.add("streamed", y)
        decision = stage.decide(x, y, self.generator, ledger)
        clock.lap("filter_decide")
        sample_macs = int(decision.sample.sum()) * self.main_cost.forward_macs
        if sample_macs and ledger.spent_macs + sample_macs + step <= budget:
            stage.label_sampled(x, y, decision, ledger)
            clock.lap("sampled_forward")
        if cfg.update == "queued":
            self.queue = torch.cat([self.queue, idx[decision.keep.cpu()]])
            going = self._drain_queue(ledger, budget, full=False)
        else:
            going = self._train_kept(idx, x, y, decision, ledger, budget)
        stage.train(ledger, budget)
        stage.filter.end_batch(m)
        clock.lap("bookkeeping")
        return going

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
        assert self.stage is not None
        cfg = self.stage.config
        keep = decision.keep
        n = int(keep.sum())
        if not n:
            return True
        if ledger.spent_macs + self._main_step_bound(n) > budget:
            return False
        weights = None
        if cfg.rescale and decision.prob_keep is not None:
            # 1/p, with p floored at R_set: a rarely kept easy instance does not dominate
            weights = 1.0 / decision.prob_keep[keep].clamp(min=self.stage.filter.target_ratio)
        denominator = loss_divisor(cfg.loss_norm, n, len(idx))
        self._train_main(
            idx[keep.cpu()],
            ledger,
            xy=(x[keep], y[keep]),
            weights=weights,
            denominator=denominator,
            selected=True,
        )
        return True

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
        if full or self.stage is None:
            return float(n)
        return loss_divisor(self.stage.config.loss_norm, n, max(n, self._streamed_since_step))

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
        charge_step(ledger, self.main_cost, n, self.pruner, self.quantizer)
        loss_sum = float(losses.detach().sum())
        ledger.loss_sum += loss_sum
        self.classes.add("trained", y)
        if self.stage is not None:
            self.stage.observe_trained(x, losses, ledger, selected=selected, loss_sum=loss_sum)
            if not selected:
                self.classes.add("streamed", y)

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
        if self.planner.memory:
            state["auto"] = dict(self.planner.memory)
        if self.stage is not None:
            state["filter"] = self.stage.filter.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.queue = state["queue"].clone()
        self.position = int(state["position"])
        self._streamed_since_step = int(state.get("streamed_since_step", 0))
        self.generator.set_state(state["generator"])
        self.planner.memory = {k: float(v) for k, v in state.get("auto", {}).items()}
        if self.stage is not None and "filter" in state:
            self.stage.filter.load_state_dict(state["filter"])
