"""The early instance filter's parameters, and the rules between them.

:class:`EIFConfig` is what :class:`~fededge.method.instance_filter.InstanceFilter`
and the training loop read; a scenario's ``[savers.eif]`` section becomes one when
the scenario is loaded (:mod:`fededge.config.savers`). The rules between fields
that the scenario schema checks too are written once, in
:mod:`fededge.method.saver_rules`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from fededge.errors import SettingsError
from fededge.method.saver_rules import eif_rule_problems

__all__ = ["KEEP_RULES", "EIFConfig"]

#: How an instance is kept (``keep_rule``).
KEEP_RULES = ("quantile", "argmax", "rank", "random", "oracle")


@dataclass(frozen=True)
class EIFConfig:
    """Parameters of the early instance filter.

    Defaults were chosen by the experiments in ``bench/reproduce.py`` (see the
    README); the paper does not report alpha1, alpha2, n, entropy_T or T_l(0).

    Parameters
    ----------
    target_ratio : R_set, the target share of high-loss (trained) instances, in
        (0, 1); or ``"auto"``: chosen before each run (a device's round) from
        what its budget pays for (:mod:`fededge.method.auto_ratio`), between
        ``min_ratio`` and ``max_ratio``.
    min_ratio, max_ratio : bounds of an ``"auto"`` R_set. ``min_ratio``
        defaults to 0.2, the fixed default: below it the masked loss's step
        shrinks with the kept share, and a device that keeps a tenth of every
        arrival learned less than one that keeps a fifth of the arrivals its
        budget reaches (budget sweep at 0.5x: 86.12% vs 94.26%, README).
    ratio_smoothing : with ``"auto"``, how much of a rise of the affordable
        R_set is held back, in [0, 1): the chosen R_set moves from the last
        one by ``(1 - ratio_smoothing)`` of the difference when it rises (a
        fall is taken at once: a device never plans more than its budget pays).
    alpha_up : alpha1 > 1, factor applied to T_l when R_TH >= R_set.
    alpha_down : alpha2 in (0, 1), factor applied to T_l otherwise.
    window : n, the number of recent streamed mini-batches R_TH is measured over.
    entropy_threshold : entropy_T in nats, in [0, ln 2]; dropped instances above
        it are uncertainty-sampled (forward-only through the main net).
    max_sample_ratio : at most this share of a streamed mini-batch is
        uncertainty-sampled (the most uncertain first); 1 = no cap.
    explore_ratio : share of the dropped instances sampled at random (forward-
        only, like uncertainty sampling). Not in the paper: a filter that became
        confident about everything would otherwise never see a label again; it
        also gives the unbiased estimate behind ``ratio_estimate = "stream"``.
    initial_threshold : T_l before the first update (> 0); None: the
        ``1 - R_set`` quantile of the first main-net losses observed (every
        instance of the first streamed mini-batch is kept to observe them).
    keep_rule : ``"quantile"``, ``"argmax"`` (the paper's), ``"rank"``, or a
        control: ``"random"`` or ``"oracle"`` (the main net's own top-R_set
        losses, its forward pass over every streamed instance charged); see
        :mod:`fededge.method.instance_filter`.
    ratio_estimate : ``"stream"`` or ``"paper"``; see the module docstring.
    lr : learning rate of the filter's SGD optimizer.
    lr_final : learning rate reached linearly by the end of the stream (None: constant).
    momentum : momentum of the filter's optimizer.
    weight_decay : weight decay of the filter's optimizer.
    min_batch : the filter trains (one SGD step) once this many labelled
        instances are waiting -- after every main-net mini-batch when it is at
        most the main batch size. Training on a handful of uncertain samples
        per streamed batch cost more in per-step overhead than it taught.
    update : how kept instances update the main net. ``"per_batch"`` (the
        paper): one step per streamed mini-batch on that batch's kept
        instances, so the main net takes as many steps as plain SGD on the
        same stream. ``"queued"``: kept instances wait in a queue and the main
        net steps on full mini-batches of ``batch_size`` (R_set x as many steps).
    loss_norm : what the main net's summed loss is divided by. ``"kept"``: the
        instances trained (a plain mean); ``"streamed"``: the instances
        streamed since the last step (a masked loss: kept instances weigh
        what they weigh in plain SGD's batch mean, so the step is ~R_set x
        smaller: the linear batch-size scaling rule); ``"sqrt"``: the geometric
        mean of the two, ``sqrt(kept * streamed)`` (the square-root scaling
        rule: a step's gradient noise variance is plain SGD's).
    full_first, full_last : shares of the run (by streamed position; a fleet:
        by round) at the start and end in which every streamed instance is
        trained, the filter only learning from their losses (selection phases,
        as Composer's Selective Backprop and InfoBatch's annealing).
    rescale : with ``keep_rule = "rank"``, weight each kept instance's loss by
        1 / p (its inclusion probability) and divide by the streamed count:
        an unbiased estimate of the streamed batch's mean loss.
    sample_bn : how the main net's batch norm normalises the forward-only pass of
        sampled (uncertain and explored) instances, whose losses label them for
        the filter. ``"running"`` (default): the running statistics, as at
        evaluation. ``"batch"``: the sampled instances' own statistics -- a
        batch of about a tenth of the streamed one, whose noisier normalisation
        raises their losses, so dropped instances look high-loss more often than
        kept ones that were just as hard (ResNet-20, a random fifth kept: mean
        loss 1.80 dropped vs 1.72 kept) and the filter learns against its own
        drops. Nets without batch norm are not affected.
    """

    target_ratio: float | Literal["auto"] = 0.2
    min_ratio: float = 0.2
    max_ratio: float = 0.9
    ratio_smoothing: float = 0.0
    alpha_up: float = 1.02
    alpha_down: float = 0.98
    window: int = 50
    entropy_threshold: float = 0.6
    max_sample_ratio: float = 0.05
    explore_ratio: float = 0.05
    initial_threshold: float | None = None
    keep_rule: Literal["quantile", "argmax", "rank", "random", "oracle"] = "quantile"
    ratio_estimate: Literal["stream", "paper"] = "stream"
    lr: float = 0.03
    lr_final: float | None = None
    momentum: float = 0.5
    weight_decay: float = 1e-4
    min_batch: int = 32
    update: Literal["per_batch", "queued"] = "per_batch"
    loss_norm: Literal["kept", "streamed", "sqrt"] = "streamed"
    full_first: float = 0.0
    full_last: float = 0.0
    rescale: bool = False
    sample_bn: Literal["running", "batch"] = "running"

    def __post_init__(self) -> None:
        problems = []
        if self.target_ratio != "auto" and not (
            isinstance(self.target_ratio, int | float) and 0.0 < self.target_ratio < 1.0
        ):
            problems.append(f"target_ratio must be in (0, 1) or 'auto', got {self.target_ratio!r}")
        for name in ("min_ratio", "max_ratio"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                problems.append(f"{name} must be in (0, 1), got {value!r}")
        if not 0.0 <= self.ratio_smoothing < 1.0:
            problems.append(f"ratio_smoothing must be in [0, 1), got {self.ratio_smoothing!r}")
        if not self.alpha_up > 1.0:
            problems.append(f"alpha_up must be > 1, got {self.alpha_up!r}")
        if not 0.0 < self.alpha_down < 1.0:
            problems.append(f"alpha_down must be in (0, 1), got {self.alpha_down!r}")
        if self.window < 1:
            problems.append(f"window must be >= 1, got {self.window!r}")
        if self.min_batch < 1:
            problems.append(f"min_batch must be >= 1, got {self.min_batch!r}")
        if not 0.0 <= self.entropy_threshold <= math.log(2):
            problems.append(
                f"entropy_threshold must be in [0, ln 2 = 0.693], got {self.entropy_threshold!r}"
            )
        for name in ("max_sample_ratio", "explore_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                problems.append(f"{name} must be in [0, 1], got {value!r}")
        if self.initial_threshold is not None and not self.initial_threshold > 0.0:
            problems.append(f"initial_threshold must be > 0, got {self.initial_threshold!r}")
        if self.keep_rule not in KEEP_RULES:
            problems.append(f"keep_rule must be one of {KEEP_RULES}, got {self.keep_rule!r}")
        if self.update not in ("per_batch", "queued"):
            problems.append(f"update must be 'per_batch' or 'queued', got {self.update!r}")
        if self.loss_norm not in ("kept", "streamed", "sqrt"):
            problems.append(
                f"loss_norm must be 'kept', 'streamed' or 'sqrt', got {self.loss_norm!r}"
            )
        for name in ("full_first", "full_last"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                problems.append(f"{name} must be in [0, 1), got {value!r}")
        if self.sample_bn not in ("running", "batch"):
            problems.append(f"sample_bn must be 'running' or 'batch', got {self.sample_bn!r}")
        problems += eif_rule_problems(self)
        if self.ratio_estimate not in ("stream", "paper"):
            problems.append(
                f"ratio_estimate must be 'stream' or 'paper', got {self.ratio_estimate!r}"
            )
        for name in ("lr", "lr_final"):
            value = getattr(self, name)
            if value is not None and not value > 0.0:
                problems.append(f"{name} must be > 0, got {value!r}")
        if not 0.0 <= self.momentum < 1.0:
            problems.append(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0.0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if problems:
            raise SettingsError.from_problems("EIFConfig", problems)

    @property
    def auto(self) -> bool:
        """True when R_set is chosen from the budget (``target_ratio = "auto"``)."""
        return self.target_ratio == "auto"

    @property
    def initial_ratio(self) -> float:
        """R_set before any choice.

        ``target_ratio``, or for ``"auto"`` the default 0.2 within the bounds (what
        a run without a budget starts from).
        """
        if isinstance(self.target_ratio, int | float):
            return float(self.target_ratio)
        return min(max(0.2, self.min_ratio), self.max_ratio)
