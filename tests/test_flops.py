"""Tests for fededge.cost.flops: hand counts per layer, and full training steps checked
against PyTorch's own ``torch.utils.flop_counter.FlopCounterMode``.

FlopCounterMode reports FLOPs = 2·MACs for aten.convolution, aten.convolution_backward,
aten.addmm and aten.mm, and nothing for batch norm, activations, pooling or adds; so
it checks our conv and linear counts (forward, backward) exactly.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fededge.cost.flops import KINDS, LayerCost, ModelCost, model_cost
from fededge.errors import ModelError
from fededge.models import ResidualAdd, build_filter, cifar_resnet, lenet5, vgg16

# --------------------------------------------------------------------------- hand counts


def test_first_conv_has_no_grad_input() -> None:
    # Conv2d(3 -> 4, 3x3, pad 1) on 3x8x8: 4·8·8 = 256 outputs, each 3·3·3 = 27 MACs
    # -> 6,912 forward. It reads the data (no grad) so grad-input = 0; grad-weight = 6,912.
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    cost = model_cost(model, (3, 8, 8))
    layer = cost.layer("0")
    assert (layer.kind, layer.forward_macs, layer.grad_input_macs, layer.grad_weight_macs) == (
        "conv",
        6_912,
        0,
        6_912,
    )
    assert layer.out_channels == 4 and layer.params == 4 * 27 + 4
    assert cost.training_macs == 2 * 6_912


def test_second_conv_has_grad_input_and_strided_grouped_formula() -> None:
    # conv "1": Conv2d(4 -> 8, 3x3, stride 2, pad 1, groups 2) on 4x8x8 -> 8x4x4 = 128 outputs,
    # each (4/2)·3·3 = 18 MACs -> 2,304 forward; its input needs grad -> all three = 2,304.
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 8, 3, 2, 1, groups=2))
    layer = model_cost(model, (3, 8, 8)).layer("1")
    assert (layer.forward_macs, layer.grad_input_macs, layer.grad_weight_macs) == (2_304,) * 3


def test_linear_hand_count() -> None:
    # Flatten 3x2x2 -> 12; Linear(12 -> 5): 60 MACs; it is the first costed layer and
    # reads the data -> no grad-input. Linear(5 -> 2) after it: 10 MACs each.
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.Linear(5, 2))
    cost = model_cost(model, (3, 2, 2))
    assert [layer.name for layer in cost.layers] == ["1", "2"]  # Flatten costs nothing
    first, second = cost.layer("1"), cost.layer("2")
    assert (first.forward_macs, first.grad_input_macs, first.grad_weight_macs) == (60, 0, 60)
    assert (second.forward_macs, second.grad_input_macs, second.grad_weight_macs) == (10, 10, 10)
    assert first.kind == "linear" and first.out_channels == 5


def test_batch_norm_hand_count() -> None:
    # BN on 4x8x8 = 256 elements: forward 4/elem = 1,024; grad-input 4/elem = 1,024;
    # grad-weight 2/elem = 512 (∂γ = Σ g·x̂, ∂β = Σ g).
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    layer = model_cost(model, (3, 8, 8)).layer("1")
    assert (layer.kind, layer.forward_macs, layer.grad_input_macs, layer.grad_weight_macs) == (
        "bn",
        1_024,
        1_024,
        512,
    )
    assert layer.params == 8 and layer.out_channels == 4


def test_frozen_batch_norm_moves_reductions_to_grad_input() -> None:
    # Same BN, γ and β frozen: no grad-weight; grad-input does the reductions: 6/elem = 1,536.
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    model[1].requires_grad_(False)
    layer = model_cost(model, (3, 8, 8)).layer("1")
    assert (layer.grad_input_macs, layer.grad_weight_macs) == (1_536, 0)


def test_pool_and_activation_hand_counts() -> None:
    # input 4x8x8 after a 1x1 conv. ReLU: 0. MaxPool2d(2): 0 (comparisons).
    # AvgPool2d(2): 4x4x4 = 64 outputs x 4-element windows = 256, grad-input the same.
    # AdaptiveAvgPool2d(3) on 8 -> 3 per axis: windows [0,3) [2,6) [5,8) = 3+4+3 = 10 per axis,
    # so 10·10 = 100 per channel -> 400.
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Identity(), nn.Dropout(0.5)
    )
    cost = model_cost(model, (3, 8, 8))
    assert [(layer.name, layer.kind, layer.training_macs) for layer in cost.layers[1:]] == [
        ("1", "act", 0),
        ("2", "pool", 0),
    ]
    avg = model_cost(nn.Sequential(nn.Conv2d(3, 4, 1), nn.AvgPool2d(2)), (3, 8, 8)).layer("1")
    assert (avg.forward_macs, avg.grad_input_macs, avg.grad_weight_macs) == (256, 256, 0)
    adaptive = model_cost(nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(3)), (3, 8, 8))
    assert adaptive.layer("1").forward_macs == 400
    assert adaptive.layer("1").grad_input_macs == 400


def test_residual_add_counts_one_per_element_forward_only() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1, bias=False)
            self.add = ResidualAdd()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y: torch.Tensor = self.add(self.conv(x), x)
            return y

    # conv 1x1, 2 -> 2 on 2x3x3: 18 outputs x 2 = 36; add: 2x3x3 = 18 forward, 0 backward
    cost = model_cost(Twice(), (2, 3, 3))
    assert [(layer.name, layer.kind) for layer in cost.layers] == [("conv", "conv"), ("add", "add")]
    assert (cost.layer("add").forward_macs, cost.layer("add").backward_macs) == (18, 0)
    assert cost.forward_macs == 36 + 18


def test_module_called_twice_is_summed_under_one_name() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y: torch.Tensor = self.fc(self.fc(x.flatten(1)))
            return y

    # call 1 reads data: 16 fwd, 0 grad-input, 16 grad-weight; call 2: 16 each
    layer = model_cost(Shared(), (1, 2, 2)).layer("fc")
    assert (layer.forward_macs, layer.grad_input_macs, layer.grad_weight_macs) == (32, 16, 32)


def test_frozen_layers_have_no_grad_weight() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))
    model[1].requires_grad_(False)
    layer = model_cost(model, (3, 8, 8)).layer("1")
    assert layer.grad_weight_macs == 0 and layer.grad_input_macs == layer.forward_macs


def test_lenet5_totals_by_hand() -> None:
    # conv1 28·28·6·(1·5·5) = 117,600   conv2 10·10·16·(6·5·5) = 240,000
    # fc 400·120 + 120·84 + 84·10 = 48,000 + 10,080 + 840 = 58,920   -> forward 416,520
    # grad-input: all but conv1 (it reads the data) = 240,000 + 58,920 = 298,920
    # grad-weight = forward = 416,520; training = 1,131,960 (2.72 x forward)
    cost = model_cost(lenet5(), (1, 28, 28))
    assert cost.forward_macs == 416_520
    assert cost.grad_input_macs == 298_920
    assert cost.grad_weight_macs == 416_520
    assert cost.backward_macs == 715_440
    assert cost.training_macs == 1_131_960


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_cifar_resnet_conv_forward_closed_form(depth: int) -> None:
    # conv1: 32·32·16·27 = 442,368. Every other 3x3 conv costs 32·32·16·144 = 2,359,296,
    # except the two stride-2 convs entering stages 2 and 3 (half that: 1,179,648 each).
    # 6n convs after conv1 -> 442,368 + 2,359,296·(6n − 1); ResNet-110: 252,887,040 (≈ 253M).
    n = (depth - 2) // 6
    cost = model_cost(cifar_resnet(depth), (3, 32, 32))
    assert cost.by_kind()["conv"].forward_macs == 442_368 + 2_359_296 * (6 * n - 1)
    assert cost.by_kind()["linear"].forward_macs == 640


def test_slim_lenet_filter_is_cheap() -> None:
    # 14·14·6·9 + 5·5·16·54 + 144·2 = 10,584 + 21,600 + 288 = 32,472
    filter_cost = model_cost(build_filter("slim-lenet", in_channels=1, image_size=28), (1, 28, 28))
    main = model_cost(lenet5(), (1, 28, 28))
    assert filter_cost.forward_macs == 32_472
    assert filter_cost.forward_macs <= 0.10 * main.forward_macs


# --------------------------------------------------------------------------- data types


def test_by_kind_partitions_the_totals() -> None:
    cost = model_cost(cifar_resnet(8), (3, 32, 32))
    parts = cost.by_kind()
    assert list(parts) == [kind for kind in KINDS if kind in parts]
    assert set(parts) == {"conv", "linear", "bn", "act", "pool", "add"}
    assert sum(p.forward_macs for p in parts.values()) == cost.forward_macs
    assert sum(p.grad_input_macs for p in parts.values()) == cost.grad_input_macs
    assert sum(p.grad_weight_macs for p in parts.values()) == cost.grad_weight_macs


def test_layer_names_map_to_conv_modules() -> None:
    model = cifar_resnet(20)
    cost = model_cost(model, (3, 32, 32))
    modules = dict(model.named_modules())
    for layer in cost.by_kind()["conv"].layers:
        conv = modules[layer.name]
        assert isinstance(conv, nn.Conv2d) and conv.out_channels == layer.out_channels
    assert cost.params == sum(p.numel() for p in model.parameters())


def test_unknown_layer_name_suggests_closest() -> None:
    cost = model_cost(lenet5(), (1, 28, 28))
    with pytest.raises(KeyError, match="did you mean 'conv1'"):
        cost.layer("conv_1")


def test_layer_cost_validates() -> None:
    with pytest.raises(ValueError, match="kind"):
        LayerCost("x", "softmax", 1, 0, 0, None, 0)
    with pytest.raises(ValueError, match="forward_macs"):
        LayerCost("x", "conv", -1, 0, 0, None, 0)
    layer = LayerCost("x", "conv", 1, 0, 0, None, 0)
    with pytest.raises(ValueError, match="unique"):
        ModelCost((layer, layer))


# --------------------------------------------------------------------------- model_cost behaviour


def test_model_state_is_left_untouched() -> None:
    # Prepare: a model in train mode with one sub-module in eval mode, BN stats set
    torch.manual_seed(0)
    model = cifar_resnet(8)
    model.train()
    model.layer2.eval()
    model.bn1.running_mean = torch.full((16,), 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    # Execute
    model_cost(model, (3, 32, 32))
    # Assert
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # params and BN buffers
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())


def test_counts_grad_inputs_even_under_no_grad() -> None:
    model = lenet5()
    with torch.no_grad():
        cost = model_cost(model, (1, 28, 28))
    assert cost.grad_input_macs == 298_920


def test_unsupported_module_raises() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sigmoid())
    with pytest.raises(ModelError, match="cannot count module '1' of type Sigmoid"):
        model_cost(model, (1, 8, 8))


@pytest.mark.parametrize("shape", [(28, 28), (1, 0, 28), [1, 28, 28], (1.0, 28, 28)])
def test_bad_input_shape_raises(shape: tuple[int, int, int]) -> None:
    with pytest.raises(ModelError, match=r"\(C, H, W\)"):
        model_cost(lenet5(), shape)


def test_input_the_model_cannot_take_raises() -> None:
    with pytest.raises(ModelError, match="does not accept inputs of shape"):
        model_cost(lenet5(), (1, 32, 32))


def test_resnet110_cost_is_cheap_to_compute() -> None:
    model = cifar_resnet(110)
    model_cost(model, (3, 32, 32))  # warm up
    times = []
    for _ in range(3):
        start = time.perf_counter()
        model_cost(model, (3, 32, 32))
        times.append(time.perf_counter() - start)
    # ~30 ms on 2 CPU cores; the bound leaves room for a shared machine
    assert statistics.median(times) < 0.5


# --------------------------------------------------------------------------- vs FlopCounterMode

BATCH = 8


def _flop_counts(model: nn.Module, x: torch.Tensor) -> dict[str, dict[str, int]]:
    """FLOPs of one full training step (forward, loss, backward), by module then op."""
    target = torch.zeros(x.shape[0], dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        loss = F.cross_entropy(model(x), target)
        torch.autograd.backward(loss)
    return {
        module: {str(op): flops for op, flops in ops.items()}
        for module, ops in counter.get_flop_counts().items()
    }


def _assert_layers_match(
    model: nn.Module, cost: ModelCost, counts: dict[str, dict[str, int]]
) -> None:
    """Every conv and linear layer: forward and backward MACs = FLOPs / 2 / batch, within 1%."""
    prefix = type(model).__name__
    for layer in cost.layers:
        if layer.kind not in ("conv", "linear"):
            continue
        ops = counts.get(f"{prefix}.{layer.name}", {})
        if layer.kind == "conv":
            forward, backward = ops["aten.convolution"], ops.get("aten.convolution_backward", 0)
        else:  # with a bias: forward is one addmm, backward one mm per gradient
            forward, backward = ops["aten.addmm"], ops.get("aten.mm", 0)
        assert 2 * BATCH * layer.forward_macs == pytest.approx(forward, rel=0.01), layer.name
        assert 2 * BATCH * layer.backward_macs == pytest.approx(backward, rel=0.01), layer.name


@pytest.mark.parametrize(
    ("build", "shape"),
    [(lenet5, (1, 28, 28)), (lambda: cifar_resnet(20), (3, 32, 32))],
    ids=["lenet5", "resnet20"],
)
def test_training_step_matches_flop_counter(
    build: Callable[[], nn.Module], shape: tuple[int, int, int]
) -> None:
    # Prepare
    torch.manual_seed(0)
    model = build()
    cost = model_cost(model, shape)
    # Execute
    counts = _flop_counts(model, torch.randn(BATCH, *shape))
    # Assert: totals per op (FLOPs = 2·MACs, times the batch)
    total = counts["Global"]
    conv, linear = cost.by_kind()["conv"], cost.by_kind()["linear"]
    assert 2 * BATCH * conv.forward_macs == pytest.approx(total["aten.convolution"], rel=0.01)
    assert 2 * BATCH * conv.backward_macs == pytest.approx(
        total["aten.convolution_backward"], rel=0.01
    )
    assert 2 * BATCH * linear.forward_macs == pytest.approx(total["aten.addmm"], rel=0.01)
    assert 2 * BATCH * linear.backward_macs == pytest.approx(total["aten.mm"], rel=0.01)
    # ... and per layer
    _assert_layers_match(model, cost, counts)
    # The first conv reads the data: PyTorch computes only its weight gradient, and so do we.
    first = cost.layer("conv1")
    assert first.grad_input_macs == 0
    backward_flops = counts[f"{type(model).__name__}.conv1"]["aten.convolution_backward"]
    assert backward_flops == 2 * BATCH * first.grad_weight_macs


def test_grad_input_alone_matches_flop_counter() -> None:
    # Prepare: only conv1 trains, so every later conv and the fc compute grad-input only
    # (their inputs need grad, their weights do not): checks grad-input separately.
    torch.manual_seed(0)
    model = cifar_resnet(20)
    model.requires_grad_(False)
    model.conv1.weight.requires_grad_(True)
    cost = model_cost(model, (3, 32, 32))
    # Execute
    total = _flop_counts(model, torch.randn(BATCH, 3, 32, 32))["Global"]
    # Assert
    conv, linear = cost.by_kind()["conv"], cost.by_kind()["linear"]
    assert conv.grad_weight_macs == cost.layer("conv1").forward_macs
    assert 2 * BATCH * conv.backward_macs == pytest.approx(
        total["aten.convolution_backward"], rel=0.01
    )
    assert linear.grad_weight_macs == 0
    assert 2 * BATCH * linear.grad_input_macs == pytest.approx(total["aten.mm"], rel=0.01)


def test_vgg16_forward_matches_flop_counter() -> None:
    model = vgg16()
    cost = model_cost(model, (3, 32, 32))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    flops = counter.get_total_flops()
    by_kind = cost.by_kind()
    assert 2 * (by_kind["conv"].forward_macs + by_kind["linear"].forward_macs) == flops


@pytest.mark.parametrize(
    ("main", "filt", "channels", "size"),
    [
        ("lenet5", "slim-lenet", 1, 28),
        ("resnet20", "resnet8", 3, 32),
        ("resnet20", "slim-resnet8", 3, 32),
        ("vgg16", "resnet8", 3, 32),
    ],
)
def test_priced_costs_are_the_real_nets_costs_and_leave_the_generator_as_it_was(
    main: str, filt: str, channels: int, size: int
) -> None:
    from fededge.cost.pricing import net_costs
    from fededge.models import build_model

    net_costs.cache_clear()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    priced = net_costs(main, filt, channels=channels, image_size=size, num_classes=10)
    assert torch.equal(torch.get_rng_state(), before)  # pricing changed nothing a run sees
    real_main = build_model(main, num_classes=10, in_channels=channels, image_size=size)
    real_filter = build_filter(filt, in_channels=channels, image_size=size)
    shape = (channels, size, size)
    assert priced == (model_cost(real_main, shape), model_cost(real_filter, shape))
