"""GNSS end to end: a real capture written into a pty at a receiver's pace while the daemon
logs the emulated car; unplug and replug the receiver; engine logging never pauses."""
from __future__ import annotations

import os
import pty
import subprocess
import threading
import time
import tty
from datetime import datetime
from pathlib import Path

import pytest

from eccm.sources.gnss.reader import live_dates
from eccm.sources.gnss.nmea import NmeaParser

from conftest import (SHARED, free_port, outbox_files, part_files, read_records, require_tool,
                      stop_process, wait_for, write_config)
from test_daemon import link

CAPTURE = SHARED / "testdata" / "gpsd" / "ublox-8.log"
pytestmark = pytest.mark.skipif(not CAPTURE.is_file(), reason=f"{CAPTURE} not found")


class FakeReceiver:
    """A pty whose master side replays a capture, one epoch every `pace` seconds."""

    def __init__(self, capture: bytes, pace: float = 0.2):
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        self.lines = capture.splitlines(keepends=True)
        self.pace = pace
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for line in self.lines:
            if self.stop.is_set():
                return
            if line.startswith((b"$GNRMC", b"$GPRMC")):  # a new epoch begins
                time.sleep(self.pace)
            try:
                os.write(self.master, line)
            except OSError:
                return

    def unplug(self) -> None:
        self.stop.set()
        self.thread.join(5)
        os.close(self.master)
        os.close(self.slave)


def parse_all(capture: bytes):
    """The fixes the live reader makes of a capture: with its date window, so a capture
    recorded before ECCM's release has times of day alone."""
    parser = NmeaParser(dates=live_dates())
    return parser.feed(capture) + parser.finish()


def gnss_rows(records: Path):
    rows = []
    for f in part_files(records) + outbox_files(records):
        table = read_records(f)
        header = [h.split(" (")[0] for h in table[0]]
        rows += [dict(zip(header, r)) for r in table[1:]]
    return rows


def test_gnss_columns_match_fixes_and_survive_unplug(tmp_path, emulator_factory,
                                                     daemon_factory):
    capture = CAPTURE.read_bytes()
    fixes = {f.time: f for f in parse_all(capture) if f.lat is not None}
    emu = emulator_factory()
    static = tmp_path / "gnss"
    receiver = FakeReceiver(capture)
    link(static, receiver.port)
    records = tmp_path / "records"
    daemon = daemon_factory(write_config(
        tmp_path, OBD_INTERFACE=emu.port, GPS_POSITION_MONITORING="yes", GNSS_PORT=static,
        RECORD_INTERVAL=0.2, VALUE_MAX_AGE=2))
    wait_for(lambda: sum(1 for r in gnss_rows(records) if r["LATITUDE"]) >= 10, 60,
             what="rows with a position")
    receiver.unplug()
    wait_for(lambda: "GNSS receiver: " in daemon.log, 20, what="the unplug to be noticed")
    noticed = len(gnss_rows(records))
    # Rows keep coming without the receiver; their GNSS cells go empty (VALUE_MAX_AGE).
    wait_for(lambda: sum(1 for r in gnss_rows(records)[noticed:]
                         if r.get("LATITUDE", "torn") == "") >= 3,
             20, what="rows with empty GNSS cells")
    before = len(gnss_rows(records))
    replugged = FakeReceiver(capture[len(capture) // 2:])
    link(static, replugged.port)
    wait_for(lambda: sum(1 for r in gnss_rows(records)[before:] if r["LATITUDE"]) >= 5, 60,
             what="positions after the replug")
    replugged.unplug()
    daemon.stop()
    assert daemon.proc.returncode == 0, daemon.log

    rows = gnss_rows(records)
    with_position = [r for r in rows if r["LATITUDE"]]
    assert len(with_position) >= 15
    # The replugged receiver starts mid-stream: its first epoch may be partial, so rows
    # after the replug are checked against the fixes of what that receiver sent.
    second = {f.time: f for f in parse_all(capture[len(capture) // 2:]) if f.lat is not None}
    for index, row in enumerate(rows):
        if not row["LATITUDE"]:
            continue
        fix = (second if index >= before else fixes).get(row["GNSS_TIME"])
        assert fix is not None, f"{row['GNSS_TIME']} is not the time of a fix of the capture"
        assert float(row["LATITUDE"]) == pytest.approx(fix.lat, abs=1e-6)
        assert float(row["LONGITUDE"]) == pytest.approx(fix.lon, abs=1e-6)
        assert row["FIX_MODE"] == str(fix.mode)
        if fix.alt is not None:
            assert float(row["ALTITUDE"]) == pytest.approx(fix.alt)
    assert any(not r["LATITUDE"] for r in rows), "stale positions must become empty cells"
    # The engine side never paused: a row every interval, each with RPM.
    assert all(r["RPM"] for r in rows)
    times = [datetime.strptime(r["TIME"], "%Y-%m-%dT%H:%M:%S.%fZ") for r in rows]
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
    assert max(gaps) < 2.5, f"rows stopped for {max(gaps)} s during the GNSS outage"
    assert len(outbox_files(records)) == 1, "the GNSS outage must not cut the file"


def test_gpsd_server_as_the_gnss_source(tmp_path, emulator_factory, daemon_factory):
    """Many Pi users let gpsd own the receiver: ECCM reads the NMEA gpsd relays."""
    gpsd = require_tool("gpsd")
    capture = CAPTURE.read_bytes()
    fixes = {f.time: f for f in parse_all(capture) if f.lat is not None}
    receiver = FakeReceiver(capture, pace=0.1)
    port = free_port()
    server = subprocess.Popen([gpsd, "-N", "-n", "-S", str(port),
                               "-F", str(tmp_path / "gpsd.sock"), receiver.port],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        emu = emulator_factory()
        records = tmp_path / "records"
        daemon = daemon_factory(write_config(
            tmp_path, OBD_INTERFACE=emu.port, GPS_POSITION_MONITORING="yes",
            GNSS_PORT=f"gpsd://127.0.0.1:{port}", RECORD_INTERVAL=0.2, VALUE_MAX_AGE=2))
        wait_for(lambda: sum(1 for r in gnss_rows(records) if r["LATITUDE"]) >= 5, 60,
                 what="positions relayed by gpsd")
        daemon.stop()
    finally:
        stop_process(server)
        receiver.unplug()
    for row in (r for r in gnss_rows(records) if r["LATITUDE"]):
        fix = fixes[row["GNSS_TIME"]]
        assert float(row["LATITUDE"]) == pytest.approx(fix.lat, abs=1e-6)
