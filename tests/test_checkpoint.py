"""Resume checks what it needs: every broken or foreign checkpoint file is refused, exit 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import Array, ArrayRecord

from clients import state as device_state
from fededge.cli.main import main
from fededge.config.scenario import parse_scenario
from fededge.reports.device_rows import device_row
from fededge.reports.fleet_report import FleetReport
from fededge.reports.tables import typed
from server.checkpoint import load_checkpoint, save_checkpoint, verify_checkpoint

SCENARIO = """
[run]
name = "resume-test"
rounds = 3
[data]
arrivals_per_round = 64
[[fleet.tiers]]
name = "a"
profile = "phone"
count = 2
"""


@pytest.fixture()
def run(tmp_path: Path) -> tuple[Path, Path]:
    """A run folder after 2 rounds: tables, weights, manifest, device states; and its scenario."""
    scenario_file = tmp_path / "scenario.toml"
    scenario_file.write_text(SCENARIO)
    scenario = parse_scenario(SCENARIO)
    out = tmp_path / "out"
    report = FleetReport(out, "resume-test", ["a"], plots=False)
    device_rounds: dict[str, int] = {}
    for server_round in (1, 2):
        rows = []
        for device in (0, 1):
            metrics = {"trained": 32, "streamed": 32, "arrived": 64, "baseline_macs": 100}
            rows.append(device_row(server_round, device, "a", "phone", "ok", metrics))
            blob = device_state.encode({"position": server_round, "w": torch.ones(3)})
            device_state.write_file(str(out / "device_state"), device, server_round, blob)
        report.add_round(
            server_round, rows, selected=2, accuracy=0.5, loss=1.0, skipped=False, wall_s=0.1
        )
        arrays = ArrayRecord({"w": Array(np.full(3, server_round, np.float32))})
        save_checkpoint(
            out,
            scenario,
            server_round,
            arrays,
            report,
            run_id="run-1",
            state_dir="device_state",
            device_rounds=device_rounds,
        )
    return out, scenario_file


def _resume(out: Path, scenario_file: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["run", str(scenario_file), "--out", str(out), "--resume"])
    return code, capsys.readouterr().err


def test_an_intact_checkpoint_resumes_from_its_round(run: tuple[Path, Path]) -> None:
    out, scenario_file = run
    digest = parse_scenario(scenario_file.read_text()).digest
    done, run_id, arrays, _, _ = load_checkpoint(out, digest)
    assert (done, run_id) == (2, "run-1")
    np.testing.assert_array_equal(arrays["w"].numpy(), np.full(3, 2.0))
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == ["global-r2.npz", "state.json"]
    manifest = verify_checkpoint(out, digest)
    assert manifest["device_state"]["rounds"] == {"0": 2, "1": 2}


def test_weights_written_after_the_manifest_are_not_used(run: tuple[Path, Path]) -> None:
    # interrupted between writing round 3's weights and its manifest
    out, scenario_file = run
    np.savez(out / "checkpoint" / "global-r3.npz", w=np.full(3, 99.0, np.float32))
    digest = parse_scenario(scenario_file.read_text()).digest
    done, _, arrays, _, _ = load_checkpoint(out, digest)
    assert done == 2 and float(arrays["w"].numpy()[0]) == 2.0


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _edit_first_row(path: Path) -> None:
    header, first, *rest = path.read_text().splitlines(keepends=True)
    path.write_text("".join([header, first.replace("0.5", "0.9", 1), *rest]))


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (
            lambda out: _truncate(out / "checkpoint" / "global-r2.npz"),
            "global-r2.npz does not match",
        ),
        (lambda out: (out / "checkpoint" / "global-r2.npz").unlink(), "global-r2.npz is missing"),
        (lambda out: (out / "checkpoint" / "state.json").write_text("{not json"), "state.json is"),
        (lambda out: (out / "rounds.csv").unlink(), "rounds.csv is missing"),
        (lambda out: _truncate(out / "devices.csv"), "devices.csv does not match"),
        (lambda out: _edit_first_row(out / "rounds.csv"), "rounds.csv does not match"),
        (
            lambda out: [p.unlink() for p in out.glob("*.csv")],
            "rounds.csv is missing",
        ),
        (
            lambda out: __import__("shutil").rmtree(out / "device_state"),
            "device-0/r2.pt is missing",
        ),
        (lambda out: _truncate(out / "device_state" / "device-1" / "r2.pt"), "r2.pt is corrupt"),
        (lambda out: (out / "checkpoint" / "state.json").unlink(), "no checkpoint in"),
    ],
    ids=[
        "truncated-weights",
        "missing-weights",
        "corrupt-manifest",
        "missing-rounds-table",
        "truncated-devices-table",
        "edited-rounds-table",
        "tables-deleted",
        "device-state-deleted",
        "truncated-device-state",
        "no-manifest",
    ],
)
def test_a_damaged_checkpoint_is_refused_naming_the_file(
    run: tuple[Path, Path], capsys: pytest.CaptureFixture[str], damage: object, named: str
) -> None:
    out, scenario_file = run
    damage(out)  # type: ignore[operator]
    code, err = _resume(out, scenario_file, capsys)
    assert code == 2, err
    assert named in err and "Traceback" not in err
    if "no checkpoint" not in named:
        assert "start over with a new --out" in err


def test_a_checkpoint_of_another_scenario_is_refused(
    run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out, scenario_file = run
    scenario_file.write_text(SCENARIO.replace("rounds = 3", "rounds = 4"))
    code, err = _resume(out, scenario_file, capsys)
    assert code == 2 and "holds a run of a different scenario" in err


def test_a_corrupt_device_state_names_its_file_on_the_device(tmp_path: Path) -> None:
    device_state.write_file(str(tmp_path), 3, 1, device_state.encode({"x": torch.ones(2)}))
    path = tmp_path / "device-3" / "r1.pt"
    _truncate(path)
    with pytest.raises(ValueError, match=f"device state file {path} is corrupt"):
        device_state.read_file(str(tmp_path), 3, 2)


def _checksums(folder: Path) -> dict[str, str]:
    import hashlib

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_run_into_a_folder_holding_a_run_is_refused_and_changes_nothing(
    run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out, scenario_file = run
    before = _checksums(out)
    code = main(["run", str(scenario_file), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "already holds a run" in err and "--move-aside" in err
    assert _checksums(out) == before


def test_move_aside_keeps_the_old_run_whole(run: tuple[Path, Path]) -> None:
    from fededge.cli.run import _check_output_dir

    out, scenario_file = run
    before = _checksums(out)
    digest = parse_scenario(scenario_file.read_text()).digest
    _check_output_dir(out, digest, resume=False, move_aside=True)
    assert not out.exists()
    assert _checksums(out.with_name("out.old-1")) == before


def test_rows_appended_after_the_checkpoint_are_cut_off_on_resume(run: tuple[Path, Path]) -> None:
    # interrupted mid-append of round 3: a partial line after the manifest's bytes
    out, scenario_file = run
    before = {t: (out / t).read_bytes() for t in ("rounds.csv", "devices.csv")}
    for table, data in before.items():
        partial = data.splitlines(keepends=True)[-1].replace(b"2,", b"3,")[:9]
        (out / table).write_bytes(data + partial)
    digest = parse_scenario(scenario_file.read_text()).digest
    checkpoint = load_checkpoint(out, digest)
    report = FleetReport.load(out, "resume-test", ["a"], checkpoint.tables, plots=False)
    assert {t: (out / t).read_bytes() for t in before} == before
    assert [r["round"] for r in report.rounds] == [1, 2]
    assert len(report.devices) == 4 and report.devices[0]["reason"] == ""
    tiers = pd.read_parquet(out / "tiers.parquet")
    pd.testing.assert_frame_equal(typed(report.tiers_frame()), tiers)


def test_each_round_appends_to_the_tables_and_never_rewrites_them(tmp_path: Path) -> None:
    report = FleetReport(tmp_path, "t", ["a"], plots=False)
    sizes = []
    for server_round in (1, 2, 3):
        rows = [device_row(server_round, d, "a", "phone", "ok", {"trained": 5}) for d in (0, 1)]
        before = (tmp_path / "devices.csv").read_bytes() if server_round > 1 else b""
        report.add_round(
            server_round, rows, selected=2, accuracy=0.5, loss=1.0, skipped=False, wall_s=0.1
        )
        after = (tmp_path / "devices.csv").read_bytes()
        assert after.startswith(before) and after.count(b"\n") == 1 + 2 * server_round
        sizes.append(report.table_marks()["devices.csv"]["bytes"])
        assert not (tmp_path / "devices.parquet").exists()  # written when the run ends
    assert sizes[-1] == (tmp_path / "devices.csv").stat().st_size
    report.flush()
    parquet = pd.read_parquet(tmp_path / "devices.parquet")
    assert len(parquet) == 6 and str(parquet["trained"].dtype) == "Int64"


def test_counts_are_written_as_integers_and_missing_cells_empty(tmp_path: Path) -> None:
    report = FleetReport(tmp_path, "t", ["a"], plots=False)
    rows = [
        device_row(1, 0, "a", "phone", "ok", {"trained": 5, "streamed": 7, "aimed_trained": 2.5}),
        device_row(1, 9, "a", "phone", "ok", {"num-examples": 3}, accounted=False),
    ]
    report.add_round(1, rows, selected=2, accuracy=0.5, loss=1.0, skipped=False, wall_s=0.1)
    report.flush()
    devices = pd.read_csv(tmp_path / "devices.csv", keep_default_na=False)
    assert devices["trained"].tolist() == ["5", ""]  # the foreign device's ledger: empty
    assert devices["aimed_trained"].tolist() == ["2.5", ""]  # an expected count: a float
    rounds_text = (tmp_path / "rounds.csv").read_text().splitlines()
    header, first = rounds_text[0].split(","), rounds_text[1].split(",")
    row = dict(zip(header, first, strict=True))
    assert (row["trained"], row["streamed"], row["ok"]) == ("5", "7", "2")
    for table in ("rounds", "devices", "tiers"):
        frame = pd.read_parquet(tmp_path / f"{table}.parquet")
        assert str(frame["trained"].dtype) in {"int64", "Int64"}, table
