"""ELM327 adapter: connect, discover the ECUs, poll mode-01 values, read DTCs and the VIN.

A reply becomes a value only when it is whole and is the answer to this request from the
engine: the prompt was seen, the message came from the engine's address (headers stay
on, ATH1, on every protocol: the ECU is known by its header, never by the order of
replies), the mode/PID echo matches, and the data length is the PID's SAE J1979 length.
Anything else is an empty cell and a counted anomaly, logged once per kind.

Speed-ups, each provably safe or dropped where it is not (ELM327 datasheet; clones
differ):
- echo, spaces and line feeds off; a bounded reply timeout (ATST, 100 ms) and adaptive
  timing (ATAT1);
- on CAN, up to 6 mode-01 PIDs per request; PIDs the engine leaves out of a packed answer
  are asked singly at once, and a PID left out three times running is asked singly from
  then on; an adapter that refuses packed requests three times running gets single PIDs;
- a response-count digit ('010C1': return after one frame instead of waiting out the
  timeout), learnt from a reply without it, for mode-01 only, re-learnt every
  RELEARN seconds, and dropped as soon as a reply with it lacks the engine's answer (an
  ECU that woke up after connect); never for DTCs or the VIN;
- a higher serial speed where the adapter can switch (STN 'STBR', ELM 'ATBRD').

python-OBD decodes the PIDs it knows, ECCM's own j1979 table the rest (0x60-0xC4;
eccm.sources.obd.values); this module does all the talking.
Used by the OBD poller thread only.
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import obd

from eccm.sources.obd.link import (RESYNC, SEARCH_TIMEOUT, AdapterError, Answer, ElmLink,
                                   PortInUse, is_url)
from eccm.sources.obd.frames import (CAN11, CAN29, Message, Reply, decode_dtcs,
                                     decode_mode09_items, decode_vin, dtc_code,
                                     engine_address, freeze_frame_data, item_text,
                                     parse_reply, split_mode01)
from eccm.sources.obd import j1979
from eccm.sources.obd.values import decode_data, flatten, is_recordable

log = logging.getLogger(__name__)

__all__ = ["AdapterError", "PortInUse", "NoCar", "ReadError", "ElmConnection",
           "probe_voltage", "MAX_PACK"]

CAN_PROTOCOLS = CAN11 | CAN29
PROTOCOL_NAMES = {
    "1": "SAE J1850 PWM", "2": "SAE J1850 VPW", "3": "ISO 9141-2",
    "4": "ISO 14230-4 (KWP 5BAUD)", "5": "ISO 14230-4 (KWP FAST)",
    "6": "ISO 15765-4 (CAN 11/500)", "7": "ISO 15765-4 (CAN 29/500)",
    "8": "ISO 15765-4 (CAN 11/250)", "9": "ISO 15765-4 (CAN 29/250)",
}
MAX_PACK = 6          # PIDs per mode-01 request on CAN (SAE J1979)
PROBE_BAUDS = (38400, 9600, 115200, 230400, 57600, 19200)
BRD_DIVISORS = {115200: 0x23, 230400: 0x11, 500000: 0x08}  # ATBRD: 4 MHz / divisor
RELEARN = 30.0        # s between two replies without the count digit, per request
PARTIAL_LIMIT = 3     # packed answers in a row without a PID: ask it singly from then on
REFUSED_LIMIT = 3     # packed requests refused in a row: single PIDs for the session
LONG_REPLY = 5.0      # s for a DTC list or the VIN (several messages)


class NoCar(Exception):
    """The adapter answers but no ECU does (ignition off)."""


class EngineChanged(AdapterError):
    """The standard engine address answered after connect: discovery must start again."""


class ProfileUnsupported(Exception):
    """The adapter cannot address one ECU (ATSH refused): no profile requests."""


class ReadError(Exception):
    """A DTC/VIN/clear request got no whole answer; never read as an empty list."""


def _frame_count(lines: Sequence[str]) -> int:
    """Frames in a reply, what a response-count digit counts (ELM327: lines of data)."""
    return sum(1 for ln in lines if ln.replace(" ", "") and all(
        c in "0123456789ABCDEFabcdef" for c in ln.replace(" ", "")))


def _mode01_sizes() -> Dict[int, int]:
    """SAE J1979 data length of each mode-01 PID python-OBD knows (its byte count less
    the two echo bytes), of those ECCM decodes itself (j1979), and of the supported-PID
    bitmaps (4 bytes)."""
    sizes = {base: 4 for base in range(0x00, 0x100, 0x20)}
    sizes.update({c.pid: c.bytes - 2 for c in obd.commands[1] if c is not None and c.bytes > 2})
    sizes.update({pid: spec.size for pid, spec in j1979.PIDS.items()})
    return sizes


def mode01_commands(pids: Iterable[int]) -> List[Any]:
    """The decoders of these mode-01 data PIDs: python-OBD's where it has one, else
    ECCM's own (j1979); PIDs neither knows are left out (never recorded undecoded)."""
    found: List[Any] = []
    for pid in sorted(pids):
        if pid % 0x20 == 0:
            continue  # a supported-PID bitmap, not a value
        if obd.commands.has_pid(1, pid):
            found.append(obd.commands[1][pid])
        elif pid in j1979.PIDS:
            found.append(j1979.PIDS[pid])
    return found


SIZES = _mode01_sizes()


class ElmConnection:
    """A connected car; the part of python-OBD's OBD interface that ECCM uses."""

    def __init__(self, port: str, baudrate: Optional[int] = None,
                 protocol: Optional[str] = None, timeout: float = 1.0,
                 fast_baudrate: int = 0, pack: bool = True, link: Optional[ElmLink] = None):
        """`link`: the adapter's port already open (the poller holds it between sessions,
        so that no other process takes the adapter while the car is off)."""
        self.port = port
        self._own_link = link is None
        self.timeout = timeout
        self.link: Optional[ElmLink] = None
        self.version = ""
        self.protocol_id = ""
        self.pack = pack
        self.engine = 0                      # the engine's address (header)
        self.ecus: Set[int] = set()          # every address that has answered
        self.supported: Set[int] = set()     # mode-01 PIDs the engine supports
        self.supported_by: Dict[int, Set[int]] = {}  # ECU -> the mode-01 PIDs it supports
        self.supported_commands: Set[Any] = set()  # the engine's decodable PIDs
        self.single_pids: Set[int] = set()   # PIDs an ECU leaves out of packed answers
        self.anomalies: "Counter[str]" = Counter()
        self._seen_anomalies: Set[str] = set()
        self._partial: "Counter[Tuple[int, int]]" = Counter()  # (ECU, PID) left out
        self._refused = 0                    # packed requests turned down in a row
        self._refused_last = False
        self._torn_last = False
        self._digit_refused = 0
        self._padded: Set[int] = set()       # CAN senders that fill frames to 8 bytes
        self._digit = True                   # the adapter understands count digits
        self._hints: Dict[str, int] = {}     # request key -> frames of a whole reply
        self._learnt_at: Dict[str, float] = {}
        self._own_hint: Set[str] = set()     # single PIDs that differ from the others
        self._single_keys: Dict[int, str] = {}  # PID -> its hint key (the ECUs supporting it)
        self._cra = True                     # the adapter takes ATCRA (receive filter)
        self._filtered = False               # a receive filter is set now
        self.profiles_off = ""               # why profile requests stopped, if they did
        self._connect(baudrate, protocol, fast_baudrate, link)

    def _command(self, text: str, timeout: Optional[float] = None) -> Answer:
        if self.link is None:
            raise AdapterError("not connected")
        return self.link.command(text, timeout)

    def _connect(self, baudrate: Optional[int], protocol: Optional[str],
                 fast_baudrate: int, link: Optional[ElmLink]) -> None:
        url = is_url(self.port)
        real = self.port if url else os.path.realpath(self.port)
        self.link = link or ElmLink(real, baudrate or PROBE_BAUDS[0], self.timeout)
        try:
            if baudrate is None and not url and not real.startswith("/dev/pts/") and \
                    self._own_link:  # a held link is at the speed the adapter was left at
                self._probe_baud()
            reply = self._command("ATWS", timeout=1.5).lines  # warm start, no reset wait
            if not any("ELM" in ln or "STN" in ln for ln in reply):
                reply = self._command("ATZ", timeout=3).lines  # v1.0 clones lack ATWS
            if not any("ELM" in ln or "STN" in ln or "OK" in ln for ln in reply):
                raise AdapterError("no ELM327 answers on this port")
            # Adaptive timing stays off (AT0) until the ECUs are known: with it the adapter
            # may stop listening after a fast gearbox and never hear a slower engine.
            for setting in ("ATE0", "ATL0", "ATS0", "ATH1", "ATAT0"):
                answer = self._command(setting)
                if setting == "ATH1" and "OK" not in answer.lines:
                    raise AdapterError("the adapter cannot show message headers (ATH1)")
            self.version = " ".join(self._command("ATI").lines)
            sti = self._command("STI").lines
            if sti and sti[0] != "?" and "STN" in sti[0]:
                self.version += f" / {sti[0]}"
            if fast_baudrate and not url and fast_baudrate > self.link.baudrate:
                self._switch_baud(fast_baudrate)
            self._command(f"ATSP{protocol or '0'}")
            first = self._command("0100", timeout=SEARCH_TIMEOUT)
            dpn = self._command("ATDPN").lines
            self.protocol_id = (dpn[0] if dpn else "").lstrip("A") or (protocol or "")
            if self.protocol_id not in PROTOCOL_NAMES:
                if not first.complete or not _frame_count(first.lines):
                    raise NoCar(f"the adapter answers but the car does not "
                                f"({' '.join(first.lines) or 'no reply'}; ignition off?)")
                raise AdapterError(f"unsupported OBD protocol {dpn!r}")
            answers = self._bitmaps(first)
            if not first.complete or not answers:
                raise NoCar(f"the adapter answers but the car does not "
                            f"({' '.join(first.lines) or 'no reply'}; ignition off?)")
            for _ in range(2):  # the engine may be slow to wake: ask again before choosing
                if engine_address(self.protocol_id) in answers:
                    break
                answers.update(self._bitmaps(self._command("0100")))
            self.ecus = set(answers)
            self.engine = self._choose_engine(answers)
            # Without the engine at its standard address the set of ECUs is in doubt (a
            # sleeping engine?): no count digit, so that every reply is heard whole.
            self._digit = self.engine == engine_address(self.protocol_id)
            # A bounded reply timeout: 100 ms, twice the 50 ms an ECU may take (P2max of
            # ISO 15765-4 / 14230), instead of the adapter's 200 ms default; adaptive
            # timing from now on.
            self._command("ATST19")
            self._command("ATAT1")
            self._load_supported(answers)
            log.info("ECUs answering: %s; engine %X", " ".join(f"{e:X}" for e in
                                                                sorted(self.ecus)),
                     self.engine)
        except Exception:
            self.close()
            raise

    def _bitmaps(self, answer: Answer) -> Dict[int, bytes]:
        """{ECU: its whole 0100 answer}."""
        return {m.ecu: m.data for m in self._parse(answer).messages
                if m.data[:2] == b"\x41\x00" and len(m.data) == 6}

    def _choose_engine(self, answers: Dict[int, bytes]) -> int:
        """The engine's address: the standard one (7E8, or 10) if it answered, else the
        only ECU, else the one supporting the most PIDs (as python-OBD does)."""
        standard = engine_address(self.protocol_id)
        if standard in answers:
            return standard
        if len(answers) == 1:
            return next(iter(answers))
        return max(sorted(answers), key=lambda e: bin(int.from_bytes(answers[e][2:],
                                                                     "big")).count("1"))

    def _probe_baud(self) -> None:
        """Find the adapter's speed: a nonsense command gets a prompt at the right one."""
        assert self.link is not None
        for baud in PROBE_BAUDS:
            self.link.baudrate = baud
            if self.link.raw(RESYNC, timeout=0.3).complete:
                return
        raise AdapterError("no ELM327 answers at any usual baud rate")

    def _switch_baud(self, baud: int) -> None:
        """STN 'STBR' or ELM 'ATBRD'; the adapter reverts by itself if we miss its ID."""
        assert self.link is not None
        old = self.link.baudrate
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
                self.link.read_until(b">", 0.3)
                continue
            self.link.baudrate = baud
            if ident in self.link.read_until(ident, 0.2):
                self.link.read_until(b"\r", 0.1)  # the rest of the ID line
                self.link.write(b"\r")
                if b"OK" in self.link.read_until(b">", 0.3):
                    log.info("adapter switched to %d baud (%s)", baud, cmd.split()[0])
                    return
            self.link.baudrate = old  # the adapter goes back after its timeout
            # 0.1 s > ATBRT (75 ms): the adapter is back at the old speed for the next
            # command; what it sent at the wrong speed meanwhile is dropped.
            self.link.discard(0.1)
            self.link.synced = False  # the next command waits for a clean prompt
        log.info("adapter stays at %d baud (no speed switch supported)", old)

    def _load_supported(self, answers: Dict[int, bytes]) -> None:
        """Every ECU's supported-PID bitmaps (0100, 0120, ... 01C0; each says if the next
        range exists). The range requests go to all ECUs at once; each answer is its
        sender's."""
        self.supported_by = {ecu: set() for ecu in answers}
        bitmaps = dict(answers)
        base = 0x00
        while bitmaps:
            for ecu, bitmap in bitmaps.items():
                bits = int.from_bytes(bitmap[2:6], "big")
                self.supported_by[ecu].update(base + i + 1 for i in range(32)
                                              if bits & (1 << (31 - i)))
            base += 0x20
            asking = {ecu for ecu in bitmaps if base in self.supported_by[ecu]}
            if base > 0xC0 or not asking:
                break
            got: Dict[int, bytes] = {}
            for _ in range(3):  # a reply lost on the way is asked again
                for ecu, parts in self._ask_mode01(f"01{base:02X}", [base], hint=False
                                                   ).items():
                    if ecu in asking and base in parts:
                        got[ecu] = parts[base]
                if asking <= set(got):
                    break
            for ecu in sorted(asking - set(got)):
                log.warning("ECU %X announced PIDs above %02X but never answered %02X: "
                            "those PIDs are not polled this session", ecu, base, base)
            bitmaps = {ecu: bytes([0x41, base]) + data for ecu, data in got.items()}
        self.supported = self.supported_by.get(self.engine, set())
        self.supported_commands = set(mode01_commands(self.supported))
        self._single_keys.clear()  # keys asked for while the bitmaps were being read

    def commands_of(self, ecu: int) -> List[Any]:
        """The decodable mode-01 PIDs one ECU supports, by PID."""
        return mode01_commands(self.supported_by.get(ecu, ()))

    # What went wrong, counted.

    def _anomaly(self, kind: str, detail: str) -> None:
        """Count one anomaly (STATUS shows the counts); log each kind once a connection."""
        self.anomalies[kind] += 1
        if kind not in self._seen_anomalies:
            self._seen_anomalies.add(kind)
            log.warning("OBD reply not used (%s): %s; counted in STATUS as %s, never "
                        "recorded", kind.replace("_", " "), detail, kind)

    def _parse(self, answer: Answer) -> Reply:
        reply = parse_reply(answer.lines, self.protocol_id, self._padded)
        self._padded |= reply.padded  # from now on their frames must be 8 bytes
        return reply

    def _note(self, answer: Answer, reply: Reply, request: str, learn: bool = True) -> None:
        """Count what was wrong with a reply; with `learn`, an ECU answering a functional
        request for the first time joins the car's ECUs."""
        if not answer.complete:
            self._anomaly("no_prompt", f"request {request} got no prompt in time")
        for problem in reply.problems:
            kind = "torn_reply" if problem.startswith("ECU") else \
                "unreadable_line" if problem.startswith("unreadable") else "adapter_fault"
            self._anomaly(kind, f"request {request}: {problem}")
        new = set(reply.ecus) - self.ecus
        if new and learn:
            self.ecus |= new
            log.info("ECU %s answers now (request %s)", " ".join(f"{e:X}" for e in
                                                                sorted(new)), request)
            standard = engine_address(self.protocol_id)
            if standard in new and self.engine != standard:
                # The engine woke up after another ECU was taken for it: start again, so
                # that its own PIDs are read and nothing else is recorded as the engine's.
                raise EngineChanged(f"the engine ({standard:X}) answers now, after ECU "
                                    f"{self.engine:X} was taken for it: reconnecting")

    def _hint_key(self, request: str) -> str:
        """Single PIDs that the same ECUs support share one learnt response count (as
        many answers); a packed request, or a PID that differs, has its own."""
        if len(request) != 4 or request in self._own_hint:
            return request
        pid = int(request[2:], 16)
        key = self._single_keys.get(pid)
        if key is None:  # the ECUs are known once connected: worked out once per PID
            key = self._single_keys[pid] = "single:" + ",".join(
                f"{ecu:X}" for ecu, pids in sorted(self.supported_by.items()) if pid in pids)
        return key

    def _ask_mode01(self, request: str, pids: Sequence[int], hint: bool = True
                    ) -> Dict[int, Dict[int, bytes]]:
        """{ECU: {pid: data}} of every whole answer to one mode-01 request; an ECU whose
        answer is not usable is absent (each case counted)."""
        key = self._hint_key(request)
        now = time.monotonic()
        digit = self._hints.get(key) if hint and self._digit and \
            now - self._learnt_at.get(key, -RELEARN) < RELEARN else None
        answer = self._command(request + (f"{digit:X}" if digit else ""))
        if digit and answer.complete and answer.lines == ["?"]:
            answer = self._command(request)  # the same request without the digit
            digit = None
            if answer.complete and answer.lines != ["?"]:
                self._digit_refused += 1  # twice, not one garbled request
                if self._digit_refused >= 2:
                    self._digit = False  # this adapter does not take count digits
                    log.info("the adapter refuses response-count digits: waiting out "
                             "each reply")
        reply = self._parse(answer)
        self._note(answer, reply, request)
        # The adapter (or the car) turned the request down as a whole: what a clone that
        # cannot pack PIDs does. Not a fault of the link, which says nothing of packing.
        self._refused_last = answer.complete and (reply.unknown_command or (
            reply.no_data and not reply.messages))
        # Lost on the way (cut, garbled, late): worth asking again, once, at once.
        self._torn_last = not answer.complete or bool(reply.problems)
        if not answer.complete or reply.unknown_command or any(
                not p.startswith(("ECU", "unreadable")) for p in reply.problems):
            return {}
        got: Dict[int, Dict[int, bytes]] = {}
        engine = self._engine_answer(request, pids, reply, answer, digit, key, now)
        if engine is not None:
            got[self.engine] = engine
        for ecu in reply.ecus:
            if ecu != self.engine:
                parts = self._one_answer(request, pids, reply, ecu)
                if parts is not None:
                    got[ecu] = parts
        return got

    def _engine_answer(self, request: str, pids: Sequence[int], reply: Reply,
                       answer: Answer, digit: Optional[int], key: str, now: float
                       ) -> Optional[Dict[int, bytes]]:
        """The engine's part of a reply; learns the response count from it."""
        engine = [m for m in reply.from_ecu(self.engine) if m.data[:1] != b"\x7f"]
        frames = _frame_count(answer.lines)
        if digit is None and engine and frames <= 15:  # one hex digit, or none at all
            self._hints[key] = frames
            self._learnt_at[key] = now
        if not engine:
            torn = any(p.startswith(f"ECU {self.engine:X}:") for p in reply.problems)
            self._torn_last = torn or bool(reply.messages)  # the engine's lost on the way?
            if digit is not None and not torn:  # another ECU's frame ended the reply
                self._hints.pop(key, None)
                if key.startswith("single:"):
                    self._own_hint.add(request)
                self._anomaly("count_digit_cut", f"request {request}{digit:X}: the "
                              "engine's answer was not among the replies counted")
            return None
        parts = self._one_answer(request, pids, reply, self.engine)
        if parts is None:
            self._torn_last = True  # a cut frame can still look like a short message
        return parts

    def _one_answer(self, request: str, pids: Sequence[int], reply: Reply, ecu: int
                    ) -> Optional[Dict[int, bytes]]:
        """{pid: data} of one ECU's single whole answer; None (counted) otherwise."""
        messages = [m for m in reply.from_ecu(ecu) if m.data[:1] != b"\x7f"]
        if not messages:
            return None
        if len(messages) > 1:
            self._anomaly("ecu_twice", f"request {request}: two answers from ECU {ecu:X}")
            return None
        parts = split_mode01(messages[0].data, pids, SIZES)
        if parts is None:
            self._anomaly("mismatch", f"request {request} answered "
                          f"{messages[0].data.hex().upper()} by ECU {ecu:X}: not those "
                          "PIDs with their SAE J1979 lengths")
        return parts

    @property
    def can_pack(self) -> bool:
        return self.pack and self.protocol_id in CAN_PROTOCOLS

    def groups(self, commands: Sequence[Any]) -> List[List[Any]]:
        """The requests that read these mode-01 commands: by six on CAN, else one each;
        PIDs the engine leaves out of packed answers alone."""
        if not self.can_pack:
            return [[c] for c in commands]
        packable = [c for c in commands if c.pid not in self.single_pids]
        alone = [[c] for c in commands if c.pid in self.single_pids]
        return [packable[i:i + MAX_PACK] for i in range(0, len(packable), MAX_PACK)] + alone

    def _ask_single(self, pid: int) -> Dict[int, Dict[int, bytes]]:
        """One PID; asked again, once, at once, if the engine's reply was lost on the way
        (a noisy link, not the car: a cut frame, a late prompt)."""
        got = self._ask_mode01(f"01{pid:02X}", [pid])
        if self.engine not in got and self._torn_last:
            for ecu, parts in self._ask_mode01(f"01{pid:02X}", [pid]).items():
                got.setdefault(ecu, parts)
        return got

    def query_group(self, group: Sequence[Any]) -> Dict[Any, Any]:
        """The engine's decoded values of one request's commands (None where it gave
        nothing)."""
        engine = self.query_group_all(group).get(self.engine, {})
        return {cmd: engine.get(cmd) for cmd in group}

    def query_group_all(self, group: Sequence[Any]) -> Dict[int, Dict[Any, Any]]:
        """{ECU: {command: decoded value or None}} of one request, for every ECU that
        supports one of its PIDs: each value is the answer of the ECU it is filed under."""
        pids = [c.pid for c in group]
        request = "01" + "".join(f"{p:02X}" for p in pids)
        got = self._ask_single(pids[0]) if len(group) == 1 else \
            self._ask_mode01(request, pids)
        if len(group) > 1:
            refused, packed = self._refused_last, self.engine in got
            if packed:
                self._refused = 0
            again: List[int] = []
            for pid in pids:
                for ecu, parts in got.items():
                    if pid not in self.supported_by.get(ecu, ()):
                        continue
                    if pid in parts:
                        self._partial[ecu, pid] = 0
                        continue
                    self._partial[ecu, pid] += 1
                    self._anomaly("partial_packed", f"ECU {ecu:X} left PID {pid:02X} out "
                                  f"of its answer to {request}")
                    if self._partial[ecu, pid] >= PARTIAL_LIMIT and \
                            pid not in self.single_pids:
                        self.single_pids.add(pid)
                        log.info("ECU %X leaves PID %02X out of packed replies: asking it "
                                 "alone", ecu, pid)
                    if pid not in again:
                        again.append(pid)
                if pid in self.supported and self.engine not in got and pid not in again:
                    again.append(pid)  # the engine's answer was lost: each PID alone
            for pid in again:
                for ecu, parts in self._ask_single(pid).items():
                    got.setdefault(ecu, {}).update(parts)
            # Turned down as a whole while the same PIDs, asked alone, were answered: the
            # adapter cannot pack (a silent car, cranking say, is no evidence of that).
            if refused and any(got.values()):
                self._refused += 1
                if self._refused >= REFUSED_LIMIT and self.pack:
                    self.pack = False
                    log.warning("this adapter does not answer multi-PID requests; polling "
                                "one PID per request")
        values: Dict[int, Dict[Any, Any]] = {}
        for ecu, supported in self.supported_by.items():
            mine = [cmd for cmd in group if cmd.pid in supported]
            if mine:
                parts = got.get(ecu, {})
                values[ecu] = {cmd: None if cmd.pid not in parts else
                               self._decode(cmd, parts[cmd.pid]) for cmd in mine}
        return values

    def _decode(self, cmd: Any, data: bytes) -> Any:
        """The PID's decoder on a whole answer; None (counted) where it fails on bytes
        it does not expect (python-OBD's AIR_STATUS with a reserved bit: IndexError)."""
        try:
            return decode_data(cmd, data)
        except (ValueError, IndexError, KeyError, TypeError, ArithmeticError) as exc:
            self._anomaly("undecodable", f"{cmd.name} = {data.hex().upper()}: {exc!r}")
            return None

    def query(self, cmd: Any) -> Any:
        """One mode-01 value now (legacy QUERY_COMMAND); None without a whole answer."""
        if cmd.mode != 1 or cmd.pid not in self.supported:
            return None
        return self.query_group([cmd])[cmd]

    def _long_request(self, request: str) -> Reply:
        """A request whose answer may span several messages: never a count digit, and no
        adaptive timing (which may stop listening before a slower ECU's last message)."""
        self._command("ATAT0")
        try:
            answer = self._command(request, timeout=max(self.timeout, LONG_REPLY))
        finally:
            self._command("ATAT1")
        reply = self._parse(answer)
        self._note(answer, reply, request)
        if not answer.complete:
            raise ReadError("the adapter did not finish its reply")
        if reply.problems:
            raise ReadError(f"the reply was not whole ({reply.problems[0]})")
        if reply.unknown_command:
            raise ReadError("the adapter refused the request")
        return reply

    def read_dtcs(self, mode: int = 3) -> List[str]:
        """Stored (03), pending (07) or permanent (0A) codes of every ECU, in order, no
        duplicates. Raises ReadError unless every ECU answered a whole list."""
        codes = self._dtcs_once(mode)
        if self.protocol_id not in CAN_PROTOCOLS:
            # A legacy list is several messages with no count: one lost on the way leaves
            # a shorter list that looks whole. Two reads must agree.
            if self._dtcs_once(mode) != codes:
                raise ReadError("two reads of the list differ (a message lost?): try again")
        return codes

    def _dtcs_once(self, mode: int) -> List[str]:
        reply = self._long_request(f"{mode:02X}")
        positive = [m for m in reply.messages if m.data[:1] == bytes([0x40 + mode])]
        if not positive:
            raise ReadError("the car did not answer the trouble code request")
        silent = self.ecus - {m.ecu for m in positive}
        if mode in (3, 7) and silent:  # SAE J1979: every OBD ECU answers, codes or none
            raise ReadError(f"ECU {' '.join(f'{e:X}' for e in sorted(silent))} did not "
                            "answer the trouble code request")
        codes: List[str] = []
        can = self.protocol_id in CAN_PROTOCOLS
        for ecu in sorted({m.ecu for m in positive}):
            try:
                found = decode_dtcs([m for m in positive if m.ecu == ecu], mode, can)
            except ValueError as exc:
                raise ReadError(f"ECU {ecu:X}: {exc}") from None
            codes += [c for c in found if c not in codes]
        return codes

    def clear_dtcs(self) -> int:
        """Mode 04; the number of stored codes left afterwards."""
        return len(self.clear_and_reread()[0])

    def clear_and_reread(self) -> Tuple[List[str], Optional[List[str]]]:
        """Mode 04, then the stored (03) and pending (07) codes there are now (a fault still
        present sets its code again); pending None if only that list could not be read.
        Raises ReadError if the clear was not confirmed or the stored list not read."""
        reply = self._long_request("04")
        if not any(m.data[:1] == b"\x44" for m in reply.messages):
            raise ReadError("the car did not confirm the clear request")
        stored = self.read_dtcs(3)
        try:
            return stored, self.read_dtcs(7)
        except ReadError:
            return stored, None

    def read_vin(self) -> Optional[str]:
        """The VIN (mode 09 PID 02) of the engine, or None unless whole and valid."""
        try:
            reply = self._long_request("0902")
        except ReadError as exc:
            log.info("no VIN: %s", exc)
            return None
        messages: List[Message] = reply.from_ecu(self.engine) or \
            (reply.messages if len(reply.ecus) == 1 else [])
        vin = decode_vin(messages, self.protocol_id in CAN_PROTOCOLS) if messages else None
        if messages and vin is None:
            self._anomaly("bad_vin", "the VIN reply is not 17 valid characters")
        return vin

    def read_identification(self) -> Dict[int, Dict[str, Any]]:
        """{ECU: its name, calibration IDs and CVNs} from mode 09 (CAN: one counted
        message each). What an ECU does not answer whole is left out, never guessed."""
        found: Dict[int, Dict[str, Any]] = {ecu: {} for ecu in sorted(self.ecus)}
        if self.protocol_id not in CAN_PROTOCOLS:
            return found  # legacy buses split these into unnumbered pieces: not read
        for pid, key in ((0x0A, "name"), (0x04, "calibration_ids"), (0x06, "cvns")):
            try:
                reply = self._long_request(f"09{pid:02X}")
            except ReadError as exc:
                log.info("no answer to 09%02X: %s", pid, exc)
                continue
            for ecu in reply.ecus:
                items = decode_mode09_items(reply.from_ecu(ecu), pid)
                if items is None:
                    if any(m.data[:1] == b"\x49" for m in reply.from_ecu(ecu)):
                        self._anomaly("bad_identification", f"ECU {ecu:X}: 09{pid:02X} "
                                      "answer not whole")
                    continue
                if pid == 0x06:
                    value: Any = [item.hex().upper() for item in items]
                else:
                    texts = [item_text(item, name=pid == 0x0A) for item in items]
                    if None in texts:
                        self._anomaly("bad_identification", f"ECU {ecu:X}: 09{pid:02X} "
                                      "is not text")
                        continue
                    value = texts[0] if pid == 0x0A else texts
                found.setdefault(ecu, {})[key] = value
        return found

    def read_freeze_frame(self) -> Optional[Dict[str, Any]]:
        """The engine's freeze frame (mode 02, frame 00): the code that stored it and the
        values it holds, or None when there is none (or no whole answer)."""
        try:
            reply = self._long_request("020200")
        except ReadError:
            return None
        data = freeze_frame_data(reply.from_ecu(self.engine), 0x02, 2)
        if data is None or data == b"\x00\x00":
            return None
        frame: Dict[str, Any] = {"dtc": dtc_code(data[0], data[1]), "values": {}}
        stored: Set[int] = set()
        base = 0x00
        while base <= 0xC0 and (base == 0 or base in stored):
            try:
                reply = self._long_request(f"02{base:02X}00")
            except ReadError:
                break
            bitmap = freeze_frame_data(reply.from_ecu(self.engine), base, 4)
            if bitmap is None:
                break
            bits = int.from_bytes(bitmap, "big")
            stored.update(base + i + 1 for i in range(32) if bits & (1 << (31 - i)))
            base += 0x20
        for cmd in mode01_commands(stored - {0x02}):
            if not is_recordable(cmd):
                continue
            try:
                reply = self._long_request(f"02{cmd.pid:02X}00")
            except ReadError:
                continue
            data = freeze_frame_data(reply.from_ecu(self.engine), cmd.pid, SIZES[cmd.pid])
            value = None if data is None else self._decode(cmd, data)
            for name, plain_value in flatten(cmd, value).items():
                frame["values"][name] = plain_value
        return frame

    def query_profile(self, commands: Sequence[Any]) -> Dict[str, Any]:
        """{signal id: value} of vehicle-profile requests (mode 21/22 to one ECU's
        header). Each answer is taken only from the ECU the profile names, whole and
        echoing this request; the functional OBD header is restored afterwards, or
        AdapterError (the next mode-01 request must not go to that ECU). An adapter that
        cannot address an ECU turns profiles off for the connection (`profiles_off`)."""
        values: Dict[str, Any] = {}
        if self.protocol_id not in CAN_PROTOCOLS or self.profiles_off:
            return values  # profiles address CAN ECUs: refused at the run's start
        current: Optional[Tuple[int, int]] = None
        switched = False
        try:
            for command in sorted(commands, key=lambda c: (c.header, c.receive)):
                if current != (command.header, command.receive):
                    current = (command.header, command.receive)
                    self._address(command.header, command.receive)
                    switched = True
                values.update(self._ask_profile(command))
        except ProfileUnsupported as exc:
            self.profiles_off = str(exc)
            self._anomaly("profile_header_refused", f"{exc}: no vehicle-profile requests "
                          "until the adapter is reconnected")
        finally:
            if switched:
                self._restore_functional()
        return values

    def _can29(self) -> bool:
        return self.protocol_id in CAN29

    def _setting(self, text: str) -> bool:
        """An AT command; True if the adapter took it ('OK')."""
        return "OK" in self._command(text).lines

    def _address(self, header: int, receive: int) -> None:
        """Requests to `header` (ATSH), only frames from `receive` shown (ATCRA) where the
        adapter can filter: the sender of each answer is checked anyway."""
        if self._can29():
            taken = self._setting(f"ATCP{header >> 24:02X}")
            if taken and not self._setting(f"ATSH{header & 0xFFFFFF:06X}"):
                if not self._setting("ATCP18"):
                    raise AdapterError("the adapter did not take back the OBD priority: "
                                       "reconnecting")
                taken = False
        else:
            taken = self._setting(f"ATSH{header:03X}")
        if not taken:  # the header this batch had before is still set
            raise ProfileUnsupported(f"the adapter refused the header {header:X}")
        if not self._cra:
            return
        if self._setting(f"ATCRA{receive:08X}" if self._can29() else f"ATCRA{receive:03X}"):
            self._filtered = True
            return
        self._cra = False  # an ELM327 before v1.4b (no ATCRA): the sender check alone
        log.info("the adapter refused a receive filter (ATCRA): answers are told apart by "
                 "their sender alone")
        if self._filtered:  # another ECU's filter of this batch must not stay
            self._clear_filter()

    def _restore_functional(self) -> None:
        """Back to the OBD functional header (7DF / 18DB33F1), every sender shown; an
        adapter that refuses is reset by reconnecting (AdapterError)."""
        if self._filtered:
            self._clear_filter()
        if self._can29():
            restored = self._setting("ATCP18") and self._setting("ATSHDB33F1")
        else:
            restored = self._setting("ATSH7DF")
        if not restored:
            raise AdapterError("the adapter did not take back the OBD header: reconnecting")

    def _clear_filter(self) -> None:
        """Every sender shown again: ATCRA without an address (v1.4b), else AT AR; an
        adapter that takes neither is reset by reconnecting (AdapterError)."""
        if not (self._setting("ATCRA") or self._setting("ATAR")):
            raise AdapterError("the adapter did not clear its receive filter: reconnecting")
        self._filtered = False

    def _ask_profile(self, command: Any) -> Dict[str, Any]:
        request = command.request
        answer = self._command(request)
        reply = self._parse(answer)
        self._note(answer, reply, request, learn=False)  # one ECU asked, not the car
        if not answer.complete or reply.unknown_command or any(
                not p.startswith(("ECU", "unreadable")) for p in reply.problems):
            return {}
        if reply.no_data and not reply.messages:
            self._anomaly("profile_no_answer", f"ECU {command.receive:X} did not answer "
                          f"{request}")
            return {}
        sender = command.receive & 0xFF if self._can29() else command.receive
        mine = [m for m in reply.from_ecu(sender)
                if not (m.data[:1] == b"\x7f" and m.data[2:3] == b"\x78")]  # pending
        if not mine:
            self._anomaly("profile_no_answer", f"ECU {command.receive:X} did not answer "
                          f"{request}")
            return {}
        if len(mine) > 1:
            self._anomaly("ecu_twice", f"request {request}: two answers from ECU "
                          f"{command.receive:X}")
            return {}
        if mine[0].data[:1] == b"\x7f":
            self._anomaly("profile_refused", f"ECU {command.receive:X} refused {request} "
                          f"({mine[0].data.hex().upper()})")
            return {}
        try:
            return command.decode(mine[0].data)
        except (ValueError, ArithmeticError) as exc:
            self._anomaly("mismatch", f"request {request} answered "
                          f"{mine[0].data.hex().upper()} by ECU {command.receive:X}: {exc}")
            return {}

    # Python-OBD compatible surface.

    def voltage(self) -> Optional[float]:
        """The supply voltage the adapter measures (ATRV), or None."""
        if self.link is None:
            return None
        return parse_volts(self._command("ATRV").lines)

    def protocol_name(self) -> str:
        return PROTOCOL_NAMES.get(self.protocol_id, "")

    def port_name(self) -> str:
        return self.port

    def close(self) -> None:
        """Done with the car; the port is closed unless it was handed in (held)."""
        if self.link is not None and self._own_link:
            self.link.close()
        self.link = None


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
    link = ElmLink(port if is_url(port) else os.path.realpath(port),
                   baudrate or PROBE_BAUDS[0], timeout)
    try:
        return parse_volts(link.command("ATRV").lines)
    finally:
        link.close()
