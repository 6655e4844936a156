"""The systemd unit of an installation: systemd's own checks, and its exposure score."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from eccm.tools.service import Installation, render_unit

from conftest import REPO, require_tool, write_config


def rendered_unit(tmp_path) -> str:
    config = write_config(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECCM_")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run([sys.executable, "-m", "eccm", "install-service", "--print",
                             "--config", str(config)], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_unit_has_the_service_contract(tmp_path):
    unit = rendered_unit(tmp_path)
    for line in ("Type=notify", "WatchdogSec=30", "Restart=on-failure", "RestartSec=5",
                 "StartLimitIntervalSec=0", "SupplementaryGroups=dialout",
                 "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=read-only",
                 "PrivateTmp=yes", f"ReadWritePaths={tmp_path / 'records'}",
                 "DeviceAllow=char-ttyUSB rw", "DeviceAllow=char-rfcomm rw"):
        assert line in unit.splitlines(), line
    assert re.search(rf"^ExecStart=\S+ run --config {tmp_path / 'config.ini'}$", unit, re.M)


def test_systemd_analyze_verify_and_security(tmp_path):
    analyze = require_tool("systemd-analyze")
    unit = tmp_path / "eccm.service"
    unit.write_text(rendered_unit(tmp_path))
    verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60)
    ours = [ln for ln in (verify.stdout + verify.stderr).splitlines() if "eccm" in ln]
    assert verify.returncode == 0 and ours == [], verify.stderr
    security = subprocess.run([analyze, "security", "--offline=yes", str(unit)],
                              capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for eccm.service: (\d+\.\d+)", security.stdout)
    assert match, security.stdout + security.stderr
    print(f"\nsystemd-analyze security exposure: {match[1]}")
    assert float(match[1]) <= 4.0


def test_documentation_is_eccms_own_readme(tmp_path):
    """Documentation= once pointed at python-OBD's page; it is ECCM's README now."""
    unit = rendered_unit(tmp_path)
    docs = [ln.split("=", 1)[1] for ln in unit.splitlines() if ln.startswith("Documentation=")]
    assert docs == [(REPO / "README.md").as_uri()]
    assert "pypi.org/project/obd" not in unit
    assert (REPO / "README.md").read_text(encoding="utf-8").startswith("# ECCM")


def test_documentation_of_a_folder_with_spaces_and_percent_passes_verify(tmp_path):
    """systemd reads '%' as a specifier: a README under 'my docs 100%' must still verify."""
    analyze = require_tool("systemd-analyze")
    folder = tmp_path / "my docs 100%"
    folder.mkdir()
    readme = folder / "README.md"
    readme.write_text("# ECCM\n")
    unit = tmp_path / "eccm.service"
    unit.write_text(render_unit(Installation(
        executable="/usr/bin/true", config=str(tmp_path / "config.ini"),
        workdir=str(tmp_path), records=str(tmp_path / "records"), user="root",
        group="root", docs=readme)))
    verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60)
    output = verify.stdout + verify.stderr
    assert verify.returncode == 0 and "Documentation" not in output and \
        "specifier" not in output and "Invalid URL" not in output, output


def test_a_python_outside_the_venv_is_told_to_use_the_venvs_eccm(tmp_path):
    """The unit would run a program that is not there (reported by a reviewer:
    ExecStart=/usr/bin/eccm from the system's Python)."""
    python = "/usr/bin/python3"
    if not os.path.exists(python) or os.path.exists("/usr/bin/eccm"):
        pytest.skip(f"needs {python} without an eccm beside it")
    config = write_config(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    result = subprocess.run([python, "-m", "eccm", "install-service", "--print",
                             "--config", str(config)], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert ".venv/bin/eccm install-service" in result.stderr
    assert "ExecStart" not in result.stdout
