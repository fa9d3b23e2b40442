"""R_set chosen from a device's budget (``[savers.eif] target_ratio = "auto"``).

A fixed R_set either runs a device out of budget (it drops arrivals it never
looked at) or leaves budget over that buys nothing. With ``"auto"`` the device
sets its kept share before each round from what the round's budget pays for,
given its arrivals and the per-instance costs of the loop
(:meth:`fededge.method.training.LocalTrainer._stream_batch`)::

    per arrival, whatever is kept:  F = filter forward + s * (main forward + filter step)
    per kept instance:              K = main step (with EMP's choice) + filter step
    budget for the round:           B (times ``margin``)

    kept share r = (B / N - F) / K,   clipped to [min_ratio, max_ratio]

where ``s`` is the share of a streamed mini-batch run forward-only for labels
(uncertainty sampling and exploration). When the budget pays for training
every arrival (``N * (main step + filter step) <= B``) the round is a
full-training round: the filter steps aside and learns from every loss, as in
the ``full_first`` / ``full_last`` phases. The costs are the loop's worst case
before any measurement (a dense step, the sampling caps) and what the device
measured in its last round afterwards, so the estimate tightens after one
round. Whatever is chosen, the loop still checks the budget before each piece
of work: the budget is never exceeded.

The neighbours do not adapt instance selection to a compute budget
(FedBalancer adapts a loss threshold to a deadline); this rule is fededge's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fededge.cost.flops import ModelCost
from fededge.cost.ledger import Ledger
from fededge.method.eif_config import EIFConfig

#: Share of the budget planned for: the loop stops a mini-batch early rather
#: than exceed the budget, so aiming at all of it would drop the last arrivals.
MARGIN = 0.97


@dataclass(frozen=True)
class RatioCosts:
    """Per-instance MACs the choice needs (see the module docstring).

    Parameters
    ----------
    filter_forward : filter inference, per streamed instance.
    filter_step : filter training, per labelled instance.
    main_forward : main-net forward (a forward-only label), per sampled instance.
    main_step : main-net training (forward + backward, EMP's choice included),
        per trained instance.
    sample_share : share of a streamed mini-batch sampled forward-only.
    """

    filter_forward: float
    filter_step: float
    main_forward: float
    main_step: float
    sample_share: float

    @property
    def per_arrival(self) -> float:
        """F: MACs every streamed instance costs, kept or not."""
        return self.filter_forward + self.sample_share * (self.main_forward + self.filter_step)

    @property
    def per_kept(self) -> float:
        """K: MACs each kept instance adds."""
        return self.main_step + self.filter_step


@dataclass(frozen=True)
class RatioChoice:
    """What a device does this round: train everything (``full``) or keep ``ratio``."""

    ratio: float
    full: bool
    affordable: float  # the unbounded, unsmoothed share the budget pays for


def choose_ratio(
    budget_macs: float,
    arrivals: int,
    costs: RatioCosts,
    *,
    min_ratio: float,
    max_ratio: float,
    previous: float | None = None,
    smoothing: float = 0.0,
    margin: float = MARGIN,
) -> RatioChoice:
    """The kept share for a round of ``arrivals`` instances under ``budget_macs``.

    ``previous``: last round's choice (None in the first round); a rise over it
    is damped by ``smoothing`` (a fall is not: the device never plans beyond
    what the budget pays for). Without arrivals or without a budget limit the
    round trains everything.
    """
    if arrivals <= 0 or math.isinf(budget_macs):
        return RatioChoice(ratio=1.0, full=True, affordable=math.inf)
    usable = budget_macs * margin
    if arrivals * costs.per_kept <= usable:
        return RatioChoice(ratio=1.0, full=True, affordable=usable / (arrivals * costs.per_kept))
    affordable = (usable / arrivals - costs.per_arrival) / costs.per_kept
    ratio = affordable
    if previous is not None and ratio > previous:
        ratio = previous + (1.0 - smoothing) * (ratio - previous)
    ratio = min(max(ratio, min_ratio), max_ratio)
    return RatioChoice(ratio=ratio, full=False, affordable=affordable)


class RatioPlanner:
    """A device's memory between runs for ``"auto"``: its last choice and measured costs.

    Before any run the costs are the loop's worst case (a dense step, the
    sampling caps); after one, what the run measured (module docstring).

    Attributes
    ----------
    memory : dict of str to float
        ``"previous"`` (the last choice), ``"main_step"`` (MACs per trained
        instance) and ``"sample_share"`` (share of streamed instances sampled
        forward-only), each once known; kept in the trainer's state.
    """

    def __init__(self) -> None:
        self.memory: dict[str, float] = {}

    def costs(
        self, config: EIFConfig, filter_cost: ModelCost, main_cost: ModelCost, planned_step: float
    ) -> RatioCosts:
        """Per-instance costs: measured in the last run, or ``planned_step`` and the caps."""
        return RatioCosts(
            filter_forward=filter_cost.forward_macs,
            filter_step=filter_cost.training_macs,
            main_forward=main_cost.forward_macs,
            main_step=self.memory.get("main_step", planned_step),
            sample_share=self.memory.get(
                "sample_share", min(1.0, config.explore_ratio + config.max_sample_ratio)
            ),
        )

    def choose(
        self, config: EIFConfig, budget_macs: float, arrivals: int, costs: RatioCosts
    ) -> RatioChoice:
        """The choice for a run (:func:`choose_ratio`), not yet remembered."""
        return choose_ratio(
            budget_macs,
            arrivals,
            costs,
            min_ratio=config.min_ratio,
            max_ratio=config.max_ratio,
            previous=self.memory.get("previous"),
            smoothing=config.ratio_smoothing,
        )

    def remember(self, choice: RatioChoice) -> None:
        """Keep the choice a run made (the next choice's ``previous``)."""
        self.memory["previous"] = choice.ratio

    def measure(self, ledger: Ledger, filter_streamed: int) -> None:
        """Keep a run's per-instance costs for the next run's choice."""
        if ledger.trained:
            main = ledger.main_forward_macs + ledger.main_backward_macs + ledger.selection_macs
            self.memory["main_step"] = main / ledger.trained
        if filter_streamed:
            self.memory["sample_share"] = ledger.uncertainty_sampled / filter_streamed
