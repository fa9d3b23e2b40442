"""Reproduce the paper's single-device results on this machine (docs/method.md §5).

Measures, for each arm (plain SGD, EIF, EMP, EIF+EMP, and any of them with
8-bit training, ``+q``) trained from scratch on the same seeded stream with the
one training loop:

* computation saved (``1 - spent / baseline`` MACs, every overhead included),
* with ``+q``, computation saved in 32-bit-equivalent MACs (a MAC of a-bit by
  b-bit operands costs a·b/32² of a 32x32 one: 8x8 = 1/16, 8x16 = 1/8; see
  ``fededge/method/quantize.py``), the form of the paper's "with 8-bit" column,
* test accuracy after the stream,
* training wall time (the loop's, evaluations excluded), and the wall-clock
  saving against the SGD arm of the same run (arms run one after another in one
  process, same threads),
* where that time and the MACs went, piece by piece (filter inference, sampled
  forwards, main forward, main backward with EMP's selection, optimizer, filter
  training, data fetching, bookkeeping: ``fededge.method.pieces.PIECES``), a second table,

* the instruments that say why: main-net optimizer steps, mean loss of the kept
  and of the dropped instances (from the random exploration sample), the
  filter's precision and recall against T_l,

and prints them beside the paper's numbers as a Markdown table.

**SMB** (the paper's equal-compute baseline, its Fig. 6): for each arm named by
``--smb`` (default: ``eif+emp`` when it runs), plain SGD on the same stream cut
to the mini-batches that spend the same MACs as that arm, its lr schedule scaled
to its length (milestones are fractions of the stream).

Suites
------
``lenet``  LeNet-5 on MNIST, the paper's schedule (``--arms none --iterations 938``:
           plain SGD for one epoch): SGD lr 0.01, momentum 0.5,
           batch 64, 18.7k iterations (streamed mini-batches).
``cifar``  a CIFAR ResNet on CIFAR-10 (``--data-dir`` must hold
           ``cifar10-jpeg.zip``): SGD momentum 0.9, weight decay 1e-4, batch
           128, lr 0.1 divided by 10 at 50% and 75% of the iterations. The
           paper runs ResNet-110 for 64k iterations; ``--depth`` and
           ``--iterations`` scale it down to what a CPU runs. Savers:
           R_set 0.4, EMP alpha 0.8, the filter's labelling forwards 2% + 2%,
           the slim ResNet-8 filter below ResNet-44 (``SUITE_*`` below; README).

Examples::

    python bench/reproduce.py lenet --threads 2
    python bench/reproduce.py lenet --arms eif+emp,eif+emp+q --threads 1
    python bench/reproduce.py cifar --data-dir ../shared/data --depth 20 --iterations 3000
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from fededge.method.emp_config import EMPConfig
from fededge.method.instance_filter import EIFConfig
from fededge.method.quantize import QuantConfig
from fededge.method.single import SingleResult, train_single
from fededge.models import FILTER_NAMES, ModelError, build_filter, default_filter

ARMS = ("none", "eif", "emp", "eif+emp", "eif+emp+q")
SAVERS = ("eif", "emp", "q")  # an arm is "none" or a "+"-joined subset of these
PAPER = {  # docs/method.md §5: (SGD accuracy, EIF+EMP saving, EIF+EMP accuracy, with 8-bit)
    "lenet": {"none": "99.23", "eif+emp": "78.60% -> 99.47", "eif+emp+q": "not reported"},
    "cifar": {
        "none": "93.57 (ResNet-110)",
        "eif+emp": "67.84% -> 93.66 (ResNet-110)",
        "eif": "63.5% -> 93.73 (ResNet-110)",
        "emp": "35.6% of backward, no loss",
        "eif+emp+q": "95.71% -> 93.54 (ResNet-110)",
    },
}
#: EIF settings of a suite's schedule (``--eif`` overrides them). LeNet's schedule
#: (lr 0.01, momentum 0.5) takes small steps: a plain mean over the kept instances
#: gave 98.72% where the default masked loss (``streamed``) gave 98.26% (README).
#: ResNet-20 on CIFAR at 2,000 streamed mini-batches (README, "CIFAR-10"): the filter's
#: labelling forwards cut from 5% + 5% to 2% + 2% of a batch (its labels come mostly
#: from the ~40% of every batch that is trained).
SUITE_EIF: dict[str, dict[str, object]] = {
    "lenet": {"loss_norm": "kept"},
    "cifar": {"explore_ratio": 0.02, "max_sample_ratio": 0.02},
}
#: R_set and EMP's alpha of each suite (``--target-ratio`` / ``--keep-ratio`` override).
#: CIFAR: EMP at alpha 0.5 cost ResNet-20 8.4 pt in 2,000 mini-batches (EIF alone at
#: R_set 0.5: 63.95%, with EMP 55.51%), so EMP is light there and the savings come
#: from a larger dropped share (README).
SUITE_RATIOS: dict[str, tuple[float, float]] = {"lenet": (0.2, 0.5), "cifar": (0.4, 0.8)}


#: Dataset and (channels, image size) of each suite.
SUITE_DATA = {"lenet": ("mnist", 1, 28), "cifar": ("cifar10", 3, 32)}


def suite_filter(suite: str, depth: int) -> str:
    """The filter net of a suite: the paper's, unless it costs over 5% of the main net's step.

    LeNet-5: the slim LeNet. CIFAR: ResNet-8 (12.2M forward MACs) from ResNet-44 on
    (97M forward MACs: 4.2% of its training step per instance; ResNet-110: 1.6%), the
    slim ResNet-8 (0.79M) for shallower nets (ResNet-8 is 10% of ResNet-20's step).
    """
    if suite == "cifar" and depth < 44:
        return "slim-resnet8"
    return default_filter(SUITE_DATA[suite][0])


#: Mini-batch size of each suite's schedule (docs/method.md §5).
BATCH = {"lenet": 64, "cifar": 128}
CONVERSION = (
    "32-bit-eq: a MAC of a-bit x b-bit operands costs a*b/32^2 of a 32x32 MAC "
    "(8x8 forward and grad-input 1/16, 8x16 grad-weight 1/8; batch norm, pooling, adds, "
    "EMP selection at 1); baseline = 32-bit SGD. Rationale: multiplier area/energy ~ product "
    "of widths (Horowitz, ISSCC 2014: 8-bit int mult 0.2 pJ vs 32-bit int 3.1 pJ, fp32 3.7 pJ)."
)


def smb_iterations(result: SingleResult, batch_size: int) -> int:
    """Streamed mini-batches of plain SGD that spend what ``result`` spent (at least 1)."""
    per_instance = result.ledger.baseline_macs / max(result.ledger.streamed, 1)
    return max(1, int(result.ledger.spent_macs // (per_instance * batch_size)))


def run_suite(args: argparse.Namespace) -> list[SingleResult]:
    results = []
    plan: list[tuple[str, int | None]] = [(arm, args.iterations) for arm in args.arms]
    while plan:
        arm, iterations = plan.pop(0)
        smb_of = arm.removeprefix("smb:") if arm.startswith("smb:") else None
        tokens = ["none"] if smb_of else arm.split("+")
        eif_fields = {**SUITE_EIF[args.suite], **args.eif}
        eif = EIFConfig(target_ratio=args.target_ratio, **eif_fields) if "eif" in tokens else None
        emp = EMPConfig(keep_ratio=args.keep_ratio, **args.emp) if "emp" in tokens else None
        quant = QuantConfig(**args.q) if "q" in tokens else None
        common = dict(
            savers="none" if smb_of else arm,
            eif=eif,
            emp=emp,
            quant=quant,
            seed=args.seed,
            threads=args.threads,
            eval_points=args.eval_points,
            device=args.device,
            filter_model=args.filter,
            progress=lambda text: print(f"  {text}", flush=True),
        )
        if args.suite == "lenet":
            result = train_single(
                dataset=SUITE_DATA["lenet"][0],
                data_dir=args.data_dir,
                model="lenet5",
                iterations=iterations or 18_700,
                batch_size=BATCH["lenet"],
                lr=0.01,
                momentum=0.5,
                **common,
            )  # type: ignore[arg-type]
        else:
            result = train_single(
                dataset=SUITE_DATA["cifar"][0],
                data_dir=args.data_dir,
                model=f"resnet{args.depth}",
                iterations=iterations or 3000,
                batch_size=BATCH["cifar"],
                lr=0.1,
                momentum=0.9,
                weight_decay=1e-4,
                lr_milestones=(0.5, 0.75),
                warmup_iterations=args.warmup,
                **common,
            )  # type: ignore[arg-type]
        if smb_of:
            result.name = f"{result.name.rsplit('/', 1)[0]}/smb:{smb_of}"
        print(
            f"{arm}: acc {100 * result.accuracy:.2f}%  saved "
            f"{100 * result.ledger.computation_saved:.2f}% (32-bit-eq "
            f"{100 * result.ledger.computation_saved_32eq:.2f}%)  wall {result.wall_s:.1f}s",
            flush=True,
        )
        results.append(result)
        if arm in args.smb:
            plan.insert(0, (f"smb:{arm}", smb_iterations(result, BATCH[args.suite])))
    return results


def table(suite: str, results: list[SingleResult]) -> str:
    base = next((r for r in results if r.name.endswith("/none")), None)
    lines = [
        "| arm | computation saved | 32-bit-eq saved | MACs / streamed instance | test accuracy "
        "| train wall time | wall-clock saved | wall / counted | trained share | main steps "
        "| kept / dropped loss | filter precision / recall | paper |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        arm = r.name.rsplit("/", 1)[1]
        lg = r.ledger
        losses = f"{lg.kept_mean_loss:.3f} / {lg.dropped_mean_loss:.3f}" if lg.selected else "–"
        filt = (
            f"{100 * lg.filter_precision:.1f}% / {100 * lg.filter_recall:.1f}%"
            if lg.selected
            else "–"
        )
        label = arm
        if arm.startswith("smb:"):
            label = f"SMB at {arm[4:]}'s MACs ({lg.streamed // max(lg.steps, 1)} x {lg.steps} it.)"
        saved = r.ledger.computation_saved
        wall_saved = 1 - r.ledger.wall_s / base.ledger.wall_s if base else float("nan")
        ratio = wall_saved / saved if saved > 0 and base else float("nan")
        trained = r.ledger.trained / max(r.ledger.streamed, 1)
        per_instance = r.ledger.spent_macs / max(r.ledger.streamed, 1)
        lines.append(
            f"| {label} | {100 * saved:.2f}% | {100 * r.ledger.computation_saved_32eq:.2f}% "
            f"| {per_instance:,.0f} "
            f"| {100 * r.accuracy:.2f}% | {r.ledger.wall_s:.1f} s "
            f"| {100 * wall_saved:.1f}% | {ratio:.2f} | {100 * trained:.1f}% "
            f"| {lg.steps:,} | {losses} | {filt} | {PAPER[suite].get(arm, '')} |"
        )
    lines += ["", CONVERSION]
    return "\n".join(lines)


def breakdown_table(results: list[SingleResult]) -> str:
    """Wall seconds and MACs of each piece of the loop, per arm (share of the arm's total)."""
    pieces = [p for p, _, _ in results[0].breakdown()] if results else []
    lines = [
        "| arm | " + " | ".join(p.replace("_", " ") for p in pieces) + " | total |",
        "|---|" + "---|" * (len(pieces) + 1),
    ]
    for r in results:
        rows = r.breakdown()
        wall = sum(s for _, s, _ in rows) or 1.0
        macs = sum(m for _, _, m in rows) or 1
        cells = [
            f"{s:.1f} s ({100 * s / wall:.0f}%)" + (f" / {100 * m / macs:.0f}% MACs" if m else "")
            for _, s, m in rows
        ]
        arm = r.name.rsplit("/", 1)[1]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {wall:.1f} s / {macs:.3g} MACs |")
    return "\n".join(lines)


def parse_fields(
    parser: argparse.ArgumentParser,
    flag: str,
    cls: type[EIFConfig] | type[EMPConfig] | type[QuantConfig],
    items: list[str],
    reserved: tuple[str, ...] = (),
) -> dict[str, object]:
    """``FIELD=VALUE`` strings to keyword arguments of ``cls`` (typed like its defaults)."""
    defaults = cls()
    fields: dict[str, object] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not hasattr(defaults, name) or name in reserved:
            parser.error(f"{flag} {item!r}: expected FIELD=VALUE with a {cls.__name__} field")
        default = getattr(defaults, name)
        try:
            if isinstance(default, bool):
                if text.lower() not in ("true", "false"):
                    raise ValueError(text)
                fields[name] = text.lower() == "true"
            elif isinstance(default, str):
                fields[name] = text
            elif isinstance(default, tuple):
                fields[name] = tuple(p for p in text.split(",") if p)
            else:
                fields[name] = type(default or 0.0)(text)
        except ValueError:
            parser.error(f"{flag} {item!r}: {name} expects a {type(default).__name__}")
    try:
        cls(**fields)  # type: ignore[arg-type]
    except (TypeError, ValueError) as err:
        parser.error(f"{flag}: {err}")
    return fields


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", choices=["lenet", "cifar"])
    parser.add_argument("--arms", default=",".join(ARMS), type=lambda s: s.split(","))
    parser.add_argument("--iterations", type=int, default=None, help="streamed mini-batches")
    parser.add_argument(
        "--smb",
        default=None,
        type=lambda s: [a for a in s.split(",") if a],
        help="arms to follow with SGD at their MACs (default: eif+emp when it runs; '' for none)",
    )
    parser.add_argument("--depth", type=int, default=20, help="CIFAR ResNet depth (6n+2)")
    parser.add_argument(
        "--target-ratio",
        type=float,
        default=None,
        help="EIF R_set (default: lenet 0.2, cifar 0.4)",
    )
    parser.add_argument(
        "--filter",
        default=None,
        choices=FILTER_NAMES,
        help="EIF filter net (default: slim-lenet; cifar: slim-resnet8 below ResNet-44, "
        "the paper's resnet8 from there on)",
    )
    parser.add_argument(
        "--keep-ratio",
        type=float,
        default=None,
        help="EMP alpha (default: lenet 0.5, cifar 0.8)",
    )
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-points", type=int, default=0, help="accuracy checkpoints")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="cifar: streamed mini-batches at lr 0.01 first (He et al. use 400 for ResNet-110)",
    )
    parser.add_argument(
        "--eif",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="set an EIFConfig field for the EIF arms, e.g. keep_rule=argmax (repeatable)",
    )
    parser.add_argument(
        "--emp",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="set an EMPConfig field for the EMP arms, e.g. select=sample (repeatable)",
    )
    parser.add_argument(
        "--q",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="set a QuantConfig field for the q arms, e.g. range_bn=false (repeatable)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    bad = [a for a in args.arms if a != "none" and not set(a.split("+")) <= set(SAVERS)]
    if bad:
        parser.error(
            f"unknown arms {bad}; expected 'none' or '+'-joined savers from {', '.join(SAVERS)}, "
            f"e.g. {', '.join(ARMS)}"
        )
    if args.smb is None:
        args.smb = ["eif+emp"] if "eif+emp" in args.arms else []
    missing = [a for a in args.smb if a not in args.arms or a == "none"]
    if missing:
        parser.error(f"--smb {','.join(missing)}: name saver arms that run (--arms)")
    args.eif = parse_fields(parser, "--eif", EIFConfig, args.eif, reserved=("target_ratio",))
    args.emp = parse_fields(parser, "--emp", EMPConfig, args.emp, reserved=("keep_ratio",))
    args.q = parse_fields(parser, "--q", QuantConfig, args.q)
    # the suite's defaults, resolved once for every arm
    target_ratio, keep_ratio = SUITE_RATIOS[args.suite]
    args.target_ratio = target_ratio if args.target_ratio is None else args.target_ratio
    args.keep_ratio = keep_ratio if args.keep_ratio is None else args.keep_ratio
    args.filter = args.filter or suite_filter(args.suite, args.depth)
    _, channels, size = SUITE_DATA[args.suite]
    try:  # the registry says whether the filter takes the suite's images
        build_filter(args.filter, in_channels=channels, image_size=size)
    except ModelError as err:
        parser.error(f"--filter {args.filter}: {err}")
    started = time.time()
    results = run_suite(args)
    text = table(args.suite, results)
    print()
    print(
        f"{args.suite}: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} threads, device {args.device}, command: {' '.join(sys.argv)}"
    )
    print(text)
    print()
    print("Where the training loop's wall time and MACs went (shares of each arm's total):")
    print(breakdown_table(results))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "suite": args.suite,
                    "argv": sys.argv,
                    "started": started,
                    "results": [
                        {
                            "name": r.name,
                            "accuracy": r.accuracy,
                            "wall_s": r.wall_s,
                            "pieces_s": r.pieces_s,
                            "curve": r.curve,
                            "trace": r.trace,
                            **r.ledger.to_metrics(),
                        }
                        for r in results
                    ],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
