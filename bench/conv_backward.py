"""Benchmark: time of the conv backward and of a training step, dense vs EMP.

What it measures (CPU, float32, NCHW as the model normally runs):

- **per conv layer, in situ**: the wall time of each conv's backward node inside a
  real ``loss.backward()`` of the whole network, taken between a pre-hook and a
  post-hook on the node — PyTorch's stock ``ConvolutionBackward0`` (grad-input +
  grad-weight, dense autograd) for the dense model, the pruned backward (channel
  scoring, selection, gather, both pruned products, scatter) for the EMP model;
- **the whole training step** (forward + ``loss.backward()`` + SGD step), without
  hooks, for the dense model, the EMP model at ``--alpha`` and (unless
  ``--no-alpha1``) the EMP model at α = 1 (its kernels with nothing pruned).

The arms run interleaved in one process, step after step, on the same batch and
the same starting weights; every number is the median over ``--repeats`` steps.
EMP picks its kernels in its first (warm-up) steps (``autotune``); the kernel each
layer uses is printed. Timings on a shared machine are noisy: compare the ratios.

Usage::

    python bench/conv_backward.py --batch 128 --alpha 0.3 --repeats 30 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fededge.error_map import KERNELS, EMPConfig, ErrorMapPruner, Kernels


def resnet20() -> nn.Module:
    """CIFAR ResNet-20 from :mod:`fededge.models`."""
    from fededge.models import cifar_resnet

    return cifar_resnet(20)


@dataclass
class Arm:
    """One model under test: dense (stock autograd) or EMP."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    pruner: ErrorMapPruner | None = None
    step_s: list[float] = field(default_factory=list)
    backward_s: list[float] = field(default_factory=list)
    layer_s: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    conv_total_s: list[float] = field(default_factory=list)


@contextmanager
def conv_node_timer(model: nn.Module, sink: dict[str, float]) -> Iterator[None]:
    """Time each conv's backward node: pre-hook to post-hook on its ``grad_fn``."""
    handles: list[Any] = []
    node_hooks: list[Any] = []

    def on_forward(name: str) -> Callable[[nn.Module, Any, torch.Tensor], None]:
        def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            node = out.grad_fn
            if node is None:
                return
            starts: list[float] = []

            def pre(_g: Any) -> None:
                starts.append(time.perf_counter())

            def post(_gi: Any, _go: Any) -> None:
                sink[name] = time.perf_counter() - starts[-1]

            node_hooks.append(node.register_prehook(pre))
            node_hooks.append(node.register_hook(post))

        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(on_forward(name)))
    try:
        yield
    finally:
        for h in handles + node_hooks:
            h.remove()


def train_step(arm: Arm, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """One SGD step; returns (step seconds, backward seconds)."""
    start = time.perf_counter()
    loss = F.cross_entropy(arm.model(x), y)
    arm.optimizer.zero_grad(set_to_none=True)
    mid = time.perf_counter()
    loss.backward()
    end_backward = time.perf_counter()
    arm.optimizer.step()
    end = time.perf_counter()
    if arm.pruner is not None:
        arm.pruner.pop_stats()
    return end - start, end_backward - mid


def make_arms(model: nn.Module, alpha: float, with_alpha1: bool, kernels: Kernels) -> list[Arm]:
    """Dense, EMP(α) and optionally EMP(1) copies of ``model`` with their own SGD."""
    specs: list[tuple[str, float | None]] = [("dense", None), (f"emp a={alpha:g}", alpha)]
    if with_alpha1 and alpha != 1.0:
        specs.append(("emp a=1", 1.0))
    arms = []
    for name, keep in specs:
        m = copy.deepcopy(model)
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        pruner = None
        if keep is not None:
            pruner = ErrorMapPruner(m, EMPConfig(keep_ratio=keep), kernels=kernels)
        arms.append(Arm(name, m, opt, pruner))
    return arms


def ms(values: list[float]) -> float:
    """Median in milliseconds."""
    return 1e3 * statistics.median(values)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run the interleaved benchmark, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=0.3, help="EMP keep ratio")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per arm and mode")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per arm")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="resnet20", choices=["resnet20"])
    parser.add_argument("--no-alpha1", action="store_true", help="skip the EMP α=1 arm")
    parser.add_argument("--kernels", default="autotune", choices=KERNELS, help="EMP kernel plans")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = resnet20()
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    arms = make_arms(model, args.alpha, not args.no_alpha1, args.kernels)

    for _ in range(args.warmup):
        for arm in arms:
            train_step(arm, x, y)
    for _ in range(args.repeats):
        for arm in arms:  # plain step: no hooks
            step_s, backward_s = train_step(arm, x, y)
            arm.step_s.append(step_s)
            arm.backward_s.append(backward_s)
        for arm in arms:  # instrumented step: per-conv backward node times
            sink: dict[str, float] = {}
            with conv_node_timer(arm.model, sink):
                train_step(arm, x, y)
            for name, seconds in sink.items():
                arm.layer_s[name].append(seconds)
            arm.conv_total_s.append(sum(sink.values()))

    dense, others = arms[0], arms[1:]
    plans = others[0].pruner.kernel_choices() if others[0].pruner is not None else {}
    print(
        f"ResNet-20, batch {args.batch}, {args.threads} threads, torch {torch.__version__}, "
        f"median of {args.repeats} interleaved steps (ms)\n"
    )
    head = f"{'conv layer':<16}{'shape':<22}{'dense':>8}"
    for arm in others:
        head += f"{arm.name:>12}{'ratio':>7}"
    print(head + f"  {'kernel (' + others[0].name + ')'}")
    for name, module in dense.model.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        shape = f"{module.in_channels}->{module.out_channels} s{module.stride[0]}"
        d = ms(dense.layer_s[name])
        row = f"{name:<16}{shape:<22}{d:>8.2f}"
        for arm in others:
            e = ms(arm.layer_s[name])
            row += f"{e:>12.2f}{e / d:>7.2f}"
        print(row + f"  {plans.get(name, '')}")
    rows = [
        ("conv backward, sum", [a.conv_total_s for a in arms]),
        ("loss.backward()", [a.backward_s for a in arms]),
        ("training step", [a.step_s for a in arms]),
    ]
    print()
    for label, series in rows:
        d = ms(series[0])
        row = f"{label:<38}{d:>8.2f}"
        for s in series[1:]:
            row += f"{ms(s):>12.2f}{ms(s) / d:>7.2f}"
        print(row)


if __name__ == "__main__":
    main()
