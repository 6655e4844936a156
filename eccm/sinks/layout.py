"""Record folder layout and manifests: folder names, which files are records, what a
manifest says. Pure functions, no I/O.

A finished record is `outbox/NAME` plus `outbox/NAME.manifest.json`. The manifest is written
after the record is in the outbox, so its presence is what makes a record finished: the
uploader takes only manifested records, never whatever else lies in the folder (an export,
a plot, a copy a user put there).

In the bucket, each uploaded record also gets an index entry,
`PREFIX-index/date=DAY/car=CAR/NAME.json`: one small object per record, written once by the
record's own uploader, so no entry is ever shared, rewritten or lost between uploaders, and
a day's records of every car are found by listing one short prefix, not the whole bucket.
"""
from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from eccm import __version__
from eccm.core.text import format_time
from eccm.sinks.rows import TIME_COLUMN, parse_file_name
from eccm.sources.gnss.columns import NAMES as GNSS_NAMES
from eccm.core.state import Column

DEMO_CAR = "DEMO"  # the simulated car (demo.py): its drives stay out of a real car's bucket
OUTBOX = "outbox"
UPLOADED = "uploaded"
SEQUENCE_FILE = ".sequence"
MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_FORMAT = "eccm-record-manifest"
MANIFEST_VERSION = 1
INDEX_FORMAT = "eccm-record-index"
INDEX_SUFFIX = "-index"

# How the record's UTC times were obtained (RecordClock), each source its rows used, in
# order: the system clock, the system clock corrected by GNSS time, a system clock known to
# be wrong with no GNSS time yet, or unknown (a file recovered after an unclean stop).
CLOCK_SOURCES = ("system", "gnss", "unverified", "unknown")

_CAR_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
_HEADER_RE = re.compile(r"^(?P<name>.*?)(?: \((?P<unit>[^()]*)\))?$")


def manifest_name(record_name: str) -> str:
    return record_name + MANIFEST_SUFFIX


def is_manifest(name: str) -> bool:
    return name.endswith(MANIFEST_SUFFIX)


def record_of(manifest: str) -> str:
    """The record file name a manifest name belongs to."""
    return manifest[:-len(MANIFEST_SUFFIX)]


def valid_car(car: object) -> bool:
    """A car identifier safe as a file name part and an S3 key segment (no '.', '..')."""
    return isinstance(car, str) and bool(_CAR_RE.fullmatch(car)) and car.strip(".") != ""


def column_source(column: Column) -> str:
    """Who declared a column: its own label, else (a file of an older version, recovered
    without its descriptor) the time column's, the GNSS receiver's or the OBD's."""
    if column.source:
        return column.source
    if column == TIME_COLUMN:
        return "clock"
    return "gnss" if column.name in GNSS_NAMES else "obd"


def parse_header(cells: Sequence[str]) -> List[Column]:
    """'RPM (rpm)' -> Column('RPM', 'rpm'); the inverse of Column.header."""
    out = []
    for cell in cells:
        match = _HEADER_RE.match(cell)
        assert match is not None  # the pattern matches any string
        out.append(Column(match["name"], match["unit"] or ""))
    return out


def build_manifest(*, name: str, car: str, columns: Sequence[Column], separator: str,
                   rows: int, size: int, sha256: str, start: Optional[datetime],
                   end: Optional[datetime], clock: Sequence[str], sequence: Optional[int] = None,
                   vin: Optional[str] = None, protocol: str = "",
                   recovered: bool = False, car_facts: Optional[Mapping[str, Any]] = None
                   ) -> Dict[str, Any]:
    """The manifest of one finished record file, as a JSON-ready dict. `car_facts`: what
    the car said of itself when the run began (ECUs, identification, trouble codes,
    freeze frame), written as "obd"."""
    unknown = [c for c in clock if c not in CLOCK_SOURCES]
    if unknown:
        raise ValueError(f"unknown clock source {unknown[0]!r}")
    return {
        "format": MANIFEST_FORMAT,
        "manifest_version": MANIFEST_VERSION,
        "file": name,
        "car": car,
        "vin": vin,
        "sequence": sequence,
        "start": format_time(start) if start is not None else None,
        "end": format_time(end) if end is not None else None,
        "rows": rows,
        "columns": [{"name": c.name, "unit": c.unit, "header": c.header,
                     "source": column_source(c)} for c in columns],
        "separator": separator,
        "size": size,
        "sha256": sha256,
        "eccm_version": __version__,
        "clock": list(clock),
        "obd_protocol": protocol or None,
        "recovered": recovered,
        "obd": dict(car_facts) if car_facts else None,
        "profiles": profile_names(car_facts),
    }


def profile_names(car_facts: Optional[Mapping[str, Any]]) -> List[str]:
    """The vehicle profiles a record was polled with, by file name: the path on the car's
    Pi means nothing to the fleet, the name says which signal set the columns follow."""
    paths = (car_facts or {}).get("profiles") or []
    return [path.rsplit("/", 1)[-1] for path in paths if isinstance(path, str)]


def dump_manifest(manifest: Mapping[str, Any]) -> bytes:
    """Stable bytes: the same manifest always uploads as the same object."""
    return (json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False)
            + "\n").encode("utf-8")


class ManifestError(ValueError):
    """A manifest that cannot be trusted to describe its record."""


def load_manifest(data: bytes, record_name: str) -> Dict[str, Any]:
    """Parse and check a manifest read from disk; ManifestError says what is wrong."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"not JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ManifestError("not an ECCM record manifest")
    if manifest.get("file") != record_name:
        raise ManifestError(f"describes {manifest.get('file')!r}, not {record_name!r}")
    if not valid_car(manifest.get("car")):
        raise ManifestError(f"car {manifest.get('car')!r} is not a valid CAR_IDENTIFIER")
    named = parse_file_name(record_name)
    if named is not None and named[0] != manifest["car"]:
        raise ManifestError(f"says car {manifest['car']!r}, the file name "
                            f"{named[0]!r}")
    sha = manifest.get("sha256")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ManifestError("no sha256")
    if not isinstance(manifest.get("size"), int):
        raise ManifestError("no size")
    return manifest


def sibling_prefix(prefix: str, suffix: str) -> str:
    """A tree beside the records' (PREFIX-index, PREFIX-parquet), never inside it: a table
    or a listing of the records never meets another tree's objects."""
    head = prefix.strip("/")
    return head + suffix if head else suffix.lstrip("-")


def key_partition(key: str) -> Tuple[str, str, str]:
    """(car, day, file name) of a key .../car=CAR/date=DAY/NAME; ValueError otherwise."""
    parts = key.split("/")
    if len(parts) < 3 or not parts[-3].startswith("car=") or \
            not parts[-2].startswith("date="):
        raise ValueError(f"{key!r} is not a car=/date= key")
    return parts[-3][4:], parts[-2][5:], parts[-1]


def index_key(prefix: str, record_key: str) -> str:
    """Where the index entry of the record stored under record_key goes: by day first, so
    one day of the whole fleet is one short listing; named by the record's own key, which
    only that record ever holds, so an entry is never shared."""
    car, day, name = key_partition(record_key)
    return f"{sibling_prefix(prefix, INDEX_SUFFIX)}/date={day}/car={car}/{name}.json"


def index_entry(manifest: Mapping[str, Any], record_key: str) -> Dict[str, Any]:
    """What the index says of one stored record: where it and its manifest are, and what a
    reader needs to choose and read it without fetching the manifest first."""
    car, day, _ = key_partition(record_key)
    columns = manifest.get("columns")
    if isinstance(columns, list) and all(isinstance(c, dict) for c in columns):
        columns = [{k: c.get(k) for k in ("name", "unit", "header", "source")}
                   for c in columns]  # else as it is: the reader refuses it, saying why
    return {
        "format": INDEX_FORMAT,
        "key": record_key,
        "manifest": record_key + MANIFEST_SUFFIX,
        "car": car,
        "date": day,
        **{field: manifest.get(field) for field in (
            "file", "vin", "start", "end", "rows", "size", "sha256", "separator",
            "eccm_version", "profiles")},
        "columns": [] if columns is None else columns,
    }


def valid_separator(value: object) -> bool:
    """A record's separator as the configuration allows it (MONITORING_FILE_SEPARATION_
    CHARACTER): one character, not a letter, digit, quote or line break."""
    return isinstance(value, str) and len(value) == 1 and value not in "\"\r\n" and \
        not value.isalnum()


def looks_like_record(name: str, first_line: bytes) -> bool:
    """A file ECCM wrote (an older version or before an unclean stop), by name and header:
    exports and plots next to it share the name but not the header."""
    return parse_file_name(name) is not None and first_line.startswith(
        TIME_COLUMN.header.encode())
