"""Early instance filter: Eq. 1-7 pieces checked against hand-computed values."""

import math

import pytest
import torch
from torch import nn

from fededge.method.instance_filter import (
    HIGH,
    LOW,
    EIFConfig,
    InstanceFilter,
    _top_share,
    binary_entropy,
    margin_for_entropy,
    weighted_filter_loss,
)


class ConstantNet(nn.Module):
    """A 'filter' whose logits are a learnable bias plus a fixed per-instance score."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x.flatten(1).sum(1)
        return torch.stack([torch.zeros_like(score), score], 1) + self.bias


def test_weighted_loss_matches_hand_count() -> None:
    # Prepare: instance 1 is H with logits (0, 0); instance 2 is L with logits (2, 0).
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    labels = torch.tensor([HIGH, LOW])
    # w_H = 1/0.2 = 5, w_L = 1/0.8 = 1.25; CE_1 = ln 2, CE_2 = ln(1 + e^-2).
    expected = (5 * math.log(2) + 1.25 * math.log(1 + math.exp(-2))) / 6.25
    assert float(weighted_filter_loss(logits, labels, 0.2)) == pytest.approx(expected, rel=1e-6)


def test_entropy_is_ln2_at_half_and_zero_at_certainty() -> None:
    ent = binary_entropy(torch.tensor([0.5, 1.0, 0.0, 0.1]))
    assert float(ent[0]) == pytest.approx(math.log(2))
    assert float(ent[1]) == pytest.approx(0.0, abs=1e-9)
    assert float(ent[2]) == pytest.approx(0.0, abs=1e-9)
    assert float(ent[3]) == pytest.approx(-(0.1 * math.log(0.1) + 0.9 * math.log(0.9)))


def test_top_share_keeps_the_best_scores_and_breaks_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    score = torch.arange(10.0)
    keep = _top_share(score, 0.3, torch.rand(10, generator=gen))
    assert keep.sum() in (3, 4)  # 0.3 * 10 = 3, stochastic rounding adds at most one
    assert keep[-3:].all()
    ties = _top_share(torch.zeros(100), 0.25, torch.rand(100, generator=gen))
    assert ties.sum() in (25, 26)  # ties are still cut at the share
    # over many draws the kept share is the target in expectation
    sizes = [int(_top_share(score, 0.25, torch.rand(10, generator=gen)).sum()) for _ in range(2000)]
    assert abs(sum(sizes) / 2000 - 2.5) < 0.05


@pytest.mark.parametrize("entropy", [0.1, 0.3, 0.6, 0.69])
def test_entropy_margin_matches_the_entropy_rule(entropy: float) -> None:
    s_t = margin_for_entropy(entropy)
    p = torch.sigmoid(torch.tensor([s_t - 1e-3, s_t + 1e-3], dtype=torch.float64))
    ent = binary_entropy(p)
    assert ent[0] > entropy > ent[1]
    assert margin_for_entropy(math.log(2)) == 0.0 and math.isinf(margin_for_entropy(0.0))


def test_threshold_rises_when_true_highs_exceed_target_and_falls_otherwise() -> None:
    cfg = EIFConfig(
        target_ratio=0.25,
        alpha_up=1.5,
        alpha_down=0.5,
        window=1,
        initial_threshold=1.0,
        ratio_estimate="paper",
        explore_ratio=0.0,
    )
    filt = InstanceFilter(ConstantNet(), cfg)
    x = torch.zeros(4, 1, 1, 1)
    # 2 of 4 streamed instances predicted H and labelled H: R_TH = 0.5 >= 0.25 -> T_l * 1.5
    filt.observe(x[:2], torch.tensor([2.0, 3.0]), predicted_high=True)
    filt.end_batch(4)
    assert filt.threshold == pytest.approx(1.5)
    assert filt.true_high_ratio == pytest.approx(0.5)
    # none labelled H (losses below 1.5): R_TH = 0 < 0.25 -> T_l * 0.5
    filt.observe(x[:2], torch.tensor([1.0, 1.2]), predicted_high=True)
    filt.end_batch(4)
    assert filt.threshold == pytest.approx(0.75)


def test_stream_estimate_weights_explored_highs_by_inverse_explore_ratio() -> None:
    cfg = EIFConfig(target_ratio=0.5, window=1, initial_threshold=1.0, explore_ratio=0.1)
    filt = InstanceFilter(ConstantNet(), cfg)
    x = torch.zeros(2, 1, 1, 1)
    # one explored high among dropped ones stands for 1 / 0.1 = 10 instances of 40 streamed
    filt.observe(
        x, torch.tensor([5.0, 0.1]), predicted_high=False, explored=torch.tensor([True, True])
    )
    filt.end_batch(40)
    assert filt.true_high_ratio == pytest.approx(10 / 40)


def test_first_batch_is_kept_and_sets_threshold_from_loss_quantile() -> None:
    cfg = EIFConfig(target_ratio=0.25)
    filt = InstanceFilter(ConstantNet(), cfg)
    decision = filt.decide(torch.randn(8, 1, 2, 2))
    assert decision.keep.all()  # T_l unknown: keep everything once
    filt.observe(torch.zeros(4, 1, 2, 2), torch.tensor([1.0, 2.0, 3.0, 4.0]), predicted_high=True)
    assert filt.threshold == pytest.approx(
        float(torch.quantile(torch.tensor([1.0, 2, 3, 4]), 0.75))
    )


def test_quantile_rule_keeps_target_share_and_samples_uncertain_ones() -> None:
    cfg = EIFConfig(
        target_ratio=0.25,
        initial_threshold=1.0,
        entropy_threshold=0.5,
        max_sample_ratio=1.0,
        explore_ratio=0.0,
        ratio_estimate="paper",
    )
    filt = InstanceFilter(ConstantNet(), cfg)
    x = torch.linspace(-3, 3, 8).reshape(8, 1, 1, 1)  # scores -3..3
    d = filt.decide(x, torch.Generator().manual_seed(0))
    assert d.keep.tolist() == [False] * 6 + [True] * 2  # top 25% of 8
    # dropped instances with entropy > 0.5 nats, i.e. p(H) near 0.5 (|score| small)
    assert d.sample.tolist() == [
        bool(binary_entropy(p) > 0.5) and not k for p, k in zip(d.prob_high, d.keep, strict=True)
    ]


def test_filter_learns_online_and_state_round_trips() -> None:
    torch.manual_seed(0)
    cfg = EIFConfig(target_ratio=0.5, initial_threshold=1.0, lr=0.5, momentum=0.0, min_batch=4)
    filt = InstanceFilter(ConstantNet(), cfg)
    x = torch.zeros(4, 1, 1, 1)
    before = filt.net.bias.detach().clone()
    filt.observe(x, torch.tensor([5.0, 5.0, 5.0, 5.0]), predicted_high=True)  # all H
    assert filt.ready  # 4 >= min_batch = 4
    assert filt.train_pending() == 4
    assert filt.net.bias[HIGH] > before[HIGH]  # pushed towards H
    state = filt.state_dict()
    other = InstanceFilter(ConstantNet(), cfg)
    other.load_state_dict(state)
    assert other.threshold == filt.threshold
    assert torch.equal(other.net.bias, filt.net.bias)
    assert other.true_high_ratio == filt.true_high_ratio


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("target_ratio", 0.0),
        ("alpha_up", 0.9),
        ("alpha_down", 1.2),
        ("window", 0),
        ("entropy_threshold", 0.8),
        ("explore_ratio", -0.1),
        ("lr", 0.0),
    ],
)
def test_config_rejects_bad_values(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        EIFConfig(**{field: value})  # type: ignore[arg-type]
