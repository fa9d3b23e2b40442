"""One device, one stream, no Flower: the training loop on this machine.

Used by ``fededge train`` and by the reproduction benchmarks: the paper's
setting is a single device training from scratch on the shuffled training set,
streamed batch after batch (docs/method.md §Setting).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from fededge.cost.ledger import Ledger
from fededge.data import load_dataset
from fededge.method.emp_config import EMPConfig
from fededge.method.evaluation import evaluate
from fededge.method.instance_filter import EIFConfig
from fededge.method.pieces import PIECES
from fededge.method.quantize import QuantConfig
from fededge.method.training import LocalTrainer, TrainConfig
from fededge.models import build_filter, build_model, default_filter


@dataclass
class SingleResult:
    """Outcome of a single-device run."""

    name: str
    ledger: Ledger
    accuracy: float
    loss: float
    wall_s: float
    curve: list[tuple[int, float]] = field(default_factory=list)  # (instances streamed, accuracy)
    #: per evaluation point, what happened since the previous one (see :func:`instruments`)
    trace: list[dict[str, float]] = field(default_factory=list)
    #: the training loop's wall seconds by piece (:data:`fededge.method.pieces.PIECES`)
    pieces_s: dict[str, float] = field(default_factory=dict)

    def breakdown(self) -> list[tuple[str, float, int]]:
        """(piece, wall seconds, MACs) for every piece of the loop, in :data:`PIECES` order.

        The seconds add up to the loop's wall time (evaluation excluded); the MACs
        to the ledger's spent MACs (pieces that multiply nothing count 0).
        """
        lg = self.ledger
        macs = {
            "filter_decide": lg.filter_forward_macs,
            "sampled_forward": lg.sampled_forward_macs,
            "main_forward": lg.main_forward_macs,
            "main_backward": lg.main_backward_macs + lg.selection_macs,
            "filter_train": lg.filter_train_macs,
        }
        return [(p, self.pieces_s.get(p, 0.0), macs.get(p, 0)) for p in PIECES]

    def table(self) -> str:
        """A readable ledger table."""
        lg = self.ledger
        rows = [
            ("streamed instances", f"{lg.streamed:,}"),
            ("trained (main backward)", f"{lg.trained:,}"),
            ("filtered out", f"{lg.filtered_out:,}"),
            ("uncertainty-sampled", f"{lg.uncertainty_sampled:,}"),
            ("filter inference MACs", f"{lg.filter_forward_macs:.4g}"),
            ("filter training MACs", f"{lg.filter_train_macs:.4g}"),
            ("sampled forward MACs", f"{lg.sampled_forward_macs:.4g}"),
            ("main forward MACs", f"{lg.main_forward_macs:.4g}"),
            ("main grad-input MACs", f"{lg.main_grad_input_macs:.4g}"),
            ("main grad-weight MACs", f"{lg.main_grad_weight_macs:.4g}"),
            ("selection MACs", f"{lg.selection_macs:.4g}"),
            ("spent MACs", f"{lg.spent_macs:.4g}"),
            ("baseline MACs (plain SGD)", f"{lg.baseline_macs:.4g}"),
            ("spent MACs per streamed instance", f"{lg.spent_macs / max(lg.streamed, 1):,.0f}"),
            ("computation saved", f"{100 * lg.computation_saved:.2f}%"),
            ("low-bit forward MACs (weight x activation bits)", f"{lg.lowbit_forward_macs:.4g}"),
            ("low-bit grad-input MACs (error x weight bits)", f"{lg.lowbit_grad_input_macs:.4g}"),
            ("low-bit grad-weight MACs (act. x grad bits)", f"{lg.lowbit_grad_weight_macs:.4g}"),
            ("32-bit MACs", f"{lg.spent_macs - lg.lowbit_macs:.4g}"),
            ("spent, 32-bit-equivalent MACs", f"{lg.spent_macs_32eq:.4g}"),
            ("computation saved, 32-bit-equivalent", f"{100 * lg.computation_saved_32eq:.2f}%"),
            ("test accuracy", f"{100 * self.accuracy:.2f}%"),
            ("training wall time", f"{lg.wall_s:.1f} s"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def class_skew(streamed: torch.Tensor, trained: torch.Tensor) -> tuple[float, float, float]:
    """How the trained instances' classes depart from the stream's.

    Returns the total-variation distance ``0.5 * sum_c |p_trained(c) - p_streamed(c)|``
    and the smallest and largest ratio ``p_trained(c) / p_streamed(c)`` over the classes.
    """
    n = max(len(streamed), len(trained))
    if n == 0 or int(streamed.sum()) == 0 or int(trained.sum()) == 0:
        return math.nan, math.nan, math.nan
    s = torch.zeros(n, dtype=torch.float64)
    t = torch.zeros(n, dtype=torch.float64)
    s[: len(streamed)] = streamed.double()
    t[: len(trained)] = trained.double()
    s, t = s / s.sum(), t / t.sum()
    present = s > 0
    ratio = t[present] / s[present]
    return 0.5 * float((t - s).abs().sum()), float(ratio.min()), float(ratio.max())


def instruments(ledger: Ledger) -> dict[str, float]:
    """What a method researcher reads to see why a run goes well or badly.

    From a ledger (one evaluation interval, a device's round): main-net
    optimizer steps, the trained share, the mean loss of kept and of dropped
    instances (from the random exploration sample), and the filter's precision
    and recall against T_l (which tracks the stream's top-R_set loss quantile).
    """
    return {
        "steps": float(ledger.steps),
        "trained_share": ledger.trained / ledger.streamed if ledger.streamed else math.nan,
        "kept_loss": ledger.kept_mean_loss,
        "dropped_loss": ledger.dropped_mean_loss,
        "precision": ledger.filter_precision,
        "recall": ledger.filter_recall,
    }


def stream_lr(
    position: int,
    *,
    total: int,
    lr: float,
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
    warmup_instances: int = 0,
    warmup_lr: float = 0.01,
) -> float:
    """Learning rate after ``position`` of ``total`` streamed instances.

    ``warmup_lr`` before ``warmup_instances``; then ``lr`` multiplied by
    ``gamma`` once for every fraction in ``milestones`` already passed.
    """
    if position < warmup_instances:
        return warmup_lr
    drops = sum(position >= m * total for m in milestones)
    return lr * gamma**drops


def train_single(
    *,
    dataset: str = "mnist",
    data_dir: str | None = None,
    model: str = "lenet5",
    filter_model: str | None = None,
    savers: str = "none",
    epochs: float = 1.0,
    iterations: int | None = None,
    batch_size: int = 64,
    lr: float = 0.01,
    momentum: float = 0.5,
    weight_decay: float = 0.0,
    lr_milestones: Sequence[float] = (),
    lr_gamma: float = 0.1,
    warmup_iterations: int = 0,
    warmup_lr: float = 0.01,
    keep_ratio: float = 0.5,
    target_ratio: float = 0.2,
    eif: EIFConfig | None = None,
    emp: EMPConfig | None = None,
    quant: QuantConfig | None = None,
    seed: int = 0,
    threads: int | None = None,
    eval_points: int = 0,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
    on_streamed: Callable[[int, int], None] | None = None,
) -> SingleResult:
    """Train ``model`` on a stream of ``dataset`` with the given savers.

    The stream is the training set, shuffled (seeded), repeated for ``epochs``
    passes -- or cut at ``iterations`` streamed mini-batches. The learning rate
    is multiplied by ``lr_gamma`` at each fraction of the stream in
    ``lr_milestones``; during the first ``warmup_iterations`` streamed
    mini-batches it is ``warmup_lr`` instead (He et al.'s warm-up for
    ResNet-110 at lr 0.1: 0.01 for 400 iterations). ``savers`` is ``none`` or a
    ``+``-joined subset of ``eif``, ``emp`` and ``q`` (8-bit training,
    :mod:`fededge.method.quantize`), e.g. ``eif+emp+q``; ``eif``/``emp`` configs override
    ``target_ratio``/``keep_ratio``, ``quant`` the default
    :class:`~fededge.method.quantize.QuantConfig`. The final accuracy is measured with
    the savers attached (a ``q`` run: the quantized net). ``progress`` gets a
    line per evaluation point; ``on_streamed(position, total)`` is called after
    every streamed mini-batch.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    tokens = set(savers.split("+")) - {"none"}
    if not tokens <= {"eif", "emp", "q"}:
        raise ValueError(
            f"savers must be 'none' or a '+'-joined subset of eif, emp, q; got {savers!r}"
        )
    use_eif, use_emp, use_q = "eif" in tokens, "emp" in tokens, "q" in tokens
    train = load_dataset(dataset, "train", data_dir, download=False)
    test = load_dataset(dataset, "test", data_dir, download=False)
    shape = (train.channels, *train.image_size)
    torch.manual_seed(seed)
    net = build_model(
        model,
        num_classes=train.num_classes,
        in_channels=train.channels,
        image_size=train.image_size[0],
    )
    filter_net = None
    eif_cfg = None
    if use_eif:
        torch.manual_seed(seed + 1)
        filter_net = build_filter(
            filter_model or default_filter(dataset),
            in_channels=train.channels,
            image_size=train.image_size[0],
        )
        eif_cfg = eif or EIFConfig(target_ratio=target_ratio)
    emp_cfg = (emp or EMPConfig(keep_ratio=keep_ratio)) if use_emp else None
    net.to(device)
    if filter_net is not None:
        filter_net.to(device)
    trainer = LocalTrainer(
        net,
        train,
        shape,
        TrainConfig(batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay),
        filter_net=filter_net,
        eif=eif_cfg,
        emp=emp_cfg,
        seed=seed,
        device=device,
        quant=(quant or QuantConfig()) if use_q else None,
        count_classes=use_eif and eval_points > 0,
    )
    total = iterations * batch_size if iterations is not None else round(epochs * len(train))
    gen = torch.Generator().manual_seed(seed)
    passes = math.ceil(total / len(train))
    stream = torch.cat([torch.randperm(len(train), generator=gen) for _ in range(passes)])[:total]

    def lr_at(position: int) -> float:
        return stream_lr(
            position,
            total=total,
            lr=lr,
            milestones=lr_milestones,
            gamma=lr_gamma,
            warmup_instances=warmup_iterations * batch_size,
            warmup_lr=warmup_lr,
        )

    filter_lr_at = None
    if eif_cfg is not None and eif_cfg.lr_final is not None:
        start_lr, end_lr = eif_cfg.lr, eif_cfg.lr_final

        def filter_lr_at(position: int) -> float:
            return start_lr + (end_lr - start_lr) * position / total

    name = f"{model}/{dataset}/{savers}"
    ledger = Ledger()
    curve: list[tuple[int, float]] = []
    chunks = max(eval_points, 1)
    bounds = [round(i * total / chunks) for i in range(chunks + 1)]
    started = time.perf_counter()
    trace: list[dict[str, float]] = []
    for i in range(chunks):
        last = i == chunks - 1
        classes = {k: v.clone() for k, v in trainer.class_counts.items()}
        result = trainer.run(
            stream[bounds[i] : bounds[i + 1]],
            lr_schedule=lr_at,
            filter_lr_schedule=filter_lr_at,
            progress=lambda position: position / total,
            flush=last,
            on_batch=None if on_streamed is None else lambda position: on_streamed(position, total),
        )
        ledger += result.ledger
        if eval_points:
            acc, _ = evaluate(net, test, len(test), device=device)
            curve.append((bounds[i + 1], acc))
            point = {"streamed": float(bounds[i + 1]), "accuracy": acc}
            point.update(instruments(result.ledger))
            if use_eif:
                streamed_c, trained_c = (
                    _since(trainer.class_counts[k], classes[k]) for k in ("streamed", "trained")
                )
                tv, low, high = class_skew(streamed_c, trained_c)
                point.update(class_tv=tv, class_ratio_min=low, class_ratio_max=high)
            trace.append(point)
            if progress is not None:
                progress(
                    f"{name}: {bounds[i + 1]:,}/{total:,} streamed, acc {100 * acc:.2f}%, "
                    f"saved {100 * ledger.computation_saved:.1f}%, "
                    + ", ".join(
                        f"{k} {v:.3g}"
                        for k, v in point.items()
                        if k not in ("streamed", "accuracy")
                    )
                )
    wall = time.perf_counter() - started
    acc, loss = evaluate(net, test, len(test), device=device)
    trainer.close()
    return SingleResult(
        name=name,
        ledger=ledger,
        accuracy=acc,
        loss=loss,
        wall_s=wall,
        curve=curve,
        trace=trace,
        pieces_s=dict(trainer.clock.seconds),
    )


def _since(now: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """Counts added to ``now`` since ``before`` (which may be shorter)."""
    out = now.clone()
    out[: len(before)] -= before
    return out
