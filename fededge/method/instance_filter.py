"""Early instance filter (EIF): self-supervised selection of high-loss instances.

docs/method.md §1 (Wu et al., 2020, Eq. 1-7). A small, separate *filter net* reads the
raw input before the main net runs and predicts, per instance, whether the main
net's loss will be high (H) or low (L). Only predicted-H instances are trained
on. The filter learns online from labels the main net provides for free:

* **Adaptive loss threshold** (Eq. 1-3). An instance that went through the main
  net is labelled H when its loss ``>= T_l``, else L. ``R_TH`` is the fraction
  of streamed instances over the last ``n`` mini-batches that were both
  predicted H and labelled H. After every streamed mini-batch::

      T_l <- alpha1 * T_l   if R_TH >= R_set
      T_l <- alpha2 * T_l   otherwise          (alpha1 > 1 > alpha2)

  so the fraction of the stream that is trained on tracks ``R_set``.
* **Uncertainty sampling** (Eq. 4-5). Dropped instances whose prediction entropy
  ``-sum_c p_c log p_c`` (nats, at most ln 2) exceeds ``entropy_threshold`` are
  run forward (only) through the main net to obtain their true loss, and join
  the filter's training set. Without them the filter is never punished for a
  wrong drop and learns to drop everything.
* **Weighted loss** (Eq. 6-7). The filter's cross-entropy weights true-H
  instances by ``w_H = 1/R_set`` and true-L ones by ``w_L = 1/(1-R_set)``,
  normalised over the batch so the weights sum to 1.

Two rules are configurable because the paper's own, measured here, does not
hold the trained share near R_set with a small filter (README, "EIF rules"):

* ``keep_rule = "argmax"`` (paper): keep when p(H) > 0.5. The cost-sensitive
  loss (Eq. 6-7) places a weakly discriminating filter's outputs on the
  decision boundary, and the kept share drifts anywhere between 0 and 100%.
  ``"quantile"`` (default): keep when the filter's score (the logit margin
  z_H - z_L, a monotone function of p(H) that does not saturate) is above the
  top R_set share of the scores in its streamed mini-batch (ties broken at
  random) -- the same filter and labels, a cut calibrated to R_set. (A cut at
  the quantile over the last ``n`` mini-batches kept 1.5-3x R_set: the scores
  drift upward as the filter trains.)
  ``"rank"``: keep each instance with probability ``r^beta``, ``r`` its
  score's rank in the mini-batch as a share in (0, 1], ``beta = 1/R_set - 1``
  so that R_set of the batch is kept in expectation (Selective-Backprop's rule,
  Jiang et al. 2019, on the filter's score instead of the main net's loss):
  easier instances keep a small chance of being trained.
  ``"random"``: a control, not a method: R_set of each mini-batch at random
  (the paper's stochastic mini-batch dropping, SMD), the filter still paid for.
  ``"oracle"``: a control, not a method: the top R_set of each mini-batch by the
  main net's own loss, from a forward pass over all of it (charged), applied by
  :class:`~fededge.method.filter_stage.FilterStage` -- what a perfect filter's
  choice would buy, not what it would save.
* ``ratio_estimate = "paper"``: R_TH counts predicted-H and labelled-H
  instances only; with imperfect recall it stays below R_set and T_l falls
  without bound. ``"stream"`` (default) adds the labelled-H instances found by
  random exploration among the dropped ones, weighted by 1/explore_ratio, so
  R_TH estimates the stream's high-loss share and T_l tracks the stream's
  ``1 - R_set`` loss quantile.

Output index 0 of the filter net is L, index 1 is H (see :mod:`fededge.models`).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fededge.method.eif_config import KEEP_RULES, EIFConfig

__all__ = [
    "HIGH",
    "KEEP_RULES",
    "LOW",
    "EIFConfig",
    "FilterDecision",
    "InstanceFilter",
    "binary_entropy",
    "margin_for_entropy",
    "weighted_filter_loss",
]

LOW, HIGH = 0, 1


@dataclass(frozen=True)
class FilterDecision:
    """What the filter decided for one streamed mini-batch.

    ``keep``: predicted H (queued for the main net); ``sample``: dropped but
    run forward through the main net for a label (uncertain or explored);
    ``explored``: the randomly explored part of ``sample``; the rest is dropped.
    """

    keep: Tensor  # (m,) bool
    sample: Tensor  # (m,) bool
    explored: Tensor  # (m,) bool
    score: Tensor  # (m,) float: logit margin z_H - z_L
    prob_keep: Tensor | None = None  # (m,) float: inclusion probability ("rank" rule)

    @property
    def prob_high(self) -> Tensor:
        """p(H) of each instance (sigmoid of the logit margin)."""
        return torch.sigmoid(self.score)


def _top_share(score: Tensor, share: float, draw: Tensor) -> Tensor:
    """Mask of the top ``share`` of ``score``, ties broken by ``draw`` (uniform in [0, 1)).

    ``share * m`` is rounded stochastically (with ``draw[0]``), so the kept
    share is ``share`` in expectation for any mini-batch size.
    """
    m = len(score)
    k = int(share * m + float(draw[0]))
    if k <= 0:
        return torch.zeros(m, dtype=torch.bool, device=score.device)
    # a tie-break far below any real difference of margins
    jittered = score.double() + draw.double() * 1e-9
    keep = torch.zeros(m, dtype=torch.bool, device=score.device)
    keep[torch.topk(jittered, min(k, m)).indices] = True
    return keep


def _rank_probability(score: Tensor, share: float, draw: Tensor) -> Tensor:
    """Inclusion probability ``r^beta`` of each instance, ``beta = 1/share - 1``.

    ``r`` is the score's rank in the mini-batch divided by its size (1/m for
    the lowest score, 1 for the highest; ties broken by ``draw``), so the
    expected kept count is ``sum_k (k/m)^beta ~= share * m``.
    """
    m = len(score)
    jittered = score.double() + draw.double() * 1e-9
    rank = torch.empty(m, dtype=torch.float64, device=score.device)
    rank[torch.argsort(jittered)] = torch.arange(1, m + 1, dtype=torch.float64, device=score.device)
    return (rank / m).pow(1.0 / share - 1.0).float()


def margin_for_entropy(entropy: float) -> float:
    """The logit margin ``s >= 0`` at which the binary entropy of sigmoid(s) equals ``entropy``.

    Entropy falls monotonically in ``|s|``, so "entropy > entropy_T" is "|s| < s_T".
    """
    if entropy >= math.log(2):
        return 0.0
    if entropy <= 0.0:
        return math.inf

    def h(s: float) -> float:
        p = 1.0 / (1.0 + math.exp(-s))
        return -(p * math.log(p) + (1 - p) * math.log(1 - p)) if 0 < p < 1 else 0.0

    lo, hi = 0.0, 60.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if h(mid) > entropy else (lo, mid)
    return (lo + hi) / 2


def binary_entropy(prob_high: Tensor) -> Tensor:
    """Entropy in nats of the filter's two-way prediction (Eq. 4)."""
    p = prob_high
    entropy: Tensor = -(torch.special.xlogy(p, p) + torch.special.xlogy(1.0 - p, 1.0 - p))
    return entropy


def weighted_filter_loss(logits: Tensor, labels: Tensor, target_ratio: float) -> Tensor:
    """Weighted cross-entropy of Eq. 6-7.

    Each instance's cross-entropy is weighted by ``w_H = 1/R_set`` if its label
    is H and ``w_L = 1/(1-R_set)`` if L; weights are normalised to sum to 1.
    """
    w_high, w_low = 1.0 / target_ratio, 1.0 / (1.0 - target_ratio)
    weights = torch.where(labels == HIGH, w_high, w_low).to(logits.dtype)
    per_instance = F.cross_entropy(logits, labels, reduction="none")
    return (weights * per_instance).sum() / weights.sum()


class InstanceFilter:
    """The early instance filter: a filter net, its optimizer, T_l and R_TH's window.

    Parameters
    ----------
    net : the filter net (2 logits: L, H).
    config : EIF parameters.

    The training loop calls :meth:`decide` on each streamed mini-batch,
    :meth:`observe` whenever main-net losses become known (trained batches and
    sampled instances), :meth:`train_pending` when the filter is :attr:`ready`
    (after each main-net mini-batch, in practice) and :meth:`end_batch` once per
    streamed mini-batch, which updates T_l.
    """

    def __init__(self, net: nn.Module, config: EIFConfig) -> None:
        self.net = net
        # Switching modes walks every submodule; only worth it when the mode changes something.
        self._mode_matters = any(
            isinstance(m, nn.modules.batchnorm._BatchNorm | nn.modules.dropout._DropoutNd)
            for m in net.modules()
        )
        self.config = config
        #: R_set in use: ``config.target_ratio``, or the last choice when it is "auto".
        self.target_ratio = config.initial_ratio
        self.optimizer = torch.optim.SGD(
            net.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        self.threshold = (
            config.initial_threshold if config.initial_threshold is not None else math.nan
        )
        self._uncertain_margin = margin_for_entropy(config.entropy_threshold)
        self._window: deque[tuple[int, float]] = deque(maxlen=config.window)
        self._inputs: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._high_pending = 0.0

    # ---------------------------------------------------------------- decide
    @torch.no_grad()
    def decide(self, x: Tensor, generator: torch.Generator | None = None) -> FilterDecision:
        """Filter inference on a streamed mini-batch ``x`` (m, C, H, W).

        Works on the logit margin ``s = z_H - z_L`` (p(H) = sigmoid(s)): the
        argmax rule is ``s > 0`` and "entropy above entropy_T" is ``|s| < s_T``
        for the margin ``s_T`` where the entropy equals entropy_T -- the same
        decisions as Eq. 4-5 with fewer tensor operations per mini-batch.
        """
        cfg = self.config
        was_training = self.net.training
        if self._mode_matters:
            self.net.eval()
        logits = self.net(x)
        if self._mode_matters:
            self.net.train(was_training)
        score = (logits[:, HIGH] - logits[:, LOW]).float()  # does not saturate like p(H)
        m = len(score)
        draw = torch.rand(m, generator=generator).to(score.device)
        prob_keep: Tensor | None = None
        if math.isnan(self.threshold):
            keep = torch.ones(m, dtype=torch.bool, device=score.device)
        elif cfg.keep_rule == "argmax":
            keep = score > 0
        elif cfg.keep_rule == "random":  # a control: the paper's SMD, the filter ignored
            keep = _top_share(draw, self.target_ratio, draw)
        elif cfg.keep_rule == "rank":
            prob_keep = _rank_probability(score, self.target_ratio, draw)
            coin = torch.rand(m, generator=generator).to(score.device)
            keep = coin < prob_keep
        else:
            keep = _top_share(score, self.target_ratio, draw)
        dropped = ~keep
        explored = dropped & (draw < cfg.explore_ratio)
        margin = score.abs()
        uncertain = dropped & ~explored & (margin < self._uncertain_margin)
        cap = int(cfg.max_sample_ratio * m)
        if int(uncertain.sum()) > cap:  # the most uncertain first: smallest margins
            ranked = torch.where(uncertain, margin, torch.full_like(margin, math.inf))
            uncertain = torch.zeros_like(uncertain)
            if cap > 0:
                uncertain[torch.topk(ranked, cap, largest=False).indices] = True
        return FilterDecision(
            keep=keep,
            sample=uncertain | explored,
            explored=explored,
            score=score,
            prob_keep=prob_keep,
        )

    # --------------------------------------------------------------- observe
    def observe(
        self, x: Tensor, losses: Tensor, *, predicted_high: bool, explored: Tensor | None = None
    ) -> int:
        """Label instances by their main-net loss and queue them for filter training.

        ``explored`` marks randomly explored instances among sampled ones.
        Returns the number labelled H.
        """
        losses = losses.detach()
        if math.isnan(self.threshold):
            self.threshold = float(torch.quantile(losses.float(), 1.0 - self.target_ratio))
        labels = (losses >= self.threshold).long()
        self._inputs.append(x.detach())
        self._labels.append(labels)
        high = labels.bool()
        if predicted_high:
            self._high_pending += float(high.sum())
        elif explored is not None and self.config.ratio_estimate == "stream":
            self._high_pending += float((high & explored).sum()) / self.config.explore_ratio
        return int(high.sum())

    def discard_pending(self) -> None:
        """Forget observed instances without training on them (budget exhausted)."""
        self._inputs.clear()
        self._labels.clear()

    @property
    def pending(self) -> int:
        """Instances observed but not yet trained on."""
        return sum(len(t) for t in self._labels)

    # ------------------------------------------------------------- end batch
    @property
    def ready(self) -> bool:
        """True when at least ``min_batch`` labelled instances wait for training."""
        return self.pending >= self.config.min_batch

    def train_pending(self) -> int:
        """One SGD step of the filter on every labelled instance waiting; returns how many."""
        if not self._labels:
            return 0
        x = torch.cat(self._inputs)
        labels = torch.cat(self._labels)
        self._inputs.clear()
        self._labels.clear()
        if not self.net.training:
            self.net.train()
        loss = weighted_filter_loss(self.net(x), labels, self.target_ratio)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        return len(labels)

    def end_batch(self, streamed: int) -> None:
        """Close a streamed mini-batch of ``streamed`` instances: update R_TH and T_l (Eq. 1-3)."""
        self._window.append((streamed, self._high_pending))
        self._high_pending = 0.0
        if not math.isnan(self.threshold):
            if self.true_high_ratio >= self.target_ratio:
                self.threshold *= self.config.alpha_up
            else:
                self.threshold *= self.config.alpha_down

    @property
    def true_high_ratio(self) -> float:
        """R_TH over the current window (see ``ratio_estimate``)."""
        total = sum(s for s, _ in self._window)
        return sum(h for _, h in self._window) / total if total else 0.0

    def set_lr(self, lr: float) -> None:
        """Set the filter optimizer's learning rate."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything a device keeps across rounds: weights, optimizer, T_l, windows."""
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "threshold": self.threshold,
            "target_ratio": self.target_ratio,
            "window": [[float(s), float(h)] for s, h in self._window],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.threshold = float(state["threshold"])
        if self.config.auto:  # a fixed R_set is the configuration's, not the state's
            self.target_ratio = float(state.get("target_ratio", self.config.initial_ratio))
        self._window = deque(
            ((int(s), float(h)) for s, h in state["window"]), maxlen=self.config.window
        )
