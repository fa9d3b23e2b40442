"""8-bit training: quantizers against hand values, Range BN, hooks, EMP composition, accounting."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fededge.method.error_map as error_map
from fededge.config.savers import quant_config
from fededge.config.scenario import parse_scenario
from fededge.cost.flops import model_cost
from fededge.cost.ledger import Ledger
from fededge.errors import ConfigError
from fededge.fleet import FleetRuntime, transported_weights
from fededge.method.error_map import EMPConfig, ErrorMapPruner
from fededge.method.quantize import (
    ModelQuantizer,
    QuantConfig,
    QuantConfigError,
    mac_cost_32eq,
    quantize_max_abs,
    quantize_min_max,
    round_stochastic,
)
from fededge.method.range_bn import RangeBatchNorm2d, range_scale
from fededge.method.training import LocalTrainer, TrainConfig


def _t(*values: float) -> Tensor:
    return torch.tensor(values, dtype=torch.float32)


# --------------------------------------------------------------------------- quantizers


def test_max_abs_range_and_round_to_nearest_by_hand() -> None:
    # 3 bits: L = 3 levels each side, step = max|x| / 3 = 0.5.
    # x / step = [-3, -0.4, 0.5, 1.6, 2.9] -> round (ties to even) [-3, 0, 0, 2, 3].
    out = quantize_max_abs(_t(-1.5, -0.2, 0.25, 0.8, 1.45), 3)
    assert out.tolist() == [-1.5, 0.0, 0.0, 1.0, 1.5]


def test_max_abs_extremes_zero_and_ties() -> None:
    x = _t(-2.0, 0.0, 2.0)
    assert torch.equal(quantize_max_abs(x, 8), x)  # ±max|x| and 0 are on the grid
    assert torch.equal(quantize_max_abs(torch.zeros(4), 8), torch.zeros(4))  # no division by 0
    # ties go to the even level (torch.round): 2.5 -> 2, 1.5 -> 2, 0.5 -> 0; -3 is the extreme
    assert quantize_max_abs(_t(2.5, 1.5, 0.5, -3.0), 3).tolist() == [2.0, 2.0, 0.0, -3.0]


def test_max_abs_per_channel_keeps_small_rows() -> None:
    w = torch.tensor([[1.0, -0.4], [0.1, 0.04]])
    # per tensor, step 1/3: the second row rounds to 0
    assert quantize_max_abs(w, 3)[1].tolist() == [0.0, 0.0]
    # per row: steps 1/3 and 0.1/3 -> row 0 [3, -1.2 -> -1], row 1 [3, 1.2 -> 1]
    out = quantize_max_abs(w, 3, dim=0)
    assert out[0].tolist() == pytest.approx([1.0, -1 / 3])
    assert out[1].tolist() == pytest.approx([0.1, 0.1 / 3])


def test_min_max_range_by_hand() -> None:
    # 2 bits: 3 steps over [lo, hi] = [-1, 2]: step 1; (x - lo) = [0, 1, 1.4, 3] -> [0, 1, 1, 3]
    assert quantize_min_max(_t(-1.0, 0.0, 0.4, 2.0), 2).tolist() == [-1.0, 0.0, 0.0, 2.0]
    # after a ReLU lo = 0 is exact; both extremes are exact
    assert quantize_min_max(_t(0.0, 0.1, 3.0), 2).tolist() == [0.0, 0.0, 3.0]
    # a constant tensor has no range and comes back unchanged
    assert quantize_min_max(_t(3.0, 3.0), 8).tolist() == [3.0, 3.0]


def test_stochastic_rounding_is_unbiased_and_picks_a_neighbour() -> None:
    # 2 bits, max|x| = 1: the grid is {-1, 0, 1}; 0.3 -> 1 with p = 0.3, -0.7 -> -1 with p = 0.7
    n = 200_000
    x = torch.cat([_t(1.0), torch.full((n,), 0.3), torch.full((n,), -0.7)])
    gen = torch.Generator().manual_seed(0)
    out = quantize_max_abs(x, 2, stochastic=True, generator=gen)
    up, down = out[1 : n + 1], out[n + 1 :]
    assert set(up.unique().tolist()) == {0.0, 1.0}
    assert set(down.unique().tolist()) == {-1.0, 0.0}
    # std of the mean: sqrt(0.21 / n) ~ 0.001; allow 5 sigma
    assert float(up.mean()) == pytest.approx(0.3, abs=0.005)
    assert float(down.mean()) == pytest.approx(-0.7, abs=0.005)
    assert out[0] == 1.0  # the extreme stays exact


def test_stochastic_rounding_is_seeded_and_exact_on_integers() -> None:
    v = torch.linspace(-3, 3, 101)
    a = round_stochastic(v, torch.Generator().manual_seed(1))
    b = round_stochastic(v, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert ((a == torch.floor(v)) | (a == torch.ceil(v))).all()
    ints = _t(-2.0, 0.0, 5.0)
    assert torch.equal(round_stochastic(ints, torch.Generator().manual_seed(2)), ints)


def test_mac_cost_is_the_product_of_widths_over_32_squared() -> None:
    assert mac_cost_32eq(8, 8) == 1 / 16
    assert mac_cost_32eq(8, 16) == 1 / 8
    assert mac_cost_32eq(32, 32) == 1.0


def test_config_reports_every_problem_at_once() -> None:
    with pytest.raises(QuantConfigError) as info:
        QuantConfig(weight_bits=1, activation_bits=20, stochastic="yes", range_bn_chunks=0)  # type: ignore[arg-type]
    message = str(info.value)
    assert "weight_bits" in message and "activation_bits" in message and "stochastic" in message
    assert "range_bn_chunks" in message and "got 0" in message
    assert len(info.value.issues) == 4
    assert QuantConfig(grad_bits=32).grad_weight_bits == (8, 32)


# --------------------------------------------------------------------------- range BN


def test_range_bn_on_a_hand_example() -> None:
    # Prepare: one channel, n = 4 values [1, 2, 3, 6]: mean 3, range 5.
    bn = RangeBatchNorm2d(1, eps=0.0, momentum=0.1)
    bn.chunks = 1  # one range over the whole mini-batch
    x = torch.tensor([[[[1.0, 2.0]]], [[[3.0, 6.0]]]], requires_grad=True)  # (2, 1, 1, 2)
    c = 1 / (2 * math.sqrt(2 * math.log(4)))
    assert range_scale(4) == pytest.approx(c)
    # Execute
    y = bn(x)
    # Assert: (x - 3) / (C(4) * 5); running mean 0.1*3, running var 0.9*1 + 0.1*(5C)^2
    expected = [(v - 3.0) / (5 * c) for v in (1.0, 2.0, 3.0, 6.0)]
    assert y.flatten().tolist() == pytest.approx(expected)
    assert float(bn.running_mean) == pytest.approx(0.3)
    assert float(bn.running_var) == pytest.approx(0.9 + 0.1 * (5 * c) ** 2)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # evaluation is plain batch norm on the running statistics
    bn.eval()
    out = bn(torch.full((1, 1, 1, 1), 1.3)).detach()
    assert float(out) == pytest.approx(1.0 / math.sqrt(float(bn.running_var)))


def test_range_bn_averages_the_ranges_of_sample_groups() -> None:
    # Prepare: samples [1, 2] and [3, 6] (one channel): two groups, ranges 1 and 3.
    bn = RangeBatchNorm2d(1, eps=0.0)
    assert bn.chunks == 10
    x = torch.tensor([[[[1.0, 2.0]]], [[[3.0, 6.0]]]], requires_grad=True)
    # Execute
    y = bn(x)
    # Assert: s = C(2) * (1 + 3) / 2 (two groups of 2 values); mean 3
    s = range_scale(2) * 2.0
    assert y.flatten().tolist() == pytest.approx([(v - 3.0) / s for v in (1.0, 2.0, 3.0, 6.0)])
    # the scale's gradient reaches the max and min of both groups, not only 1 and 6
    (y * torch.tensor([1.0, 0.0, 0.0, 0.0]).view(2, 1, 1, 2)).sum().backward()
    assert x.grad is not None and (x.grad.flatten() != 0).sum() == 4
    # 1x1 maps: groups of 2 samples, so 5 samples make 2 groups (sizes 3 and 2)
    z = torch.tensor([1.0, 2.0, 4.0, 0.0, 3.0]).view(5, 1, 1, 1)
    out = bn(z)
    s = (range_scale(3) * 3.0 + range_scale(2) * 3.0) / 2
    assert out.flatten().tolist() == pytest.approx([(v - 2.0) / s for v in (1, 2, 4, 0, 3)])


def test_range_bn_needs_two_values_per_channel() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        RangeBatchNorm2d(3)(torch.randn(1, 3, 1, 1))


# --------------------------------------------------------------------------- the model quantizer


def test_forward_and_ste_gradients_by_hand() -> None:
    # Prepare: a linear layer; δ and weight gradients left in float32 to compare exactly.
    torch.manual_seed(0)
    layer = nn.Linear(5, 3)
    x = torch.randn(4, 5)
    cfg = QuantConfig(error_bits=32, grad_bits=32)
    with ModelQuantizer(layer, cfg):
        # Execute
        y = layer(x)
        y.sum().backward()
    # Assert: y = Q_minmax(x) Q_maxabs(W)^T + b; ∂L/∂W at the quantized point (STE)
    xq, wq = quantize_min_max(x, 8), quantize_max_abs(layer.weight.detach(), 8)
    assert torch.allclose(y, F.linear(xq, wq, layer.bias), atol=1e-6)
    assert layer.weight.grad is not None
    assert torch.allclose(layer.weight.grad, torch.ones(4, 3).T @ xq, atol=1e-5)
    assert isinstance(layer.weight, nn.Parameter)  # the master weight is back


def test_errors_and_weight_gradients_are_quantized() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(4, 2, bias=False)
    x = torch.randn(3, 4)
    c = torch.tensor([[0.3, -1.0], [0.05, 0.2], [0.7, 0.01]])  # δ = ∂(Σ c·y)/∂y = c
    with ModelQuantizer(layer, QuantConfig(stochastic=False, grad_bits=32)):
        (layer(x) * c).sum().backward()
    expected = quantize_max_abs(c, 8).T @ quantize_min_max(x, 8)
    assert layer.weight.grad is not None
    assert torch.allclose(layer.weight.grad, expected, atol=1e-6)
    layer.weight.grad = None
    with ModelQuantizer(layer, QuantConfig(stochastic=False, grad_bits=4)):
        (layer(x) * c).sum().backward()
    grad = layer.weight.grad
    assert grad is not None
    step = grad.abs().max() / 7
    assert torch.allclose(grad / step, torch.round(grad / step), atol=1e-4)  # on the 4-bit grid


def test_attach_keeps_names_and_remove_restores_the_float_model() -> None:
    torch.manual_seed(0)
    model = _tiny()
    x = torch.randn(6, 1, 4, 4)
    keys = list(model.state_dict())
    reference = model(x)
    quantizer = ModelQuantizer(model, QuantConfig(range_bn_chunks=3))
    assert isinstance(model[1], RangeBatchNorm2d)
    assert model[1].chunks == 3
    assert quantizer.layer_names == ("0", "4")
    quantized = model(x)
    assert list(model.state_dict()) == keys
    assert all(isinstance(p, nn.Parameter) for p in model.parameters())
    assert not torch.allclose(quantized, reference)
    quantizer.remove()
    assert type(model[1]) is nn.BatchNorm2d and "chunks" not in vars(model[1])
    assert not model[0]._forward_pre_hooks and not model[0]._forward_hooks
    assert torch.allclose(model(x), reference)


def test_a_failing_forward_still_puts_the_master_weight_back() -> None:
    layer = nn.Linear(3, 2)
    master = layer.weight
    with ModelQuantizer(layer, QuantConfig()), pytest.raises(RuntimeError):
        layer(torch.randn(2, 5))  # wrong width
    assert layer.weight is master


def test_exempt_layers_stay_float_and_unknown_names_are_rejected() -> None:
    with pytest.raises(QuantConfigError, match="'fc9' matches no conv or linear"):
        ModelQuantizer(_tiny(), QuantConfig(exempt=("fc9",)))
    quantizer = ModelQuantizer(_tiny(), QuantConfig(exempt=("0",)))
    assert quantizer.layer_names == ("4",)


def test_emp_backward_receives_quantized_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a conv net with EMP (half the channels) and 8-bit training; record δ as EMP sees it.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 4),
    )
    seen: list[Tensor] = []
    scores = error_map.channel_scores

    def recording(grad_out: Tensor, weight: Tensor, gw: float, ge: float) -> Tensor:
        seen.append(grad_out.detach().clone())
        return scores(grad_out, weight, gw, ge)

    monkeypatch.setattr(error_map, "channel_scores", recording)
    pruner = ErrorMapPruner(model, EMPConfig(keep_ratio=0.5), kernels="rule")
    quantizer = ModelQuantizer(model, QuantConfig())
    # Execute
    F.cross_entropy(model(torch.randn(5, 3, 6, 6)), torch.tensor([0, 1, 2, 3, 0])).backward()
    # Assert: both convs pruned their backward, on δ that lies on the 8-bit grid
    assert len(seen) == 2
    for delta in seen:
        step = delta.abs().max() / 127
        assert torch.allclose(delta / step, torch.round(delta / step), atol=1e-3)
    grad = model[3].weight.grad
    assert grad is not None
    kept = pruner.kept_indices()["3"]
    dropped = sorted(set(range(8)) - set(kept.tolist()))
    assert grad[dropped].abs().sum() == 0 and grad[kept].abs().sum() > 0
    quantizer.remove()
    pruner.remove()


# --------------------------------------------------------------------------- accounting


class _Data:
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(16, 1, 4, 4, generator=g)
        self.y = torch.randint(0, 3, (16,), generator=g)

    def batch(self, idx: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        return self.x[idx], self.y[idx]


def _tiny() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, bias=False),  # (B, 2, 4, 4)
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.Flatten(),  # (B, 32)
        nn.Linear(32, 3),
    )


def _run(emp: EMPConfig | None, quant: QuantConfig | None) -> Ledger:
    torch.manual_seed(0)
    trainer = LocalTrainer(
        _tiny(), _Data(), (1, 4, 4), TrainConfig(batch_size=4), emp=emp, quant=quant
    )
    try:
        return trainer.run(torch.arange(8)).ledger  # two steps of 4 instances
    finally:
        trainer.close()


# Per instance, by hand (fededge.cost.flops): conv 4·4·2·1·9 = 288 forward, no grad-input (first
# layer), 288 grad-weight; BN over 32 elements: 128 forward, 128 grad-input, 64 grad-weight;
# linear 32·3 = 96 each. Forward 512, grad-input 224, grad-weight 448.


def test_loop_32bit_equivalent_cost_matches_the_hand_conversion() -> None:
    cost = model_cost(_tiny(), (1, 4, 4))
    assert (cost.forward_macs, cost.grad_input_macs, cost.grad_weight_macs) == (512, 224, 448)
    ledger = _run(None, QuantConfig())
    # 8x8 forward and grad-input at 1/16, 8x16 grad-weight at 1/8, batch norm at 1:
    # forward (288 + 96)/16 + 128 = 152; grad-input 96/16 + 128 = 134; grad-weight 384/8 + 64 = 112
    assert ledger.spent_macs == 8 * 1184  # exact MACs unchanged
    assert (ledger.lowbit_forward_macs, ledger.lowbit_grad_input_macs) == (8 * 384, 8 * 96)
    assert ledger.lowbit_grad_weight_macs == 8 * 384
    assert ledger.spent_macs_32eq == 8 * (152 + 134 + 112)
    assert ledger.computation_saved_32eq == 1 - 398 / 1184
    assert ledger.to_metrics()["spent_macs_32eq"] == 8 * 398
    assert _run(None, None).spent_macs_32eq == 8 * 1184  # float32: 32-bit-eq = MACs


def test_loop_32bit_equivalent_cost_with_emp_by_hand() -> None:
    # EMP keeps 1 of the conv's 2 channels: its grad-weight 288 -> 144 per instance; the
    # selection costs numel(δ) + numel(W) + 4·C_out = 4·32 + 18 + 8 = 154 per step, at 32 bits.
    ledger = _run(EMPConfig(keep_ratio=0.5), QuantConfig())
    per_step = 4 * (152 + 134 + (144 + 96) / 8 + 64) + 154
    assert ledger.selection_macs == 2 * 154
    assert ledger.spent_macs == 2 * (4 * (512 + 224 + 144 + 64 + 96) + 154)
    assert ledger.spent_macs_32eq == 2 * per_step
    # the conv exempt (float32) but still pruned: only the linear layer is low-bit
    ledger = _run(EMPConfig(keep_ratio=0.5), QuantConfig(exempt=("0",)))
    per_step = 4 * ((288 + 128 + 96 / 16) + (128 + 96 / 16) + (144 + 64 + 96 / 8)) + 154
    assert ledger.lowbit_grad_weight_macs == 8 * 96
    assert ledger.spent_macs_32eq == 2 * per_step


def test_stochastic_rounding_is_reproducible_through_the_loop() -> None:
    a, b = _run(None, QuantConfig()), _run(None, QuantConfig())
    assert a.loss_sum == b.loss_sum and a.spent_macs_32eq == b.spent_macs_32eq


# --------------------------------------------------------------------------- scenarios

SCENARIO = """
[data]
dataset = "mnist"
[savers.quant]
enabled = true
[[fleet.tiers]]
name = "a"
profile = "rpi4"
count = 1
[[fleet.tiers]]
name = "b"
profile = "rpi4"
count = 1
savers = { quant = { weight_bits = 4, range_bn = false } }
"""


def test_scenario_quant_section_and_per_tier_overrides() -> None:
    scenario = parse_scenario(SCENARIO)
    a, b = (quant_config(t.savers) for t in scenario.tiers)
    assert a == QuantConfig()
    assert b == QuantConfig(weight_bits=4, range_bn=False)
    assert scenario.tiers[0].savers.label == "q"
    assert quant_config(parse_scenario(SCENARIO.replace("enabled = true", "")).savers) is None


def test_scenario_rejects_bad_widths_with_their_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse_scenario(SCENARIO.replace("weight_bits = 4", "weight_bits = 24"))
    assert "fleet.tiers[1].savers.quant" in str(info.value) and "24" in str(info.value)


def test_fleet_device_round_trains_quantized_per_tier() -> None:
    # Prepare: tier "a" trains in float32, tier "b" in 8 bits (EIF on for both).
    text = SCENARIO.replace("[savers.quant]\nenabled = true", "[train]\nbatch_size = 32")
    text = text.replace("savers = { quant = { weight_bits = 4, range_bn = false } }", "")
    text += "savers = { quant = { enabled = true }, eif = { enabled = true } }\n"
    text = text.replace("[data]\n", "[data]\narrivals_per_round = 64\n")
    runtime = FleetRuntime(parse_scenario(text))
    weights = transported_weights(runtime.main_net, runtime.weight_names)
    # Execute
    plain, _ = runtime.train_round(0, weights, 1, None)
    quantized, state = runtime.train_round(1, weights, 1, None)
    # Assert: same exact-MAC accounting rules; only the 8-bit device has a 32-bit-eq saving
    assert plain.ledger.precision_saved_macs == 0.0 and plain.ledger.lowbit_macs == 0
    lg = quantized.ledger
    assert lg.trained > 0 and lg.filter_forward_macs > 0
    assert lg.lowbit_forward_macs > 0 and 0 < lg.spent_macs_32eq < lg.spent_macs
    assert set(quantized.weights) == set(weights)
    assert set(state["trainer"]["filter"]["net"]) == set(runtime.filter_net.state_dict())
    assert not any(m._forward_pre_hooks for m in runtime.main_net.modules())  # detached
