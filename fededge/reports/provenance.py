"""Where a result came from: enough, with the result folder alone, to run it again.

:func:`provenance` gathers, once per run, what ``summary.json`` records under
``"provenance"``: the versions of fededge, Flower, torch, Ray, numpy and Python;
the git commit (and whether the checkout had uncommitted changes) when fededge
runs from a source checkout; the command line, the start time (UTC) and the
seed; the scenario's digest, its canonical TOML (overrides applied: the file
``scenario.toml`` beside it holds the same text) and every field with its
resolved value, defaults included; and the machine (OS, CPU model and count,
torch threads, GPUs).

To rerun a result: ``fededge run OUT/scenario.toml --out NEW`` (the text already
holds the overrides). The scenario, seed and code version fix every number;
wall times depend on the machine, which is why it is recorded.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from fededge.config.scenario import Scenario

#: Packages whose versions a result depends on.
PACKAGES = ("fededge", "flwr", "torch", "ray", "numpy", "pandas")


def code_provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """What produced a result, whatever it ran.

    Versions, git commit, command line, start time and machine
    (:func:`provenance` adds the scenario).
    """
    return {
        "versions": {**_versions(), "python": platform.python_version()},
        "git": _git(),
        "command": shlex.join(sys.argv if argv is None else argv),
        "started_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
    }


def provenance(scenario: Scenario, argv: list[str] | None = None) -> dict[str, Any]:
    """What produced a run of ``scenario`` (see the module docstring)."""
    return {
        **code_provenance(argv),
        "seed": scenario.run.seed,
        "scenario": {
            "name": scenario.run.name,
            "source": scenario.source,
            "digest": scenario.digest,
            "text": scenario.text,
            "resolved": scenario.model.model_dump(mode="json"),
            "devices": scenario.num_devices,
            "main_model": scenario.main_model,
            "filter_model": scenario.filter_model,
        },
    }


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git() -> dict[str, Any] | None:
    """Commit and dirty flag of the checkout fededge runs from, or None (an installation)."""
    root = Path(__file__).resolve().parents[2]  # fededge/<package>/<module>.py
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip()), "root": str(root)}


def _machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = []
    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "os": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpus": gpus,
        "hostname": platform.node(),
    }
