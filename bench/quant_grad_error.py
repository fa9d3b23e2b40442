"""How far the gradient of 8-bit training is from the float32 one, per quantizer setting.

A long quantized training run costs ~40 minutes here; this diagnostic costs
seconds and says which part of the scheme (weights, activations, error maps,
weight gradients, Range BN) adds the most gradient error, so the settings can be
chosen before the long runs (``bench/reproduce.py cifar --q FIELD=VALUE``).

It trains the float network for ``--warm`` mini-batches of plain SGD, then, on
``--batches`` fresh mini-batches, compares the quantized gradient g_q with the
float32 gradient g of the same weights and batch:

* ``rel. error`` = ‖g_q − g‖ / ‖g‖ over all weights (mean over batches);
* ``cosine`` = cos(g_q, g);
* ``worst layer`` = the layer with the largest relative error, and that error.

For scale, the first row (``minibatch noise``) compares g with the gradient of
the *next* mini-batch: the error SGD already lives with. A quantizer whose error
is well below that row should train about as well as float32.

Example (CIFAR-10, ResNet-20)::

    python bench/quant_grad_error.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from fededge.data.loading import load_dataset
from fededge.method.quantize import ModelQuantizer, QuantConfig
from fededge.models import build_model

VARIANTS: dict[str, dict[str, object]] = {
    "default (Banner et al.)": {},
    "error maps 16-bit": {"error_bits": 16},
    "error maps float": {"error_bits": 32},
    "weights per channel": {"weight_per_channel": True},
    "weights float": {"weight_bits": 32},
    "activations float": {"activation_bits": 32},
    "weight grads float": {"grad_bits": 32},
    "Range BN, one range per batch": {"range_bn_chunks": 1},
    "batch norm (no Range BN)": {"range_bn": False},
    "round to nearest": {"stochastic": False},
}


def _gradients(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    return {
        name: p.grad.detach().clone()
        for name, p in model.named_parameters()
        if p.grad is not None and p.dim() > 1
    }


def _compare(ref: dict[str, Tensor], other: dict[str, Tensor]) -> tuple[float, float, str, float]:
    a = torch.cat([ref[k].flatten() for k in ref])
    b = torch.cat([other[k].flatten() for k in ref])
    rel = float((b - a).norm() / a.norm())
    cos = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    worst, worst_err = "", 0.0
    for key in ref:
        err = float((other[key] - ref[key]).norm() / ref[key].norm().clamp_min(1e-30))
        if err > worst_err:
            worst, worst_err = key, err
    return rel, cos, worst, worst_err


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--warm", type=int, default=150, help="float SGD mini-batches first")
    parser.add_argument("--batches", type=int, default=5, help="mini-batches compared")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = load_dataset(args.dataset, "train", args.data_dir, download=False)
    model = build_model(
        args.model,
        num_classes=data.num_classes,
        in_channels=data.channels,
        image_size=data.image_size[0],
    )
    gen = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(data), generator=gen)
    batches = order[: (args.warm + args.batches + 1) * args.batch_size].view(-1, args.batch_size)

    started = time.perf_counter()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    model.train()
    for idx in batches[: args.warm]:
        x, y = data.batch(idx, gen)
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    warm_s = time.perf_counter() - started

    # Batch norm's running statistics move on every training forward; keep them fixed.
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    probes = [data.batch(idx, gen) for idx in batches[args.warm :]]
    rows: dict[str, list[tuple[float, float, str, float]]] = {"minibatch noise": []}
    for name in VARIANTS:
        rows[name] = []
    for i in range(args.batches):
        x, y = probes[i]
        model.load_state_dict(snapshot)
        ref = _gradients(model, x, y)
        model.load_state_dict(snapshot)
        rows["minibatch noise"].append(_compare(ref, _gradients(model, *probes[i + 1])))
        for name, fields in VARIANTS.items():
            model.load_state_dict(snapshot)
            config = QuantConfig(**fields)  # type: ignore[arg-type]
            with ModelQuantizer(model, config, seed=args.seed + i):
                rows[name].append(_compare(ref, _gradients(model, x, y)))

    print(
        f"{args.model} on {args.dataset}: {args.warm} float SGD mini-batches ({warm_s:.0f} s), "
        f"then {args.batches} mini-batches of {args.batch_size} compared; command: "
        f"{' '.join(sys.argv)}"
    )
    print("| quantizer | rel. error of gradient | cosine | worst layer | its rel. error |")
    print("|---|---|---|---|---|")
    for name, values in rows.items():
        rel = sum(v[0] for v in values) / len(values)
        cos = sum(v[1] for v in values) / len(values)
        worst = max(values, key=lambda v: v[3])
        print(f"| {name} | {rel:.3f} | {cos:.4f} | {worst[2]} | {worst[3]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
