"""SAE J1979 mode-01 PIDs 0x61-0xC4, decoded by ECCM itself.

python-OBD 0.7.3 decodes mode 01 only up to PID 0x5F. These are the later PIDs with a
published formula: pure functions from the data bytes after the '41 pid' echo to values.

Lengths and formulas: SAE J1979 / ISO 15031-5 as summarised in Wikipedia's "OBD-II PIDs"
table. Where that table names no formula or no layout (which support bit goes with which
value), a PID is here only if the independently published decoders agree on it: BMW's OBD
SGBD tables, AWS IoT FleetWise's J1979 table, AndrOBD, scapy and OBDex (lone outliers
noted at the end). A support byte A means: bit n set, the n-th value follows; the values of
clear bits are never returned. 0x64 names its points as J1979/J1939 do (idle is point 1).

Left out, the sources disagreeing or giving no formula:
  0x6B EGR temp., 0x6F turbo inlet pressure: bits 4-7 select a wide range, read differently.
  0x70 boost, 0x71 VGT: the order of the support bits differs.
  0x74 turbo speed: 1, 0.1 and 10 rpm per bit are all published.
  0x7A/0x7B DPF pressure: the delta is published as signed, unsigned and offset.
  0x8C/0x9C wide-range O2: the concentration scale differs tenfold.
  0x8F PM sensor output: signed or unsigned.
  0x9A hybrid/EV data: the current is signed or offset, the voltage's support bit in one
    source only.
  0x9B DEF sensor, 0x9F fuel system use: layouts inconsistent or incomplete.
  0x81/0x82/0x89/0x8A AECD run times: 21 or 41 bytes.
  0x7D/0x7E NTE status, 0x88 SCR inducement, 0x8B aftertreatment, 0x90-0x94 WWH-OBD:
    status records without an agreed layout.
  0xA1/0xA3/0xA7/0xA8 (no formula), 0xC3/0xC4 (no clear definition).
  0xA4: the gear ratio only; the gear number has no published support bit.
Lone outliers overruled: FleetWise's 0x69 error and 0x83 scales, the 0x9D/0x9E scales of
two unsourced tables. 0x68 is 7 bytes; Wikipedia lists only its first two sensors (3).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from eccm.core.state import Column

__all__ = ["PIDS", "PidSpec", "spec"]

_Decoder = Callable[[bytes], Dict[str, Any]]


@dataclass(frozen=True)
class PidSpec:
    pid: int                       # 0x61..0xC4
    name: str                      # UPPER_SNAKE name, python-OBD style
    size: int                      # data bytes after the '41 pid' echo
    columns: Tuple[Column, ...]    # every column this PID can fill, fixed units
    decoder: Callable[[bytes], Dict[str, Any]]   # the data bytes -> {column name: value}
    mode: int = 1                  # as python-OBD's commands say, for code handling both

    def decode(self, data: bytes) -> Dict[str, Any]:
        """Raise ValueError unless len(data) == self.size; else self.decoder(data)."""
        if len(data) != self.size:
            raise ValueError(f"PID 0x{self.pid:02X} {self.name} takes {self.size} data "
                             f"bytes, got {len(data)}")
        return self.decoder(bytes(data))


@dataclass(frozen=True)
class _Field:
    """One quantity: `width` big-endian unsigned bytes from `at`, times `scale` plus
    `offset`, rounded to `digits` decimals (None: an exact int); `flag` reads one bit of
    the byte instead; `bit` is the support bit in byte A it needs."""
    part: str
    unit: str
    at: int
    width: int = 1
    scale: Fraction = Fraction(1)
    offset: int = 0
    digits: Optional[int] = None
    bit: Optional[int] = None
    flag: Optional[int] = None

    def __post_init__(self) -> None:
        if self.digits is None and self.scale.denominator != 1:
            raise ValueError(f"{self.part}: a fractional scale needs digits")

    def value(self, data: bytes) -> Any:
        raw = int.from_bytes(data[self.at:self.at + self.width], "big")
        if self.flag is not None:
            return raw >> self.flag & 1
        exact = raw * self.scale + self.offset
        if self.digits is None:
            return int(exact)
        return float(round(exact, self.digits))

    def present(self, data: bytes) -> bool:
        return self.bit is None or bool(data[0] >> self.bit & 1)


def _decoder(columns: Sequence[str], fields: Sequence[_Field]) -> _Decoder:
    def decode(data: bytes) -> Dict[str, Any]:
        """The values present in `data`, by column name."""
        return {col: f.value(data) for col, f in zip(columns, fields) if f.present(data)}
    return decode


def _spec(pid: int, name: str, size: int, fields: Sequence[_Field]) -> PidSpec:
    names = [f"{name}_{f.part}" if f.part else name for f in fields]
    columns = tuple(Column(n, f.unit) for n, f in zip(names, fields))
    return PidSpec(pid, name, size, columns, _decoder(names, fields))


_PCT = Fraction(100, 255)


def _percent(part: str, at: int, bit: Optional[int] = None) -> _Field:
    return _Field(part, "%", at, scale=_PCT, digits=2, bit=bit)


def _torque(part: str, at: int) -> _Field:
    return _Field(part, "%", at, offset=-125)


def _temp(part: str, at: int, bit: Optional[int] = None) -> _Field:
    return _Field(part, "degC", at, offset=-40, bit=bit)


def _temp_wide(part: str, at: int, bit: int) -> _Field:
    return _Field(part, "degC", at, 2, Fraction(1, 10), -40, 1, bit)


def _kpa10(part: str, at: int, bit: int) -> _Field:
    return _Field(part, "kPa", at, 2, Fraction(10), bit=bit)


def _u16(part: str, unit: str, at: int, scale: Fraction, digits: int,
         bit: Optional[int] = None) -> _Field:
    return _Field(part, unit, at, 2, scale, digits=digits, bit=bit)


def _egt(pid: int, name: str, first: int) -> PidSpec:
    return _spec(pid, name, 9, [_temp_wide(f"S{first + i}", 1 + 2 * i, i)
                                for i in range(4)])


_SPECS = (
    _spec(0x61, "DRIVER_DEMAND_TORQUE", 1, [_torque("", 0)]),
    _spec(0x62, "ACTUAL_ENGINE_TORQUE", 1, [_torque("", 0)]),
    _spec(0x63, "ENGINE_REF_TORQUE", 2, [_Field("", "Nm", 0, 2)]),
    _spec(0x64, "ENGINE_TORQUE_DATA", 5, [_torque("IDLE", 0), _torque("POINT_2", 1),
                                          _torque("POINT_3", 2), _torque("POINT_4", 3),
                                          _torque("POINT_5", 4)]),
    _spec(0x65, "AUX_IO", 2, [_Field("PTO_ACTIVE", "", 1, bit=0, flag=0),
                              _Field("AT_IN_GEAR", "", 1, bit=1, flag=1),
                              _Field("MT_IN_GEAR", "", 1, bit=2, flag=2),
                              _Field("GLOW_PLUG_LAMP", "", 1, bit=3, flag=3)]),
    _spec(0x66, "MAF_SENSOR", 5, [_u16("A", "g/s", 1, Fraction(1, 32), 5, 0),
                                  _u16("B", "g/s", 3, Fraction(1, 32), 5, 1)]),
    _spec(0x67, "ECT_SENSOR", 3, [_temp("1", 1, 0), _temp("2", 2, 1)]),
    _spec(0x68, "IAT_SENSOR", 7, [_temp(part, 1 + i, i) for i, part in enumerate(
        ("B1S1", "B1S2", "B1S3", "B2S1", "B2S2", "B2S3"))]),
    _spec(0x69, "EGR_CONTROL", 7, [
        _percent("A_CMD", 1, 0), _percent("A_ACT", 2, 1),
        _Field("A_ERROR", "%", 3, scale=Fraction(100, 128), offset=-100, digits=5, bit=2),
        _percent("B_CMD", 4, 3), _percent("B_ACT", 5, 4),
        _Field("B_ERROR", "%", 6, scale=Fraction(100, 128), offset=-100, digits=5, bit=5)]),
    _spec(0x6A, "DIESEL_AIR_FLOW", 5, [_percent("A_CMD", 1, 0), _percent("A_POS", 2, 1),
                                       _percent("B_CMD", 3, 2), _percent("B_POS", 4, 3)]),
    _spec(0x6C, "THROTTLE_CONTROL", 5, [_percent("A_CMD", 1, 0), _percent("A_POS", 2, 1),
                                        _percent("B_CMD", 3, 2), _percent("B_POS", 4, 3)]),
    _spec(0x6D, "FUEL_RAIL", 11, [
        _kpa10("A_PRESSURE_CMD", 1, 0), _kpa10("A_PRESSURE", 3, 1), _temp("A_TEMP", 5, 2),
        _kpa10("B_PRESSURE_CMD", 6, 3), _kpa10("B_PRESSURE", 8, 4), _temp("B_TEMP", 10, 5)]),
    _spec(0x6E, "INJECTION_PRESSURE", 9, [_kpa10("A_CMD", 1, 0), _kpa10("A", 3, 1),
                                          _kpa10("B_CMD", 5, 2), _kpa10("B", 7, 3)]),
    _spec(0x72, "WASTEGATE", 5, [_percent("A_CMD", 1, 0), _percent("A_POS", 2, 1),
                                 _percent("B_CMD", 3, 2), _percent("B_POS", 4, 3)]),
    _spec(0x73, "EXHAUST_PRESSURE", 5, [_u16("B1", "kPa", 1, Fraction(1, 100), 2, 0),
                                        _u16("B2", "kPa", 3, Fraction(1, 100), 2, 1)]),
    *(_spec(pid, name, 7, [_temp("COMPRESSOR_IN", 1, 0), _temp("COMPRESSOR_OUT", 2, 1),
                           _temp_wide("TURBINE_IN", 3, 2), _temp_wide("TURBINE_OUT", 5, 3)])
      for pid, name in ((0x75, "TURBO_A_TEMP"), (0x76, "TURBO_B_TEMP"))),
    _spec(0x77, "CHARGE_AIR_TEMP", 5, [_temp(part, 1 + i, i) for i, part in enumerate(
        ("B1S1", "B1S2", "B2S1", "B2S2"))]),
    _egt(0x78, "EGT_BANK_1", 1),
    _egt(0x79, "EGT_BANK_2", 1),
    _spec(0x7C, "DPF_TEMP", 9, [_temp_wide(part, 1 + 2 * i, i) for i, part in enumerate(
        ("B1_IN", "B1_OUT", "B2_IN", "B2_OUT"))]),
    _spec(0x7F, "ENGINE_RUN_TIME", 13, [_Field(part, "s", 1 + 4 * i, 4, bit=i) for i, part
                                        in enumerate(("TOTAL", "IDLE", "PTO"))]),
    _spec(0x83, "NOX_SENSOR", 9, [_Field(part, "ppm", 1 + 2 * i, 2, bit=i) for i, part
                                  in enumerate(("B1S1", "B1S2", "B2S1", "B2S2"))]),
    _spec(0x84, "MANIFOLD_SURFACE_TEMP", 1, [_temp("", 0)]),
    _spec(0x85, "NOX_REAGENT", 10, [_u16("RATE", "L/h", 1, Fraction(1, 200), 3, 0),
                                    _u16("DEMAND", "L/h", 3, Fraction(1, 200), 3, 1),
                                    _percent("LEVEL", 5, 2),
                                    _Field("WARNING_TIME", "s", 6, 4, bit=3)]),
    _spec(0x86, "PM_SENSOR", 5, [_u16("B1S1", "mg/m3", 1, Fraction(1, 80), 4, 0),
                                 _u16("B2S1", "mg/m3", 3, Fraction(1, 80), 4, 1)]),
    _spec(0x87, "MAP_SENSOR", 5, [_u16("A", "kPa", 1, Fraction(1, 32), 5, 0),
                                  _u16("B", "kPa", 3, Fraction(1, 32), 5, 1)]),
    _spec(0x8D, "THROTTLE_POS_G", 1, [_percent("", 0)]),
    _spec(0x8E, "ENGINE_FRICTION_TORQUE", 1, [_torque("", 0)]),
    _egt(0x98, "EGT_BANK_1_EXT", 5),
    _egt(0x99, "EGT_BANK_2_EXT", 5),
    _spec(0x9D, "FUEL_MASS_RATE", 4, [_u16("ENGINE", "g/s", 0, Fraction(1, 50), 2),
                                      _u16("VEHICLE", "g/s", 2, Fraction(1, 50), 2)]),
    _spec(0x9E, "EXHAUST_FLOW_RATE", 2, [_u16("", "kg/h", 0, Fraction(1, 5), 1)]),
    _spec(0xA2, "CYLINDER_FUEL_RATE", 2, [_u16("", "mg/stroke", 0, Fraction(1, 32), 5)]),
    _spec(0xA4, "TRANS_GEAR_RATIO", 4, [_u16("", "ratio", 2, Fraction(1, 1000), 3, 1)]),
    _spec(0xA5, "DEF_DOSING", 4, [_Field("", "%", 1, scale=Fraction(1, 2), digits=1,
                                         bit=0)]),
    _spec(0xA6, "ODOMETER", 4, [_Field("", "km", 0, 4, Fraction(1, 10), digits=1)]),
    _spec(0xA9, "ABS_DISABLE_SWITCH", 4, [_Field("", "", 1, bit=0, flag=0)]),
)

PIDS: Dict[int, PidSpec] = {s.pid: s for s in _SPECS}


def spec(pid: int) -> Optional[PidSpec]:
    """The decoder of a mode-01 PID ECCM decodes itself; None for any other PID."""
    return PIDS.get(pid)
