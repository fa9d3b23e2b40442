"""Tests for fededge.method.error_map: exact gradients, the channel choice, real FLOP savings."""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from fededge.errors import ConfigError, FedEdgeError
from fededge.method.error_map import (
    EMPConfig,
    EMPConfigError,
    ErrorMapPruner,
    KernelPlans,
    channel_scores,
    kept_channels,
    num_kept,
)

PLANS = ("autotune", "rule", "aten", "cl", "cl-swap", "nchw-swap")


class SmallCNN(nn.Module):
    """Convs with and without bias, stride 1 and 2, padding 1 / 0 / dilated, a first conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=True)  # first: input needs no grad
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=2, dilation=2, bias=True)
        self.conv4 = nn.Conv2d(16, 12, 3, padding=0, bias=False)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.conv3(x)) + x
        x = F.relu(self.conv4(x))
        out: Tensor = self.fc(x.mean(dim=(2, 3)))
        return out


def resnet_like(widths: tuple[int, ...] = (16, 32, 64)) -> nn.Sequential:
    """A CIFAR-ResNet-shaped conv stack (no shortcuts): 3 -> w0, then 2 convs per width."""
    layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.ReLU()]
    c_in = widths[0]
    for i, width in enumerate(widths):
        stride = 1 if i == 0 else 2
        layers += [nn.Conv2d(c_in, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)]
        layers += [nn.ReLU(), nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.ReLU()]
        c_in = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10))


def loss_of(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(model(x), y)


def grads(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@contextmanager
def zero_error_outside(model: nn.Module, kept: dict[str, Tensor]) -> Iterator[None]:
    """Reference: dense autograd with δ of the channels *not* kept set to 0."""

    def on_forward(name: str):  # type: ignore[no-untyped-def]
        def hook(_m: nn.Module, _i: object, out: Tensor) -> None:
            mask = torch.zeros(out.shape[1], dtype=out.dtype)
            mask[kept[name]] = 1.0
            out.register_hook(lambda g: g * mask.view(1, -1, 1, 1))

        return hook

    handles = [
        m.register_forward_hook(on_forward(n)) for n, m in model.named_modules() if n in kept
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def data(dtype: torch.dtype = torch.float32, n: int = 6) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, 16, 16, generator=g, dtype=dtype)
    return x, torch.randint(0, 5, (n,), generator=g)


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("kernels", PLANS)
def test_keep_all_matches_dense_autograd(kernels: str) -> None:
    # Prepare
    torch.manual_seed(0)
    dense = SmallCNN()
    pruned = copy.deepcopy(dense)
    pruner = ErrorMapPruner(pruned, EMPConfig(keep_ratio=1.0), kernels=kernels)  # type: ignore[arg-type]
    x, y = data()
    # Execute
    loss_of(dense, x, y).backward()
    loss_of(pruned, x, y).backward()
    # Assert
    expected, got = grads(dense), grads(pruned)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)
    assert set(pruner.kernel_choices()) == {"conv1", "conv2", "conv3", "conv4"}


@pytest.mark.parametrize("kernels", PLANS)
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_pruned_equals_dense_with_zeroed_error(
    kernels: str, dtype: torch.dtype, tol: float
) -> None:
    # Prepare
    torch.manual_seed(0)
    dense = SmallCNN().to(dtype)
    pruned = copy.deepcopy(dense)
    pruner = ErrorMapPruner(pruned, EMPConfig(keep_ratio=0.3), kernels=kernels)  # type: ignore[arg-type]
    x, y = data(dtype)
    # Execute
    loss_of(pruned, x, y).backward()
    kept = pruner.kept_indices()
    with zero_error_outside(dense, kept):
        loss_of(dense, x, y).backward()
    # Assert
    assert {n: len(k) for n, k in kept.items()} == {"conv1": 3, "conv2": 5, "conv3": 5, "conv4": 4}
    expected, got = grads(dense), grads(pruned)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=tol, atol=tol, msg=name)
    for conv in ("conv1", "conv2", "conv3", "conv4"):  # pruned filters get exactly zero
        weight_grad = got[f"{conv}.weight"]
        pruned_rows = torch.ones(weight_grad.shape[0], dtype=torch.bool)
        pruned_rows[kept[conv]] = False
        assert torch.count_nonzero(weight_grad[pruned_rows]) == 0


def test_choice_and_gradients_are_deterministic() -> None:
    # Prepare
    torch.manual_seed(0)
    models = [SmallCNN(), None]
    models[1] = copy.deepcopy(models[0])
    x, y = data()
    # Execute
    results = []
    for model in models:
        assert model is not None
        pruner = ErrorMapPruner(model, EMPConfig(keep_ratio=0.5), kernels="rule")
        loss_of(model, x, y).backward()
        results.append((pruner.kept_indices(), grads(model)))
    # Assert
    (kept_a, grads_a), (kept_b, grads_b) = results
    for name in kept_a:
        assert torch.equal(kept_a[name], kept_b[name])
        assert torch.equal(kept_a[name], kept_a[name].sort().values)
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name])


# --------------------------------------------------------------------------- the choice


def test_channel_scores_by_hand() -> None:
    # Prepare: filter norms w = (1, 2, 3, 2) -> mean 2; errors e = (8, 2, 2, 4) -> mean 4
    weight = torch.zeros(4, 1, 1, 1)
    weight[:, 0, 0, 0] = torch.tensor([1.0, -2.0, 3.0, 2.0])
    grad_out = torch.zeros(2, 4, 1, 2)
    grad_out[0, :, 0, 0] = torch.tensor([4.0, -1.0, 1.0, 2.0])
    grad_out[1, :, 0, 1] = torch.tensor([-4.0, 1.0, 1.0, -2.0])
    # Execute
    scores = channel_scores(grad_out, weight, gamma_weight=1.0, gamma_error=2.0)
    # Assert: s = w/2 + 2·e/4 = (0.5 + 4, 1 + 1, 1.5 + 1, 1 + 2)
    torch.testing.assert_close(scores, torch.tensor([4.5, 2.0, 2.5, 3.0]))
    assert kept_channels(scores, 2).tolist() == [0, 3]
    assert kept_channels(scores, 3).tolist() == [0, 2, 3]


def test_ties_go_to_the_lower_index_and_zero_terms_are_harmless() -> None:
    # Prepare: all-zero error (mean 0) and equal filter norms: every score ties
    weight = torch.ones(6, 2, 3, 3)
    grad_out = torch.zeros(3, 6, 4, 4)
    # Execute
    scores = channel_scores(grad_out, weight, 1.0, 1.0)
    # Assert
    assert torch.isfinite(scores).all()
    assert kept_channels(scores, 2).tolist() == [0, 1]
    assert kept_channels(torch.tensor([1.0, 3.0, 3.0, 0.0, 3.0]), 2).tolist() == [1, 2]


def test_pruner_keeps_the_top_k_by_the_documented_score() -> None:
    # Prepare: loss = Σ out·G, so δ = G exactly; one conv with 4 filters of norm 1, 2, 3, 2
    conv = nn.Conv2d(1, 4, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 2.0]).view(4, 1, 1, 1))
    pruner = ErrorMapPruner(conv, EMPConfig(keep_ratio=0.5), kernels="rule")
    x = torch.ones(2, 1, 1, 2, requires_grad=True)
    g = torch.zeros(2, 4, 1, 2)
    g[0, :, 0, 0] = torch.tensor([4.0, 1.0, 1.0, 2.0])
    g[1, :, 0, 1] = torch.tensor([4.0, 1.0, 1.0, 2.0])  # e = (8, 2, 2, 4)
    # Execute
    (conv(x) * g).sum().backward()
    # Assert: s = w/2 + e/4 = (2.5, 1.5, 2, 2) -> top 2 = {0, 2}, the 2.0 tie goes to 2
    assert pruner.kept_indices()[""].tolist() == [0, 2]
    assert x.grad is not None
    expected_x_grad = (g[:, [0, 2]] * conv.weight.detach()[[0, 2]].view(1, 2, 1, 1)).sum(1, True)
    torch.testing.assert_close(x.grad, expected_x_grad)


@pytest.mark.parametrize(
    ("alpha", "c_out", "k"), [(0.3, 16, 5), (0.3, 10, 3), (0.5, 16, 8), (1e-3, 16, 1), (1.0, 7, 7)]
)
def test_num_kept_is_ceiling(alpha: float, c_out: int, k: int) -> None:
    assert num_kept(alpha, c_out) == k


# --------------------------------------------------------------------------- real savings


def backward_conv_flops(model: nn.Module, x: Tensor, y: Tensor) -> int:
    """FLOPs of every convolution op (forward-style or backward) run inside backward()."""
    loss = loss_of(model, x, y)
    with FlopCounterMode(display=False) as counter:
        loss.backward()
    counts = counter.get_flop_counts()["Global"]
    ops = (torch.ops.aten.convolution, torch.ops.aten.convolution_backward)
    return int(sum(v for op, v in counts.items() if op in ops or op in [o.default for o in ops]))


@pytest.mark.parametrize("alpha", [0.25, 0.5])
@pytest.mark.parametrize("kernels", ["rule", "aten", "cl", "autotune"])
def test_flop_counter_sees_the_backward_cut_to_alpha(alpha: float, kernels: str) -> None:
    # Prepare: widths 16/32/64, so α·C_out is an integer for every conv
    torch.manual_seed(0)
    dense = resnet_like()
    pruned = copy.deepcopy(dense)
    pruner = ErrorMapPruner(pruned, EMPConfig(keep_ratio=alpha), kernels=kernels)  # type: ignore[arg-type]
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    # Execute
    dense_flops = backward_conv_flops(dense, x, y)
    pruned_flops = backward_conv_flops(pruned, x, y)
    # Assert
    assert dense_flops > 0
    assert pruned_flops / dense_flops == pytest.approx(alpha, rel=0.02)
    assert all(s.kept_fraction == alpha for s in pruner.pop_stats().values())


# --------------------------------------------------------------------------- behaviour


def test_no_grad_forward_and_disabled_pruner_record_nothing() -> None:
    # Prepare
    torch.manual_seed(0)
    model = SmallCNN()
    reference = copy.deepcopy(model)
    pruner = ErrorMapPruner(model, EMPConfig(keep_ratio=0.25))
    x, y = data()
    # Execute
    with torch.no_grad():
        model(x)
    with pruner.disabled():
        loss_of(model, x, y).backward()
    loss_of(reference, x, y).backward()
    # Assert
    assert all(s.steps == 0 for s in pruner.pop_stats().values())
    assert pruner.kept_indices() == {}
    for name, expected in grads(reference).items():
        torch.testing.assert_close(grads(model)[name], expected)


def test_stats_count_kept_channels_and_selection_macs() -> None:
    # Prepare
    model = SmallCNN()
    pruner = ErrorMapPruner(model, EMPConfig(keep_ratio=0.5, exempt=("conv4",)))
    x, y = data(n=6)
    # Execute
    for _ in range(2):
        loss_of(model, x, y).backward()
    stats = pruner.pop_stats()
    # Assert: conv2 is 8 -> 16 at 8x8: k = 8; δ has 6·16·8·8 elements, W 16·8·9
    assert pruner.layer_names == ("conv1", "conv2", "conv3")
    s = stats["conv2"]
    assert (s.c_out, s.steps, s.kept_sum, s.instances, s.kept_instances) == (16, 2, 16, 12, 96)
    assert s.selection_macs == 2 * (6 * 16 * 8 * 8 + 16 * 8 * 9 + 4 * 16)
    assert s.kept_fraction == 0.5
    assert pruner.selection_macs_bound(6) == sum(x.selection_macs for x in stats.values()) // 2
    assert all(s.steps == 0 for s in pruner.pop_stats().values())  # reset


@dataclass(frozen=True)
class _Layer:
    name: str
    grad_input_macs: int
    grad_weight_macs: int


@dataclass(frozen=True)
class _Cost:
    layers: tuple[_Layer, ...]


def test_pop_step_cost_scales_pruned_convs_only() -> None:
    # Prepare: per-instance dense MACs (made up); conv1 has no grad-input
    model = SmallCNN()
    pruner = ErrorMapPruner(model, EMPConfig(keep_ratio=0.5))
    cost = _Cost((_Layer("conv1", 0, 80), _Layer("conv2", 160, 160), _Layer("fc", 60, 60)))
    x, y = data(n=6)
    loss_of(model, x, y).backward()
    # Execute
    step = pruner.pop_step_cost(cost, 6)  # type: ignore[arg-type]
    # Assert: conv1 keeps 4 of 8, conv2 8 of 16; fc is dense
    assert step.grad_input_macs == 6 * 160 // 2 + 6 * 60
    assert step.grad_weight_macs == 6 * 80 // 2 + 6 * 160 // 2 + 6 * 60
    assert step.selection_macs > 0


def test_autotuning_settles_and_plans_are_shared_between_pruners() -> None:
    # Prepare: 4 stride-1 candidates x (1 warm-up + 3 timed runs) = 16 backward passes
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    plans = KernelPlans()
    pruner = ErrorMapPruner(conv, EMPConfig(keep_ratio=0.5), plans=plans)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    used = []
    # Execute
    for _ in range(18):
        conv(x).sum().backward()
        used.append(pruner.kernel_choices()[""])
    pruner.remove()
    second = ErrorMapPruner(conv, EMPConfig(keep_ratio=0.5), plans=plans)
    conv(x).sum().backward()
    # Assert
    assert set(used[:16]) == {"aten", "cl", "cl-swap", "nchw-swap"}
    assert len(plans) == 1
    assert used[16] == used[17] == second.kernel_choices()[""] == next(iter(plans.chosen.values()))


def test_remove_restores_the_dense_modules() -> None:
    # Prepare
    model = SmallCNN()
    # Execute
    with ErrorMapPruner(model, EMPConfig(keep_ratio=0.5)) as pruner:
        assert "forward" in model.conv2.__dict__
    # Assert
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert pruner.layer_names == ()
    ErrorMapPruner(model, EMPConfig(keep_ratio=0.5)).remove()  # attachable again


@pytest.mark.parametrize("clone", ["deepcopy", "torch.save"])
def test_a_copied_pruned_model_prunes_its_own_weights(clone: str) -> None:
    # Prepare
    torch.manual_seed(0)
    model = SmallCNN()
    ErrorMapPruner(model, EMPConfig(keep_ratio=1.0))
    loss_of(model, *data()).backward()  # the pruner now holds tuning state and tensors
    if clone == "deepcopy":
        twin = copy.deepcopy(model)
    else:
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        twin = torch.load(buffer, weights_only=False)
    twin.zero_grad()
    with torch.no_grad():
        twin.conv2.weight.mul_(2.0)
    reference = copy.deepcopy(twin)
    for m in reference.modules():
        m.__dict__.pop("forward", None)
    x, y = data()
    # Execute
    loss_of(twin, x, y).backward()
    loss_of(reference, x, y).backward()
    # Assert
    torch.testing.assert_close(twin.conv2.weight.grad, reference.conv2.weight.grad)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"keep_ratio": 0.0}, "keep_ratio"),
        ({"keep_ratio": 1.5}, "keep_ratio"),
        ({"keep_ratio": math.nan}, "keep_ratio"),
        ({"keep_ratio": True}, "keep_ratio"),
        ({"gamma_weight": -1.0}, "gamma_weight"),
        ({"gamma_error": math.inf}, "gamma_error"),
        ({"gamma_weight": 0.0, "gamma_error": 0}, "must not both be 0"),
        ({"exempt": ("conv1", "")}, "exempt"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field) as info:
        EMPConfig(**kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ConfigError | FedEdgeError)
    assert "got" in str(info.value)


def test_config_reports_every_problem_at_once() -> None:
    with pytest.raises(EMPConfigError) as info:
        EMPConfig(keep_ratio=2.0, gamma_weight=-1.0, exempt=(3,))  # type: ignore[arg-type]
    assert [issue.path for issue in info.value.issues] == ["keep_ratio", "gamma_weight", "exempt"]


def test_exempt_must_match_and_unsupported_convs_must_be_exempt() -> None:
    # Prepare
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3, groups=2))
    # Execute / Assert
    with pytest.raises(EMPConfigError, match="'nope' matches no conv"):
        ErrorMapPruner(model, EMPConfig(exempt=("nope",)))
    with pytest.raises(EMPConfigError, match=r"conv '1'.*groups=2"):
        ErrorMapPruner(model, EMPConfig())
    with pytest.raises(EMPConfigError, match="kernels"):
        ErrorMapPruner(model, EMPConfig(exempt=("1",)), kernels="fast")  # type: ignore[arg-type]
    pruner = ErrorMapPruner(model, EMPConfig(exempt=("1",)))
    assert pruner.layer_names == ("0",)
    with pytest.raises(EMPConfigError, match="already replaced"):
        ErrorMapPruner(model, EMPConfig(exempt=("1",)))
