"""The method's settings, derived once from a validated scenario: what a device's round runs with.

A scenario's ``[savers.*]`` and ``[train]`` sections (:mod:`fededge.config.schema`)
give types, ranges and defaults; the method's own frozen configs
(:class:`~fededge.method.instance_filter.EIFConfig`,
:class:`~fededge.method.error_map.EMPConfig`,
:class:`~fededge.method.quantize.QuantConfig`,
:class:`~fededge.method.training.TrainConfig`) hold the rules between fields.
Each tier's configs are built when the scenario is loaded
(:class:`~fededge.config.scenario.Tier`), so a rule broken by a scenario is a
:class:`~fededge.errors.ConfigError` naming the field's path at load
time, never an error in a device's round, and no round builds them again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fededge.config.schema import SaversSection, TrainSection
from fededge.errors import ConfigError, ConfigIssue
from fededge.method.emp_config import EMPConfig
from fededge.method.instance_filter import EIFConfig
from fededge.method.quantize import QuantConfig
from fededge.method.training import TrainConfig

__all__ = ["derive_savers", "eif_config", "emp_config", "quant_config", "train_config"]

T = TypeVar("T")


def eif_config(savers: SaversSection) -> EIFConfig | None:
    """The EIF parameters of a saver section (None when EIF is off)."""
    s = savers.eif
    if not s.enabled:
        return None
    return EIFConfig(**s.model_dump(exclude={"enabled"}))


def emp_config(savers: SaversSection) -> EMPConfig | None:
    """The EMP parameters of a saver section (None when EMP is off)."""
    s = savers.emp
    if not s.enabled:
        return None
    return EMPConfig(
        keep_ratio=s.keep_ratio,
        gamma_weight=s.gamma_weight,
        gamma_error=s.gamma_error,
        exempt=tuple(s.exempt),
    )


def quant_config(savers: SaversSection) -> QuantConfig | None:
    """The quantized-training parameters of a saver section (None when it is off)."""
    s = savers.quant
    if not s.enabled:
        return None
    return QuantConfig(**s.model_dump(exclude={"enabled"}))


def train_config(train: TrainSection) -> TrainConfig:
    """The main net's optimizer settings of a ``[train]`` section."""
    t = train
    return TrainConfig(
        batch_size=t.batch_size,
        lr=t.lr,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        nesterov=t.nesterov,
    )


def derive_savers(
    savers: SaversSection, where: str = "savers"
) -> tuple[EIFConfig | None, EMPConfig | None, QuantConfig | None]:
    """EIF, EMP and quantization configs of a saver section (None for each one off).

    Raises
    ------
    ConfigError
        Every rule the section breaks, under ``<where>.<eif|emp|quant>.<field>``.
    """
    issues: list[ConfigIssue] = []

    def derive(name: str, make: Callable[[SaversSection], T]) -> T | None:
        try:
            return make(savers)
        except ConfigError as exc:
            issues.extend(issue.under(f"{where}.{name}") for issue in exc.issues)
            return None

    configs = derive("eif", eif_config), derive("emp", emp_config), derive("quant", quant_config)
    if issues:
        raise ConfigError(issues)
    return configs
