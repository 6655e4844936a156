"""Recorder thread: snapshots -> rows in record files; fsync cadence, rotation, recovery.

A file is written as NAME.part in the record folder, one os.write per row (no torn row
from a process kill), fsynced every FSYNC_INTERVAL, and on close cut back to its last whole
row, fsynced and renamed into outbox/ (then the folder is fsynced); its manifest is written
next to it last, which makes it a finished record the uploader takes. A write that fails
(disk full) is cut back at once, so no torn row is ever published; the recorder then
retries gently and resumes by itself. At start-up a .part left by a crash or power cut is
cut after its last whole line and queued, and a record that lost its manifest gets one.
"""
from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

from eccm.sinks.layout import (CLOCK_SOURCES, OUTBOX, SEQUENCE_FILE, UPLOADED, build_manifest,
                               dump_manifest, is_manifest, looks_like_record, manifest_name,
                               parse_header, record_of)
from eccm.sinks.rows import (PART_SUFFIX, TIME_COLUMN, RowFormat, complete_length, file_name,
                             file_sequence, parse_file_name, parse_time, row_cells)
from eccm.core.health import RecordHealth
from eccm.core.state import Column, SharedState
from eccm.core.text import plural
from eccm.core.worker import Worker

if TYPE_CHECKING:
    from eccm.config import Config

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
DESCRIPTOR_SUFFIX = ".json"
RETRY_CAP = 10.0  # seconds between attempts while the disk is full or failing


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """path holds data whole or not at all, even across a power cut; no temporary file is
    left behind when it fails (a full disk)."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def describe_error(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full: {exc.strerror}"
    return exc.strerror or str(exc)


def free_name(outbox: Path, folder: Path, make: Callable[[int], str]) -> str:
    """The first make(0), make(1)... that names no file in the outbox or the folder."""
    attempt = 0
    while True:
        name = make(attempt)
        if not (outbox / name).exists() and not (folder / (name + PART_SUFFIX)).exists():
            return name
        attempt += 1


def move_to_outbox(part: Path, outbox: Path) -> Path:
    """Atomically publish a finished .part file as outbox/NAME (fsync, rename, fsync dirs)."""
    name = part.name[:-len(PART_SUFFIX)]
    target = outbox / name
    if target.exists():  # never overwrite a finished file
        stem, ext = os.path.splitext(name)
        target = outbox / free_name(outbox, part.parent,
                                    lambda n: f"{stem}-r{n + 1}{ext}")
    os.replace(part, target)
    fsync_dir(outbox)
    fsync_dir(part.parent)
    return target


class FileCounter:
    """The record folder's file counter (folder/.sequence): part of every file name, so
    two files never share a name even when the clock repeats itself."""

    def __init__(self, folder: Path):
        self.path = folder / SEQUENCE_FILE
        self._last = 0

    def load(self, *seen_in: Path) -> None:
        """The stored counter, or the highest one in the names already there if higher
        (a lost or older .sequence file)."""
        try:
            self._last = int(self.path.read_text().strip() or 0)
        except (OSError, ValueError):
            self._last = 0
        for folder in seen_in:
            if folder.is_dir():
                for path in folder.iterdir():
                    name = path.name[:-len(PART_SUFFIX)] if path.name.endswith(
                        PART_SUFFIX) else path.name
                    self._last = max(self._last, file_sequence(name) or 0)

    def next(self) -> int:
        """The next number, stored before it is used. Raises OSError (disk full)."""
        number = self._last + 1
        write_atomic(self.path, f"{number}\n".encode())
        self._last = number
        return number


def scan_record(path: Path, separators: Sequence[str]) -> Dict[str, Any]:
    """What a manifest says of a record file, read from the file itself (recovery)."""
    data = path.read_bytes()
    first, _, _ = data.partition(b"\n")
    text = first.decode("utf-8", "replace").rstrip("\r")
    separator = next((s for s in separators if text.startswith(TIME_COLUMN.header + s)),
                     separators[0])
    header = next(csv.reader(io.StringIO(text), delimiter=separator), [])
    lines = data.split(b"\n")[1:-1]  # the file ends with a line end (complete_length)

    def row_time(line: bytes) -> Optional[datetime]:
        return parse_time(line.decode("utf-8", "replace").split(separator, 1)[0])
    return {"columns": parse_header(header), "separator": separator, "rows": len(lines),
            "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "start": row_time(lines[0]) if lines else None,
            "end": row_time(lines[-1]) if lines else None}


def write_manifest(record: Path, manifest: Dict[str, Any]) -> Path:
    path = record.with_name(manifest_name(record.name))
    write_atomic(path, dump_manifest(manifest))
    return path


def descriptor_path(folder: Path, name: str) -> Path:
    """Where the facts of an open record file are kept (folder/NAME.part.json): what only
    the running recorder knows (VIN, protocol, clock), so that a file recovered after a
    power cut -- the usual way a car's Pi stops -- still gets a whole manifest."""
    return folder / f"{name}{PART_SUFFIX}{DESCRIPTOR_SUFFIX}"


def read_descriptor(path: Path) -> Dict[str, Any]:
    """The facts written when the file was opened; {} if missing or unreadable."""
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return facts if isinstance(facts, dict) else {}


def manifest_from_file(record: Path, separators: Sequence[str],
                       facts: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """A manifest rebuilt from the file itself and, when there is one, its descriptor."""
    facts = facts or {}
    parsed = parse_file_name(record.name)
    scanned = scan_record(record, separators)
    clock = [c for c in facts.get("clock", []) if c in CLOCK_SOURCES] or ["unknown"]
    sources = facts.get("sources")
    if isinstance(sources, list) and len(sources) == len(scanned["columns"]) and \
            all(isinstance(s, str) for s in sources):
        scanned["columns"] = [replace(c, source=s)
                              for c, s in zip(scanned["columns"], sources)]
    return build_manifest(name=record.name, car=parsed[0] if parsed else "",
                          sequence=file_sequence(record.name), clock=clock,
                          vin=facts.get("vin") if isinstance(facts.get("vin"), str) else None,
                          protocol=str(facts.get("protocol") or ""), recovered=True,
                          car_facts=facts.get("obd") if isinstance(facts.get("obd"), dict)
                          else None, **scanned)


def recover_parts(folder: Path, outbox: Path) -> List[Path]:
    """Cut every .part file after its last whole line and move it to the outbox."""
    recovered: List[Path] = []
    for part in sorted(folder.glob("*" + PART_SUFFIX)):
        try:
            with open(part, "r+b") as fh:
                data = fh.read()
                keep = complete_length(data)
                if keep != len(data):
                    fh.truncate(keep)
                fh.flush()
                os.fsync(fh.fileno())
            if data[:keep].count(b"\n") <= 1:
                part.unlink()
                log.info("removed %s: a header and no rows", part.name)
                continue
            target = move_to_outbox(part, outbox)
            recovered.append(target)
            if target.name + PART_SUFFIX != part.name:  # renamed: its descriptor follows
                old = descriptor_path(folder, part.name[:-len(PART_SUFFIX)])
                if old.exists():
                    os.replace(old, descriptor_path(folder, target.name))
            cut = len(data) - keep
            log.warning("recovered %s after an unclean stop%s", target.name,
                        f" (cut a torn last line of {cut} bytes)" if cut else "")
        except OSError as exc:
            log.error("cannot recover %s: %s", part, exc)
    return recovered


def manifest_orphans(folder: Path, outbox: Path, separators: Sequence[str],
                     recovered: Sequence[Path] = ()) -> Tuple[List[Path], int]:
    """Manifest the records in the outbox that have none; tidy manifests and descriptors
    whose record is gone. (records manifested, manifests that could not be written)."""
    queued: List[Path] = []
    failed = 0
    tidy_orphan_manifests(outbox, folder / UPLOADED)
    names = {p.name for p in outbox.iterdir()} if outbox.is_dir() else set()
    for name in sorted(names):
        path = outbox / name
        if name.startswith(".") or is_manifest(name) or manifest_name(name) in names \
                or not path.is_file():
            continue
        try:
            if path not in recovered:
                with open(path, "rb") as fh:
                    if not looks_like_record(name, fh.readline()):
                        continue  # not ECCM's: never uploaded, left alone
            descriptor = descriptor_path(folder, name)
            write_manifest(path, manifest_from_file(path, separators,
                                                    read_descriptor(descriptor)))
            _unlink_quietly(descriptor)
            queued.append(path)
        except OSError as exc:
            failed += 1
            log.error("cannot write the manifest of %s (%s); tried again later",
                      name, describe_error(exc))
    parts = {p.name for p in folder.glob("*" + PART_SUFFIX)}
    for descriptor in folder.glob("*" + PART_SUFFIX + DESCRIPTOR_SUFFIX):
        name = descriptor.name[:-len(DESCRIPTOR_SUFFIX)]
        if name not in parts and name[:-len(PART_SUFFIX)] not in names:
            _unlink_quietly(descriptor)  # its record is finished and manifested
    return queued, failed


def tidy_orphan_manifests(outbox: Path, uploaded: Path) -> None:
    """A manifest whose record is no longer in the outbox was left by a stop between the
    two removals after an upload (the record goes first): it goes where its record went.
    Safe at any time: a manifest is only ever written after its record is in the outbox."""
    if not outbox.is_dir():
        return
    names = {p.name for p in outbox.iterdir()}
    for name in names:
        if not is_manifest(name) or record_of(name) in names:
            continue
        try:
            if (uploaded / record_of(name)).exists():
                os.replace(outbox / name, uploaded / name)
            else:
                (outbox / name).unlink()
        except OSError as exc:
            log.warning("cannot tidy %s: %s", name, exc)


def _labelled(columns: Sequence[Column]) -> List[Tuple[Column, str]]:
    """Columns with who declared them: a column moving to another source is a new file."""
    return [(c, c.source) for c in columns]


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


class RecordFile:
    """One open record file; used by the recorder thread only.

    `size` is the length of its whole rows: a failed write is cut back to it at once, and
    close() cuts the file to it again, so what is published never ends in a torn row.
    """

    def __init__(self, folder: Path, outbox: Path, name: str, header: str,
                 fsync_interval: float):
        self.name = name
        self.path = folder / (name + PART_SUFFIX)
        self.outbox = outbox
        self.fsync_interval = fsync_interval
        self.opened = time.monotonic()
        self.rows = 0
        self.first: Optional[datetime] = None
        self.last: Optional[datetime] = None
        self.clocks: List[str] = []
        self._sha = hashlib.sha256()
        self._last_sync = self.opened
        self._fd: Optional[int] = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                          | os.O_APPEND, 0o644)
        self.size = 0
        try:
            self._write(header.encode("utf-8"))
            os.fsync(self._fd)
            fsync_dir(folder)  # the new name survives a power cut too
        except OSError:
            self.discard()  # a failed open leaves nothing behind
            raise

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)  # type: ignore[arg-type]
                view = view[written:]
        except OSError:
            try:
                os.ftruncate(self._fd, self.size)  # type: ignore[arg-type]
            except OSError:
                pass  # close() cuts it again; recovery would at the next start
            raise
        self.size += len(data)
        self._sha.update(data)

    def write_row(self, line: str, moment: datetime, clock: str) -> None:
        self._write(line.encode("utf-8"))
        self.rows += 1
        if self.first is None:
            self.first = moment
        self.last = moment
        if clock not in self.clocks:
            self.clocks.append(clock)
        now = time.monotonic()
        if now - self._last_sync >= self.fsync_interval:
            os.fsync(self._fd)  # type: ignore[arg-type]
            self._last_sync = now

    def _abandon(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        """Close and remove a file that could not be set up: nothing is left behind."""
        self._abandon()
        _unlink_quietly(self.path)

    def close(self) -> Optional[Path]:
        """Cut to the whole rows, sync and move to the outbox; a file without rows is
        removed instead. On OSError the .part stays for recovery at the next start."""
        if self._fd is None:
            return None
        try:
            os.ftruncate(self._fd, self.size)
            os.fsync(self._fd)
        finally:
            self._abandon()
        if self.rows == 0:
            self.path.unlink()
            return None
        return move_to_outbox(self.path, self.outbox)


class Recorder(Worker):
    """Writes one row every RECORD_INTERVAL while an engine run is on: the time, then
    every column the sources declared (SharedState.declare), in their order."""

    name = "recorder"

    def __init__(self, stop_event: threading.Event, state: SharedState, *, car: str,
                 folder: str, extension: str, separator: str, interval: float,
                 fsync_interval: float, rotate_seconds: float, rotate_bytes: int,
                 max_age: float,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 clock_source: Callable[[], str] = lambda: "system",
                 retry_cap: float = RETRY_CAP):
        super().__init__(stop_event)
        self.state = state
        self.car = car
        self.folder = Path(folder)
        self.outbox = self.folder / OUTBOX
        self.extension = extension
        self.format = RowFormat(separator)
        self.interval = interval
        self.fsync_interval = fsync_interval
        self.rotate_seconds = rotate_seconds
        self.rotate_bytes = rotate_bytes
        self.max_age = max_age
        self.clock = clock
        self.clock_source = clock_source
        self.retry_cap = retry_cap
        self.counter = FileCounter(self.folder)
        self._file: Optional[RecordFile] = None
        self._run_number: Optional[int] = None
        self._run_facts: Dict[str, Any] = {}
        self._columns: Sequence[Column] = ()
        # While writing fails: what is wrong, when to try again, how long to wait next.
        self._problem: Optional[str] = None
        self._failing_since = 0.0
        self._retry_at = 0.0
        self._retry_delay = 0.0
        self._lost = 0
        # Records in the outbox whose manifest could not be written yet (disk full).
        self._unmanifested: List[Tuple[Path, Dict[str, Any]]] = []
        self._manifest_retry_at = 0.0
        self._manifest_problem: Optional[str] = None
        self._orphans_failed = 0  # records found at start whose manifest is still unwritten
        self._separators = list(dict.fromkeys([self.format.separator, ",", "\t", "|", ";"]))

    @classmethod
    def from_config(cls, stop_event: threading.Event, state: SharedState, cfg: "Config", *,
                    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                    clock_source: Callable[[], str] = lambda: "system") -> Optional["Recorder"]:
        """The recorder the configuration describes, or None with FILE_RECORDING=no (the
        health then says so); the clock callbacks are the daemon's."""
        if not cfg.FILE_RECORDING:
            state.report(RecordHealth(off=True))
            return None
        return cls(stop_event, state, car=cfg.CAR_IDENTIFIER,
                   folder=cfg.RECORD_DIRECTORY_LOCATION, extension=cfg.MONITORING_FILE_EXTENSION,
                   separator=cfg.MONITORING_FILE_SEPARATION_CHARACTER,
                   interval=cfg.RECORD_INTERVAL, fsync_interval=cfg.FSYNC_INTERVAL,
                   rotate_seconds=cfg.RECORD_ROTATE_MINUTES * 60,
                   rotate_bytes=int(cfg.RECORD_ROTATE_SIZE_MB * 1024 * 1024),
                   max_age=cfg.VALUE_MAX_AGE, clock=clock, clock_source=clock_source)

    def prepare(self) -> None:
        """Create the folders and queue leftovers; runs before the thread starts."""
        self.outbox.mkdir(parents=True, exist_ok=True)
        for tmp in [*self.folder.glob(TMP_PREFIX + "*"), *self.outbox.glob(TMP_PREFIX + "*")]:
            _unlink_quietly(tmp)
        recovered = recover_parts(self.folder, self.outbox)
        queued, self._orphans_failed = manifest_orphans(self.folder, self.outbox,
                                                        self._separators, recovered)
        for path in queued:
            self.state.count("files_recovered")
            log.info("queued %s", path)
        self.counter.load(self.folder, self.outbox, self.folder / UPLOADED)

    def run(self) -> None:
        next_tick = time.monotonic()
        while not self.stop_event.is_set():
            self.heartbeat()
            if self._file is None and self._problem is None:
                # No file yet: start at the first values of an engine run, not at the
                # next tick of an idle cadence (start-up to first row as short as possible).
                self.state.wait_for_run_values(self.interval)
                next_tick = time.monotonic()
            self.tick()
            next_tick += self.interval
            now = time.monotonic()
            if next_tick < now:  # a slow disk: skip the missed ticks, keep the cadence
                next_tick = now + self.interval
            self.stop_event.wait(next_tick - now)

    def on_exit(self) -> None:
        self.close_file("stopping")

    def tick(self) -> None:
        """Write one row, opening/rotating/closing the file as the run demands."""
        snap = self.state.snapshot()
        run = snap.engine_run
        declared = snap.declared()
        if self._file is not None:
            reason = None
            if run is None:
                reason = "engine run ended"
            elif run.number != self._run_number:
                reason = "new engine run"
            elif _labelled(declared) != _labelled(self._columns):
                reason = "new columns"
            elif time.monotonic() - self._file.opened >= self.rotate_seconds:
                reason = "time limit"
            elif self._file.size >= self.rotate_bytes:
                reason = "size limit"
            if reason:
                self.close_file(reason)
        self._write_manifests()
        if run is None:
            return
        if self._problem is not None and time.monotonic() < self._retry_at:
            self._lose_row()
            return
        now = self.clock()
        try:
            if self._file is None:
                self._open(run, declared, now)
            cells = row_cells(snap, self._columns, now, self.max_age)
            assert self._file is not None
            clock = self.clock_source()
            if clock not in self._file.clocks:  # the descriptor first: it may only say more
                self._run_facts["clock"] = [*self._file.clocks, clock]
                write_atomic(descriptor_path(self.folder, self._file.name), json.dumps(
                    {k: v for k, v in self._run_facts.items() if k != "columns"}).encode())
            self._file.write_row(self.format.line(cells), now, clock)
        except OSError as exc:
            self._fail(exc)
            # What the file holds is whole rows (the failed one was cut back): publish it
            # rather than write on through a handle that may stay broken (a dying card).
            self.close_file("write error")
            return
        self.state.count("rows_recorded")
        if self._problem is not None:
            self._recovered()

    def _lose_row(self) -> None:
        self._lost += 1
        self.state.count("rows_lost")

    def _fail(self, exc: OSError) -> None:
        """A row could not be written (nothing of it is in a file): say so once, wait a
        little longer each time, up to retry_cap."""
        self.state.count("record_errors")
        self._lose_row()
        problem = describe_error(exc)
        if self._problem is None:
            self._failing_since = time.monotonic()
            self._retry_delay = self.interval
            log.error("cannot write the record file (%s): rows are not recorded until it "
                      "works again; retrying every few seconds", problem)
        elif problem != self._problem:
            log.error("cannot write the record file: %s", problem)
        else:
            self._retry_delay = min(self._retry_delay * 2, self.retry_cap)
        self._problem = problem
        self._retry_at = time.monotonic() + self._retry_delay
        self._report()

    def _recovered(self) -> None:
        log.info("recording again after %.0f s (%s not recorded)",
                 time.monotonic() - self._failing_since, plural(self._lost, "row"))
        self._problem = None
        self._lost = 0
        self._report()
        self._manifest_retry_at = 0.0  # the disk works again: the waiting manifests too
        self._write_manifests()

    def _report(self) -> None:
        self.state.report(RecordHealth(
            file=str(self._file.path) if self._file is not None else None,
            problem=f"{self._problem}: rows not recorded, retrying" if self._problem else None))

    def _open(self, run: Any, columns: Tuple[Column, ...], now: datetime) -> None:
        header_cols = [replace(TIME_COLUMN, source="clock"), *columns]
        sequence = self.counter.next()
        tag = secrets.token_hex(3)
        name = free_name(self.outbox, self.folder,
                         lambda n: file_name(self.car, now, self.extension, sequence,
                                             tag if n == 0 else secrets.token_hex(3)))
        record = RecordFile(self.folder, self.outbox, name, self.format.header(header_cols),
                            self.fsync_interval)
        facts = {"car": self.car, "vin": run.vin, "protocol": run.protocol,
                 "sequence": sequence, "clock": [],
                 "sources": [c.source for c in header_cols],
                 "obd": dict(getattr(run, "facts", None) or {})}
        try:
            write_atomic(descriptor_path(self.folder, name), json.dumps(facts).encode())
        except OSError:
            record.discard()
            raise
        self._file = record
        self._columns = columns
        self._run_number = run.number
        self._run_facts = {**facts, "columns": header_cols}
        self._report()
        log.info("recording to %s", self._file.path)

    def close_file(self, reason: str) -> None:
        if self._file is None:
            return
        current, self._file = self._file, None
        self._report()
        try:
            target = current.close()
        except OSError as exc:
            self.state.count("record_errors")
            log.error("cannot close %s (%s); it will be recovered at the next start",
                      current.path, describe_error(exc))
            return
        if target is None:
            return
        facts = self._run_facts
        manifest = build_manifest(
            name=target.name, car=self.car, vin=facts.get("vin"),
            protocol=facts.get("protocol", ""), columns=facts["columns"],
            separator=self.format.separator, rows=current.rows, size=current.size,
            sha256=current.sha256, start=current.first, end=current.last,
            clock=current.clocks, sequence=facts.get("sequence"),
            car_facts=facts.get("obd"))
        self._unmanifested.append((target, manifest))
        self._manifest_retry_at = 0.0
        self._write_manifests()
        self.state.count("files_closed")
        log.info("closed %s (%s, %s) -> %s", current.name, reason,
                 plural(current.rows, "row"), target)

    def _write_manifests(self) -> None:
        """The manifest makes a record finished: a record whose manifest could not be
        written (disk full) waits in the outbox, not uploaded, and is tried again every
        retry_cap seconds (and at the next start, from the file itself)."""
        if not (self._unmanifested or self._orphans_failed) or \
                time.monotonic() < self._manifest_retry_at:
            return
        if self._orphans_failed:
            _, self._orphans_failed = manifest_orphans(self.folder, self.outbox,
                                                       self._separators)
            if self._orphans_failed:
                self._manifest_retry_at = time.monotonic() + self.retry_cap
                return
        while self._unmanifested:
            record, manifest = self._unmanifested[0]
            try:
                write_manifest(record, manifest)
            except OSError as exc:
                self.state.count("record_errors")
                self._manifest_retry_at = time.monotonic() + self.retry_cap
                problem = describe_error(exc)
                if problem != self._manifest_problem:
                    log.error("cannot write the manifest of %s (%s); it waits in the "
                              "outbox, not uploaded, until the manifest can be written",
                              record.name, problem)
                    self._manifest_problem = problem
                return
            self._unmanifested.pop(0)
            _unlink_quietly(descriptor_path(self.folder, record.name))
            if self._manifest_problem is not None:
                log.info("wrote the manifest of %s", record.name)
                self._manifest_problem = None
