"""Calibration: measured throughput from the training loop's own MAC accounting, as a profile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fededge.config.scenario import parse_scenario
from fededge.cost.calibrate import Calibration, CalibrationSettings, calibrate
from fededge.cost.flops import model_cost
from fededge.cost.profiles import CATALOG, load_profile_file, save_profile_file
from fededge.data import dataset_info
from fededge.errors import ConfigError
from fededge.models import build_model


@pytest.fixture(scope="module")
def measured() -> Calibration:
    settings = CalibrationSettings(batch_size=16, steps=3, warmup=1, repeats=3, threads=1)
    return calibrate(settings)


def test_each_repeat_counts_the_macs_of_its_training_steps(measured: Calibration) -> None:
    # Prepare: LeNet-5's training MACs per instance, counted independently
    info = dataset_info("mnist")
    net = build_model("lenet5", num_classes=10, in_channels=1, image_size=28)
    per_instance = model_cost(net, (1, 28, 28)).training_macs
    # Assert: 3 steps of 16 instances per repeat, every repeat, nothing else counted
    assert info.image_size == 28
    assert measured.macs_per_step == 16 * per_instance
    assert measured.macs == (3 * 16 * per_instance,) * 3
    assert len(measured.seconds) == 3 and all(s > 0 for s in measured.seconds)
    assert measured.threads == 1


def test_profile_takes_the_median_throughput(measured: Calibration) -> None:
    rates = sorted(m / s for m, s in zip(measured.macs, measured.seconds, strict=True))
    assert measured.macs_per_s == rates[1]  # median of three
    assert measured.spread == pytest.approx((rates[2] - rates[0]) / rates[1])
    assert "MAC/s: median" in measured.summary()


def test_profile_from_a_base_keeps_its_power_and_links(measured: Calibration) -> None:
    profile = measured.profile("my-pi", base="rpi4")
    rpi4 = CATALOG["rpi4"]
    assert profile.name == "my-pi" and profile.macs_per_s == measured.macs_per_s
    assert (profile.power_w, profile.uplink_mbps, profile.memory_mb) == (
        rpi4.power_w,
        rpi4.uplink_mbps,
        rpi4.memory_mb,
    )
    own = measured.profile("box", power_w=12.0)
    assert own.power_w == 12.0 and own.memory_mb > 0
    with pytest.raises(ConfigError, match="--power-w"):
        measured.profile("x")
    with pytest.raises(ConfigError, match="unknown profile 'rpi5'"):
        measured.profile("x", base="rpi5")


def test_written_profile_is_usable_by_a_scenario(measured: Calibration, tmp_path: Path) -> None:
    path = save_profile_file(measured.profile("my-pi", base="rpi4"), tmp_path / "my-pi.json")
    assert json.loads(path.read_text())["macs_per_s"] == measured.macs_per_s
    assert load_profile_file(path).macs_per_s == measured.macs_per_s
    scenario = parse_scenario(
        f"""
        [[fleet.tiers]]
        name = "mine"
        profile = "{path}"
        count = 2
        budget_seconds = 0.5
        """
    )
    assert scenario.tiers[0].profile.name == "my-pi"
    assert scenario.tiers[0].budget_macs == pytest.approx(0.5 * measured.macs_per_s)


def test_settings_are_validated_all_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        CalibrationSettings(batch_size=0, steps=0, repeats=0)
    assert "3 problems" in str(err.value)


def test_calibrate_command_writes_the_profile(tmp_path: Path) -> None:
    from fededge.cli.main import main

    out = tmp_path / "profiles" / "me.json"
    args = ["calibrate", "--out", str(out), "--name", "me", "--base", "laptop"]
    threads = torch.get_num_threads()
    assert main([*args, "--steps", "1", "--warmup", "0", "--repeats", "1", "--threads", "1"]) == 0
    assert torch.get_num_threads() == threads  # restored
    assert load_profile_file(out).name == "me"
