"""The GNSS reader thread on a pseudo-terminal: when a fix reaches the shared state."""
from __future__ import annotations

import os
import pty
import threading
import time
import tty
from contextlib import contextmanager
from typing import Any, Iterator, Tuple

from eccm.sources.gnss.reader import GnssReader
from eccm.server.tcp import SocketServer
from eccm.sim.gnss import nmea_sentence
from eccm.core.state import CONNECTED, SharedState

from conftest import wait_for

PAUSE = 0.1
GGA = "GPGGA,{t},4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
RMC = "GPRMC,{t},A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W"


@contextmanager
def reader_on_pty(**kw: Any) -> Iterator[Tuple[int, SharedState, GnssReader]]:
    """A GnssReader on a fresh pseudo-terminal, already open (pyserial empties the input
    when it opens the port: write only after this): (master fd, state, reader); the reader
    is stopped and the pty closed after. Its read timeout, the pause that ends a burst, is
    PAUSE (0.25 s in the daemon): each burst's pause costs less."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    stop = threading.Event()
    state = SharedState()
    reader = GnssReader(stop, state, port=os.ttyname(slave), max_delay=1,
                        read_timeout=PAUSE, **kw)
    reader.start()
    try:
        wait_for(lambda: getattr(state.snapshot().links.get("gnss"), "state", None)
                 == CONNECTED, 10, what="the reader to open the pty")
        yield master, state, reader
    finally:
        stop.set()
        reader.join(5)
        os.close(master)
        os.close(slave)


def burst(second: int) -> bytes:
    t = f"1235{second:02d}.00"
    return (nmea_sentence(GGA.format(t=t)) + nmea_sentence(RMC.format(t=t))).encode()


def test_an_epoch_reaches_the_state_without_waiting_for_the_next_one():
    """A receiver bursts its epoch and falls silent until the next second: the position
    must be published from that burst, not a second later (28 m at 100 km/h)."""
    with reader_on_pty() as (master, state, reader):

        def published_second():
            fix = state.snapshot().gnss
            return fix.time_of_day.second if fix is not None else None

        for second in (1, 2, 3, 4):  # the first bursts (cycle unknown), then learnt
            os.write(master, burst(second))
            wait_for(lambda: published_second() == second, 10, step=0.02,
                     what=f"the fix of second {second} with no later sentence sent")
        assert reader.parser.cycle_end_known
        assert reader.parser.counters.late == 0
        assert state.snapshot().counters.get("gnss_fixes") == 4  # each epoch once

        # Bad bytes are skipped and counted where a user looks: STATUS over the socket.
        bad_sum = nmea_sentence(GGA.format(t="123505.00"))[:-4] + "00\r\n"
        os.write(master, b"\xb5\x62\x01\x07garbage" + bad_sum.encode() + burst(6))
        server = SocketServer(reader.stop_event, state, None, bind="127.0.0.1", port=0, secret=None,
                              car="TEST")

        def gnss_input():
            line = dict(server.status()).get("gnss_input", "")
            return dict(item.split("=") for item in line.split())
        wait_for(lambda: gnss_input().get("fixes") == "5", 10, what="the sixth epoch")
        counts = gnss_input()
        assert counts["bad_checksum"] == "1"
        assert counts["garbage_bytes"] == "11"  # the bytes before $; no line end counted
        assert counts["late"] == "0"


def test_a_receiver_whose_bursts_hold_two_seconds(monkeypatch):
    """GGA/GLL of second T with RMC/ZDA of T+1 (and GSA/VTG) in each burst, a pause after
    each: every published fix is one second's data, each second once, with the arrival
    time of its own second's first sentence (what the record clock compares with)."""
    from eccm.sources.gnss.nmea import NmeaParser
    from test_gnss_epochs import PATTERNS, burst, mixed, second

    pauses = []
    real_quiet = NmeaParser.quiet

    def spy(self):
        pauses.append(len(pauses))
        return real_quiet(self)
    monkeypatch.setattr(NmeaParser, "quiet", spy)

    published = []
    with reader_on_pty(on_fix=published.append) as (master, state, reader):
        written = []  # when each burst was written
        for i in range(7):
            before = len(pauses)
            written.append(time.monotonic())
            os.write(master, burst(i, PATTERNS["... then GSA VTG"]))
            # The burst completes second T's fix (its RMC came with the burst before);
            # while the cycle end is unknown, the reader then sees the pause.
            wait_for(lambda: getattr(state.snapshot().gnss, "time_of_day", None)
                     == second(i).utc.time(), 10, step=0.02, what=f"the fix of burst {i}'s GGA")
            if not reader.parser.cycle_end_known:
                wait_for(lambda: len(pauses) > before, 10, step=0.02,
                         what=f"the pause after burst {i}")
        assert pauses and reader.parser.cycle_end_known
        assert reader.parser.counters.late == 0
        written.append(float("inf"))
        index = {second(i).utc.time(): i for i in range(1, 8)}
        for fix in published:
            assert fix.lat is not None and not mixed(fix), (fix.time, mixed(fix))
            # Second j's first sentence (its RMC) came with burst j-1: its arrival, not
            # that of burst j, which completed the fix.
            j = index[fix.time_of_day]
            assert written[j - 1] <= fix.mono < written[j], fix.time
        seconds = [fix.utc for fix in published]
        assert seconds == sorted(set(seconds))


def test_dates_that_cannot_be_now_do_not_reach_the_published_fix():
    """A receiver's year '70' (2070) or a week-rollover 1999: the live reader takes no
    such date (the fix is published with its time of day alone) and counts it."""
    dated = []
    with reader_on_pty(on_fix=dated.append) as (master, state, reader):
        for second, day in ((1, "010170"), (2, "010199")):
            t = f"1235{second:02d}.00"
            rmc = RMC.format(t=t).replace("230394", day)
            os.write(master, (nmea_sentence(GGA.format(t=t)) + nmea_sentence(rmc)).encode())
            wait_for(lambda: getattr(state.snapshot().gnss, "time", None)
                     == f"12:35:{second:02d}.000Z", 10, what=f"the fix of second {second}")
            fix = state.snapshot().gnss
            assert fix.date is None and fix.lat is not None
        assert dated == []  # no UTC for the record clock either
        assert reader.parser.counters.out_of_range == 2


def test_a_receiver_sending_the_next_seconds_rmc_first(monkeypatch):
    """Bursts of RMC/ZDA of T+1 then GGA/GLL of T, a pause after each: published times
    only go forward and each second is published once, whole (speed and altitude)."""
    from eccm.sources.gnss import reader as reader_module
    from test_gnss_epochs import PATTERNS, burst, mixed, second

    reads = []  # each read of the reader: True with bytes, False when it timed out
    real_read = reader_module._SerialSource.read

    def spy(self):
        data = real_read(self)
        reads.append(bool(data))
        return data
    monkeypatch.setattr(reader_module._SerialSource, "read", spy)

    def paused_after_data(since: int) -> bool:
        """The reader got bytes, then a read timed out: it saw the pause."""
        seen = reads[since:]
        return True in seen and False in seen[seen.index(True):]

    published = []
    with reader_on_pty(on_fix=published.append) as (master, state, reader):
        for i in range(8):
            before = len(reads)
            os.write(master, burst(i, PATTERNS["RMC ZDA of T+1 first"]))
            wait_for(lambda: paused_after_data(before), 10, step=0.02,
                     what=f"the pause after burst {i}")
        wait_for(lambda: any(f.time_of_day == second(6).utc.time() for f in published), 10,
                 what="the fix of second 6")
        index = {second(i).utc.time(): i for i in range(10)}
        seconds = [index[f.time_of_day] for f in published]
        assert seconds == sorted(set(seconds)), seconds
        for fix in published:
            assert not mixed(fix), (fix.time, mixed(fix))
            if 1 <= index[fix.time_of_day] <= 6:
                assert None not in (fix.lat, fix.speed, fix.alt, fix.date), fix
        assert reader.parser.counters.stale == 0

