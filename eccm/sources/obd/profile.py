"""Vehicle profiles: OBDb signal-set JSON files -> manufacturer requests and their values.

Pure parsing (`parse`: text in, Profile out; `load` only reads the files and folders it is
given, no adapter I/O): the poller sends `ProfileCommand.request` to `header`, listens to
`receive`, and hands the ECU's whole positive answer to `ProfileCommand.decode`.

ECCM reads the signal-set format of OBDb (github.com/OBDb, one repository per vehicle,
file signalsets/v3/default.json), so a user can point ECCM at that database's files. What
follows was checked against OBDb itself, not guessed:

- Document (OBDb/.schemas signals.json, the JSON schema every vehicle repository is
  validated with): the top level holds `commands` (required), `diagnosticLevel`,
  `signalGroups` and `synthetics`, and nothing else -- the schema forbids other keys, so
  an OBDb file has no place for a comment except a signal's `description`. A command has
  `hdr` (3 hex digits: 11-bit CAN; 4: 29-bit), `rax`, `eax`, `pri`, `tst`, `tmo`, `fcm1`,
  `dbg`, `din`, `dout`, `proto`, `filter`, `dbgfilter`, `cmd` and `freq` (seconds between
  two requests, > 0) and `signals`. `cmd` is one of {"01": "hh"}, {"21": "hh"},
  {"22": "hhhh"}. A signal has `id`, `name`, `fmt` (required), `path`, `description`,
  `hidden`, `suggestedMetric`; `fmt` has `len` (required), `bix`, `blsb`, `sign`, `mul`,
  `div`, `add`, `min`, `max`, `nullmin`, `nullmax`, `omin`, `omax`, `oval`, `unit`, `map`,
  and needs either `map` or both `max` and `unit`. Units are camel-case names
  (`percent`, `celsius`, `volts`, `amps`, `kilometersPerHour`, `noyes`, `scalar`, ...).
- Decoding (OBDb/.schemas python/can/signals.py and command_registry.py, the decoder that
  checks every repository's recorded answers; the Sidecar app's format page, the app
  OBDb is written for, in ClutchEngineering's site source "Extended OBD-II Parameters"):
  bit index 0 is the most significant bit of the first byte after the response service
  byte and the PID/DID echo (1 byte for 01 and 21, 2 for 22); bits run MSB first through
  the bytes, so a multi-byte field is big-endian; `blsb` reverses the bytes of the field
  before reading it; `sign` reads the field as two's complement over `len` bits; the value
  is raw * mul / div + add (mul, div default 1, add 0); `min` (default 0) and `max` are
  the valid range, which the app and OBDb's decoder clamp the value to; a value <=
  `nullmin` or >= `nullmax` is no value; an enumeration (`map`, keys the unsigned raw
  value in decimal) gives the entry's `value` text.
- Checked on recorded answers in the vehicle repositories' tests/test_cases:
  OBDb/Chevrolet-Bolt-EV 7E4.7EC.22434F (`62 43 4F 40` -> 64 - 40 = 24 degC: the byte after
  the echo is bix 0, add comes after scaling) and 7E4.7EC.228334 (0x35 * 100 / 255 ->
  20.78431); OBDb/Hyundai-Kona-Electric 7E2.7EA.2101 (service 21, bix 104 len 16 blsb
  sign: bytes D6 FE -> 0xFED6 = -298 / 100 = -2.98); OBDb/Honda-Civic DA10.10.222610
  (hdr DA10 is sent as 18DA10F1 and answered by 18DAF110; bix 184 is data byte 23).
  29-bit `rax` (OBDb/.schemas python/test_receive_address.py): 2 digits are the sender
  byte of 18DAF1xx, 6 digits the low 24 bits under the priority, 8 the whole ID.
  Over all recorded answers of eight of those repositories (the above, Ford-F-150,
  Kia-EV9, Porsche-Taycan, BMW-i3, Toyota-RAV4-Prime), this module gives OBDb's expected
  value for 101,631 signal values; it differs on 516, all where OBDb clamps a value
  outside [min, max] (see below). One anomaly seen and not followed: OBDb/SAEJ1979 writes
  fuel trims as mul 100, div 128, add -128, which only fits add-before-scaling; the other
  files, their recorded answers and both decoders put add after.

ECCM's choices, and why:
- A value outside [min, max] is not recorded (None), where OBDb's app clamps it: the
  schema calls the range the valid values, and a clamped 100 % from a 127.5 % reading
  would be written down as if measured. The range applies when max > min, as in OBDb; a
  `sign`ed field without `min` therefore keeps no negative value (min defaults to 0).
- Enumerations give the mapped text (e.g. 'CHARGING'), not the raw number: a record file
  must be readable without the profile at hand, and the column's type is then always text.
  A raw value the map lacks gives None (not a guess); `Signal.values` keeps the map.
- Numbers: int when mul, div and add make every value whole, float otherwise (a column's
  type never changes). Arithmetic is exact (fractions of the JSON literals) and floats are
  rounded to the decimals of the step mul/div and of add, or, for a step without a finite
  decimal form (100/255), to five significant digits of the step: 0.1 * 3 -> 0.3.
- Units are written as ECCM's short units ('%', 'degC', 'km/h', ...); no conversion
  (a `milesPerHour` signal stays 'mph'); a unit OBDb adds later is kept under its own name.
- Signal ids are the record's column names: letters, digits, '_', '.', '-' only, and
  unique across every profile loaded together (a clash is a ProfileError, never a rename).
- Commands ECCM cannot send as OBDb means them are left out, each with a line in
  `Profile.skipped`: extended addressing (`eax`), another tester address (`tst`), flow
  control mode 1 (`fcm1`), a diagnostic session to open (`din`/`dout`: ECCM never changes
  an ECU's session while the car is driven), a K-line protocol (`proto` 9141-2) or one
  unknown, or the functional address (7DF, 29-bit DB33) without `rax`, where any ECU may
  answer; likewise a signal with unit `ascii` (text fields are not decoded). A file-wide
  `diagnosticLevel` is noted there too and not entered. Model-year `filter`s are not
  applied (ECCM does not know the model year: an ECU that lacks a DID refuses it, 7F 22
  31), `tmo` is left to the adapter's own timeout, `dbg`/`dbgfilter`/`omin`/`omax`/`oval`
  are display or debugging hints.
- Every other problem is a ProfileError naming the file and the JSON path of the field:
  among them a missing `rax` that cannot be inferred (only 7E0..7E7 -> 7E8..7EF and
  29-bit DAxx -> 18DAF1xx can), a field ending past the longest ISO-TP answer (4095
  bytes), `len` outside 1..64, a repeated key, an id used twice. Unknown keys are
  tolerated: the format grows.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

DEFAULT_PERIOD = 5.0  # seconds, for a file without `freq` (OBDb requires it)
ISO_TP_MAX = 4095  # bytes in the longest ISO 15765-2 message
SERVICES = {"01": 1, "21": 1, "22": 2}  # service -> PID/DID bytes (OBDb allows these only)
NEGATIVE = 0x7F
TESTER = 0xF1  # the scan tool's address (ISO 15765-4; OBDb's default `tst`)
PRIORITY = 0x18  # 29-bit CAN priority of ISO 15765-4 diagnostics
FUNCTIONAL = {0x7DF, PRIORITY << 24 | 0xDB33 << 8 | TESTER}  # to every OBD ECU at once
FUNCTIONAL_RECEIVE = -1

# ISO 14229-1 negative response codes a profile request may meet.
NRC_NAMES = {0x10: "general reject", 0x11: "service not supported",
             0x12: "sub-function not supported", 0x13: "wrong message length",
             0x14: "response too long", 0x22: "conditions not correct",
             0x31: "request out of range", 0x33: "security access denied",
             0x78: "response pending", 0x7E: "sub-function not supported in this session",
             0x7F: "service not supported in this session"}

# OBDb unit names (OBDb/.schemas signals.json) -> ECCM's short units.
UNITS = {
    "ampereHours": "Ah", "amps": "A", "bars": "bar", "celsius": "degC",
    "centimeters": "cm", "coulombs": "C", "degrees": "deg", "fahrenheit": "degF",
    "feet": "ft", "framesPerSecond": "fps", "gallons": "gal", "gallonsPerHour": "gal/h",
    "gigahertz": "GHz", "gramsPerLiter": "g/L", "gramsPerSecond": "g/s", "gravity": "g",
    "hertz": "Hz", "hex": "", "hours": "h", "inches": "in", "inchPound": "lbf.in",
    "joules": "J", "kelvin": "K", "kiloampereHours": "kAh", "kiloamps": "kA",
    "kilogramsPerHour": "kg/h", "kilohertz": "kHz", "kilojoules": "kJ", "kilometers": "km",
    "kilometersPerHour": "km/h", "kiloohms": "kOhm", "kilopascal": "kPa", "kilovolts": "kV",
    "kilowattHours": "kWh", "kilowattHoursPer100Kilometers": "kWh/100km",
    "kilowattHoursPer100Miles": "kWh/100mi", "kilowatts": "kW", "liters": "L",
    "litersPerHour": "L/h", "megahertz": "MHz", "megaohms": "MOhm", "meters": "m",
    "metersPerSecond": "m/s", "metersPerSecondSquared": "m/s2", "microhertz": "uHz",
    "microohms": "uOhm", "miles": "mi", "milesPerKilowattHour": "mi/kWh",
    "milesPerHour": "mph", "milliampereHours": "mAh", "milliamps": "mA",
    "milligramsPerDeciliter": "mg/dL", "milligramsPerStroke": "mg/stroke",
    "millihertz": "mHz", "millimeters": "mm", "milliohms": "mOhm", "milliseconds": "ms",
    "millivolts": "mV", "milliwatts": "mW", "minutes": "min", "nanohertz": "nHz",
    "newtonMeters": "Nm", "normal": "", "noyes": "", "offon": "", "ohms": "Ohm",
    "percent": "%", "poundFoot": "lbf.ft", "psi": "psi", "radians": "rad", "rpm": "rpm",
    "scalar": "", "seconds": "s", "terahertz": "THz", "unknown": "", "volts": "V",
    "watts": "W", "yards": "yd", "yesno": "",
}
TEXT_UNITS = {"ascii"}  # fields OBDb decodes as text: not supported (the signal is skipped)

_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")  # fullmatch; '.' is for ECU prefixes
_NEW_UNIT = re.compile(r"[A-Za-z][A-Za-z0-9]*")  # fullmatch
MAX_MAGNITUDE = 10 ** 15  # |mul|, |div|, |add|, |min|, |max| and the like
MAX_EXPONENT = 20         # digits either side of the point a number may reach
MAX_DIGITS = 30           # significant digits of a number (no float carries more)
_HEX = re.compile(r"[0-9A-Fa-f]+")  # fullmatch (a '$' would let a trailing newline in)
_DECIMAL_KEY = re.compile(r"0|[1-9][0-9]*")  # fullmatch

Number = Union[int, Decimal]


class ProfileError(ValueError):
    """A profile ECCM cannot use: the file, the JSON path of the field, what is wrong."""

    def __init__(self, file: str, field: str, message: str):
        super().__init__(f"{file}: {field}: {message}")
        self.file, self.field, self.message = file, field, message


@dataclass(frozen=True)
class Signal:
    """One value in a command's answer; `id` is its record column, in `unit`."""
    id: str
    name: str
    unit: str
    metric: str
    bix: int = 0                  # first bit, counted MSB first from the data after the echo
    bits: int = 8
    signed: bool = False
    lsb_first: bool = False       # OBDb `blsb`: the field's bytes are little-endian
    scale: Fraction = Fraction(1)  # mul / div
    offset: Fraction = Fraction(0)  # add
    low: Optional[Fraction] = None  # valid range [low, high]; None: no range check
    high: Optional[Fraction] = None
    null_low: Optional[Fraction] = None   # value <= null_low: no value
    null_high: Optional[Fraction] = None  # value >= null_high: no value
    values: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}),
                                      hash=False)  # enumeration: raw -> text
    decimals: Optional[int] = None  # None: whole numbers (int); else floats rounded so

    def raw(self, data: bytes) -> Optional[int]:
        """The field's integer (signed if `signed`; enumerations unsigned), or None when
        `data` (the answer after the service byte and the PID/DID echo) is too short."""
        end = self.bix + self.bits
        if end > len(data) * 8:
            return None
        first, last = self.bix // 8, (end - 1) // 8
        chunk = data[first:last + 1]
        if self.lsb_first and self.bits > 8:
            chunk = chunk[::-1]  # byte-aligned: checked when loaded
        value = int.from_bytes(chunk, "big") >> ((last + 1) * 8 - end) & ((1 << self.bits) - 1)
        if self.signed and not self.values and value >> (self.bits - 1):
            value -= 1 << self.bits
        return value

    def decode(self, data: bytes) -> Optional[Any]:
        """The value in `data` (the answer after the echo): int, float or enumeration text;
        None when the bytes do not reach the field or the value is not a valid one."""
        raw = self.raw(data)
        if raw is None:
            return None
        if self.values:
            return self.values.get(raw)
        value = raw * self.scale + self.offset
        if self.null_low is not None and value <= self.null_low:
            return None
        if self.null_high is not None and value >= self.null_high:
            return None
        if self.low is not None and not self.low <= value <= self.high:
            return None
        if self.decimals is None:
            return int(value)
        return float(round(value, self.decimals))


@dataclass(frozen=True)
class ProfileCommand:
    """One request to one ECU and the signals in its answer."""
    header: int        # 11-bit (0x7E4) or the whole 29-bit ID (0x18DA10F1)
    receive: int       # the ID the ECU answers from (0x7EC, 0x18DAF110)
    service: int       # 0x01, 0x21 or 0x22
    pid: bytes         # 1 byte (01, 21) or 2 (22)
    period: float      # seconds between two requests (OBDb `freq`)
    signals: Tuple[Signal, ...]

    @property
    def request(self) -> str:
        """What the adapter sends, e.g. '228334'."""
        return f"{self.service:02X}{self.pid.hex().upper()}"

    def decode(self, message: bytes) -> Dict[str, Any]:
        """The positive answer (service + 0x40, the PID/DID echo, the data) -> {signal id:
        value} for the signals it carries valid values of. ValueError when the message is
        not the positive answer to this request."""
        if not message:
            raise ValueError("empty answer")
        if message[0] == NEGATIVE:
            code = message[2] if len(message) > 2 else None
            why = "no reason code" if code is None else \
                f"{code:02X}: {NRC_NAMES.get(code, 'unknown reason')}"
            raise ValueError(f"negative response to {self.request} ({why})")
        if message[0] != self.service + 0x40:
            raise ValueError(f"answer {message[0]:02X} is not the positive answer "
                             f"{self.service + 0x40:02X} to service {self.service:02X}")
        echo = message[1:1 + len(self.pid)]
        if echo != self.pid:
            raise ValueError(f"answer echoes {echo.hex().upper() or 'nothing'}, not "
                             f"{self.pid.hex().upper()}")
        data = message[1 + len(self.pid):]
        values = {}
        for signal in self.signals:
            value = signal.decode(data)
            if value is not None:
                values[signal.id] = value
        return values


@dataclass(frozen=True)
class Profile:
    """The usable commands of one file; `skipped` says what was left out and why."""
    path: str
    commands: Tuple[ProfileCommand, ...]
    skipped: Tuple[str, ...] = ()

    @property
    def signals(self) -> Tuple[Signal, ...]:
        return tuple(s for c in self.commands for s in c.signals)


def check_names(profiles: Sequence[Profile], taken: Iterable[str]) -> None:
    """ProfileError for a signal whose id is, in any case, a standard value's name (RPM, a
    GNSS field...) or another signal's: one column must never hold two values (and GET
    finds names in any case)."""
    seen = {name.upper(): "a standard value" for name in taken}
    for profile in profiles:
        for command in profile.commands:
            for signal in command.signals:
                owner = seen.get(signal.id.upper())
                if owner is not None:
                    raise ProfileError(profile.path, f"signal {signal.id}",
                                       f"its id is the name of {owner}: give it another id")
                seen[signal.id.upper()] = f"signal {signal.id} of {profile.path}"


def load(*paths: Union[str, Path]) -> List[Profile]:
    """Profiles from .json files and folders (every *.json in a folder, sorted); signal
    ids must be unique across all of them. ProfileError on the first problem."""
    files: List[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found = sorted(p for p in path.glob("*.json") if p.is_file())
            if not found:
                raise ProfileError(str(path), "folder", "holds no *.json profile")
            files.extend(found)
        else:
            files.append(path)
    profiles, owners = [], {}
    for path in files:
        profile, where = _Reader(str(path)).parse(_read(path))
        for signal_id, place in where.items():
            if signal_id in owners:
                raise ProfileError(str(path), f"{place}.id", f"{signal_id!r} is already the "
                                   f"id of {owners[signal_id]}: a column has one meaning")
            owners[signal_id] = f"{place} in {path}"
        profiles.append(profile)
    return profiles


def parse(text: str, file: str = "<profile>") -> Profile:
    """One signal set from its JSON text (pure: `load` reads the files); `file` is what
    its errors name. ProfileError on any problem."""
    return _Reader(file).parse(text)[0]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(str(path), "file",
                           f"cannot be read: {getattr(exc, 'strerror', None) or exc}") from None


class _Object(dict):
    """A JSON object that remembers keys written twice (json keeps the last silently)."""

    def __init__(self, pairs):
        super().__init__(pairs)
        self.repeated = sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)


class _Reader:
    """Parses one file's text; every error names the file and the field's JSON path."""

    def __init__(self, file: str):
        self.file = file
        self.skipped: List[str] = []
        self.ids: Dict[str, str] = {}  # signal id -> its JSON path

    def fail(self, where: str, message: str) -> ProfileError:
        return ProfileError(self.file, where, message)

    def parse(self, text: str) -> Tuple[Profile, Dict[str, str]]:
        try:
            document = json.loads(text, object_pairs_hook=_Object, parse_float=Decimal,
                                  parse_constant=Decimal)
        except json.JSONDecodeError as exc:
            raise self.fail(f"line {exc.lineno} column {exc.colno}",
                            f"not JSON: {exc.msg}") from None
        except RecursionError:
            raise self.fail("top level", "nested too deeply to be a signal set") from None
        except ValueError as exc:  # an integer of thousands of digits (int max str digits)
            raise self.fail("top level", f"not a signal set: {str(exc)[:80]}") from None
        if not isinstance(document, dict):
            raise self.fail("top level", "must be a JSON object with a \"commands\" list "
                            "(an OBDb signal set)")
        self.unique_keys(document, "top level")
        if "commands" not in document:
            raise self.fail("commands", "missing: an OBDb signal set lists its requests "
                            "in \"commands\"")
        commands = document["commands"]
        if not isinstance(commands, list):
            raise self.fail("commands", "must be a list")
        level = document.get("diagnosticLevel")
        if level is not None:
            self.hex_text(level, "diagnosticLevel", (2,))
            self.skipped.append(f"diagnosticLevel {level}: not entered (ECCM never changes "
                                "an ECU's diagnostic session); requests that need it are "
                                "refused by the ECU")
        usable = []
        for number, entry in enumerate(commands):
            command = self.command(entry, f"commands[{number}]")
            if command is not None:
                usable.append(command)
        profile = Profile(self.file, tuple(usable), tuple(self.skipped))
        return profile, self.ids

    def unique_keys(self, obj: Any, where: str) -> None:
        repeated = getattr(obj, "repeated", None)
        if repeated:
            raise self.fail(f"{where}.{repeated[0]}" if where != "top level" else repeated[0],
                            "written twice in the same object")

    def command(self, entry: Any, where: str) -> Optional[ProfileCommand]:
        if not isinstance(entry, dict):
            raise self.fail(where, "must be a JSON object")
        self.unique_keys(entry, where)
        for key in ("hdr", "cmd", "signals"):
            if key not in entry:
                raise self.fail(f"{where}.{key}", "missing")
        hdr = entry["hdr"]
        self.hex_text(hdr, f"{where}.hdr", (3, 4))
        wide = len(hdr) == 4
        priority = PRIORITY
        if wide and "pri" in entry:
            priority = self.hex_text(entry["pri"], f"{where}.pri", (2,))
            if priority > 0x1F:
                raise self.fail(f"{where}.pri", "a 29-bit CAN priority is 00..1F")
        if wide:
            header = priority << 24 | int(hdr, 16) << 8 | TESTER
        else:
            header = int(hdr, 16)
            if header > 0x7FF:
                raise self.fail(f"{where}.hdr", f"{hdr} is not an 11-bit CAN ID (000..7FF); "
                                "a 29-bit one is written with 4 digits, e.g. DA10")
        service, pid = self.service(entry["cmd"], f"{where}.cmd")
        reason = self.unsendable(entry, where, wide)
        # A command left out anyway needs no answer address (OBDb's app guesses it).
        receive = self.receive(entry, where, header, wide, priority) \
            if "rax" in entry or not reason else FUNCTIONAL_RECEIVE
        period = DEFAULT_PERIOD
        if "freq" in entry:
            period = float(self.number(entry["freq"], f"{where}.freq"))
            if not 0 < period < math.inf:
                raise self.fail(f"{where}.freq", "must be above 0 (seconds between two "
                                "requests)")
        label = f"{where} ({hdr} {service:02X}{pid.hex().upper()})"
        if receive == FUNCTIONAL_RECEIVE and not reason:
            reason = (f"sent to the functional address {hdr} without rax: any ECU may "
                      "answer, so whose answer it is cannot be checked")
        signals_list = entry["signals"]
        if not isinstance(signals_list, list) or not signals_list:
            raise self.fail(f"{where}.signals", "must be a non-empty list")
        signals = []
        for number, item in enumerate(signals_list):
            signal = self.signal(item, f"{where}.signals[{number}]", len(pid))
            if signal is not None:
                signals.append(signal)
        if reason:
            self.skipped.append(f"{label}: skipped: {reason}")
            return None
        if not signals:
            self.skipped.append(f"{label}: skipped: none of its signals can be decoded")
            return None
        return ProfileCommand(header, receive, int(service), pid, period, tuple(signals))

    def unsendable(self, entry: Dict[str, Any], where: str, wide: bool) -> Optional[str]:
        """Why ECCM cannot send this command as OBDb means it, or None."""
        if "eax" in entry:
            self.hex_text(entry["eax"], f"{where}.eax", (2,))
            return f"extended addressing (eax {entry['eax']}) is not supported"
        if "tst" in entry:
            tester = self.hex_text(entry["tst"], f"{where}.tst", (2,))
            if tester != TESTER:
                return f"tester address {entry['tst']} (tst): ECCM talks as F1"
        if entry.get("fcm1") is True:
            return "needs flow control mode 1 (fcm1), which ECCM does not set"
        for key in ("din", "dout"):
            if key in entry:
                self.hex_text(entry[key], f"{where}.{key}", (2,))
                return (f"needs diagnostic session {entry[key]} ({key}); ECCM never "
                        "changes an ECU's session")
        proto = entry.get("proto")
        if proto is not None:
            expected = {"15765-4-11bit": False, "15765-4-29bit": True}
            if proto not in expected:
                return f"protocol {proto!r} (proto): ECCM sends profile requests on CAN only"
            if expected[proto] != wide:
                raise self.fail(f"{where}.proto", f"{proto} does not match the "
                                f"{'29' if wide else '11'}-bit hdr")
        return None

    def service(self, cmd: Any, where: str) -> Tuple[int, bytes]:
        if not isinstance(cmd, dict) or len(cmd) != 1:
            raise self.fail(where, "must be one service and its PID, e.g. {\"22\": \"8334\"}")
        self.unique_keys(cmd, where)
        (key, value), = cmd.items()
        if key.upper() not in SERVICES:
            raise self.fail(f"{where}.{key}", f"unknown service {key!r}: profiles read with "
                            "01, 21 or 22 only")
        size = SERVICES[key.upper()]
        self.hex_text(value, f"{where}.{key}", (2 * size,))
        return int(key, 16), bytes.fromhex(value)

    def receive(self, entry: Dict[str, Any], where: str, header: int, wide: bool,
                priority: int) -> int:
        """`rax` in full; without it the ISO 15765-4 partner of the request ID."""
        rax = entry.get("rax")
        if rax is None:
            if not wide and 0x7E0 <= header <= 0x7E7:
                return header + 8
            if wide and (header >> 16) & 0xFF == 0xDA:
                target = (header >> 8) & 0xFF
                return priority << 24 | 0xDA << 16 | TESTER << 8 | target
            if header in FUNCTIONAL:
                return FUNCTIONAL_RECEIVE  # the caller skips the command
            raise self.fail(f"{where}.rax", "missing: the answer's ID can only be inferred "
                            "for 7E0..7E7 (7E8..7EF) and 29-bit DAxx (18DAF1xx); give rax")
        if wide:
            value = self.hex_text(rax, f"{where}.rax", (2, 6, 8))
            if len(rax) == 2:
                return priority << 24 | 0xDA << 16 | TESTER << 8 | value
            if len(rax) == 6:
                return priority << 24 | value
            if value > 0x1FFFFFFF:
                raise self.fail(f"{where}.rax", f"{rax} is not a 29-bit CAN ID")
            return value
        value = self.hex_text(rax, f"{where}.rax", (3,))
        if value > 0x7FF:
            raise self.fail(f"{where}.rax", f"{rax} is not an 11-bit CAN ID (000..7FF)")
        return value

    def signal(self, item: Any, where: str, echo: int) -> Optional[Signal]:
        if not isinstance(item, dict):
            raise self.fail(where, "must be a JSON object")
        self.unique_keys(item, where)
        for key in ("id", "name", "fmt"):
            if key not in item:
                raise self.fail(f"{where}.{key}", "missing")
        signal_id, name = item["id"], item["name"]
        if not isinstance(signal_id, str) or not _ID.fullmatch(signal_id):
            raise self.fail(f"{where}.id", "must be letters, digits, '_', '.' or '-' "
                            "(it names the record column)")
        if signal_id in self.ids:
            raise self.fail(f"{where}.id", f"{signal_id!r} is already the id of "
                            f"{self.ids[signal_id]}: a column has one meaning")
        self.ids[signal_id] = where
        if not isinstance(name, str) or not name.strip():
            raise self.fail(f"{where}.name", "must be a non-empty text")
        metric = item.get("suggestedMetric", "")
        if not isinstance(metric, str):
            raise self.fail(f"{where}.suggestedMetric", "must be a text")
        fmt, at = item["fmt"], f"{where}.fmt"
        if not isinstance(fmt, dict):
            raise self.fail(at, "must be a JSON object")
        self.unique_keys(fmt, at)
        bits = self.integer(fmt.get("len"), f"{at}.len", required=True)
        text = isinstance(fmt.get("unit"), str) and fmt["unit"] in TEXT_UNITS and \
            "map" not in fmt
        if not 1 <= bits <= (8 * ISO_TP_MAX if text else 64):
            raise self.fail(f"{at}.len", "must be 1..64 bits")
        bix = self.integer(fmt.get("bix", 0), f"{at}.bix")
        if bix < 0:
            raise self.fail(f"{at}.bix", "must be 0 or more")
        reach = 8 * (ISO_TP_MAX - 1 - echo)
        if bix + bits > reach:
            raise self.fail(f"{at}.bix", f"bits {bix}..{bix + bits - 1} lie past the longest "
                            f"answer (ISO-TP {ISO_TP_MAX} bytes: {reach} bits after the echo)")
        signed = self.flag(fmt, "sign", at)
        lsb_first = self.flag(fmt, "blsb", at)
        if lsb_first and bits > 8 and (bix % 8 or bits % 8):
            raise self.fail(f"{at}.blsb", "byte swapping needs a field of whole bytes "
                            "(bix and len multiples of 8)")
        common = dict(id=signal_id, name=name.strip(), metric=metric, bix=bix, bits=bits,
                      signed=signed, lsb_first=lsb_first)
        if "map" in fmt:
            return Signal(unit="", values=self.enumeration(fmt["map"], f"{at}.map"), **common)
        for key in ("max", "unit"):
            if key not in fmt:
                raise self.fail(f"{at}.{key}", "missing (a number needs max and unit; an "
                                "enumeration needs map)")
        unit = fmt["unit"]
        if not isinstance(unit, str):
            raise self.fail(f"{at}.unit", "must be a text")
        if text:
            self.skipped.append(f"{where} ({signal_id}): skipped: unit {unit!r} is text, "
                                "which ECCM does not decode")
            return None
        if unit in UNITS:
            short = UNITS[unit]
        elif _NEW_UNIT.fullmatch(unit):
            short = unit  # a unit newer than this table: kept under its OBDb name
        else:
            raise self.fail(f"{at}.unit", f"{unit!r} is not an OBDb unit (e.g. percent, "
                            "celsius, volts)")
        mul = self.fraction(fmt, "mul", at, 1)
        div = self.fraction(fmt, "div", at, 1)
        if mul == 0 or div == 0:
            raise self.fail(f"{at}.{'mul' if mul == 0 else 'div'}", "must not be 0")
        add = self.fraction(fmt, "add", at, 0)
        low, high = self.fraction(fmt, "min", at, 0), self.fraction(fmt, "max", at, None)
        if low > high:
            raise self.fail(f"{at}.min", f"{fmt.get('min')} is above max {fmt['max']}")
        scale = mul / div
        return Signal(unit=short, scale=scale, offset=add,
                      low=low if high > low else None, high=high if high > low else None,
                      null_low=self.fraction(fmt, "nullmin", at, None),
                      null_high=self.fraction(fmt, "nullmax", at, None),
                      decimals=_decimals(scale, add), **common)

    def enumeration(self, mapping: Any, where: str) -> Mapping[int, str]:
        if not isinstance(mapping, dict) or not mapping:
            raise self.fail(where, "must be a non-empty JSON object: raw value -> entry")
        self.unique_keys(mapping, where)
        values = {}
        for key, entry in mapping.items():
            at = f"{where}.{key[:20]}"
            if not _DECIMAL_KEY.fullmatch(key) or len(key) > 20:  # a 64-bit field at most
                raise self.fail(at, "keys are raw values in decimal (\"0\", \"1\", \"46\")")
            if isinstance(entry, dict):
                text = entry.get("value")
                at = f"{at}.value"
            else:
                text = entry
            if not isinstance(text, str) or not text:
                raise self.fail(at, "must be a non-empty text (e.g. {\"description\": "
                                "\"Charging\", \"value\": \"CHARGING\"})")
            values[int(key)] = text
        return MappingProxyType(values)

    def hex_text(self, value: Any, where: str, lengths: Tuple[int, ...]) -> int:
        if not isinstance(value, str) or len(value) not in lengths or not _HEX.fullmatch(value):
            digits = " or ".join(str(n) for n in lengths)
            raise self.fail(where, f"must be {digits} hex digits, got {value!r}")
        return int(value, 16)

    def number(self, value: Any, where: str) -> Number:
        if isinstance(value, bool) or not isinstance(value, (int, Decimal)) or \
                (isinstance(value, Decimal) and not value.is_finite()):
            raise self.fail(where, f"must be a number, got {_shown(value)}")
        # A scale or bound beyond any quantity a car sends (1e400, 2e999999999) would
        # overflow a float or take a Fraction forever: refused here, never at run time.
        if not -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE or \
                (isinstance(value, Decimal) and value != 0 and
                 (abs(value.adjusted()) > MAX_EXPONENT or
                  len(value.as_tuple().digits) > MAX_DIGITS)):
            raise self.fail(where, f"must be a number between -{MAX_MAGNITUDE:.0e} and "
                            f"{MAX_MAGNITUDE:.0e}, got {_shown(value)[:40]}")
        return value

    def integer(self, value: Any, where: str, required: bool = False) -> int:
        if value is None and required:
            raise self.fail(where, "missing")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"must be a whole number, got {_shown(value)}")
        return value

    def flag(self, fmt: Dict[str, Any], key: str, where: str) -> bool:
        value = fmt.get(key, False)
        if not isinstance(value, bool):
            raise self.fail(f"{where}.{key}", f"must be true or false, got {_shown(value)}")
        return value

    def fraction(self, fmt: Dict[str, Any], key: str, where: str,
                 default: Optional[int]) -> Optional[Fraction]:
        if key not in fmt:
            return None if default is None else Fraction(default)
        return Fraction(self.number(fmt[key], f"{where}.{key}"))


def _shown(value: Any) -> str:
    """A value for an error line, cut short (a field may hold thousands of digits)."""
    text = json.dumps(value, default=str) if not isinstance(value, Decimal) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _decimal_places(value: Fraction) -> Optional[int]:
    """Digits after the point of a value with a finite decimal form, else None."""
    denominator, twos, fives = value.denominator, 0, 0
    while denominator % 2 == 0:
        denominator //= 2
        twos += 1
    while denominator % 5 == 0:
        denominator //= 5
        fives += 1
    return max(twos, fives) if denominator == 1 else None


def _decimals(scale: Fraction, offset: Fraction) -> Optional[int]:
    """Decimals a value raw * scale + offset is written with; None when always whole."""
    if scale.denominator == 1 and offset.denominator == 1:
        return None
    step, shift = _decimal_places(scale), _decimal_places(offset)
    if step is None:  # e.g. 100/255: five significant digits of the step
        step = 4 - math.floor(math.log10(abs(scale.numerator)) - math.log10(scale.denominator))
    return min(15, max(step, shift or 0, 1))
