"""``--set key=value`` overrides of a scenario, and naming the flag behind a problem.

:func:`apply_overrides` sets values in a parsed TOML document by dotted keys
(``run.rounds=5``, ``fleet.tiers[0].budget_macs=2e9``; values are TOML, anything
else is a string); :func:`blame_overrides` names the ``--set`` flag behind each
problem it caused, so the file is not blamed for it.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from typing import Any

from fededge.errors import ConfigError, ConfigIssue

_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)(\[(\d+)\])?$")


def apply_overrides(
    raw: dict[str, Any], overrides: Sequence[str], *, source: str = "--set"
) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a parsed document.

    Values are TOML (``0.5``, ``true``, ``"x"``, ``[1, 2]``; a bare word is taken
    as a string). ``fleet.tiers[1].count=5`` indexes arrays.
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




def blame_overrides(issues: Sequence[ConfigIssue], overrides: Sequence[str]) -> list[ConfigIssue]:
    """Name the ``--set`` flag behind each problem it caused (the file is not to blame)."""
    keys = [(o.split("=", 1)[0].strip(), o) for o in overrides if "=" in o]
    out = []
    for issue in issues:
        flag = next((o for k, o in keys if issue.path == k or issue.path.startswith(k + ".")), None)
        out.append(
            ConfigIssue(f"{issue.path} (from --set {flag})", issue.message) if flag else issue
        )
    return out
