"""Exception hierarchy: every error fededge raises on purpose derives from FedEdgeError.

Messages name what was expected, what arrived and how to fix it. The command line
turns a ``FedEdgeError`` into a short message and exit code 2, with no traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class FedEdgeError(Exception):
    """Root of all deliberate fededge errors (user mistakes, missing data, ...)."""


class DataError(FedEdgeError):
    """A dataset could not be found, read or verified."""


class ModelError(FedEdgeError):
    """An unknown model name or a model that does not fit the data."""


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration: where, what arrived, what was expected."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    def under(self, prefix: str) -> ConfigIssue:
        """The same issue with its path inside ``prefix`` (``emp.x`` -> ``savers.emp.x``)."""
        return ConfigIssue(f"{prefix}.{self.path}", self.message)


class ConfigError(FedEdgeError):
    """A configuration (scenario file, command-line override) is invalid.

    Carries *every* problem found, so a user fixes them all in one go.
    """

    def __init__(self, issues: Sequence[ConfigIssue], source: str | None = None) -> None:
        self.issues = tuple(issues)
        self.source = source
        head = f"invalid scenario {source}" if source else "invalid configuration"
        lines = [f"{head} ({len(self.issues)} problem{'s' if len(self.issues) != 1 else ''}):"]
        lines += [f"  - {issue}" for issue in self.issues]
        super().__init__("\n".join(lines))


class SettingsError(ConfigError, ValueError):
    """Invalid settings of one of the method's configs (``EIFConfig``, ``EMPConfig``, ...).

    A :class:`ConfigError` like every other configuration mistake (a scenario
    reports it under the field's path) and a ``ValueError`` for code that builds
    a config directly.
    """

    @classmethod
    def from_problems(cls, owner: str, problems: list[str]) -> SettingsError:
        """One issue per ``"field must ..."`` sentence (the field is its first word)."""
        issues = []
        for problem in problems:
            field, _, rest = problem.partition(" ")
            issues.append(
                ConfigIssue(field, rest) if field.isidentifier() else ConfigIssue(owner, problem)
            )
        return cls(issues, source=owner)
