"""``fededge calibrate``: measure this device's training throughput, write its profile.

Registered by :mod:`fededge.cli.main`; the measuring is :mod:`fededge.cost.calibrate`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_calibrate(sub: Any) -> None:
    """Register ``fededge calibrate``."""
    p = sub.add_parser(
        "calibrate",
        help="measure this device's training throughput and write its device profile",
        description="Train a model for timed steps with fededge's own loop and MAC accounting "
        "(warm-up, then the median of repeats) and write a device profile (JSON) that "
        'scenarios (profile = "path.json") and real devices (--profile) use.',
    )
    p.add_argument("--model", default="lenet5", help="main net (default: lenet5)")
    p.add_argument("--dataset", default="mnist", help="dataset fixing the input shape")
    p.add_argument("--out", type=Path, required=True, help="profile file to write (.json)")
    p.add_argument("--name", default=None, help="profile name (default: the host name)")
    p.add_argument(
        "--base", default=None, help="catalog profile giving power, memory and links (e.g. rpi4)"
    )
    p.add_argument("--power-w", type=float, default=None, help="average power while training (W)")
    p.add_argument(
        "--memory-mb", type=float, default=None, help="the device's memory (default: --base's)"
    )
    p.add_argument(
        "--uplink-mbps", type=float, default=None, help="upload speed (default: --base's)"
    )
    p.add_argument(
        "--downlink-mbps", type=float, default=None, help="download speed (default: --base's)"
    )
    p.add_argument("--batch-size", type=int, default=32, help="training mini-batch measured")
    p.add_argument("--steps", type=int, default=20, help="training steps per repeat")
    p.add_argument("--warmup", type=int, default=2, help="untimed repeats first")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats (median kept)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument(
        "--real-data", action="store_true", help="train on the dataset, not random pixels"
    )
    p.add_argument(
        "--data-dir", default=None, help="dataset folder, for real images (default: none needed)"
    )
    p.set_defaults(handler=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    """``fededge calibrate``: measure and write a device profile."""
    import platform

    from fededge.cost.calibrate import CalibrationSettings, calibrate
    from fededge.cost.profiles import save_profile_file

    settings = CalibrationSettings(
        model=args.model,
        dataset=args.dataset,
        batch_size=args.batch_size,
        steps=args.steps,
        warmup=args.warmup,
        repeats=args.repeats,
        threads=args.threads,
        real_data=args.real_data,
        data_dir=args.data_dir,
    )
    result = calibrate(settings)
    profile = result.profile(
        args.name or platform.node() or "device",
        base=args.base,
        power_w=args.power_w,
        memory_mb=args.memory_mb,
        uplink_mbps=args.uplink_mbps,
        downlink_mbps=args.downlink_mbps,
    )
    if args.out.parent != Path():
        args.out.parent.mkdir(parents=True, exist_ok=True)
    save_profile_file(profile, args.out)
    print(result.summary())
    print(f"profile {profile.name!r}: {profile.macs_per_s:.4g} MAC/s -> {args.out}")
    print(
        f'use it: a scenario tier `profile = "{args.out}"`, or '
        f"`fededge deploy device --profile {args.out} ...`"
    )
    return 0
