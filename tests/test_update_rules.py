"""EIF's update rules, loss normalisation, selection phases and instruments (hand counts)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from fededge.cost.ledger import Ledger
from fededge.method.instance_filter import EIFConfig, _rank_probability
from fededge.method.single import class_skew
from fededge.method.training import LocalTrainer, TrainConfig
from fededge.models import build_filter, build_model

SHAPE = (1, 28, 28)


class Synthetic:
    def __init__(self, n: int = 640) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, *SHAPE, generator=g)
        self.y = torch.randint(0, 10, (n,), generator=g)

    def batch(self, idx: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        return self.x[idx], self.y[idx]


def _eif_trainer(m: int = 20, momentum: float = 0.0, **eif: object) -> LocalTrainer:
    torch.manual_seed(0)
    net = build_model("lenet5", num_classes=10, in_channels=1, image_size=28)
    torch.manual_seed(1)
    filt = build_filter("slim-lenet", in_channels=1, image_size=28)
    cfg = EIFConfig(target_ratio=0.5, explore_ratio=0.1, **eif)  # type: ignore[arg-type]
    return LocalTrainer(
        net,
        Synthetic(),
        SHAPE,
        TrainConfig(batch_size=m, lr=0.1, momentum=momentum),
        filter_net=filt,
        eif=cfg,
        seed=0,
    )


def test_per_batch_update_steps_once_per_streamed_batch_on_its_kept_instances() -> None:
    # Prepare: batches of 20 at R_set = 0.5 keep exactly 10 (the first batch: all 20)
    trainer = _eif_trainer(update="per_batch")
    # Execute
    ledger = trainer.run(torch.arange(200)).ledger
    # Assert: 10 streamed batches -> 10 steps; 20 + 9 * 10 instances trained
    assert ledger.steps == 10
    assert ledger.trained == 20 + 9 * 10
    assert ledger.selected == ledger.trained and ledger.full_trained == 0
    assert len(trainer.queue) == 0


def test_queued_update_steps_on_full_batches_only() -> None:
    trainer = _eif_trainer(update="queued")
    ledger = trainer.run(torch.arange(200)).ledger
    # 110 kept -> 5 full batches of 20 trained, 10 wait in the queue
    assert (ledger.steps, ledger.trained, len(trainer.queue)) == (5, 100, 10)


@pytest.mark.parametrize("update", ["per_batch", "queued"])
def test_streamed_loss_norm_scales_the_step_by_kept_over_streamed(update: str) -> None:
    # Prepare: the same trainer twice; one step on batch 1 (all 20 kept), one on batch 2
    deltas = {}
    for norm in ("kept", "streamed"):
        trainer = _eif_trainer(update=update, loss_norm=norm)
        trainer.run(torch.arange(20))  # the first batch: every instance kept (T_l unknown)
        before = [p.detach().clone() for p in trainer.model.parameters()]
        # Execute: two more streamed batches -> 20 kept instances
        ledger = trainer.run(torch.arange(20, 60)).ledger
        after = list(trainer.model.parameters())
        deltas[norm] = (
            torch.cat([(a - b).flatten() for a, b in zip(after, before, strict=True)]),
            ledger,
        )
    kept_delta, kept_ledger = deltas["kept"]
    streamed_delta, streamed_ledger = deltas["streamed"]
    # Assert: same instances trained; (momentum 0) a step of a masked loss is n/m of a mean's
    assert kept_ledger.trained == streamed_ledger.trained == 20
    if update == "queued":  # one step on 20 kept of the 40 streamed since the last one
        torch.testing.assert_close(streamed_delta, kept_delta * 0.5, rtol=1e-4, atol=1e-7)
    else:  # two steps, each on 10 kept of 20: not linear in the loss scale, but smaller
        assert streamed_delta.norm() < 0.75 * kept_delta.norm()


def test_full_phases_train_everything_and_skip_filter_inference() -> None:
    # Prepare: 10 batches of 20; the first 30% and the last 20% of the run are full phases
    trainer = _eif_trainer(full_first=0.3, full_last=0.2)
    assert trainer.filter_cost is not None
    # Execute
    ledger = trainer.run(torch.arange(200), progress=lambda position: position / 200).ledger
    # Assert: batches 1-3 and 9-10 fully trained (100), batches 4-8 filtered (5 x 10 kept)
    assert ledger.full_trained == 100
    assert ledger.selected == 50
    assert ledger.trained == 150
    assert ledger.steps == 10
    assert ledger.filter_forward_macs == 100 * trainer.filter_cost.forward_macs
    assert ledger.filtered_out == 50


def test_full_phase_needs_the_run_progress() -> None:
    # without a progress function there are no phases: the filter decides throughout
    ledger = _eif_trainer(full_first=0.5).run(torch.arange(200)).ledger
    assert ledger.full_trained == 0


def test_rank_probability_is_rank_share_to_the_beta() -> None:
    # R_set = 0.5 -> beta = 1: p = rank / m
    score = torch.tensor([3.0, -1.0, 7.0, 0.5])
    p = _rank_probability(score, 0.5, torch.zeros(4))
    torch.testing.assert_close(p, torch.tensor([0.75, 0.25, 1.0, 0.5]))
    # R_set = 0.2 -> beta = 4: the expected kept share is close to R_set
    p = _rank_probability(torch.randn(1000), 0.2, torch.rand(1000))
    assert abs(float(p.mean()) - 0.2) < 0.01


def test_rank_rule_keeps_r_set_in_expectation() -> None:
    trainer = _eif_trainer(m=50, keep_rule="rank")
    ledger = trainer.run(torch.arange(600)).ledger
    # the first batch is kept whole; the other 11 keep about half of 50 each
    assert 0.4 < (ledger.selected - 50) / 550 < 0.6


def test_rescale_needs_the_rank_rule() -> None:
    with pytest.raises(ValueError, match="rescale"):
        EIFConfig(rescale=True)
    EIFConfig(rescale=True, keep_rule="rank", loss_norm="streamed")


def test_filter_precision_and_recall_from_hand_counts() -> None:
    # 40 kept, 30 of them high; 160 dropped, 16 explored, 4 of those high
    # -> dropped-high estimate 4 * 160 / 16 = 40; recall = 30 / (30 + 40)
    ledger = Ledger(
        selected=40,
        selected_high=30,
        selected_loss_sum=80.0,
        filtered_out=160,
        explored=16,
        explored_high=4,
        explored_loss_sum=8.0,
    )
    assert ledger.filter_precision == 0.75
    assert ledger.filter_recall == pytest.approx(30 / 70)
    assert (ledger.kept_mean_loss, ledger.dropped_mean_loss) == (2.0, 0.5)
    assert math.isnan(Ledger().filter_recall)


def test_class_skew_total_variation_and_ratios() -> None:
    tv, low, high = class_skew(torch.tensor([50, 50]), torch.tensor([10, 30]))
    assert tv == pytest.approx(0.25)
    assert (low, high) == (pytest.approx(0.5), pytest.approx(1.5))


def test_scenario_reports_inconsistent_eif_rules_with_the_field() -> None:
    from fededge.config.scenario import parse_scenario
    from fededge.errors import ConfigError

    text = """
[savers.eif]
enabled = true
rescale = true
full_first = 0.6
full_last = 0.5
[[fleet.tiers]]
name = "phones"
profile = "phone"
count = 1
"""
    with pytest.raises(ConfigError) as info:
        parse_scenario(text)
    message = str(info.value)
    assert "savers.eif" in message
    assert "rescale = true needs keep_rule" in message
    assert "full_first + full_last must be < 1" in message


class SyntheticColour:
    """32x32 colour instances, for a main net with batch norm (a CIFAR ResNet)."""

    def __init__(self, n: int = 256) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 32, 32, generator=g)
        self.y = torch.randint(0, 10, (n,), generator=g)

    def batch(self, idx: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        return self.x[idx], self.y[idx]


@pytest.mark.parametrize("sample_bn", ["running", "batch"])
def test_sampled_losses_use_the_batch_norm_statistics_asked_for(sample_bn: str) -> None:
    """'running': a sampled instance's loss is the eval-mode loss of the net as it is,
    and sampling leaves the running statistics alone; 'batch': the sampled batch's own."""
    torch.manual_seed(0)
    net = build_model("resnet8", num_classes=10, in_channels=3, image_size=32)
    torch.manual_seed(1)
    filt = build_filter("resnet8", in_channels=3, image_size=32)
    cfg = EIFConfig(
        target_ratio=0.25,
        explore_ratio=0.5,
        max_sample_ratio=0.5,
        sample_bn=sample_bn,  # type: ignore[arg-type]
    )
    trainer = LocalTrainer(
        net, SyntheticColour(), (3, 32, 32), TrainConfig(batch_size=32), filter_net=filt, eif=cfg
    )
    assert trainer.filter is not None
    observe = trainer.filter.observe
    checked = []

    def checking_observe(x: Tensor, losses: Tensor, **kw: object) -> int:
        if not kw["predicted_high"]:
            with torch.no_grad():
                net.eval()
                at_eval = torch.nn.functional.cross_entropy(net(x), trainer_y(x), reduction="none")
                net.train()
            checked.append(torch.allclose(losses, at_eval, atol=1e-5))
        return observe(x, losses, **kw)  # type: ignore[arg-type]

    data = trainer.data
    labels = {tuple(data.x[i].flatten()[:4].tolist()): int(data.y[i]) for i in range(len(data.y))}

    def trainer_y(x: Tensor) -> Tensor:
        return torch.tensor([labels[tuple(row.flatten()[:4].tolist())] for row in x])

    trainer.filter.observe = checking_observe  # type: ignore[method-assign]
    ledger = trainer.run(torch.arange(256)).ledger
    assert ledger.uncertainty_sampled > 0 and len(checked) >= 3
    if sample_bn == "running":
        assert all(checked)
        # only the training steps moved the statistics: sampling is not counted as a batch
        assert int(net.bn1.num_batches_tracked) == ledger.steps
    else:
        assert not any(checked)


def test_oracle_control_keeps_the_main_nets_top_losses_and_pays_for_its_forward() -> None:
    # Prepare: R_set 0.5 on batches of 20; the first batch is kept whole (T_l unknown)
    trainer = _eif_trainer(keep_rule="oracle")
    trainer.run(torch.arange(20))
    data = Synthetic()
    x, y = data.batch(torch.arange(20, 40))
    with torch.no_grad():
        losses = torch.nn.functional.cross_entropy(trainer.model(x), y, reduction="none")
    expected = set(torch.topk(losses, 10).indices.tolist())
    trained: list[Tensor] = []
    train_main = trainer._train_main

    def recording(idx: Tensor, *args: object, **kwargs: object) -> None:
        trained.append(idx.clone())
        train_main(idx, *args, **kwargs)  # type: ignore[arg-type]

    trainer._train_main = recording  # type: ignore[method-assign]
    # Execute: one streamed batch
    ledger = trainer.run(torch.arange(20, 40)).ledger
    # Assert: the 10 highest losses of the main net (eval-free: LeNet has no batch norm)
    assert {int(i) - 20 for i in trained[0]} == expected
    # the forward pass over all 20 is charged, beside the explored labels' own forwards
    forwards = 20 + ledger.uncertainty_sampled
    assert ledger.sampled_forward_macs == forwards * trainer.main_cost.forward_macs
    assert ledger.selected == 10 and ledger.filtered_out == 10
