"""Benchmark: conv backward time and training-step time, dense autograd vs EMP.

What it measures, on the CPU, in float32 and in the memory format the model
normally uses (NCHW; ``--channels-last`` converts model and data for every arm):

- **per conv layer, in situ**: the wall time of each conv's backward node inside a
  real ``loss.backward()`` of the whole network, from a pre-hook to a post-hook on
  the node. Dense: PyTorch's stock ``ConvolutionBackward0`` of ``nn.Conv2d``
  (grad-input + grad-weight). EMP: the whole pruned backward — channel scoring,
  selection, gathers, both pruned products, layout conversions, scatter;
- **the whole training step**: forward, ``loss.backward()`` and the SGD step, with
  no hooks installed, and the backward alone.

Arms: the dense model, EMP at ``--alpha`` and (unless ``--no-alpha1``) EMP at
α = 1, i.e. EMP's kernels with nothing pruned. All start from the same weights
and train on the same batch; they run interleaved, one step each in turn, and
every number is the median over ``--repeats`` rounds. EMP tunes its kernels in
its first steps (``--warmup`` must cover them: a few per layer shape); the plan
each layer ended up with is printed.

On a shared machine another process can take a core in the middle of a round,
which stalls 2-thread kernels for a scheduler tick; rounds during which other
processes used CPU (read from ``/proc/stat``, Linux only) are discarded and
repeated (``--max-rounds``), and the count is printed.

Usage::

    python bench/conv_backward.py --batch 128 --alpha 0.3 --repeats 20 --threads 2
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
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fededge.method.error_map import KERNELS, EMPConfig, ErrorMapPruner, Kernels


def build_model(name: str) -> nn.Module:
    """The main network under test (CIFAR ResNet from :mod:`fededge.models`)."""
    from fededge.models import cifar_resnet

    depth = int(name.removeprefix("resnet"))
    return cifar_resnet(depth)


@dataclass
class Arm:
    """One model under test: dense (stock autograd) or EMP at some keep ratio."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    pruner: ErrorMapPruner | None = None
    times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


def make_arms(model: nn.Module, alphas: list[float | None], kernels: Kernels) -> list[Arm]:
    """Copies of ``model`` with their own SGD; ``None`` in ``alphas`` is the dense arm."""
    arms = []
    for alpha in alphas:
        m = copy.deepcopy(model)
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        if alpha is None:
            arms.append(Arm("dense", m, opt))
        else:
            pruner = ErrorMapPruner(m, EMPConfig(keep_ratio=alpha), kernels=kernels)
            arms.append(Arm(f"EMP a={alpha:g}", m, opt, pruner))
    return arms


@contextmanager
def conv_node_timer(model: nn.Module, sink: dict[str, float]) -> Iterator[None]:
    """Time each conv's backward node, pre-hook to post-hook on its ``grad_fn``."""
    handles: list[Any] = []

    def on_forward(name: str) -> Callable[[nn.Module, Any, torch.Tensor], None]:
        def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            node = out.grad_fn
            if node is None:
                return
            start: list[float] = []
            handles.append(node.register_prehook(lambda _g: start.append(time.perf_counter())))
            handles.append(
                node.register_hook(
                    lambda _gi, _go: sink.__setitem__(name, time.perf_counter() - start[-1])
                )
            )

        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(on_forward(name)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def train_step(arm: Arm, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """One SGD step; returns the seconds of forward, backward and the whole step."""
    t0 = time.perf_counter()
    loss = F.cross_entropy(arm.model(x), y)
    t1 = time.perf_counter()
    arm.optimizer.zero_grad(set_to_none=True)
    torch.autograd.backward(loss)
    t2 = time.perf_counter()
    arm.optimizer.step()
    t3 = time.perf_counter()
    if arm.pruner is not None:
        arm.pruner.pop_stats()
    return {"forward": t1 - t0, "loss.backward()": t2 - t1, "training step": t3 - t0}


def other_cpu_ticks() -> int | None:
    """CPU ticks used by all processes but this one so far (None off Linux)."""
    stat, own = Path("/proc/stat"), Path("/proc/self/stat")
    if not stat.exists():
        return None
    busy = sum(int(v) for v in stat.read_text().split("\n", 1)[0].split()[1:4])
    fields = own.read_text().rsplit(")", 1)[1].split()
    return busy - int(fields[11]) - int(fields[12])  # minus own utime + stime


def run_round(arms: list[Arm], x: torch.Tensor, y: torch.Tensor) -> list[dict[str, float]]:
    """One plain step per arm, then one instrumented step per arm."""
    out = []
    for arm in arms:
        out.append(train_step(arm, x, y))
    for arm, times in zip(arms, out, strict=True):
        sink: dict[str, float] = {}
        with conv_node_timer(arm.model, sink):
            train_step(arm, x, y)
        times.update({f"conv:{n}": s for n, s in sink.items()})
        times["conv backward, sum"] = sum(sink.values())
    return out


def ms(values: list[float]) -> float:
    """Median in milliseconds."""
    return 1e3 * statistics.median(values)


def print_table(arms: list[Arm], args: argparse.Namespace, clean: int, rounds: int) -> None:
    """The per-layer and whole-step tables, with ratios to the dense arm."""
    dense, others = arms[0], arms[1:]
    print(
        f"{args.model}, batch {args.batch}, {args.threads} threads, torch {torch.__version__}, "
        f"{'channels_last' if args.channels_last else 'NCHW'}; median of {clean} interleaved "
        f"rounds ({rounds - clean} discarded: other processes were using the CPU"
        f"{'; busy rounds kept' if args.keep_busy_rounds else ''}); ms\n"
    )
    head = f"{'conv layer':<16}{'shape':<14}{'dense':>8}"
    head += "".join(f"{a.name:>12}{'ratio':>7}" for a in others)
    print(head + "".join(f"  plan({a.name})" for a in others))
    plans = [a.pruner.kernel_choices() if a.pruner else {} for a in others]
    for name, module in dense.model.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        shape = f"{module.in_channels}->{module.out_channels} s{module.stride[0]}"
        d = ms(dense.times[f"conv:{name}"])
        row = f"{name:<16}{shape:<14}{d:>8.2f}"
        for arm in others:
            e = ms(arm.times[f"conv:{name}"])
            row += f"{e:>12.2f}{e / d:>7.2f}"
        print(
            row
            + "".join(
                f"  {p.get(name, '-'):<{len(a.name) + 6}}"
                for a, p in zip(others, plans, strict=True)
            )
        )
    print()
    for label in ("conv backward, sum", "forward", "loss.backward()", "training step"):
        d = ms(dense.times[label])
        row = f"{label:<30}{d:>8.2f}"
        for arm in others:
            e = ms(arm.times[label])
            row += f"{e:>12.2f}{e / d:>7.2f}"
        print(row)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run the interleaved benchmark, print the tables."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=0.3, help="EMP keep ratio")
    parser.add_argument("--repeats", type=int, default=20, help="clean rounds to take medians of")
    parser.add_argument("--max-rounds", type=int, default=0, help="give up after (0: 4x repeats)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps (kernel tuning)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="resnet20", help="resnetN, N = 6n+2")
    parser.add_argument("--kernels", default="autotune", choices=KERNELS, help="EMP kernel plans")
    parser.add_argument("--no-alpha1", action="store_true", help="skip the EMP a=1 arm")
    parser.add_argument("--channels-last", action="store_true", help="model and data NHWC")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--keep-busy-rounds",
        action="store_true",
        help="keep rounds during which other processes used the CPU (a machine that is never "
        "quiet; the arms still interleave, so ratios stay comparable)",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = build_model(args.model)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    alphas: list[float | None] = [None, args.alpha]
    if not args.no_alpha1 and args.alpha != 1.0:
        alphas.append(1.0)
    arms = make_arms(model, alphas, args.kernels)

    for _ in range(args.warmup):
        for arm in arms:
            train_step(arm, x, y)
    clean = rounds = 0
    max_rounds = args.max_rounds or 4 * args.repeats
    while clean < args.repeats and rounds < max_rounds:
        rounds += 1
        before = other_cpu_ticks()
        results = run_round(arms, x, y)
        after = other_cpu_ticks()
        busy = before is not None and after is not None and after - before > 2
        if busy and not args.keep_busy_rounds:
            continue  # another process ran: this round's timings are not comparable
        clean += 1
        for arm, times in zip(arms, results, strict=True):
            for key, seconds in times.items():
                arm.times[key].append(seconds)
    if clean == 0:
        raise SystemExit(f"no clean round in {rounds}: the machine is busy, try later")
    print_table(arms, args, clean, rounds)


if __name__ == "__main__":
    main()
