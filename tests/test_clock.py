"""Record time from GNSS when the Pi's clock is clearly wrong (no RTC, no network).

A GNSS date is trusted only when it is possible for a running ECCM (after RELEASED and
within 20 years of it) and when several consecutive fixes agree on it."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from eccm.core.clock import CONFIRMATIONS, RELEASED, TRUST_YEARS, RecordClock
from eccm.sources.gnss.nmea import NmeaParser
from eccm.sinks.records import Recorder
from eccm.sim.gnss import nmea_sentence
from eccm.core.state import Column, EngineRun, SharedState

from conftest import outbox_files, read_records

BOOT = datetime(1970, 1, 1, 0, 1, tzinfo=timezone.utc)
TRUE = datetime(2027, 5, 6, 7, 8, 9, tzinfo=timezone.utc)


def fake_system(start: datetime):
    origin = time.monotonic()
    return lambda: start + timedelta(seconds=time.monotonic() - origin)


def observe_fixes(clock: RecordClock, last: datetime, count: int,
                  jitter=lambda i: 0.0) -> None:
    """`count` fixes one second apart in GNSS time, the last one at `last`, which arrived
    one second apart (plus a jitter) in monotonic time, the last one just now."""
    now = time.monotonic()
    for i in range(count):
        back = count - 1 - i
        clock.observe(last - timedelta(seconds=back), now - back + jitter(i))


def test_wrong_clock_is_corrected_by_gnss_after_consistent_fixes():
    clock = RecordClock(system=fake_system(BOOT))
    assert clock.now() < RELEASED  # nothing better known yet: the system time
    observe_fixes(clock, TRUE, CONFIRMATIONS - 1)
    assert not clock.corrected and clock.now() < RELEASED  # not enough fixes yet
    observe_fixes(clock, TRUE, CONFIRMATIONS)
    assert clock.corrected
    assert abs((clock.now() - TRUE).total_seconds()) < 1


def test_one_fix_is_not_trusted():
    clock = RecordClock(system=fake_system(BOOT))
    clock.observe(TRUE, time.monotonic())
    assert not clock.corrected and clock.now() < RELEASED


def test_right_clock_is_left_alone():
    right = datetime(2027, 1, 1, tzinfo=timezone.utc)
    clock = RecordClock(system=fake_system(right))
    observe_fixes(clock, right + timedelta(hours=3), 5)
    assert not clock.corrected
    assert abs((clock.now() - right).total_seconds()) < 1


@pytest.mark.parametrize("gnss", [
    RELEASED - timedelta(days=1),                            # before ECCM existed
    datetime(1999, 8, 22, tzinfo=timezone.utc),              # GPS week rollover
    RELEASED.replace(year=RELEASED.year + TRUST_YEARS) + timedelta(days=1),
    datetime(2070, 3, 23, 12, tzinfo=timezone.utc),          # RMC year '70'
    datetime(2199, 3, 23, 12, tzinfo=timezone.utc),
])
def test_dates_ecccm_cannot_be_running_at_are_not_trusted(gnss):
    clock = RecordClock(system=fake_system(BOOT))
    observe_fixes(clock, gnss, 10)
    assert not clock.corrected and clock.now() < RELEASED


def test_bounds_themselves():
    for gnss in (RELEASED + timedelta(seconds=CONFIRMATIONS),
                 RELEASED.replace(year=RELEASED.year + TRUST_YEARS) - timedelta(seconds=1)):
        clock = RecordClock(system=fake_system(BOOT))
        observe_fixes(clock, gnss, CONFIRMATIONS)
        assert clock.corrected, gnss


def test_the_year_70_receiver_never_moves_the_record_clock():
    """A receiver's RMC year '70' is 2070 (offset about 3155760000 s from 1970): with the
    system clock at 1970 it used to be trusted at once. Records keep the system time."""
    clock = RecordClock(system=fake_system(BOOT))
    parser = NmeaParser()
    start = time.monotonic()
    for i in range(6):
        body = (f"GPRMC,1235{10 + i}.00,A,4807.038,N,01131.000,E,022.4,084.4,010170,"
                "003.1,W")
        for fix in parser.feed(nmea_sentence(body).encode(), mono=start + i) + parser.quiet():
            assert fix.utc is not None and fix.utc.year == 2070
            clock.observe(fix.utc, fix.mono)
    assert not clock.corrected
    assert abs((clock.now() - BOOT).total_seconds()) < 60


def test_inconsistent_fixes_are_not_trusted_until_they_agree():
    """A receiver still settling (or two-second bursts read badly) may give times that
    jump: the offset is taken once CONFIRMATIONS fixes in a row agree within 2 s."""
    clock = RecordClock(system=fake_system(BOOT))
    observe_fixes(clock, TRUE, 6, jitter=lambda i: 5.0 * (i % 2))
    assert not clock.corrected
    observe_fixes(clock, TRUE + timedelta(seconds=10), CONFIRMATIONS,
                  jitter=lambda i: 0.4 * (i % 2))
    assert clock.corrected
    assert abs((clock.now() - (TRUE + timedelta(seconds=10))).total_seconds()) < 1.5


def test_a_trusted_offset_survives_a_bad_fix_and_moves_only_on_agreement():
    clock = RecordClock(system=fake_system(BOOT))
    observe_fixes(clock, TRUE, CONFIRMATIONS)
    assert clock.corrected
    clock.observe(datetime(2070, 1, 1, tzinfo=timezone.utc), time.monotonic())
    clock.observe(TRUE + timedelta(hours=5), time.monotonic())  # one jump: not followed
    assert abs((clock.now() - TRUE).total_seconds()) < 2
    observe_fixes(clock, TRUE + timedelta(hours=5), CONFIRMATIONS)
    assert abs((clock.now() - TRUE - timedelta(hours=5)).total_seconds()) < 2


def test_recorder_names_and_stamps_with_gnss_time(tmp_path):
    clock = RecordClock(system=fake_system(BOOT))
    observe_fixes(clock, TRUE, CONFIRMATIONS)
    state = SharedState()
    rec = Recorder(threading.Event(), state, car="C", folder=str(tmp_path), extension=".csv",
                   separator=",", interval=0.5, fsync_interval=1, rotate_seconds=3600,
                   rotate_bytes=1 << 20, max_age=5, clock=clock.now)
    rec.prepare()
    state.start_engine_run(EngineRun(1, (Column("RPM", "rpm"),)), source="obd")
    rec.tick()
    rec.close_file("test")
    (done,) = [f for f in outbox_files(tmp_path) if f.suffix == ".csv"]
    assert done.name.startswith("C_20270506T0708")
    assert read_records(done)[1][0].startswith("2027-05-06T07:08:")
