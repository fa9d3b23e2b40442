"""Running a budget sweep: each planned variant into its own folder, resumable.

``fededge compare`` plans a sweep (:func:`~fededge.reports.sweep_plan.plan_sweep`)
and runs it (:func:`run_sweep`) with a *runner* supplied by the caller (the Flower
simulation in ``fededge.cli.simulation``; a fake in tests), then renders the comparison
(:mod:`fededge.reports.compare`).

Each variant runs into its own folder with the normal fleet report. When it
finishes, a ``done.json`` marker records the variant's scenario digest; a
re-run skips variants whose marker and ``summary.json`` match, resumes a
variant interrupted after a completed round (same digest in its checkpoint),
and moves a folder left by a *different* scenario aside rather than mixing
results. Layout::

    DIR/compare.json          the plan (levels, settings, target, tiers, variants)
    DIR/scenario.toml         the base scenario
    DIR/variants/NAME/        a normal run report + scenario.toml + done.json
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fededge.config.scenario import Scenario
from fededge.errors import ConfigError, ConfigIssue
from fededge.files import atomic_write_text
from fededge.reports.fleet_report import FleetReport
from fededge.reports.sweep_plan import PlannedVariant, SweepManifest, SweepPlan

log = logging.getLogger(__name__)

MANIFEST = "compare.json"
DONE = "done.json"

#: ``runner(scenario, folder, resume)`` runs one variant and returns its report.
Runner = Callable[[Scenario, Path, bool], FleetReport]
VariantState = Literal["finished", "resumable", "stale", "new"]


# --------------------------------------------------------------------------- state
def write_manifest(out_dir: Path, manifest: SweepManifest) -> None:
    """Write ``compare.json`` atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / MANIFEST, manifest.to_json())


def read_manifest(out_dir: str | Path) -> SweepManifest:
    """Read ``compare.json``.

    Raises
    ------
    ConfigError
        When the folder holds no (readable) sweep.
    """
    path = Path(out_dir) / MANIFEST
    try:
        return SweepManifest.from_json(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            [ConfigIssue(str(path), "not found: not a folder written by fededge compare")]
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError([ConfigIssue(str(path), f"unreadable sweep manifest: {exc}")]) from None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_done(folder: Path, name: str, scenario: Scenario, rounds_done: int) -> None:
    """Mark a variant finished (after its report is written)."""
    marker = {
        "variant": name,
        "digest": scenario.digest,
        "rounds": rounds_done,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(folder / DONE, json.dumps(marker, indent=2) + "\n")


def variant_state(folder: Path, digest: str, rounds: int) -> VariantState:
    """Where a variant's folder stands.

    Returns
    -------
    ``finished`` when ``done.json`` carries ``digest`` and ``summary.json``
    reports all ``rounds``; ``resumable`` when the checkpoint carries
    ``digest`` (an interrupted run of the same variant); ``stale`` when the
    folder holds anything else; ``new`` when it is missing or empty.
    """
    if not folder.is_dir() or not any(folder.iterdir()):
        return "new"
    done = _read_json(folder / DONE)
    summary = _read_json(folder / "summary.json")
    if (
        done is not None
        and summary is not None
        and done.get("digest") == digest
        and summary.get("rounds") == rounds
    ):
        return "finished"
    checkpoint = _read_json(folder / "checkpoint" / "state.json")
    if checkpoint is not None and checkpoint.get("digest") == digest:
        return "resumable"
    if set(p.name for p in folder.iterdir()) <= {"scenario.toml"}:
        return "new"  # started, but not one round finished
    return "stale"


def move_aside(folder: Path, why: str = "stale") -> Path:
    """Rename ``folder`` to ``<folder>.<why>-N`` (the first free N); returns the new path."""
    n = 1
    while (target := folder.with_name(f"{folder.name}.{why}-{n}")).exists():
        n += 1
    folder.rename(target)
    return target


# --------------------------------------------------------------------------- run
@dataclass
class SweepOutcome:
    """Names of the variants run, skipped (already finished) and failed."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def run_sweep(
    plan: SweepPlan,
    runner: Runner,
    *,
    after_variant: Callable[[PlannedVariant, str], None] | None = None,
) -> SweepOutcome:
    """Run every unfinished variant of ``plan`` with ``runner``, one after another.

    ``compare.json`` and the base ``scenario.toml`` are written first. A
    finished variant is skipped, an interrupted one resumed, a stale folder
    moved aside to ``NAME.stale-N``. A variant that raises (other than
    ``KeyboardInterrupt``), or whose every round was skipped (no device reply
    succeeded; its folder is moved aside to ``NAME.failed-N`` so the next run
    retries it), is logged and recorded in :attr:`SweepOutcome.failed`; the
    sweep goes on. Rounds with some failed replies still count: the tables
    show them (``failed_replies``, ``skipped_rounds``). ``after_variant(planned,
    status)`` is called after each variant (status ``ran``, ``skipped`` or
    ``failed``), e.g. to re-render the comparison.
    """
    write_manifest(plan.out_dir, plan.manifest())
    atomic_write_text(plan.out_dir / "scenario.toml", plan.base.text)
    outcome = SweepOutcome()
    for planned in plan.variants:
        name, scenario, folder = planned.variant.name, planned.scenario, planned.folder
        state = variant_state(folder, scenario.digest, scenario.run.rounds)
        if state == "finished":
            log.info("%s: already finished, skipped", name)
            outcome.skipped.append(name)
            if after_variant is not None:
                after_variant(planned, "skipped")
            continue
        if state == "stale":
            moved = move_aside(folder)
            log.warning("%s: %s held another scenario's results; moved to %s", name, folder, moved)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "scenario.toml", scenario.text)
        try:
            report = runner(scenario, folder, state == "resumable")
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            log.exception("%s failed; the sweep goes on with the next variant", name)
            outcome.failed[name] = f"{type(exc).__name__}: {exc}"
            if after_variant is not None:
                after_variant(planned, "failed")
            continue
        rounds = report.rounds_frame()
        done = int(rounds["round"].max()) if len(rounds) else 0
        skipped = int(rounds["skipped"].sum()) if "skipped" in rounds else 0
        if done == scenario.run.rounds and skipped < done:
            write_done(folder, name, scenario, done)
            outcome.ran.append(name)
            status = "ran"
        elif done == scenario.run.rounds:
            moved = move_aside(folder, "failed")
            outcome.failed[name] = (
                f"every round was skipped (no device reply succeeded); results moved to "
                f"{moved}; the next run retries this variant"
            )
            status = "failed"
        else:
            outcome.failed[name] = f"finished {done} of {scenario.run.rounds} rounds"
            status = "failed"
        if after_variant is not None:
            after_variant(planned, status)
    return outcome
