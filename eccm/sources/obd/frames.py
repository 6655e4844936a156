"""ELM327 replies -> per-ECU OBD messages, checked whole; DTC and VIN decoding. Pure.

Everything here works on the text lines an ELM327 prints with headers on (ATH1, CAN
auto-formatting ATCAF1, spaces either way), as the ELM327 datasheet shows them:
- CAN 11-bit (protocols 6, 8): `7E8 06 41 0C 1A F8` — the sender's ID, then the ISO-TP
  PCI byte(s) and data;
- CAN 29-bit (7, 9): `18 DA F1 10 03 41 0D 32` — priority/type DA, target F1, sender;
- SAE J1850 and ISO 9141-2 / 14230-4 (1-5): `48 6B 10 41 0D 32 A4` — three header bytes
  (the sender last; KWP's first byte also carries the data length), the data, and the
  frame's check byte, which the adapter has verified: a line that fails it is printed
  with `<DATA ERROR` (or `<RX ERROR`) and is never read here.

A reply that is not whole (an ISO-TP message with a frame missing, a length that does not
match its PCI or format byte, a bad checksum) gives no message for that ECU: the caller
records an empty cell and counts it, never a padded or shifted value (SAE J1979 data
lengths are fixed per PID; ECCM never guesses).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import AbstractSet, Dict, List, Optional, Sequence, Set, Tuple

CAN11 = {"6", "8"}
CAN29 = {"7", "9"}
KWP = {"4", "5"}
LEGACY = {"1", "2", "3", "4", "5"}

# The engine control module's address (SAE J1979 / ISO 15765-4: the ECM answers as 7E8 on
# 11-bit CAN, source address 10 on 29-bit CAN and on the legacy buses (SAE J2178 gives
# 10-17 to engine controllers).
ENGINE_CAN11 = 0x7E8
ENGINE_ADDRESS = 0x10

# Adapter messages that are not data (ELM327 datasheet, "Messages and their meanings").
NO_DATA = "NO DATA"
ADAPTER_FAULTS = ("STOPPED", "BUFFER FULL", "CAN ERROR", "BUS ERROR", "BUS BUSY",
                  "DATA ERROR", "FB ERROR", "RX ERROR", "LV RESET", "ACT ALERT",
                  "UNABLE TO CONNECT", "BUS INIT: ...ERROR", "ERR")

_HEX = re.compile(r"^[0-9A-F]+$")
_VIN_CHARS = re.compile(r"^[A-HJ-NPR-Z0-9]{17}$")  # ISO 3779: no I, O, Q


@dataclass(frozen=True)
class Message:
    """One whole answer of one ECU: its address and its data (mode byte first)."""
    ecu: int
    data: bytes


@dataclass
class Reply:
    """What one request got: whole messages per ECU, and what was wrong with the rest."""
    messages: List[Message]
    problems: List[str]          # torn frames, bad checksums, adapter faults: counted
    no_data: bool = False        # the adapter said NO DATA (nobody answered)
    unknown_command: bool = False  # '?': the adapter did not understand the request
    padded: Set[int] = field(default_factory=set)  # CAN senders that pad single frames

    def from_ecu(self, ecu: int) -> List[Message]:
        return [m for m in self.messages if m.ecu == ecu]

    @property
    def ecus(self) -> List[int]:
        return sorted({m.ecu for m in self.messages})


def _hex_bytes(line: str) -> Optional[bytes]:
    text = line.replace(" ", "").upper()
    if not text or len(text) % 2 or not _HEX.match(text):
        return None
    return bytes.fromhex(text)


def engine_address(protocol: str) -> int:
    return ENGINE_CAN11 if protocol in CAN11 else ENGINE_ADDRESS


def _frame(line: str, protocol: str) -> Optional[Tuple[int, bytes]]:
    """(sender, data after the header) of one printed frame; None if it is not one."""
    text = line.replace(" ", "").upper()
    if not _HEX.match(text or "-"):
        return None
    if protocol in CAN11:
        if len(text) < 5 or len(text) % 2 == 0:  # 3 hex digits of ID + whole bytes
            return None
        return int(text[:3], 16), bytes.fromhex(text[3:])
    raw = _hex_bytes(text)
    if raw is None:
        return None
    if protocol in CAN29:
        if len(raw) < 5 or raw[1] != 0xDA:  # 18 DA <target> <source>: a physical answer
            return None
        return raw[3], raw[4:]
    if protocol in LEGACY:
        if len(raw) < 5:  # three header bytes, at least one data byte, the check byte
            return None
        body = raw[:-1]  # the adapter checked the check byte (else '<DATA ERROR')
        if protocol in KWP and raw[0] & 0x80 and raw[0] & 0x3F != len(body) - 3:
            return None  # the format byte's length disagrees with the bytes received
        return body[2], body[3:]
    return None


def parse_reply(lines: Sequence[str], protocol: str,
                padded: AbstractSet[int] = frozenset()) -> Reply:
    """The lines of one reply (echo and prompt removed) -> whole messages per ECU.

    `padded`: CAN senders known to fill every frame to 8 data bytes, as ISO 15765-4
    asks; a shorter frame of theirs lost bytes on the way (the padding would otherwise
    fill the gap: '7E8 04 41 0C 1A 00 00 00' read as RPM 1664), so it is not whole."""
    reply = Reply([], [])
    can_parts: Dict[int, List[bytes]] = {}
    order: List[int] = []
    for raw in lines:
        line = raw.strip()
        upper = line.upper()
        if not line or upper in ("OK", "SEARCHING...") or upper.startswith("BUS INIT"):
            if upper.endswith("ERROR"):
                reply.problems.append(upper)
            continue
        if upper == NO_DATA:
            reply.no_data = True
            continue
        if upper == "?":
            reply.unknown_command = True
            continue
        if "<" in upper or any(upper.startswith(fault) for fault in ADAPTER_FAULTS):
            reply.problems.append(upper)
            continue
        frame = _frame(line, protocol)
        if frame is None:
            reply.problems.append(f"unreadable line {line[:40]!r}")
            continue
        sender, data = frame
        if protocol in CAN11 or protocol in CAN29:
            if sender not in can_parts:
                can_parts[sender] = []
                order.append(sender)
            can_parts[sender].append(data)
        elif data:
            reply.messages.append(Message(sender, data))
    for sender in order:
        frames = can_parts[sender]
        if any(len(f) == 8 and f[0] >> 4 == 0 and f[0] & 0x0F < 7 for f in frames):
            reply.padded.add(sender)  # a single frame with bytes past its length: padding
        if sender in padded and any(len(f) != 8 for f in frames):
            reply.problems.append(f"ECU {sender:X}: a frame of {sorted({len(f) for f in frames})} "
                                  "bytes where it sends 8 (bytes lost on the way)")
            continue
        messages, problems = _isotp(frames)
        reply.messages += [Message(sender, m) for m in messages]
        reply.problems += [f"ECU {sender:X}: {p}" for p in problems]
    return reply


def _isotp(frames: Sequence[bytes]) -> Tuple[List[bytes], List[str]]:
    """ISO 15765-2 frames of one sender (PCI byte first) -> whole messages."""
    messages: List[bytes] = []
    problems: List[str] = []
    buffer = bytearray()
    expected = 0
    sequence = 0
    for frame in frames:
        kind = frame[0] >> 4 if frame else -1
        if kind == 0:  # single frame: length in the low nibble
            if expected:
                problems.append("multi-frame message cut short")
                expected = 0
            size = frame[0] & 0x0F
            if size == 0 or size > 7 or len(frame) - 1 < size:
                problems.append("single frame shorter than its length")
                continue
            messages.append(bytes(frame[1:1 + size]))
        elif kind == 1 and len(frame) >= 2:  # first frame: 12-bit length
            if expected:
                problems.append("multi-frame message cut short")
            expected = ((frame[0] & 0x0F) << 8) | frame[1]
            buffer = bytearray(frame[2:])
            sequence = 1
        elif kind == 2 and expected:  # consecutive frame: sequence number 1..F, 0, ...
            if frame[0] & 0x0F != sequence & 0x0F:
                problems.append("multi-frame message with a frame missing")
                expected = 0
                continue
            buffer += frame[1:]
            sequence += 1
        else:
            problems.append("frame out of place")
            continue
        if expected and len(buffer) >= expected:
            messages.append(bytes(buffer[:expected]))
            expected = 0
    if expected:
        problems.append("multi-frame message cut short")
    return messages, problems


# Mode 01.

def split_mode01(data: bytes, wanted: Sequence[int], sizes: Dict[int, int]
                 ) -> Optional[Dict[int, bytes]]:
    """A mode-01 answer (41 pidA dataA [pidB dataB ...]) -> {pid: data bytes}.

    Every segment must be a requested PID, once, with exactly its SAE J1979 data length
    (`sizes`), and the segments must fill the message: anything else is None, so no
    value is ever read from a shifted or cut segment. PIDs the ECU left out are absent.
    """
    if len(data) < 2 or data[0] != 0x41:
        return None
    out: Dict[int, bytes] = {}
    i = 1
    while i < len(data):
        pid = data[i]
        size = sizes.get(pid)
        if pid not in wanted or pid in out or size is None or i + 1 + size > len(data):
            return None
        out[pid] = bytes(data[i + 1:i + 1 + size])
        i += 1 + size
    return out


# DTCs (SAE J1979 modes 03, 07, 0A; SAE J2012 code format).

def dtc_code(a: int, b: int) -> str:
    """Two bytes -> 'P0420': 2 bits system, 2 bits first digit, 3 hex digits, upper case."""
    return "PCBU"[a >> 6] + str((a >> 4) & 0x3) + f"{a & 0x0F:X}{b:02X}"


def decode_dtcs(messages: Sequence[Message], mode: int, can: bool) -> List[str]:
    """Whole answers of one ECU to mode 03/07/0A -> its codes, in order, no padding.

    On CAN the answer is one message: 43, a count byte, then 2 bytes per code; the count
    must match. On the legacy buses each message is 43 and three codes (padded with
    0000), and a long list comes as several messages.
    Raises ValueError for an answer that is not whole.
    """
    answer = 0x40 + mode
    codes: List[str] = []
    for message in messages:
        data = message.data
        if not data or data[0] != answer:
            raise ValueError(f"not an answer to mode {mode:02X}")
        if can:
            if len(data) < 2 or len(data) != 2 + 2 * data[1]:
                raise ValueError("DTC count does not match the codes received")
            body = data[2:]
        else:
            body = data[1:]
            if len(body) != 6:
                raise ValueError("a legacy DTC message carries three codes")
        for i in range(0, len(body), 2):
            if body[i] or body[i + 1]:
                codes.append(dtc_code(body[i], body[i + 1]))
    return codes


# VIN (SAE J1979 mode 09 PID 02).

def decode_vin(messages: Sequence[Message], can: bool) -> Optional[str]:
    """Whole answers of one ECU to 0902 -> the VIN, or None unless it is 17 valid
    characters in a message of the right length (a VIN cut by BUFFER FULL is refused)."""
    if can:
        if len(messages) != 1:
            return None
        data = messages[0].data
        if len(data) != 20 or data[:3] != b"\x49\x02\x01":
            return None
        text = data[3:]
    else:  # five messages 49 02 0N + 4 bytes; the first carries 3 padding bytes
        parts = {}
        for message in messages:
            data = message.data
            if len(data) != 7 or data[:2] != b"\x49\x02" or not 1 <= data[2] <= 5:
                return None
            parts[data[2]] = data[3:]
        if sorted(parts) != [1, 2, 3, 4, 5]:
            return None
        joined = b"".join(parts[n] for n in range(1, 6))
        if joined[:3] != b"\x00\x00\x00":
            return None
        text = joined[3:]
    vin = text.decode("ascii", "replace")
    return vin if _VIN_CHARS.match(vin) else None


# Identification (SAE J1979 mode 09): calibration IDs, CVNs, ECU name.

ITEM_SIZES = {0x04: 16, 0x06: 4, 0x0A: 20}  # CALID text, CVN bytes, ECUNAME text


def decode_mode09_items(messages: Sequence[Message], pid: int) -> Optional[List[bytes]]:
    """One ECU's whole CAN answer to 09 04/06/0A -> its items (49 pid count, then `count`
    items of the PID's fixed size); None unless the count and the length agree."""
    size = ITEM_SIZES[pid]
    if len(messages) != 1:
        return None
    data = messages[0].data
    if len(data) < 3 or data[:2] != bytes([0x49, pid]) or data[2] == 0 or \
            len(data) != 3 + size * data[2]:
        return None
    return [data[3 + i * size:3 + (i + 1) * size] for i in range(data[2])]


def item_text(item: bytes, name: bool = False) -> Optional[str]:
    """A CALID or ECU name: printable ASCII padded with NUL at the end; an ECU `name`'s
    acronym may be NUL padded too ('TCM\\0-TransmisCtrl': J1979 gives it 4 bytes). None
    if anything else (a NUL inside a CALID is not padding)."""
    text = item.rstrip(b"\x00")
    if name:
        head, dash, tail = text.partition(b"-")
        text = head.rstrip(b"\x00") + dash + tail
    if not text or any(b < 0x20 or b > 0x7E for b in text):
        return None
    return text.decode("ascii")


def ecu_acronym(name: str) -> Optional[str]:
    """'TCM-TransmissionCtl' -> 'TCM': the acronym J1979 puts before the dash of an ECU
    name (mode 09 PID 0A), if it is one (2-4 letters or digits)."""
    head = name.split("-", 1)[0].strip().rstrip("\x00")
    return head.upper() if "-" in name and re.fullmatch(r"[A-Za-z0-9]{2,4}", head) else None


# Freeze frame (SAE J1979 mode 02, frame 00).

def freeze_frame_data(messages: Sequence[Message], pid: int, size: int) -> Optional[bytes]:
    """One ECU's answer to 02 <pid> 00 -> the PID's data, only if whole (42 pid 00 +
    exactly `size` bytes)."""
    found = [m.data for m in messages if m.data[:3] == bytes([0x42, pid, 0x00])]
    if len(found) != 1 or len(found[0]) != 3 + size:
        return None
    return found[0][3:]
