"""SharedState: the latest value of everything, and immutable snapshots of it.

Writers replace whole dictionaries under one lock (copy on write), so snapshot() only
copies references and readers never see a half-applied update. No I/O under the lock.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any, Mapping, Optional, Tuple

# Link states of a source (OBD adapter, GNSS receiver, S3 server...).
DISABLED = "disabled"
CONNECTING = "connecting"
CONNECTED = "connected"
LOST = "lost"


@dataclass(frozen=True)
class Reading:
    """One value as it arrived: monotonic time for ages, UTC wall time for records."""
    value: Any
    unit: str
    mono: float
    wall: datetime


@dataclass(frozen=True)
class Link:
    state: str
    reason: str = ""
    since: float = 0.0  # monotonic


@dataclass(frozen=True)
class Column:
    """A record column: the value's name and the fixed unit it is written in."""
    name: str
    unit: str = ""

    @property
    def header(self) -> str:
        return f"{self.name} ({self.unit})" if self.unit else self.name


@dataclass(frozen=True)
class EngineRun:
    """One stretch of talking to the car; a new one means a new record file."""
    number: int
    columns: Tuple[Column, ...]
    protocol: str = ""
    port: str = ""
    vin: Optional[str] = None
    started: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


@dataclass(frozen=True)
class Snapshot:
    mono: float
    values: Mapping[str, Reading]
    links: Mapping[str, Link]
    engine_run: Optional[EngineRun]
    gnss: Any
    counters: Mapping[str, int]
    info: Mapping[str, Any]

    def fresh(self, name: str, max_age: float) -> Optional[Reading]:
        """The reading of `name` if it is no older than max_age seconds."""
        reading = self.values.get(name)
        if reading is None or self.mono - reading.mono > max_age:
            return None
        return reading


class SharedState:
    """Thread-safe store; every method may be called from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: Mapping[str, Reading] = MappingProxyType({})
        self._links: Mapping[str, Link] = MappingProxyType({})
        self._obd_session: Optional[EngineRun] = None
        self._gnss: Any = None
        self._counters: Mapping[str, int] = MappingProxyType({})
        self._info: Mapping[str, Any] = MappingProxyType({})
        self._changed = threading.Condition(self._lock)

    def update_values(self, readings: Mapping[str, Tuple[Any, str]],
                      mono: Optional[float] = None, wall: Optional[datetime] = None) -> None:
        """Store name -> (value, unit), all stamped with one arrival time."""
        mono = time.monotonic() if mono is None else mono
        wall = datetime.now(timezone.utc) if wall is None else wall
        new = {name: Reading(value, unit, mono, wall) for name, (value, unit) in readings.items()}
        with self._lock:
            merged = dict(self._values)
            merged.update(new)
            self._values = MappingProxyType(merged)
            self._changed.notify_all()

    def set_link(self, source: str, state: str, reason: str = "") -> bool:
        """Record a source's link state; True when it changed (worth one log line)."""
        with self._lock:
            old = self._links.get(source)
            if old is not None and old.state == state and old.reason == reason:
                return False
            links = dict(self._links)
            links[source] = Link(state, reason, time.monotonic())
            self._links = MappingProxyType(links)
            return True

    def start_engine_run(self, session: EngineRun) -> None:
        with self._lock:
            self._obd_session = session

    def end_engine_run(self) -> None:
        with self._lock:
            self._obd_session = None

    def set_gnss(self, fix: Any) -> None:
        with self._lock:
            self._gnss = fix

    def count(self, name: str, step: int = 1) -> None:
        with self._lock:
            counters = dict(self._counters)
            counters[name] = counters.get(name, 0) + step
            self._counters = MappingProxyType(counters)

    def set_info(self, **items: Any) -> None:
        """Small facts for status displays (current file, backlog, ...)."""
        with self._lock:
            info = dict(self._info)
            info.update(items)
            self._info = MappingProxyType(info)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(time.monotonic(), self._values, self._links, self._obd_session,
                            self._gnss, self._counters, self._info)

    def wait_for_update(self, timeout: float) -> bool:
        """Block until update_values() is called or timeout passes (tests, streaming)."""
        with self._lock:
            return self._changed.wait(timeout)
