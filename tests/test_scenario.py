"""Scenario loading and validation: every shipped file, every kind of mistake."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from fededge.cli.main import main
from fededge.config.scenario import load_scenario, parse_scenario, scenario_files
from fededge.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

BASE = """
[run]
name = "t"
rounds = 2
[data]
dataset = "mnist"
arrivals_per_round = 64
[[fleet.tiers]]
name = "a"
profile = "rpi4"
count = 2
"""


@pytest.mark.parametrize("path", scenario_files(ROOT / "scenarios"), ids=lambda p: p.name)
def test_every_shipped_scenario_loads_and_validates(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.num_devices >= 1
    assert scenario.run.rounds >= 1
    assert all(t.count >= 1 for t in scenario.tiers)
    # the canonical text the server sends to devices parses to the same scenario
    assert parse_scenario(scenario.text).digest == scenario.digest


def test_defaults_and_resolved_tiers() -> None:
    scenario = parse_scenario(BASE)
    assert scenario.filter_model == "slim-lenet"
    assert scenario.tiers[0].profile.name == "rpi4"
    assert math.isinf(scenario.tiers[0].budget_macs)
    assert scenario.tier_of(1).name == "a"


def test_budget_units_convert_through_the_profile() -> None:
    text = BASE.replace("count = 2", "count = 2\nbudget_seconds = 0.5")
    tier = parse_scenario(text).tiers[0]
    assert tier.budget_macs == pytest.approx(0.5 * tier.profile.macs_per_s)
    text = BASE.replace("count = 2", "count = 2\nbudget_joules = 2.0")
    tier = parse_scenario(text).tiers[0]
    assert tier.budget_macs == pytest.approx(2.0 / tier.profile.joules_per_mac)


def test_tier_saver_overrides_merge_key_by_key() -> None:
    text = (
        BASE
        + """
[savers.eif]
enabled = true
target_ratio = 0.3
[fleet.tiers.savers.eif]
target_ratio = 0.1
"""
    )
    tier = parse_scenario(text).tiers[0]
    assert tier.savers.eif.enabled and tier.savers.eif.target_ratio == 0.1


def test_overrides_set_values_and_index_arrays() -> None:
    scenario = parse_scenario(
        BASE,
        overrides=[
            "run.rounds=5",
            "fleet.tiers[0].count=3",
            'run.name="x"',
            "savers.emp.enabled=true",
        ],
    )
    assert scenario.run.rounds == 5 and scenario.num_devices == 3
    assert scenario.run.name == "x" and scenario.savers.emp.enabled


BAD = [
    # (mutation of BASE, expected path, expected fragment)
    (("rounds = 2", "rounds = -1"), "run.rounds", "must be >= 1, got -1"),
    (("rounds = 2", 'rounds = "two"'), "run.rounds", "must be an integer, got 'two'"),
    (("rounds = 2", "rounds = 2.5"), "run.rounds", "must be an integer, got 2.5"),
    (("arrivals_per_round = 64", "arrivals_per_round = 0"), "data.arrivals_per_round", ">= 1"),
    (("count = 2", "count = 2\ndropout = nan"), "fleet.tiers[0].dropout", "finite number, got nan"),
    (("count = 2", "count = 2\ndropout = 1.5"), "fleet.tiers[0].dropout", "must be < 1"),
    (
        ("count = 2", "count = 2\nbudget_macs = -5.0"),
        "fleet.tiers[0].budget_macs",
        "must be > 0, got -5.0",
    ),
    (("count = 2", "count = 0"), "fleet.tiers[0].count", "must be >= 1, got 0"),
    (('dataset = "mnist"', 'dataset = "mnits"'), "data.dataset", "did you mean 'mnist'"),
    (('profile = "rpi4"', 'profile = "rpi5"'), "fleet.tiers[0].profile", "did you mean 'rpi4'"),
    (("[run]", "[run]\nsede = 1"), "run.sede", "unknown key 'sede'; did you mean 'seed'"),
    (("[data]", "[dta]\nx=1\n[data]"), "dta", "unknown key 'dta'; did you mean 'data'"),
    (
        ('dataset = "mnist"', 'dataset = "mnist"\npartition = "random"'),
        "data.partition",
        "must be one of",
    ),
    (
        ("count = 2", "count = 2\nbudget_macs = 1000.0"),
        "fleet.tiers[0].budget_macs",
        "cannot train a single mini-batch",
    ),
    (
        ("count = 2", "count = 2\nbudget_macs = 1e9\nbudget_seconds = 1.0"),
        "fleet.tiers[0]",
        "at most one of budget_macs",
    ),
    (("[run]", '[model]\nmain = "lenet6"\n[run]'), "model.main", "did you mean 'lenet5'"),
    (("[run]", "[savers.emp]\nkeep_ratio = 0.0\n[run]"), "savers.emp.keep_ratio", "must be > 0"),
    (("[run]", "[server]\nfraction = 0.0\n[run]"), "server.fraction", "must be > 0"),
    (("[run]", "[server]\nmin_replies = 9\n[run]"), "server.min_replies", "must be <="),
]


@pytest.mark.parametrize(("change", "path", "fragment"), BAD, ids=[b[1] for b in BAD])
def test_bad_fields_name_path_value_and_expectation(
    change: tuple[str, str], path: str, fragment: str
) -> None:
    text = BASE.replace(change[0], change[1], 1)
    with pytest.raises(ConfigError) as info:
        parse_scenario(text)
    message = str(info.value)
    assert f"{path}:" in message and fragment in message, message


def test_every_problem_is_reported_at_once() -> None:
    text = BASE.replace("rounds = 2", "rounds = 0\nseed = -1").replace("count = 2", "count = -2")
    with pytest.raises(ConfigError) as info:
        parse_scenario(text)
    paths = {issue.path for issue in info.value.issues}
    assert {"run.rounds", "run.seed", "fleet.tiers[0].count"} <= paths


@pytest.mark.parametrize(
    "text",
    ["[run]\nname = 'x'\n", "[fleet]\ntiers = []\n", "this is = = not toml", ""],
    ids=["missing-fleet", "empty-fleet", "invalid-toml", "empty-file"],
)
def test_structural_mistakes_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_scenario(text)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_scenario(tmp_path / "missing.toml")


@pytest.mark.parametrize("change", [b[0] for b in BAD[:6]] + [BAD[8][0], BAD[13][0]])
def test_cli_exits_2_with_short_message_and_starts_nothing(
    change: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BASE.replace(change[0], change[1], 1))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fededge: error: invalid scenario") and "Traceback" not in err
    assert len(err.splitlines()) <= 4
    assert not out.exists()


def test_cli_bad_override_and_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ok.toml"
    path.write_text(BASE)
    assert main(["run", str(path), "--set", "runrounds"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    assert "cannot read file" in capsys.readouterr().err


def test_console_command_help_version_and_bad_file() -> None:
    exe = [sys.executable, "-m", "fededge.cli"]
    assert (
        "run" in subprocess.run([*exe, "--help"], capture_output=True, text=True, check=True).stdout
    )
    version = subprocess.run([*exe, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("fededge ")
    bad = subprocess.run([*exe, "run", "/nonexistent.toml"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        (['data.data_dir="/nope/never"'], "data.data_dir", "does not exist"),
        (["data.data_dir=EMPTY"], "data.data_dir", "no mnist train data found"),
    ],
)
def test_missing_data_fails_fast_before_anything_starts(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    overrides: list[str],
    field: str,
    message: str,
) -> None:
    import time

    from fededge.cli.main import main

    empty = tmp_path / "empty"
    empty.mkdir()
    path = tmp_path / "s.toml"
    path.write_text(Path("scenarios/quickstart.toml").read_text())
    out = tmp_path / "out"
    args = ["run", str(path), "--out", str(out)]
    for item in overrides:
        args += ["--set", item.replace("EMPTY", f'"{empty}"')]
    started = time.perf_counter()
    assert main(args) == 2
    assert time.perf_counter() - started < 5
    err = capsys.readouterr().err
    assert field in err and message in err and "Traceback" not in err
    assert not out.exists()  # nothing created, Ray never started


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["train", "--epochs", "-1"], "--epochs: must be a number > 0, got -1.0"),
        (["train", "--batch-size", "0"], "--batch-size: must be an integer >= 1, got 0"),
        (["train", "--lr", "nan"], "--lr: must be a number > 0"),
        (["report", "/nope/never"], "/nope/never: does not exist"),
    ],
)
def test_user_mistakes_are_one_clear_error_not_a_traceback(
    capsys: pytest.CaptureFixture[str], args: list[str], named: str
) -> None:
    from fededge.cli.main import main

    assert main(args) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err


def test_a_closed_pipe_ends_the_command_quietly() -> None:
    import subprocess
    import sys

    # a command printing many lines into a reader that leaves after the first one
    program = (
        "import fededge.cli.main as c\n"
        "import fededge.cli.train as t\n"
        "def chatty(args):\n"
        "    for i in range(200000):\n"
        "        print('line', i)\n"
        "    return 0\n"
        "t.cmd_train = chatty\n"
        "raise SystemExit(c.main(['train']))\n"
    )
    cmd = [sys.executable, "-c", program]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == b"line 0\n"
        proc.stdout.close()  # the reader leaves
        err = proc.stderr.read().decode()
        code = proc.wait(60)
    assert code == 0 and "BrokenPipeError" not in err and "Traceback" not in err, err


def test_every_option_of_every_command_has_help_showing_its_default() -> None:
    import argparse

    from fededge.cli.main import build_parser

    def parsers(parser: argparse.ArgumentParser, path: str) -> list[tuple[str, object]]:
        found: list[tuple[str, object]] = [(path, parser)]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    found += parsers(child, f"{path} {name}")
        return found

    problems = []
    for path, parser in parsers(build_parser(), "fededge"):
        assert isinstance(parser, argparse.ArgumentParser)
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.default is argparse.SUPPRESS:
                continue  # positionals, --help, --version
            shown = formatter._get_help_string(action) or ""
            if not action.help:
                problems.append(f"{path} {action.option_strings[0]}: no help")
            elif "default" not in shown.lower():
                problems.append(f"{path} {action.option_strings[0]}: default not shown")
        parser.format_help()  # renders (a bad %-format in a help text would raise)
        if not (parser.epilog or "").startswith("example:\n"):
            problems.append(f"{path}: help ends with no example")
    assert not problems, problems


def test_every_help_example_parses_as_the_command_it_is_shown_under() -> None:
    import shlex

    from fededge.cli.main import EXAMPLES, build_parser

    for words, text in EXAMPLES.items():
        for line in text.splitlines():
            argv = shlex.split(line)
            assert argv[0] == "fededge" and " ".join(argv[1:]).startswith(words), (words, line)
            build_parser().parse_args(argv[1:])  # exits 2 on a wrong option


def test_dry_run_prints_the_resolved_fleet_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fededge.cli.main import main

    out = tmp_path / "out"
    assert main(["run", "scenarios/quickstart.toml", "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "quickstart: 20 devices, 12 rounds, seed 0" in text
    assert "phones" in text and "8.5e+08" in text and "eif+emp" in text
    assert "aggregation fedavg" in text
    assert not out.exists()


def test_verbose_after_the_subcommand_and_compare_takes_the_resource_flags() -> None:
    from fededge.cli.common import resource_overrides
    from fededge.cli.main import build_parser

    parser = build_parser()
    assert parser.parse_args(["run", "x.toml", "-v"]).verbose is True
    assert parser.parse_args(["-v", "run", "x.toml"]).verbose is True
    assert parser.parse_args(["run", "x.toml"]).verbose is False
    assert parser.parse_args(["deploy", "certs", "-v"]).verbose is True
    args = parser.parse_args(["compare", "x.toml", "--client-cpus", "2", "--max-concurrent", "3"])
    assert resource_overrides(args) == ["simulation.client_cpus=2.0", "simulation.max_concurrent=3"]


def test_a_bad_override_is_blamed_on_its_flag_not_the_file() -> None:
    with pytest.raises(ConfigError) as bad:
        load_scenario("scenarios/quickstart.toml", ["run.rounds=0", "data.bogus=1"])
    paths = [i.path for i in bad.value.issues]
    assert paths == ["run.rounds (from --set run.rounds=0)", "data.bogus (from --set data.bogus=1)"]


def test_round_eta_follows_the_pace_after_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    from fededge.reports import progress

    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    pace = progress.Pace()

    def at(elapsed: float, done: int, total: int = 10) -> str:
        now[0] = elapsed
        return pace.eta_text(done, total)

    assert at(40.0, 1) == "  ETA 6m00s"  # only the first round (with start-up) known
    # round 1 took 40 s with start-up, rounds 2-3 took 5 s each: 7 left at 5 s
    assert at(50.0, 3) == "  ETA 35s"
    assert at(90.0, 10) == ""  # done
    resumed = progress.Pace()  # a resumed run starts at round 6
    now[0] = 20.0
    assert resumed.eta_text(6, 10) != "" and (now.__setitem__(0, 30.0) or True)
    assert resumed.eta_text(7, 10) == "  ETA 30s"


def test_a_sweep_eta_averages_every_step_as_each_variant_starts_up_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fededge.reports import progress

    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    pace = progress.Pace(skip_first=False)
    now[0] = 30.0
    assert pace.eta_text(1, 4) == "  ETA 1m30s"
    # variant 1's second round took 3 s; variant 2 will start up again: 40 s per 2 rounds
    now[0] = 40.0
    assert pace.eta_text(2, 4) == "  ETA 40s"


def test_progress_prints_plain_lines_with_an_eta_when_not_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fededge.reports.progress import Progress

    with Progress("rounds", 3) as bar:
        assert not bar.live  # captured output is not a terminal: no bar, no escape codes
        bar.phase("starting")
        bar.step(1, "round 1/3")
        bar.step(3, "round 3/3")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "  starting"
    assert lines[1].startswith("round 1/3  ETA ") and lines[2] == "round 3/3"
    assert all("\x1b" not in line for line in lines)


def test_train_saves_its_ledger_and_curve_and_never_overwrites(tmp_path: Path) -> None:
    import json

    from fededge.cli.main import main

    out = tmp_path / "train.json"
    assert main(["train", "--savers", "eif+emp", "--epochs", "0.02", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["ledger"]["trained"] > 0 and data["ledger"]["streamed"] >= data["ledger"]["trained"]
    assert 0.0 <= data["accuracy"] <= 1.0 and data["options"]["savers"] == "eif+emp"
    assert data["provenance"]["versions"]["fededge"]
    before = out.read_bytes()
    assert main(["train", "--epochs", "0.02", "--out", str(out)]) == 2
    assert out.read_bytes() == before


def test_a_rule_between_saver_fields_is_a_load_error_naming_the_field() -> None:
    # both EMP score weights 0: no score; EMPConfig's rule, reported when the file is read
    text = (ROOT / "scenarios" / "quickstart.toml").read_text()
    with pytest.raises(ConfigError) as info:
        parse_scenario(
            text, overrides=("savers.emp.gamma_weight=0.0", "savers.emp.gamma_error=0.0")
        )
    message = str(info.value)
    assert "savers.emp.gamma_weight, gamma_error" in message and "must not both be 0" in message
    assert message.count("must not both be 0") == 1  # once, not once per tier


def test_a_loaded_scenario_and_its_tiers_are_frozen() -> None:
    scenario = load_scenario(ROOT / "scenarios" / "quickstart.toml")
    with pytest.raises(AttributeError, match="frozen"):
        scenario.tiers = ()  # type: ignore[misc]
    with pytest.raises(AttributeError, match="frozen"):
        scenario.tiers[0].count = 99  # type: ignore[misc]
    import copy
    import pickle

    again = pickle.loads(pickle.dumps(scenario))  # what Ray ships to its workers
    assert again.digest == scenario.digest and copy.deepcopy(scenario).text == scenario.text
