"""The import rules of the layout (README, "Architecture").

* ``fededge`` -- the method, costs, configuration, data, reports, deployment
  tools -- imports neither Flower, Ray, ``clients`` nor ``server``; only
  ``fededge.cli`` (the command line and the simulation runner that hosts both
  Flower apps) imports ``clients`` and ``server``, and Flower and Ray only
  through them;
* ``clients`` (devices) and ``server`` meet only through Flower messages and
  the wire format in ``fededge.wire``: neither imports the other;
* Flower's internals are used in ``clients/flower_compat.py`` and
  ``server/flower_compat.py`` alone;
* no two modules import each other, directly or around a loop.

Every import counts, also those inside functions.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fededge", "clients", "server")

#: Flower's public API: what code outside the compat modules may import from flwr.
FLOWER_PUBLIC = ("flwr.app", "flwr.clientapp", "flwr.serverapp", "flwr.simulation")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; ``from a import b`` gives a and a.b)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _top(name: str) -> str:
    return name.split(".")[0]


def test_the_core_imports_neither_flower_ray_clients_nor_server() -> None:
    bad = {
        module: sorted(i for i in _imports(path) if _top(i) in {"flwr", "ray", "clients", "server"})
        for module, path in _modules().items()
        if _top(module) == "fededge" and not module.startswith("fededge.cli")
    }
    assert {module: names for module, names in bad.items() if names} == {}


def test_flower_and_ray_are_imported_only_in_clients_and_server() -> None:
    bad = {
        module: sorted(i for i in _imports(path) if _top(i) in {"flwr", "ray"})
        for module, path in _modules().items()
        if _top(module) == "fededge"
    }
    assert {module: names for module, names in bad.items() if names} == {}


def test_importing_the_core_loads_no_flower_or_ray() -> None:
    core = [
        m
        for m in _modules()
        if _top(m) == "fededge" and not m.startswith("fededge.cli") and m != "fededge"
    ]
    program = (
        "import importlib, sys\n"
        f"for name in {core!r}:\n"
        "    importlib.import_module(name)\n"
        "loaded = {n.split('.')[0] for n in sys.modules}\n"
        "print(sorted(loaded & {'flwr', 'ray', 'clients', 'server'}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(("side", "other"), [("clients", "server"), ("server", "clients")])
def test_devices_and_server_meet_only_through_messages(side: str, other: str) -> None:
    bad = {
        module: sorted(i for i in _imports(path) if _top(i) == other)
        for module, path in _modules().items()
        if _top(module) == side
    }
    assert {module: names for module, names in bad.items() if names} == {}


def test_flower_internals_are_used_in_the_compat_modules_only() -> None:
    def internal(name: str) -> bool:
        return _top(name) == "flwr" and not any(
            name == public or name.startswith(public + ".") for public in FLOWER_PUBLIC
        )

    users = {
        module
        for module, path in _modules().items()
        if any(internal(i) for i in _imports(path))
    }
    assert users == {"clients.flower_compat", "server.flower_compat"}


def test_no_import_cycle() -> None:
    modules = _modules()
    graph = {
        module: {i for i in _imports(path) if i in modules and i != module}
        for module, path in modules.items()
    }
    # a package's face (its __init__) is reached through its modules: not an edge back
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not module.startswith(t + ".")}
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []
