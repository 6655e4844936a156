"""A recorded drive: read a record file, summarise it, export its track. No plotting here.

Reading is strict about what it needs (a TIME column, one separator) and tolerant of what
a power cut leaves (a torn last line is skipped and reported).
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple
from xml.etree import ElementTree as ET

from eccm.core.text import plural
from eccm.core.text import format_time
from eccm.sources.gnss.columns import NAMES as GNSS_NAMES

EARTH_RADIUS_M = 6_371_008.8
PETROL_AFR = 14.7           # stoichiometric air/fuel mass ratio
PETROL_DENSITY = 745.0      # g per litre
SEPARATORS = (",", "\t", "|", ";")
COORD_DIGITS = 7            # ~1 cm: past it, decimals are float noise, not position
VALUE_DIGITS = 3            # engine values, metres, km, seconds in JSON


class TripError(Exception):
    """The file cannot be read as an ECCM record; the message says why."""


@dataclass
class Trip:
    path: Path
    columns: List[str]                      # names without units: TIME, RPM, LATITUDE...
    units: Dict[str, str]
    times: List[datetime]
    values: Dict[str, List[Any]]            # column -> cells (float, str or None)
    skipped: int = 0                        # torn or malformed lines left out
    notes: List[str] = field(default_factory=list)

    def series(self, name: str) -> List[Optional[float]]:
        return [v if isinstance(v, float) else None for v in self.values.get(name, [])]

    @property
    def has_gnss(self) -> bool:
        return any(v is not None for v in self.series("LATITUDE"))

    def points(self) -> List[Tuple[int, float, float]]:
        """(row index, lat, lon) of rows with a position."""
        lats, lons = self.series("LATITUDE"), self.series("LONGITUDE")
        return [(i, la, lo) for i, (la, lo) in enumerate(zip(lats, lons))
                if la is not None and lo is not None]

    def fixes(self) -> List[Tuple[int, float, float]]:
        """points(), one per GNSS fix: rows are written more often than a receiver fixes
        (2 rows/s, 1 fix/s), so a fix repeats; the first row of each is kept. Rows without
        a GNSS time cannot be told apart and are all kept."""
        stamps = self.values.get("GNSS_TIME")
        if stamps is None:
            return self.points()
        kept: List[Tuple[int, float, float]] = []
        previous: Any = None
        for point in self.points():
            stamp = stamps[point[0]]
            if stamp is None or stamp != previous:
                kept.append(point)
            previous = stamp
        return kept


def _parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def _cell(text: str) -> Any:
    if text == "":
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else None


def _split_header(name: str) -> Tuple[str, str]:
    match = re.fullmatch(r"(.+?) \((.*)\)", name)
    return (match[1], match[2]) if match else (name, "")


def load(path: Path) -> Trip:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TripError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    text = data.decode("utf-8", "replace")
    nuls = text.count("\0")
    text = text.replace("\0", "")  # zero-filled blocks a power cut can leave behind
    if not text.strip():
        raise TripError(f"{path}: the file is empty")
    first = text.splitlines()[0]
    try:
        separator = max(SEPARATORS, key=lambda s: len(next(csv.reader([first],
                                                                      delimiter=s))))
        header = next(csv.reader([first], delimiter=separator))
        rows = list(csv.reader(io.StringIO(text), delimiter=separator))[1:]
    except csv.Error as exc:
        raise TripError(f"{path}: not an ECCM record file ({exc})") from None
    if len(header) < 2 or _split_header(header[0])[0] != "TIME":
        raise TripError(f"{path}: not an ECCM record file (the first line must be a header "
                        "starting with 'TIME (UTC)' and values separated by , tab | or ;)")
    names, units = zip(*(_split_header(h) for h in header))
    trip = Trip(Path(path), list(names), dict(zip(names, units)), [],
                {n: [] for n in names[1:]})
    torn_last = not text.endswith("\n")
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            trip.skipped += 1
            continue
        try:
            moment = _parse_time(row[0])
        except ValueError:
            trip.skipped += 1
            continue
        trip.times.append(moment)
        for name, cell in zip(names[1:], row[1:]):
            trip.values[name].append(_cell(cell))
    if torn_last and trip.skipped:
        trip.notes.append("the last line was torn (power cut?) and was left out")
    elif trip.skipped:
        trip.notes.append(f"left out {plural(trip.skipped, 'malformed line')}")
    if nuls:
        trip.notes.append(f"left out {plural(nuls, 'NUL byte')} (a power cut's zero-filled "
                          "block?)")
    if not trip.times:
        raise TripError(f"{path}: a header but no readable rows")
    return trip


def haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Metres along the great circle."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def _integral(trip: Trip, name: str) -> Optional[float]:
    """Trapezoid integral over hours of a per-hour quantity (km/h -> km, L/h -> L)."""
    values = trip.series(name)
    if not any(v is not None for v in values):
        return None
    total = 0.0
    for i in range(1, len(values)):
        a, b = values[i - 1], values[i]
        if a is None or b is None:
            continue
        hours = (trip.times[i] - trip.times[i - 1]).total_seconds() / 3600
        total += (a + b) / 2 * hours
    return total


def _max(trip: Trip, name: str) -> Optional[float]:
    values = [v for v in trip.series(name) if v is not None]
    return _tidy(max(values)) if values else None


def _tidy(value: Any, digits: int = VALUE_DIGITS) -> Any:
    """A float without noise (12.345678901234567 -> 12.346): rounded, for JSON."""
    return round(value, digits) if isinstance(value, float) else value


def summarize(trip: Trip) -> Dict[str, Any]:
    start, end = trip.times[0], trip.times[-1]
    duration = (end - start).total_seconds()
    points = trip.points()
    gnss_km = None
    if len(points) >= 2:
        gnss_km = sum(haversine(a[1], a[2], b[1], b[2])
                      for a, b in zip(points, points[1:])) / 1000
    speed_km = _integral(trip, "SPEED")
    rpm, speed = trip.series("RPM"), trip.series("SPEED")
    idle: Optional[float] = None
    if rpm and speed:  # engine turning, car standing
        idle = sum((trip.times[i] - trip.times[i - 1]).total_seconds()
                   for i in range(1, len(trip.times))
                   if (rpm[i - 1] or 0) > 0 and speed[i - 1] == 0)
    fuel, fuel_source = _integral(trip, "FUEL_RATE"), "FUEL_RATE"
    if fuel is None:
        maf = _integral(trip, "MAF")  # (g/s) x hours
        if maf is not None:
            fuel = maf * 3600 / PETROL_AFR / PETROL_DENSITY
            fuel_source = f"MAF (petrol, air/fuel {PETROL_AFR}, {PETROL_DENSITY:g} g/L)"
    if fuel is None:
        fuel_source = None
    distance = speed_km if speed_km is not None else gnss_km
    dtcs = _max(trip, "STATUS_DTC_COUNT")
    return {
        "file": trip.path.name,
        "start": format_time(start),
        "end": format_time(end),
        "duration_s": round(duration, 3),
        "rows": len(trip.times),
        "distance_gnss_km": None if gnss_km is None else round(gnss_km, 3),
        "distance_speed_km": None if speed_km is None else round(speed_km, 3),
        "max_speed_kmh": _max(trip, "SPEED"),
        "avg_speed_kmh": round(distance / (duration / 3600), 1)
        if distance is not None and duration > 0 else None,
        "idle_s": None if idle is None else round(idle, 1),
        "rpm_max": _max(trip, "RPM"),
        "coolant_max_c": _max(trip, "COOLANT_TEMP"),
        "fuel_l": None if fuel is None else round(fuel, 3),
        "fuel_source": fuel_source,
        "dtc_count": None if dtcs is None else int(dtcs),
        "notes": trip.notes,
    }


def format_duration(seconds: float) -> str:
    """155.001 -> '2 min 35 s', 3725 -> '1 h 2 min 5 s': to the second, as people read it."""
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min {secs} s"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def format_distance(km: float) -> str:
    """Metres below 1 km, else km to 10 m (GNSS and speed sensors are no finer)."""
    return f"{km * 1000:.0f} m" if km < 1 else f"{km:.2f} km"


def _number(digits: int, unit: str) -> Callable[[float], str]:
    return lambda value: f"{value:.{digits}f} {unit}".rstrip()


SUMMARY_LABELS: List[Tuple[str, str, Callable[[Any], str]]] = [
    ("start", "Start (UTC)", str), ("end", "End (UTC)", str),
    ("duration_s", "Duration", format_duration),
    ("distance_gnss_km", "Distance (GNSS)", format_distance),
    ("distance_speed_km", "Distance (speed)", format_distance),
    ("max_speed_kmh", "Max speed", _number(0, "km/h")),
    ("avg_speed_kmh", "Average speed", _number(0, "km/h")),
    ("idle_s", "Idle time", format_duration),
    ("rpm_max", "RPM max", _number(0, "rpm")),
    ("coolant_max_c", "Coolant max", _number(0, "degC")),
    ("fuel_l", "Fuel used", _number(2, "L")), ("dtc_count", "Trouble codes", str),
]


def format_summary(summary: Dict[str, Any]) -> str:
    width = max(len(label) for _, label, _ in SUMMARY_LABELS)
    lines = [summary["file"]]
    for key, label, show in SUMMARY_LABELS:
        value = summary[key]
        shown = "-" if value is None else show(value)
        if key == "fuel_l" and value is not None and summary["fuel_source"]:
            shown += f"  (from {summary['fuel_source']})"
        lines.append(f"  {label:<{width}}  {shown}")
    lines += [f"  note: {note}" for note in summary["notes"]]
    return "\n".join(lines)


ENGINE_EXCLUDE = set(GNSS_NAMES)


def _engine(trip: Trip, row: int) -> Dict[str, Any]:
    return {name: _tidy(trip.values[name][row]) for name in trip.columns[1:]
            if name not in ENGINE_EXCLUDE and trip.values[name][row] is not None}


def _point_time(trip: Trip, row: int) -> datetime:
    stamp = trip.values.get("GNSS_TIME", [None] * (row + 1))[row]
    if isinstance(stamp, str):
        try:
            return _parse_time(stamp)
        except ValueError:
            pass
    return trip.times[row]


def _require_track(trip: Trip) -> List[Tuple[int, float, float]]:
    """(row, lat, lon) of each GNSS fix once, coordinates rounded to ~1 cm."""
    points = trip.fixes()
    if not points:
        raise TripError(f"{trip.path}: no GNSS position in this file, nothing to export "
                        "(record with GPS_POSITION_MONITORING=yes)")
    return [(row, round(lat, COORD_DIGITS), round(lon, COORD_DIGITS))
            for row, lat, lon in points]


def _altitudes(trip: Trip) -> List[Optional[float]]:
    return [None if a is None else round(a, 2) for a in trip.series("ALTITUDE")]


def to_gpx(trip: Trip) -> str:
    points = _require_track(trip)  # before gpxpy: a file without positions says so first
    import gpxpy.gpx
    gpx = gpxpy.gpx.GPX()
    gpx.creator = "ECCM"
    gpx.nsmap["eccm"] = "https://eccm.invalid/gpx/1"
    track = gpxpy.gpx.GPXTrack(name=trip.path.stem)
    segment = gpxpy.gpx.GPXTrackSegment()
    track.segments.append(segment)
    gpx.tracks.append(track)
    alts = _altitudes(trip)
    for row, lat, lon in points:
        point = gpxpy.gpx.GPXTrackPoint(lat, lon, elevation=alts[row] if alts else None,
                                        time=_point_time(trip, row))
        engine = ET.Element("eccm:engine")
        for name, value in _engine(trip, row).items():
            child = ET.SubElement(engine, f"eccm:{name.lower()}")
            child.text = f"{value:g}" if isinstance(value, float) else str(value)
        point.extensions.append(engine)
        segment.points.append(point)
    return gpx.to_xml()


def to_geojson(trip: Trip) -> str:
    points = _require_track(trip)
    alts = _altitudes(trip)
    features = [{
        "type": "Feature",
        "geometry": {"type": "LineString",
                     "coordinates": [[lon, lat] + ([alts[r]] if alts and alts[r] is not None
                                                   else []) for r, lat, lon in points]},
        "properties": {"name": trip.path.stem, **summarize(trip)},
    }]
    for row, lat, lon in points:
        features.append({
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [lon, lat]},
            "properties": {"time": _point_time(trip, row).isoformat().replace("+00:00", "Z"),
                           **_engine(trip, row)},
        })
    return json.dumps({"type": "FeatureCollection", "features": features}, indent=1)


def to_kml(trip: Trip) -> str:
    points = _require_track(trip)
    alts = _altitudes(trip)
    ns = "http://www.opengis.net/kml/2.2"
    ET.register_namespace("", ns)
    kml = ET.Element(f"{{{ns}}}kml")
    doc = ET.SubElement(kml, f"{{{ns}}}Document")
    ET.SubElement(doc, f"{{{ns}}}name").text = trip.path.stem
    line = ET.SubElement(doc, f"{{{ns}}}Placemark")
    ET.SubElement(line, f"{{{ns}}}name").text = "track"
    geometry = ET.SubElement(line, f"{{{ns}}}LineString")
    ET.SubElement(geometry, f"{{{ns}}}altitudeMode").text = "clampToGround"
    ET.SubElement(geometry, f"{{{ns}}}coordinates").text = " ".join(
        f"{lon},{lat},{alts[r] if alts and alts[r] is not None else 0}"
        for r, lat, lon in points)
    for row, lat, lon in points:
        mark = ET.SubElement(doc, f"{{{ns}}}Placemark")
        when = ET.SubElement(ET.SubElement(mark, f"{{{ns}}}TimeStamp"), f"{{{ns}}}when")
        when.text = _point_time(trip, row).isoformat().replace("+00:00", "Z")
        extended = ET.SubElement(mark, f"{{{ns}}}ExtendedData")
        for name, value in _engine(trip, row).items():
            data = ET.SubElement(extended, f"{{{ns}}}Data", name=name)
            ET.SubElement(data, f"{{{ns}}}value").text = str(value)
        ET.SubElement(ET.SubElement(mark, f"{{{ns}}}Point"),
                      f"{{{ns}}}coordinates").text = f"{lon},{lat}"
    return ET.tostring(kml, encoding="unicode", xml_declaration=True)


EXPORTERS = {"gpx": to_gpx, "geojson": to_geojson, "kml": to_kml}

