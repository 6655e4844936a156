"""The daemon as a process against the real ELM327-emulator: discovery, unplug/replug
behind a static name, clean stop, kill -9 recovery, thread restarts."""
from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path

import obd
import pytest
import serial

from eccm.sources.obd import values as obd_values
from eccm.config import load
from eccm.core.daemon import Daemon
from eccm.core.health import UploadHealth
from eccm.sinks.rows import parse_time

from conftest import outbox_files, part_files, read_records, wait_for, write_config


def hex_bytes(reply: str):
    return [t for t in reply.replace(">", " ").split() if re.fullmatch(r"[0-9A-F]{2}", t)]


def raw_query(port: str, command: str) -> str:
    with serial.Serial(port, timeout=0.5) as ser:
        ser.write(command.encode() + b"\r")
        out = b""
        deadline = time.monotonic() + 3
        while not out.endswith(b">") and time.monotonic() < deadline:
            out += ser.read(ser.in_waiting or 1)
    return out.decode("ascii", "replace")


def emulator_pids(port: str):
    """Supported mode-01 PIDs and their replies, asked of the emulator without python-OBD."""
    for setup in ("ATZ", "ATE0", "ATH0", "ATS1"):
        raw_query(port, setup)
    supported, base = [], 0
    while True:
        reply = raw_query(port, f"01{base:02X}")
        hexes = hex_bytes(reply)
        if len(hexes) < 6 or hexes[:2] != ["41", f"{base:02X}"]:
            break
        bits = int("".join(hexes[2:6]), 16)
        supported += [base + i for i in range(1, 33) if bits >> (32 - i) & 1]
        if not bits & 1:
            break
        base += 0x20
    answers = {}
    for pid in supported:
        if pid % 0x20 == 0 or not obd.commands.has_pid(1, pid):
            continue
        lines = [hex_bytes(line) for line in raw_query(port, f"01{pid:02X}").splitlines()]
        first = next((h for h in lines if h), [])  # the first ECU's reply
        answers[pid] = bytes(int(h, 16) for h in first)
    return answers


def link(path: Path, target: str) -> None:
    """Point a static name at a pty atomically, as udev does for /dev/obd."""
    tmp = path.with_suffix(".new")
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, path)


def rows_in_part(records: Path, at_least: int):
    def check():
        parts = part_files(records)
        if parts:
            rows = read_records(parts[0])
            if len(rows) > at_least:
                return rows
        return None
    return check


@pytest.mark.parametrize("scenario", ["car", "default"])
def test_all_emulator_pids_discovered_and_recorded(tmp_path, emulator_factory, daemon_factory,
                                                   scenario):
    """Every PID the third-party emulator answers is recorded and filled, in its rich
    'car' scenario and in 'default', whose ECU leaves PIDs out of packed replies."""
    emu = emulator_factory(scenario)
    answers = emulator_pids(emu.port)
    expected = {obd.commands[1][pid] for pid in answers}
    expected = {cmd for cmd in expected if obd_values.is_recordable(cmd)}
    decodable = {cmd.name for cmd in expected
                 if cmd.name not in obd_values.STATUS_PIDS
                 and answers[cmd.pid][:2] == bytes([0x41, cmd.pid])  # not NO DATA
                 and obd_values.decode_payload(cmd, answers[cmd.pid]) is not None}
    assert len(expected) >= (30 if scenario == "car" else 10)
    static = tmp_path / "obd"
    link(static, emu.port)
    records = tmp_path / "records"
    daemon = daemon_factory(write_config(tmp_path, OBD_INTERFACE=static))
    wait_for(rows_in_part(records, 6), 40, what="six rows")
    daemon.stop()
    assert daemon.proc.returncode == 0, daemon.log
    (done,) = outbox_files(records)
    rows = read_records(done)
    names = [h.split(" (")[0] for h in rows[0]]
    for cmd in expected:
        wanted = [f"{cmd.name}_MIL"] if cmd.name in obd_values.STATUS_PIDS else [cmd.name]
        assert set(wanted) <= set(names), f"{cmd.name} not recorded"
    filled = {name for i, name in enumerate(names) if any(r[i] for r in rows[1:])}
    assert decodable <= filled, f"never filled: {sorted(decodable - filled)}"
    print(f"\nemulator: {len(expected)} engine PIDs supported, {len(decodable)} decodable; "
          f"{len(names) - 1} columns recorded, {len(filled) - 1} with values")


def test_adapter_replaced_behind_static_name_resumes(tmp_path, emulator_factory,
                                                      daemon_factory):
    static = tmp_path / "obd"
    first = emulator_factory()
    link(static, first.port)
    records = tmp_path / "records"
    daemon = daemon_factory(write_config(tmp_path, OBD_INTERFACE=static,
                                         OBD_SESSION_TIMEOUT=2))
    wait_for(rows_in_part(records, 3), 40, what="rows from the first adapter")
    first.proc.send_signal(signal.SIGKILL)  # unplugged
    first.proc.wait(5)
    wait_for(lambda: not part_files(records) and outbox_files(records), 20,
             what="the file of the first session to be queued")
    second = emulator_factory()
    link(static, second.port)  # plugged in again: a new pty behind the same name
    wait_for(rows_in_part(records, 3), 60, what="rows from the second adapter")
    assert daemon.proc.poll() is None, "the daemon must not exit"
    daemon.stop()
    files = outbox_files(records)
    assert len(files) == 2
    for f in files:
        rows = read_records(f)
        assert len(rows) > 3 and all(len(r) == len(rows[0]) for r in rows)
    assert "OBD adapter: " in daemon.log  # the loss was reported


def test_sigterm_stops_within_5s_file_whole_and_queued(tmp_path, emulator_factory,
                                                        daemon_factory):
    emu = emulator_factory()
    records = tmp_path / "records"
    daemon = daemon_factory(write_config(tmp_path, OBD_INTERFACE=emu.port))
    wait_for(rows_in_part(records, 3), 40, what="rows")
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.proc.wait(5)  # raises if it takes longer
    assert daemon.proc.returncode == 0
    assert part_files(records) == []
    (done,) = outbox_files(records)
    data = done.read_bytes()
    assert data.endswith(b"\n")
    rows = read_records(done)
    assert all(len(r) == len(rows[0]) for r in rows)


def test_kill9_loses_nothing_fsynced(tmp_path, emulator_factory, daemon_factory):
    emu = emulator_factory()
    records = tmp_path / "records"
    fsync_interval = 0.2
    config = write_config(tmp_path, OBD_INTERFACE=emu.port, RECORD_INTERVAL=0.1,
                          FSYNC_INTERVAL=fsync_interval)
    daemon = daemon_factory(config)
    wait_for(rows_in_part(records, 10), 40, what="rows")
    (part,) = part_files(records)
    before = part.read_bytes()
    before = before[:before.rfind(b"\n") + 1]  # the rows written by now
    last = parse_time(before.splitlines()[-1].split(b",", 1)[0].decode())
    assert last is not None

    def fsynced_since() -> bool:
        """A row written more than an fsync interval after `before`'s last one: the
        recorder has fsynced the file since (it syncs when it writes a row that late)."""
        times = [parse_time(row[0]) for row in read_records(part)[1:] if row]
        return any(t - last > timedelta(seconds=fsync_interval + 0.1) for t in times if t)
    wait_for(fsynced_since, 10, what="a row written over an fsync interval later")
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(5)
    assert part.exists()
    again = daemon_factory(config)
    wait_for(lambda: outbox_files(records), 20, what="the repaired file")
    again.stop()
    repaired = outbox_files(records)[0]
    data = repaired.read_bytes()
    assert data.startswith(before), "rows written before the kill were lost"
    rows = read_records(repaired)
    assert len(rows) > 10 and all(len(r) == len(rows[0]) for r in rows), "torn line"
    assert "recovered" in again.log


def test_torn_file_from_a_crash_is_repaired_at_start_without_adapter(tmp_path,
                                                                     daemon_factory):
    records = tmp_path / "records"
    records.mkdir()
    torn = records / "TEST-CAR_20260101T080000Z.csv.part"
    torn.write_bytes(b"TIME (UTC),RPM (rpm)\n2026-01-01T08:00:00.000Z,800\n2026-01-01T08:0")
    daemon = daemon_factory(write_config(tmp_path, OBD_INTERFACE=tmp_path / "missing",
                                         LOG_LEVEL="DEBUG"))  # DEBUG: each attempt shows
    wait_for(lambda: outbox_files(records), 20, what="the repaired file")
    wait_for(lambda: "does not exist" in daemon.log, 20, what="the adapter problem logged")
    wait_for(lambda: daemon.log.count("OBD adapter connecting") >= 3, 20,
             what="a few reconnect attempts")
    assert daemon.proc.poll() is None
    daemon.stop()
    assert daemon.proc.returncode == 0
    (done,) = outbox_files(records)
    assert done.read_bytes() == b"TIME (UTC),RPM (rpm)\n2026-01-01T08:00:00.000Z,800\n"
    assert daemon.log.count("does not exist") == 1, "the same failure must be logged once"


def test_dead_thread_is_logged_and_restarted(tmp_path, caplog):
    cfg, _ = load(write_config(tmp_path, OBD_INTERFACE=tmp_path / "missing"), environ={})
    daemon = Daemon(cfg)
    assert daemon.recorder is not None
    original = daemon.recorder.tick
    calls = []

    def failing_once():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("simulated bug")
        original()
    daemon.recorder.tick = failing_once
    daemon.start()
    try:
        wait_for(lambda: daemon.recorder.crashed, 5, what="the thread to die")
        deadline = time.monotonic() + 10
        while daemon.recorder.restarts == 0 and time.monotonic() < deadline:
            daemon.supervise()
            time.sleep(0.1)
        assert daemon.recorder.restarts == 1
        wait_for(lambda: len(calls) > 2, 5, what="the restarted thread to tick")
        assert daemon.recorder.is_alive()
    finally:
        daemon.shutdown()
    assert "recorder thread died" in caplog.text
    assert not any(t.name == "recorder" and t.is_alive() for t in threading.enumerate())


def test_status_line_counts_one_file_in_the_singular(tmp_path):
    """What `systemctl status eccm` shows."""
    cfg, _ = load(write_config(tmp_path, OBD_INTERFACE=tmp_path / "missing"), environ={})
    daemon = Daemon(cfg)
    daemon.state.report(UploadHealth(backlog=1))
    assert "1 file to upload" in daemon.status_line()
    daemon.state.report(UploadHealth(backlog=3))
    assert "3 files to upload" in daemon.status_line()


def test_each_component_builds_itself_from_the_config(tmp_path):
    """The daemon wires; each component reads its own keys (from_config)."""
    cfg, _ = load(write_config(
        tmp_path, OBD_INTERFACE=tmp_path / "missing", OBD_SLOW_EVERY=7, OBD_TIMEOUT=2.5,
        RECORD_ROTATE_MINUTES=5, RECORD_ROTATE_SIZE_MB=2, MONITORING_FILE_EXTENSION=".tsv",
        GPS_POSITION_MONITORING="yes", GNSS_PORT=tmp_path / "gnss", GNSS_BAUDRATE=4800,
        S3_SERVER_ENDPOINT="http://127.0.0.1:9", S3_SERVER_AK="ak", S3_SERVER_SK="sk",
        S3_SERVER_BUCKET="cars", S3_KEY_PREFIX="logs", S3_KEEP_UPLOADED="yes",
        S3_KEEP_UPLOADED_DAYS=3, ENABLE_SOCKET_SERVER="no"), environ={})
    daemon = Daemon(cfg)
    assert [w.name for w in daemon.workers] == ["recorder", "obd", "gnss", "uploader"]
    recorder, poller, gnss, uploader = daemon.workers
    assert (recorder.folder, recorder.extension, recorder.format.separator) == (
        tmp_path / "records", ".tsv", "\t")
    assert (recorder.rotate_seconds, recorder.rotate_bytes) == (300, 2 * 1024 * 1024)
    assert recorder.clock == daemon.clock.now  # the wiring: the daemon's record clock
    assert (poller.port, poller.slow_every, poller.timeout) == (
        str(tmp_path / "missing"), 7, 2.5)
    assert (gnss.port, gnss.baudrate, gnss.on_fix) == (
        str(tmp_path / "gnss"), 4800, daemon._on_fix)
    store = uploader.store
    assert (store.settings.endpoint, store.settings.bucket, store.settings.prefix) == (
        "http://127.0.0.1:9", "cars", "logs")
    assert (store.outbox, store.keep_uploaded, uploader.keep_days) == (
        tmp_path / "records" / "outbox", True, 3)


def test_a_component_that_is_off_says_so_and_is_not_started(tmp_path):
    """from_config answers None for a component the configuration turns off; the off
    component itself tells the health model (no special case in the daemon)."""
    cfg, _ = load(write_config(tmp_path, OBD_INTERFACE="", FILE_RECORDING="no",
                               GPS_POSITION_MONITORING="no", ENABLE_SOCKET_SERVER="no"),
                  environ={})
    daemon = Daemon(cfg)
    assert [w.name for w in daemon.workers] == ["obd"]
    assert (daemon.recorder, daemon.gnss, daemon.server, daemon.uploader, daemon.mqtt) == \
        (None, None, None, None, None)
    snap = daemon.state.snapshot()
    assert snap.health.record.off
    assert {k: snap.links[k].state for k in ("gnss", "s3", "mqtt")} == \
        {"gnss": "disabled", "s3": "disabled", "mqtt": "disabled"}


def test_the_log_says_what_the_status_line_says_without_systemd(tmp_path, caplog):
    cfg, _ = load(write_config(tmp_path, OBD_INTERFACE=""), environ={})
    daemon = Daemon(cfg)
    assert not daemon.notifier.enabled
    with caplog.at_level(logging.INFO, logger="eccm.core.daemon"):
        daemon.log_status()
        daemon.log_status()  # unchanged: not again
        daemon.state.set_link("obd", "lost", "no adapter")
        daemon.log_status()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("status:")]
    assert len(lines) == 2, lines
    assert lines[1] == f"status: {daemon.status_line()}" and "obd lost" in lines[1]
