"""SharedState: the latest value of everything, and immutable snapshots of it.

Writers replace whole dictionaries under one lock (copy on write), so snapshot() only
copies references and readers never see a half-applied update. No I/O under the lock.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any, Dict, Mapping, Optional, Protocol, Sequence, Tuple, runtime_checkable

from eccm.core.health import CONNECTED, CONNECTING, DISABLED, LOST, Health, Link

# Link and its states live with the health model; sources publish them through the state.
__all__ = ["CONNECTED", "CONNECTING", "DISABLED", "LOST", "Column", "EngineRun", "Health",
           "Link", "Position", "Reading", "SharedState", "Snapshot", "Unavailable"]


@dataclass(frozen=True)
class Reading:
    """One value as it arrived: monotonic time for ages, UTC wall time for records, and
    the source that published it."""
    value: Any
    unit: str
    mono: float
    wall: datetime
    origin: str = ""


@dataclass(frozen=True)
class Column:
    """A record column: the value's name and the fixed unit it is written in; `source`
    (who declared it) is a label, not part of its identity."""
    name: str
    unit: str = ""
    source: str = field(default="", compare=False)

    @property
    def header(self) -> str:
        return f"{self.name} ({self.unit})" if self.unit else self.name


class Unavailable(Exception):
    """The car cannot be asked now (not connected, busy, no whole answer); the message says
    why. The one error a source's request methods raise to other threads (the server)."""


@dataclass(frozen=True)
class EngineRun:
    """One stretch of talking to the car; a new one means a new record file."""
    number: int
    columns: Tuple[Column, ...]
    protocol: str = ""
    port: str = ""
    vin: Optional[str] = None
    started: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    # What the car said of itself when the run began (JSON-ready: ECUs with their names,
    # calibration IDs and CVNs; trouble codes; freeze frame): kept in the record's manifest.
    facts: Mapping[str, Any] = field(default_factory=dict, compare=False)
    # Trouble codes read since, on request (DTC, CLEAR_DTC), with "read_at": live data for
    # consumers (MQTT); the facts, and so the manifests, keep what was said at the start.
    dtcs_now: Optional[Mapping[str, Any]] = field(default=None, compare=False)


@runtime_checkable
class Position(Protocol):
    """The latest GNSS fix as the rest of ECCM reads it (STATUS, POSITION): what a
    position source publishes with SharedState.set_gnss (sources/gnss/nmea.Fix is one).
    lat/lon are None without a valid position."""

    @property
    def lat(self) -> Optional[float]: ...

    @property
    def lon(self) -> Optional[float]: ...

    @property
    def mode(self) -> int: ...  # NMEA fix mode: 1 none, 2 2D, 3 3D

    @property
    def time(self) -> str: ...  # ISO 8601 UTC with ms and Z (the time of day alone)

    def as_dict(self) -> Dict[str, object]:
        """time, lat, lon and whatever else the fix knows, JSON-ready (POSITION)."""
        ...


@dataclass(frozen=True)
class Snapshot:
    mono: float
    values: Mapping[str, Reading]
    links: Mapping[str, Link]
    engine_run: Optional[EngineRun]
    gnss: Optional[Position]
    counters: Mapping[str, int]
    health: Health
    columns: Mapping[str, Tuple[Column, ...]]  # source -> its declared columns, in order

    def declared(self) -> Tuple[Column, ...]:
        """The record's columns: every source's, in the order the sources first declared
        them; a source that is off (link DISABLED) declares its names but records none."""
        return tuple(c for source, cols in self.columns.items() for c in cols
                     if getattr(self.links.get(source), "state", None) != DISABLED)

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
        self._engine_run: Optional[EngineRun] = None
        self._gnss: Optional[Position] = None
        self._counters: Mapping[str, int] = MappingProxyType({})
        self._health = Health()
        self._columns: Mapping[str, Tuple[Column, ...]] = MappingProxyType({})
        self._owners: Mapping[str, str] = {}  # value name -> the source that declared it
        self._run_source: Optional[str] = None  # who started the engine run
        self._run_updates = 0  # updates published by it
        self._changed = threading.Condition(self._lock)

    def update_values(self, readings: Mapping[str, Tuple[Any, str]],
                      mono: Optional[float] = None, wall: Optional[datetime] = None, *,
                      origin: str) -> None:
        """Store name -> (value, unit) from the source `origin` (required: a value is kept
        only under its own source's declared names), all stamped with one arrival time."""
        mono = time.monotonic() if mono is None else mono
        wall = datetime.now(timezone.utc) if wall is None else wall
        new = {name: Reading(value, unit, mono, wall, origin)
               for name, (value, unit) in readings.items()}
        with self._lock:
            # A name another source declared is that source's: never replaced by this one.
            foreign = [name for name in new
                       if self._owners.get(name, origin) != origin]
            for name in foreign:
                del new[name]
            merged = dict(self._values)
            merged.update(new)
            self._values = MappingProxyType(merged)
            if new and origin == self._run_source:
                self._run_updates += 1
            if foreign:
                counters = dict(self._counters)
                counters["values_refused"] = counters.get("values_refused", 0) + len(foreign)
                self._counters = MappingProxyType(counters)
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

    def declare(self, source: str, columns: Sequence[Column]) -> None:
        """A source's record columns (replacing what it declared before). Sources keep
        the place of their first declaration, so the daemon's wiring order is the
        record's column order."""
        labelled = tuple(replace(c, source=source) for c in columns)
        with self._lock:
            self._declare_locked(source, labelled)

    def _declare_locked(self, source: str, columns: Tuple[Column, ...]) -> None:
        """Replace `source`'s declaration and the names' owners (the caller holds the
        lock). A name is one source's only: whichever source declares it second is
        refused."""
        clash = [c.name for c in columns if self._owners.get(c.name, source) != source]
        if clash:
            owner = self._owners[clash[0]]
            raise ValueError(f"{source} declares {clash[0]}, already a column of {owner}: "
                             f"two sources cannot share a value name (one of them names "
                             f"its values apart, e.g. {owner.upper()}.{clash[0]})")
        declared = dict(self._columns)
        declared[source] = columns
        self._columns = MappingProxyType(declared)
        self._owners = {c.name: s for s, cols in declared.items() for c in cols}

    def start_engine_run(self, run: EngineRun, *, source: str) -> None:
        """The car is on: record files follow the run; its columns are `source`'s (one
        update: no snapshot sees the new columns with the old run)."""
        labelled = tuple(replace(c, source=source) for c in run.columns)
        with self._lock:
            self._declare_locked(source, labelled)
            self._engine_run = run
            self._run_source = source

    def end_engine_run(self) -> None:
        with self._lock:
            self._engine_run = None

    def set_run_dtcs(self, number: int, dtcs: Mapping[str, Any]) -> None:
        """Trouble codes read on request during run `number` (EngineRun.dtcs_now); nothing
        if that run has ended."""
        with self._lock:
            run = self._engine_run
            if run is not None and run.number == number:
                self._engine_run = replace(run, dtcs_now=dict(dtcs))

    def set_gnss(self, fix: Optional[Position]) -> None:
        if fix is not None and not isinstance(fix, Position):
            raise TypeError(f"a GNSS fix must be a core.state.Position, not {type(fix).__name__}")
        with self._lock:
            self._gnss = fix

    def count(self, name: str, step: int = 1) -> None:
        with self._lock:
            counters = dict(self._counters)
            counters[name] = counters.get(name, 0) + step
            self._counters = MappingProxyType(counters)

    def report(self, part: Any) -> None:
        """A worker's health part (core.health: ObdHealth, RecordHealth...), replaced whole."""
        with self._lock:
            self._health = self._health.with_part(part)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(time.monotonic(), self._values, self._links, self._engine_run,
                            self._gnss, self._counters, self._health, self._columns)

    def wait_for_run_values(self, timeout: float) -> bool:
        """Block until the engine run's source publishes values, or timeout passes; True if
        it did. (The recorder starts a file at the car's first values, not at a GNSS fix
        that happens to arrive first.)"""
        with self._lock:
            seen = self._run_updates
            return self._changed.wait_for(lambda: self._run_updates != seen, timeout)
