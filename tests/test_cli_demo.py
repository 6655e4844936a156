"""The demo keeps its simulated car's records apart from a real car's records and uploads."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

from conftest import REPO, part_files, stop_process, wait_for, write_config


def demo_env(**extra: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECCM_")}
    env.update(PYTHONPATH=str(REPO), ECCM_RECORD_INTERVAL="0.2", **extra)
    return env


def test_demo_with_a_real_config_is_refused(tmp_path):
    """`--demo --config FILE` once ran the simulated car into that config's setup."""
    config = write_config(tmp_path, CAR_IDENTIFIER="AB-123",
                          S3_SERVER_ENDPOINT="http://127.0.0.1:9", S3_SERVER_AK="a",
                          S3_SERVER_SK="b", S3_SERVER_BUCKET="logs")
    result = subprocess.run([sys.executable, "-m", "eccm", "run", "--demo", "--config",
                             str(config)], cwd=tmp_path, env=demo_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "--demo does not take --config" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "records").exists() and not (tmp_path / "demo-records").exists()


def test_demo_refuses_a_folder_holding_a_real_cars_records(tmp_path):
    records = tmp_path / "records"
    (records / "outbox").mkdir(parents=True)
    real = records / "outbox" / "AB-123_20260101T080000Z.csv"
    real.write_text("TIME (UTC),RPM (rpm)\n")
    result = subprocess.run([sys.executable, "-m", "eccm", "run", "--demo"], cwd=tmp_path,
                            env=demo_env(ECCM_RECORD_DIRECTORY_LOCATION=str(records)),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert str(records) in result.stderr and "AB-123" in result.stderr
    assert sorted(p.name for p in records.rglob("*")) == ["AB-123_20260101T080000Z.csv",
                                                          "outbox"]


def test_demo_writes_car_demo_beside_not_into_records(tmp_path):
    """./records is where a config.ini in the same folder keeps the real car's records
    (the template's default): the demo writes ./demo-records, always as car DEMO, and
    says so when it starts."""
    out = tmp_path / "out.txt"
    with open(out, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "eccm", "run", "--demo"],
                                cwd=tmp_path, env=demo_env(ECCM_CAR_IDENTIFIER="AB-123"),
                                stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            parts = wait_for(lambda: part_files(tmp_path / "demo-records"), 60,
                             what="a demo record file")
            proc.send_signal(signal.SIGINT)
            proc.wait(10)
        finally:
            stop_process(proc, signal.SIGKILL)
    text = out.read_text()
    assert [p.name.split("_")[0] for p in parts] == ["DEMO"]
    assert not (tmp_path / "records").exists()
    assert f"Records of car DEMO are written to {tmp_path / 'demo-records'}" in text
    assert "ECCM_CAR_IDENTIFIER=AB-123 is not used by the demo" in text
