"""Planning a budget sweep: one scenario under several budget levels and saver settings.

``fededge compare`` plans a sweep (:func:`plan_sweep`) before anything runs, and
:mod:`fededge.reports.sweep` runs it. A *variant* is one budget level x one saver setting:

* the budget level multiplies every tier's per-round budget (``budget_macs``,
  ``budget_seconds`` or ``budget_joules``, whichever the tier gives); a tier
  without a budget stays unlimited at every level;
* the saver setting (``none``, ``eif``, ``emp``, ``eif+emp``) switches EIF and
  EMP on or off for the whole fleet, per-tier ``savers`` overrides included;
  the savers' parameters are kept;
* with several seeds (``--seeds 0,1,2`` or ``[sweep] seeds``) every budget
  level x saver setting runs once per seed (``run.seed``), and the comparison
  reports the mean and standard deviation over seeds.

Everything else -- streams, dropouts, initial weights (for one seed) -- is the
same in every variant, so differences come from budgets and savers alone.
Every variant's scenario is validated here, so a bad level or setting stops the
sweep before its first variant runs. :class:`SweepManifest` is the plan as
``compare.json`` records it.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fededge.config.scenario import Scenario, build_scenario
from fededge.config.schema import SAVER_SETTINGS
from fededge.errors import ConfigError, ConfigIssue

log = logging.getLogger(__name__)

VARIANTS_DIR = "variants"
BUDGET_FIELDS = ("budget_macs", "budget_seconds", "budget_joules")
DEFAULT_BUDGETS = (1.0,)
DEFAULT_SAVERS = ("none", "eif+emp")


@dataclass(frozen=True)
class Variant:
    """One budget level x one saver setting.

    Parameters
    ----------
    budget : multiplier of every tier's per-round budget (1.0: as in the scenario).
    savers : ``none``, ``eif``, ``emp`` or ``eif+emp``; ``eif:auto`` and
        ``eif+emp:auto`` also set ``savers.eif.target_ratio = "auto"`` (R_set
        chosen from each device's budget, :mod:`fededge.method.auto_ratio`).
    seed : ``run.seed`` of this variant; None keeps the scenario's.
    """

    budget: float
    savers: str
    seed: int | None = None  # None: the scenario's run.seed (a single-seed sweep)

    @property
    def name(self) -> str:
        """Folder-safe name, e.g. ``x0.5-eif+emp``, ``x1-eif+emp-auto`` or ``x1-none-s2``."""
        name = f"x{self.budget:g}-{self.savers.replace(':', '-')}"
        return name if self.seed is None else f"{name}-s{self.seed}"

    @property
    def auto_ratio(self) -> bool:
        """True for the ``:auto`` settings."""
        return self.savers.endswith(":auto")


@dataclass(frozen=True)
class TierBudget:
    """A tier's budget at level 1 (as written in the scenario).

    ``field`` is the budget key the tier gives (None: unlimited), ``value`` its
    value in that key's unit, ``macs`` the per-device, per-round budget in MACs
    (``inf`` when unlimited).
    """

    name: str
    profile: str
    count: int
    field: str | None
    value: float | None
    macs: float

    @property
    def limited(self) -> bool:
        """Whether the tier has a budget at all."""
        return math.isfinite(self.macs)

    def macs_at(self, level: float) -> float:
        """Per-device, per-round budget in MACs at budget ``level`` (``inf`` stays ``inf``)."""
        return self.macs * level if self.limited else math.inf


@dataclass(frozen=True)
class VariantEntry:
    """A planned variant as recorded in ``compare.json``."""

    name: str
    budget: float
    savers: str
    digest: str
    folder: str  # relative to the sweep folder
    seed: int | None = None  # None: the base scenario's run.seed


@dataclass(frozen=True)
class SweepManifest:
    """What ``compare.json`` holds: enough to render the comparison without the scenario."""

    name: str
    digest: str
    rounds: int
    num_devices: int
    budgets: tuple[float, ...]
    savers: tuple[str, ...]
    target_accuracy: float | None
    tiers: tuple[TierBudget, ...]
    variants: tuple[VariantEntry, ...]
    seeds: tuple[int, ...] = ()  # the seeds of a multi-seed sweep; () for one seed
    seed: int | None = None  # the base scenario's run.seed (a single-seed sweep's)

    def to_json(self) -> str:
        """JSON text (``inf`` budgets written as null)."""
        data = asdict(self)
        for tier in data["tiers"]:
            tier["macs"] = tier["macs"] if math.isfinite(tier["macs"]) else None
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> SweepManifest:
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        tiers = tuple(
            TierBudget(**{**t, "macs": math.inf if t["macs"] is None else float(t["macs"])})
            for t in data["tiers"]
        )
        return cls(
            name=str(data["name"]),
            digest=str(data["digest"]),
            rounds=int(data["rounds"]),
            num_devices=int(data["num_devices"]),
            budgets=tuple(float(b) for b in data["budgets"]),
            savers=tuple(str(s) for s in data["savers"]),
            target_accuracy=data.get("target_accuracy"),
            tiers=tiers,
            variants=tuple(VariantEntry(**v) for v in data["variants"]),
            seeds=tuple(int(x) for x in data.get("seeds", ())),
            seed=data.get("seed"),
        )


@dataclass(frozen=True)
class PlannedVariant:
    """A variant with its validated scenario and folder."""

    variant: Variant
    scenario: Scenario
    folder: Path


@dataclass(frozen=True)
class SweepPlan:
    """Every variant of a sweep, validated before anything runs."""

    base: Scenario
    out_dir: Path
    budgets: tuple[float, ...]
    savers: tuple[str, ...]
    target_accuracy: float | None
    tiers: tuple[TierBudget, ...]
    variants: tuple[PlannedVariant, ...]
    seeds: tuple[int, ...] = ()

    def manifest(self) -> SweepManifest:
        """The plan as recorded in ``compare.json``."""
        return SweepManifest(
            name=self.base.run.name,
            digest=self.base.digest,
            rounds=self.base.run.rounds,
            num_devices=self.base.num_devices,
            budgets=self.budgets,
            savers=self.savers,
            target_accuracy=self.target_accuracy,
            tiers=self.tiers,
            variants=tuple(
                VariantEntry(
                    name=v.variant.name,
                    budget=v.variant.budget,
                    savers=v.variant.savers,
                    digest=v.scenario.digest,
                    folder=str(v.folder.relative_to(self.out_dir)),
                    seed=v.variant.seed,
                )
                for v in self.variants
            ),
            seeds=self.seeds,
            seed=self.base.run.seed,
        )


def _unique(values: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(values))


def variant_raw(base: dict[str, Any], variant: Variant) -> dict[str, Any]:
    """The scenario document of ``variant``: budgets scaled, savers switched.

    ``run.name`` gets the variant's name appended; ``run.output_dir`` and
    ``[sweep]`` are dropped (the sweep chooses the variant's folder, and a
    variant is a single run), so a variant's digest does not depend on where
    the sweep is written.
    """
    raw = copy.deepcopy(base)
    raw.pop("sweep", None)
    run = raw.setdefault("run", {})
    run.pop("output_dir", None)
    run["name"] = f"{run.get('name', 'scenario')}-{variant.name}"
    switched = variant.savers.split(":")[0].split("+")
    eif, emp = "eif" in switched, "emp" in switched
    savers = raw.setdefault("savers", {})
    savers.setdefault("eif", {})["enabled"] = eif
    savers.setdefault("emp", {})["enabled"] = emp
    if variant.auto_ratio:
        savers["eif"]["target_ratio"] = "auto"
    if variant.seed is not None:
        run["seed"] = variant.seed
    for tier in raw.get("fleet", {}).get("tiers", []):
        for key in BUDGET_FIELDS:
            if tier.get(key) is not None:
                tier[key] = float(tier[key]) * variant.budget
        overrides = tier.get("savers")
        if isinstance(overrides, dict):
            for name, on in (("eif", eif), ("emp", emp)):
                if isinstance(overrides.get(name), dict) and "enabled" in overrides[name]:
                    overrides[name]["enabled"] = on
            eif_override = overrides.get("eif")
            if variant.auto_ratio and isinstance(eif_override, dict):
                eif_override["target_ratio"] = "auto"
    return raw


def tier_budgets(scenario: Scenario) -> tuple[TierBudget, ...]:
    """Each tier's budget at level 1."""
    out = []
    for tier in scenario.tiers:
        key = next((k for k in BUDGET_FIELDS if getattr(tier.section, k) is not None), None)
        out.append(
            TierBudget(
                name=tier.name,
                profile=tier.profile.name,
                count=tier.count,
                field=key,
                value=None if key is None else float(getattr(tier.section, key)),
                macs=float(tier.budget_macs),
            )
        )
    return tuple(out)


def plan_sweep(
    base: Scenario,
    out_dir: str | Path,
    *,
    budgets: Sequence[float] | None = None,
    savers: Sequence[str] | None = None,
    target_accuracy: float | None = None,
    seeds: Sequence[int] | None = None,
) -> SweepPlan:
    """Plan every variant of a sweep and validate its scenario.

    Arguments win over the scenario's ``[sweep]`` section, which wins over the
    defaults (budget level 1; savers ``none`` and ``eif+emp``; the scenario's
    own seed). Repeated levels, settings or seeds are dropped; more than one
    seed runs every level x setting once per seed.

    Raises
    ------
    ConfigError
        Listing every problem: bad levels or settings, a target outside
        (0, 1], and every variant whose scenario does not validate (e.g. a
        budget level too small to train one mini-batch).
    """
    sweep = base.sweep
    levels = _unique(float(b) for b in (budgets or (sweep.budgets if sweep else DEFAULT_BUDGETS)))
    settings = _unique(savers or (sweep.savers if sweep else DEFAULT_SAVERS))
    seed_list = _unique(int(x) for x in (seeds or (sweep.seeds if sweep and sweep.seeds else ())))
    per_seed: tuple[int | None, ...] = seed_list if len(seed_list) > 1 else (None,)
    if len(seed_list) == 1:  # one seed given: that seed, under the usual names
        base = build_scenario(_with_seed(base.raw, seed_list[0]), base.source)
    target = (
        target_accuracy
        if target_accuracy is not None
        else (sweep.target_accuracy if sweep else None)
    )
    issues: list[ConfigIssue] = []
    issues += [
        ConfigIssue("budgets", f"budget levels must be numbers > 0, got {b!r}")
        for b in levels
        if not (math.isfinite(b) and b > 0)
    ]
    issues += [
        ConfigIssue("savers", f"expected one of {', '.join(SAVER_SETTINGS)}, got {s!r}")
        for s in settings
        if s not in SAVER_SETTINGS
    ]
    if target is not None and not 0 < target <= 1:
        issues.append(ConfigIssue("target_accuracy", f"must be in (0, 1], got {target!r}"))
    if issues:
        raise ConfigError(issues, base.source)

    out = Path(out_dir)
    planned = []
    for level in levels:
        for setting, seed in ((st, sd) for st in settings for sd in per_seed):
            variant = Variant(level, setting, seed)
            try:
                scenario = build_scenario(variant_raw(base.raw, variant), base.source)
            except ConfigError as exc:
                issues += [
                    ConfigIssue(f"variant {variant.name}: {i.path}", i.message) for i in exc.issues
                ]
                continue
            planned.append(PlannedVariant(variant, scenario, out / VARIANTS_DIR / variant.name))
    if issues:
        raise ConfigError(issues, base.source)
    tiers = tier_budgets(base)
    if not any(t.limited for t in tiers) and len(levels) > 1:
        log.warning(
            "no tier of %s has a budget: every budget level runs the same unlimited fleet",
            base.run.name,
        )
    multi = seed_list if len(seed_list) > 1 else ()
    return SweepPlan(base, out, levels, settings, target, tiers, tuple(planned), multi)


def _with_seed(raw: dict[str, Any], seed: int) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    out.setdefault("run", {})["seed"] = seed
    return out
