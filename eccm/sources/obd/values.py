"""Mode-01 commands and responses -> record columns with fixed units and plain values.

Pure functions (no adapter I/O). A command is python-OBD's (PIDs up to 0x5F) or ECCM's own
j1979.PidSpec (the PIDs past python-OBD's table). A column's unit is fixed per command --
for python-OBD's learnt from its own decoder applied to an all-zero payload -- so the
header is known before the first answer and never changes within a file.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

from eccm.core.state import Column
from eccm.sources.obd.frames import ecu_acronym
from eccm.sources.obd.j1979 import PIDS, PidSpec

if TYPE_CHECKING:
    import obd

# python-OBD is imported by the functions that use it, so that the names below can be read
# without it (config checks a vehicle profile on a laptop; the lake's tools).

# The adapter's own reading of the car's battery (ELM327 AT RV), recorded with the car's
# values under this standard name.
VOLTAGE_COLUMN = Column("BATTERY_VOLTAGE", "V")

# pint unit names python-OBD uses -> the short unit written in headers.
UNIT_NAMES = {
    "degree_Celsius": "degC",
    "revolutions_per_minute": "rpm",
    "kilometer_per_hour": "km/h",
    "gps": "g/s",
    "percent": "%",
    "kilopascal": "kPa",
    "pascal": "Pa",
    "volt": "V",
    "milliampere": "mA",
    "second": "s",
    "minute": "min",
    "kilometer": "km",
    "count": "count",
    "ratio": "ratio",
    "degree": "deg",
    "lph": "L/h",
    "newton_meter": "Nm",
}


def unknown_mode01(names: Sequence[str]) -> List[str]:
    """The names that are not python-OBD mode-01 values (config: OBD_FAST_PIDS)."""
    import obd
    return [n for n in names if not obd.commands.has_name(n) or obd.commands[n].mode != 1]


# Mode-01 PIDs that describe the adapter or which PIDs exist, not the engine.
NOT_ENGINE_VALUES = {"PIDS_A", "PIDS_B", "PIDS_C", "O2_SENSORS", "O2_SENSORS_ALT"}
# Monitor-status PIDs: decoded into a MIL flag and a DTC count.
STATUS_PIDS = {"STATUS", "STATUS_DRIVE_CYCLE"}
# The check-engine light now (PID 01's MIL bit: 1 on, 0 off).
MIL_COLUMN = "STATUS_MIL"


def decode_data(cmd: Any, data: bytes) -> Any:
    """A mode-01 PID's data bytes (after the '41 pid' echo) -> its value: python-OBD's
    decoder, or for ECCM's own PIDs {column name: value}. ValueError on a wrong length."""
    if isinstance(cmd, PidSpec):
        return cmd.decode(data)
    return decode_payload(cmd, bytes([0x41, cmd.pid]) + data)


def decode_payload(cmd: "obd.OBDCommand", data: bytes) -> Any:
    """Decode a whole answer (e.g. b'\\x41\\x0c\\x1a\\xf8') with python-OBD's decoder.

    The answer must have the command's exact length: a short one is never padded (a
    padded '410C1A' would read as RPM 1664), a long one never cut. ValueError otherwise.
    """
    from obd.protocols import ECU
    from obd.protocols.protocol import Frame, Message
    if cmd.bytes and len(data) != cmd.bytes:
        raise ValueError(f"{cmd.name} takes {cmd.bytes} bytes, got {len(data)}")
    message = Message([Frame("")])
    message.ecu = ECU.ENGINE
    message.data = bytearray(data)
    return cmd.decode([message])


def unit_of(cmd: "obd.OBDCommand") -> Optional[str]:
    """The fixed short unit of a command's values; None if it is not a quantity."""
    try:
        head = bytes([0x40 + (cmd.mode or 0), cmd.pid or 0])
        probe = decode_payload(cmd, head + bytes(max(0, cmd.bytes - len(head))))
    except (ValueError, IndexError, TypeError, ArithmeticError):
        return None
    units = getattr(probe, "units", None)
    if units is None:
        return None
    name = str(units)
    return UNIT_NAMES.get(name, name.replace("_", " "))


def is_recordable(cmd: Any) -> bool:
    if isinstance(cmd, PidSpec):
        return True
    return cmd.mode == 1 and cmd.name not in NOT_ENGINE_VALUES


def columns_for(cmd: Any) -> List[Column]:
    if isinstance(cmd, PidSpec):
        return list(cmd.columns)  # a PID with several quantities: a column each
    if cmd.name in STATUS_PIDS:
        return [Column(f"{cmd.name}_MIL"), Column(f"{cmd.name}_DTC_COUNT", "count")]
    return [Column(cmd.name, unit_of(cmd) or "")]


def flatten(cmd: Any, value: Any) -> Dict[str, Any]:
    """A decoded value -> {column name: plain number or text}; {} for no value."""
    if value is None:
        return {}
    if isinstance(cmd, PidSpec):
        return dict(value)
    if cmd.name in STATUS_PIDS:
        return {f"{cmd.name}_MIL": int(bool(value.MIL)),
                f"{cmd.name}_DTC_COUNT": int(value.DTC_count)}
    return {cmd.name: plain(value)}


def plain(value: Any) -> Any:
    """Quantity -> its magnitude; bool -> 0/1; tuples of text -> one text."""
    magnitude = getattr(value, "magnitude", None)
    if magnitude is not None:
        return magnitude
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        parts = [str(plain(v)) for v in value if v not in (None, "")]
        return "; ".join(parts)
    if isinstance(value, (bytes, bytearray)):
        return value.decode("ascii", "replace")
    return str(value)


def session_columns(commands: List[Any]) -> Tuple[Column, ...]:
    cols: List[Column] = []
    for cmd in commands:
        cols.extend(columns_for(cmd))
    return tuple(cols)


def ecu_prefixes(engine: int, names: Mapping[int, Optional[str]]) -> Dict[int, str]:
    """{ECU address: the prefix of its column names}: none for the engine (today's
    names), else the acronym of the ECU's own name (J1979 mode 09 PID 0A, 'TCM-...'
    -> 'TCM.') or, without one or when two ECUs share it, its address ('ECU7E9.')."""
    acronyms = {ecu: ecu_acronym(name) if name else None for ecu, name in names.items()
                if ecu != engine}
    counts = Counter(a for a in acronyms.values() if a)
    prefixes = {engine: ""}
    for ecu, acronym in sorted(acronyms.items()):
        usable = acronym and counts[acronym] == 1 and not acronym.startswith("ECU")
        prefixes[ecu] = f"{acronym}." if usable else f"ECU{ecu:X}."
    return prefixes


def standard_units() -> Dict[str, str]:
    """Every value the OBD source records under a standard name -> the unit ECCM always
    records it in: python-OBD's mode-01 values, ECCM's own PIDs and the adapter's battery
    voltage (a profile's signal may not take these names; the fleet's lake keeps plain
    names for them). ImportError without python-OBD."""
    import obd
    log = logging.getLogger("obd")
    level = log.level
    log.setLevel(logging.CRITICAL)  # python-OBD's decoders are probed for their units
    try:
        found = {c.name: c.unit for cmd in obd.commands.modes[1]
                 if cmd is not None and is_recordable(cmd) for c in columns_for(cmd)}
    finally:
        log.setLevel(level)
    found.update(_own_units())
    return found


def _own_units() -> Dict[str, str]:
    """The standard names ECCM itself defines: its PIDs past python-OBD's table and the
    adapter's voltage."""
    found = {c.name: c.unit for spec in PIDS.values() for c in spec.columns}
    found[VOLTAGE_COLUMN.name] = VOLTAGE_COLUMN.unit
    return found


def reserved_names() -> List[str]:
    """The names the OBD source's values take, which a vehicle profile's signal must not:
    every standard one; without python-OBD (a laptop checking a profile) ECCM's own, and
    the daemon checks the rest when it loads the profile."""
    try:
        return list(standard_units())
    except ImportError:
        return list(_own_units())
