"""Calibration: measure a device's sustained training throughput and write its profile.

A :class:`~fededge.cost.profiles.DeviceProfile`'s ``macs_per_s`` turns counted MACs
into simulated seconds. Run on a device, :func:`calibrate` measures it with
the project's own training loop and MAC accounting: it trains the main net
(plain SGD, no savers) on ``steps`` mini-batches, takes the MACs the ledger
counted and the wall time the loop took, and repeats::

    macs_per_s = ledger.spent_macs / ledger.wall_s      (per repeat)

``warmup`` repeats come first and are dropped (allocator, kernel selection,
caches); the profile takes the *median* of the remaining ``repeats`` (robust
to a background job stealing the CPU in one of them).

Images are random pixels of the dataset's shape unless ``real_data`` is set:
a dense training step costs the same whatever the pixel values, and the
device then needs no dataset to be calibrated.
"""

from __future__ import annotations

import math
import platform
import statistics
from dataclasses import dataclass, replace

import torch

from fededge.cost.flops import model_cost
from fededge.cost.profiles import CATALOG, DeviceProfile
from fededge.data import ImageDataset, dataset_info, default_augment, load_dataset
from fededge.errors import ConfigError, ConfigIssue
from fededge.method.training import LocalTrainer, TrainConfig
from fededge.models import build_model


@dataclass(frozen=True)
class CalibrationSettings:
    """What :func:`calibrate` measures and how.

    Parameters
    ----------
    model, dataset : the main net and the dataset that fixes its input shape.
    batch_size : instances per training step.
    steps : training steps per timed repeat.
    warmup : untimed repeats first.
    repeats : timed repeats (the median is kept).
    threads : torch threads (None: torch's default, all cores).
    real_data : train on the dataset's images instead of random pixels.
    data_dir : where the dataset is (with ``real_data``).
    seed : seeds the net and the pixels.
    """

    model: str = "lenet5"
    dataset: str = "mnist"
    batch_size: int = 32
    steps: int = 20
    warmup: int = 2
    repeats: int = 7
    threads: int | None = None
    real_data: bool = False
    data_dir: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        issues = [
            ConfigIssue(f"--{name.replace('_', '-')}", f"must be >= {low}, got {value}")
            for name, value, low in (
                ("batch_size", self.batch_size, 1),
                ("steps", self.steps, 1),
                ("warmup", self.warmup, 0),
                ("repeats", self.repeats, 1),
                ("threads", self.threads if self.threads is not None else 1, 1),
            )
            if value < low
        ]
        if issues:
            raise ConfigError(issues)


@dataclass(frozen=True)
class Calibration:
    """The measurement: throughput of every timed repeat and what was trained."""

    settings: CalibrationSettings
    macs_per_step: int  # MACs the ledger counts for one training step
    seconds: tuple[float, ...]  # wall time of each timed repeat
    macs: tuple[int, ...]  # MACs of each timed repeat
    threads: int  # torch threads used
    host: str

    @property
    def rates(self) -> tuple[float, ...]:
        """MAC/s of each timed repeat."""
        return tuple(m / s for m, s in zip(self.macs, self.seconds, strict=True))

    @property
    def macs_per_s(self) -> float:
        """Median MAC/s over the timed repeats: the profile's ``macs_per_s``."""
        return float(statistics.median(self.rates))

    @property
    def spread(self) -> float:
        """(max - min) / median of the repeats' MAC/s: how steady the device was."""
        rates = self.rates
        return (max(rates) - min(rates)) / self.macs_per_s

    def summary(self) -> str:
        """A few lines for the console."""
        s = self.settings
        rates = self.rates
        return "\n".join(
            [
                f"{s.model} on {s.dataset} shapes, batch {s.batch_size}, {s.steps} steps x "
                f"{s.repeats} repeats (+{s.warmup} warm-up), {self.threads} threads, {self.host}",
                f"  {self.macs_per_step / s.batch_size:.4g} MACs per instance "
                f"(forward + backward), {self.macs_per_step:.4g} per step",
                f"  MAC/s: median {self.macs_per_s:.4g}, min {min(rates):.4g}, "
                f"max {max(rates):.4g} (spread {100 * self.spread:.0f}%)",
                f"  one step: {1e3 * self.macs_per_step / self.macs_per_s:.2f} ms",
            ]
        )

    def profile(
        self,
        name: str,
        *,
        base: str | DeviceProfile | None = None,
        power_w: float | None = None,
        memory_mb: float | None = None,
        uplink_mbps: float | None = None,
        downlink_mbps: float | None = None,
    ) -> DeviceProfile:
        """The device's profile: measured ``macs_per_s``, the rest from ``base`` or arguments.

        ``base`` (a catalog name or profile) supplies power, memory and links
        not given; without it ``power_w`` is required and memory defaults to
        this machine's RAM.

        Raises
        ------
        ConfigError
            For an unknown ``base``, or no ``power_w`` and no ``base``.
        """
        issues = []
        if isinstance(base, str):
            if base not in CATALOG:
                issues.append(
                    ConfigIssue(
                        "--base", f"unknown profile {base!r}; expected one of {', '.join(CATALOG)}"
                    )
                )
                base = None
            else:
                base = CATALOG[base]
        if base is None and power_w is None:
            issues.append(
                ConfigIssue(
                    "--power-w",
                    "needed without --base: the device's average power while training, "
                    "in W (or --base rpi4 etc. to take power and links from a catalog profile)",
                )
            )
        if issues:
            raise ConfigError(issues)
        s = self.settings
        description = (
            f"calibrated on {self.host}: {s.model}/{s.dataset}, batch {s.batch_size}, "
            f"{self.threads} threads, median of {s.repeats} "
            f"(spread {100 * self.spread:.0f}%)"
        )
        if base is None:
            assert power_w is not None
            return DeviceProfile(
                name=name,
                macs_per_s=self.macs_per_s,
                power_w=power_w,
                memory_mb=memory_mb or machine_memory_mb(),
                uplink_mbps=uplink_mbps or 10.0,
                downlink_mbps=downlink_mbps or 50.0,
                description=description,
            )
        return replace(
            base,
            name=name,
            macs_per_s=self.macs_per_s,
            power_w=power_w or base.power_w,
            memory_mb=memory_mb or base.memory_mb,
            uplink_mbps=uplink_mbps or base.uplink_mbps,
            downlink_mbps=downlink_mbps or base.downlink_mbps,
            description=f"{description}; power and links from {base.name}",
        )


def calibrate(settings: CalibrationSettings) -> Calibration:
    """Measure the sustained training throughput (MAC/s) of this machine (see module doc)."""
    s = settings
    previous_threads = torch.get_num_threads()
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    try:
        data = _dataset(s)
        info = dataset_info(s.dataset, s.data_dir)
        shape = (info.channels, info.image_size, info.image_size)
        torch.manual_seed(s.seed)
        net = build_model(
            s.model,
            num_classes=info.num_classes,
            in_channels=info.channels,
            image_size=info.image_size,
        )
        cost = model_cost(net, shape)
        trainer = LocalTrainer(
            net, data, shape, TrainConfig(batch_size=s.batch_size), seed=s.seed, main_cost=cost
        )
        n = s.steps * s.batch_size
        generator = torch.Generator().manual_seed(s.seed)
        seconds, macs = [], []
        for repeat in range(s.warmup + s.repeats):
            indices = torch.randint(0, len(data), (n,), generator=generator)
            ledger = trainer.run(indices).ledger
            if repeat >= s.warmup:
                seconds.append(ledger.wall_s)
                macs.append(ledger.spent_macs)
        threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous_threads)
    return Calibration(
        settings=s,
        macs_per_step=s.batch_size * cost.training_macs,
        seconds=tuple(seconds),
        macs=tuple(macs),
        threads=threads,
        host=f"{platform.node() or 'unknown'} ({platform.machine()}, torch {torch.__version__})",
    )


def machine_memory_mb() -> float:
    """Physical memory of the machine in MB (1024 when it cannot be read)."""
    try:
        import os

        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1024.0
    total = pages * page_size / 1e6
    return total if math.isfinite(total) and total > 0 else 1024.0


def _dataset(s: CalibrationSettings) -> ImageDataset:
    """The dataset's training split, or random pixels of its shape (4 batches' worth)."""
    if s.real_data:
        return load_dataset(s.dataset, "train", s.data_dir, download=False)
    info = dataset_info(s.dataset, s.data_dir)
    generator = torch.Generator().manual_seed(s.seed)
    n = 4 * s.batch_size
    images = torch.randint(
        0,
        256,
        (n, info.channels, info.image_size, info.image_size),
        dtype=torch.uint8,
        generator=generator,
    )
    labels = torch.randint(0, info.num_classes, (n,), generator=generator)
    return ImageDataset(
        images,
        labels,
        classes=info.classes,
        mean=info.mean or (0.5,) * info.channels,
        std=info.std or (0.25,) * info.channels,
        augment=default_augment(s.dataset, "train"),
        name=s.dataset,
        split="train",
        source="random pixels (calibration)",
    )
