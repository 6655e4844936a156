"""The socket server knows nothing of python-OBD: it asks the OBD side through CarAccess
(eccm.server.tcp) and catches only core.state.Unavailable (DESIGN.md, Layout)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

from conftest import REPO

SERVER = REPO / "eccm" / "server"
FORBIDDEN = ("obd", "eccm.sources")  # python-OBD, and the sources' own modules


def imported(path: Path) -> List[Tuple[int, str]]:
    """(line, module) of every import in a file, at any depth; relative ones resolved."""
    package = ["eccm", "server"]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] +
                                ([base] if base else []))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


def test_no_server_module_imports_python_obd_or_a_source():
    files = sorted(SERVER.glob("*.py"))
    assert {p.name for p in files} >= {"protocol.py", "tcp.py"}
    found = [f"{p.name}:{line} imports {module}" for p in files
             for line, module in imported(p) if forbidden(module)]
    assert found == []


def test_the_import_check_sees_what_it_must_refuse(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import obd\nfrom obd import commands\nfrom eccm.sources.obd import poller\n"
                      "from ..sources.obd.adapter import AdapterError\n"
                      "def later():\n    import obd.codes\n"
                      "from eccm.core.state import Unavailable\n")
    assert [m for _, m in imported(sample) if forbidden(m)] == [
        "obd", "obd.commands", "eccm.sources.obd.poller",
        "eccm.sources.obd.adapter.AdapterError", "obd.codes"]


def test_importing_the_server_loads_no_python_obd():
    code = ("import sys, eccm.server.tcp, eccm.server.protocol\n"
            "print(' '.join(m for m in sys.modules if m.split('.')[0] in ('obd', 'pint')\n"
            "               or m.startswith('eccm.sources.obd')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=REPO).stdout.split()
    assert loaded == []
