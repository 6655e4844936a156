"""A small simulated car behind an ELM327-compatible adapter, on a pseudo-terminal.

Used by the demo (`eccm run --demo`), the benchmarks and the tests. It is ECCM's own,
written from the ELM327 datasheet and SAE J1979: it answers the AT set-up commands
python-OBD sends, mode 01 supported-PID bitmaps and values that move like a drive,
modes 03/07 (with the DTC-count byte J1979 requires on CAN), 04 and 09 (VIN), with a
per-request latency. It speaks ISO 15765-4 CAN 11 bit / 500 kbaud (ELM protocol 6).

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
from typing import Callable, Dict, List, Optional

from eccm.sim.device import PtyDevice

log = logging.getLogger(__name__)

ELM_VERSION = "ELM327 v1.5"
PROTOCOL = "6"
PROTOCOL_NAME = "ISO 15765-4 (CAN 11/500)"
ECU_HEADER = "7E8"


@dataclass(frozen=True)
class AdapterProfile:
    """Timing model of an adapter + car (see timing() and the benchmark's README).

    Every byte costs 10 bit times at the current baud rate, both ways; every request costs
    `overhead` in the adapter; an OBD request costs one ECU round trip (`ecu_latency`), a
    packed request too. After the last reply the adapter waits for more, unless a
    response-count digit was given and met: ST (ATST, default 200 ms) with adaptive timing
    off (ATAT0), ECU latency + 20 ms with ATAT1 (default), + 8 ms with ATAT2.
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


# (duration s, speed at end km/h): a 150 s loop of town and road driving.
_LEGS = [(10, 0), (12, 50), (30, 50), (15, 90), (25, 90), (8, 70), (20, 70), (20, 0), (10, 0)]
_CYCLE = sum(d for d, _ in _LEGS)
_GEARS = [(0, 9.0), (20, 110.0), (35, 68.0), (55, 47.0), (75, 37.0), (200, 30.0)]


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
    return DriveState(
        speed=speed, rpm=rpm, throttle=throttle, load=load, coolant=coolant,
        oil=88 - 70 * math.exp(-t / 400), intake=25 + 5 * math.exp(-speed / 40),
        maf=maf, map_kpa=25 + load * 0.75, fuel_level=max(0.0, 72 - t / 600),
        fuel_rate=maf / 14.7 / 745 * 3600, timing=8 + speed / 10 - accel * 2,
        voltage=14.2 + 0.05 * wobble, runtime=t)


def _u8(x: float) -> List[int]:
    return [int(min(255, max(0, round(x))))]


def _u16(x: float) -> List[int]:
    v = int(min(65535, max(0, round(x))))
    return [v >> 8, v & 0xFF]


def _pct(x: float) -> List[int]:
    return _u8(x * 255 / 100)


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
}
DEMO_PIDS = sorted(_PIDS)
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
RICH_PIDS = sorted(_PIDS)


def encode_dtc(code: str) -> List[int]:
    """'P0420' -> [0x04, 0x20] (SAE J2012 two-byte form)."""
    first = "PCBU".index(code[0].upper()) << 6 | int(code[1]) << 4 | int(code[2], 16)
    return [first, int(code[3:5], 16)]


@dataclass
class SimulatedCar:
    """The car's side: ignition, DTCs, VIN, and the drive clock."""
    vin: str = "VF1SMULATED000042"
    stored_dtcs: List[str] = field(default_factory=lambda: ["P0420"])
    pending_dtcs: List[str] = field(default_factory=list)
    ignition: bool = True
    battery: Optional[float] = None  # volts the adapter reads; None: from the drive
    pids: List[int] = field(default_factory=lambda: list(DEMO_PIDS))
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.started = self.clock()

    def state(self) -> DriveState:
        return drive_state(self.clock() - self.started)

    def supported(self) -> List[int]:
        return sorted(self.pids) + [0x01]

    def clear_dtcs(self) -> None:
        with self._lock:
            self.stored_dtcs = []
            self.pending_dtcs = []

    def dtcs(self, pending: bool) -> List[str]:
        with self._lock:
            return list(self.pending_dtcs if pending else self.stored_dtcs)


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
        if at[:2] in ("SH", "CA", "CF", "CM", "PC", "AL", "NL"):
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
        reply = self._reply(data[0], data[1:])
        if reply is None:
            return ["NO DATA"]
        lines = self._frames(reply)
        self.answered = True
        frames = len(lines) - (1 if not self.headers and len(reply) > 7 else 0)
        self.satisfied = 0 < wanted <= frames
        return (["SEARCHING..."] + lines) if searching else lines

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

    def _reply(self, mode: int, args: List[int]) -> Optional[List[int]]:
        car = self.car
        if mode == 0x01 and 1 <= len(args) <= 6:
            state = car.state()
            out = [0x41]
            for pid in args:
                if pid % 0x20 == 0 and (pid == 0 or any(p > pid for p in car.supported())):
                    out += [pid] + _bitmap(car.supported(), pid)
                elif pid == 0x01:
                    stored = car.dtcs(False)
                    out += [pid, (0x80 if stored else 0) | min(len(stored), 0x7F), 0x07, 0x65,
                            0x00]
                elif pid in self.car.pids:
                    out += [pid] + _PIDS[pid](state)
                else:
                    continue  # unsupported PIDs are left out of a packed reply
            return out if len(out) > 1 else None
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
            if args[0] == 0x00:
                return [0x49, 0x00] + _bitmap([0x02], 0)
            if args[0] == 0x02:
                return [0x49, 0x02, 0x01] + list(car.vin.encode("ascii"))
        return None

    def _frames(self, payload: List[int]) -> List[str]:
        """ISO-TP framing of one ECU reply, printed as the ELM does (ATH/ATS)."""
        sep = " " if self.spaces else ""

        def hexes(values: List[int]) -> str:
            return sep.join(f"{v:02X}" for v in values)

        if len(payload) <= 7:
            if self.headers:
                return [ECU_HEADER + sep + hexes([len(payload)] + payload)]
            return [hexes(payload)]
        frames = [[0x10 | (len(payload) >> 8), len(payload) & 0xFF] + payload[:6]]
        rest, seq = payload[6:], 1
        while rest:
            frames.append([0x20 | (seq & 0x0F)] + rest[:7])
            rest, seq = rest[7:], seq + 1
        if self.headers:
            return [ECU_HEADER + sep + hexes(f) for f in frames]
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
