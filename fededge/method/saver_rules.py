"""Rules between EIF's parameters, shared by the scenario loader and :class:`EIFConfig`.

Kept free of torch so that parsing a scenario does not import it; each rule is
written once and both places report the same message.
"""

from __future__ import annotations

from typing import Protocol


class EIFRuleFields(Protocol):
    """The EIF parameters the rules read (``EIFSection`` and ``EIFConfig`` have them)."""

    @property
    def ratio_estimate(self) -> str:
        """How R_TH is estimated: ``stream`` or ``paper``."""
        ...
    @property
    def explore_ratio(self) -> float:
        """Share of drops explored (their loss measured)."""
        ...
    @property
    def full_first(self) -> float:
        """Share of the stream trained in full first."""
        ...
    @property
    def full_last(self) -> float:
        """Share of the stream trained in full last."""
        ...
    @property
    def rescale(self) -> bool:
        """Whether kept instances are reweighted by their keep probability."""
        ...
    @property
    def keep_rule(self) -> str:
        """How instances are kept (``quantile``, ``argmax``, ``rank``, ``random``)."""
        ...
    @property
    def update(self) -> str:
        """When the main net steps: ``per_batch`` or ``queued``."""
        ...
    @property
    def min_ratio(self) -> float:
        """Lowest R_set ``auto`` may choose."""
        ...
    @property
    def max_ratio(self) -> float:
        """Highest R_set ``auto`` may choose."""
        ...


def eif_rule_problems(eif: EIFRuleFields) -> list[str]:
    """Problems with how EIF's parameters combine (each alone may be valid)."""
    problems = []
    if eif.ratio_estimate == "stream" and eif.explore_ratio == 0.0:
        problems.append('ratio_estimate = "stream" needs explore_ratio > 0')
    if eif.full_first + eif.full_last >= 1.0:
        problems.append(
            f"full_first + full_last must be < 1, got {eif.full_first + eif.full_last!r}"
        )
    if eif.rescale and (eif.keep_rule != "rank" or eif.update != "per_batch"):
        problems.append('rescale = true needs keep_rule = "rank" and update = "per_batch"')
    if eif.min_ratio > eif.max_ratio:
        problems.append(
            f"min_ratio must be <= max_ratio, got {eif.min_ratio!r} > {eif.max_ratio!r}"
        )
    return problems
