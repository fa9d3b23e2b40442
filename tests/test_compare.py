"""Budget sweeps: planning, skip/resume, tables, pages (fast, synthetic results), and one
small end-to-end ``fededge compare`` on Flower's simulation engine (slow, Ray)."""

from __future__ import annotations

import base64
import json
import math
import shutil
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from fededge.cli.compare import parse_levels, parse_savers, parse_seeds
from fededge.cli.main import main
from fededge.config.scenario import Scenario, load_scenario, parse_scenario
from fededge.errors import ConfigError
from fededge.reports.compare import (
    head_to_head,
    load_results,
    tier_table,
    variant_table,
)
from fededge.reports.compare_page import render_compare
from fededge.reports.device_rows import device_row
from fededge.reports.fleet_report import FleetReport
from fededge.reports.pages import ratio_by_tier_and_round, render_run
from fededge.reports.sweep import (
    DONE,
    MANIFEST,
    read_manifest,
    run_sweep,
    variant_state,
    write_done,
    write_manifest,
)
from fededge.reports.sweep_plan import SweepPlan, plan_sweep

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

BASE = """
[run]
name = "t"
seed = 3
rounds = 2
output_dir = "somewhere"
[data]
dataset = "mnist"
arrivals_per_round = 64
[train]
batch_size = 8
[[fleet.tiers]]
name = "pis"
profile = "rpi4"
count = 2
budget_seconds = 0.5
[[fleet.tiers]]
name = "mcus"
profile = "microcontroller"
count = 1
budget_joules = 2.0
savers = { eif = { enabled = true, target_ratio = 0.3 } }
[[fleet.tiers]]
name = "laptops"
profile = "laptop"
count = 1
[sweep]
budgets = [0.5, 2.0]
savers = ["none", "eif+emp"]
target_accuracy = 0.5
"""


@pytest.fixture(scope="module")
def base() -> Scenario:
    return parse_scenario(BASE)


# --------------------------------------------------------------------------- planning
def test_parse_levels_and_savers() -> None:
    assert parse_levels("0.25, 0.5,1,2") == (0.25, 0.5, 1.0, 2.0)
    assert parse_savers("none,EIF,emp+eif") == ("none", "eif", "eif+emp")
    with pytest.raises(ConfigError) as bad:
        parse_levels("0.5,zero,-1")
    assert len(bad.value.issues) == 2  # every bad entry reported at once
    with pytest.raises(ConfigError, match="expected one of none, eif, emp, eif\\+emp"):
        parse_savers("none,sgd")


def test_plan_from_sweep_section(base: Scenario, tmp_path: Path) -> None:
    plan = plan_sweep(base, tmp_path)

    names = [p.variant.name for p in plan.variants]
    assert names == ["x0.5-none", "x0.5-eif+emp", "x2-none", "x2-eif+emp"]
    assert plan.target_accuracy == 0.5
    assert plan.variants[0].folder == tmp_path / "variants" / "x0.5-none"
    assert len({p.scenario.digest for p in plan.variants}) == 4


def test_flags_win_over_sweep_section(base: Scenario, tmp_path: Path) -> None:
    plan = plan_sweep(base, tmp_path, budgets=(1.0, 1.0, 4.0), savers=("emp",), target_accuracy=0.8)

    assert [p.variant.name for p in plan.variants] == ["x1-emp", "x4-emp"]  # repeats dropped
    assert plan.target_accuracy == 0.8


def test_defaults_without_sweep_section(tmp_path: Path) -> None:
    scenario = parse_scenario(BASE.split("[sweep]")[0])
    plan = plan_sweep(scenario, tmp_path)
    assert [p.variant.name for p in plan.variants] == ["x1-none", "x1-eif+emp"]
    assert plan.target_accuracy is None


def test_variant_scales_budgets_and_switches_savers(base: Scenario, tmp_path: Path) -> None:
    plan = plan_sweep(base, tmp_path)
    low_sgd, low_savers = plan.variants[0].scenario, plan.variants[1].scenario
    pis, mcus, laptops = low_savers.tiers

    # budgets x 0.5, in the tier's own unit; the tier without a budget stays unlimited
    assert pis.section.budget_seconds == pytest.approx(0.25)
    assert mcus.section.budget_joules == pytest.approx(1.0)
    assert math.isinf(laptops.budget_macs)
    assert pis.budget_macs == pytest.approx(0.5 * base.tiers[0].budget_macs)
    # savers switched fleet-wide, the per-tier override included; its parameters kept
    assert low_savers.savers.label == "eif+emp"
    assert low_sgd.savers.label == "none"
    assert low_sgd.tiers[1].savers.label == "none"
    assert low_savers.tiers[1].savers.label == "eif+emp"
    assert low_savers.tiers[1].savers.eif.target_ratio == 0.3
    # same seed and data everywhere; the variant is a plain run (no [sweep], no output_dir)
    assert low_sgd.run.seed == low_savers.run.seed == 3
    assert low_savers.run.name == "t-x0.5-eif+emp"
    assert low_savers.sweep is None and low_savers.run.output_dir is None


def test_variant_digest_does_not_depend_on_output_location(base: Scenario, tmp_path: Path) -> None:
    moved = base.with_overrides(['run.output_dir="elsewhere"'])
    a = plan_sweep(base, tmp_path / "a").variants[0].scenario.digest
    b = plan_sweep(moved, tmp_path / "b").variants[0].scenario.digest
    assert a == b


def test_too_small_budget_level_is_reported_per_variant(base: Scenario, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        plan_sweep(base, tmp_path, budgets=(1e-6, 1.0), savers=("none", "eif+emp"))
    paths = [i.path for i in err.value.issues]
    assert any(p.startswith("variant x1e-06-none: fleet.tiers[0].budget_seconds") for p in paths)
    assert any(p.startswith("variant x1e-06-eif+emp:") for p in paths)
    assert not any("x1-" in p for p in paths)


def test_bad_target_is_rejected(base: Scenario, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="target_accuracy: must be in"):
        plan_sweep(base, tmp_path, target_accuracy=1.5)


def test_shipped_sweep_plans_every_variant(tmp_path: Path) -> None:
    scenario = load_scenario(ROOT / "scenarios" / "sweep-budgets.toml")
    plan = plan_sweep(scenario, tmp_path)
    assert len(plan.variants) == len(plan.budgets) * len(plan.savers) >= 4
    assert all(t.limited for t in plan.tiers)  # budgets bind on every tier
    assert plan.target_accuracy is not None


# --------------------------------------------------------------------------- synthetic runs
def fake_run(
    folder: Path,
    scenario: Scenario,
    accuracies: list[float],
    *,
    savers_on: bool,
    failed: int = 0,
) -> FleetReport:
    """A run report with hand-made rounds: every device streams 100 instances per round.

    Plain SGD trains all 100 (1e6 MACs each) and exhausts its budget on budgeted
    Pis; with savers, 25 are trained and 0.3 of the baseline MACs spent. The
    first ``failed`` devices fail every round; with all failed, rounds are skipped.
    """
    report = FleetReport(folder, scenario.run.name, [t.name for t in scenario.tiers], plots=False)
    for rnd, acc in enumerate(accuracies, start=1):
        rows = []
        for tier in scenario.tiers:
            for device in range(tier.first_device, tier.first_device + tier.count):
                if device < failed:
                    rows.append(
                        device_row(rnd, device, tier.name, tier.profile.name, "failed", None, "x")
                    )
                    continue
                baseline = 100 * 1_000_000
                spent = baseline * (0.3 if savers_on else 1.0)
                metrics = {
                    "arrived": 100,
                    "streamed": 100,
                    "trained": 25 if savers_on else 100,
                    "aimed_trained": 20 + 10 * rnd if savers_on else 100,
                    "main_forward_macs": spent,
                    "baseline_macs": baseline,
                    "budget_macs": tier.budget_macs,
                    "budget_exhausted": int(tier.section.budget_seconds is not None)
                    * int(not savers_on),
                    "compute_s": 1.0 + device,
                    "energy_j": 0.5,
                }
                rows.append(device_row(rnd, device, tier.name, tier.profile.name, "ok", metrics))
        skipped = failed >= scenario.num_devices
        report.add_round(
            rnd, rows, selected=len(rows), accuracy=acc, loss=1.0, skipped=skipped, wall_s=0.1
        )
    return report


ACCURACIES = {
    "x0.5-none": [0.2, 0.4],
    "x0.5-eif+emp": [0.3, 0.6],
    "x2-none": [0.5, 0.7],
    "x2-eif+emp": [0.45, 0.65],
}


def fake_runner(calls: list[tuple[str, bool]]) -> Any:
    def runner(scenario: Scenario, folder: Path, resume: bool) -> FleetReport:
        name = scenario.run.name.removeprefix("t-")
        calls.append((name, resume))
        return fake_run(folder, scenario, ACCURACIES[name], savers_on=name.endswith("eif+emp"))

    return runner


@pytest.fixture()
def finished_sweep(base: Scenario, tmp_path: Path) -> SweepPlan:
    plan = plan_sweep(base, tmp_path / "sweep")
    calls: list[tuple[str, bool]] = []
    outcome = run_sweep(plan, fake_runner(calls))
    assert outcome.ran == list(ACCURACIES) and not outcome.failed
    return plan


# --------------------------------------------------------------------------- seeds
#: final accuracy per (variant without seed, seed): at 0.5x the savers are ahead by
#: 0.2 +- 0.01 (beyond the spread); at 2x by 0.01, 0.05, -0.03 (within it)
SEEDED = {
    ("x0.5-none", 0): 0.40, ("x0.5-none", 1): 0.42, ("x0.5-none", 2): 0.41,
    ("x0.5-eif+emp", 0): 0.60, ("x0.5-eif+emp", 1): 0.63, ("x0.5-eif+emp", 2): 0.60,
    ("x2-none", 0): 0.70, ("x2-none", 1): 0.68, ("x2-none", 2): 0.72,
    ("x2-eif+emp", 0): 0.71, ("x2-eif+emp", 1): 0.73, ("x2-eif+emp", 2): 0.69,
}  # fmt: skip


def test_several_seeds_give_mean_sd_and_findings_that_respect_the_spread(
    base: Scenario, tmp_path: Path
) -> None:
    plan = plan_sweep(base, tmp_path, seeds=(0, 1, 2))
    assert plan.seeds == (0, 1, 2) and len(plan.variants) == 2 * 2 * 3
    assert {v.scenario.run.seed for v in plan.variants} == {0, 1, 2}
    assert plan.variants[0].variant.name == "x0.5-none-s0"

    def runner(scenario: Scenario, folder: Path, resume: bool) -> FleetReport:
        stem, seed = folder.name.rsplit("-s", 1)
        assert scenario.run.seed == int(seed)
        return fake_run(folder, scenario, [0.3, SEEDED[stem, int(seed)]], savers_on="eif" in stem)

    assert not run_sweep(plan, runner).failed
    result = render_compare(tmp_path)

    settings = pd.read_csv(tmp_path / "settings.csv").set_index(["budget", "savers"])
    low = settings.loc[(0.5, "eif+emp")]
    assert low["seeds"] == 3
    assert low["final_accuracy"] == pytest.approx(0.61)
    assert low["final_accuracy_sd"] == pytest.approx(pd.Series([0.60, 0.63, 0.60]).std())
    h2h = result.head_to_head.set_index("budget")
    assert h2h.loc[0.5, "delta_final_accuracy"] == pytest.approx(0.2, abs=1e-9)
    assert h2h.loc[0.5, "beyond_spread"] and not h2h.loc[2.0, "beyond_spread"]
    assert h2h.loc[2.0, "delta_final_accuracy_sd"] == pytest.approx(0.04)
    text = " ".join(result.findings)
    assert "higher; sd of the per-seed difference" in text
    assert "within the seed spread" in text
    assert "by more than the seed spread at 1 of 2 budget levels" in text
    page = result.html.read_text()
    assert "Over seeds (mean ± sd)" in page and "61.00% ± 1.73" in page
    assert (tmp_path / "accuracy_vs_budget.png").stat().st_size > 0


def test_one_seed_findings_say_the_spread_is_unknown_and_few_rounds_warn(
    finished_sweep: SweepPlan,
) -> None:
    result = render_compare(finished_sweep.out_dir)
    text = " ".join(result.findings)
    assert "one seed: the spread is not measured" in text
    assert "Caution: only 2 rounds per variant" in text
    assert set(result.variants["seed"]) == {finished_sweep.base.run.seed}


def test_every_sweep_column_is_documented_and_the_docs_page_is_current(
    base: Scenario, tmp_path: Path
) -> None:
    from fededge.reports.columns import as_markdown, describe

    plan = plan_sweep(base, tmp_path, seeds=(0, 1))

    def runner(scenario: Scenario, folder: Path, resume: bool) -> FleetReport:
        return fake_run(folder, scenario, [0.3, 0.5], savers_on="eif" in folder.name)

    run_sweep(plan, runner)
    render_compare(tmp_path, plots=False)
    names = ("variants", "tiers", "head_to_head", "settings")
    undocumented = [
        (n, c) for n in names for c in pd.read_csv(tmp_path / f"{n}.csv").columns if not describe(c)
    ]
    assert not undocumented, undocumented
    assert (tmp_path / "columns.json").exists()
    docs = (ROOT / "docs" / "columns.md").read_text()
    assert docs == as_markdown(), "run: python -m fededge.reports.columns > docs/columns.md"
    assert main(["report", "--columns"]) == 0


def test_seeds_are_checked() -> None:
    assert parse_seeds("0, 1,2") == (0, 1, 2)
    with pytest.raises(ConfigError) as bad:
        parse_seeds("0,x,-1")
    assert [i.path for i in bad.value.issues] == ["--seeds", "--seeds"]


# --------------------------------------------------------------------------- skip / resume
def test_variant_state_detects_finished_resumable_stale_and_new(
    finished_sweep: SweepPlan, tmp_path: Path
) -> None:
    v = finished_sweep.variants[0]
    digest, rounds = v.scenario.digest, v.scenario.run.rounds
    assert variant_state(v.folder, digest, rounds) == "finished"
    assert variant_state(tmp_path / "nothing", digest, rounds) == "new"
    # same folder, another scenario: its results are not ours
    assert variant_state(v.folder, "0" * 16, rounds) == "stale"
    # a longer run of the same scenario is not finished by a 2-round summary
    assert variant_state(v.folder, digest, rounds + 1) != "finished"
    # interrupted after a round: no done marker, the checkpoint has our digest
    (v.folder / DONE).unlink()
    (v.folder / "checkpoint").mkdir()
    (v.folder / "checkpoint" / "state.json").write_text(json.dumps({"round": 1, "digest": digest}))
    assert variant_state(v.folder, digest, rounds) == "resumable"


def test_rerun_skips_finished_variants(finished_sweep: SweepPlan) -> None:
    calls: list[tuple[str, bool]] = []
    statuses: list[str] = []

    outcome = run_sweep(
        finished_sweep, fake_runner(calls), after_variant=lambda p, s: statuses.append(s)
    )

    assert calls == []
    assert outcome.skipped == list(ACCURACIES)
    assert statuses == ["skipped"] * 4


def test_rerun_resumes_interrupted_and_moves_stale_aside(finished_sweep: SweepPlan) -> None:
    first, second = finished_sweep.variants[0], finished_sweep.variants[1]
    (first.folder / DONE).unlink()
    (first.folder / "checkpoint").mkdir()
    (first.folder / "checkpoint" / "state.json").write_text(
        json.dumps({"round": 1, "digest": first.scenario.digest})
    )
    write_done(second.folder, "x0.5-eif+emp", parse_scenario(BASE), 2)  # another digest
    calls: list[tuple[str, bool]] = []

    outcome = run_sweep(finished_sweep, fake_runner(calls))

    assert calls == [("x0.5-none", True), ("x0.5-eif+emp", False)]
    assert outcome.ran == ["x0.5-none", "x0.5-eif+emp"]
    assert (second.folder.parent / "x0.5-eif+emp.stale-1" / "summary.json").exists()
    assert variant_state(second.folder, second.scenario.digest, 2) == "finished"


def test_a_failing_variant_does_not_stop_the_sweep(base: Scenario, tmp_path: Path) -> None:
    plan = plan_sweep(base, tmp_path, budgets=(1.0,))
    ran: list[str] = []

    def runner(scenario: Scenario, folder: Path, resume: bool) -> FleetReport:
        if scenario.savers.label == "none":
            raise RuntimeError("the simulation ended without a report")
        ran.append(scenario.run.name)
        return fake_run(folder, scenario, [0.3, 0.4], savers_on=True)

    outcome = run_sweep(plan, runner)

    assert outcome.failed == {"x1-none": "RuntimeError: the simulation ended without a report"}
    assert outcome.ran == ["x1-eif+emp"] and ran == ["t-x1-eif+emp"]
    assert not (plan.variants[0].folder / DONE).exists()


def test_a_variant_whose_every_round_was_skipped_is_retried(base: Scenario, tmp_path: Path) -> None:
    plan = plan_sweep(base, tmp_path, budgets=(1.0,), savers=("none",))
    only = plan.variants[0]

    def runner(scenario: Scenario, folder: Path, resume: bool) -> FleetReport:
        return fake_run(folder, scenario, [0.1, 0.1], savers_on=False, failed=4)

    outcome = run_sweep(plan, runner)

    assert "every round was skipped" in outcome.failed["x1-none"]
    assert (only.folder.parent / "x1-none.failed-1" / "summary.json").exists()
    assert variant_state(only.folder, only.scenario.digest, 2) == "new"  # retried next time


def test_partial_failures_are_counted_and_flagged(base: Scenario, tmp_path: Path) -> None:
    plan = plan_sweep(base, tmp_path, budgets=(1.0,))
    sgd, savers = plan.variants

    fake_run(sgd.folder, sgd.scenario, [0.3, 0.5], savers_on=False, failed=1)
    fake_run(savers.folder, savers.scenario, [0.3, 0.6], savers_on=True)
    for v in plan.variants:
        write_done(v.folder, v.variant.name, v.scenario, 2)
    write_manifest(plan.out_dir, plan.manifest())
    comparison = render_compare(plan.out_dir, plots=False)

    row = comparison.variants.set_index("variant").loc["x1-none"]
    assert row["failed_replies"] == 2 and row["replies"] == 6 and row["skipped_rounds"] == 0
    assert (
        "Caution, failures distort this pair: x1-none: 2 failed replies" in (comparison.findings[1])
    )


# --------------------------------------------------------------------------- tables
def test_variant_table_by_hand(finished_sweep: SweepPlan) -> None:
    manifest = read_manifest(finished_sweep.out_dir)
    results = load_results(finished_sweep.out_dir, manifest)

    table = variant_table(manifest, results, target=0.5).set_index("variant")

    sgd, savers = table.loc["x0.5-none"], table.loc["x0.5-eif+emp"]
    assert sgd["final_accuracy"] == 0.4 and savers["best_accuracy"] == 0.6
    # target 0.5: SGD never gets there at 0.5x; savers in round 2; x2-none in round 1
    assert math.isnan(sgd["time_to_target_s"])
    assert savers["rounds_to_target"] == 2
    # simulated round time = slowest device's compute = 1 + last device id (3) = 4 s
    assert savers["time_to_target_s"] == pytest.approx(8.0)
    assert table.loc["x2-none", "time_to_target_s"] == pytest.approx(4.0)
    # 4 devices x 2 rounds x 100 instances; only the 2 Pis report an exhausted budget
    assert sgd["streamed"] == 800 and sgd["trained"] == 800 and savers["trained"] == 200
    assert sgd["budget_exhausted"] == 4 and sgd["replies"] == 8
    assert sgd["budget_exhausted_share"] == pytest.approx(0.5)
    assert sgd["spent_macs"] == pytest.approx(800e6)
    assert savers["computation_saved"] == pytest.approx(0.7)
    assert sgd["energy_j"] == pytest.approx(4.0)


def test_tier_table_scales_budgets_and_keeps_unlimited(finished_sweep: SweepPlan) -> None:
    manifest = read_manifest(finished_sweep.out_dir)
    tiers = tier_table(manifest, load_results(finished_sweep.out_dir, manifest))

    row = tiers.set_index(["variant", "tier"])
    pis_half, pis_double = row.loc[("x0.5-none", "pis")], row.loc[("x2-none", "pis")]
    base_budget = finished_sweep.base.tiers[0].budget_macs
    assert pis_half["budget_macs"] == pytest.approx(0.5 * base_budget)
    assert pis_double["budget_macs"] == pytest.approx(2 * base_budget)
    assert math.isinf(row.loc[("x2-none", "laptops"), "budget_macs"])
    assert not row.loc[("x2-none", "laptops"), "limited"]
    assert pis_half["trained"] == 400 and pis_half["budget_exhausted"] == 4
    assert row.loc[("x2-eif+emp", "mcus"), "computation_saved"] == pytest.approx(0.7)


def test_head_to_head_compares_at_equal_budget(finished_sweep: SweepPlan) -> None:
    manifest = read_manifest(finished_sweep.out_dir)
    results = load_results(finished_sweep.out_dir, manifest)
    variants = variant_table(manifest, results, 0.5)

    h2h = head_to_head(variants, tier_table(manifest, results)).set_index("budget")

    assert list(h2h.index) == [0.5, 2.0]
    assert h2h.loc[0.5, "delta_final_accuracy"] == pytest.approx(0.2)
    assert h2h.loc[2.0, "delta_final_accuracy"] == pytest.approx(-0.05)
    # limited tiers = pis + mcus (3 devices x 2 rounds x 100); laptops left out
    assert h2h.loc[0.5, "sgd_streamed_limited"] == 600
    assert h2h.loc[0.5, "savers_trained_limited"] == 150
    assert h2h.loc[0.5, "sgd_exhausted_share_limited"] == pytest.approx(4 / 6)
    assert h2h.loc[0.5, "savers_saved_limited"] == pytest.approx(0.7)


def test_missing_variants_are_listed_not_fatal(finished_sweep: SweepPlan) -> None:
    shutil.rmtree(finished_sweep.variants[3].folder)

    comparison = render_compare(finished_sweep.out_dir, plots=False)

    status = comparison.variants.set_index("variant")["status"]
    assert status["x2-eif+emp"] == "missing" and status["x2-none"] == "finished"
    assert list(comparison.head_to_head["budget"]) == [0.5]
    assert "not finished: x2-eif+emp" in comparison.html.read_text()


# --------------------------------------------------------------------------- pages
class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.tables = 0
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src") or "")
        if tag in ("link", "a") and a.get("href"):
            self.links.append(a["href"] or "")
        self.tables += tag == "table"
        self.scripts += tag == "script"


def test_render_compare_writes_self_contained_report(finished_sweep: SweepPlan) -> None:
    out = finished_sweep.out_dir

    comparison = render_compare(out)

    for name in ("variants.csv", "tiers.csv", "head_to_head.csv", "report.md"):
        assert (out / name.replace(".csv", ".parquet")).exists() or name.endswith(".md")
        assert (out / name).exists(), name
    assert len(pd.read_csv(out / "tiers.csv")) == 4 * 3
    page = _Page()
    page.feed(comparison.html.read_text())
    assert page.scripts == 0  # nothing to fetch: opens offline
    # the only links are to each variant's own report, beside it in the sweep folder
    assert sorted(page.links) == sorted(
        f"variants/{v.variant.name}/report.html" for v in finished_sweep.variants
    )
    assert all((out / link).exists() for link in page.links)
    assert page.tables == 4  # tier budgets, head-to-head, variants, variants per tier
    assert len(page.images) == 3
    for src in page.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix) :]).startswith(PNG_MAGIC)
    md = comparison.markdown.read_text()
    assert "| x0.5-eif+emp | 3 | finished | 60.00% |" in md
    assert "tiers without a budget (laptops) stay unlimited" in md
    assert any("+20.00 pp, higher" in line for line in comparison.findings)


def test_report_command_rerenders_with_a_new_target(
    finished_sweep: SweepPlan, capsys: pytest.CaptureFixture[str]
) -> None:
    out = finished_sweep.out_dir
    (out / "report.html").unlink(missing_ok=True)

    assert main(["report", str(out), "--target", "0.65"]) == 0

    assert (out / "report.html").exists()
    assert read_manifest(out).target_accuracy == 0.65
    table = pd.read_csv(out / "variants.csv").set_index("variant")
    assert table.loc["x2-none", "rounds_to_target"] == 2
    assert "simulated time to 65.00%" in capsys.readouterr().out


def test_report_command_rerenders_a_single_run(base: Scenario, tmp_path: Path) -> None:
    plan = plan_sweep(base, tmp_path)
    run = plan.variants[1].folder
    fake_run(run, plan.variants[1].scenario, [0.3, 0.6], savers_on=True)

    assert main(["report", str(run)]) == 0

    plots = ("accuracy", "accuracy_vs_time", "macs", "saving_per_tier")
    for name in (*(f"{p}.{ext}" for p in plots for ext in ("png", "svg")), "report.html"):
        assert (run / name).exists(), name
    assert (run / "macs.svg").read_text().startswith("<?xml")
    assert render_run(run) == run / "report.html"


def test_run_report_shows_the_ratio_each_tier_aimed_at_per_round(
    base: Scenario, tmp_path: Path
) -> None:
    plan = plan_sweep(base, tmp_path)
    on, off = plan.variants[1], plan.variants[0]
    fake_run(on.folder, on.scenario, [0.3, 0.6], savers_on=True)
    fake_run(off.folder, off.scenario, [0.3, 0.6], savers_on=False)

    table = ratio_by_tier_and_round(on.folder).set_index("tier")
    assert list(table.columns) == ["round 1", "round 2"]
    assert (table["round 1"] == 0.3).all() and (table["round 2"] == 0.4).all()
    page = render_run(on.folder).read_text()
    assert "R_set per tier and round" in page and "R_set aimed" in page
    # plain SGD aims at everything: no section
    assert "R_set per tier and round" not in render_run(off.folder).read_text()


def test_report_command_rejects_other_folders(tmp_path: Path) -> None:
    assert main(["report", str(tmp_path)]) == 2


def test_compare_dry_run_prints_plan(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    scenario = ROOT / "scenarios" / "sweep-budgets.toml"

    code = main(["compare", str(scenario), "--out", str(tmp_path), "--dry-run", "--savers", "none"])

    out = capsys.readouterr().out
    assert code == 0
    planned = [line.split()[1] for line in out.splitlines() if line.strip().startswith("[run]")]
    assert planned == ["x0.5-none", "x1-none", "x2-none"]
    assert not (tmp_path / MANIFEST).exists()


def test_keep_ray_session_only_swaps_flowers_terminate_while_active() -> None:
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    from server.flower_compat import keep_ray_session

    original = RayBackend.terminate
    with keep_ray_session():
        assert RayBackend.terminate is not original
        RayBackend.terminate(type("Idle", (), {"pool": None})())  # no actors: nothing to do
    assert RayBackend.terminate is original


# --------------------------------------------------------------------------- end to end
TINY = """
[run]
name = "tiny"
rounds = 2
[data]
dataset = "mnist"
arrivals_per_round = 128
[train]
batch_size = 32
lr = 0.05
[[fleet.tiers]]
name = "phones"
profile = "phone"
count = 1
budget_macs = 1.5e8
[[fleet.tiers]]
name = "laptops"
profile = "laptop"
count = 1
[server]
min_replies = 1
eval_instances = 500
[simulation]
max_concurrent = 1
[sweep]
savers = ["none", "eif+emp"]
target_accuracy = 0.2
"""


@pytest.mark.slow
@pytest.mark.ray
def test_compare_end_to_end(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    ray_dir = Path(tempfile.mkdtemp(prefix="fe-cmp-", dir="/tmp"))  # short: Ray's socket paths
    request.addfinalizer(lambda: shutil.rmtree(ray_dir, ignore_errors=True))
    monkeypatch.setenv("FEDEDGE_RAY_TMPDIR", str(ray_dir))
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    out = tmp_path / "out"

    assert main(["compare", str(scenario), "--out", str(out), "-q"]) == 0

    sessions = [p for p in ray_dir.iterdir() if p.name.startswith("session_2")]
    assert len(sessions) == 1  # both variants ran in one Ray session
    manifest = read_manifest(out)
    for entry in manifest.variants:
        folder = out / entry.folder
        assert variant_state(folder, entry.digest, 2) == "finished"
        assert json.loads((folder / "summary.json").read_text())["rounds"] == 2
    table = pd.read_csv(out / "variants.csv")
    assert list(table["status"]) == ["finished", "finished"]
    assert table["computation_saved"].iloc[1] > 0.3
    assert (out / "report.html").stat().st_size > 10_000
    capsys.readouterr()

    assert main(["compare", str(scenario), "--out", str(out), "-q"]) == 0  # nothing to run

    assert "2 variant(s) already finished: skipped" in capsys.readouterr().out


def test_sweep_progress_durations_read_as_time() -> None:
    from fededge.cli.common import duration_text as _duration

    assert [_duration(s) for s in (5, 75, 3725)] == ["5s", "1m15s", "1h02m"]
