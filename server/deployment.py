"""The server side of a deployment (``flwr run . <connection>``): the run settings.

:class:`RunSettings` is the ServerApp's ``context.run_config`` (from
``[tool.flwr.app.config]`` in pyproject.toml and ``flwr run --run-config``;
``fededge deploy run`` writes it), converted once into typed values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fededge.config.scenario import Scenario, load_scenario, parse_scenario
from fededge.errors import ConfigError, ConfigIssue

#: The project folder (where pyproject.toml and scenarios/ are): relative scenario paths.
APP_DIR = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class RunSettings:
    """The run config of ``flwr run`` (keys of ``[tool.flwr.app.config]``).

    Attributes
    ----------
    scenario : scenario file on the SuperLink's machine (relative: to the app).
    scenario_text : the scenario's TOML itself; used instead of the file when set.
    overrides : scenario overrides (``key=value``).
    output_dir : where the fleet report goes (None: the scenario's output dir).
    device_wait_s : how long to wait for the fleet's devices to connect
        before the first round; the run starts with those connected by then.
    run_token : echoed in ``<output_dir>/status.json`` with the run's outcome,
        so ``fededge deploy run`` knows the status it reads is this run's.
    """

    scenario: str = "scenarios/quickstart.toml"
    scenario_text: str = ""
    overrides: tuple[str, ...] = ()
    output_dir: Path | None = None
    device_wait_s: float = 600.0
    run_token: str = ""

    @classmethod
    def from_run_config(cls, config: Mapping[str, object]) -> RunSettings:
        """Convert a ``context.run_config``; every problem is reported at once.

        Raises
        ------
        ConfigError
            When ``device-wait-s`` is not a number >= 0.
        """
        issues: list[ConfigIssue] = []
        device_wait_s = _seconds(config, "device-wait-s", cls.device_wait_s, issues)
        if issues:
            raise ConfigError(issues)
        out = str(config.get("output-dir", ""))
        return cls(
            scenario=str(config.get("scenario", cls.scenario)),
            scenario_text=str(config.get("scenario-text", "")),
            overrides=tuple(s.strip() for s in str(config.get("overrides", "")).split(";") if s),
            output_dir=Path(out) if out else None,
            device_wait_s=device_wait_s,
            run_token=str(config.get("run-token", "")),
        )

    def load_scenario(self) -> Scenario:
        """The scenario to run: its text if given, else the file (relative paths: to the app)."""
        if self.scenario_text:
            return parse_scenario(
                self.scenario_text, source=self.scenario, overrides=self.overrides
            )
        path = Path(self.scenario).expanduser()
        if not path.is_absolute() and not path.exists() and (APP_DIR / path).exists():
            path = APP_DIR / path
        return load_scenario(path, self.overrides)


def _seconds(
    config: Mapping[str, object], key: str, default: float, issues: list[ConfigIssue]
) -> float:
    """A run-config number of seconds (finite, >= 0)."""
    value = config.get(key, default)
    try:
        seconds = float(str(value))
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds < math.inf:
        issues.append(ConfigIssue(f"run config {key}", f"must be a number >= 0, got {value!r}"))
    return seconds
