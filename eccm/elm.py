"""ELM327 driver: fast connect, packed mode-01 requests, response-count hints, baud switch.

python-OBD's own connection spends ~4 s in fixed sleeps and sends one PID per request;
this driver talks to the adapter directly (prompt-driven, no fixed sleeps) and still uses
python-OBD for what it is good at: its protocol parsers (frames -> messages) and its
decoders (messages -> values). Used by the OBD poller thread only.

Speed-ups, each with a fallback (ELM327 datasheet; clones differ):
- echo, spaces and line feeds off (fewer bytes per reply), and headers off while only
  one ECU answers (multi-frame replies are then reassembled here);
- a bounded reply timeout (ATST, 100 ms) and adaptive timing (ATAT1);
- on CAN, up to 6 mode-01 PIDs per request (one ECU round trip instead of six); an
  adapter that answers packed requests with '?' / NO DATA / garbage gets single PIDs;
- a response-count digit (v1.3+: '010C1' returns after one reply instead of waiting out
  the timeout), learnt per request and dropped for a request it breaks;
- a higher serial speed where the adapter can switch (STN 'STBR', ELM 'ATBRD').
"""
from __future__ import annotations

import logging
import os
import re
import time
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import obd
import serial
from obd import OBDStatus
from obd.elm327 import ELM327
from obd.OBDResponse import OBDResponse
from obd.protocols import ECU

from .values import decode_payload

log = logging.getLogger(__name__)

PROMPT = b">"
CAN_PROTOCOLS = {"6", "7", "8", "9"}
MAX_PACK = 6          # PIDs per mode-01 request on CAN (SAE J1979)
SEARCH_TIMEOUT = 15.0  # the first 0100 may search every protocol
PROBE_BAUDS = (38400, 9600, 115200, 230400, 57600, 19200)
BRD_DIVISORS = {115200: 0x23, 230400: 0x11, 500000: 0x08}  # ATBRD: 4 MHz / divisor


class AdapterError(Exception):
    """The adapter is missing, gone, or not an ELM327."""


class NoCar(Exception):
    """The adapter answers but no ECU does (ignition off)."""


class ElmLink:
    """Serial I/O: write one command, read to the '>' prompt within a deadline."""

    def __init__(self, port: str, baudrate: int, timeout: float):
        try:
            self.ser = serial.Serial(port, baudrate, timeout=0.05, write_timeout=2)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise AdapterError(f"cannot open {port}: {exc}") from None
        self.timeout = timeout
        self.last_prompt = False
        self._pending = b""  # bytes read past a prompt, for the next read_until

    def command(self, text: str, timeout: Optional[float] = None) -> List[str]:
        """Send text + CR; the reply's non-empty lines (prompt and echo removed)."""
        data = self.raw(text.encode("ascii") + b"\r", timeout)
        lines = [ln.strip() for ln in data.replace(b"\x00", b"").decode("ascii", "replace")
                 .replace("\n", "\r").split("\r")]
        lines = [ln for ln in lines if ln and ln != ">"]
        if lines and lines[0].replace(" ", "") == text.replace(" ", ""):
            lines = lines[1:]  # echo (before ATE0 took effect)
        return lines

    def raw(self, data: bytes, timeout: Optional[float] = None) -> bytes:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            self.ser.reset_input_buffer()
            self._pending = b""
            self.write(data)
            out = bytearray()
            while PROMPT not in out and time.monotonic() <= deadline:
                out += self.ser.read(self.ser.in_waiting or 1)
        except (serial.SerialException, OSError) as exc:
            raise AdapterError(f"adapter disconnected: {exc}") from None
        reply, prompt, rest = bytes(out).partition(PROMPT)
        self.last_prompt = bool(prompt)
        self._pending = rest
        return reply

    def write(self, data: bytes) -> None:
        try:
            self.ser.write(data)
        except (serial.SerialException, OSError) as exc:
            raise AdapterError(f"adapter disconnected: {exc}") from None


    def read_until(self, marker: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        out = bytearray(self._pending)
        self._pending = b""
        try:
            while marker not in out and time.monotonic() < deadline:
                out += self.ser.read(self.ser.in_waiting or 1)
        except (serial.SerialException, OSError) as exc:
            raise AdapterError(f"adapter disconnected: {exc}") from None
        head, found, rest = bytes(out).partition(marker)
        self._pending = rest
        return head + found

    def close(self) -> None:
        try:
            self.ser.close()
        except (serial.SerialException, OSError):
            pass


def is_hex_line(line: str) -> bool:
    text = line.replace(" ", "")
    return bool(text) and all(c in "0123456789ABCDEFabcdef" for c in text)


_FRAME_LINE = re.compile(r"([0-9A-F]):((?:[0-9A-F]{2})*)")
_LENGTH_LINE = re.compile(r"[0-9A-F]{3}")


def count_frames(lines: Sequence[str]) -> int:
    """Bus frames in a reply, with headers on or off: what a response-count digit counts
    (with headers off a multi-frame message is a length line, then one 'n:' line per frame)."""
    total = 0
    for raw in lines:
        line = raw.replace(" ", "").upper()
        if _FRAME_LINE.fullmatch(line) or (is_hex_line(line)
                                           and not _LENGTH_LINE.fullmatch(line)):
            total += 1
    return total


def bare_messages(lines: Sequence[str]) -> List[bytes]:
    """A reply printed with headers off (ATH0) -> the payload of each message.

    A single-frame message is one hex line; a multi-frame one (CAN auto-formatting) is
    its byte count ('014') then its frames ('0:410C..', '1:..'). An incomplete message is
    left out, so a caller never decodes a cut reply.
    """
    messages: List[bytes] = []
    length, buffer = -1, bytearray()

    def close() -> None:
        if length >= 0 and len(buffer) >= length:
            messages.append(bytes(buffer[:length]))

    for raw in lines:
        line = raw.replace(" ", "").upper()
        frame = _FRAME_LINE.fullmatch(line)
        if frame and length >= 0:
            buffer += bytes.fromhex(frame[2])
        elif _LENGTH_LINE.fullmatch(line):
            close()
            length, buffer = int(line, 16), bytearray()
        elif is_hex_line(line) and len(line) % 2 == 0:
            close()
            length = -1
            messages.append(bytes.fromhex(line))
    close()
    return messages


def split_packed(data: bytes, wanted: Sequence[int]) -> Optional[Dict[int, bytes]]:
    """A packed mode-01 reply (41 pidA dataA pidB dataB ...) -> {pid: b'41'+pid+data}.

    None when it does not parse as the requested PIDs (a clone mangling the request).
    """
    if len(data) < 2 or data[0] != 0x41:
        return None
    out: Dict[int, bytes] = {}
    i = 1
    while i < len(data):
        pid = data[i]
        if pid not in wanted or pid in out or not obd.commands.has_pid(1, pid):
            return None if not out else out  # trailing padding after good PIDs is fine
        size = max(0, obd.commands[1][pid].bytes - 2)
        if i + 1 + size > len(data):
            return None
        out[pid] = bytes([0x41, pid]) + data[i + 1:i + 1 + size]
        i += 1 + size
    return out


def parse_volts(lines: List[str]) -> Optional[float]:
    """['12.6V'] -> 12.6; None for anything else."""
    for line in lines:
        text = line.strip().upper().rstrip("V")
        try:
            value = float(text)
        except ValueError:
            continue
        if 0 < value < 40:
            return value
    return None


def probe_voltage(port: str, baudrate: Optional[int], timeout: float) -> Optional[float]:
    """Open the adapter just to read its voltage; the car's bus is not touched."""
    link = ElmLink(os.path.realpath(port), baudrate or PROBE_BAUDS[0], timeout)
    try:
        return parse_volts(link.command("ATRV"))
    finally:
        link.close()


class ElmConnection:
    """A connected car; the subset of python-OBD's OBD interface that ECCM uses."""

    def __init__(self, port: str, baudrate: Optional[int] = None,
                 protocol: Optional[str] = None, timeout: float = 1.0,
                 fast_baudrate: int = 0, pack: bool = True):
        self.port = port
        self.timeout = timeout
        self.link: Optional[ElmLink] = None
        self.version = ""
        self.protocol_id = ""
        self._protocol: Any = None
        self.supported_commands: Set[Any] = set()
        self.pack = pack
        self.headers = True                  # ATH1: python-OBD's parsers need the CAN IDs
        self.single_ecu = False              # one ECU answered 0100
        self.hints: Dict[str, int] = {}      # request -> response count that worked
        self.no_hint: Set[str] = set()       # requests the count digit broke
        self._pack_failures = 0
        self._connect(baudrate, protocol, fast_baudrate)

    # --- connection -------------------------------------------------------------------

    def _connect(self, baudrate: Optional[int], protocol: Optional[str],
                 fast_baudrate: int) -> None:
        real = os.path.realpath(self.port)
        pty = real.startswith("/dev/pts/")
        self.link = ElmLink(real, baudrate or PROBE_BAUDS[0], self.timeout)
        try:
            if baudrate is None and not pty:
                self._probe_baud()
            reply = self.link.command("ATWS", timeout=1.5)  # warm start: no 1 s reset wait
            if not any("ELM" in ln or "STN" in ln for ln in reply):
                reply = self.link.command("ATZ", timeout=3)
            if not any("ELM" in ln or "STN" in ln or "OK" in ln for ln in reply):
                raise AdapterError("no ELM327 answers on this port")
            for setting in ("ATE0", "ATL0", "ATS0", "ATH1", "ATAT1"):
                self.link.command(setting)
            self.version = " ".join(self.link.command("ATI"))
            sti = self.link.command("STI")
            if sti and sti[0] != "?" and "STN" in sti[0]:
                self.version += f" / {sti[0]}"
            if fast_baudrate and fast_baudrate > self.link.ser.baudrate:
                self._switch_baud(fast_baudrate)
            self.link.command(f"ATSP{protocol or '0'}")
            r0100 = self.link.command("0100", timeout=SEARCH_TIMEOUT)
            data_lines = [ln for ln in r0100 if is_hex_line(ln)]
            if not data_lines:
                reason = " ".join(r0100) or "no reply"
                raise NoCar(f"the adapter answers but the car does not ({reason}; "
                            "ignition off?)")
            dpn = self.link.command("ATDPN")
            self.protocol_id = (dpn[0] if dpn else "").lstrip("A") or (protocol or "")
            if self.protocol_id not in ELM327._SUPPORTED_PROTOCOLS:
                raise AdapterError(f"unknown OBD protocol {dpn!r}")
            self._protocol = ELM327._SUPPORTED_PROTOCOLS[self.protocol_id](data_lines)
            self.single_ecu = len(data_lines) == 1
            # A bounded reply timeout: 100 ms, twice the 50 ms an ECU may take (P2max of
            # ISO 15765-4 / 14230), instead of the adapter's 200 ms default.
            self.link.command("ATST19")
            self._load_supported(data_lines)
        except Exception:
            self.close()
            raise

    def _probe_baud(self) -> None:
        """Find the adapter's speed: a nonsense command gets a prompt at the right one."""
        assert self.link is not None
        for baud in PROBE_BAUDS:
            self.link.ser.baudrate = baud
            self.link.raw(b"\x7f\x7f\r", timeout=0.3)  # never a bare CR: it repeats
            if self.link.last_prompt:
                return
        raise AdapterError("no ELM327 answers at any usual baud rate")

    def _switch_baud(self, baud: int) -> None:
        """STN 'STBR' or ELM 'ATBRD'; the adapter reverts by itself if we miss its ID."""
        assert self.link is not None
        old = self.link.ser.baudrate
        attempts: List[Tuple[str, bytes]] = []
        if "STN" in self.version:
            attempts.append((f"STBR {baud}", b"STN"))
        if baud in BRD_DIVISORS:
            attempts.append((f"ATBRD {BRD_DIVISORS[baud]:02X}", b"ELM"))
        for cmd, ident in attempts:
            # The adapter answers OK at the old speed, switches, sends its ID at the new
            # speed and keeps it only if the host answers CR in time (ATBRT, ~75 ms).
            self.link.write(cmd.encode("ascii") + b"\r")
            if b"OK" not in self.link.read_until(b"OK", 0.5):
                self.link.read_until(PROMPT, 0.3)
                continue
            self.link.ser.baudrate = baud
            if ident in self.link.read_until(ident, 0.2):
                self.link.read_until(b"\r", 0.1)  # the rest of the ID line
                self.link.write(b"\r")
                if b"OK" in self.link.read_until(PROMPT, 0.3):
                    log.info("adapter switched to %d baud (%s)", baud, cmd.split()[0])
                    return
            self.link.ser.baudrate = old  # the adapter goes back after its timeout
            time.sleep(0.1)
            self.link.raw(b"\x7f\x7f\r", timeout=0.3)  # resync; a bare CR would repeat
        log.info("adapter stays at %d baud (no speed switch supported)", old)

    def _load_supported(self, r0100: List[str]) -> None:
        supported = self.supported_commands = set(obd.commands.base_commands())
        for getter in obd.commands.pid_getters():
            if getter.mode not in (1, 9):
                continue  # mode 06 monitors are not logged: do not spend time asking
            if getter.mode == 1 and getter.pid == 0:
                response = getter(self._protocol(r0100))
            elif getter in supported:
                response = self.query(getter)
            else:
                continue
            if response.is_null():
                continue
            for i, bit in enumerate(response.value):
                pid = getter.pid + i + 1
                if bit and obd.commands.has_pid(getter.mode, pid):
                    supported.add(obd.commands[getter.mode][pid])

    # --- python-OBD compatible surface -----------------------------------------------

    def voltage(self) -> Optional[float]:
        """The supply voltage the adapter measures (ATRV), or None."""
        if self.link is None:
            return None
        return parse_volts(self.link.command("ATRV"))

    def status(self) -> str:
        return OBDStatus.CAR_CONNECTED if self.link is not None else OBDStatus.NOT_CONNECTED

    def protocol_name(self) -> str:
        return getattr(self._protocol, "ELM_NAME", "")

    def port_name(self) -> str:
        return self.port

    def supports(self, cmd: Any) -> bool:
        return cmd in self.supported_commands

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None

    def _send(self, request: str) -> List[str]:
        """Send one OBD request, with a learnt response-count digit where it works."""
        if self.link is None:
            raise AdapterError("not connected")
        hint = self.hints.get(request)
        if hint is None and request not in self.no_hint and len(request) == 4 \
                and request.startswith("01"):
            hint = self.hints.get("single")  # one mode-01 PID: as many frames as ECUs
        if hint is not None:
            lines = self.link.command(f"{request}{hint:X}")
            frames = count_frames(lines)
            if frames:
                if frames != hint:  # fewer came (and we waited): ask for that many
                    self.hints[request] = frames
                return lines
            self.no_hint.add(request)  # the digit broke this request: never again
            self.hints.pop(request, None)
        lines = self.link.command(request)
        frames = count_frames(lines)
        if frames and request not in self.no_hint and frames <= 15:
            self.hints[request] = frames
            if len(request) == 4 and request.startswith("01"):
                self.hints.setdefault("single", frames)
        return lines

    def _set_headers(self, on: bool) -> None:
        if self.link is not None and on != self.headers:
            self.link.command("ATH1" if on else "ATH0")
            self.headers = on

    def _send_bare(self, request: str) -> Optional[List[bytes]]:
        """A request with headers off (single-ECU car: fewer bytes per reply) -> its
        messages; None once a second ECU shows up (headers are needed from then on)."""
        self._set_headers(False)
        messages = bare_messages(self._send(request))
        if len(messages) > 1:
            self.single_ecu = False
            log.info("more than one ECU answers %s: reading replies with headers on", request)
            return None
        return messages

    def _query_bare(self, cmd: Any) -> Any:
        """One mode-01 PID, headers off."""
        messages = self._send_bare(cmd.command.decode())
        if messages is None:
            return self.query(cmd).value
        if not messages or messages[0][:2] != bytes([0x41, cmd.pid]):
            return None
        return decode_payload(cmd, messages[0])

    def query(self, cmd: Any, force: bool = False) -> OBDResponse:
        if self.link is None or (not force and not self.supports(cmd)):
            return OBDResponse()
        self._set_headers(True)
        if cmd.header != obd.protocols.ECU_HEADER.ENGINE:
            return OBDResponse()  # other headers are not used by ECCM
        lines = self._send(cmd.command.decode())
        messages = self._protocol([ln for ln in lines if is_hex_line(ln)])
        if not messages:
            return OBDResponse()
        return cmd(messages)

    # --- packed polling ---------------------------------------------------------------

    @property
    def can_pack(self) -> bool:
        return self.pack and self.protocol_id in CAN_PROTOCOLS

    def groups(self, commands: Sequence[Any]) -> List[List[Any]]:
        """The requests that read these mode-01 commands: by six on CAN, else one each."""
        size = MAX_PACK if self.can_pack else 1
        return [list(commands[i:i + size]) for i in range(0, len(commands), size)]

    def query_group(self, group: Sequence[Any]) -> Dict[Any, Any]:
        """Decoded values of one request's commands (None where the car gave nothing)."""
        if len(group) == 1 or not self.can_pack:
            if self.single_ecu:
                return {cmd: self._query_bare(cmd) for cmd in group}
            return {cmd: self.query(cmd).value for cmd in group}
        parts = self._packed(group)
        if parts is None:
            self._pack_failures += 1
            if self._pack_failures >= 2 and self.pack:
                self.pack = False
                log.warning("this adapter rejects multi-PID requests; polling one PID per "
                            "request")
            return self.query_group(group) if not self.can_pack else \
                {cmd: self.query(cmd).value for cmd in group}
        self._pack_failures = 0
        return {cmd: None if parts.get(cmd.pid) is None else
                decode_payload(cmd, parts[cmd.pid]) for cmd in group}

    def query_values(self, commands: Sequence[Any]) -> Dict[Any, Any]:
        out: Dict[Any, Any] = {}
        for group in self.groups(commands):
            out.update(self.query_group(group))
        return out

    def _packed(self, group: Sequence[Any]) -> Optional[Dict[int, bytes]]:
        request = "01" + "".join(f"{c.pid:02X}" for c in group)
        pids = [c.pid for c in group]
        if self.single_ecu:
            bare = self._send_bare(request)
            if bare is not None:  # else a second ECU answered: ask again with headers on
                if not bare:
                    return None
                return split_packed(bare[0], pids) or None
        self._set_headers(True)
        lines = self._send(request)
        messages = self._protocol([ln for ln in lines if is_hex_line(ln)])
        if not messages:
            return None
        engine = [m for m in messages if m.ecu == ECU.ENGINE] or messages
        return split_packed(bytes(engine[0].data), pids) or None

