"""Device profiles: what a class of edge device can do, and the built-in catalog.

A profile turns the exact MAC counts of the ledger into simulated seconds and
joules, and a per-round budget given in seconds or joules into MACs::

    compute_s = macs / macs_per_s
    energy_j  = compute_s * power_w              (energy per MAC = power_w / macs_per_s)
    upload_s  = 8 * bytes_up / (uplink_mbps * 1e6)

``macs_per_s`` is the *sustained training* throughput (forward + backward of
small CNNs in a training framework), not the chip's peak. Catalog numbers take
the vendor's peak FP32 figure and apply the efficiency stated next to each
entry; a device measured with ``fededge calibrate`` replaces both by a
measurement (:func:`load_profile_file`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from fededge.errors import ConfigError, ConfigIssue
from fededge.files import atomic_write_text


@dataclass(frozen=True)
class DeviceProfile:
    """What one class of device can do.

    Parameters
    ----------
    name : catalog or scenario name.
    macs_per_s : sustained training throughput (MAC/s).
    power_w : average power while training (W).
    memory_mb : memory available to training (MB).
    uplink_mbps, downlink_mbps : link bandwidth (Mbit/s).
    description : one line for reports.
    """

    name: str
    macs_per_s: float
    power_w: float
    memory_mb: float
    uplink_mbps: float
    downlink_mbps: float
    description: str = ""

    def __post_init__(self) -> None:
        for field in ("macs_per_s", "power_w", "memory_mb", "uplink_mbps", "downlink_mbps"):
            value = getattr(self, field)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(
                    f"DeviceProfile.{field} must be a finite number > 0, got {value!r}"
                )

    @property
    def joules_per_mac(self) -> float:
        """Energy per MAC while training (J)."""
        return self.power_w / self.macs_per_s

    def compute_seconds(self, macs: float) -> float:
        """Seconds of this device's compute that ``macs`` MACs take."""
        return macs / self.macs_per_s

    def energy_joules(self, macs: float) -> float:
        """Joules that ``macs`` MACs take on this device."""
        return macs * self.joules_per_mac

    def upload_seconds(self, num_bytes: float) -> float:
        """Seconds to send ``num_bytes`` over the uplink."""
        return 8.0 * num_bytes / (self.uplink_mbps * 1e6)

    def download_seconds(self, num_bytes: float) -> float:
        """Seconds to receive ``num_bytes`` over the downlink."""
        return 8.0 * num_bytes / (self.downlink_mbps * 1e6)

    def macs_for_seconds(self, seconds: float) -> float:
        """MACs this device computes in ``seconds``."""
        return seconds * self.macs_per_s

    def macs_for_joules(self, joules: float) -> float:
        """MACs this device computes with ``joules`` of energy."""
        return joules / self.joules_per_mac

    def to_dict(self) -> dict[str, float | str]:
        """Plain dict (JSON/TOML friendly)."""
        return asdict(self)


# Built-in catalog. Sustained training throughput = vendor peak FP32 x an
# efficiency for small-batch CNN training (framework overhead, memory-bound
# layers); power = measured board power under load where published.
CATALOG: dict[str, DeviceProfile] = {
    "microcontroller": DeviceProfile(
        name="microcontroller",
        # TI MSP432P401R (the paper's MCU): Cortex-M4F at 48 MHz, single-precision
        # FPU with one MAC per cycle at best (TI datasheet SLAS826); ~25% of that
        # sustained for conv loops in C -> 12 MMAC/s.
        macs_per_s=12e6,
        # Active mode 80 uA/MHz at 3.0 V (SLAS826): 48 * 80e-6 * 3.0 = 11.5 mW.
        power_w=0.0115,
        memory_mb=0.064,  # 64 KB SRAM (SLAS826)
        uplink_mbps=0.25,  # BLE 4.x application throughput, ~250 kbit/s
        downlink_mbps=0.25,
        description="MSP432-class MCU, Cortex-M4F 48 MHz, BLE",
    ),
    "rpi4": DeviceProfile(
        name="rpi4",
        # 4x Cortex-A72 at 1.5 GHz, 2x128-bit NEON FMA: 4 * 1.5e9 * 8 FLOP = 48 GFLOP/s
        # peak = 24 GMAC/s; ~10% sustained in PyTorch CNN training -> 2.4 GMAC/s.
        macs_per_s=2.4e9,
        # ~6.4 W board power under full CPU load (Raspberry Pi 4 power measurements,
        # e.g. Tom's Hardware review, 2019).
        power_w=6.4,
        memory_mb=4096,
        uplink_mbps=40.0,  # 802.11ac in practice (~40-100 Mbit/s)
        downlink_mbps=100.0,
        description="Raspberry Pi 4 Model B (4 GB), CPU training, Wi-Fi",
    ),
    "jetson-nano": DeviceProfile(
        name="jetson-nano",
        # 128-core Maxwell GPU: 472 GFLOP/s FP16 / ~236 GFLOP/s FP32 peak (NVIDIA
        # spec) = 118 GMAC/s FP32; ~25% sustained on small CNNs -> 30 GMAC/s.
        macs_per_s=30e9,
        power_w=10.0,  # 10 W power mode (NVIDIA Jetson Nano developer kit)
        memory_mb=4096,
        uplink_mbps=40.0,
        downlink_mbps=100.0,
        description="NVIDIA Jetson Nano (10 W mode), GPU training",
    ),
    "jetson-tx2": DeviceProfile(
        name="jetson-tx2",
        # 256-core Pascal GPU: 1.33 TFLOP/s FP16 / ~665 GFLOP/s FP32 peak (NVIDIA
        # spec) = 333 GMAC/s FP32; ~25% sustained -> 80 GMAC/s.
        macs_per_s=80e9,
        power_w=15.0,  # Max-Q/Max-P 7.5-15 W modes (NVIDIA TX2 data sheet)
        memory_mb=8192,
        uplink_mbps=100.0,
        downlink_mbps=200.0,
        description="NVIDIA Jetson TX2 (15 W mode), GPU training",
    ),
    "phone": DeviceProfile(
        name="phone",
        # Snapdragon 865 class: CPU cluster ~100 GFLOP/s FP32 peak = 50 GMAC/s;
        # ~10% sustained under thermal limits -> 5 GMAC/s.
        macs_per_s=5e9,
        power_w=4.0,  # sustained SoC power under load, ~3-5 W
        memory_mb=6144,
        uplink_mbps=10.0,  # LTE uplink in practice
        downlink_mbps=50.0,
        description="Flagship phone (Snapdragon 865 class), CPU training, LTE",
    ),
    "laptop": DeviceProfile(
        name="laptop",
        # 4-core x86 at ~3 GHz with AVX2 FMA: 4 * 3e9 * 32 FLOP = 384 GFLOP/s peak
        # = 192 GMAC/s; ~15% sustained -> 30 GMAC/s.
        macs_per_s=30e9,
        power_w=28.0,  # 28 W TDP class (Intel U/P-series)
        memory_mb=16384,
        uplink_mbps=100.0,
        downlink_mbps=300.0,
        description="4-core x86 laptop (28 W class), CPU training, Wi-Fi",
    ),
}


def load_profile_file(path: str | Path) -> DeviceProfile:
    """Read a profile written by ``fededge calibrate`` (JSON) or a hand-written one.

    Raises
    ------
    ConfigError
        When the file cannot be read or a field is missing or invalid.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError([ConfigIssue(str(path), f"cannot read device profile: {exc}")]) from None
    if not isinstance(raw, dict):
        raise ConfigError([ConfigIssue(str(path), "a device profile must be a JSON object")])
    allowed = set(DeviceProfile.__dataclass_fields__)
    extra = set(raw) - allowed
    issues = [ConfigIssue(f"{path}:{key}", "unknown field") for key in sorted(extra)]
    kwargs = {k: v for k, v in raw.items() if k in allowed and k != "description"}
    missing = allowed - set(raw) - {"description"}
    issues += [ConfigIssue(f"{path}:{key}", "missing") for key in sorted(missing)]
    if issues:
        raise ConfigError(issues)
    try:
        return DeviceProfile(description=str(raw.get("description", "")), **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError([ConfigIssue(str(path), str(exc))]) from None


def save_profile_file(profile: DeviceProfile, path: str | Path) -> Path:
    """Write ``profile`` as JSON (the format :func:`load_profile_file` reads)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(profile.to_dict(), indent=2) + "\n")
    return path
