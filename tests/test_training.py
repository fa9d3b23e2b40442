"""The one training loop: exact accounting, savers as switches, budgets, determinism."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor

from fededge.cost.flops import model_cost
from fededge.method.emp_config import EMPConfig
from fededge.method.instance_filter import EIFConfig
from fededge.method.training import LocalTrainer, TrainConfig
from fededge.models import build_filter, build_model

SHAPE = (1, 28, 28)


class Synthetic:
    """A tiny seeded 'dataset' with the loop's batch interface."""

    def __init__(self, n: int = 512) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, *SHAPE, generator=g)
        self.y = torch.randint(0, 10, (n,), generator=g)

    def batch(self, idx: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        return self.x[idx], self.y[idx]


def _trainer(savers: str = "none", seed: int = 0, **kw: object) -> LocalTrainer:
    torch.manual_seed(seed)
    net = build_model("lenet5", num_classes=10, in_channels=1, image_size=28)
    filt = build_filter("slim-lenet", in_channels=1, image_size=28) if "eif" in savers else None
    eif = EIFConfig(target_ratio=0.25) if "eif" in savers else None
    emp = EMPConfig(keep_ratio=0.5) if "emp" in savers else None
    return LocalTrainer(
        net,
        Synthetic(),
        SHAPE,
        TrainConfig(batch_size=32),
        filter_net=filt,
        eif=eif,
        emp=emp,
        seed=seed,
        **kw,
    )  # type: ignore[arg-type]


def test_plain_sgd_spends_exactly_the_baseline() -> None:
    trainer = _trainer()
    cost = model_cost(trainer.model, SHAPE)
    ledger = trainer.run(torch.arange(256)).ledger
    assert (ledger.streamed, ledger.trained, ledger.steps) == (256, 256, 8)
    assert ledger.main_forward_macs == 256 * cost.forward_macs
    assert ledger.main_grad_input_macs == 256 * cost.grad_input_macs
    assert ledger.main_grad_weight_macs == 256 * cost.grad_weight_macs
    assert ledger.spent_macs == ledger.baseline_macs == 256 * cost.training_macs
    assert ledger.computation_saved == 0.0


def test_eif_accounts_every_instance_and_every_mac() -> None:
    trainer = _trainer("eif")
    main = model_cost(trainer.model, SHAPE)
    assert trainer.filter_cost is not None
    ledger = trainer.run(torch.arange(512), flush=True).ledger
    kept = ledger.trained
    assert ledger.streamed == 512
    assert kept + ledger.filtered_out == 512  # flush trained the queued remainder
    assert ledger.filter_forward_macs == 512 * trainer.filter_cost.forward_macs
    assert ledger.sampled_forward_macs == ledger.uncertainty_sampled * main.forward_macs
    assert ledger.main_forward_macs == kept * main.forward_macs
    assert ledger.baseline_macs == 512 * main.training_macs
    assert 0.4 < ledger.computation_saved < 0.9  # ~25% kept plus the filter's overhead


def test_emp_cuts_backward_macs_but_not_forward() -> None:
    dense = _trainer().run(torch.arange(128)).ledger
    pruned = _trainer("emp").run(torch.arange(128)).ledger
    assert pruned.main_forward_macs == dense.main_forward_macs
    assert pruned.main_grad_weight_macs < dense.main_grad_weight_macs
    assert pruned.main_grad_input_macs < dense.main_grad_input_macs
    assert pruned.selection_macs > 0
    assert pruned.spent_macs < pruned.baseline_macs


@pytest.mark.parametrize("savers", ["none", "eif+emp"])
def test_tight_budget_stops_early_and_is_never_exceeded(savers: str) -> None:
    trainer = _trainer(savers)
    budget = 3.5 * 32 * trainer.dense_step_macs  # room for about three dense steps
    result = trainer.run(torch.arange(512), budget_macs=budget)
    ledger = result.ledger
    assert ledger.spent_macs <= budget
    assert ledger.budget_exhausted == 1
    assert ledger.unprocessed == len(result.leftover) > 0
    assert ledger.streamed + ledger.unprocessed == 512
    assert torch.equal(result.leftover, torch.arange(512)[ledger.streamed :])


def test_a_flushed_run_trains_only_what_it_streamed() -> None:
    # a fleet device's round: the remainder of the last mini-batch is trained, not carried
    trainer = _trainer()
    for _ in range(2):
        ledger = trainer.run(torch.arange(50), flush=True).ledger
        assert (ledger.streamed, ledger.trained, ledger.steps) == (50, 50, 2)
        assert len(trainer.queue) == 0
    # without flush the remainder waits, and the next call trains more than it streams
    carried = _trainer()
    assert carried.run(torch.arange(50)).ledger.trained == 32
    assert carried.run(torch.arange(50)).ledger.trained == 64  # 18 carried + 50 > 50
    # a budget that pays for one step: the remainder is not streamed, nothing is carried
    tight = _trainer()
    budget = 32 * tight.dense_step_macs + 1
    result = tight.run(torch.arange(50), budget_macs=budget, flush=True)
    assert (result.ledger.streamed, result.ledger.trained, len(result.leftover)) == (32, 32, 18)
    assert len(tight.queue) == 0


def test_same_seed_same_numbers_and_weights() -> None:
    a, b = _trainer("eif+emp", seed=3), _trainer("eif+emp", seed=3)
    la = a.run(torch.arange(384)).ledger
    lb = b.run(torch.arange(384)).ledger
    la.wall_s = lb.wall_s = 0.0
    assert la == lb
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_device_state_round_trips_between_trainers() -> None:
    first = _trainer("eif")
    first.run(torch.arange(200))
    state = copy.deepcopy(first.state_dict())
    second = _trainer("eif", seed=1)
    second.load_state_dict(state)
    assert second.filter is not None and first.filter is not None
    assert second.filter.threshold == first.filter.threshold
    assert torch.equal(second.queue, first.queue)
    assert second.position == first.position == 200
    for pa, pb in zip(first.filter.net.parameters(), second.filter.net.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_stream_lr_warms_up_then_steps_down_at_milestones() -> None:
    from fededge.method.single import stream_lr

    kw = dict(total=1000, lr=0.1, milestones=(0.5, 0.75), gamma=0.1)
    assert stream_lr(0, **kw, warmup_instances=100, warmup_lr=0.01) == 0.01  # type: ignore[arg-type]
    assert stream_lr(99, **kw, warmup_instances=100) == 0.01  # type: ignore[arg-type]
    assert stream_lr(100, **kw, warmup_instances=100) == 0.1  # type: ignore[arg-type]
    assert stream_lr(499, **kw) == 0.1  # type: ignore[arg-type]
    assert stream_lr(500, **kw) == pytest.approx(0.01)  # type: ignore[arg-type]
    assert stream_lr(750, **kw) == pytest.approx(0.001)  # type: ignore[arg-type]


def test_piece_clock_splits_the_whole_loop_wall_time() -> None:
    from fededge.method.pieces import PIECES

    plain = _trainer()
    plain_ledger = plain.run(torch.arange(256)).ledger
    trainer = _trainer("eif+emp")
    ledger = trainer.run(torch.arange(512), flush=True).ledger

    for t, lg in ((plain, plain_ledger), (trainer, ledger)):
        seconds = t.clock.seconds
        assert tuple(seconds) == PIECES
        assert all(s >= 0 for s in seconds.values())
        # every lap lies inside run(): the pieces add up to its wall time, none lost
        assert sum(seconds.values()) == pytest.approx(lg.wall_s, rel=0.02, abs=1e-3)
    assert plain.clock.seconds["filter_decide"] == plain.clock.seconds["filter_train"] == 0
    assert all(plain.clock.seconds[p] > 0 for p in ("main_forward", "main_backward", "optimizer"))
    assert all(trainer.clock.seconds[p] > 0 for p in PIECES)


def test_breakdown_adds_up_to_the_ledger() -> None:
    from fededge.method.pieces import PIECES
    from fededge.method.single import SingleResult

    trainer = _trainer("eif+emp")
    ledger = trainer.run(torch.arange(512), flush=True).ledger
    result = SingleResult("t", ledger, 0.0, 0.0, ledger.wall_s, pieces_s=trainer.clock.seconds)

    rows = result.breakdown()
    assert [p for p, _, _ in rows] == list(PIECES)
    assert sum(m for _, _, m in rows) == ledger.spent_macs  # every MAC in one piece
    assert sum(s for _, s, _ in rows) == pytest.approx(ledger.wall_s, rel=0.02, abs=1e-3)
    macs = {p: m for p, _, m in rows}
    assert macs["main_backward"] == ledger.main_backward_macs + ledger.selection_macs > 0
    assert macs["fetch"] == macs["optimizer"] == macs["bookkeeping"] == 0
