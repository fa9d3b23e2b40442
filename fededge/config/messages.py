"""What a user reads when a scenario is wrong: pydantic's errors as field, value and expectation.

:func:`issues_from_pydantic` turns a :class:`pydantic.ValidationError` into
:class:`~fededge.errors.ConfigIssue` lines -- the field's path as written
in the TOML file (``fleet.tiers[1].budget_macs``), the value received and what
is expected -- with a did-you-mean suggestion for unknown keys.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from typing import Any

from pydantic import (
    BaseModel,
    ValidationError,
)

from fededge.config.schema import (
    DataSection,
    FleetSection,
    ModelSection,
    RunSection,
    SaversSection,
    ScenarioModel,
    Section,
    ServerSection,
    SimulationSection,
    SweepSection,
    TrainSection,
)
from fededge.errors import ConfigIssue


def issues_from_pydantic(exc: ValidationError, raw: Any, prefix: str = "") -> list[ConfigIssue]:
    """One issue per pydantic error: the path as written in ``raw`` (under ``prefix``)."""
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
