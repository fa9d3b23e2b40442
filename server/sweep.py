"""Run a budget sweep's variants on Flower's simulation engine, in one Ray session.

The plan, the skip/resume logic and the comparison live in the core
(:mod:`fededge.sweep`, :mod:`fededge.compare`); this module only supplies the
runner: :func:`server.simulation.simulate` with the Ray session kept between
variants and shut down once at the end, whatever happens.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fededge.report import FleetReport
from fededge.scenario import Scenario
from fededge.sweep import PlannedVariant, SweepOutcome, SweepPlan, run_sweep
from server.ray_session import shutdown_ray
from server.simulation import simulate
from server.strategy import RoundOutcome


def run_compare(
    plan: SweepPlan,
    *,
    ray_address: str | None = None,
    on_start: Callable[[PlannedVariant, bool], None] | None = None,
    on_round: Callable[[PlannedVariant, RoundOutcome], None] | None = None,
    after_variant: Callable[[PlannedVariant, str], None] | None = None,
) -> SweepOutcome:
    """Run every unfinished variant of ``plan`` (see :func:`fededge.sweep.run_sweep`).

    Parameters
    ----------
    plan : the validated sweep.
    ray_address : join an existing Ray cluster (else the scenario's / ``RAY_ADDRESS``).
    on_start : called with each variant about to run and whether it resumes.
    on_round : called after each round of a variant.
    after_variant : called after each variant with ``ran``, ``skipped`` or ``failed``.
    """
    by_digest = {p.scenario.digest: p for p in plan.variants}

    def runner(scenario: Scenario, folder: Path, resume: bool) -> FleetReport:
        planned = by_digest[scenario.digest]
        if on_start is not None:
            on_start(planned, resume)

        def progress(outcome: RoundOutcome) -> None:
            if on_round is not None:
                on_round(planned, outcome)

        return simulate(
            scenario,
            folder,
            resume=resume,
            on_round=progress,
            ray_address=ray_address,
            keep_ray=True,
        )

    try:
        return run_sweep(plan, runner, after_variant=after_variant)
    finally:
        shutdown_ray()
