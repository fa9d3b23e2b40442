"""Per-instance MACs of every model fededge ships, from fededge's own accounting.

Prints forward, backward (grad-input + grad-weight) and training MACs per
instance (28x28 for LeNet-5 and the slim-LeNet filter, 32x32 otherwise), and
each filter's inference cost relative to the main nets' training cost.
Counts are exact (see ``fededge/cost/flops.py``; tests cross-check them against
``torch.utils.flop_counter.FlopCounterMode``). Run: ``python bench/model_macs.py``.
"""

from __future__ import annotations

from fededge.cost.flops import model_cost
from fededge.models import build_filter, build_model

MAIN = [
    ("lenet5", 1, 28),
    ("resnet20", 3, 32),
    ("resnet56", 3, 32),
    ("resnet74", 3, 32),
    ("resnet110", 3, 32),
    ("vgg16", 3, 32),
]
FILTERS = [("slim-lenet", 1, 28), ("resnet8", 3, 32)]


def main() -> None:
    print("| model | input | params | forward MACs | backward MACs | training MACs |")
    print("|---|---|---:|---:|---:|---:|")
    training = {}
    for name, channels, size in MAIN:
        net = build_model(name, num_classes=10, in_channels=channels, image_size=size)
        cost = model_cost(net, (channels, size, size))
        training[name] = cost.training_macs
        print(
            f"| {name} | {channels}x{size}x{size} | {cost.params:,} | {cost.forward_macs:,} "
            f"| {cost.backward_macs:,} | {cost.training_macs:,} |"
        )
    print()
    print("| filter | forward MACs | training MACs | forward / main training |")
    print("|---|---:|---:|---|")
    for name, channels, size in FILTERS:
        net = build_filter(name, in_channels=channels, image_size=size)
        cost = model_cost(net, (channels, size, size))
        mains = [m for m, c, s in MAIN if (c, s) == (channels, size)]
        share = ", ".join(f"{m} {100 * cost.forward_macs / training[m]:.2f}%" for m in mains)
        print(f"| {name} | {cost.forward_macs:,} | {cost.training_macs:,} | {share} |")


if __name__ == "__main__":
    main()
