"""Real devices: node config, tiers and profiles, the commands, and whole deployments on 127.0.0.1.

The fast tests check the pieces (what a node config means, which tier and
budget a real device gets, the scenario the server sends, the run config, the
fast-polling grid, the command lines). The ``process`` tests start a real
SuperLink and SuperNodes on 127.0.0.1 (free ports, their own FLWR_HOME under
``tmp_path``) and stop every process they started by its id.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.config import parse_config_args
from flwr.supercore.task_identity import TaskIdentity

import clients.app as client_module
from fededge.config.scenario import parse_scenario
from fededge.cost.ledger import MAC_FIELDS
from fededge.cost.profiles import DeviceProfile, save_profile_file
from fededge.deploy.flower_commands import node_config_text, node_config_values, supernode_args
from fededge.deploy.flower_commands import superlink_command as superlink_cmd
from fededge.deploy.loopback import LoopbackDeployment
from fededge.deploy.node_config import (
    device_tier,
    parse_node_config,
    portable_scenario_text,
)
from fededge.errors import ConfigError
from fededge.fleet import FleetRuntime, transported_weights
from server.deployment import RunSettings

SCENARIO = """
[run]
name = "deploy-test"
seed = 0
rounds = 2
[data]
dataset = "mnist"
arrivals_per_round = 64
[train]
batch_size = 32
[[fleet.tiers]]
name = "pis"
profile = "rpi4"
count = 2
budget_seconds = 0.35
[[fleet.tiers]]
name = "mcus"
profile = "microcontroller"
count = 1
budget_macs = 2e8
[server]
eval_instances = 200
"""

TINY = """
[run]
name = "loopback"
seed = 0
rounds = 2
[data]
dataset = "mnist"
arrivals_per_round = 64
[model]
main = "lenet5"
[train]
batch_size = 32
[[fleet.tiers]]
name = "pis"
profile = "rpi4"
count = 2
[server]
eval_instances = 200
"""


@pytest.fixture()
def calibrated(tmp_path: Path) -> Path:
    """A profile file as ``fededge calibrate`` writes it."""
    profile = DeviceProfile("bench-pi", 3.0e9, 5.0, 2048, 20.0, 60.0, "measured")
    return save_profile_file(profile, tmp_path / "bench-pi.json")


# ------------------------------------------------------------------ node config
def test_node_config_of_a_real_device_with_its_own_profile_and_data(
    calibrated: Path, tmp_path: Path
) -> None:
    setup = parse_node_config(
        {
            "device-id": 1,
            "device-profile": str(calibrated),
            "tier": "pis",
            "data-dir": str(tmp_path),
            "data": "local",
            "threads": "2",
            "num-partitions": 9,  # Flower's keys are ignored
        }
    )
    assert (setup.device_id, setup.real, setup.kind) == (1, True, "real")
    assert setup.profile is not None and setup.profile.macs_per_s == 3.0e9
    assert (setup.tier, setup.data_dir, setup.local_data, setup.threads) == (
        "pis",
        str(tmp_path),
        True,
        2,
    )
    assert setup.scenario_overrides() == [f'data.data_dir="{tmp_path}"']


def test_node_config_of_a_simulated_device() -> None:
    setup = parse_node_config({"partition-id": 4, "num-partitions": 10})
    assert (setup.device_id, setup.real, setup.kind, setup.profile) == (4, False, "simulated", None)
    assert setup.scenario_overrides() == []


def test_node_config_reports_every_problem_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        parse_node_config(
            {"device-id": "two", "device-profile": "rpi5", "data": "local", "threads": 0}
        )
    text = str(err.value)
    assert "4 problems" in text
    assert "device-id: must be an integer, got 'two'" in text
    assert "unknown device profile 'rpi5'" in text and "did you mean 'rpi4'?" in text
    assert "'local' needs data-dir" in text
    assert "threads: must be >= 1, got 0" in text
    with pytest.raises(ConfigError, match="no 'device-id'"):
        parse_node_config({})


# ------------------------------------------------------------------ tiers and budgets
def test_real_device_keeps_its_tier_and_gets_the_budget_its_own_profile_buys() -> None:
    scenario = parse_scenario(SCENARIO)
    # by slot, with the tier's own profile: the scenario's tier object
    assert device_tier(scenario, parse_node_config({"device-id": 0})) is scenario.tiers[0]
    # a laptop in the Pi tier: 0.35 s of *its* compute (30 GMAC/s), not the Pi's (2.4 GMAC/s)
    laptop = device_tier(scenario, parse_node_config({"device-id": 1, "device-profile": "laptop"}))
    assert (laptop.name, laptop.profile.name) == ("pis", "laptop")
    assert laptop.budget_macs == pytest.approx(0.35 * 30e9)
    assert scenario.tiers[0].budget_macs == pytest.approx(0.35 * 2.4e9)
    # a budget in MACs is the same on any device; `tier` picks another tier than the slot's
    mcu = device_tier(
        scenario, parse_node_config({"device-id": 0, "tier": "mcus", "device-profile": "rpi4"})
    )
    assert (mcu.name, mcu.profile.name, mcu.budget_macs) == ("mcus", "rpi4", 2e8)


def test_device_outside_the_fleet_or_unknown_tier_is_an_error() -> None:
    scenario = parse_scenario(SCENARIO)
    with pytest.raises(ConfigError) as err:
        device_tier(scenario, parse_node_config({"device-id": 3, "tier": "pi"}))
    assert "must be in 0..2" in str(err.value) and "did you mean 'pis'?" in str(err.value)


def test_device_with_its_own_data_streams_its_whole_training_split() -> None:
    scenario = parse_scenario(SCENARIO)
    runtime = FleetRuntime(scenario)
    own = runtime.stream(2, local_data=True)
    shared = runtime.stream(1)
    assert own.length == len(runtime.train_data) == 60_000
    assert shared.length == len(runtime.partitions[1]) == 20_000
    assert runtime.stream(2).length == 20_000  # without its own data: its partition


def test_scenario_sent_to_devices_needs_no_profile_file(calibrated: Path) -> None:
    scenario = parse_scenario(SCENARIO.replace('profile = "rpi4"', f'profile = "{calibrated}"'))
    text = portable_scenario_text(scenario)
    assert str(calibrated) not in text
    calibrated.unlink()  # a device has no such file
    on_device = parse_scenario(text)
    assert on_device.tiers[0].profile.macs_per_s == 3.0e9
    assert on_device.tiers[0].budget_macs == scenario.tiers[0].budget_macs
    plain = parse_scenario(SCENARIO)
    assert portable_scenario_text(plain) == plain.text


# ------------------------------------------------------------------ the ClientApp
@pytest.fixture()
def _task_identity() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0


@pytest.mark.usefixtures("_task_identity")
def test_real_device_reply_names_its_tier_profile_and_kind(calibrated: Path) -> None:
    scenario = parse_scenario(SCENARIO)
    runtime = FleetRuntime(scenario)
    weights = transported_weights(runtime.main_net, runtime.weight_names)
    config = ConfigRecord(
        {
            "scenario": portable_scenario_text(scenario),
            "scenario-digest": scenario.digest,
            "server-round": 1,
            "state-dir": "",
        }
    )
    message = Message(
        RecordDict({"arrays": ArrayRecord(weights), "config": config}),
        dst_node_id=1,
        message_type="train",
    )
    context = Context(
        run_id=1,
        node_id=7,
        node_config={"device-id": 1, "device-profile": str(calibrated), "threads": 1},
        state=RecordDict(),
        run_config={},
    )
    reply = client_module.train(message, context)
    device = reply.content.config_records["device"]
    assert dict(device) == {"tier": "pis", "profile": "bench-pi", "kind": "real"}
    metrics = reply.content.metric_records["metrics"]
    assert metrics["real_device"] == 1 and metrics["tier-index"] == 0
    # the profile's time for the MACs the ledger counted, and the measured wall time
    spent = sum(float(metrics[k]) for k in MAC_FIELDS)
    assert spent > 0 and metrics["compute_s"] == pytest.approx(spent / 3.0e9)
    assert metrics["budget_macs"] == pytest.approx(0.35 * 3.0e9)  # 0.35 s of *its* compute
    assert 0 < metrics["wall_s"] <= metrics["client_wall_s"]
    assert torch.get_num_threads() == 1


# ------------------------------------------------------------------ server side
def test_run_settings_from_the_run_config() -> None:
    settings = RunSettings.from_run_config(
        {
            "scenario": "scenarios/quickstart.toml",
            "scenario-text": "",
            "overrides": "run.rounds=2;server.fraction=0.5",
            "output-dir": "/tmp/x",
            "device-wait-s": 30,
        }
    )
    assert settings.overrides == ("run.rounds=2", "server.fraction=0.5")
    assert (settings.output_dir, settings.device_wait_s) == (Path("/tmp/x"), 30.0)
    scenario = settings.load_scenario()  # relative paths: to the app folder
    assert scenario.run.rounds == 2 and scenario.server.fraction == 0.5
    with pytest.raises(ConfigError, match="device-wait-s: must be a number >= 0, got 'soon'"):
        RunSettings.from_run_config({"device-wait-s": "soon"})


def test_flower_waits_are_shortened_in_this_process_only_when_asked() -> None:
    import time

    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supernode import start_client_internal as loop

    from clients.flower_compat import shortened_object_pulls, shortened_supernode_polls

    pulls = (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree)
    saved = [dict(f.__kwdefaults__ or {}) for f in pulls]
    with shortened_object_pulls(0.05, 0.5):
        for function in pulls:
            assert function.__kwdefaults__ is not None
            assert function.__kwdefaults__["initial_backoff"] == 0.05
            assert function.__kwdefaults__["backoff_cap"] == 0.5
        with shortened_supernode_polls(0.01):
            started = time.perf_counter()
            loop.time.sleep(3)  # the SuperNode's idle poll, capped
            assert time.perf_counter() - started < 1.0
            assert loop.time.monotonic() > 0  # the rest of the time module is untouched
        assert loop.time is time  # restored when the block ends
    assert [dict(f.__kwdefaults__ or {}) for f in pulls] == saved


# ------------------------------------------------------------------ command lines
def test_node_config_string_reads_back_as_flower_parses_it(calibrated: Path) -> None:
    values = node_config_values(
        device_id=3, profile=str(calibrated), tier="my tier", data="local", data_dir="~/d"
    )
    parsed = parse_config_args([node_config_text(values)])
    assert parsed == values
    assert parsed["data-dir"] == str(Path("~/d").expanduser().resolve())
    simulated = node_config_values(device_id=2, simulated=True)
    assert parse_node_config(parse_config_args([node_config_text(simulated)])).kind == "simulated"


def test_tls_is_the_default_and_insecure_must_be_asked_for(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run `fededge deploy certs"):
        superlink_cmd(tmp_path, host="127.0.0.1", port=1, insecure=False, auth=False)
    with pytest.raises(ConfigError, match="authentication needs TLS"):
        superlink_cmd(tmp_path, host="127.0.0.1", port=1, insecure=True, auth=True)
    cmd = superlink_cmd(tmp_path, host="127.0.0.1", port=1, insecure=True, auth=False)
    assert "--insecure" in cmd and "--disable-runtime-dependency-installation" in cmd
    with pytest.raises(ConfigError, match="CA"):
        supernode_args(
            superlink="h:1",
            node_config="device-id=0",
            port=2,
            isolation="process",
            root_certificates=None,
            auth_key=None,
            insecure=False,
        )


def test_insecure_mode_prints_a_warning_and_records_the_connection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import fededge.cli.deploy_commands as cli_deploy
    from fededge.cli.main import main

    calls: list[tuple[list[str], dict[str, str]]] = []

    def fake_run(cmd: list[str], env: dict[str, str], check: bool, **kwargs: Any) -> Any:
        calls.append((cmd, env))
        return type("Done", (), {"returncode": 0, "stdout": "registered", "stderr": ""})()

    monkeypatch.setattr(cli_deploy.subprocess, "run", fake_run)
    key = tmp_path / "device-0.pub"
    key.write_text("ecdsa-sha2-nistp384 AAAA\n")
    args = ["deploy", "register", str(key), "--dir", str(tmp_path), "--superlink", "127.0.0.1:9"]
    assert main([*args, "--insecure"]) == 0
    assert "WARNING: --insecure" in capsys.readouterr().err
    config = tomllib.loads((tmp_path / "flwr" / "config.toml").read_text())
    # an explicit address gets a connection of its own; the recorded one is left alone
    assert config["superlink"]["fededge-explicit"] == {"address": "127.0.0.1:9", "insecure": True}
    assert "fededge" not in config["superlink"]
    cmd, env = calls[0]
    assert cmd[1:] == ["supernode", "register", str(key), "fededge-explicit"]
    assert env["FLWR_HOME"] == str((tmp_path / "flwr").resolve())
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    # without --insecure the CA is required
    assert main(args) == 2
    assert "ca.crt not found" in capsys.readouterr().err


# ------------------------------------------------------------------ real processes
def _report(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_csv(out / "rounds.csv"), pd.read_csv(out / "devices.csv")


@pytest.mark.slow
@pytest.mark.process
@pytest.mark.timeout(240)
def test_two_real_devices_on_loopback_run_the_scenario(tmp_path: Path, calibrated: Path) -> None:
    # Prepare: a TLS SuperLink and two devices, one with a catalog profile, one calibrated
    scenario = tmp_path / "loopback.toml"
    scenario.write_text(TINY)
    out = tmp_path / "report"
    with LoopbackDeployment(tmp_path / "deploy") as deployment:
        deployment.start_superlink()
        devices = [
            deployment.start_device(0, "--threads", "1", "--poll", "0.2", "--profile", "laptop"),
            deployment.start_device(
                1, "--threads", "1", "--poll", "0.2", "--profile", str(calibrated)
            ),
        ]
        # Execute
        done = deployment.run(scenario, out_dir=out, wait_s=90, timeout_s=180)
        assert done.returncode == 0, done.stdout + done.stderr + devices[0].output()
        started = list(deployment.children)
    # Assert: every round has both real devices, with their own profiles, in tier "pis"
    rounds, table = _report(out)
    assert list(rounds["round"]) == [1, 2] and list(rounds["ok"]) == [2, 2]
    assert not math.isnan(rounds["accuracy"].iloc[-1])
    assert set(table["kind"]) == {"real"} and set(table["tier"]) == {"pis"}
    profiles = table.groupby("device")["profile"].first().to_dict()
    assert profiles == {0: "laptop", 1: "bench-pi"}
    assert (table["wall_s"] > 0).all() and (table["spent_macs"] > 0).all()
    assert (table["compute_s"] > 0).all()
    assert all(child.process.poll() is not None for child in started)  # all stopped


@pytest.mark.slow
@pytest.mark.process
@pytest.mark.timeout(300)
def test_network_reaches_only_the_fleet_api_and_devices_keep_their_own_state(
    tmp_path: Path,
) -> None:
    # Prepare: TLS + device authentication; keys for three devices
    scenario = tmp_path / "loopback.toml"
    scenario.write_text(TINY)
    out = tmp_path / "report"
    keys = tmp_path / "deploy" / "keys"
    homes = [tmp_path / f"device-home-{i}" for i in (0, 1)]
    for home in homes:
        home.mkdir()
    with LoopbackDeployment(tmp_path / "deploy", auth=True) as deployment:
        deployment.make_certificates(devices=3)
        deployment.start_superlink()
        devices_address = ["--superlink", f"127.0.0.1:{deployment.port}"]
        # Execute: an outsider with the CA (all a device has) tries the devices' address
        outsider_key = keys / "device-2.pub"
        outsider_register = deployment.register(outsider_key, *devices_address, check=False)
        outsider_run = deployment.run(scenario, *devices_address, out_dir=out, timeout_s=120)
        # the operator, on the server machine, registers two devices through the loopback
        for device in (0, 1):
            deployment.register(keys / f"device-{device}.pub")
        twice = deployment.register(keys / "device-0.pub", check=False)
        for device, home in zip((0, 1), homes, strict=True):
            deployment.start_device(
                device, "--threads", "1", "--poll", "0.2", "--state-dir", "state",
                auth_key=keys / f"device-{device}", cwd=home,
            )  # fmt: skip
        intruder = deployment.start_device(1, "--threads", "1", auth_key=keys / "device-2")
        done = deployment.run(scenario, out_dir=out, wait_s=90, timeout_s=180)
        assert done.returncode == 0, done.stdout + done.stderr
        intruder.process.wait(60)
        # Assert: the outsider's registration and run were refused at the devices' address
        assert outsider_register.returncode != 0
        assert "403" in outsider_register.stdout + outsider_register.stderr
        assert outsider_run.returncode != 0
        assert "403" in outsider_run.stdout + outsider_run.stderr
        # a key registered twice: a one-line error, not Flower's raw code
        assert twice.returncode == 2 and "is already registered" in twice.stderr, twice.stderr
        # the key the outsider tried to register lets no device in
        assert intruder.process.returncode != 0, intruder.output()
        assert "Failed to activate SuperNode" in intruder.output(), intruder.output()
        superlink_log = deployment.children[0].output()
    assert '/v1/control/register-node HTTP/1.1" 403' in superlink_log
    rounds, table = _report(out)
    assert list(rounds["ok"]) == [2, 2], table.to_string()
    assert sorted(table["device"].unique()) == [0, 1] and set(table["kind"]) == {"real"}
    # every device's state is in its own folder; nothing of theirs in the server's
    assert not (out / "device_state").exists()
    for device, home in zip((0, 1), homes, strict=True):
        files = sorted(p.name for p in (home / "state").rglob("*.pt"))
        assert files == ["r1.pt", "r2.pt"], (device, files)


@pytest.mark.slow
@pytest.mark.process
@pytest.mark.timeout(300)
def test_stock_flower_client_joins_as_foreign_only_when_the_scenario_accepts_it(
    tmp_path: Path,
) -> None:
    # Prepare: one fededge device and one stock Flower ClientApp (public Message API only)
    scenario = tmp_path / "loopback.toml"
    scenario.write_text(TINY)
    repo = Path(__file__).resolve().parents[1]
    with LoopbackDeployment(tmp_path / "deploy", insecure=True) as deployment:
        deployment.start_superlink()
        fededge_device = deployment.start_device(0, "--threads", "1", "--poll", "0.2")
        deployment.start_device(
            1, "--poll", "0.2", "--client-app", "tests.apps.stock_flower_client:app", cwd=repo
        )
        # Execute: accepted, then (fededge's device gone) rejected
        accept = ["--set", 'server.foreign_devices="accept"']
        accepted = deployment.run(scenario, *accept, out_dir=tmp_path / "accept", wait_s=90)
        deployment.stop(fededge_device)
        rejected = deployment.run(
            scenario, "--set", "server.timeout_s=20", out_dir=tmp_path / "reject", wait_s=5
        )
    # Assert: aggregated as foreign, with its compute unaccounted
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    rounds, table = _report(tmp_path / "accept")
    assert list(rounds["ok"]) == [2, 2] and list(rounds["foreign"]) == [1, 1]
    foreign = table[table["kind"] == "foreign"]
    assert len(foreign) == 2 and set(foreign["status"]) == {"ok"}
    assert foreign[["spent_macs", "baseline_macs", "trained"]].isna().all().all()
    assert (foreign["num_examples"] == 64).all()  # its 1000 capped at a round's arrivals
    ours = table[table["kind"] == "real"]
    assert (ours["spent_macs"] > 0).all()
    assert rounds["cum_spent_macs"].iloc[-1] == pytest.approx(ours["spent_macs"].sum())
    # without the mode: rejected, the reason names the missing keys; nothing trained: exit != 0
    assert rejected.returncode != 0, rejected.stdout + rejected.stderr
    assert "no device trained" in rejected.stdout + rejected.stderr
    _, table = _report(tmp_path / "reject")
    reasons = set(table.loc[table["status"] == "rejected", "reason"])
    assert reasons and all("ledger keys missing: arrived" in r for r in reasons), reasons


# ------------------------------------------------------------------ security and state
def test_devices_address_serves_only_the_fleet_api_routes() -> None:
    import httpx
    from flwr.superlink.main import create_app

    from server.superlink import FleetOnly, fleet_paths

    app = create_app()
    paths = fleet_paths(app)
    assert "/v1/fleet/pull-messages" in paths and "/v1/fleet/register-node" in paths
    assert not any(p.startswith(("/v1/control", "/v1/runtime")) for p in paths)
    gate = FleetOnly(app, paths)

    async def post(path: str) -> int:
        transport = httpx.ASGITransport(app=gate)
        async with httpx.AsyncClient(transport=transport, base_url="http://sl") as client:
            return (await client.post(path, content=b"")).status_code

    import asyncio

    for path in (
        "/v1/control/register-node",
        "/v1/control/start-run",
        "/v1/runtime/acquire-task",
        "/v1/fleet/../control/start-run",
        "/docs",
        "/openapi.json",
    ):
        assert asyncio.run(post(path)) == 403, path
    # a Fleet API path reaches Flower (which then answers the empty request itself)
    assert asyncio.run(post("/v1/fleet/get-run")) != 403
    assert gate.refused == 6


def test_superlink_keeps_control_and_runtime_apis_on_the_loopback(tmp_path: Path) -> None:
    from fededge.deploy.flower_commands import superexec_command, superexec_secret

    cmd = superlink_cmd(tmp_path, host="0.0.0.0", port=8000, insecure=True, auth=False)
    at = cmd.index("--host")
    assert cmd[at : at + 4] == ["--host", "127.0.0.1", "--port", "8001"]
    assert cmd[cmd.index("--isolation") + 1] == "process"
    secret = superexec_secret(tmp_path)
    assert cmd[cmd.index("--superexec-auth-secret-file") + 1] == str(secret.resolve())
    assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_bytes()) == 32
    assert superexec_secret(tmp_path).read_bytes() == secret.read_bytes()  # kept
    sx = superexec_command(tmp_path, control_port=8001, insecure=True)
    assert sx[sx.index("--runtime-api-address") + 1] == "127.0.0.1:8001"
    assert "--superexec-auth-secret-file" in sx
    with pytest.raises(ConfigError, match="--control-port: must differ from --port"):
        superlink_cmd(tmp_path, host="h", port=9, insecure=True, auth=False, control_port=9)


def test_real_device_keeps_its_state_in_its_own_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clients.app import _state_dir

    scenario = parse_scenario(TINY)
    config = ConfigRecord({"state-dir": "/server/only/out/device_state", "scenario-digest": "ab"})
    monkeypatch.chdir(tmp_path)
    default = parse_node_config({"device-id": 1})
    assert _state_dir(default, config, scenario) == str(
        tmp_path / "fededge-state" / "device-1" / "loopback-ab"
    )
    own = parse_node_config({"device-id": 1, "state-dir": str(tmp_path / "mine")})
    assert _state_dir(own, config, scenario) == str(tmp_path / "mine" / "loopback-ab")
    simulated = parse_node_config({"partition-id": 1})
    assert _state_dir(simulated, config, scenario) == "/server/only/out/device_state"
    values = node_config_values(device_id=0, state_dir="rel")
    assert values["state-dir"] == str(tmp_path / "rel")


def test_installed_fededge_assembles_its_flower_app(tmp_path: Path) -> None:
    from flwr.common.config import validate_config

    from fededge.deploy.flower_commands import FLOWER_APP, assemble_app

    repo = Path(__file__).resolve().parents[1]
    declared = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert declared == FLOWER_APP  # one app, whether from a checkout or an installation
    folder = assemble_app(tmp_path / "app")
    config = tomllib.loads((folder / "pyproject.toml").read_text())
    ok, errors, _ = validate_config(config, check_module=True, project_dir=folder)
    assert ok, errors
    assert (folder / "server" / "app.py").read_text() == (repo / "server" / "app.py").read_text()
    assert (folder / "fededge" / "data" / "cache.py").exists()
    from flwr.cli.build import build_fab_from_disk

    assert len(build_fab_from_disk(folder)) > 10_000  # what `flwr run` bundles


def test_device_contract_lists_every_key_a_reply_must_hold() -> None:
    from server.replies import REQUIRED_METRICS

    doc = (Path(__file__).resolve().parents[1] / "docs" / "device-contract.md").read_text()
    missing = [key for key in REQUIRED_METRICS if f"`{key}`" not in doc]
    assert not missing, f"docs/device-contract.md does not describe {missing}"
    for key in ("lr", "local-epochs", "batch-size", "server-round", "foreign_devices"):
        assert key in doc
