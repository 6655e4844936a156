"""Wall clock for records: the system clock, or GNSS time when the system clock is wrong.

A Raspberry Pi has no real-time clock: without network it boots at the last saved time
or 1970. ECCM cannot be running before it was released, so a system time earlier than
RELEASED is wrong; once a GNSS fix gives UTC, records use system time + the offset seen.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Callable, Optional

log = logging.getLogger(__name__)

RELEASED = datetime(2026, 11, 1, tzinfo=timezone.utc)


class RecordClock:
    """now() for the recorder (any thread); observe() from the GNSS reader thread."""

    def __init__(self, system: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 floor: datetime = RELEASED):
        self._system = system
        self._floor = floor
        self._offset: Optional[timedelta] = None  # replaced whole: safe across threads

    @property
    def corrected(self) -> bool:
        return self._offset is not None and self._system() < self._floor

    def observe(self, gnss_utc: datetime, mono: float) -> None:
        """A fix with this UTC time arrived at monotonic time `mono`."""
        system_then = self._system() - timedelta(seconds=time.monotonic() - mono)
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
