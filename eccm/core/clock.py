"""Wall clock for records: the system clock, or GNSS time when the system clock is wrong.

A Raspberry Pi has no real-time clock: without network it boots at the last saved time
or 1970. ECCM cannot be running before it was released, so a system time earlier than
RELEASED is wrong; records then use system time + the offset GNSS fixes show.

A receiver's date is trusted only if ECCM could be running then (from RELEASED to
TRUST_YEARS later: a year '70' read as 2070, a week-rollover 1999, a corrupt 2199 are
not) and once CONFIRMATIONS fixes in a row agree on it: one fix of a receiver still
settling, or of a burst read across two seconds, does not move the records' time.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import Callable, Deque, Optional

log = logging.getLogger(__name__)

RELEASED = datetime(2026, 11, 1, tzinfo=timezone.utc)
TRUST_YEARS = 20     # a GNSS date later than RELEASED + 20 years is not believed
CONFIRMATIONS = 3    # consecutive fixes that must agree before the offset is taken
AGREEMENT = 2.0      # s: how far their (GNSS time - arrival time) may spread


class RecordClock:
    """now() for the recorder (any thread); observe() from the GNSS reader thread."""

    def __init__(self, system: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 floor: datetime = RELEASED,
                 monotonic: Callable[[], float] = time.monotonic):
        self._system = system
        self._floor = floor
        self._ceiling = floor.replace(year=floor.year + TRUST_YEARS)
        self._monotonic = monotonic
        self._offset: Optional[timedelta] = None  # replaced whole: safe across threads
        # GNSS UTC (s since the epoch) minus arrival (monotonic s) of the latest fixes:
        # constant while the receiver's time is steady.
        self._recent: Deque[float] = deque(maxlen=CONFIRMATIONS)

    @property
    def corrected(self) -> bool:
        return self._offset is not None and self._system() < self._floor

    def observe(self, gnss_utc: datetime, mono: float) -> None:
        """A fix with this UTC time arrived at monotonic time `mono`."""
        if not self._floor <= gnss_utc < self._ceiling:
            self._recent.clear()  # the run of agreeing fixes is broken
            return
        self._recent.append(gnss_utc.timestamp() - mono)
        if len(self._recent) < CONFIRMATIONS or \
                max(self._recent) - min(self._recent) > AGREEMENT:
            return
        system_then = self._system() - timedelta(seconds=self._monotonic() - mono)
        first = self._offset is None
        self._offset = gnss_utc - system_then
        if first and system_then < self._floor:
            log.warning("system clock is wrong (%s); records use GNSS time instead "
                        "(offset %.0f s)", system_then.isoformat(timespec="seconds"),
                        self._offset.total_seconds())

    def now(self) -> datetime:
        system = self._system()
        if system < self._floor and self._offset is not None:
            return system + self._offset
        return system
