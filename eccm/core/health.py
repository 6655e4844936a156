"""One health model: each worker reports a typed part of Health into the shared state;
the socket's STATUS, the systemd status line and the logs all read that same Health.

Pure: no threads, no I/O. A part is replaced whole (SharedState.report), so a reader never
sees half of an update.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, Deque, List, Mapping, Optional, Protocol, Sequence, Tuple

from eccm.core.text import plural

# Link states of a source (OBD adapter, GNSS receiver, S3 server...).
DISABLED = "disabled"
CONNECTING = "connecting"
CONNECTED = "connected"
LOST = "lost"

# Counters STATUS shows under "errors" besides every *error* and restarts_* counter.
ERROR_COUNTERS = ("socket_refused", "socket_evicted", "login_timeouts", "auth_failures",
                  "auth_refused")


def _frozen(items: Optional[Mapping[str, int]] = None) -> Mapping[str, int]:
    return MappingProxyType(dict(items or {}))


@dataclass(frozen=True)
class Link:
    state: str
    reason: str = ""
    since: float = 0.0  # monotonic

    def text(self) -> str:
        return f"{self.state} {self.reason}".strip()


@dataclass(frozen=True)
class ObdHealth:
    """The OBD source during an engine run (all empty between runs)."""
    protocol: str = ""
    vin: Optional[str] = None
    pids: int = 0                  # PIDs asked of the car
    samples_per_s: float = 0.0     # answered values per second over the poller's window
    anomalies: Mapping[str, int] = field(default_factory=_frozen)


@dataclass(frozen=True)
class GnssHealth:
    """What the NMEA parser counted (sentences, bad checksums, out-of-range fields...)."""
    input: Mapping[str, int] = field(default_factory=_frozen)


@dataclass(frozen=True)
class RecordHealth:
    file: Optional[str] = None     # the file being written
    problem: Optional[str] = None  # why rows are not being recorded now
    off: bool = False              # FILE_RECORDING=no


@dataclass(frozen=True)
class UploadHealth:
    backlog: Optional[int] = None  # None: not counted yet
    held: int = 0                  # files held back from upload (see the log)
    last: Optional[str] = None     # "KEY at TIME" of the last upload


@dataclass(frozen=True)
class DiskHealth:
    used: int = 0                  # bytes of the record folder
    limit: int = 0                 # RECORD_DIRECTORY_MAX_MB in bytes (0: not checked)
    full: bool = False

    def text(self) -> str:
        return (f"{self.used / 1e6:.1f} of {self.limit / 1e6:.1f} MB"
                + (" FULL" if self.full else ""))


class Part(Protocol):
    """The health part of a component that lives outside core (a new sink or source): it
    says under which link name it reports and what STATUS and the systemd line show of it,
    so adding one needs no change here."""
    name: str

    def status_items(self, link: Optional[Link]) -> List[Tuple[str, Any]]: ...

    def status_line(self, link: Optional[Link]) -> Optional[str]: ...


@dataclass(frozen=True)
class Health:
    """Every worker's latest report; a part nobody reported yet has its empty value. The
    daemon's own parts are fields; any other component's part (a Part) is kept by its
    name in `parts`, in the order they first reported."""
    obd: ObdHealth = ObdHealth()
    gnss: GnssHealth = GnssHealth()
    record: RecordHealth = RecordHealth()
    upload: UploadHealth = UploadHealth()
    disk: DiskHealth = DiskHealth()
    parts: Mapping[str, Part] = field(default_factory=lambda: MappingProxyType({}))

    def with_part(self, part: Any) -> "Health":
        """This health with one part replaced: a field found by the part's type, or a
        Part by its name."""
        for f in fields(self):
            if type(getattr(self, f.name)) is type(part):
                return replace(self, **{f.name: part})
        if isinstance(getattr(part, "name", None), str) and hasattr(part, "status_items"):
            return replace(self, parts=MappingProxyType({**self.parts, part.name: part}))
        raise TypeError(f"not a health part: {type(part).__name__}")


def ordered_links(links: Mapping[str, Link], sources: Sequence[str]) -> List[Tuple[str, Link]]:
    """Every link, the sources' in the order they were created (the record's column
    order), then the others (s3) as they appeared."""
    order = [s for s in sources if s in links] + [s for s in links if s not in sources]
    return [(name, links[name]) for name in order]


def status_line(health: Health, links: Mapping[str, Link], sources: Sequence[str] = ()
                ) -> str:
    """One line for `systemctl status`: every link that is not off, then the problems."""
    parts = [f"{name} {link.state}" for name, link in ordered_links(links, sources)
             if link.state != DISABLED]
    if health.record.problem:
        parts.append(f"NOT RECORDING: {health.record.problem}")
    elif health.record.file:
        parts.append("recording")
    if health.upload.backlog:
        parts.append(f"{plural(health.upload.backlog, 'file')} to upload")
    if health.upload.held:
        parts.append(f"{plural(health.upload.held, 'file')} held back from upload "
                     "(see the log)")
    if health.disk.full:
        parts.append("DISK FULL")
    for part in health.parts.values():
        line = part.status_line(links.get(part.name))
        if line:
            parts.append(line)
    return ", ".join(parts) or "starting"


def status_items(health: Health, links: Mapping[str, Link], counters: Mapping[str, int],
                 fix: Any, *, version: str, car: str, uptime: float,
                 sources: Sequence[str] = ()) -> List[Tuple[str, Any]]:
    """The socket's STATUS, one (key, value) per line; a link beyond the OBD adapter,
    the GNSS receiver and S3 (a new source) gets its own line before the errors."""
    obd, gnss, s3 = links.get("obd"), links.get("gnss"), links.get("s3")
    items: List[Tuple[str, Any]] = [
        ("version", version), ("car", car), ("uptime_s", round(uptime)),
        ("obd", obd.text() if obd else "unknown"),
        ("obd_protocol", health.obd.protocol),
        ("vin", health.obd.vin or ""),
        ("pids_polled", health.obd.pids),
        ("samples_per_s", round(health.obd.samples_per_s, 1)),
        ("obd_samples", counters.get("obd_samples", 0)),
        ("obd_anomalies", " ".join(f"{k}={v}" for k, v in sorted(
            health.obd.anomalies.items())) or "none"),
        ("gnss", gnss.text() if gnss else "unknown"),
        ("gnss_fix", "none" if fix is None or fix.lat is None else
         f"mode {fix.mode} {fix.lat:.6f},{fix.lon:.6f} at {fix.time}"),
        ("gnss_input", " ".join(f"{k}={v}" for k, v in health.gnss.input.items())),
        ("record_file", health.record.file or ""),
        ("recording", "off (FILE_RECORDING=no)" if health.record.off else
         health.record.problem or "ok"),
        ("rows_lost", counters.get("rows_lost", 0)),
        ("disk", health.disk.text() if health.disk.limit else "not checked"),
    ]
    if s3 is not None and s3.state == DISABLED:
        items.append(("upload", "off (S3 not configured)"))
    else:
        # No s3 link yet: the uploader has not tried to upload anything so far.
        items += [
            ("upload", s3.text() if s3 else "on, nothing tried yet"),
            ("upload_backlog", "not counted yet" if health.upload.backlog is None
             else health.upload.backlog),
            ("upload_held", health.upload.held),
            ("last_upload", health.upload.last or "never"),
        ]
    shown = {"obd_samples", "rows_lost"}
    counts = {k: v for k, v in counters.items() if k not in shown and not _is_error(k)}
    items.append(("counts", " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
                  or "none"))
    for part in health.parts.values():
        items += part.status_items(links.get(part.name))
    items += [(name, link.text()) for name, link in ordered_links(links, sources)
              if name not in ("obd", "gnss", "s3") and name not in health.parts]
    errors = {k: v for k, v in counters.items() if _is_error(k)}
    items.append(("errors", " ".join(f"{k}={v}" for k, v in sorted(errors.items()))
                  or "none"))
    return items


def _is_error(counter: str) -> bool:
    return "error" in counter or counter.startswith("restarts_") or counter in ERROR_COUNTERS


class RateMeter:
    """Events per second over the last `window` seconds. Used by one thread (the worker
    that counts), which reports the rate: every reader of Health sees the same figure."""

    def __init__(self, window: float = 5.0):
        self.window = window
        self._marks: Deque[Tuple[float, int]] = deque()  # (monotonic, events then)
        self._total = 0

    def add(self, events: int, now: float) -> None:
        self._total += events
        self._marks.append((now, self._total))
        while len(self._marks) > 2 and now - self._marks[1][0] >= self.window:
            self._marks.popleft()

    def rate(self, now: float) -> float:
        if not self._marks:
            return 0.0
        first_time, first_total = self._marks[0]
        if now - first_time < 0.5:
            return 0.0
        return (self._total - first_total) / (now - first_time)
