"""A Python without ECCM's dependencies, or without the [view] extra: one clear line, exit 2.

The modules are made unimportable with a sitecustomize (sys.modules[name] = None), so the
real `python -m eccm` runs exactly as a user starts it, nothing uninstalled.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterable

import pytest

from conftest import REPO, write_config

CORE = ("obd", "serial", "pynmea2", "boto3", "botocore", "dotenv")
START_HINT = "./start.sh or .venv/bin/eccm"
VIEW_HINT = ".venv/bin/pip install -e '.[view]'"
FLEET_HINT = ".venv/bin/pip install -e '.[fleet]'"


def run_without(tmp_path: Path, modules: Iterable[str], *args, cwd=None):
    """`python -m eccm ARGS` in a Python where `modules` cannot be imported."""
    blocker = tmp_path / "blocker"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECCM_")}
    env["PYTHONPATH"] = f"{blocker}{os.pathsep}{REPO}"
    return subprocess.run([sys.executable, "-m", "eccm", *map(str, args)], cwd=cwd or tmp_path,
                          capture_output=True, text=True, timeout=60, env=env)


def a_drive(path: Path) -> Path:
    lines = ["TIME (UTC),RPM (rpm),SPEED (km/h),GNSS_TIME (UTC),LATITUDE (deg),"
             "LONGITUDE (deg),ALTITUDE (m)\n"]
    for i in range(10):
        moment = f"2026-05-01T08:00:{i:02d}.000Z"
        lines.append(f"{moment},{900 + i * 100},{i * 5},{moment},{45 + i / 1e4},"
                     f"{5 + i / 1e4},200\n")
    path.write_text("".join(lines))
    return path


def one_clear_line(result, hint: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and hint in lines[0], result.stderr
    return lines[0]


def test_plot_without_matplotlib_says_to_install_the_view_extra(tmp_path):
    drive = a_drive(tmp_path / "drive.csv")
    line = one_clear_line(run_without(tmp_path, ["matplotlib"], "plot", drive), VIEW_HINT)
    assert "matplotlib" in line and ".venv/bin/pip install -e '.[view]'" in line
    assert not (tmp_path / "drive.png").exists()


def test_gpx_export_without_gpxpy_says_to_install_the_view_extra(tmp_path):
    drive = a_drive(tmp_path / "drive.csv")
    line = one_clear_line(run_without(tmp_path, ["gpxpy"], "export", drive, "--format", "gpx"),
                          VIEW_HINT)
    assert "gpxpy" in line
    for fmt in ("geojson", "kml"):  # these need no extra
        result = run_without(tmp_path, ["gpxpy", "matplotlib"], "export", drive, "--format",
                             fmt)
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", [["fleet", "compact"], ["fleet", "query", "SELECT 1"]])
def test_fleet_without_duckdb_says_to_install_the_fleet_extra(tmp_path, command):
    """The fleet's commands run on a server or a laptop, not the car: DuckDB is an extra."""
    write_config(tmp_path, S3_SERVER_ENDPOINT="http://127.0.0.1:9", S3_SERVER_AK="a",
                 S3_SERVER_SK="b", S3_SERVER_BUCKET="logs")  # ./config.ini, found by default
    line = one_clear_line(run_without(tmp_path, ["duckdb"], *command), FLEET_HINT)
    assert "duckdb" in line and line.startswith("eccm fleet")


@pytest.mark.parametrize("command", [
    ["run", "--demo"], ["run", "--config", "CONFIG"], ["upload", "--config", "CONFIG"],
    ["gnss-parse", "CAPTURE"],
])
def test_python_without_dependencies_is_told_what_to_run(tmp_path, command):
    """`python3 -m eccm` from the repository with a system Python: no traceback, one line."""
    config = write_config(tmp_path, S3_SERVER_ENDPOINT="http://127.0.0.1:9", S3_SERVER_AK="a",
                          S3_SERVER_SK="b", S3_SERVER_BUCKET="logs")
    capture = tmp_path / "capture.nmea"
    capture.write_bytes(b"$GPGGA,,,,,,0,,,,,,,,*66\r\n")
    args = [{"CONFIG": config, "CAPTURE": capture}.get(a, a) for a in command]
    result = run_without(tmp_path, CORE, *args)
    one_clear_line(result, START_HINT)
    assert "ECCM demo" not in result.stdout
    assert not (tmp_path / "demo-records").exists() and not (tmp_path / "records").exists()


def test_commands_that_need_no_dependency_still_work_without_them(tmp_path):
    assert run_without(tmp_path, CORE, "--version").returncode == 0
    drive = a_drive(tmp_path / "drive.csv")
    result = run_without(tmp_path, CORE, "summary", drive)
    assert result.returncode == 0 and "Duration" in result.stdout, result.stderr


def test_system_python_from_the_repository(tmp_path):
    """The user's case itself: the system's python3, in the repository folder."""
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK):
        pytest.skip(f"no {python}")
    probe = subprocess.run([python, "-c", "import sys, importlib.util as u; sys.exit("
                            "sys.version_info < (3, 9) or u.find_spec('obd') is not None)"],
                           capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"{python} is older than 3.9 or has python-OBD installed")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ECCM_") and k != "PYTHONPATH"}
    result = subprocess.run([python, "-m", "eccm", "run", "--demo"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    one_clear_line(result, START_HINT)
