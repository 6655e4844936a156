"""A small fleet's record files, written by ECCM's own writer (RecordFile, RowFormat,
build_manifest: what the recorder does when it closes a file), with the simulated car's
values: three cars of different PID sets and column orders, text columns, empty cells,
over as many days and drives as asked. And the figures a reader expects from them,
computed from the CSV text with the csv module alone (not with the code under test).
"""
from __future__ import annotations

import csv
import shutil
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from eccm.core.state import Column
from eccm.sim.car import battery_state, drive_state
from eccm.sinks.layout import build_manifest
from eccm.sinks.records import RecordFile, write_manifest
from eccm.sinks.rows import TIME_COLUMN, RowFormat, file_name, parse_time
from eccm.sinks.upload import S3Settings, S3Store, pending_files
from eccm.sources.gnss.columns import COLUMNS as GNSS_COLUMNS

INTERVAL = 0.5  # s between rows, the recorder's RECORD_INTERVAL
RPM_FACTOR = {"AB-123-CD": 1.0, "EF-456-GH": 0.82, "EV-789-IJ": 1.35}  # three engines
DAYS = ("2026-01-10", "2026-01-11")


def obd(*names: Tuple[str, str]) -> List[Column]:
    return [Column(name, unit, source="obd") for name, unit in names]


GNSS = [replace(c, source="gnss") for c in GNSS_COLUMNS]

# Three cars: a petrol car with a GNSS receiver, a diesel with a gearbox ECU (its columns
# in another order), a hybrid read through the demo profile (text enumerations).
CARS: Dict[str, Dict[str, Any]] = {
    "AB-123-CD": {
        "vin": "VF1AB000123456789",
        "columns": obd(("STATUS_MIL", ""), ("ENGINE_LOAD", "%"), ("COOLANT_TEMP", "degC"),
                       ("RPM", "rpm"), ("SPEED", "km/h"), ("THROTTLE_POS", "%"),
                       ("MAF", "g/s"), ("FUEL_TYPE", ""))
        + [Column("BATTERY_VOLTAGE", "V", source="adapter")] + GNSS,
        "profiles": [],
    },
    "EF-456-GH": {
        "vin": "WVWZZZ1KZ6W000456",
        "columns": obd(("SPEED", "km/h"), ("RPM", "rpm"), ("COOLANT_TEMP", "degC"),
                       ("FUEL_RATE", "L/h"), ("ODOMETER", "km"),
                       ("ACTUAL_ENGINE_TORQUE", "%"), ("TCM.SPEED", "km/h"),
                       ("TCM.TRANS_GEAR", "")),
        "profiles": [],
    },
    "EV-789-IJ": {
        "vin": "1G1FZ6S00L4000789",
        "columns": obd(("RPM", "rpm"), ("SPEED", "km/h"))
        + [Column(n, u, source="profile") for n, u in (
            ("DEMO_HVBAT_SOC", "%"), ("DEMO_HVBAT_V", "V"), ("DEMO_HVBAT_I", "A"),
            ("DEMO_CHRG_STATE", ""))]
        + [Column("BATTERY_VOLTAGE", "V", source="adapter")] + GNSS,
        "profiles": ["/home/pi/eccm/eccm/profiles/demo-ev.json"],
    },
}


def values(car: str, t: float, row: int) -> Dict[str, Any]:
    """Every column's value at t seconds into a drive, as the sources would give it."""
    s = drive_state(t)
    b = battery_state(t)
    rpm = s.rpm * RPM_FACTOR[car]
    fix = row >= 6  # the receiver has no fix for the first 3 s: empty position cells
    out: Dict[str, Any] = {
        "STATUS_MIL": 0, "ENGINE_LOAD": round(s.load, 6), "COOLANT_TEMP": round(s.coolant),
        "RPM": None if row % 37 == 5 else round(rpm * 4) / 4,  # a missed answer now and then
        "SPEED": round(s.speed), "THROTTLE_POS": round(s.throttle, 6),
        "MAF": round(s.maf, 2), "FUEL_TYPE": "Gasoline", "BATTERY_VOLTAGE": round(s.voltage, 1),
        "FUEL_RATE": round(s.fuel_rate, 2), "ODOMETER": round(s.odometer, 1),
        "ACTUAL_ENGINE_TORQUE": round(s.torque), "TCM.SPEED": round(s.speed),
        "TCM.TRANS_GEAR": s.gear,
        "DEMO_HVBAT_SOC": round(b.soc * 2) / 2, "DEMO_HVBAT_V": round(b.volts, 1),
        "DEMO_HVBAT_I": round(b.amps, 1),
        "DEMO_CHRG_STATE": "NOT_CHARGING" if row % 200 else "CHARGING_AC, 16 A",
    }
    if fix:
        out.update({"LATITUDE": round(48.85 + t * 1e-5, 7), "LONGITUDE": round(2.35 + t * 2e-5, 7),
                    "ALTITUDE": 35, "GNSS_SPEED": round(s.speed / 3.6, 2), "TRACK": 90,
                    "FIX_MODE": 3, "SATELLITES": 9, "HDOP": 0.9})
    return out


def write_drive(folder: Path, car: str, start: datetime, rows: int, sequence: int,
                columns: Optional[Sequence[Column]] = None,
                extra: Callable[[float], Dict[str, Any]] = lambda t: {}) -> Path:
    """One finished record with its manifest in folder/outbox, as the recorder leaves it."""
    about = CARS[car]
    columns = list(columns if columns is not None else about["columns"])
    header = [replace(TIME_COLUMN, source="clock"), *columns]
    fmt = RowFormat(",")
    name = file_name(car, start, ".csv", sequence, f"{sequence:06x}")
    outbox = folder / "outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    record = RecordFile(folder, outbox, name, fmt.header(header), fsync_interval=3600)
    offset = sequence * 37.0  # each drive somewhere else in the simulated loop
    for row in range(rows):
        moment = start + timedelta(seconds=row * INTERVAL)
        if car == "AB-123-CD" and row % 50 == 49:
            moment += timedelta(milliseconds=3)  # a late tick, as on a busy Pi
        given = {**values(car, offset + row * INTERVAL, row), **extra(row * INTERVAL)}
        given["GNSS_TIME"] = moment if "LATITUDE" in given else None
        record.write_row(fmt.line([moment] + [given.get(c.name) for c in columns]),
                         moment, "gnss")
    target = record.close()
    assert target is not None
    write_manifest(target, build_manifest(
        name=name, car=car, columns=header, separator=",", rows=record.rows,
        size=record.size, sha256=record.sha256, start=record.first, end=record.last,
        clock=record.clocks, sequence=sequence, vin=about["vin"],
        protocol="ISO 15765-4 (CAN 11/500)",
        car_facts={"profiles": about["profiles"]} if about["profiles"] else None))
    return target


def write_record(folder: Path, car: str, start: datetime,
                 columns: Sequence[Tuple[str, str]], rows: Sequence[Sequence[Any]],
                 separator: str = ",", extension: str = ".csv", sequence: int = 1,
                 source: str = "obd", bad_time: bool = False) -> Path:
    """One finished record of any columns ((name, unit), all of one source), separator
    and extension, rows 0.5 s apart, with its manifest in folder/outbox, written by
    ECCM's writer. `bad_time`: its last row's time cell is text no reader takes."""
    header = [replace(TIME_COLUMN, source="clock"),
              *[Column(n, u, source=source) for n, u in columns]]
    fmt = RowFormat(separator)
    name = file_name(car, start, extension, sequence, f"{sequence:06x}")
    outbox = folder / "outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    record = RecordFile(folder, outbox, name, fmt.header(header), fsync_interval=3600)
    for row, cells in enumerate(rows):
        moment = start + timedelta(seconds=row * INTERVAL)
        shown: Any = "not a time" if bad_time and row == len(rows) - 1 else moment
        record.write_row(fmt.line([shown, *cells]), moment, "gnss")
    target = record.close()
    assert target is not None
    write_manifest(target, build_manifest(
        name=name, car=car, columns=header, separator=separator, rows=record.rows,
        size=record.size, sha256=record.sha256, start=record.first, end=record.last,
        clock=record.clocks, sequence=sequence, vin=None, protocol=""))
    return target


def write_fleet(folder: Path, drives_per_day: int = 2, rows: Tuple[int, int] = (240, 360),
                days: Sequence[str] = DAYS) -> Dict[str, Path]:
    """Record folders of every car (folder/CAR/outbox): drives_per_day drives each day,
    of rows[0]..rows[1] rows. The car -> its record folder."""
    out = {}
    for number, car in enumerate(CARS):
        records = folder / car
        sequence = 1
        for day in days:
            for drive in range(drives_per_day):
                start = datetime.fromisoformat(day).replace(
                    hour=(6 + 2 * drive) % 24, minute=5 * number, second=drive % 60,
                    tzinfo=timezone.utc)
                count = rows[0] + (sequence * 53 + number * 31) % (rows[1] - rows[0] + 1)
                write_drive(records, car, start, count, sequence)
                sequence += 1
        out[car] = records
    return out


def upload_copy(records: Dict[str, Path], into: Path, settings: S3Settings) -> int:
    """Upload a copy of each car's finished records (the originals stay for the next
    upload) with the car's own uploader; how many records went up."""
    count = 0
    for car, folder in records.items():
        outbox = into / car / "outbox"
        shutil.copytree(folder / "outbox", outbox)
        store = S3Store(settings, car, outbox)
        for path in pending_files(outbox):
            store.upload(path)
            count += 1
    return count


def figures(files: Sequence[Path]) -> Dict[str, Dict[str, Any]]:
    """Per car, from the CSV text: rows, min and max RPM, distance (km: the trapezoid
    integral of SPEED over TIME between consecutive rows of one record, time differences
    in whole microseconds), and the cars' columns."""
    cars: Dict[str, Dict[str, Any]] = {}
    for path in files:
        car = path.name.split("_")[0]
        got = cars.setdefault(car, {"rows": 0, "rpm": [], "km": 0.0, "records": 0})
        got["records"] += 1
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        before = None
        for row in rows:
            got["rows"] += 1
            if row["RPM (rpm)"] != "":
                got["rpm"].append(float(row["RPM (rpm)"]))
            moment = parse_time(row["TIME (UTC)"])
            speed = float(row["SPEED (km/h)"]) if row["SPEED (km/h)"] != "" else None
            if before is not None and speed is not None and before[1] is not None:
                micros = (moment - before[0]) // timedelta(microseconds=1)
                got["km"] += micros / 1e6 * (before[1] + speed) / 2 / 3600
            before = (moment, speed)
    return {car: {"rows": v["rows"], "min_rpm": min(v["rpm"]), "max_rpm": max(v["rpm"]),
                  "km": v["km"], "records": v["records"]} for car, v in sorted(cars.items())}


def record_files(records: Dict[str, Path]) -> List[Path]:
    return sorted(p for folder in records.values() for p in (folder / "outbox").glob("*.csv"))
