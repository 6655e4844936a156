"""Nothing lost, overwritten or mislabelled on the way to S3 (SeaweedFS on 127.0.0.1):
different bytes under a key are never replaced, the key's car comes from the file, only
finished records (with their manifest) are uploaded, demo drives stay out of a real car's
bucket, exports and plots never land in the outbox."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest

from eccm.sinks.records import Recorder, manifest_from_file, write_manifest
from eccm.core.state import Column, EngineRun, SharedState
from eccm.sinks.upload import FileHeld, S3Settings, S3Store, digests, pending_files

from conftest import REPO, outbox_files, write_config
from s3server import ACCESS_KEY, SECRET_KEY, serve

BUCKET = "eccm-safety"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    yield from serve(tmp_path_factory, BUCKET)


def session(s3, outbox: Path, car: str, prefix: str) -> S3Store:
    return S3Store(S3Settings(s3.endpoint, ACCESS_KEY, SECRET_KEY, BUCKET,
                                    prefix=prefix), car, outbox)


def keys(s3, prefix: str):
    listing = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")
    return sorted(o["Key"] for o in listing.get("Contents", []))


def body(s3, key: str) -> bytes:
    return s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()


GNSS_HEADER = ("GNSS_TIME (UTC),LATITUDE (deg),LONGITUDE (deg),ALTITUDE (m),"
               "GNSS_SPEED (m/s),TRACK (deg),FIX_MODE,SATELLITES (count),HDOP")


def drive(outbox: Path, car: str, rpm: int, name: str = "") -> Path:
    """A finished record with its manifest, with a GNSS track."""
    outbox.mkdir(parents=True, exist_ok=True)
    path = outbox / (name or f"{car}_20260301T080000Z_000001-abcdef.csv")
    path.write_text(f"TIME (UTC),RPM (rpm),{GNSS_HEADER}\n" + "".join(
        f"2026-03-01T08:00:0{i}.000Z,{rpm + i},2026-03-01T08:00:0{i}.000Z,"
        f"48.85{i},2.35{i},35,{10 + i},90,3,9,0.9\n" for i in range(5)))
    write_manifest(path, manifest_from_file(path, [","]))
    return path


def test_different_bytes_under_the_key_are_never_overwritten(s3, tmp_path, caplog):
    prefix = "overwrite"
    outbox = tmp_path / "outbox"
    path = drive(outbox, "CAR1", 800)
    key = f"{prefix}/car=CAR1/date=2026-03-01/{path.name}"
    earlier = b"TIME (UTC),RPM (rpm)\n2026-03-01T08:00:00.000Z,3000\n"  # not ours
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=earlier)  # another drive's file
    ours = path.read_bytes()
    with caplog.at_level(logging.WARNING, logger="eccm.sinks.upload"):
        stored_as = session(s3, outbox, "CAR1", prefix).upload(path)
    assert stored_as == key.replace(".csv", "-dup1.csv")
    assert body(s3, key) == earlier  # untouched
    assert body(s3, stored_as) == ours
    manifest = json.loads(body(s3, stored_as + ".manifest.json"))
    assert manifest["sha256"] == hashlib.sha256(ours).hexdigest()
    assert "holds other bytes" in caplog.text and "not replaced" in caplog.text
    assert list(outbox.iterdir()) == []


def test_same_bytes_already_there_are_verified_not_doubled(s3, tmp_path):
    """A retry after a crash between the PUT and the local delete."""
    prefix = "retry"
    outbox = tmp_path / "outbox"
    path = drive(outbox, "CAR1", 900)
    key = f"{prefix}/car=CAR1/date=2026-03-01/{path.name}"
    # Put there by another tool: no sha256 metadata, the bytes themselves are compared.
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
    assert session(s3, outbox, "CAR1", prefix).upload(path) == key
    assert keys(s3, prefix) == [key, key + ".manifest.json"]


def test_conditional_put_refuses_a_taken_key(s3, tmp_path):
    """Between our HEAD and our PUT another writer may create the key: the PUT itself must
    not replace it (If-None-Match), and the next free key is used."""
    prefix = "race"
    outbox = tmp_path / "outbox"
    path = drive(outbox, "CAR1", 1000)
    up = session(s3, outbox, "CAR1", prefix)
    key = f"{prefix}/car=CAR1/date=2026-03-01/{path.name}"
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=b"the other writer")
    size, md5, sha = digests(path)
    with open(path, "rb") as fh:
        assert up._put(key, fh, size, md5, sha, "text/csv") is False
    assert body(s3, key) == b"the other writer"
    real = up._stored
    calls = []

    def stale_head(k, size, sha):  # the first HEAD does not see the other writer yet
        calls.append(k)
        return "absent" if len(calls) == 1 else real(k, size, sha)
    up._stored = stale_head  # type: ignore[assignment]
    stored_as = up.upload(path)
    assert stored_as.endswith("-dup1.csv") and body(s3, key) == b"the other writer"


def test_two_files_with_the_same_clock_name_become_two_objects(s3, tmp_path):
    """A Pi without a clock boots at the same saved time twice; the first drive is uploaded
    and deleted before the second is recorded."""
    prefix = "sameclock"
    folder = tmp_path / "records"
    for rpm in (700, 750):
        state = SharedState()
        rec = Recorder(threading.Event(), state, car="CAR1", folder=str(folder),
                       extension=".csv", separator=",", interval=1, fsync_interval=1,
                       rotate_seconds=3600, rotate_bytes=1 << 20, max_age=60,
                       clock=lambda: datetime(2026, 3, 1, 8, 0, 0, tzinfo=timezone.utc))
        rec.prepare()
        state.start_engine_run(EngineRun(1, (Column("RPM", "rpm"),)), source="obd")
        state.update_values({"RPM": (rpm, "rpm")}, origin="obd")
        rec.tick()
        rec.close_file("test")
        (path,) = outbox_files(folder)
        session(s3, folder / "outbox", "CAR1", prefix).upload(path)
    records = [k for k in keys(s3, prefix) if k.endswith(".csv")]
    assert len(records) == 2
    assert {body(s3, k).decode().split("\n")[1].split(",")[1] for k in records} == \
        {"700", "750"}


def test_the_key_takes_the_car_from_the_file(s3, tmp_path):
    """The car identifier changed in the config since the drive was recorded."""
    prefix = "carfromfile"
    outbox = tmp_path / "outbox"
    path = drive(outbox, "OLD-PLATE", 800)
    key = session(s3, outbox, "NEW-PLATE", prefix).upload(path)
    assert key.startswith(f"{prefix}/car=OLD-PLATE/")


def test_a_file_changed_after_it_was_finished_is_held(s3, tmp_path):
    prefix = "changed"
    outbox = tmp_path / "outbox"
    path = drive(outbox, "CAR1", 800)
    with open(path, "ab") as fh:
        fh.write(b"2026-03-01T08:00:09.000Z,1\n")
    with pytest.raises(FileHeld, match="changed after it was finished"):
        session(s3, outbox, "CAR1", prefix).upload(path)
    assert keys(s3, prefix) == [] and path.exists()


def run_eccm(*args: str, cwd: Path, env_extra=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECCM_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "eccm", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd, env=env)


def s3_config(s3, tmp_path: Path, prefix: str) -> Path:
    return write_config(tmp_path, CAR_IDENTIFIER="AB-123-CD", S3_SERVER_ENDPOINT=s3.endpoint,
                        S3_SERVER_AK=ACCESS_KEY, S3_SERVER_SK=SECRET_KEY,
                        S3_SERVER_BUCKET=BUCKET, S3_KEY_PREFIX=prefix)


def test_exports_and_plots_of_outbox_records_are_never_uploaded(s3, tmp_path):
    prefix = "exports"
    config = s3_config(s3, tmp_path, prefix)
    outbox = tmp_path / "records" / "outbox"
    path = drive(outbox, "AB-123-CD", 800)
    work = tmp_path / "work"
    work.mkdir()
    for fmt in ("gpx", "geojson", "kml"):
        result = run_eccm("export", str(path), "--format", fmt, cwd=work)
        assert result.returncode == 0, result.stderr
        assert f"writing to {work}" in result.stderr
        assert (work / path.with_suffix("." + fmt).name).exists()
    result = run_eccm("plot", str(path), cwd=work)
    assert result.returncode == 0, result.stderr
    assert (work / path.with_suffix(".png").name).exists()
    # From inside the outbox itself: refused, nothing written there.
    result = run_eccm("export", path.name, "--format", "gpx", cwd=outbox)
    assert result.returncode == 2 and "another folder" in result.stderr
    assert sorted(p.name for p in outbox.iterdir()) == sorted([path.name,
                                                         path.name + ".manifest.json"])
    # A user copies an export into the outbox by hand anyway: still not a record.
    (outbox / path.with_suffix(".gpx").name).write_text("<gpx/>\n")
    assert [p.name for p in pending_files(outbox)] == [path.name]
    result = run_eccm("upload", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "without a manifest, not uploaded" in result.stderr
    uploaded = keys(s3, prefix)
    assert [k.rsplit("/", 1)[1] for k in uploaded] == [path.name,
                                                       path.name + ".manifest.json"]
    assert (outbox / path.with_suffix(".gpx").name).exists()  # not deleted either


def test_demo_drives_never_go_to_a_real_cars_bucket(s3, tmp_path):
    """Demo files end up in the real record folder (copied, or an older ECCM's demo):
    with the real car's config they are neither uploaded as that car nor as DEMO."""
    prefix = "demo"
    config = s3_config(s3, tmp_path, prefix)
    outbox = tmp_path / "records" / "outbox"
    demo = drive(outbox, "DEMO", 800, name="DEMO_20260301T080000Z_000001-abcdef.csv")
    real = drive(outbox, "AB-123-CD", 900)
    result = run_eccm("upload", "--config", str(config), cwd=tmp_path)
    assert "simulated car" in result.stderr
    assert result.returncode == 1  # a file is left
    assert [k.split("/")[1] for k in keys(s3, prefix)] == ["car=AB-123-CD"] * 2
    assert demo.exists() and not real.exists()


def test_demo_does_not_upload_unless_asked(s3, tmp_path):
    """S3 settings in the environment (a real car's, most likely) do not make the demo
    upload; the demo says so."""
    env = {"ECCM_S3_SERVER_ENDPOINT": s3.endpoint, "ECCM_S3_SERVER_AK": ACCESS_KEY,
           "ECCM_S3_SERVER_SK": SECRET_KEY, "ECCM_S3_SERVER_BUCKET": BUCKET,
           "ECCM_S3_KEY_PREFIX": "demo-env", "ECCM_RECORD_INTERVAL": "0.1"}
    proc = subprocess.Popen([sys.executable, "-m", "eccm", "run", "--demo"], cwd=tmp_path,
                            env={**{k: v for k, v in os.environ.items()
                                    if not k.startswith("ECCM_")},
                                 "PYTHONPATH": str(REPO), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        from conftest import wait_for
        wait_for(lambda: list((tmp_path / "demo-records").glob("*.part")), 40,
                 what="the demo's first record file")
    finally:
        from conftest import stop_process
        stop_process(proc)
    out = proc.stdout.read() if proc.stdout else ""
    assert "add --upload" in out, out
    assert "uploaded to s3://" not in out
    assert outbox_files(tmp_path / "demo-records")  # the drive was closed and kept
    assert keys(s3, "demo-env") == []


def test_a_manifest_that_names_another_car_is_held(s3, tmp_path):
    prefix = "relabel"
    outbox = tmp_path / "outbox"
    path = drive(outbox, "CAR1", 800)
    manifest_path = path.with_name(path.name + ".manifest.json")
    manifest = json.loads(manifest_path.read_text())
    manifest["car"] = "OTHER"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(FileHeld, match="says car 'OTHER'"):
        session(s3, outbox, "CAR1", prefix).upload(path)
    assert keys(s3, prefix) == [] and path.exists()


def test_upload_command_tidies_a_manifest_whose_record_was_uploaded(s3, tmp_path):
    """A stop between the two removals after an upload (the record goes first)."""
    config = s3_config(s3, tmp_path, "tidy")
    outbox = tmp_path / "records" / "outbox"
    path = drive(outbox, "AB-123-CD", 800)
    path.unlink()
    result = run_eccm("upload", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert list(outbox.iterdir()) == []
