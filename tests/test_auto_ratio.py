"""R_set chosen from a device's budget (``target_ratio = "auto"``): hand-checkable choices."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

from fededge.cli.compare import parse_savers
from fededge.config.scenario import parse_scenario
from fededge.cost.flops import model_cost
from fededge.errors import ConfigError
from fededge.method.auto_ratio import MARGIN, RatioCosts, choose_ratio
from fededge.method.error_map import EMPConfig, ErrorMapPruner
from fededge.method.instance_filter import EIFConfig
from fededge.method.training import LocalTrainer, TrainConfig
from fededge.models import build_filter, build_model
from fededge.reports.sweep_plan import Variant, variant_raw

SHAPE = (1, 28, 28)
#: only the main step costs: a budget that pays for k steps keeps k / arrivals
PLAIN = RatioCosts(filter_forward=0, filter_step=0, main_forward=0, main_step=100, sample_share=0)


def _budget_for(instances: float, costs: RatioCosts = PLAIN) -> float:
    return instances * costs.per_kept / MARGIN


def test_a_budget_that_pays_for_k_instances_keeps_k_over_arrivals() -> None:
    choice = choose_ratio(_budget_for(300), 1000, PLAIN, min_ratio=0.05, max_ratio=0.9)
    assert not choice.full
    assert choice.ratio == pytest.approx(0.3)


def test_the_share_paid_by_every_arrival_comes_off_first() -> None:
    # F = 10 + 0.1 * (50 + 20) = 17 per arrival, K = 100 + 20 = 120 per kept instance
    costs = RatioCosts(
        filter_forward=10, filter_step=20, main_forward=50, main_step=100, sample_share=0.1
    )
    budget = (1000 * 17 + 250 * 120) / MARGIN  # every arrival filtered, 250 kept
    choice = choose_ratio(budget, 1000, costs, min_ratio=0.05, max_ratio=0.9)
    assert costs.per_arrival == pytest.approx(17) and costs.per_kept == 120
    assert choice.ratio == pytest.approx(0.25)


def test_the_choice_stays_within_its_bounds() -> None:
    low = choose_ratio(_budget_for(10), 1000, PLAIN, min_ratio=0.05, max_ratio=0.9)
    high = choose_ratio(_budget_for(950), 1000, PLAIN, min_ratio=0.05, max_ratio=0.9)
    assert (low.ratio, high.ratio) == (0.05, 0.9)
    assert low.affordable == pytest.approx(0.01) and high.affordable == pytest.approx(0.95)


def test_a_budget_that_pays_for_everything_trains_everything() -> None:
    choice = choose_ratio(_budget_for(1000), 1000, PLAIN, min_ratio=0.05, max_ratio=0.9)
    assert choice.full and choice.ratio == 1.0
    assert choose_ratio(math.inf, 1000, PLAIN, min_ratio=0.05, max_ratio=0.9).full


def test_smoothing_damps_a_rise_and_never_a_fall() -> None:
    kw: dict[str, Any] = {"min_ratio": 0.05, "max_ratio": 0.9, "smoothing": 0.5}
    rise = choose_ratio(_budget_for(600), 1000, PLAIN, previous=0.2, **kw)
    fall = choose_ratio(_budget_for(100), 1000, PLAIN, previous=0.4, **kw)
    assert rise.ratio == pytest.approx(0.4)  # halfway from 0.2 to 0.6
    assert fall.ratio == pytest.approx(0.1)  # at once


def test_emp_planned_step_cost_is_the_cost_the_step_then_records() -> None:
    torch.manual_seed(0)
    net = build_model("lenet5", num_classes=10, in_channels=1, image_size=28)
    cost = model_cost(net, SHAPE)
    pruner = ErrorMapPruner(net, EMPConfig(keep_ratio=0.5))
    planned = pruner.planned_step_cost(cost, 16)
    loss = net(torch.randn(16, *SHAPE)).sum()
    loss.backward()  # type: ignore[no-untyped-call]
    assert pruner.pop_step_cost(cost, 16) == planned
    pruner.remove()


class Synthetic:
    def __init__(self, n: int = 4000) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, *SHAPE, generator=g)
        self.y = torch.randint(0, 10, (n,), generator=g)

    def batch(self, idx: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        return self.x[idx], self.y[idx]


def _auto_trainer(**eif: Any) -> LocalTrainer:
    torch.manual_seed(0)
    net = build_model("lenet5", num_classes=10, in_channels=1, image_size=28)
    torch.manual_seed(1)
    filt = build_filter("slim-lenet", in_channels=1, image_size=28)
    return LocalTrainer(
        net,
        Synthetic(),
        SHAPE,
        TrainConfig(batch_size=32, lr=0.05),
        filter_net=filt,
        eif=EIFConfig(target_ratio="auto", min_ratio=0.05, **eif),
        emp=EMPConfig(keep_ratio=0.5),
        seed=0,
    )


def test_a_device_spends_its_budget_without_exceeding_it_and_looks_at_every_arrival() -> None:
    # Prepare: a budget that pays for plain SGD on 30% of 800 arrivals per run
    trainer = _auto_trainer()
    budget = 0.3 * 800 * trainer.dense_step_macs
    runs = []
    # Execute: four runs (a device's rounds), each on its own 800 arrivals
    for r in range(4):
        runs.append(trainer.run(torch.arange(800 * r, 800 * (r + 1)), budget_macs=budget).ledger)
    # Assert: never over budget; from the second run on (costs measured) >= 90% used,
    # nearly every arrival looked at, and the kept share is what the ledger records
    for ledger in runs:
        assert ledger.spent_macs <= budget
        assert 0.05 <= ledger.aimed_ratio <= 0.9
    for ledger in runs[1:]:
        assert ledger.budget_used >= 0.9
        assert ledger.unprocessed <= 32
    assert trainer.filter is not None
    assert runs[-1].aimed_ratio == pytest.approx(trainer.filter.target_ratio, abs=0.02)


def test_a_larger_budget_chooses_a_larger_share_and_an_ample_one_trains_everything() -> None:
    ratios = []
    for share in (0.15, 0.3, 0.6):
        trainer = _auto_trainer()
        budget = share * 640 * trainer.dense_step_macs
        ratios.append(trainer.run(torch.arange(640), budget_macs=budget).ledger.aimed_ratio)
    assert ratios[0] < ratios[1] < ratios[2]
    ample = _auto_trainer()
    ledger = ample.run(torch.arange(640), budget_macs=2.0 * 640 * ample.dense_step_macs).ledger
    assert ledger.full_trained == ledger.trained == 640 and ledger.filter_forward_macs == 0
    assert ledger.aimed_ratio == 1.0


def test_the_choice_and_measured_costs_survive_the_device_state() -> None:
    trainer = _auto_trainer()
    budget = 0.3 * 640 * trainer.dense_step_macs
    trainer.run(torch.arange(640), budget_macs=budget)
    state = trainer.state_dict()
    again = _auto_trainer()
    again.load_state_dict(state)
    assert again.filter is not None and trainer.filter is not None
    assert again.filter.target_ratio == trainer.filter.target_ratio
    assert again.ratio_costs() == trainer.ratio_costs()
    assert again.choose_ratio(budget, 640) == trainer.choose_ratio(budget, 640)


BASE = """
[run]
name = "auto"
rounds = 2
[data]
dataset = "mnist"
arrivals_per_round = 320
[savers.eif]
enabled = true
target_ratio = {ratio}
{extra}
[[fleet.tiers]]
name = "phones"
profile = "phone"
count = 1
budget_macs = 1e8
"""


def test_scenarios_take_auto_and_name_a_bad_bound() -> None:
    scenario = parse_scenario(BASE.format(ratio='"auto"', extra=""))
    assert scenario.savers.eif.target_ratio == "auto"
    with pytest.raises(ConfigError) as err:
        parse_scenario(BASE.format(ratio='"auto"', extra="min_ratio = 0.5\nmax_ratio = 0.3"))
    assert "min_ratio must be <= max_ratio" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_scenario(BASE.format(ratio='"half"', extra=""))
    assert "target_ratio" in str(err.value)


def test_compare_puts_auto_beside_fixed_ratios() -> None:
    assert parse_savers("none,eif+emp,emp+eif:auto") == ("none", "eif+emp", "eif+emp:auto")
    raw = parse_scenario(BASE.format(ratio="0.2", extra="")).raw
    variant = Variant(budget=2.0, savers="eif+emp:auto")
    doc = variant_raw(raw, variant)
    assert variant.name == "x2-eif+emp-auto"
    assert doc["savers"]["eif"]["target_ratio"] == "auto"
    assert doc["savers"]["emp"]["enabled"] is True
    fixed = variant_raw(raw, Variant(budget=2.0, savers="eif+emp"))
    assert fixed["savers"]["eif"]["target_ratio"] == 0.2
