"""The fededge ServerApp: runs a scenario's rounds with :class:`FleetStrategy`.

``fededge run`` builds the app around an already-loaded scenario
(:class:`BoundServerApp`); ``flwr run . <connection>`` (the deployment engine,
see ``fededge deploy run``; or Flower's simulation engine, ``flwr run . --stream``)
uses :data:`app`, which reads the scenario from the run config
(``[tool.flwr.app.config]``, :class:`server.deployment.RunSettings`) and waits up
to ``device-wait-s`` for the fleet's devices to connect (in a simulation every
one of them must: the federation's size is a setting).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fededge.config.scenario import Scenario
from fededge.deploy.node_config import portable_scenario_text
from fededge.files import atomic_write_text
from fededge.fleet import FleetRuntime, transported_weights
from fededge.reports.fleet_report import FleetReport
from fededge.reports.progress import Progress, round_line
from fededge.reports.provenance import provenance
from fededge.wire import record_tensors
from server.checkpoint import load_checkpoint, new_run_id, save_checkpoint
from server.deployment import RunSettings
from server.strategy import FleetIncomplete, FleetStrategy, RoundOutcome

log = logging.getLogger(__name__)

#: Redraw the report's plots at most this often during a run (seconds); tables every round.
PLOT_EVERY_S = 60.0
#: How long a simulation's ServerApp waits for its SuperNodes to register.
SIMULATION_WAIT_S = 60.0


def run_server(
    grid: Grid,
    scenario: Scenario,
    out_dir: Path,
    *,
    resume: bool = False,
    on_round: Callable[[RoundOutcome], None] | None = None,
    keep_device_state: bool = True,
    stop: threading.Event | None = None,
    device_wait_s: float | None = None,
    complete_fleet: str | None = None,
) -> FleetReport:
    """Run every round of ``scenario`` on ``grid``; results go to ``out_dir``.

    ``complete_fleet``: fail (:class:`~server.strategy.FleetIncomplete`, with this
    fix in its message) unless every device of the scenario connects.
    """
    runtime = FleetRuntime(scenario, load_test=True)
    tier_names = [t.name for t in scenario.tiers]
    start_round = 1
    initial = ArrayRecord(transported_weights(runtime.main_net, runtime.weight_names))
    report = FleetReport(out_dir, scenario.run.name, tier_names, plot_every_s=PLOT_EVERY_S)
    run_id = new_run_id()
    earlier: dict[str, object] | None = None
    device_rounds: dict[str, int] = {}  # device -> round of its newest saved state
    if resume:  # everything it needs is verified first (exit 2 naming what is wrong)
        done, run_id, arrays, device_rounds, tables = load_checkpoint(out_dir, scenario.digest)
        report = FleetReport.load(
            out_dir, scenario.run.name, tier_names, tables, plot_every_s=PLOT_EVERY_S
        )
        earlier = _earlier_provenance(out_dir)
        initial, start_round = arrays, done + 1
        log.info("resuming %s (run %s) after round %d", scenario.run.name, run_id, done)

    report.provenance = {"run_id": run_id, **provenance(scenario)}
    if earlier is not None:  # a resumed run says what it continues
        report.provenance["resumes"] = earlier

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> tuple[float, float]:
        return runtime.evaluate(record_tensors(arrays))

    def after_round(outcome: RoundOutcome) -> None:
        save_checkpoint(
            out_dir,
            scenario,
            outcome.server_round,
            outcome.arrays,
            report,
            run_id=run_id,
            state_dir=state_dir,
            device_rounds=device_rounds,
        )
        if on_round is not None:
            on_round(outcome)

    expected = {
        k: tuple(v.shape)
        for k, v in runtime.main_net.state_dict().items()
        if k in runtime.weight_names
    }
    state_dir = str((out_dir / "device_state").resolve()) if keep_device_state else ""
    strategy = FleetStrategy(
        scenario,
        report,
        evaluate_fn=evaluate_fn,
        expected=expected,
        on_round=after_round,
        stop=stop,
        train_size=runtime.info.train_size,
    )
    if device_wait_s is not None:
        strategy.device_wait_s = device_wait_s
    strategy.complete_fleet = complete_fleet
    config = ConfigRecord(
        {
            "scenario": portable_scenario_text(scenario),  # no server file needed on devices
            "scenario-digest": scenario.digest,
            "state-dir": state_dir,
        }
    )
    if start_round <= scenario.run.rounds:
        try:
            strategy.run(grid, initial, train_config=config, start_round=start_round)
        finally:
            report.flush()  # plots of the last rounds
    return report


def _earlier_provenance(out_dir: Path) -> dict[str, object] | None:
    """The provenance in ``out_dir``'s summary.json (the run a resume continues), if any."""
    try:
        earlier = json.loads((out_dir / "summary.json").read_text()).get("provenance")
    except (OSError, ValueError, AttributeError):
        return None
    return earlier if isinstance(earlier, dict) else None


class BoundServerApp:
    """A ServerApp bound to a loaded scenario (used by ``fededge run``), and its run's report.

    Flower calls the app's main function and drops what it returns, so the
    report of the run stays here: :attr:`report` is None until the run ends.
    """

    def __init__(
        self,
        scenario: Scenario,
        out_dir: Path,
        *,
        resume: bool = False,
        on_round: Callable[[RoundOutcome], None] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.app = ServerApp()
        self.report: FleetReport | None = None

        @self.app.main()
        def main(grid: Grid, context: Context) -> None:
            self.report = run_server(
                grid, scenario, out_dir, resume=resume, on_round=on_round, stop=stop
            )


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run .``: the scenario comes from the run config."""
    from server.flower_compat import shortened_object_pulls

    # a reply found before its objects: retry in 0.05 s, not 1 s
    with shortened_object_pulls():
        _main(grid, context)


def _main(grid: Grid, context: Context) -> None:
    settings = RunSettings.from_run_config(context.run_config)
    scenario = settings.load_scenario()
    # relative: to the SuperLink's folder (where `flwr run .` first started it)
    out_dir = (settings.output_dir or scenario.output_dir()).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scenario.toml").write_text(scenario.text)
    rounds, devices = scenario.run.rounds, scenario.num_devices
    simulation = type(grid).__name__ == "InMemoryGrid"  # Flower's simulation engine
    print(
        f"{scenario.run.name}: {devices} devices, {rounds} rounds -> {out_dir}"
        + (" (simulation)" if simulation else ""),
        flush=True,
    )
    failure: str | None = "the ServerApp stopped before the run finished"
    try:
        with Progress("rounds", rounds) as bar:

            def on_round(outcome: RoundOutcome) -> None:
                row = outcome.row
                bar.step(
                    outcome.server_round,
                    round_line(outcome.server_round, rounds, row, bar.pace.elapsed()),
                )

            report = run_server(
                grid,
                scenario,
                out_dir,
                on_round=on_round,
                # a simulation's SuperNodes are all there at once: wait only for them to register
                device_wait_s=min(settings.device_wait_s, SIMULATION_WAIT_S)
                if simulation
                else settings.device_wait_s,
                complete_fleet=(
                    f"set the federation's size to the fleet's: flwr run . --stream "
                    f'--federation-config "num-supernodes={devices}"'
                )
                if simulation
                else None,
            )
        print(report.summary_text())
        failure = report.failure()
        from fededge.reports.pages import render_run

        if report.rounds:  # the tables and plots in one page, as `fededge run` writes it
            print(f"results: {out_dir} (report: {render_run(out_dir, plots=False)})", flush=True)
    except FleetIncomplete as exc:
        failure = str(exc)
    finally:
        write_status(out_dir, settings.run_token, failure)
    if failure is not None:  # `flwr run` marks the run failed; `deploy run` reads status.json
        print(f"error: {failure}", flush=True)
        raise RuntimeError(failure)


#: The outcome of a deployment run, read by ``fededge deploy run`` (which exits 1 on failure).
STATUS_FILE = "status.json"


def write_status(out_dir: Path, token: str, failure: str | None) -> None:
    """``<out_dir>/status.json``: completed or failed (with the reason), and the run's token."""
    status = {"status": "failed" if failure else "completed", "reason": failure or ""}
    status["token"] = token
    atomic_write_text(out_dir / STATUS_FILE, json.dumps(status) + "\n")
