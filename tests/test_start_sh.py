"""./start.sh --demo as a user runs it: a record file with live values, Ctrl-C stops it."""
from __future__ import annotations

import os
import signal
import subprocess

from conftest import REPO, outbox_files, part_files, read_records, stop_process, wait_for


def test_start_sh_demo_records_and_stops_on_ctrl_c(tmp_path):
    records = tmp_path / "records"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECCM_")}
    env["ECCM_RECORD_DIRECTORY_LOCATION"] = str(records)
    out = open(tmp_path / "out.txt", "wb")
    proc = subprocess.Popen(["./start.sh", "--demo"], cwd=REPO, env=env,
                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        # start.sh may first have to create its virtualenv; the demo itself starts after.
        def started():
            assert proc.poll() is None, (tmp_path / "out.txt").read_text()[-3000:]
            return b"ECCM demo:" in (tmp_path / "out.txt").read_bytes()
        wait_for(started, 300, what="the demo to start")
        text = (tmp_path / "out.txt").read_text()
        assert str(records) in text and "Ctrl-C" in text

        def rows():
            parts = part_files(records)
            return parts and len(read_records(parts[0])) > 3 and read_records(parts[0])
        table = wait_for(rows, 30, what="demo rows")
        header = [h.split(" (")[0] for h in table[0]]
        for name in ("RPM", "SPEED"):
            column = header.index(name)
            assert all(float(row[column]) >= 0 for row in table[1:])
        # The first row is written at the car's first answer, before the slower values'
        # first turn (an empty cell, never a guess); from the next row on they are there.
        for name in ("COOLANT_TEMP", "ODOMETER", "TCM.SPEED", "DEMO_HVBAT_SOC"):
            column = header.index(name)
            assert all(float(row[column]) >= 0 for row in table[2:]), name
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        proc.wait(5)
    finally:
        stop_process(proc, signal.SIGKILL)
        out.close()
    assert proc.returncode == 0
    assert part_files(records) == []
    (done,) = outbox_files(records)
    assert done.read_bytes().endswith(b"\n")


def test_start_sh_install_creates_and_updates_the_venv_the_service_runs(tmp_path):
    """The upgrade path (`git pull && ./start.sh --install`): the service runs .venv/bin/eccm,
    so changed dependencies must be installed by this step, not by the next start.sh run."""
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECCM_")}
    env["VENV_DIR"] = str(venv)

    def install() -> str:
        done = subprocess.run(["./start.sh", "--install"], cwd=REPO, env=env, timeout=600,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stderr

    first = install()
    assert "installing ECCM[mqtt] into" in first and f"is installed in {venv}" in first
    # The car's daemon gets the MQTT client (MQTT_BROKER works without another step).
    subprocess.run([str(venv / "bin" / "python"), "-c", "import paho.mqtt.client"],
                   check=True)
    version = subprocess.run([str(venv / "bin" / "eccm"), "--version"], capture_output=True,
                             text=True, check=True).stdout
    assert version.startswith("eccm ")
    assert "installing" not in install()  # nothing changed: nothing reinstalled
    # Dependencies changed since the venv was made (as after a git pull): reinstalled.
    (venv / ".eccm-installed").write_text("stale\n")
    assert "installing ECCM[mqtt] into" in install()
