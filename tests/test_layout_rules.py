"""The package's rooms keep to their rules (README, Development: inside ECCM)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, Set

from conftest import REPO

PACKAGE = REPO / "eccm"


def imports_of(path: Path, root: Path = PACKAGE) -> Set[str]:
    """Every module a file of the package at `root` imports, at any depth (lazy imports
    inside functions too); relative imports resolved against the file's package."""
    package = ["eccm", *path.relative_to(root).parent.parts]
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_relative_imports_are_resolved(tmp_path):
    module = tmp_path / "eccm" / "core" / "x.py"
    module.parent.mkdir(parents=True)
    module.write_text("from ..sim import demo\nfrom .. import tools\n"
                      "def later():\n    from .state import Column\n")
    assert imports_of(module, tmp_path / "eccm") == {
        "eccm.sim", "eccm.sim.demo", "eccm", "eccm.tools", "eccm.core.state",
        "eccm.core.state.Column"}


def modules() -> Dict[str, Set[str]]:
    return {str(p.relative_to(PACKAGE)): imports_of(p) for p in PACKAGE.rglob("*.py")}


def test_only_the_obd_source_imports_python_obd():
    users = sorted(name for name, imported in modules().items()
                   if any(m == "obd" or m.startswith("obd.") for m in imported))
    assert users and all(name.startswith("sources/obd/") for name in users), users


def test_no_daemon_room_imports_a_tool_or_the_simulator_even_lazily():
    rooms = ("core/", "sources/", "sinks/", "server/", "config.py")
    found = {name: sorted(m for m in imported if m.startswith(("eccm.tools", "eccm.sim")))
             for name, imported in modules().items() if name.startswith(rooms)}
    assert {name: mods for name, mods in found.items() if mods} == {}


def test_the_running_daemon_loads_no_offline_tool_and_no_simulator():
    code = ("import sys, eccm.cli, eccm.core.daemon\n"
            "print(' '.join(m for m in sys.modules if m.startswith('eccm.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=REPO).stdout.split()
    assert "eccm.core.daemon" in loaded and "eccm.sinks.records" in loaded
    assert [m for m in loaded if m.startswith(("eccm.tools", "eccm.sim"))] == []


def test_the_server_reads_core_not_the_sinks():
    """The server and the sinks both consume snapshots; what they share (a value's text)
    lives in core, so the server imports no sink."""
    found = {name: sorted(m for m in imported if m.startswith("eccm.sinks"))
             for name, imported in modules().items() if name.startswith("server/")}
    assert found and {name: mods for name, mods in found.items() if mods} == {}
