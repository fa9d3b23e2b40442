"""Scenario files: one TOML file describes data, model, fleet, budgets, savers and server.

:func:`load_scenario` parses a file (with ``--set key=value`` overrides) into a
frozen, validated :class:`Scenario`. Every problem is reported at once, each
with its field path, the value received and what is expected; unknown keys are
rejected with a did-you-mean suggestion. After loading, no code reads string
keys from dicts.

The schema (sections, fields, types) is :mod:`fededge.config.schema`; the
messages for a wrong one :mod:`fededge.config.messages`; ``--set`` overrides
:mod:`fededge.config.overrides`.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w
from pydantic import (
    ValidationError,
)

from fededge.config.messages import issues_from_pydantic
from fededge.config.overrides import apply_overrides, blame_overrides
from fededge.config.schema import (
    SaversSection,
    ScenarioModel,
    TierSection,
    TrainSection,
)
from fededge.cost.profiles import CATALOG, DeviceProfile, load_profile_file
from fededge.errors import ConfigError, ConfigIssue, DataError

if TYPE_CHECKING:
    from fededge.data import DatasetInfo
    from fededge.method.emp_config import EMPConfig
    from fededge.method.instance_filter import EIFConfig
    from fededge.method.quantize import QuantConfig

# --------------------------------------------------------------------------- scenario
class _Frozen:
    """Set while it is built, then never again: assigning an attribute raises."""

    _frozen = False

    def __setattr__(self, name: str, value: Any) -> None:
        if self._frozen:
            raise AttributeError(f"{type(self).__name__} is frozen: {name!r} cannot be set")
        object.__setattr__(self, name, value)

    def _freeze(self) -> None:
        object.__setattr__(self, "_frozen", True)


#: A tier's EIF, EMP and quantization configs (each None when that saver is off).
SaverConfigs = tuple["EIFConfig | None", "EMPConfig | None", "QuantConfig | None"]


class Tier(_Frozen):
    """A validated tier with its resolved profile, budget in MACs and savers (frozen)."""

    def __init__(
        self,
        section: TierSection,
        profile: DeviceProfile,
        savers: SaversSection,
        arrivals_per_round: int,
        first_device: int,
        *,
        configs: SaverConfigs | None = None,
        where: str = "savers",
    ) -> None:
        from fededge.config.savers import derive_savers  # the method's configs (torch)

        self.section = section
        self.name = section.name
        self.profile = profile
        self.savers = savers
        self.count = section.count
        self.dropout = section.dropout
        self.fail_probability = section.fail_probability
        self.slow_probability = section.slow_probability
        self.slow_delay_s = section.slow_delay_s
        self.attack = section.attack
        self.attack_scale = section.attack_scale
        self.arrivals_per_round = arrivals_per_round
        self.first_device = first_device
        #: The method's configs of this tier's savers (None: that saver is off); given
        #: when already derived (the scenario's own savers, shared by its tiers).
        self.eif, self.emp, self.quant = configs or derive_savers(savers, where)
        self._freeze()

    @property
    def budget_macs(self) -> float:
        """Per-round budget in MACs (``inf`` if unlimited)."""
        s = self.section
        if s.budget_macs is not None:
            return s.budget_macs
        if s.budget_seconds is not None:
            return self.profile.macs_for_seconds(s.budget_seconds)
        if s.budget_joules is not None:
            return self.profile.macs_for_joules(s.budget_joules)
        return math.inf

    def __repr__(self) -> str:
        return f"Tier({self.name!r}, {self.profile.name}, count={self.count})"


class Scenario(_Frozen):
    """A loaded scenario: the validated sections plus derived, resolved values (frozen once built).

    Attributes mirror the file's sections (``run``, ``data``, ``model``,
    ``train``, ``savers``, ``server``, ``simulation``, ``sweep``); ``tiers``
    are resolved :class:`Tier` objects; ``raw`` is the (overridden) document,
    ``text`` its canonical TOML (what the server sends to devices) and
    ``digest`` a hash of it.
    """

    def __init__(self, model: ScenarioModel, raw: dict[str, Any], source: str) -> None:
        from fededge.models import default_filter

        self.model = model
        self.raw = raw
        self.source = source
        self.run = model.run
        self.data = model.data
        self.train = model.train
        self.savers = model.savers
        self.server = model.server
        self.simulation = model.simulation
        self.sweep = model.sweep
        self.main_model = model.model.main
        self.filter_model = model.model.filter or default_filter(model.data.dataset)
        self.text = tomli_w.dumps(raw)
        self.digest = hashlib.sha256(self.text.encode()).hexdigest()[:16]
        self.tiers: tuple[Tier, ...] = ()
        #: The main net's optimizer settings (:class:`~fededge.method.training.TrainConfig`).
        self.train_config = _train_config(model.train)

    @property
    def num_devices(self) -> int:
        """Devices in the fleet."""
        return sum(t.count for t in self.tiers)

    def tier_of(self, device: int) -> Tier:
        """The tier that device (partition id) ``device`` belongs to."""
        for tier in self.tiers:
            if tier.first_device <= device < tier.first_device + tier.count:
                return tier
        raise IndexError(f"device {device} is outside the fleet of {self.num_devices}")

    def with_overrides(self, overrides: Sequence[str]) -> Scenario:
        """A new scenario with ``key=value`` overrides applied to :attr:`raw`."""
        return build_scenario(apply_overrides(copy.deepcopy(self.raw), overrides), self.source)

    def output_dir(self) -> Path:
        """Where results go: ``run.output_dir`` or ``runs/<name>``."""
        return Path(self.run.output_dir or Path("runs") / self.run.name)

    def __repr__(self) -> str:
        return f"Scenario({self.run.name!r}, {self.num_devices} devices, {self.run.rounds} rounds)"


def _train_config(train: TrainSection) -> Any:
    """``[train]`` as the loop's TrainConfig; a broken rule names its ``train.`` field."""
    from fededge.config.savers import train_config  # torch: only when a scenario is built

    try:
        return train_config(train)
    except ConfigError as exc:
        raise ConfigError([issue.under("train") for issue in exc.issues]) from None


# --------------------------------------------------------------------------- loading
def load_scenario(path: str | Path, overrides: Sequence[str] = ()) -> Scenario:
    """Read, override and validate a scenario file.

    Raises
    ------
    ConfigError
        Listing every problem found (unreadable file, invalid TOML, bad fields).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([ConfigIssue(str(path), f"cannot read file: {exc.strerror}")]) from None
    return parse_scenario(text, source=str(path), overrides=overrides)


def parse_scenario(
    text: str, *, source: str = "<string>", overrides: Sequence[str] = ()
) -> Scenario:
    """Parse scenario TOML text (see :func:`load_scenario`)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigIssue(source, f"invalid TOML: {exc}")], source) from None
    raw = apply_overrides(raw, overrides, source=source)
    try:
        return build_scenario(raw, source)
    except ConfigError as exc:
        blamed = blame_overrides(exc.issues, overrides)
        if blamed == list(exc.issues):
            raise
        raise ConfigError(blamed, exc.source) from None


def build_scenario(raw: dict[str, Any], source: str) -> Scenario:
    """Validate a parsed document and resolve tiers, profiles and names."""
    try:
        model = ScenarioModel.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(issues_from_pydantic(exc, raw), source) from None
    try:
        scenario = Scenario(model, raw, source)
    except ConfigError as exc:
        raise ConfigError(exc.issues, source) from None
    issues = _resolve(scenario, model)
    if issues:
        raise ConfigError(issues, source)
    scenario._freeze()
    return scenario


def _resolve(scenario: Scenario, model: ScenarioModel) -> list[ConfigIssue]:
    """Checks that need more than one field: names, profiles, tier savers, budgets."""
    from fededge.data import KNOWN_DATASETS, dataset_info
    from fededge.models import check_filter_name, check_model_name

    issues: list[ConfigIssue] = []
    data = model.data
    if data.dataset not in KNOWN_DATASETS:
        issues.append(_unknown("data.dataset", data.dataset, KNOWN_DATASETS, "a dataset"))
    if data.dataset == "imagefolder" and not data.data_dir:
        issues.append(ConfigIssue("data.data_dir", "required for dataset 'imagefolder'"))
    for path, name, check in (
        ("model.main", model.model.main, check_model_name),
        ("model.filter", scenario.filter_model, check_filter_name),
    ):
        problem = check(name)
        if problem:
            issues.append(ConfigIssue(path, problem))

    from fededge.config.savers import derive_savers  # the method's configs (torch)

    shared: SaverConfigs | None = None  # the scenario's own savers, derived once
    try:
        shared = derive_savers(model.savers)
    except ConfigError as exc:
        issues += exc.issues
    tiers: list[Tier] = []
    first = 0
    names: set[str] = set()
    for i, section in enumerate(model.fleet.tiers):
        where = f"fleet.tiers[{i}]"
        if section.name in names:
            issues.append(ConfigIssue(f"{where}.name", f"duplicate tier name {section.name!r}"))
        names.add(section.name)
        profile = _resolve_profile(section.profile, model, f"{where}.profile", issues)
        savers, configs = model.savers, shared
        if section.savers is not None:
            merged = _merge(model.savers.model_dump(), section.savers)
            try:
                savers, configs = SaversSection.model_validate(merged), None
            except ValidationError as exc:
                issues += issues_from_pydantic(exc, merged, prefix=f"{where}.savers")
        if profile is not None and (configs is not None or section.savers is not None):
            try:
                tier = Tier(
                    section,
                    profile,
                    savers,
                    section.arrivals_per_round or data.arrivals_per_round,
                    first,
                    configs=configs,
                    where=f"{where}.savers",
                )
            except ConfigError as exc:
                issues += exc.issues
            else:
                tiers.append(tier)
        first += section.count
    scenario.tiers = tuple(tiers)

    if not issues and data.dataset in KNOWN_DATASETS:
        try:
            info = dataset_info(data.dataset, data_dir_of(scenario))
        except DataError as exc:
            return [*issues, ConfigIssue("data.data_dir", str(exc))]
        if scenario.num_devices > info.train_size:
            issues.append(
                ConfigIssue(
                    "fleet.tiers",
                    f"{scenario.num_devices} devices exceed the {info.train_size} training "
                    f"instances of {data.dataset}",
                )
            )
        issues += _check_budgets(scenario, info)
    if model.server.min_replies > max(1, math.ceil(model.server.fraction * scenario.num_devices)):
        issues.append(
            ConfigIssue(
                "server.min_replies",
                f"must be <= the devices sampled per round "
                f"({math.ceil(model.server.fraction * scenario.num_devices)}), "
                f"got {model.server.min_replies}",
            )
        )
    return issues


def _check_budgets(scenario: Scenario, info: DatasetInfo) -> list[ConfigIssue]:
    """A budget must pay for at least one mini-batch of training (plus its filter work)."""
    from fededge.cost.pricing import minimum_round_macs, net_costs  # torch: only when pricing

    main, filt = net_costs(
        scenario.main_model,
        scenario.filter_model,
        channels=info.channels,
        image_size=info.image_size,
        num_classes=info.num_classes,
    )
    issues = []
    for i, tier in enumerate(scenario.tiers):
        budget = tier.budget_macs
        if math.isinf(budget):
            continue
        eif = tier.savers.eif.enabled
        needed = minimum_round_macs(main, filt, batch_size=scenario.train.batch_size, eif=eif)
        if budget < needed:
            field = next(
                f
                for f in ("budget_macs", "budget_seconds", "budget_joules")
                if getattr(tier.section, f) is not None
            )
            issues.append(
                ConfigIssue(
                    f"fleet.tiers[{i}].{field}",
                    f"{getattr(tier.section, field):g} ({budget:.3g} MACs on {tier.profile.name}) "
                    f"cannot train a single mini-batch of {scenario.train.batch_size} instances "
                    f"of {scenario.main_model}: needs at least {needed:.3g} MACs per round",
                )
            )
    return issues


def _resolve_profile(
    name: str, model: ScenarioModel, where: str, issues: list[ConfigIssue]
) -> DeviceProfile | None:
    custom = model.fleet.profiles
    if name in custom:
        return DeviceProfile(name=name, **custom[name].model_dump())
    if name in CATALOG:
        return CATALOG[name]
    if name.endswith(".json"):
        try:
            return load_profile_file(name)
        except ConfigError as exc:
            issues += [ConfigIssue(where, str(i)) for i in exc.issues]
            return None
    issues.append(
        _unknown(where, name, [*CATALOG, *custom], "a device profile (or a .json profile)")
    )
    return None


def _unknown(path: str, value: str, known: Sequence[str], what: str) -> ConfigIssue:
    hint = difflib.get_close_matches(value, list(known), n=1)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
    return ConfigIssue(
        path, f"unknown {what} {value!r}; expected one of {', '.join(known)}{suggestion}"
    )


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def scenario_files(directory: str | Path) -> list[Path]:
    """The ``*.toml`` scenario files of a directory, sorted."""
    return sorted(Path(directory).glob("*.toml"))


def data_dir_of(scenario: Scenario) -> str | None:
    """The data directory a scenario asks for, relative paths taken from its file's folder."""
    if not scenario.data.data_dir:
        return None
    path = Path(os.path.expanduser(scenario.data.data_dir))
    if not path.is_absolute() and scenario.source not in ("<string>", ""):
        candidate = Path(scenario.source).parent / path
        if candidate.exists():
            return str(candidate.resolve())
    return str(path)
