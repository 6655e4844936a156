"""Record rows: snapshot -> cells -> text line; names, header, repair of torn files.

Pure functions, no I/O (sinks/records.py owns the files)."""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Iterable, List, Optional, Sequence, Tuple

from eccm.core.state import Column, Snapshot
from eccm.core.text import format_cell, format_time

# A value's text (format_cell, format_time) lives in core.text, the server writes it too;
# the sinks import it from here with the rows.
__all__ = ["PART_SUFFIX", "TIME_COLUMN", "RowFormat", "complete_length", "file_name",
           "file_sequence", "format_cell", "format_time", "parse_file_name", "parse_time",
           "row_cells"]

PART_SUFFIX = ".part"
TIME_COLUMN = Column("TIME", "UTC")


# CAR_STAMP_SEQ-TAG.ext; older versions wrote CAR_STAMP.ext and CAR_STAMP-N.ext.
_NAME_RE = re.compile(r"^(?P<car>.+)_(?P<stamp>\d{8}T\d{6}Z)"
                      r"(?:_(?P<seq>\d{1,12})-(?P<tag>[0-9a-f]{4,16}))?(?:-r?(?P<n>\d+))?"
                      r"(?P<ext>\.[^.]+)$")


def file_name(car: str, start: datetime, extension: str, sequence: int, tag: str) -> str:
    """CAR_YYYYmmddTHHMMSSZ_SEQ-TAG.ext: the UTC start for people, and an identity that does
    not depend on the clock being right (a Pi without a real-time clock may boot at the
    same saved time twice): the record folder's file counter and a random tag."""
    stamp = start.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{car}_{stamp}_{sequence:06d}-{tag}{extension}"


def parse_file_name(name: str) -> Optional[Tuple[str, datetime]]:
    """(car, UTC start) from a record file name, or None if it is not one."""
    match = _NAME_RE.match(name)
    if not match:
        return None
    start = datetime.strptime(match["stamp"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    return match["car"], start


def file_sequence(name: str) -> Optional[int]:
    """The file counter in a record file name (None for names of older versions)."""
    match = _NAME_RE.match(name)
    return int(match["seq"]) if match and match["seq"] else None


def parse_time(text: str) -> Optional[datetime]:
    """The inverse of format_time; None for anything else."""
    try:
        moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return None
    return moment.replace(tzinfo=timezone.utc)


def row_cells(snap: Snapshot, columns: Sequence[Column], moment: datetime,
              max_age: float) -> List[Any]:
    """One record row from a snapshot: the time, then each column's value if it is no
    older than max_age seconds and came from the source that declared the column, else an
    empty cell (never a stale value carried over, never another source's)."""
    cells: List[Any] = [moment]
    for col in columns:
        reading = snap.fresh(col.name, max_age)
        if reading is None or (col.source and reading.origin != col.source):
            cells.append(None)
        else:
            cells.append(reading.value)
    return cells


class RowFormat:
    """Joins cells with the separator, quoting (RFC 4180 style) cells that need it."""

    def __init__(self, separator: str):
        if len(separator) != 1:
            raise ValueError("separator must be one character")
        self.separator = separator

    def _quote(self, cell: str) -> str:
        if self.separator in cell or '"' in cell or cell != cell.strip(" "):
            return '"' + cell.replace('"', '""') + '"'
        return cell

    def line(self, cells: Iterable[Any]) -> str:
        return self.separator.join(self._quote(format_cell(c)) for c in cells) + "\n"

    def header(self, columns: Sequence[Column]) -> str:
        return self.line(c.header for c in columns)


def complete_length(data: bytes) -> int:
    """Length of the part of a file that ends with a whole line (a torn last line cut)."""
    end = data.rfind(b"\n")
    return end + 1 if end >= 0 else 0
