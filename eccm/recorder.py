"""Recorder thread: snapshots -> rows in record files; fsync cadence, rotation, recovery.

A file is written as NAME.part in the record folder, one os.write per row (no torn row
from a process kill), fsynced every FSYNC_INTERVAL, and on close fsynced and renamed
into outbox/ (then the folder is fsynced), where the uploader takes it. At start-up a
.part left by a crash or power cut is cut after its last whole line and queued.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

from .recordfmt import (GNSS_COLUMNS, GNSS_FIX_ATTRS, PART_SUFFIX, TIME_COLUMN, RowFormat,
                        complete_length, file_name)
from .state import Column, SharedState, Snapshot
from .text import plural
from .worker import Worker

log = logging.getLogger(__name__)

OUTBOX = "outbox"


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def recover(folder: Path, outbox: Path) -> List[Path]:
    """Repair and queue every .part file left behind; return the queued paths."""
    queued = []
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
            cut = len(data) - keep
            log.warning("recovered %s after an unclean stop%s", target.name,
                        f" (cut a torn last line of {cut} bytes)" if cut else "")
            queued.append(target)
        except OSError as exc:
            log.error("cannot recover %s: %s", part, exc)
    return queued


class RecordFile:
    """One open record file; used by the recorder thread only."""

    def __init__(self, folder: Path, outbox: Path, name: str, header: str,
                 fsync_interval: float):
        self.name = name
        self.path = folder / (name + PART_SUFFIX)
        self.outbox = outbox
        self.fsync_interval = fsync_interval
        self.opened = time.monotonic()
        self.rows = 0
        self._last_sync = self.opened
        self._fd: Optional[int] = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                          | os.O_APPEND, 0o644)
        self.size = 0
        try:
            self._write(header.encode("utf-8"))
            os.fsync(self._fd)
            fsync_dir(folder)  # the new name survives a power cut too
        except OSError:
            self._abandon()
            raise

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)  # type: ignore[arg-type]
            view = view[written:]
        self.size += len(data)

    def write_row(self, line: str) -> None:
        self._write(line.encode("utf-8"))
        self.rows += 1
        now = time.monotonic()
        if now - self._last_sync >= self.fsync_interval:
            os.fsync(self._fd)  # type: ignore[arg-type]
            self._last_sync = now

    def _abandon(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> Optional[Path]:
        """Sync and move to the outbox; a file without rows is removed instead."""
        if self._fd is None:
            return None
        try:
            os.fsync(self._fd)
        finally:
            self._abandon()
        if self.rows == 0:
            self.path.unlink()
            return None
        return move_to_outbox(self.path, self.outbox)


def gnss_cells(fix: Any, snap: Snapshot, max_age: float) -> List[Any]:
    """The GNSS columns of a row; empty cells without a fresh fix."""
    if fix is None or getattr(fix, "mono", snap.mono) < snap.mono - max_age:
        return [None] * len(GNSS_COLUMNS)
    return [getattr(fix, attr, None) for attr in GNSS_FIX_ATTRS]


class Recorder(Worker):
    """Writes one row every RECORD_INTERVAL while an engine session is on."""

    name = "recorder"

    def __init__(self, stop_event: threading.Event, state: SharedState, *, car: str,
                 folder: str, extension: str, separator: str, interval: float,
                 fsync_interval: float, rotate_seconds: float, rotate_bytes: int,
                 max_age: float, gnss: bool,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
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
        self.gnss = gnss
        self.clock = clock
        self._file: Optional[RecordFile] = None
        self._session_number: Optional[int] = None
        self._columns: Sequence[Column] = ()
        self._failing = False

    def prepare(self) -> None:
        """Create the folders and queue leftovers; runs before the thread starts."""
        self.outbox.mkdir(parents=True, exist_ok=True)
        for path in recover(self.folder, self.outbox):
            self.state.count("files_recovered")
            log.info("queued %s", path)

    def run(self) -> None:
        next_tick = time.monotonic()
        while not self.stop_event.is_set():
            self.heartbeat()
            if self._file is None:
                # No file yet: start at the first values of an engine session, not at the
                # next tick of an idle cadence (start-up to first row as short as possible).
                self.state.wait_for_update(self.interval)
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
        """Write one row, opening/rotating/closing the file as the session demands."""
        snap = self.state.snapshot()
        session = snap.obd_session
        if self._file is not None:
            reason = None
            if session is None:
                reason = "engine session ended"
            elif session.number != self._session_number:
                reason = "new engine session"
            elif time.monotonic() - self._file.opened >= self.rotate_seconds:
                reason = "time limit"
            elif self._file.size >= self.rotate_bytes:
                reason = "size limit"
            if reason:
                self.close_file(reason)
        if session is None:
            return
        now = self.clock()
        try:
            if self._file is None:
                self._open(session.number, session.columns, now)
            cells: List[Any] = [now]
            cells.extend(self._value(snap, col) for col in self._columns)
            if self.gnss:
                cells.extend(gnss_cells(snap.gnss, snap, self.max_age))
            assert self._file is not None
            self._file.write_row(self.format.line(cells))
            self.state.count("rows_recorded")
            if self._failing:
                log.info("recording again")
                self._failing = False
        except OSError as exc:
            self.state.count("record_errors")
            if not self._failing:
                log.error("cannot write the record file: %s", exc)
                self._failing = True
            self.close_file("write error")

    def _value(self, snap: Snapshot, col: Column) -> Any:
        reading = snap.fresh(col.name, self.max_age)
        return None if reading is None else reading.value

    def _open(self, number: int, columns: Sequence[Column], now: datetime) -> None:
        self._columns = tuple(columns)
        header_cols = [TIME_COLUMN, *self._columns, *(GNSS_COLUMNS if self.gnss else ())]
        name = free_name(self.outbox, self.folder,
                         lambda n: file_name(self.car, now, self.extension, n))
        self._file = RecordFile(self.folder, self.outbox, name,
                                self.format.header(header_cols), self.fsync_interval)
        self._session_number = number
        self.state.set_info(record_file=str(self._file.path))
        log.info("recording to %s", self._file.path)

    def close_file(self, reason: str) -> None:
        if self._file is None:
            return
        current, self._file = self._file, None
        self.state.set_info(record_file=None)
        try:
            target = current.close()
        except OSError as exc:
            self.state.count("record_errors")
            log.error("cannot close %s (%s); it will be recovered at the next start",
                      current.path, exc)
            return
        if target is not None:
            self.state.count("files_closed")
            log.info("closed %s (%s, %s) -> %s", current.name, reason,
                     plural(current.rows, "row"), target)
