"""What the MQTT sink publishes: the live documents and Home Assistant's discovery configs.

Pure: snapshots in, (topic, JSON-ready dict) out; no broker, no threads (sinks/mqtt.py
sends them). The values are the record's: the same columns, the same freshness rule and
the same text of each value (rows.row_cells, rows.format_cell), so what a consumer sees
live is what the record file holds, never a stale value carried over.

Why one document per interval rather than a retained topic per value: measured with
Mosquitto (tests/bench/bench_mqtt.py, README "Home Assistant and MQTT"), a topic per value
costs 35 times the messages and 1.3 (bare values) to 3.7 times (JSON with unit and time)
the bytes for the demo car's 35 values, and a retained value outlives the drive it
belongs to.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from eccm.core.state import CONNECTED, Column, EngineRun, Snapshot
from eccm.sinks.rows import format_cell, format_time, row_cells
from eccm.sources.gnss.columns import POSITION, SOURCE as GNSS
from eccm.sources.obd.values import MIL_COLUMN

ONLINE, OFFLINE = "online", "offline"

# ECCM's unit -> (Home Assistant's unit, device class or ""). Only pairs Home Assistant
# accepts for that class (its sensor DEVICE_CLASS_UNITS); any other unit is shown as it
# is, without a class.
UNITS: Mapping[str, Tuple[str, str]] = {
    "km/h": ("km/h", "speed"),
    "m/s": ("m/s", "speed"),
    "degC": ("°C", "temperature"),
    "kPa": ("kPa", "pressure"),
    "Pa": ("Pa", "pressure"),
    "V": ("V", "voltage"),
    "mA": ("mA", "current"),
    "A": ("A", "current"),
    "km": ("km", "distance"),
    "m": ("m", "distance"),
    "s": ("s", "duration"),
    "min": ("min", "duration"),
    "deg": ("°", ""),
    "mg/m3": ("mg/m³", ""),
}
# The unit of columns that hold a moment (an ISO 8601 UTC time as text).
TIME_UNIT = "UTC"
# The position's angles, whose mean makes no sense (a compass heading): no statistics.
NO_STATISTICS = tuple(POSITION[k] for k in ("latitude", "longitude", "course"))
# Units of counters that only grow (a reset, as after clearing codes, starts a new cycle
# in Home Assistant's statistics).
TOTAL_UNITS = ("km",)

_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")


@dataclass(frozen=True)
class Topics:
    """The sink's own topics under one prefix (default eccm/<car>)."""
    prefix: str

    @property
    def state(self) -> str:
        return f"{self.prefix}/state"

    @property
    def position(self) -> str:
        return f"{self.prefix}/position"

    @property
    def dtc(self) -> str:
        return f"{self.prefix}/dtc"

    @property
    def availability(self) -> str:
        return f"{self.prefix}/availability"


def object_id(name: str) -> str:
    """A value name as Home Assistant's ids allow ([a-zA-Z0-9_-]); a name that had to be
    changed gets a short hash of itself, so TCM.SPEED and TCM_SPEED stay two entities."""
    safe = _UNSAFE.sub("_", name)
    if safe == name:
        return name.lower()
    return f"{safe}_{hashlib.sha1(name.encode()).hexdigest()[:6]}".lower()


def json_value(value: Any) -> Any:
    """A cell as JSON: the number or text the record file holds for it, None if empty."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    text = format_cell(value)
    if isinstance(value, (bool, int, float)):
        return float(text) if "." in text else int(text)
    return text


def state_document(snap: Snapshot, moment: datetime, max_age: float) -> Dict[str, Any]:
    """The values of this moment as the recorder would write them (empty between runs):
    {"time", "obd" (the adapter's link), "values": {name: value or None}}."""
    values: Dict[str, Any] = {}
    if snap.engine_run is not None:
        columns = snap.declared()
        cells = row_cells(snap, columns, moment, max_age)[1:]
        values = {col.name: json_value(cell) for col, cell in zip(columns, cells)}
    obd = snap.links.get("obd")
    return {"time": format_time(moment), "obd": obd.state if obd else "unknown",
            "values": values}


def position_document(snap: Snapshot, max_age: float) -> Optional[Dict[str, Any]]:
    """The GNSS position if a fresh one is known (device_tracker attributes), else None:
    a tracker keeps its last position with the time it was taken, never a guess."""
    found = {}
    for key, name in POSITION.items():
        reading = snap.fresh(name, max_age)
        if reading is not None and reading.origin == GNSS:
            found[key] = json_value(reading.value)
    if found.get("latitude") is None or found.get("longitude") is None:
        return None
    return {k: v for k, v in found.items() if v is not None}


def dtc_document(run: Optional[EngineRun]) -> Optional[Dict[str, Any]]:
    """The trouble codes the car reported when the run began; None before any run. A
    list that could not be read is null with the reason, never an empty list."""
    if run is None:
        return None
    # Read when the run began, or later on request (DTC, CLEAR_DTC through the socket).
    dtcs = run.dtcs_now if run.dtcs_now is not None else (run.facts.get("dtcs") or {})
    read_at = dtcs.get("read_at")
    stored = dtcs.get("stored")
    doc: Dict[str, Any] = {"count": len(stored) if stored is not None else None,
                           "read_at": (format_time(datetime.fromisoformat(read_at))
                                       if read_at else format_time(run.started))}
    for kind in ("stored", "pending", "permanent"):
        doc[kind] = dtcs.get(kind)
        if dtcs.get(f"{kind}_unread"):
            doc[f"{kind}_unread"] = dtcs[f"{kind}_unread"]
    return doc


def _template(name: str) -> str:
    """Jinja that reads one value of the state document; a value absent or empty renders
    None, which Home Assistant shows as unknown."""
    return "{{ value_json['values'][%s] | default(None) }}" % _quote(name)


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def discovery(car: str, vin: Optional[str], columns: Sequence[Column], topics: Topics,
              prefix: str, interval: float, version: str) -> List[Tuple[str, Dict[str, Any]]]:
    """Home Assistant discovery configs (topic, payload) for one car: a sensor per value,
    the MIL and the adapter's link as binary sensors, a trouble-code count with the codes
    as attributes, and a device_tracker for the position."""
    node = object_id(f"eccm_{car}")
    device: Dict[str, Any] = {"identifiers": [node], "name": car}
    if vin:
        device["serial_number"] = vin
    common = {"device": device,
              "origin": {"name": "ECCM", "sw_version": version},
              "availability_topic": topics.availability}
    # Values older than three documents are not shown as current (a stuck publisher).
    expire = max(int(math.ceil(3 * interval)), 5)
    configs: List[Tuple[str, Dict[str, Any]]] = []

    def add(component: str, oid: str, payload: Dict[str, Any]) -> None:
        # default_entity_id: Home Assistant's successor of object_id (deprecated 2025.10).
        payload = {**payload, **common, "unique_id": f"{node}_{oid}",
                   "default_entity_id": f"{component}."
                                        + re.sub(r"[^a-z0-9_]", "_", f"{node}_{oid}")}
        configs.append((f"{prefix}/{component}/{node}/{oid}/config", payload))

    for col in columns:
        payload: Dict[str, Any] = {"name": col.name, "state_topic": topics.state,
                                   "value_template": _template(col.name),
                                   "expire_after": expire}
        if col.unit == TIME_UNIT:  # a moment (GNSS_TIME): text, shown as a time
            payload["device_class"] = "timestamp"
            add("sensor", object_id(col.name), payload)
            continue
        unit, device_class = UNITS.get(col.unit, (col.unit, ""))
        if unit and col.unit not in ("count", "ratio", ""):
            payload["unit_of_measurement"] = unit
        if device_class:
            payload["device_class"] = device_class
        if col.unit and col.name not in NO_STATISTICS:
            # A value with a unit is a number: long-term statistics.
            payload["state_class"] = ("total_increasing" if col.unit in TOTAL_UNITS
                                      else "measurement")
        add("sensor", object_id(col.name), payload)
    add("binary_sensor", "mil", {
        "name": "Check engine light", "device_class": "problem",
        "state_topic": topics.state, "expire_after": expire,
        "value_template": "{%% set v = value_json['values'][%s] | default(None) %%}"
                          "{{ 'ON' if v == 1 else ('OFF' if v == 0 else None) }}"
                          % _quote(MIL_COLUMN)})
    add("binary_sensor", "car_connected", {
        "name": "Car connected", "device_class": "connectivity",
        "state_topic": topics.state, "expire_after": expire,
        "value_template": "{{ 'ON' if value_json['obd'] == '%s' else 'OFF' }}" % CONNECTED})
    add("sensor", "dtc_count", {
        "name": "Trouble codes", "state_topic": topics.dtc, "icon": "mdi:engine-outline",
        "value_template": "{{ value_json['count'] }}",
        "json_attributes_topic": topics.dtc})
    add("device_tracker", "position", {
        "name": "Position", "source_type": "gps",
        "json_attributes_topic": topics.position})
    return configs
