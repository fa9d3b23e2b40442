"""The ledger: an exact account of what a device did and spent in a round.

One unit throughout: MACs (multiply-accumulates, see :mod:`fededge.cost.flops`).
Ledgers add up (device -> tier -> fleet) with ``+``.

Saving is defined as in the paper (docs/method.md §4)::

    computation_saved = 1 - spent_macs / baseline_macs

where ``spent_macs`` includes every overhead of the savers (filter inference,
filter training, uncertainty-sampled forwards, channel selection) and
``baseline_macs`` is what plain SGD would have spent training on the same
streamed instances (dense forward + backward of the main net).

With quantized training (:mod:`fededge.method.quantize`) the MAC counts stay exact and
unchanged; the ledger also records the MACs done with low-bit operands, by
product, and ``precision_saved_macs``, the 32-bit-equivalent MACs they save
under the rule "a MAC of a-bit by b-bit operands costs a·b/32² of a 32x32 MAC"
(8x8: 1/16, 8x16: 1/8)::

    spent_macs_32eq        = spent_macs - precision_saved_macs
    computation_saved_32eq = 1 - spent_macs_32eq / baseline_macs   (baseline: 32-bit SGD)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

#: Keys of :meth:`Ledger.to_metrics` that hold MACs.
MAC_FIELDS = (
    "filter_forward_macs",
    "filter_train_macs",
    "sampled_forward_macs",
    "main_forward_macs",
    "main_grad_input_macs",
    "main_grad_weight_macs",
    "selection_macs",
)


@dataclass
class Ledger:
    """Instances and MACs of one local training run (a device's round, a benchmark arm).

    Attributes
    ----------
    arrived : instances delivered to the device by its stream.
    streamed : instances the training loop looked at (filter or main net).
    filtered_out : instances the early instance filter dropped (no backward).
    uncertainty_sampled : dropped instances still run forward through the main
        net to label them for the filter (docs/method.md §1, Eq. 4-5).
    trained : instances that went through the main net's forward and backward.
    unprocessed : arrivals left untouched because the budget ran out.
    steps : optimizer steps of the main net.
    filter_steps : optimizer steps of the filter net.
    *_macs : MACs by kind; ``baseline_macs`` = plain SGD on ``streamed``.
    lowbit_*_macs : the part of the forward, grad-input and grad-weight MACs
        (main net, sampled forwards and filter net together) done with quantized
        operands; a subset of the spent MACs, not added to them.
    precision_saved_macs : 32-bit-equivalent MACs those low-bit MACs saved
        (see :mod:`fededge.method.quantize` for the conversion rule).
    budget_macs : the budget this run had (``inf`` when unlimited).
    budget_exhausted : 1 when the run stopped because the budget was spent.
    loss_sum : sum of the main net's per-instance training losses.
    selected : instances trained because the filter kept them (outside the
        full-training phases); ``selected_high`` of them had a loss >= T_l,
        ``selected_loss_sum`` is their summed loss.
    explored : dropped instances explored at random (forward-only);
        ``explored_high`` of them had a loss >= T_l, ``explored_loss_sum``
        is their summed loss -- an unbiased sample of what the filter dropped.
    full_trained : instances trained in a full-training phase (no filtering).
    aimed_trained : instances the kept share aimed to train: R_set times the
        instances streamed through the filter, plus every instance streamed in
        a full-training phase (or by plain SGD). ``aimed_ratio`` is it over
        ``streamed``: the R_set chosen (``target_ratio = "auto"``) or set.
    wall_s : measured wall-clock seconds of the whole run.
    """

    arrived: int = 0
    streamed: int = 0
    filtered_out: int = 0
    uncertainty_sampled: int = 0
    trained: int = 0
    unprocessed: int = 0
    steps: int = 0
    filter_steps: int = 0
    filter_forward_macs: int = 0
    filter_train_macs: int = 0
    sampled_forward_macs: int = 0
    main_forward_macs: int = 0
    main_grad_input_macs: int = 0
    main_grad_weight_macs: int = 0
    selection_macs: int = 0
    baseline_macs: int = 0
    lowbit_forward_macs: int = 0
    lowbit_grad_input_macs: int = 0
    lowbit_grad_weight_macs: int = 0
    precision_saved_macs: float = 0.0
    budget_macs: float = math.inf
    budget_exhausted: int = 0
    loss_sum: float = 0.0
    selected: int = 0
    selected_high: int = 0
    selected_loss_sum: float = 0.0
    explored: int = 0
    explored_high: int = 0
    explored_loss_sum: float = 0.0
    full_trained: int = 0
    aimed_trained: float = 0.0
    wall_s: float = 0.0

    # ----------------------------------------------------------------- derived
    @property
    def main_backward_macs(self) -> int:
        """Main net backward MACs (grad-input + grad-weight)."""
        return self.main_grad_input_macs + self.main_grad_weight_macs

    @property
    def spent_macs(self) -> int:
        """All MACs spent, savers' overheads included."""
        return sum(int(getattr(self, name)) for name in MAC_FIELDS)

    @property
    def counted_baseline_macs(self) -> int:
        """The SGD cost a saving is measured against.

        ``baseline_macs``, or ``spent_macs`` when nothing was trained (a run that
        trained nothing claims no saving).
        """
        return self.baseline_macs if self.trained > 0 else self.spent_macs

    @property
    def saved_macs(self) -> int:
        """``counted_baseline_macs - spent_macs``."""
        return self.counted_baseline_macs - self.spent_macs

    @property
    def computation_saved(self) -> float:
        """``1 - spent / counted baseline`` (0.0 when nothing was streamed or trained)."""
        baseline = self.counted_baseline_macs
        return 1.0 - self.spent_macs / baseline if baseline > 0 else 0.0

    @property
    def lowbit_macs(self) -> int:
        """MACs done with quantized operands (all products)."""
        return self.lowbit_forward_macs + self.lowbit_grad_input_macs + self.lowbit_grad_weight_macs

    @property
    def spent_macs_32eq(self) -> float:
        """Spent cost in 32-bit-equivalent MACs: ``spent_macs - precision_saved_macs``."""
        return self.spent_macs - self.precision_saved_macs

    @property
    def computation_saved_32eq(self) -> float:
        """``1 - spent_32eq / baseline`` (baseline: 32-bit SGD; 0.0 when nothing trained)."""
        if self.baseline_macs <= 0 or self.trained <= 0:
            return 0.0
        return 1.0 - self.spent_macs_32eq / self.baseline_macs

    @property
    def aimed_ratio(self) -> float:
        """Share of the streamed instances the kept share aimed to train (nan if none)."""
        return share(self.aimed_trained, self.streamed)

    @property
    def budget_used(self) -> float:
        """``spent_macs / budget_macs`` (nan without a budget)."""
        if math.isinf(self.budget_macs) or self.budget_macs <= 0:
            return math.nan
        return self.spent_macs / self.budget_macs

    @property
    def mean_loss(self) -> float:
        """Mean training loss of the main net over trained instances (nan if none)."""
        return share(self.loss_sum, self.trained)

    # ------------------------------------------------------------ instruments
    #: Derived figures that say why a run went well or badly (see the properties).
    INSTRUMENTS = ("kept_mean_loss", "dropped_mean_loss", "filter_precision", "filter_recall")

    @property
    def kept_mean_loss(self) -> float:
        """Mean main-net loss of the instances the filter kept (nan if none)."""
        return share(self.selected_loss_sum, self.selected)

    @property
    def dropped_mean_loss(self) -> float:
        """Mean main-net loss of the dropped instances, from the random exploration sample."""
        return share(self.explored_loss_sum, self.explored)

    @property
    def filter_precision(self) -> float:
        """Share of kept instances that were truly high-loss (loss >= T_l)."""
        return share(self.selected_high, self.selected)

    @property
    def filter_recall(self) -> float:
        """Share of the stream's high-loss instances the filter kept.

        The dropped high-loss instances are estimated from the exploration
        sample: ``explored_high * filtered_out / explored``.
        """
        if not self.explored:
            return math.nan
        dropped_high = self.explored_high * self.filtered_out / self.explored
        return share(self.selected_high, self.selected_high + dropped_high)

    # ------------------------------------------------------------- arithmetic
    def __add__(self, other: Ledger) -> Ledger:
        out = Ledger()
        for f in fields(self):
            setattr(out, f.name, getattr(self, f.name) + getattr(other, f.name))
        return out

    def __iadd__(self, other: Ledger) -> Ledger:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    # ------------------------------------------------------------ conversion
    def to_metrics(self) -> dict[str, float]:
        """Flat ``{name: number}`` with the derived totals, e.g. for a Flower MetricRecord."""
        out: dict[str, float] = {k: float(v) for k, v in asdict(self).items()}
        out["spent_macs"] = float(self.spent_macs)
        out["computation_saved"] = self.computation_saved
        out["spent_macs_32eq"] = self.spent_macs_32eq
        out["computation_saved_32eq"] = self.computation_saved_32eq
        return out

    @classmethod
    def from_metrics(cls, metrics: dict[str, float]) -> Ledger:
        """Inverse of :meth:`to_metrics`; raises ``KeyError`` naming a missing field."""
        kwargs: dict[str, float | int] = {}
        for f in fields(cls):
            if f.name not in metrics:
                raise KeyError(f.name)
            value = metrics[f.name]
            kwargs[f.name] = value if f.type in ("float", float) else int(value)
        return cls(**kwargs)  # type: ignore[arg-type]

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of the stored (non-derived) fields."""
        return tuple(f.name for f in fields(cls))


def share(part: float, whole: float) -> float:
    """``part / whole``, NaN when there is no whole (nothing streamed, no budget)."""
    return part / whole if whole else math.nan
