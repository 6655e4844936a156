"""A full disk: no torn row is ever published, a failed open leaves nothing behind, ECCM
says so once, retries gently and resumes by itself; every finished file parses whole and
carries a manifest that matches it."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from eccm.sinks import records as recorder_module
from eccm.sinks.records import Recorder
from eccm.sinks.rows import parse_time
from eccm.core.state import Column, EngineRun, SharedState

from conftest import (free_port, outbox_files, outbox_manifests, part_files, read_records,
                      wait_for, write_config)
from test_notify import NotifySocket
from test_recorder import Clock
from test_server import talk

COLS = (Column("RPM", "rpm"), Column("SPEED", "km/h"))


def make(folder: Path, **kw):
    state = SharedState()
    args = dict(car="CAR1", folder=str(folder), extension=".csv", separator=",",
                interval=0, fsync_interval=0, rotate_seconds=3600, rotate_bytes=1 << 20,
                max_age=60.0, clock=Clock())
    args.update(kw)
    rec = Recorder(threading.Event(), state, **args)
    rec.prepare()
    state.start_engine_run(EngineRun(1, COLS), source="obd")
    return state, rec


def check_finished(records: Path) -> int:
    """Every finished record parses whole and matches its manifest; the rows counted."""
    rows = 0
    for path in outbox_files(records):
        data = path.read_bytes()
        assert data.endswith(b"\n"), f"{path.name} ends in a torn row"
        table = read_records(path)
        width = len(table[0])
        for row in table[1:]:
            assert len(row) == width, f"{path.name}: torn row {row}"
            assert parse_time(row[0]) is not None, f"{path.name}: torn row {row}"
        manifest = json.loads(path.with_name(path.name + ".manifest.json").read_text())
        assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
        assert manifest["rows"] == len(table) - 1
        rows += len(table) - 1
    return rows


def test_a_half_written_row_is_cut_back_before_the_file_is_published(tmp_path, monkeypatch):
    """Fault injection where mounting is impossible: the disk fills in the middle of a row."""
    state, rec = make(tmp_path / "rec")
    state.update_values({"RPM": (812.5, "rpm"), "SPEED": (42, "km/h")}, origin="obd")
    rec.tick()
    rec.tick()
    real_write = os.write
    calls = []

    def fill_up(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:7]))  # part of the row reaches the disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(recorder_module.os, "write", fill_up)
    rec.tick()  # the third row fails half-way
    monkeypatch.setattr(recorder_module.os, "write", real_write)
    assert len(calls) == 2, "the fault did not fire"
    assert part_files(rec.folder) == []
    assert check_finished(rec.folder) == 2
    snap = state.snapshot()
    assert snap.counters["rows_lost"] == 1
    assert "disk full" in snap.health.record.problem


def test_a_failed_open_leaves_no_file_behind(tmp_path, monkeypatch):
    state, rec = make(tmp_path / "rec")
    state.update_values({"RPM": (812.5, "rpm")}, origin="obd")
    real_write = os.write

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(recorder_module.os, "write", full)
    for _ in range(20):
        rec.tick()
    monkeypatch.setattr(recorder_module.os, "write", real_write)
    leftovers = [p.name for p in rec.folder.iterdir() if p.name not in (".sequence", "outbox")]
    assert leftovers == []
    assert list(rec.outbox.iterdir()) == []
    assert state.snapshot().counters["record_errors"] >= 1


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs: a record folder that really fills up (root only)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs as CI (root): {result.stderr.strip()}")
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    """Write until the disk says it is full, to the last byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for block in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_daemon_on_a_full_disk_says_so_once_and_resumes(small_disk, sim_adapter,
                                                         daemon_factory, tmp_path,
                                                         monkeypatch):
    records = small_disk / "records"
    port = free_port()
    config = write_config(tmp_path, OBD_INTERFACE=sim_adapter.port,
                          RECORD_DIRECTORY_LOCATION=records, RECORD_INTERVAL=0.05,
                          FSYNC_INTERVAL=0, RECORD_ROTATE_SIZE_MB=1,
                          ENABLE_SOCKET_SERVER="yes", SOCKET_SERVER_PORT=port)
    notify = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", notify.path)
    try:
        daemon = daemon_factory(config)
        full_disk_episode(daemon, records, small_disk, notify, port)
    finally:
        notify.close()
    assert daemon.proc.returncode == 0, daemon.log
    assert daemon.log.count("cannot write the record file (disk full") == 1, daemon.log
    assert part_files(records) == []
    assert check_finished(records) > 0
    assert len(outbox_manifests(records)) == len(outbox_files(records))


def full_disk_episode(daemon, records: Path, small_disk: Path, notify, port: int) -> None:
    wait_for(lambda: part_files(records), 40, what="the first record file")
    wait_for(lambda: part_files(records)[0].stat().st_size > 2000, 20, what="some rows")
    filler = small_disk / "filler"
    fill(filler)
    wait_for(lambda: "disk full" in daemon.log, 20, what="the disk-full error in the log")
    wait_for(lambda: any("NOT RECORDING: disk full" in m for m in notify.seen("STATUS=")), 20,
             what="the systemd status line to say so")
    status = talk(port, ["STATUS"])
    assert re.search(r"recording\W+disk full", status), status
    # While full: retried gently, said once, nothing left behind by the failed opens.
    wait_for(lambda: daemon.log.count("disk full") >= 1 and len(outbox_files(records)) >= 1,
             20, what="the file closed on the write error")
    deadline = time.monotonic() + 3  # several retries (0.05 s doubling): absence over time
    while time.monotonic() < deadline:
        leftovers = part_files(records) + list(records.glob(".tmp-*")) + list(
            (records / "outbox").glob(".tmp-*"))
        assert leftovers == [], leftovers
        time.sleep(0.05)
    filler.unlink()
    wait_for(lambda: "recording again" in daemon.log, 30, what="recording to resume")
    wait_for(lambda: part_files(records), 20, what="a new record file")
    assert re.search(r"recording\W+ok", talk(port, ["STATUS"]))
    daemon.stop()
