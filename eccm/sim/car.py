"""A small simulated car behind an ELM327-compatible adapter, on a pseudo-terminal.

Used by the demo (`eccm run --demo`), the benchmarks and the tests. It is ECCM's own,
written from the ELM327 datasheet, SAE J1979, ISO 15765-4 and ISO 14229: it answers the
AT set-up commands python-OBD sends, mode 01 supported-PID bitmaps and values that move
like a drive, modes 03/07 (with the DTC-count byte J1979 requires on CAN), 04 and 09
(VIN, calibration ID, CVN, ECU name), with a per-request latency. It speaks ISO 15765-4
CAN 11 bit / 500 kbaud (ELM protocol 6).

The car has up to three ECUs (SimulatedCar.tcm / .battery_ecu switch the last two off):
- the engine (ECM): requests to 7E0 or 7DF (functional), answers as 7E8;
- the transmission (TCM): 7E1 or 7DF, answers as 7E9; mode 01 PIDs 01, 0D and A4 (gear);
- an EV-style traction battery ECU (BMS): physical requests to 7E4 only, answers as 7EC;
  ISO 14229 service 22 (ReadDataByIdentifier) DIDs 0101 and 0102, `7F sid 11` to any
  other service, silent on the functional address.
A functional request gets each ECU's answer (the engine's first) with only the PIDs that
ECU supports; an ECU supporting none of them stays silent. AT SH picks the request
header (7DF, 7E0, 7E1, 7E4; any other: nobody answers), AT CRA filters what is printed
by sender ID.

ElmResponder is pure (text in, text out); SimulatedAdapter runs it on a pty.
"""
from __future__ import annotations

import logging
import math
import os
import select
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from eccm.sim.device import PtyDevice

log = logging.getLogger(__name__)

ELM_VERSION = "ELM327 v1.5"
PROTOCOL = "6"
PROTOCOL_NAME = "ISO 15765-4 (CAN 11/500)"
ECU_HEADER = "7E8"        # the engine's reply ID
TCM_HEADER = "7E9"        # the transmission's
BATTERY_HEADER = "7EC"    # the traction battery ECU's (physical requests to 7E4 only)
FUNCTIONAL = 0x7DF        # ISO 15765-4 functional request ID, the ELM's default header
# Physical request ID -> the ECU it reaches (reply ID = request ID + 8).
PHYSICAL = {0x7E0: "engine", 0x7E1: "tcm", 0x7E4: "battery"}
REPLY_ID = {"engine": ECU_HEADER, "tcm": TCM_HEADER, "battery": BATTERY_HEADER}
# Mode 09 identification (J1979 on CAN: 49 pid 01 + data, ASCII NUL padded).
ECU_NAMES = {"engine": "ECM-EngineControl", "tcm": "TCM-TransmissionCtl"}
CALIBRATION_IDS = {"engine": "ECCMSIM-ECM-0815", "tcm": "ECCMSIM-TCM-4711"}
CVNS = {"engine": 0x1A2B3C4D, "tcm": 0x5E6F7081}
ODOMETER_START_KM = 48211.3   # the odometer (PID A6) when the drive starts
ENGINE_REF_TORQUE = 250       # Nm (PID 63)
SOC_START = 78.5              # % state of charge of the traction battery at the start


@dataclass(frozen=True)
class AdapterProfile:
    """Timing model of an adapter + car (see timing() and the benchmark's README).

    Every byte costs 10 bit times at the current baud rate, both ways; every request costs
    `overhead` in the adapter; an OBD request costs one ECU round trip (`ecu_latency`), a
    packed request too. After the last reply the adapter waits for more, unless a
    response-count digit was given and met: ST (ATST, default 200 ms) with adaptive timing
    off (ATAT0), ECU latency + 20 ms with ATAT1 (default), + 8 ms with ATAT2.
    Several ECUs answer in that one round trip (the engine first): the others' replies
    only add their bytes, and the count digit counts the frames of all of them.
    """
    name: str = "ideal"
    baudrate: int = 0              # 0: bytes cost nothing (demo, functional tests)
    ecu_latency: float = 0.0
    overhead: float = 0.0
    packing: bool = True           # answers multi-PID mode-01 requests
    count_digit: bool = True       # honours the response-count digit (v1.3+)
    max_baudrate: int = 0          # highest speed it can switch to; 0: cannot switch
    stn: bool = False              # STN chip: STBR; else ELM: ATBRD


PROFILES = {
    # A cheap clone: 38400 baud, no multi-PID requests, no speed switch.
    "clone": AdapterProfile("clone", 38400, 0.010, 0.002, packing=False),
    # An OBDLink-like STN adapter: 115200 baud, switchable up to 2 Mbaud.
    "obdlink": AdapterProfile("obdlink", 115200, 0.010, 0.001, max_baudrate=2_000_000,
                              stn=True),
}


@dataclass(frozen=True)
class DriveState:
    speed: float      # km/h
    rpm: float
    throttle: float   # %
    load: float       # %
    coolant: float    # degC
    oil: float        # degC
    intake: float     # degC
    maf: float        # g/s
    map_kpa: float
    fuel_level: float  # %
    fuel_rate: float  # L/h
    timing: float     # deg
    voltage: float    # V
    runtime: float    # s
    odometer: float = ODOMETER_START_KM  # km
    torque: float = 0.0      # % actual engine torque (of the reference torque)
    gear: int = 0            # transmission actual gear, 0: neutral
    gear_ratio: float = 0.0  # that gear's transmission ratio (0 in neutral)


# (duration s, speed at end km/h): a 150 s loop of town and road driving.
_LEGS = [(10, 0), (12, 50), (30, 50), (15, 90), (25, 90), (8, 70), (20, 70), (20, 0), (10, 0)]
_CYCLE = sum(d for d, _ in _LEGS)
_GEARS = [(0, 9.0), (20, 110.0), (35, 68.0), (55, 47.0), (75, 37.0), (200, 30.0)]
# Engine rpm per km/h -> transmission ratio: wheels of 1.95 m rolling circumference turn
# 1000 / 60 / 1.95 rpm per km/h, behind a final drive of 3.9 (gear 1 -> 3.30 ... 5 -> 0.90).
_WHEEL_M = 1.95
_FINAL_DRIVE = 3.9


def drive_speed(t: float) -> float:
    """Speed (km/h) at t seconds into the drive: piecewise linear, repeating."""
    t %= _CYCLE
    start_speed = 0.0
    for duration, end_speed in _LEGS:
        if t < duration:
            return start_speed + (end_speed - start_speed) * t / duration
        t -= duration
        start_speed = end_speed
    return start_speed


def drive_distance(t: float) -> float:
    """Kilometres driven in the first t seconds: the exact integral of drive_speed."""
    if t <= 0:
        return 0.0
    cycles, t = divmod(t, _CYCLE)
    area = per_cycle = 0.0  # km/h * s
    start_speed = 0.0
    for duration, end_speed in _LEGS:
        leg = (start_speed + end_speed) / 2 * duration
        per_cycle += leg
        if t >= duration:
            area += leg
        elif t > 0:
            area += start_speed * t + (end_speed - start_speed) * t * t / (2 * duration)
        t -= duration
        start_speed = end_speed
    return (cycles * per_cycle + area) / 3600


def gear_at(speed: float) -> Tuple[int, float]:
    """(gear, transmission ratio) at this speed; (0, 0.0): neutral, standing."""
    if speed <= 1:  # as drive_state: idling below 1 km/h
        return 0, 0.0
    gear = next(i for i, (top, _) in enumerate(_GEARS) if speed <= top)
    return gear, _GEARS[gear][1] * _WHEEL_M * 60 / 1000 / _FINAL_DRIVE


def drive_state(t: float) -> DriveState:
    """Every simulated engine value at t seconds after the engine started."""
    speed = drive_speed(t)
    accel = (drive_speed(t + 0.5) - drive_speed(t - 0.5)) / 3.6  # m/s^2
    ratio = next(r for top, r in _GEARS if speed <= top)
    wobble = math.sin(t * 1.7) * 0.5 + math.sin(t * 0.31) * 0.5
    rpm = max(780.0 + 15 * wobble, speed * ratio) if speed > 1 else 780.0 + 15 * wobble
    throttle = min(100.0, max(0.0, 12 + 30 * accel + speed * 0.12 + wobble))
    load = min(100.0, max(15.0, 20 + 25 * accel + speed * 0.25 + wobble))
    maf = rpm * load / 1000.0
    coolant = 90 - 70 * math.exp(-t / 240)
    gear, gear_ratio = gear_at(speed)
    return DriveState(
        speed=speed, rpm=rpm, throttle=throttle, load=load, coolant=coolant,
        oil=88 - 70 * math.exp(-t / 400), intake=25 + 5 * math.exp(-speed / 40),
        maf=maf, map_kpa=25 + load * 0.75, fuel_level=max(0.0, 72 - t / 600),
        fuel_rate=maf / 14.7 / 745 * 3600, timing=8 + speed / 10 - accel * 2,
        voltage=14.2 + 0.05 * wobble, runtime=t,
        odometer=ODOMETER_START_KM + drive_distance(t), torque=load * 0.85 - 5,
        gear=gear, gear_ratio=gear_ratio)


@dataclass(frozen=True)
class BatteryState:
    soc: float        # % state of charge
    volts: float      # V pack voltage
    amps: float       # A pack current, negative: charging
    cell_max: float   # degC highest cell temperature
    cell_min: float   # degC lowest cell temperature
    charging: int     # 0 not charging, 1 AC, 2 DC
    plugged: bool     # charging plug connected
    contactor: bool   # main contactor closed
    balancing: bool   # cell balancing active


def battery_state(t: float, charging: int = 0) -> BatteryState:
    """The traction battery t seconds into the drive: the current follows the engine load
    (2 A per % load), the charge falls 0.2 % per km driven, the voltage (360-400 V with
    the charge) sags 0.05 V per A, the cells warm from about 24 degC. Charging (1 AC,
    2 DC) instead: -16 A or -150 A, the charge rising (a 150 Ah pack)."""
    state = drive_state(t)
    if charging:
        amps = -16.0 if charging == 1 else -150.0
        soc = min(100.0, SOC_START - amps * t / 3600 / 150 * 100)
    else:
        amps = state.load * 2
        soc = max(5.0, SOC_START - 0.2 * (state.odometer - ODOMETER_START_KM))
    volts = 360 + 0.4 * soc - 0.05 * amps
    warm = 24 + 8 * (1 - math.exp(-t / 900)) + abs(amps) * 0.015
    return BatteryState(soc=soc, volts=volts, amps=amps, cell_max=warm, cell_min=warm - 2.5,
                        charging=charging, plugged=bool(charging), contactor=True,
                        balancing=bool(charging) and soc >= 80)


def _u8(x: float) -> List[int]:
    return [int(min(255, max(0, round(x))))]


def _u16(x: float) -> List[int]:
    v = int(min(65535, max(0, round(x))))
    return [v >> 8, v & 0xFF]


def _u32(x: float) -> List[int]:
    v = int(min(0xFFFFFFFF, max(0, round(x))))
    return [(v >> shift) & 0xFF for shift in (24, 16, 8, 0)]


def _s16(x: float) -> List[int]:
    """Two's complement, big-endian (ISO 14229 signed values)."""
    v = int(min(32767, max(-32768, round(x)))) & 0xFFFF
    return [v >> 8, v & 0xFF]


def _pct(x: float) -> List[int]:
    return _u8(x * 255 / 100)


def _ascii(text: str, size: int) -> List[int]:
    """ASCII bytes NUL padded to `size` (J1979 mode 09 CALID / ECUNAME)."""
    return list(text.encode("ascii")[:size].ljust(size, b"\0"))


# PID -> encoder of the DriveState into the data bytes (SAE J1979 scalings).
_PIDS: Dict[int, Callable[[DriveState], List[int]]] = {
    0x04: lambda s: _pct(s.load),
    0x05: lambda s: _u8(s.coolant + 40),
    0x0B: lambda s: _u8(s.map_kpa),
    0x0C: lambda s: _u16(s.rpm * 4),
    0x0D: lambda s: _u8(s.speed),
    0x0E: lambda s: _u8((s.timing + 64) * 2),
    0x0F: lambda s: _u8(s.intake + 40),
    0x10: lambda s: _u16(s.maf * 100),
    0x11: lambda s: _pct(s.throttle),
    0x1F: lambda s: _u16(s.runtime),
    0x2F: lambda s: _pct(s.fuel_level),
    0x33: lambda s: _u8(100),
    0x42: lambda s: _u16(s.voltage * 1000),
    0x46: lambda s: _u8(18 + 40),
    0x5C: lambda s: _u8(s.oil + 40),
    0x5E: lambda s: _u16(s.fuel_rate * 20),
    0x62: lambda s: _u8(s.torque + 125),              # actual engine torque, A-125 %
    0x63: lambda s: _u16(ENGINE_REF_TORQUE),          # reference torque, 256A+B Nm
    0xA6: lambda s: _u32(s.odometer * 10),            # odometer, u32 / 10 km
}
DEMO_PIDS = sorted(_PIDS)
_ABOVE_5F = [pid for pid in DEMO_PIDS if pid > 0x5F]  # python-OBD does not know these
# More PIDs a richer ECU offers (benchmarks use 30 of these and the ones above).
_PIDS.update({
    0x06: lambda s: _u8(128 + s.load / 20),          # short fuel trim bank 1
    0x07: lambda s: _u8(126),                         # long fuel trim bank 1
    0x0A: lambda s: _u8(110),                         # fuel pressure
    0x14: lambda s: [90, 0x80],                       # O2 bank 1 sensor 1
    0x15: lambda s: [140, 0xFF],                      # O2 bank 1 sensor 2
    0x21: lambda s: _u16(0),                          # distance with MIL on
    0x2C: lambda s: _pct(s.load / 4),                 # commanded EGR
    0x2E: lambda s: _pct(10),                         # evaporative purge
    0x30: lambda s: _u8(12),                          # warm-ups since codes cleared
    0x31: lambda s: _u16(1234),                       # distance since codes cleared
    0x3C: lambda s: _u16((400 + s.load * 3 + 40) * 10),  # catalyst temperature
    0x43: lambda s: _u16(s.load * 255 / 100),         # absolute load
    0x44: lambda s: _u16(32768),                      # commanded equivalence ratio
    0x45: lambda s: _pct(s.throttle * 0.8),           # relative throttle position
    0x47: lambda s: _pct(s.throttle + 3),             # absolute throttle position B
    0x49: lambda s: _pct(s.throttle * 0.9),           # accelerator pedal D
    0x4C: lambda s: _pct(s.throttle),                 # commanded throttle actuator
})
# The richer ECU's PIDs stay within python-OBD's table (01-5F): benchmarks and tests use
# obd.commands[1][pid] for each.
RICH_PIDS = sorted(set(_PIDS) - set(_ABOVE_5F))

# The transmission's mode-01 PIDs (01 and the bitmaps are implied).
_TCM_PIDS: Dict[int, Callable[[DriveState], List[int]]] = {
    0x0D: lambda s: _u8(s.speed),
    # A4 transmission actual gear: A support bits (bit 0 gear, bit 1 ratio: SAE J1699;
    # the J1979 table's "A1 supported"), B bits 7-4 the gear (0 neutral), C,D ratio*1000.
    0xA4: lambda s: [0x03, (s.gear & 0x0F) << 4] + _u16(s.gear_ratio * 1000),
}
TCM_PIDS = sorted(_TCM_PIDS)


def encode_dtc(code: str) -> List[int]:
    """'P0420' -> [0x04, 0x20] (SAE J2012 two-byte form)."""
    first = "PCBU".index(code[0].upper()) << 6 | int(code[1]) << 4 | int(code[2], 16)
    return [first, int(code[3:5], 16)]


@dataclass
class SimulatedCar:
    """The car's side: ignition, DTCs, VIN, the drive clock and which ECUs it has.

    By default the full demo car: engine, transmission (`tcm`) and traction battery ECU
    (`battery_ecu`). `tcm=False, battery_ecu=False` leaves the lone engine (the timing
    benchmarks' car: a second ECU answering functional requests adds reply bytes)."""
    vin: str = "VF1SMULATED000042"
    stored_dtcs: List[str] = field(default_factory=lambda: ["P0420"])
    pending_dtcs: List[str] = field(default_factory=list)
    ignition: bool = True
    battery: Optional[float] = None  # volts the adapter reads; None: from the drive
    pids: List[int] = field(default_factory=lambda: list(DEMO_PIDS))
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)
    tcm: bool = True           # a transmission ECU: requests to 7E1 / 7DF, answers as 7E9
    battery_ecu: bool = True   # a traction battery ECU: requests to 7E4 only, as 7EC
    tcm_pids: List[int] = field(default_factory=lambda: list(TCM_PIDS))
    charging: int = 0          # the battery's charging state: 0 none, 1 AC, 2 DC

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.started = self.clock()

    def state(self) -> DriveState:
        return drive_state(self.clock() - self.started)

    def supported(self) -> List[int]:
        """The engine's mode-01 PIDs (01 included, bitmaps left out)."""
        return sorted(self.pids) + [0x01]

    def tcm_supported(self) -> List[int]:
        """The transmission's mode-01 PIDs (01 included, bitmaps left out)."""
        return sorted(set(self.tcm_pids) | {0x01})

    def traction_battery(self) -> BatteryState:
        return battery_state(self.clock() - self.started, self.charging)

    def clear_dtcs(self) -> None:
        with self._lock:
            self.stored_dtcs = []
            self.pending_dtcs = []

    def dtcs(self, pending: bool) -> List[str]:
        with self._lock:
            return list(self.pending_dtcs if pending else self.stored_dtcs)


def _is_hex(text: str) -> bool:
    return bool(text) and all(c in "0123456789ABCDEF" for c in text)


def _bitmap(pids: List[int], base: int) -> List[int]:
    """Mode 01/09 'supported PIDs' bitmap for base+1..base+32; bit base+32 = next map."""
    bits = 0
    for pid in pids:
        if base < pid <= base + 32:
            bits |= 1 << (32 - (pid - base))
    if any(pid > base + 32 for pid in pids):
        bits |= 1
    return [(bits >> shift) & 0xFF for shift in (24, 16, 8, 0)]


class ElmResponder:
    """ELM327 command interpreter: one command line in, the adapter's reply out."""

    def __init__(self, car: SimulatedCar, profile: Optional[AdapterProfile] = None):
        self.car = car
        self.profile = profile or AdapterProfile()
        self.baudrate = self.profile.baudrate
        self.obd_requests = 0  # requests that reach the car's bus
        self.pending_baud = 0  # a speed switch announced, waiting for the host's CR
        self.reset()

    def reset(self) -> None:
        self.st = 0.2
        self.adaptive = 1
        self.obd_request = False   # what the last command was, for the timing model
        self.answered = False
        self.satisfied = False
        self.echo = True
        self.headers = False
        self.spaces = True
        self.linefeeds = False
        self.protocol_found = False
        self.last = ""
        self.header = FUNCTIONAL   # AT SH: the 11-bit ID requests are sent with
        self.cra = ""              # AT CRA: only senders matching this shown ("": all)

    @property
    def eol(self) -> str:
        return "\r\n" if self.linefeeds else "\r"

    def handle(self, raw: str) -> str:
        """Reply to one received line (without its CR), prompt included."""
        cmd = "".join(ch for ch in raw if ch.isprintable()).replace(" ", "").upper()
        if not raw.strip(" "):
            cmd = self.last  # a bare CR repeats the previous command
        self.last = cmd
        self.obd_request = self.answered = self.satisfied = False
        echo = raw + self.eol if self.echo else ""  # echoed before the command acts
        if not cmd:
            lines = ["?"]
        elif cmd.startswith("STBR") and self.profile.stn:
            try:
                lines = self._switch(int(cmd[4:]))
            except ValueError:
                lines = ["?"]
        elif cmd.startswith("STI") and self.profile.stn:
            lines = ["STN1110 v4.2.0"]
        elif cmd.startswith("AT"):
            lines = self._at(cmd[2:])
        elif all(c in "0123456789ABCDEF" for c in cmd):
            lines = self._obd(cmd)
        else:
            lines = ["?"]
        if self.pending_baud:  # OK at the old speed, no prompt: the switch follows
            return echo + "OK" + self.eol
        return echo + self.eol.join(lines) + self.eol + self.eol + ">"

    def _at(self, at: str) -> List[str]:
        if at in ("Z", "WS", "D"):
            self.reset()
            return ["", ELM_VERSION] if at in ("Z", "WS") else ["OK"]
        if at == "I":
            return [ELM_VERSION]
        if at == "@1":
            return ["OBDII to RS232 Interpreter"]
        if at == "RV":
            volts = self.car.battery if self.car.battery is not None else (
                self.car.state().voltage if self.car.ignition else 12.3)
            return [f"{volts:.1f}V"]
        if at == "DPN":
            return [("A" if self.protocol_found else "") + PROTOCOL]
        if at == "DP":
            return [("AUTO, " if self.protocol_found else "") + PROTOCOL_NAME]
        flags = {"E": "echo", "H": "headers", "S": "spaces", "L": "linefeeds"}
        if len(at) == 2 and at[0] in flags and at[1] in "01":
            setattr(self, flags[at[0]], at[1] == "1")
            return ["OK"]
        if at[:2] in ("SP", "TP"):
            return ["OK"]
        if at[:2] == "ST" and len(at) == 4:
            self.st = (int(at[2:], 16) or 0x32) * 0.004
            return ["OK"]
        if at[:2] == "AT" and at[2:] in ("0", "1", "2"):
            self.adaptive = int(at[2:])
            return ["OK"]
        if at[:3] == "BRD" and len(at) == 5 and not self.profile.stn:
            return self._switch(4_000_000 // max(1, int(at[3:], 16)))
        if at[:2] == "SH":
            digits = at[2:]
            if len(digits) not in (3, 6) or not _is_hex(digits):
                return ["?"]
            self.header = int(digits[-3:], 16) & 0x7FF  # 11-bit CAN: the last 11 bits
            return ["OK"]
        if at[:3] == "CRA":
            pattern = at[3:]
            if pattern and (len(pattern) not in (3, 8) or
                            not _is_hex(pattern.replace("X", "0"))):
                return ["?"]
            self.cra = pattern
            return ["OK"]
        if at == "AR":
            self.cra = ""
            return ["OK"]
        if at[:2] == "CP" and len(at) == 4 and _is_hex(at[2:]):
            return ["OK"]  # 29-bit priority bits: nothing on this 11-bit bus
        if at[:2] in ("CA", "CF", "CM", "PC", "AL", "NL"):
            return ["OK"]
        return ["?"]

    def _switch(self, baud: int) -> List[str]:
        if not self.profile.max_baudrate or baud > self.profile.max_baudrate or \
                not self.profile.baudrate:
            return ["?"]
        self.pending_baud = baud
        return ["OK"]

    def _obd(self, cmd: str) -> List[str]:
        self.obd_request = True
        self.obd_requests += 1
        wanted = 0
        if len(cmd) % 2:  # a trailing response-count digit (ELM327 v1.3+)
            wanted = int(cmd[-1], 16) if self.profile.count_digit else 0
            cmd = cmd[:-1]
        data = [int(cmd[i:i + 2], 16) for i in range(0, len(cmd), 2)]
        if data[0] == 0x01 and len(data) > 2 and not self.profile.packing:
            return ["NO DATA"]  # this clone cannot read several PIDs at once
        if not self.car.ignition:
            if not self.protocol_found:
                return ["SEARCHING...", "UNABLE TO CONNECT"]
            return ["NO DATA"]
        searching = not self.protocol_found
        self.protocol_found = True
        # Every addressed ECU acts on the request (a mode 04 clears) whatever is printed;
        # the adapter shows the senders its CRA filter passes, in the order they answer
        # (the engine first), and stops once the count digit's frames have come.
        lines: List[str] = []
        frames = 0
        for sender, reply in self._replies(data[0], data[1:]):
            if not self._shown(sender):
                continue
            lines += self._frames(reply, sender)
            frames += 1 if len(reply) <= 7 else 1 + -(-(len(reply) - 6) // 7)
            if 0 < wanted <= frames:
                break
        if not lines:
            return ["NO DATA"]
        self.answered = True
        self.satisfied = 0 < wanted <= frames
        return (["SEARCHING..."] + lines) if searching else lines

    def _ecus(self) -> List[str]:
        """The ECUs the current header reaches, in the order they answer."""
        car = self.car
        present = {"engine": True, "tcm": car.tcm, "battery": car.battery_ecu}
        if self.header == FUNCTIONAL:
            return ["engine"] + (["tcm"] if car.tcm else [])  # the BMS ignores 7DF
        ecu = PHYSICAL.get(self.header)
        return [ecu] if ecu and present[ecu] else []

    def _replies(self, mode: int, args: List[int]) -> List[Tuple[str, List[int]]]:
        """(sender ID, ISO-TP payload) of every ECU answering this request."""
        physical = self.header != FUNCTIONAL
        out = []
        for ecu in self._ecus():
            if ecu == "battery":
                reply = self._battery_reply(mode, args)
            else:
                reply = (self._reply if ecu == "engine" else self._tcm_reply)(mode, args)
                if reply is None and physical and mode not in (1, 3, 4, 7, 9):
                    reply = [0x7F, mode, 0x11]  # serviceNotSupported (ISO 14229)
            if reply is not None:
                out.append((REPLY_ID[ecu], reply))
        return out

    def _shown(self, sender: str) -> bool:
        """AT CRA: is a frame from this 11-bit sender ID printed? (X: any digit)"""
        if not self.cra:
            return True
        return len(self.cra) == len(sender) and all(
            p in ("X", c) for p, c in zip(self.cra, sender))

    def wait_after_reply(self) -> float:
        """How long the adapter listens for more replies before its prompt."""
        if not self.obd_request:
            return 0.0
        if not self.answered:
            return self.st  # NO DATA: the whole timeout
        if self.satisfied:
            return 0.0
        margin = {0: None, 1: 0.020, 2: 0.008}[self.adaptive]
        return self.st if margin is None else min(self.st, self.profile.ecu_latency + margin)

    def timing(self, request_bytes: int, reply_bytes: int) -> float:
        """Seconds from the host's first request byte to the prompt, per the profile."""
        per_byte = 10.0 / self.baudrate if self.baudrate else 0.0
        ecu = self.profile.ecu_latency if self.obd_request and self.answered else 0.0
        return (request_bytes * per_byte + self.profile.overhead + ecu +
                self.wait_after_reply() + reply_bytes * per_byte)

    @staticmethod
    def _mode01(args: List[int], supported: List[int], status: List[int],
                encoders: Dict[int, Callable[[DriveState], List[int]]],
                state: Callable[[], DriveState]) -> Optional[List[int]]:
        """One ECU's answer to a (packed) mode-01 request: only the PIDs it supports;
        None (silence) when it supports none of them."""
        if not 1 <= len(args) <= 6:
            return None
        out = [0x41]
        now: List[DriveState] = []  # one snapshot of the drive for the whole reply
        for pid in args:
            if pid % 0x20 == 0 and (pid == 0 or any(p > pid for p in supported)):
                out += [pid] + _bitmap(supported, pid)
            elif pid == 0x01:
                out += [pid] + status
            elif pid in supported and pid in encoders:
                now = now or [state()]
                out += [pid] + encoders[pid](now[0])
            # else: unsupported PIDs are left out of a packed reply
        return out if len(out) > 1 else None

    @staticmethod
    def _mode09(ecu: str, pid: int, vin: Optional[str]) -> Optional[List[int]]:
        """J1979 mode 09 on CAN: 00 bitmap, 02 VIN (engine), 04 CALID, 06 CVN, 0A name."""
        if pid == 0x00:
            return [0x49, 0x00] + _bitmap(([0x02] if vin else []) + [0x04, 0x06, 0x0A], 0)
        if pid == 0x02 and vin:
            return [0x49, 0x02, 0x01] + list(vin.encode("ascii"))
        if pid == 0x04:
            return [0x49, 0x04, 0x01] + _ascii(CALIBRATION_IDS[ecu], 16)
        if pid == 0x06:
            return [0x49, 0x06, 0x01] + _u32(CVNS[ecu])
        if pid == 0x0A:
            return [0x49, 0x0A, 0x01] + _ascii(ECU_NAMES[ecu], 20)
        return None

    def _reply(self, mode: int, args: List[int]) -> Optional[List[int]]:
        """The engine's answer (ISO-TP payload), None: it stays silent."""
        car = self.car
        if mode == 0x01:
            stored = car.dtcs(False)
            status = [(0x80 if stored else 0) | min(len(stored), 0x7F), 0x07, 0x65, 0x00]
            return self._mode01(args, car.supported(), status, _PIDS, car.state)
        if mode in (0x03, 0x07) and not args:
            codes = car.dtcs(pending=mode == 0x07)
            out = [0x40 + mode, len(codes)]  # J1979 on CAN: count byte first
            for code in codes:
                out += encode_dtc(code)
            return out
        if mode == 0x04 and not args:
            car.clear_dtcs()
            return [0x44]
        if mode == 0x09 and len(args) == 1:
            return self._mode09("engine", args[0], car.vin)
        return None

    def _tcm_reply(self, mode: int, args: List[int]) -> Optional[List[int]]:
        """The transmission's answer: mode 01 (01, 0D, A4), no DTCs, mode 09 ids."""
        car = self.car
        if mode == 0x01:
            # No DTCs, MIL off; B: comprehensive components monitor supported, complete.
            return self._mode01(args, car.tcm_supported(), [0x00, 0x04, 0x00, 0x00],
                                _TCM_PIDS, car.state)
        if mode in (0x03, 0x07) and not args:
            return [0x40 + mode, 0x00]
        if mode == 0x04 and not args:
            return [0x44]
        if mode == 0x09 and len(args) == 1:
            return self._mode09("tcm", args[0], None)
        return None

    def _battery_reply(self, mode: int, args: List[int]) -> List[int]:
        """The traction battery ECU (ISO 14229): 22 ReadDataByIdentifier, else 7F sid 11.

        DID 0101: SoC u16 % * 2, pack voltage u16 V * 10, pack current s16 A * 10
        (negative: charging), highest and lowest cell temperature u8 degC + 40.
        DID 0102: charging state (0 none, 1 AC, 2 DC), flags (bit 0 plug connected,
        bit 1 contactor closed, bit 7 cell balancing). Other DIDs: 7F 22 31."""
        if mode != 0x22:
            return [0x7F, mode, 0x11]   # serviceNotSupported
        if not args or len(args) % 2:
            return [0x7F, 0x22, 0x13]   # incorrectMessageLengthOrInvalidFormat
        bat = self.car.traction_battery()
        out = [0x62]
        for i in range(0, len(args), 2):
            did = args[i] << 8 | args[i + 1]
            if did == 0x0101:
                data = (_u16(bat.soc * 2) + _u16(bat.volts * 10) + _s16(bat.amps * 10) +
                        _u8(bat.cell_max + 40) + _u8(bat.cell_min + 40))
            elif did == 0x0102:
                data = [bat.charging, bat.plugged | bat.contactor << 1 | bat.balancing << 7]
            else:
                continue
            out += args[i:i + 2] + data
        return out if len(out) > 1 else [0x7F, 0x22, 0x31]  # requestOutOfRange

    def _frames(self, payload: List[int], sender: str = ECU_HEADER) -> List[str]:
        """ISO-TP framing of one ECU reply, printed as the ELM does (ATH/ATS); with
        headers on each frame starts with the sender's ID."""
        sep = " " if self.spaces else ""

        def hexes(values: List[int]) -> str:
            return sep.join(f"{v:02X}" for v in values)

        if len(payload) <= 7:
            if self.headers:
                return [sender + sep + hexes([len(payload)] + payload)]
            return [hexes(payload)]
        frames = [[0x10 | (len(payload) >> 8), len(payload) & 0xFF] + payload[:6]]
        rest, seq = payload[6:], 1
        while rest:
            frames.append([0x20 | (seq & 0x0F)] + rest[:7])
            rest, seq = rest[7:], seq + 1
        if self.headers:
            return [sender + sep + hexes(f) for f in frames]
        lines = [f"{len(payload):03X}"]
        for i, f in enumerate(frames):
            body = f[2:] if i == 0 else f[1:]
            lines.append(f"{i}:{sep}{hexes(body)}")
        return lines


class SimulatedAdapter(PtyDevice):
    """Serves an ElmResponder on a pseudo-terminal from its own thread.

    `port` is the slave path to open (like /dev/ttyUSB0). OBD requests take `latency`
    seconds (an ECU answers in ~5-20 ms), AT commands `at_latency`.
    """

    thread_name = "simcar"

    def __init__(self, car: Optional["SimulatedCar"] = None, latency: float = 0.015,
                 at_latency: float = 0.001, profile: Optional[AdapterProfile] = None):
        self.car = car or SimulatedCar()
        self.profile = profile
        self.responder = ElmResponder(self.car, profile)
        self.latency = latency
        self.at_latency = at_latency
        self.requests = 0
        super().__init__()

    def _serve(self) -> None:
        """Runs in the simcar thread: read CR-terminated commands, write replies."""
        buf = b""
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], 0.2)
            if not ready:
                continue
            try:
                chunk = os.read(self._master, 4096)
            except OSError:
                return
            buf += chunk
            while b"\r" in buf:
                line, buf = buf.split(b"\r", 1)
                if not self._reply(line):
                    return

    def _reply(self, line: bytes) -> bool:
        """Answer one command line; False once the pty is gone."""
        text = line.decode("ascii", "replace").replace("\n", "")
        responder = self.responder
        if self.profile is None:
            is_at = text.replace(" ", "").upper().startswith("AT")
            self._stop.wait(self.at_latency if is_at else self.latency)  # or stopped
            reply = responder.handle(text)
        else:
            started = time.monotonic()
            reply = responder.handle(text)
            delay = responder.timing(len(line) + 1, len(reply))
            self._stop.wait(max(0.0, delay - (time.monotonic() - started)))
        self.requests += 1
        try:
            os.write(self._master, reply.encode("ascii"))
            if responder.pending_baud:
                return self._switch_speed()
        except OSError:
            return False
        return True

    def _switch_speed(self) -> bool:
        """ELM327 ATBRD / STN STBR handshake: ID at the new speed, host answers CR."""
        responder = self.responder
        new, old = responder.pending_baud, responder.baudrate
        responder.pending_baud = 0
        responder.baudrate = new
        ident = "STN1110 v4.2.0\r" if self.profile and self.profile.stn else ELM_VERSION + "\r"
        os.write(self._master, ident.encode("ascii"))
        ready, _, _ = select.select([self._master], [], [], 0.075)  # ATBRT default 75 ms
        if ready and os.read(self._master, 64).startswith(b"\r"):
            os.write(self._master, b"OK\r\r>")
            return True
        responder.baudrate = old  # no confirmation: back to the old speed
        return True
