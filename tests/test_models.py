"""Tests for fededge.models: shapes, parameter counts, registry errors, initialisation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fededge.errors import ModelError
from fededge.models import (
    FILTER_NAMES,
    HIGH_LOSS,
    LOW_LOSS,
    MODEL_NAMES,
    BasicBlock,
    MaxPool2d,
    ResidualAdd,
    ZeroPadShortcut,
    build_filter,
    build_model,
    check_filter_name,
    check_model_name,
    cifar_resnet,
    lenet5,
    resnet8_filter,
    slim_lenet_filter,
    slim_resnet8_filter,
    vgg16,
)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _input_for(name: str) -> tuple[int, int]:
    """(in_channels, image_size) each network is built for in these tests."""
    return (1, 28) if name in ("lenet5", "slim-lenet") else (3, 32)


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if n != "resnet110"])
def test_build_model_output_shape(name: str) -> None:
    # Prepare
    channels, size = _input_for(name)
    model = build_model(name, num_classes=7, in_channels=channels, image_size=size)
    # Execute
    logits = model(torch.randn(2, channels, size, size))
    # Assert
    assert logits.shape == (2, 7)


@pytest.mark.parametrize("name", FILTER_NAMES)
def test_build_filter_outputs_two_logits(name: str) -> None:
    channels, size = _input_for(name)
    net = build_filter(name, in_channels=channels, image_size=size)
    logits = net(torch.randn(3, channels, size, size))
    assert logits.shape == (3, 2)
    assert (LOW_LOSS, HIGH_LOSS) == (0, 1)


def test_lenet5_parameter_count_by_hand() -> None:
    # conv1 6·1·5·5 + 6 = 156; conv2 16·6·5·5 + 16 = 2,416; fc1 400·120 + 120 = 48,120;
    # fc2 120·84 + 84 = 10,164; fc3 84·10 + 10 = 850  ->  61,706
    assert _params(lenet5()) == 156 + 2_416 + 48_120 + 10_164 + 850 == 61_706


@pytest.mark.parametrize(
    ("depth", "expected"),
    [(8, 75_290), (20, 269_722), (56, 853_018), (110, 1_727_962)],
)
def test_cifar_resnet_parameter_counts(depth: int, expected: int) -> None:
    # option-A shortcuts add no parameters: the usual 0.27M (ResNet-20) and 1.73M (ResNet-110)
    assert _params(cifar_resnet(depth)) == expected


def test_resnet20_has_19_convs_one_linear_and_parameter_free_shortcuts() -> None:
    model = cifar_resnet(20)
    modules = list(model.modules())
    assert sum(isinstance(m, nn.Conv2d) for m in modules) == 19
    assert sum(isinstance(m, nn.Linear) for m in modules) == 1
    assert sum(isinstance(m, ResidualAdd) for m in modules) == 9
    shortcuts = [m for m in modules if isinstance(m, ZeroPadShortcut)]
    assert len(shortcuts) == 2  # entering stages 2 and 3
    assert all(_params(m) == 0 for m in shortcuts)


def test_resnet110_forward_shape() -> None:
    model = build_model("resnet110", num_classes=100, in_channels=3, image_size=32)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def test_zero_pad_shortcut_subsamples_and_pads_zeros() -> None:
    # Prepare: 2 channels of 4x4 -> stride 2 keeps pixels (0,0),(0,2),(2,0),(2,2); pad to 4 ch
    x = torch.arange(32, dtype=torch.float32).reshape(1, 2, 4, 4)
    # Execute
    y = ZeroPadShortcut(2, 4, stride=2)(x)
    # Assert
    assert y.shape == (1, 4, 2, 2)
    assert torch.equal(y[0, 0], torch.tensor([[0.0, 2.0], [8.0, 10.0]]))
    assert torch.equal(y[0, 1], torch.tensor([[16.0, 18.0], [24.0, 26.0]]))
    assert torch.count_nonzero(y[0, 2:]) == 0


def test_basic_block_adds_shortcut_through_residual_add_module() -> None:
    block = BasicBlock(16, 16)
    seen: list[int] = []
    block.add.register_forward_hook(lambda m, inputs, out: seen.append(len(inputs)))
    block(torch.randn(1, 16, 8, 8))
    assert seen == [2]


def test_vgg16_parameter_count_and_layout() -> None:
    model = vgg16()
    # 13 convs (no bias) + 13 BN (2·C each) + linear 512·10 + 10
    assert _params(model) == 14_724_042
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 13
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 5


def test_slim_lenet_filter_layout() -> None:
    net = slim_lenet_filter()
    # conv1 6·1·3·3 + 6 = 60; conv2 16·6·3·3 + 16 = 880; fc 144·2 + 2 = 290
    assert _params(net) == 60 + 880 + 290 == 1_230
    kernels = [m.kernel_size for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert kernels == [(3, 3), (3, 3)]
    assert [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)] == [6, 16]


def test_resnet8_filter_is_three_single_block_stages() -> None:
    net = resnet8_filter()
    assert [len(stage) for stage in (net.layer1, net.layer2, net.layer3)] == [1, 1, 1]
    convs = [net.get_submodule(f"layer{i}.0.conv1") for i in (1, 2, 3)]
    assert [c.out_channels for c in convs if isinstance(c, nn.Conv2d)] == [16, 32, 64]
    assert net.fc.out_features == 2
    assert _params(net) == 74_770


def test_slim_resnet8_filter_halves_the_width_and_strides_its_first_conv() -> None:
    net = slim_resnet8_filter()
    assert [len(stage) for stage in (net.layer1, net.layer2, net.layer3)] == [1, 1, 1]
    assert net.conv1.stride == (2, 2)
    convs = [net.get_submodule(f"layer{i}.0.conv1") for i in (1, 2, 3)]
    assert [c.out_channels for c in convs if isinstance(c, nn.Conv2d)] == [8, 16, 32]
    assert net.fc.out_features == 2
    # conv1 3·8·9 = 216, BN 16; layer1 2·(8·8·9) + 2 BN·16 = 1,184; layer2 8·16·9 + 16·16·9
    # + 2·32 = 3,520; layer3 16·32·9 + 32·32·9 + 2·64 = 13,952; fc 32·2 + 2 = 66
    assert _params(net) == 216 + 16 + 1_184 + 3_520 + 13_952 + 66 == 18_954


def test_slim_resnet8_filter_costs_a_sixteenth_of_resnet8() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    def forward_macs(net: nn.Module) -> int:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(torch.randn(1, 3, 32, 32))
        return counter.get_total_flops() // 2

    slim, full = forward_macs(slim_resnet8_filter()), forward_macs(resnet8_filter())
    # half the channels (1/4 of the MACs) on maps of a quarter of the area: 1/16 of
    # every conv; the fc and the first conv's 3 input channels round it a little
    assert slim == 792_640
    assert 15.0 < full / slim < 16.0


@pytest.mark.parametrize("name", ["lenet5", "resnet8", "resnet74", "resnet110", "resnet1202"])
def test_check_model_name_accepts_valid_names(name: str) -> None:
    assert check_model_name(name) is None


@pytest.mark.parametrize(
    ("bad", "suggestion"),
    [
        ("resnet21", "resnet20"),
        ("resnet5", "resnet8"),
        ("resnt110", "resnet110"),
        ("ResNet20", "resnet20"),
        ("vgg19", "vgg16"),
        ("lenet", "lenet5"),
    ],
)
def test_bad_model_name_raises_with_suggestion(bad: str, suggestion: str) -> None:
    message = check_model_name(bad)
    assert message is not None and f"did you mean {suggestion!r}" in message
    with pytest.raises(ModelError, match=f"did you mean '{suggestion}'"):
        build_model(bad, num_classes=10, in_channels=3, image_size=32)


def test_bad_filter_name_raises_with_suggestion() -> None:
    assert check_filter_name("resnet8") is None
    with pytest.raises(ModelError, match="did you mean 'slim-lenet'"):
        build_filter("slimlenet", in_channels=1, image_size=28)


def test_unrelated_name_lists_expected_names() -> None:
    message = check_model_name("transformer")
    assert message is not None
    assert "lenet5" in message and "vgg16" in message and "6n+2" in message


@pytest.mark.parametrize("depth", [0, 7, 9, 21, 111])
def test_cifar_resnet_invalid_depth(depth: int) -> None:
    with pytest.raises(ModelError, match="6n\\+2"):
        cifar_resnet(depth)


@pytest.mark.parametrize(
    ("name", "image_size", "expected"),
    [("lenet5", 32, "28x28"), ("resnet20", 28, "32x32"), ("vgg16", 64, "32x32")],
)
def test_build_model_checks_image_size(name: str, image_size: int, expected: int) -> None:
    with pytest.raises(ModelError, match=f"expects {expected} inputs"):
        build_model(name, num_classes=10, in_channels=3, image_size=image_size)


def test_build_filter_checks_image_size() -> None:
    with pytest.raises(ModelError, match="use resnet8"):
        build_filter("slim-lenet", in_channels=3, image_size=32)


@pytest.mark.parametrize("num_classes", [0, -1, True])
def test_num_classes_must_be_positive(num_classes: int) -> None:
    with pytest.raises(ModelError, match="num_classes"):
        build_model("resnet20", num_classes=num_classes, in_channels=3, image_size=32)


@pytest.mark.parametrize(("name", "channels", "size"), [("lenet5", 1, 28), ("resnet20", 3, 32)])
def test_initialisation_is_deterministic_under_manual_seed(
    name: str, channels: int, size: int
) -> None:
    torch.manual_seed(0)
    first = build_model(name, num_classes=10, in_channels=channels, image_size=size)
    torch.manual_seed(0)
    second = build_model(name, num_classes=10, in_channels=channels, image_size=size)
    torch.manual_seed(1)
    third = build_model(name, num_classes=10, in_channels=channels, image_size=size)
    a, b, c = first.state_dict(), second.state_dict(), third.state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not all(torch.equal(a[key], c[key]) for key in a)


def test_resnet_convs_use_kaiming_fan_out_init() -> None:
    torch.manual_seed(0)
    conv = cifar_resnet(20).get_submodule("layer3.1.conv1")
    assert isinstance(conv, nn.Conv2d)
    weight = conv.weight  # fan-out 64·3·3 = 576
    expected_std = (2.0 / 576) ** 0.5
    assert weight.std().item() == pytest.approx(expected_std, rel=0.05)


_POOL_CASES = [
    (shape, ceil)
    for shape in [(3, 4, 28, 28), (2, 3, 5, 5), (2, 3, 7, 6), (3, 5, 5)]
    for ceil in (False, True)
] + [((1, 2, 1, 1), True)]  # a 1x1 map has a 2x2 window only in ceil mode


@pytest.mark.parametrize(("shape", "ceil_mode"), _POOL_CASES)
def test_max_pool_inference_path_equals_max_pool2d(shape: tuple[int, ...], ceil_mode: bool) -> None:
    torch.manual_seed(0)
    pool = MaxPool2d(2, ceil_mode=ceil_mode)
    for x in (
        torch.randn(shape),
        torch.randint(-2, 3, shape).float().relu(),  # ties, as after a ReLU
        torch.full(shape, -math.inf),
        torch.randn(shape).masked_fill(torch.rand(shape) < 0.2, math.nan),
    ):
        with torch.no_grad():
            fast = pool(x)
        slow = F.max_pool2d(x, 2, ceil_mode=ceil_mode)
        assert fast.shape == slow.shape
        assert torch.equal(fast.nan_to_num(nan=7.0), slow.nan_to_num(nan=7.0))


def test_max_pool_keeps_max_pool2d_where_a_gradient_is_needed() -> None:
    x = torch.randint(-2, 3, (2, 3, 6, 6)).float().relu().requires_grad_()
    y = x.detach().clone().requires_grad_()
    grad = torch.randn(2, 3, 3, 3)
    MaxPool2d(2)(x).backward(grad)
    F.max_pool2d(y, 2).backward(grad)
    assert x.grad is not None and y.grad is not None
    assert torch.equal(x.grad, y.grad)  # ties: the first maximum gets the gradient
    assert isinstance(MaxPool2d(2), nn.MaxPool2d)  # counted, saved and listed as before
