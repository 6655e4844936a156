"""Disk budget of the record folder: tell loudly when full, never drop data silently."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List

from eccm.core.health import DiskHealth
from eccm.core.text import plural
from eccm.sinks.layout import OUTBOX, UPLOADED, is_manifest, manifest_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiskReport:
    used: int
    limit: int
    waiting: int          # finished files not uploaded yet
    freed_copies: int     # kept copies of uploaded files removed
    dropped: List[str]    # un-uploaded files deleted (opt-in policy only)

    @property
    def full(self) -> bool:
        return self.limit > 0 and self.used > self.limit


def _files(folder: Path) -> List[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file()),
                  key=lambda p: (p.stat().st_mtime, p.name)) if folder.is_dir() else []


def _records(folder: Path) -> List[Path]:
    """The files of a folder but manifests, which go with their record."""
    return [p for p in _files(folder) if not is_manifest(p.name)]


def _remove_with_manifest(path: Path) -> int:
    """Delete a record and its manifest; the bytes freed."""
    freed = 0
    for victim in (path, path.with_name(manifest_name(path.name))):
        if victim.exists():
            freed += victim.stat().st_size
            victim.unlink()
    return freed


def check_budget(records: Path, limit: int, drop_oldest: bool) -> DiskReport:
    """Bring the record folder under `limit` bytes if it can be done without losing data.

    Kept copies in uploaded/ go first (they are on the server). Files waiting in outbox/
    are deleted only with drop_oldest, oldest first, each one logged.
    """
    everything = _files(records) + _files(records / OUTBOX) + _files(records / UPLOADED)
    used = sum(p.stat().st_size for p in everything)
    # A record and its manifest go together; a manifest is not a file of its own.
    waiting = _records(records / OUTBOX)
    freed = 0
    dropped: List[str] = []
    if limit > 0:
        for path in _records(records / UPLOADED):
            if used <= limit:
                break
            used -= _remove_with_manifest(path)
            freed += 1
        if drop_oldest:
            for path in waiting:
                if used <= limit:
                    break
                used -= _remove_with_manifest(path)
                dropped.append(path.name)
                log.error("record folder full: deleted %s, never uploaded "
                          "(RECORD_DROP_OLDEST_WHEN_FULL=yes)", path.name)
    return DiskReport(used, limit, len(waiting) - len(dropped), freed, dropped)


class DiskBudget:
    """The record folder's budget (RECORD_DIRECTORY_MAX_MB), checked by the daemon's main
    thread once a minute: reports DiskHealth, logs a full folder once."""

    def __init__(self, records: Path, limit: int, drop_oldest: bool):
        self.records = records
        self.limit = limit
        self.drop_oldest = drop_oldest
        self._full = False

    @classmethod
    def from_config(cls, cfg: Any) -> "DiskBudget":
        return cls(Path(cfg.RECORD_DIRECTORY_LOCATION),
                   int(cfg.RECORD_DIRECTORY_MAX_MB * 1024 * 1024),
                   cfg.RECORD_DROP_OLDEST_WHEN_FULL)

    def check(self, state: Any) -> None:
        if self.limit <= 0:
            return
        try:
            report = check_budget(self.records, self.limit, self.drop_oldest)
        except OSError as exc:
            log.error("cannot check the record folder: %s", exc)
            return
        state.report(DiskHealth(report.used, self.limit, report.full))
        if report.full and not self._full:
            log.error("RECORD FOLDER FULL: %.1f MB used of %.1f MB allowed; %s for "
                      "upload. Recording goes on; nothing is deleted unless "
                      "RECORD_DROP_OLDEST_WHEN_FULL=yes.", report.used / 1e6,
                      self.limit / 1e6, plural(report.waiting, "file waits", "files wait"))
        elif not report.full and self._full:
            log.info("record folder back under its budget")
        self._full = report.full
