"""``fededge train``: one device, one stream, no Flower; its ledger, accuracy curve and JSON."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fededge.cli.common import (
    duration_text,
)
from fededge.errors import ConfigError, ConfigIssue


def add_train(sub: Any) -> None:
    """Register ``fededge train`` with the subcommands ``sub``."""
    p = sub.add_parser(
        "train",
        help="train one device on a stream, no Flower (quick look at the savers)",
        description="Stream a dataset through the local training loop and print the ledger.",
    )
    p.add_argument(
        "--dataset",
        default="mnist",
        choices=["mnist", "fashion-mnist", "cifar10", "imagefolder"],
        help="dataset to stream",
    )
    p.add_argument(
        "--data-dir", default=None, help="folder with the dataset (MNIST needs none: bundled)"
    )
    p.add_argument("--model", default="lenet5", help="main net (lenet5, resnetN, vgg16, ...)")
    p.add_argument("--filter", default=None, help="filter net (default: by dataset)")
    p.add_argument(
        "--savers",
        default="none",
        choices=["none", "eif", "emp", "eif+emp", "q", "eif+q", "emp+q", "eif+emp+q"],
        help="q: 8-bit training (fededge.method.quantize)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="also write the ledger, accuracy curve and provenance to this JSON file "
        "(an existing file is refused)",
    )
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the training set")
    p.add_argument("--batch-size", type=int, default=64, help="streamed mini-batch size")
    p.add_argument("--lr", type=float, default=0.01, help="main net's learning rate")
    p.add_argument("--momentum", type=float, default=0.5, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=0.0, help="SGD weight decay")
    p.add_argument("--keep-ratio", type=float, default=0.5, help="EMP keep ratio alpha")
    p.add_argument("--target-ratio", type=float, default=0.2, help="EIF R_set")
    p.add_argument("--seed", type=int, default=0, help="seeds the stream, nets and draws")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.set_defaults(handler=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """``fededge train``: one device, one stream, printed ledger and test accuracy."""
    from fededge.method.single import train_single

    _check_train_args(args)
    if args.out is not None and args.out.exists():
        raise ConfigError(
            [ConfigIssue("--out", f"{args.out} exists: nothing was changed; choose another file")]
        )
    from fededge.reports.progress import Progress

    with Progress("streamed", 1) as bar:
        bar.phase("loading data and building the nets")
        result = _train_with_progress(args, train_single, bar)
    print(result.table())
    if args.out is not None:
        _write_train_json(args, result)
        print(f"\nresults: {args.out}")
    return 0


def _train_with_progress(args: argparse.Namespace, train_single: Any, bar: Any) -> Any:
    """``train_single`` with the bar following the stream.

    In a terminal every mini-batch; as plain lines every tenth of the stream.
    """
    marks = [0]  # the last tenth printed

    def on_streamed(position: int, total: int) -> None:
        if bar.total != total:
            bar.set_total(total)
        tenth = 10 * position // max(total, 1)
        line = None
        if not bar.live and tenth > marks[0]:
            marks[0] = tenth
            line = (
                f"streamed {position:,}/{total:,} ({10 * tenth}%)  "
                f"elapsed {duration_text(bar.pace.elapsed())}"
            )
        bar.step(position, line)

    return train_single(
        dataset=args.dataset,
        data_dir=args.data_dir,
        model=args.model,
        filter_model=args.filter,
        savers=args.savers,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        keep_ratio=args.keep_ratio,
        target_ratio=args.target_ratio,
        seed=args.seed,
        threads=args.threads,
        progress=bar.print,
        on_streamed=on_streamed,
    )


def _write_train_json(args: argparse.Namespace, result: Any) -> None:
    """``fededge train --out``: the ledger, curves and what produced them, as JSON."""
    import json

    from fededge.files import atomic_write_text
    from fededge.reports.fleet_report import jsonable
    from fededge.reports.provenance import code_provenance

    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    options.pop("handler", None)
    data = {
        "name": result.name,
        "accuracy": result.accuracy,
        "loss": result.loss,
        "wall_s": result.wall_s,
        "ledger": result.ledger.to_metrics(),
        "curve": [{"streamed": s, "accuracy": a} for s, a in result.curve],
        "trace": result.trace,
        "options": options,
        "provenance": code_provenance(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(jsonable(data), indent=2) + "\n")


def _check_train_args(args: argparse.Namespace) -> None:
    """Every out-of-range option of ``fededge train`` at once (exit 2, no traceback)."""
    import math

    from fededge.errors import ConfigError, ConfigIssue

    rules = [
        ("--epochs", args.epochs, math.isfinite(args.epochs) and args.epochs > 0, "a number > 0"),
        ("--batch-size", args.batch_size, args.batch_size >= 1, "an integer >= 1"),
        ("--lr", args.lr, math.isfinite(args.lr) and args.lr > 0, "a number > 0"),
        ("--momentum", args.momentum, 0 <= args.momentum < 1, "in [0, 1)"),
        ("--weight-decay", args.weight_decay, args.weight_decay >= 0, "a number >= 0"),
        ("--keep-ratio", args.keep_ratio, 0 < args.keep_ratio <= 1, "in (0, 1]"),
        ("--target-ratio", args.target_ratio, 0 < args.target_ratio < 1, "in (0, 1)"),
        ("--threads", args.threads, args.threads is None or args.threads >= 1, "an integer >= 1"),
    ]
    issues = [
        ConfigIssue(flag, f"must be {want}, got {value}")
        for flag, value, ok, want in rules
        if not ok
    ]
    if issues:
        raise ConfigError(issues)
