"""Error map pruning's parameters, and the rules between them.

:class:`EMPConfig` is what :class:`~fededge.method.error_map.ErrorMapPruner` reads; a
scenario's ``[savers.emp]`` section becomes one when the scenario is loaded
(:mod:`fededge.config.savers`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fededge.errors import ConfigIssue, SettingsError

__all__ = ["EMPConfig", "EMPConfigError"]


class EMPConfigError(SettingsError):
    """Invalid EMP settings (a :class:`~fededge.errors.ConfigError` and a ``ValueError``)."""


@dataclass(frozen=True)
class EMPConfig:
    """Parameters of error map pruning.

    Parameters
    ----------
    keep_ratio : float
        α in (0, 1]: each pruned conv back-propagates k = ⌈α·C_out⌉ output channels.
    gamma_weight : float
        γ_w >= 0, weight of the mean-normalised filter norm ‖W_j‖₁ in the score.
    gamma_error : float
        γ_e >= 0, weight of the mean-normalised error norm ‖δ_j‖₁ in the score.
        γ_w and γ_e must not both be 0.
    exempt : tuple of str
        Convs that keep their dense backward: qualified names from
        ``model.named_modules()`` (``"conv1"``, ``"layer3.0.conv2"``) or
        :mod:`fnmatch` patterns (``"layer1.*"``). Each entry must match a conv.

    Raises
    ------
    EMPConfigError
        Listing every invalid field with the value received.
    """

    keep_ratio: float = 0.5
    gamma_weight: float = 1.0
    gamma_error: float = 1.0
    exempt: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.exempt, list):
            object.__setattr__(self, "exempt", tuple(self.exempt))
        issues = []
        if not _is_real(self.keep_ratio) or not 0.0 < self.keep_ratio <= 1.0:
            issues.append(ConfigIssue("keep_ratio", f"must be in (0, 1], got {self.keep_ratio!r}"))
        for name in ("gamma_weight", "gamma_error"):
            value = getattr(self, name)
            if not _is_real(value) or not 0.0 <= value < math.inf:
                issues.append(ConfigIssue(name, f"must be a finite number >= 0, got {value!r}"))
        if self.gamma_weight == 0 and self.gamma_error == 0:
            issues.append(
                ConfigIssue("gamma_weight, gamma_error", "must not both be 0 (no score), got 0, 0")
            )
        if not isinstance(self.exempt, tuple) or not all(
            isinstance(p, str) and p for p in self.exempt
        ):
            issues.append(
                ConfigIssue("exempt", f"must be a tuple of non-empty strings, got {self.exempt!r}")
            )
        if issues:
            raise EMPConfigError(issues, source="EMPConfig")


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)
