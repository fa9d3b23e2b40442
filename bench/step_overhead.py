"""Benchmark: what a small training step costs, dense and with EMP, piece by piece.

EIF trains the main net on the few instances each streamed mini-batch keeps
(LeNet-5 at R_set = 0.1: about 6 of 64), so the wall-clock saving depends on
what a step costs regardless of its size. This prints, on the CPU, in one run:

1. **the training step against its batch size** (forward, ``loss.backward()``,
   SGD step), dense and with EMP (``kernels="rule"``, the training loop's
   default), with the step's time per instance;
2. **each conv's pruned backward, piece by piece**, at ``--batch``: channel
   scoring, selection of the top k, the gathers of δ and W, the pruned products
   (one ``convolution_backward`` call on the gathered tensors, the ``aten`` plan),
   the scatter into the full-shape weight gradient, next to the dense backward
   of the same conv (PyTorch's ``convolution_backward``, oneDNN) and the pruned
   products by im2col + GEMM (``_slow_conv2d_backward``; not used by EMP, shown
   for what a kernel without oneDNN's channel blocking costs).

Every number is the median of ``--repeats`` timed runs after a warm-up; the dense
and EMP steps run interleaved.

Usage::

    python bench/step_overhead.py --model lenet5 --batch 6 --alpha 0.5 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fededge.method.error_map import (
    EMPConfig,
    ErrorMapPruner,
    channel_scores,
    kept_channels,
    num_kept,
)
from fededge.models import build_model

SHAPES = {"lenet5": (1, 28, 28), "resnet20": (3, 32, 32)}


def median_us(fn: Callable[[], object], repeats: int, warmup: int = 10) -> float:
    """Median wall time of ``fn()`` in microseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times)


def _step(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One SGD training step of ``net`` on (x, y), as a callable."""
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.5)

    def step() -> None:
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()

    return step


def step_times(model: nn.Module, shape: tuple[int, ...], batches: list[int], alpha: float,
               repeats: int) -> list[tuple[int, float, float]]:  # fmt: skip
    """(batch, dense step µs, EMP step µs) for each batch size.

    The two arms run interleaved, one step each in turn, so a slow moment of the
    machine hits both; each is the median of its ``repeats`` steps.
    """
    dense = copy.deepcopy(model)
    pruned = copy.deepcopy(model)
    ErrorMapPruner(pruned, EMPConfig(keep_ratio=alpha), kernels="rule")
    gen = torch.Generator().manual_seed(0)
    rows = []
    for b in batches:
        x = torch.randn(b, *shape, generator=gen)
        y = torch.randint(0, 10, (b,), generator=gen)
        steps = (_step(dense, x, y), _step(pruned, x, y))
        times: tuple[list[float], list[float]] = ([], [])
        for i in range(repeats + 10):
            for step, timed in zip(steps, times, strict=True):
                start = time.perf_counter()
                step()
                if i >= 10:  # warm-up
                    timed.append(time.perf_counter() - start)
        rows.append((b, 1e6 * statistics.median(times[0]), 1e6 * statistics.median(times[1])))
    return rows


def _conv_pieces_us(conv: nn.Conv2d, x: torch.Tensor, alpha: float, first: bool,
                    repeats: int) -> tuple[int, dict[str, float]]:  # fmt: skip
    """k and {piece: µs} of one conv's pruned backward on input ``x``."""
    w = conv.weight.detach()
    out = F.conv2d(x, w, None, conv.stride, conv.padding, conv.dilation)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    c_out = w.shape[0]
    k = num_kept(alpha, c_out)
    mask = [not first, True, conv.bias is not None]  # the first conv's input needs no gradient
    bias = [c_out] if conv.bias is not None else None
    args = (conv.stride, conv.padding, conv.dilation, False, [0, 0], 1)
    idx = kept_channels(channel_scores(g, w, 1.0, 1.0), k)
    dk, wk = g.index_select(1, idx), w.index_select(0, idx)
    gw_k = torch.randn(k, *w.shape[1:])
    scores = torch.rand(c_out, generator=torch.Generator().manual_seed(3))
    conv_backward = torch.ops.aten.convolution_backward
    pieces = {
        "dense backward": median_us(lambda: conv_backward(g, x, w, bias, *args, mask), repeats),
        "scoring": median_us(lambda: channel_scores(g, w, 1.0, 1.0), repeats),
        "selection": median_us(lambda: kept_channels(scores, k), repeats),
        "gathers": median_us(lambda: (g.index_select(1, idx), w.index_select(0, idx)), repeats),
        "pruned products": median_us(
            lambda: conv_backward(dk, x, wk, [k] if bias else None, *args, mask), repeats
        ),
        "scatter": median_us(lambda: torch.zeros_like(w).index_copy_(0, idx, gw_k), repeats),
    }
    if conv.dilation == (1, 1):
        size = list(conv.kernel_size)
        pieces["pruned products, im2col + GEMM"] = median_us(
            lambda: torch.ops.aten._slow_conv2d_backward(
                dk, x, wk, size, conv.stride, conv.padding, mask
            ),
            repeats,
        )
    return k, pieces


def conv_pieces(model: nn.Module, shape: tuple[int, ...], batch: int, alpha: float,
                repeats: int) -> list[tuple[str, int, int, dict[str, float]]]:  # fmt: skip
    """Per conv: (name, k, C_out, {piece: µs}) of its pruned backward at ``batch``."""
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, name=name: inputs.__setitem__(name, i[0]))
        for name, m in convs
    ]
    with torch.no_grad():
        model(torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1)))
    for h in hooks:
        h.remove()
    rows = []
    for i, (name, conv) in enumerate(convs):
        k, pieces = _conv_pieces_us(conv, inputs[name].detach(), alpha, i == 0, repeats)
        rows.append((name, k, conv.out_channels, pieces))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lenet5", choices=sorted(SHAPES))
    parser.add_argument("--batch", type=int, default=6, help="batch of the per-conv breakdown")
    parser.add_argument(
        "--batches", default="1,6,13,32,64", help="batch sizes of the step table (comma list)"
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="EMP keep ratio")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    shape = SHAPES[args.model]
    model = build_model(args.model, num_classes=10, in_channels=shape[0], image_size=shape[1])
    batches = [int(b) for b in args.batches.split(",") if b]

    print(
        f"{args.model}, EMP alpha {args.alpha}, {args.threads} threads, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}; "
        f"median of {args.repeats}; command: {' '.join(sys.argv)}\n"
    )
    print("| batch | dense step | per instance | EMP step | per instance | EMP / dense |")
    print("|---:|---:|---:|---:|---:|---:|")
    for b, dense, emp in step_times(model, shape, batches, args.alpha, args.repeats):
        print(
            f"| {b} | {dense / 1e3:.2f} ms | {dense / b:.0f} µs | {emp / 1e3:.2f} ms "
            f"| {emp / b:.0f} µs | {emp / dense:.2f} |"
        )
    print(f"\nEach conv's backward at batch {args.batch}, µs:\n")
    rows = conv_pieces(model, shape, args.batch, args.alpha, args.repeats)
    names = list(rows[0][3])
    print("| conv | k / C_out | " + " | ".join(names) + " | EMP total / dense |")
    print("|---|---:|" + "---:|" * (len(names) + 1))
    for name, k, c_out, pieces in rows:
        emp_total = sum(
            pieces[p] for p in ("scoring", "selection", "gathers", "pruned products", "scatter")
        )
        cells = " | ".join(f"{pieces[p]:.0f}" for p in names)
        print(f"| {name} | {k} / {c_out} | {cells} | {emp_total / pieces['dense backward']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
