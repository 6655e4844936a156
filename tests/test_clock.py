"""Record time from GNSS when the Pi's clock is clearly wrong (no RTC, no network)."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

from eccm.clock import RELEASED, RecordClock
from eccm.recorder import Recorder
from eccm.state import Column, ObdSession, SharedState

from conftest import outbox_files, read_records

BOOT = datetime(1970, 1, 1, 0, 1, tzinfo=timezone.utc)
TRUE = datetime(2027, 5, 6, 7, 8, 9, tzinfo=timezone.utc)


def fake_system(start: datetime):
    origin = time.monotonic()
    return lambda: start + timedelta(seconds=time.monotonic() - origin)


def test_wrong_clock_is_corrected_by_gnss():
    clock = RecordClock(system=fake_system(BOOT))
    assert clock.now() < RELEASED  # nothing better known yet: the system time
    clock.observe(TRUE, time.monotonic())
    assert clock.corrected
    assert abs((clock.now() - TRUE).total_seconds()) < 1


def test_right_clock_is_left_alone():
    right = datetime(2027, 1, 1, tzinfo=timezone.utc)
    clock = RecordClock(system=fake_system(right))
    clock.observe(right + timedelta(hours=3), time.monotonic())
    assert not clock.corrected
    assert abs((clock.now() - right).total_seconds()) < 1


def test_recorder_names_and_stamps_with_gnss_time(tmp_path):
    clock = RecordClock(system=fake_system(BOOT))
    clock.observe(TRUE, time.monotonic())
    state = SharedState()
    rec = Recorder(threading.Event(), state, car="C", folder=str(tmp_path), extension=".csv",
                   separator=",", interval=0.5, fsync_interval=1, rotate_seconds=3600,
                   rotate_bytes=1 << 20, max_age=5, gnss=False, clock=clock.now)
    rec.prepare()
    state.start_obd_session(ObdSession(1, (Column("RPM", "rpm"),)))
    rec.tick()
    rec.close_file("test")
    (done,) = outbox_files(tmp_path)
    assert done.name.startswith("C_20270506T0708")
    assert read_records(done)[1][0].startswith("2027-05-06T07:08:")
