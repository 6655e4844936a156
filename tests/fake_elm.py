"""An independent fake ELM327 OBD-II adapter (with a simulated car behind it).

This module is written from public documents only -- the Elm Electronics
ELM327 datasheet (ELM327DSH v1.4b / ELM327DSJ v2.x, "OBD to RS232
Interpreter"), SAE J1979 / ISO 15031-5 (OBD services and PIDs), ISO 15765-2/-4
(CAN transport and OBD-on-CAN addressing), SAE J1850, ISO 9141-2 and
ISO 14230-4 (message headers and checksums) -- and from public transcripts of
real adapters.  It deliberately does NOT look at the code it is used to test.
Page numbers below refer to the ELM327DSJ (v2.x) datasheet unless said
otherwise.

Quick use::

    from fake_elm import FakeElm, Ecu     # tests/ is on sys.path under pytest
    with FakeElm(protocol=6, ecus=[Ecu.engine(), Ecu.transmission()]) as fake:
        ser = serial.Serial(fake.port, 38400, timeout=1)
        ser.write(b"010C\\r")
        ...            # read up to the '>' prompt
        fake.true_values("engine", 0x0C)   # [(monotonic_time, rpm), ...]

    # EV battery ECU, manufacturer DIDs (physical request to 7E4 only):
    with FakeElm(protocol=6, ecus=[Ecu.engine(), Ecu.battery()]) as fake:
        ...  # "ATSH7E4", "220101" -> 62 01 01 + 8 bytes (multi-frame)
        fake.true_values("battery", 0x0101, mode=0x22)   # [(t, raw bytes)]

Transports
----------
* A pseudo-terminal (``pty.openpty()``, raw mode).  ``fake.port`` is the
  slave path (``/dev/pts/N``) to open with pyserial.  The baud rate the client
  sets is ignored unless ``enforce_baud=True``.
* Optionally a TCP listener on 127.0.0.1 (``tcp=True``; ``fake.tcp_port``),
  like a Wi-Fi ELM327 at port 35000.  One client at a time; a second
  connection is accepted and closed at once (or takes over, with
  ``tcp_takeover=True``); reconnecting after a disconnect is allowed.  The
  adapter state (echo, headers, protocol...) survives TCP reconnects, as the
  ELM chip behind a Wi-Fi bridge does not see them.

One serving thread handles both transports.  ``start()``/``stop()`` (or use
the object as a context manager).

Adapter behaviour modelled (datasheet section in brackets)
----------------------------------------------------------
* Commands are case-insensitive; spaces and control characters are ignored;
  a lone CR repeats the previous command ["Communicating with the ELM327",
  p.9].  Commands end with CR; LF characters are ignored.
* Every response line ends in CR (CR LF with AT L1); after the last line an
  empty line and the ``>`` prompt follow, e.g. ``41 0C 1A F8\\r\\r>``.
* Echo (AT E0/E1) echoes the received command line followed by CR (CR LF).
* While an OBD request is being processed, any received character
  interrupts it: ``STOPPED`` and the prompt are printed [p.9, "STOPPED" in
  "Error Messages and Alerts", p.89].  The fake discards the interrupting
  bytes up to and including the next CR of the same read (the interrupted
  command is not executed).
* OBD requests: hex digits only, at most 7 data bytes ("?" otherwise)
  ["OBD Commands", p.30].  A single extra hex digit is the *response count*:
  the adapter returns as soon as that many responses arrived instead of
  waiting for the final timeout (ELM327 v1.3+, p.31 "there is a way to speed
  up the retrieval...").  A response here is one message: an ISO-TP message
  on CAN, one line (frame) on the legacy protocols (so ``0902 5`` on J1850).
* Timing: an ECU answers ``latency`` seconds after the request.  The adapter
  waits ``ST`` (AT ST hh; hh x ``st_unit``; the datasheet's unit is 4 ms, the
  default here is 1 ms to keep tests fast) for the first response and, after
  each response, ``ST`` again with AT AT0 or ``min(ST, adaptive_wait)`` with
  adaptive timing AT AT1 (default; AT AT2 halves it) ["AT0, AT1 and AT2"].
  Replies later than the deadline are not printed (recorded as "missed").
* Protocol search: with AT SP 0 (the default) the first OBD request prints
  ``SEARCHING...``; with no answering ECU ``UNABLE TO CONNECT`` [p.89].  A set
  ISO 9141-2 / KWP protocol prints ``BUS INIT: ...OK`` (``BUS INIT: OK`` for
  the KWP fast init) on first contact, or ``BUS INIT: ...ERROR``.  A set CAN
  protocol whose bit rate does not match the car (or a non-CAN car) prints
  ``CAN ERROR``.  J1850 needs no initialisation.
* AT DPN prints ``A6`` when protocol 6 was found automatically and ``6`` when
  it was set [AT DPN: "preceded with the letter 'A'" when automatic].
* Headers (AT H1) per protocol [p.38-39 "Setting the Headers", p.42
  "Multiline Responses"]:
    - CAN 11-bit: ``7E8 06 41 00 BE 3F B8 13 00`` -- ID, PCI byte and all 8
      data bytes including the ECU's padding bytes;
    - CAN 29-bit: ``18 DA F1 10 06 41 00 ...``;
    - J1850 PWM ``41 6B 10 ...``, J1850 VPW / ISO 9141-2 ``48 6B 10 ...``,
      followed by the message's check byte (SAE J1850 CRC-8 for J1850, the
      8-bit sum of all bytes for ISO 9141-2 / ISO 14230-4);
    - ISO 14230-4 (KWP): format byte ``0x80 | data length``, target ``F1``,
      source = ECU address, e.g. ``84 F1 10 41 0C 1A F8 xx``.
* CAN auto formatting (AT CAF1, default): single frames are printed without
  PCI byte or padding; ISO-TP multi-frame messages, with headers off, as a
  total byte count line (``014``) followed by ``0: ...`` (first frame, 6
  bytes), ``1: ...`` (consecutive frames, 7 bytes each, the last one with its
  padding) lines, the index going 0..F then wrapping [p.42, CAF1 p.14].
  With headers on, or with AT CAF0, the raw frames are printed.  With AT CAF0
  the request must carry its own PCI byte.
* AT S0 removes every space (``0:490201...``, ``7E806410C...``).
* BUFFER FULL, CAN ERROR, NO DATA, ? as in "Error Messages and Alerts".
* AT BRD hh handshake ["Using Higher RS232 Baud Rates", p.50-51]: prints
  ``OK`` (no prompt), waits the BRT time (AT BRT hh x 5 ms, default 75 ms),
  prints the ID string, then waits BRT for a CR.  CR seen -> ``OK`` + prompt,
  the new rate (4000/hh kbps) kept; no CR -> the old rate is restored and the
  prompt printed.  With ``enforce_baud=True`` a CR only counts if the client's
  pty is actually set to the new rate (nearest standard rate within 3 %), and
  input received while the client's rate differs from the adapter's is lost.
* AT Z resets everything (banner ``\\r\\rELM327 v1.5\\r\\r>``, echo on) and
  forgets a BRD rate; AT WS is the same without the delay and keeping the
  baud rate [AT WS].  AT D restores the defaults of E/L/S/H/CAF/ST/AT/SH/CRA
  but keeps the protocol.  AT SP saves the protocol (restored by AT Z), AT TP
  does not.
* Other commands answered ``OK``: AT M0/1, R0/1, V0/1, CFC0/1, AL, NL, CP hh,
  CM/CF (accepted, not applied), SW hh, KW0/1, IB10/96, BI, PC (closes the
  session).  AT MA only waits (this fake bus carries no other traffic) until a
  character stops it.  Anything else: ``?``.
* ``flavour="stn"`` adds STI (``STN1110 v4.2.1``), STDI, STBR/STSBR (``OK``).

The car
-------
Each :class:`Ecu` has a CAN ID (7E8..7EF), a legacy / 29-bit address (0x10,
0x18, 0x28...), a latency, a set of mode-01 PIDs, optional VIN, DTC lists and
a deterministic value generator per PID.  Per SAE J1979:

* the supported-PID bitmaps 0100/0120/.../01C0 are computed from the PID set;
  bit 0x20 of a range is set when any higher PID is supported, and an ECU only
  answers a bitmap PID that its previous bitmap announced; 0100 is always
  answered;
* ECUs do not answer unsupported PIDs of a functional request (no negative
  response), so if nobody answers the adapter prints NO DATA;
* on CAN up to 6 PIDs per mode-01 request are allowed and answered in one
  message ``41 pid data pid data ...`` containing only the supported PIDs;
  on the legacy protocols only one PID per request (several -> no answer);
* mode 03/07/0A on CAN: ``43 <count> <2 bytes per DTC>``, multi-frame when
  long, ``43 00`` when empty; on the legacy protocols up to 3 DTCs per
  ``43`` message, padded with ``00 00``, several messages when needed, and
  ``43 00 00 00 00 00 00`` when empty;
* mode 04 (answer ``44``) clears stored and pending DTCs and the MIL but not
  permanent (mode 0A) DTCs;
* 09 02 (VIN): on CAN one ISO-TP message ``49 02 01`` + 17 ASCII bytes; on
  the legacy protocols 5 messages ``49 02 01..05`` with 4 bytes each, the
  first padded with three ``00`` bytes (datasheet p.42, J1979);  09 00
  bitmap, 09 01 (legacy: message count 05), 09 0A (CAN: ECU name, 20 bytes);
* PID 01 byte A: bit 7 = MIL, bits 0-6 = number of stored (confirmed) DTCs;
  bytes B-D the monitor bytes of the datasheet example ``41 01 81 07 65 04``.
* Unsupported services on a *physical* CAN request get ``7F sid 11``.
* Mode 01 PIDs above 0x5F (J1979 / ISO 15031-5 PID table, reference decoders
  in :func:`decode_pid`): 61 / 62 driver's demand / actual engine percent
  torque (A-125 %), 63 engine reference torque (256A+B Nm), 67 engine coolant
  temperature sensors (A bit 0 = sensor 1 supported -> B-40 degC, bit 1 =
  sensor 2 -> C-40 degC), 8D throttle position G (A*100/255 %), A4
  transmission actual gear (A bit 0 = gear number supported, bit 1 = ratio
  supported; B bits 4-7 = gear; (256C+D)/1000 = ratio -- the public PID
  table gives "[A1] supported", B4-B7 gear and the ratio; the bit-0 meaning
  is the reading of the open-source SAE J1699 tester; the fake sends A = 03),
  A6 odometer (u32/10 km).  The default engine keeps :data:`ENGINE_PIDS` (ECCM's
  conformance tests require ECCM to fill every PID the default engine
  supports); ``Ecu.engine(full=True)`` supports :data:`ENGINE_PIDS_FULL` =
  those plus 61, 62, 63, 67, 8D, A4, and has CALIDs/CVNs (below).
* Mode 02 (J1979 "request powertrain freeze frame data"), for an ECU with
  ``freeze_frame=(dtc, {pid: data})``: request ``02 PID 00`` (frame 00 only,
  one PID/frame pair per request), answer ``42 PID 00 data``; ``02 02 00``
  answers the DTC that stored the frame (``0000`` when none is stored);
  ``02 00/20/40.. 00`` the supported-PID bitmaps of the stored PIDs (+ PID 02),
  with the same chaining rule as mode 01.  Other PIDs or frames: no answer.
  Mode 04 clears the frame (J1979 service 04 clears freeze frame data): the
  DTC becomes ``0000`` and only PID 02 stays supported.  An ECU with
  ``freeze_frame=None`` does not implement service 02 (physical CAN request:
  ``7F 02 11``).  Works on every protocol (the answer fits one frame).
* Mode 09 on CAN (J1979 / ISO 15031-5 service 09, ISO 15765-4 format with
  the "number of data items" byte): 09 04 calibration IDs
  ``49 04 <n> <16 bytes per CALID, ASCII, NUL padded>``; 09 06 CVNs
  ``49 06 <n> <4 bytes per CVN>``; both multi-frame when long and announced in
  the 09 00 bitmap only when the ECU has ``calids`` / ``cvns`` (the legacy
  protocols' 09 03 / 09 05 message counts are not modelled).
* Manufacturer services 21 / 22 on CAN (``Ecu.dids`` / ``Ecu.lids``):
  ISO 14229-1 ReadDataByIdentifier, request ``22 DIDhi DIDlo`` (up to 3 DIDs
  in one 7-byte request), positive response ``62 DIDhi DIDlo data``
  (several DIDs: each DID followed by its data, unsupported ones left out);
  KWP2000 (ISO 14230-3) ReadDataByLocalIdentifier, request ``21 LID``,
  response ``61 LID data``.  Only a *physically* addressed request (AT SH
  7E0..7E7 / DA xx F1) is answered: a functional 7DF / 18 DB 33 F1 request
  for 21/22 gets no answer from anybody (so NO DATA) -- the common behaviour
  of real cars, whose ECUs serve enhanced diagnostics on their physical
  request ID only (ISO 15765-4 reserves the functional ID for the
  legislated OBD services; ISO 14229-1 "response behaviour to functionally
  addressed request" suppresses NRC 31 on functional requests anyway).
  Physically asked: unknown DID/LID -> ``7F 22 31`` / ``7F 21 31``
  (requestOutOfRange); wrong request length -> ``7F sid 13``
  (incorrectMessageLengthOrInvalidFormat); an ECU with no DIDs (LIDs) at all
  -> ``7F sid 11`` (serviceNotSupported).  Long answers go out as ISO-TP
  multi-frame exactly like 09 02.  On the legacy protocols 21/22 are not
  answered.
* :meth:`Ecu.battery` -- an EV battery management ECU (7E4 -> 7EC, 29-bit
  ``18 DA F1 44``) with DIDs 0101/0102/0103 and LID 01; the byte layouts are
  in its docstring and decoded by :func:`decode_battery_did`.

Request addressing: on CAN 11-bit the default header 7DF is functional (all
ECUs answer); AT SH 7E0..7E7 addresses only the ECU answering at 7E8..7EF.  On
CAN 29-bit the default is 18 DB 33 F1; ``AT SH DA10F1`` addresses ECU 0x10.
On the legacy protocols a header whose second byte equals an ECU address
addresses that ECU only.  AT CRA hhh / hhhhhhhh (X = wildcard) filters what is
printed; AT CRA with no argument and AT AR reset it.

Truth oracle
------------
Every ECU reply is recorded as a :class:`Reply` ``(t, ecu, mode, pid, data,
delivered, request_no)`` where ``t`` is ``time.monotonic()`` when it was put on
the wire and ``data`` the ECU's data bytes for that PID.  ``delivered`` is
"full", "partial" (truncated / cut by BUFFER FULL) or "missed"/"lost" (never
reached the client).  :func:`decode_pid` is an independent decoder written
from the J1979 formulas.  See :meth:`FakeElm.true_values`,
:meth:`FakeElm.values_between`, :meth:`FakeElm.true_dtcs`.
Modes 02, 09, 21 and 22 are recorded too: mode 02 with ``pid`` = the PID
(decoded like mode 01; PID 02 -> the DTC string, None for 0000), 09 04 ->
list of CALID strings, 09 06 -> list of CVN hex strings, 21 / 22 with
``pid`` = the LID / DID and the raw data bytes (``decode_value`` returns them
raw; :func:`decode_battery_did` decodes the battery's), e.g.
``fake.true_values("battery", 0x0101, mode=0x22)``.  Negative responses are
not recorded (no value was sent).

Values are generated per ECU "slot" (0, 1, 2 = position in the ECU list unless
``Ecu(slot=...)``) from disjoint raw ranges, so the same PID never has the
same value on two ECUs.  The last data byte of a value is never 00, FF, AA,
55 or CC (and one-byte values are never 41 or the PID number), so a reply that
lost its last byte, was zero padded or read from the padding decodes to a
value that ECU never sent.

Fault injection (``quirks=``)
-----------------------------
See :class:`Quirks`.  "every n" faults count OBD requests (AT commands do not
count) from 1, firing when ``request_no % n == 0``.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import select
import socket
import termios
import threading
import time
import tty
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

__all__ = [
    "FakeElm", "Ecu", "Quirks", "Reply", "decode_pid", "decode_value",
    "encode_dtc", "decode_dtc", "decode_dtc_bytes", "j1850_crc", "default_car",
    "PROTOCOL_NAMES", "ENGINE_PIDS", "ENGINE_PIDS_FULL", "BATTERY_PIDS",
    "decode_battery_did", "battery_raw",
]

# --------------------------------------------------------------------------
# Protocol facts (ELM327 datasheet, "AT SP h" table)
# --------------------------------------------------------------------------
PROTOCOL_NAMES = {
    1: "SAE J1850 PWM",
    2: "SAE J1850 VPW",
    3: "ISO 9141-2",
    4: "ISO 14230-4 (KWP 5BAUD)",
    5: "ISO 14230-4 (KWP FAST)",
    6: "ISO 15765-4 (CAN 11/500)",
    7: "ISO 15765-4 (CAN 29/500)",
    8: "ISO 15765-4 (CAN 11/250)",
    9: "ISO 15765-4 (CAN 29/250)",
    10: "SAE J1939 (CAN 29/250)",
    11: "USER1 (CAN 11/125)",
    12: "USER2 (CAN 11/50)",
}
CAN_PROTOS = (6, 7, 8, 9)
CAN29_PROTOS = (7, 9)
J1850_PROTOS = (1, 2)
KLINE_PROTOS = (3, 4, 5)
_CAN_RATE = {6: 500, 7: 500, 8: 250, 9: 250, 10: 250, 11: 125, 12: 50}

DEFAULT_VERSION = "ELM327 v1.5"
DEVICE_DESCRIPTION = "OBDII to RS232 Interpreter"   # AT @1
STN_ID = "STN1110 v4.2.1"
STN_DEVICE = "OBDLink SX r4.2"

_HEX = set("0123456789ABCDEF")
_STANDARD_RATES = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 500000,
                   576000, 921600, 1000000, 1152000, 1500000, 2000000)


# --------------------------------------------------------------------------
# Checksums, DTCs
# --------------------------------------------------------------------------
def j1850_crc(data: Iterable[int]) -> int:
    """SAE J1850 CRC-8 (poly 0x1D, init 0xFF, result inverted).

    Check values: b"123456789" -> 0x4B; request ``68 6A F1 01 00`` -> 0x17.
    """
    crc = 0xFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1D) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc ^ 0xFF


def sum_checksum(data: Iterable[int]) -> int:
    """ISO 9141-2 / ISO 14230-4 check byte: 8-bit sum of all header+data bytes."""
    return sum(data) & 0xFF


_DTC_LETTERS = "PCBU"


def encode_dtc(code: str) -> bytes:
    """``"P0133"`` -> ``b"\\x01\\x33"`` (SAE J2012 / J1979 two-byte DTC)."""
    code = code.strip().upper()
    if len(code) != 5 or code[0] not in _DTC_LETTERS or code[1] not in "0123":
        raise ValueError("bad DTC %r" % code)
    a = (_DTC_LETTERS.index(code[0]) << 6) | (int(code[1]) << 4) | int(code[2], 16)
    return bytes([a, int(code[3:5], 16)])


def decode_dtc(two: Sequence[int]) -> str:
    a, b = two[0], two[1]
    return "%s%d%X%02X" % (_DTC_LETTERS[a >> 6], (a >> 4) & 3, a & 0xF, b)


def decode_dtc_bytes(data: Sequence[int]) -> List[str]:
    """Decode a run of 2-byte DTCs, skipping ``00 00`` fillers."""
    out = []
    for i in range(0, len(data) - 1, 2):
        if data[i] == 0 and data[i + 1] == 0:
            continue
        out.append(decode_dtc(data[i:i + 2]))
    return out


# --------------------------------------------------------------------------
# Reference decoder (SAE J1979 / ISO 15031-5 formulas), strict on length
# --------------------------------------------------------------------------
PID_LENGTHS = {
    0x00: 4, 0x01: 4, 0x04: 1, 0x05: 1, 0x0B: 1, 0x0C: 2, 0x0D: 1, 0x0E: 1,
    0x0F: 1, 0x10: 2, 0x11: 1, 0x1F: 2, 0x20: 4, 0x2F: 1, 0x33: 1, 0x40: 4,
    0x42: 2, 0x46: 1, 0x5B: 1, 0x5C: 1, 0x5E: 2, 0x60: 4, 0x61: 1, 0x62: 1,
    0x63: 2, 0x67: 3, 0x80: 4, 0x8D: 1, 0xA0: 4, 0xA4: 4, 0xA6: 4, 0xC0: 4,
    0xE0: 4,
}
BITMAP_PIDS = (0x00, 0x20, 0x40, 0x60, 0x80, 0xA0, 0xC0, 0xE0)


def decode_pid(pid: int, data: Sequence[int]):
    """Decode mode-01 ``data`` (the bytes after ``41 pid``) per SAE J1979.

    Raises ValueError when the length is not the one J1979 defines.
    Returns: float/int physical value; for 01 a dict(mil, dtc_count);
    for the bitmap PIDs the sorted list of PIDs flagged as supported;
    for 67 a dict {"sensor1": degC, "sensor2": degC} holding only the sensors
    byte A flags as supported; for A4 a dict {"gear": int or None,
    "ratio": float or None} (None when byte A says not supported).
    """
    data = bytes(data)
    n = PID_LENGTHS.get(pid)
    if n is None:
        raise ValueError("no reference formula for PID %02X" % pid)
    if len(data) != n:
        raise ValueError("PID %02X needs %d bytes, got %d" % (pid, n, len(data)))
    a = data[0]
    ab = (data[0] << 8) | data[1] if n >= 2 else None
    if pid in BITMAP_PIDS:
        bits = int.from_bytes(data, "big")
        return [pid + i for i in range(1, 33) if bits & (1 << (32 - i))]
    if pid == 0x01:
        return {"mil": bool(a & 0x80), "dtc_count": a & 0x7F}
    if pid in (0x04, 0x11, 0x2F, 0x5B, 0x8D):  # percent, A*100/255
        return a * 100.0 / 255.0
    if pid in (0x05, 0x0F, 0x46, 0x5C):       # temperature, A-40 degC
        return a - 40
    if pid in (0x0B, 0x0D, 0x33):             # kPa / km/h, A
        return a
    if pid == 0x0C:                           # rpm, (256A+B)/4
        return ab / 4.0
    if pid == 0x0E:                           # timing advance, A/2-64 deg
        return a / 2.0 - 64
    if pid == 0x10:                           # MAF g/s, (256A+B)/100
        return ab / 100.0
    if pid == 0x1F:                           # run time s, 256A+B
        return ab
    if pid == 0x42:                           # control module voltage V
        return ab / 1000.0
    if pid == 0x5E:                           # fuel rate L/h, (256A+B)/20
        return ab / 20.0
    if pid in (0x61, 0x62):                   # percent torque, A-125
        return a - 125
    if pid == 0x63:                           # reference torque Nm, 256A+B
        return ab
    if pid == 0x67:                           # coolant temperature sensors
        out = {}
        if a & 0x01:
            out["sensor1"] = data[1] - 40
        if a & 0x02:
            out["sensor2"] = data[2] - 40
        return out
    if pid == 0xA4:                           # transmission actual gear
        return {"gear": (data[1] >> 4) if a & 0x01 else None,
                "ratio": ((data[2] << 8) | data[3]) / 1000.0 if a & 0x02 else None}
    if pid == 0xA6:                           # odometer km, u32/10
        return int.from_bytes(data, "big") / 10.0
    raise ValueError("no reference formula for PID %02X" % pid)


def decode_value(mode: int, pid: Optional[int], data: Sequence[int]):
    """Decode a recorded reply: mode 1 via :func:`decode_pid`; mode 2 the
    same, PID 02 -> the freeze frame's DTC string (None for 0000); mode 9
    PID 2 -> VIN string, PID 4 -> list of CALID strings (NULs stripped),
    PID 6 -> list of CVN hex strings ("1791BC82"); modes 3/7/0A -> list of
    DTC strings; else (21, 22, 09 0A, ...) the raw bytes."""
    if mode == 0x01:
        return decode_pid(pid, data)
    if mode == 0x02:
        if pid == 0x02:
            if len(data) != 2:
                raise ValueError("freeze frame DTC needs 2 bytes")
            return None if bytes(data) == b"\x00\x00" else decode_dtc(data)
        return decode_pid(pid, data)
    if mode == 0x09 and pid == 0x02:
        return bytes(data).decode("ascii")
    if mode == 0x09 and pid == 0x04:
        data = bytes(data)
        return [data[i:i + 16].rstrip(b"\x00").decode("ascii")
                for i in range(0, len(data), 16)]
    if mode == 0x09 and pid == 0x06:
        data = bytes(data)
        return [data[i:i + 4].hex().upper() for i in range(0, len(data), 4)]
    if mode in (0x03, 0x07, 0x0A):
        return decode_dtc_bytes(data)
    return bytes(data)


# --------------------------------------------------------------------------
# Deterministic value generators
# --------------------------------------------------------------------------
# pid: ([raw range for slot 0, 1, 2], kind, period_s or rate_per_s)
_BANDS = {
    0x04: ([(0x30, 0x5F), (0x70, 0x9F), (0xB0, 0xDF)], "tri", 6.1),
    0x05: ([(120, 140), (86, 110), (60, 80)], "tri", 23.0),
    0x0B: ([(30, 60), (70, 100), (110, 140)], "tri", 5.3),
    0x0C: ([(2800, 12800), (13200, 20000), (20400, 28000)], "tri", 4.7),
    0x0D: ([(10, 70), (75, 125), (130, 190)], "tri", 9.1),
    0x0E: ([(134, 170), (176, 210), (100, 128)], "tri", 3.9),
    0x0F: ([(60, 80), (90, 110), (115, 135)], "tri", 17.0),
    0x10: ([(250, 2500), (2600, 5000), (5100, 7500)], "tri", 4.3),
    0x11: ([(0x20, 0x50), (0x60, 0x90), (0xA0, 0xD0)], "tri", 3.3),
    0x1F: ([(600, 20000), (25000, 40000), (45000, 60000)], "ramp", 1.0),
    0x2F: ([(0x30, 0x60), (0x70, 0xA0), (0xB0, 0xE0)], "tri", 40.0),
    0x33: ([(95, 102), (86, 93), (76, 84)], "tri", 31.0),
    0x42: ([(13500, 14400), (12000, 12900), (11000, 11900)], "tri", 7.7),
    0x46: ([(50, 70), (71, 90), (91, 110)], "tri", 29.0),
    0x5B: ([(0x40, 0x70), (0x80, 0xB0), (0xC0, 0xF0)], "tri", 11.0),
    0x5C: ([(130, 150), (100, 125), (70, 95)], "tri", 19.0),
    0x5E: ([(10, 300), (320, 600), (620, 900)], "tri", 5.9),
    0x61: ([(130, 180), (185, 215), (220, 245)], "tri", 4.1),
    0x62: ([(128, 175), (178, 210), (213, 240)], "tri", 3.7),
    0x63: ([(350, 350), (420, 420), (510, 510)], "tri", 1.0),   # constant
    0x8D: ([(0x20, 0x50), (0x60, 0x88), (0x90, 0xD0)], "tri", 3.1),
    0xA6: ([(1234567, 1300000), (2345678, 2400000), (3456789, 3500000)], "ramp", 2.0),
}
_BAD_LAST_BYTE = frozenset((0x00, 0xFF, 0xAA, 0x55, 0xCC))


def _value_ok(pid: int, raw: int, length: int) -> bool:
    b = raw.to_bytes(length, "big")
    if b[-1] in _BAD_LAST_BYTE:
        return False
    if length == 1 and b[0] in (0x41, pid):
        return False
    return True


def _tri(t: float, period: float, phase: float = 0.0) -> float:
    """Triangle wave 0..1..0 with the given period (seconds)."""
    pos = (t / period + phase) % 1.0
    return 1.0 - abs(2.0 * pos - 1.0)


def _span(lo: int, hi: int, f: float) -> int:
    return lo + int(round(f * (hi - lo)))


def _bump_last(raw: int, length: int, step: int = 1) -> int:
    """Move ``raw`` until its last byte is none of 00 FF AA 55 CC."""
    while raw.to_bytes(length, "big")[-1] in _BAD_LAST_BYTE:
        raw += step
    return raw


# Gear ratios (x1000) of a 6-speed automatic, for PID A4.
_GEAR_RATIOS = (4171, 2340, 1521, 1143, 867, 691)


def _structured_value(pid: int, slot: int, t: float) -> Optional[bytes]:
    """Generators of the PIDs whose bytes are separate fields."""
    if pid == 0x67:
        # A = 03 (both sensors), B = sensor 1 + 40, C = sensor 2 + 40, in the
        # coolant (PID 05) bands of the slot; C a few degrees below B.
        lo, hi = _BANDS[0x05][0][slot % 3]
        b = _span(lo, hi, _tri(t, 21.0, 0.13 * slot))
        c = _bump_last(b - 2 - int(3 * _tri(t, 2.3)), 1, -1)
        return bytes([0x03, b, c])
    if pid == 0xA4:
        # A = 03 (gear number and ratio supported), B = gear << 4, C D =
        # ratio x 1000 (+ 3 per slot, so slots never send the same value).
        gear = 1 + min(5, int(6 * _tri(t, 7.0, 0.13 * slot)))
        ratio = _bump_last(_GEAR_RATIOS[gear - 1] + 3 * (slot % 3), 2)
        return bytes([0x03, gear << 4]) + ratio.to_bytes(2, "big")
    return None


def band_value(pid: int, slot: int, t: float) -> bytes:
    """Raw data bytes of ``pid`` for an ECU in ``slot`` at ``t`` seconds."""
    structured = _structured_value(pid, slot, t)
    if structured is not None:
        return structured
    length = PID_LENGTHS.get(pid, 1)
    spec = _BANDS.get(pid)
    if spec is None:
        v = (0x11 + 0x22 * (slot % 3) + pid) & 0xFF
        while v in _BAD_LAST_BYTE or v in (0x41, pid):
            v = (v + 1) & 0xFF
        return bytes([0x12] * (length - 1) + [v])
    bands, kind, param = spec
    lo, hi = bands[slot % len(bands)]
    span = hi - lo
    if kind == "ramp":
        raw = lo + int(t * param) % (span + 1)
    else:
        pos = (t / param + 0.13 * slot + (pid % 5) * 0.07) % 1.0
        tri = 1.0 - abs(2.0 * pos - 1.0)
        raw = lo + int(round(tri * span))
    for _ in range(span + 2):
        if _value_ok(pid, raw, length):
            break
        raw = raw + 1 if raw < hi else lo
    return raw.to_bytes(length, "big")


# --------------------------------------------------------------------------
# The EV battery ECU's manufacturer data (layouts: Ecu.battery docstring)
# --------------------------------------------------------------------------
BATTERY_PHASE_S = 1.5      # the charging state changes every 1.5 s (0, 1, 2, 0...)


def battery_raw(t: float) -> Dict[str, int]:
    """Raw field values of the simulated battery at ``t`` s since start.

    One function for every DID so that the DIDs agree with each other at
    the same instant (charging state vs. current sign, balancing vs. SoC).
    Raw ranges (disjoint from each other where the fields are neighbours):
    soc2 100..190 (50.0..95.0 %), volt10 3500..4000 (350.0..400.0 V),
    amp10 +200..+2500 driving / -320..-50 AC / -1500..-600 DC,
    tmax40 72..84 (32..44 degC), tmin40 58..70 (18..30 degC),
    cell_mv_max 3900..4150, cell_mv_min 8..40 mV below it, soh 90..97 %,
    ah_total 12000.. (+3 Ah per s).
    """
    state = int(t // BATTERY_PHASE_S) % 3
    f = _tri(t, 2.9, 0.4)
    soc2 = _span(100, 190, _tri(t, 7.3))
    amp10 = {0: _span(200, 2500, f), 1: -_span(50, 320, f), 2: -_span(600, 1500, f)}[state]
    flags = 0x02                                 # contactor closed
    if state:
        flags |= 0x01                            # plug connected
        if soc2 >= 170:
            flags |= 0x80                        # balancing near full charge
    vmax = _span(3900, 4150, _tri(t, 6.7, 0.3))
    return {
        "soc2": soc2,
        "volt10": _span(3500, 4000, _tri(t, 5.1, 0.2)),
        "amp10": amp10,
        "tmax40": _span(72, 84, _tri(t, 11.0)),
        "tmin40": _span(58, 70, _tri(t, 13.0, 0.5)),
        "state": state,
        "flags": flags,
        "cell_mv_max": vmax,
        "cell_mv_min": _bump_last(vmax - _span(8, 40, _tri(t, 3.3)), 2, -1),
        "soh": _span(90, 97, _tri(t, 60.0)),
        "ah_total": 12000 + int(t * 3),
    }


def _battery_did_0101(t: float) -> bytes:
    r = battery_raw(t)
    return (r["soc2"].to_bytes(2, "big") + r["volt10"].to_bytes(2, "big")
            + r["amp10"].to_bytes(2, "big", signed=True)
            + bytes([r["tmax40"], r["tmin40"]]))


def _battery_did_0102(t: float) -> bytes:
    r = battery_raw(t)
    return bytes([r["state"], r["flags"]])


def _battery_did_0103(t: float) -> bytes:
    r = battery_raw(t)
    return r["cell_mv_max"].to_bytes(2, "big") + r["cell_mv_min"].to_bytes(2, "big")


def _battery_lid_01(t: float) -> bytes:
    r = battery_raw(t)
    return (r["ah_total"] & 0xFFFF).to_bytes(2, "big") + bytes([r["soh"]])


BATTERY_DID_LENGTHS = {0x0101: 8, 0x0102: 2, 0x0103: 4}


def decode_battery_did(did: int, data: Sequence[int]) -> dict:
    """Reference decoder of the battery ECU's DIDs (layout: Ecu.battery).

    0101 -> {soc %, voltage V, current A (negative = charging), temp_max
    degC, temp_min degC}; 0102 -> {charging 0/1/2, plug, contactor,
    balancing}; 0103 -> {cell_v_max V, cell_v_min V}.  Strict on length.
    """
    data = bytes(data)
    n = BATTERY_DID_LENGTHS.get(did)
    if n is None:
        raise ValueError("unknown battery DID %04X" % did)
    if len(data) != n:
        raise ValueError("DID %04X needs %d bytes, got %d" % (did, n, len(data)))
    if did == 0x0101:
        return {"soc": int.from_bytes(data[0:2], "big") / 2.0,
                "voltage": int.from_bytes(data[2:4], "big") / 10.0,
                "current": int.from_bytes(data[4:6], "big", signed=True) / 10.0,
                "temp_max": data[6] - 40, "temp_min": data[7] - 40}
    if did == 0x0102:
        return {"charging": data[0], "plug": bool(data[1] & 0x01),
                "contactor": bool(data[1] & 0x02), "balancing": bool(data[1] & 0x80)}
    return {"cell_v_max": int.from_bytes(data[0:2], "big") / 1000.0,
            "cell_v_min": int.from_bytes(data[2:4], "big") / 1000.0}


# --------------------------------------------------------------------------
# ECUs and quirks
# --------------------------------------------------------------------------
ENGINE_PIDS = (0x01, 0x04, 0x05, 0x0B, 0x0C, 0x0D, 0x0F, 0x10, 0x11, 0x1F,
               0x2F, 0x33, 0x42, 0x46, 0x5C, 0x5E, 0xA6)
# Ecu.engine(full=True): the default engine plus the PIDs above 0x5F that
# have a reference decoder (61, 62, 63, 67, 8D, A4; A6 is in both).  Kept out
# of the default engine on purpose: ECCM's conformance tests assert that ECCM
# fills every PID the default engine supports.
ENGINE_PIDS_FULL = tuple(sorted(set(ENGINE_PIDS) | {0x61, 0x62, 0x63, 0x67, 0x8D, 0xA4}))
TRANSMISSION_PIDS = (0x01, 0x05, 0x0C, 0x0D, 0x42)
HYBRID_PIDS = (0x01, 0x0C, 0x0D, 0x42, 0x5B)
BATTERY_PIDS = (0x5B,)
DEFAULT_VIN = "WF0FAKE0ELM327001"
FULL_ENGINE_CALIDS = ["FAKECAL-ECM-0001", "FAKECAL-ECM-EMS2"]
FULL_ENGINE_CVNS = ["1791BC82", "16E062BE"]


def _with_bitmaps(data_pids) -> set:
    """Data PIDs plus the bitmap PIDs J1979 requires to reach them (and 00)."""
    s = set(p for p in data_pids if p not in BITMAP_PIDS)
    for base in BITMAP_PIDS[1:]:
        if any(p > base for p in s):
            s.add(base)
    s.add(0x00)
    return s


def _bitmap_bytes(eff: set, base: int) -> bytes:
    bits = 0
    for i in range(1, 33):
        if base + i in eff:
            bits |= 1 << (32 - i)
    return bits.to_bytes(4, "big")


def _as_cvn(c) -> bytes:
    b = bytes.fromhex(c) if isinstance(c, str) else bytes(c)
    if len(b) != 4:
        raise ValueError("a CVN is 4 bytes, got %r" % (c,))
    return b


def _as_calid(c: str) -> bytes:
    b = c.encode("ascii")
    if len(b) > 16:
        raise ValueError("a CALID is at most 16 characters: %r" % c)
    return b + bytes(16 - len(b))


@dataclass
class Ecu:
    """One ECU of the simulated car.

    name: key used by the oracle ("engine", "transmission", ...).
    can_id: 11-bit response ID (7E8..7EF); it is addressed physically with
        ``can_id - 8`` (ISO 15765-4).
    address: source address on J1850 / ISO 9141 / KWP and in the 29-bit CAN
        ID ``18 DA F1 <address>``.
    latency: seconds between request and this ECU's answer.
    pids: supported mode-01 data PIDs (the bitmap PIDs are derived).
    vin: 17-character VIN answered to 09 02 (None: 09 02 unsupported).
    ecu_name: answered to 09 0A on CAN (20 bytes, NUL padded).
    stored_dtcs / pending_dtcs / permanent_dtcs: "P0133"-style codes for
        modes 03 / 07 / 0A.
    dtc_timeline: [(t, stored, pending), ...]: at ``t`` seconds after start the
        lists become ``stored``/``pending`` (None = unchanged) -- DTC lists
        that grow or shrink over time.
    wake_after: the ECU answers nothing during its first N seconds.
    silent_after: the ECU answers nothing from N seconds after start on.
    silent: answers nothing while True (settable at run time).
    padding: CAN frame fill byte (ISO 15765-2 leaves it free; 00, AA, 55
        all occur on real cars).
    slot: value band (0, 1, 2); default: position in the ECU list.
    generators: {pid: callable(t_seconds_since_start) -> bytes} overriding
        the built-in generator for that PID (the PID is added to ``pids``).
    mil: force the MIL bit (None: on iff stored DTCs exist).
    calids: calibration IDs for 09 04 (CAN; up to 16 ASCII chars each,
        NUL padded on the wire); empty = 09 04 unsupported.
    cvns: calibration verification numbers for 09 06 (CAN; 4 bytes each,
        given as bytes or 8 hex digits); empty = 09 06 unsupported.
    freeze_frame: (dtc, {pid: data bytes or hex}) answered to mode 02 frame
        00; dtc "" = no frame stored (02 02 00 -> 0000); None = service 02
        not implemented.
    dids: {DID: callable(t_seconds_since_start) -> data bytes} for service
        22 (physical CAN requests only; see the module doc).
    lids: {LID: callable(t) -> data bytes} for service 21 (same rules).
    """
    name: str = "engine"
    can_id: int = 0x7E8
    address: int = 0x10
    latency: float = 0.004
    pids: Iterable[int] = ENGINE_PIDS
    vin: Optional[str] = None
    ecu_name: Optional[str] = None
    stored_dtcs: List[str] = field(default_factory=list)
    pending_dtcs: List[str] = field(default_factory=list)
    permanent_dtcs: List[str] = field(default_factory=list)
    dtc_timeline: List[Tuple[float, Optional[List[str]], Optional[List[str]]]] = field(default_factory=list)
    wake_after: float = 0.0
    silent_after: Optional[float] = None
    silent: bool = False
    padding: int = 0x00
    slot: Optional[int] = None
    generators: Dict[int, Callable[[float], bytes]] = field(default_factory=dict)
    mil: Optional[bool] = None
    calids: List[str] = field(default_factory=list)
    cvns: List[Union[bytes, str]] = field(default_factory=list)
    freeze_frame: Optional[Tuple[str, Dict[int, Union[bytes, str]]]] = None
    dids: Dict[int, Callable[[float], bytes]] = field(default_factory=dict)
    lids: Dict[int, Callable[[float], bytes]] = field(default_factory=dict)

    @classmethod
    def engine(cls, full: bool = False, **kw) -> "Ecu":
        """Engine ECM: 7E0 -> 7E8, address 0x10.  ``full=True``: PIDs
        :data:`ENGINE_PIDS_FULL` (adds 61 62 63 67 8D A4) and the CALIDs
        :data:`FULL_ENGINE_CALIDS` / CVNs :data:`FULL_ENGINE_CVNS` for
        09 04 / 09 06.  Keyword arguments override any of these."""
        d = dict(name="engine", can_id=0x7E8, address=0x10, latency=0.004,
                 pids=ENGINE_PIDS, vin=DEFAULT_VIN, ecu_name="ECM-EngineControl",
                 padding=0x00)
        if full:
            d.update(pids=ENGINE_PIDS_FULL, calids=list(FULL_ENGINE_CALIDS),
                     cvns=list(FULL_ENGINE_CVNS))
        d.update(kw)
        return cls(**d)

    @classmethod
    def transmission(cls, **kw) -> "Ecu":
        d = dict(name="transmission", can_id=0x7E9, address=0x18, latency=0.008,
                 pids=TRANSMISSION_PIDS, ecu_name="TCM-TransmissionCtl",
                 padding=0xAA)
        d.update(kw)
        return cls(**d)

    @classmethod
    def hybrid(cls, **kw) -> "Ecu":
        d = dict(name="hybrid", can_id=0x7EA, address=0x28, latency=0.012,
                 pids=HYBRID_PIDS, ecu_name="HPCM-HybridPowertrn",
                 padding=0x55)
        d.update(kw)
        return cls(**d)

    @classmethod
    def battery(cls, **kw) -> "Ecu":
        """EV battery management ECU (BMS / BECM).

        Addressing: requests to 7E4 (physical), answers from 7EC (ISO 15765-4
        11-bit pair #5); 29-bit: ECU address 0x44 (requests ``18 DA 44 F1``,
        i.e. ``AT SH DA44F1``; answers ``18 DA F1 44``) -- 0x44 is this
        fake's choice, no standard assigns it.  ISO-TP padding byte CC.

        Mode 01: only PID 5B (hybrid/EV battery pack remaining life,
        A*100/255 %, from the slot bands like every mode-01 PID) plus the
        bitmaps J1979 needs to announce it: 0100 (-> 0120 flagged), 0120
        (-> 0140), 0140 (-> 5B).  Mode 09: 09 00 and 09 0A (ECU name).

        Service 22 (ReadDataByIdentifier, physical requests only), data bytes
        after ``62 DIDhi DIDlo``, all integers big-endian:

        DID 0101 (8 data bytes; the 11-byte answer ``62 01 01 + 8`` goes out
        as ISO-TP first frame + one consecutive frame)::

            bytes 0-1  SoC x 2, unsigned        (0.5 % resolution; 50.0..95.0 %)
            bytes 2-3  pack voltage x 10, unsigned      (V; 350.0..400.0)
            bytes 4-5  pack current x 10, signed two's complement
                       (A; negative = charging; +20..+250 driving,
                       -5..-32 AC charging, -60..-150 DC charging)
            byte  6    max cell temperature + 40      (degC; 32..44)
            byte  7    min cell temperature + 40      (degC; 18..30)

        DID 0102 (2 data bytes)::

            byte 0  charging state: 0 not charging, 1 AC, 2 DC
            byte 1  flags: bit 0 plug connected, bit 1 contactor closed,
                    bit 7 cell balancing (other bits 0)

        DID 0103 (4 data bytes)::

            bytes 0-1  max cell voltage, mV   (3900..4150)
            bytes 2-3  min cell voltage, mV   (8..40 mV below the max)

        Service 21 (ReadDataByLocalIdentifier), ``61 01`` + 3 data bytes:
        LID 01: bytes 0-1 cumulative charge throughput Ah (mod 65536),
        byte 2 state of health % (90..97).

        Time behaviour (:func:`battery_raw`): the charging state cycles
        0 -> 1 -> 2 every ``BATTERY_PHASE_S`` = 1.5 s, the current's sign and
        range follow it (flags 02 driving; 03 charging; 83 charging with SoC
        >= 85 %); the other fields are triangle waves.  The DIDs agree with
        each other at the same instant.  The last byte of every DID/LID is
        never 00 FF AA 55 CC, so a cut or padded reply decodes to a value
        that was never sent (and :func:`decode_battery_did` is strict on
        length).  The generators do not depend on the slot.
        """
        d = dict(name="battery", can_id=0x7EC, address=0x44, latency=0.006,
                 pids=BATTERY_PIDS, ecu_name="BECM-BatteryEnergy",
                 padding=0xCC,
                 dids={0x0101: _battery_did_0101, 0x0102: _battery_did_0102,
                       0x0103: _battery_did_0103},
                 lids={0x01: _battery_lid_01})
        d.update(kw)
        return cls(**d)

    # -- J1979 supported-PID logic --------------------------------------
    def data_pids(self) -> set:
        s = set(int(p) for p in self.pids) | set(self.generators)
        return set(p for p in s if p not in BITMAP_PIDS)

    def effective_pids(self) -> set:
        """Data PIDs plus the bitmap PIDs J1979 requires to reach them."""
        return _with_bitmaps(self.data_pids())

    def bitmap(self, base: int) -> bytes:
        return _bitmap_bytes(self.effective_pids(), base)

    def freeze_pids(self) -> set:
        """Mode-02 PIDs of frame 00: stored PIDs + 02 + their bitmaps."""
        if self.freeze_frame is None:
            return set()
        return _with_bitmaps(set(self.freeze_frame[1]) | {0x02})


def default_car() -> List[Ecu]:
    """Engine (7E8 / 0x10) and transmission (7E9 / 0x18)."""
    return [Ecu.engine(), Ecu.transmission()]


@dataclass
class Quirks:
    """Fault injection.  Each option mimics something real adapters/cars do.

    clone_no_multi_pid: False | True/"NO DATA" | "?" -- a multi-PID mode-01
        request (J1979 allows up to 6 PIDs on ISO 15765-4) is answered
        ``NO DATA`` or ``?``, as by clone firmware that does not pass it on.
    partial_multi_pid: 0 | True | k -- the ECUs answer only some of the
        supported PIDs of a packed request (True: all but the last; k: the
        first k), as reported for some ECUs/clones.
    first_pid_only: only the first PID of a packed request is answered.
    ignores_count_digit: False | "?" | "ignore"/True -- the response-count
        digit (ELM327 v1.3+) is rejected with ``?`` (v1.0-1.2 firmware sees an
        odd number of hex digits) or ignored (the adapter waits for its
        timeout as without it).
    sticky_echo: AT E0 answers OK but echo stays on (known clone bug).
    no_atst_atat: AT ST hh and AT AT0/1/2 answer ``?`` (cut-down clones).
    v10_no_atws: ID ``ELM327 v1.0`` and AT WS answers ``?`` (WS is v1.3+).
    buffer_full_after: N -- once a response has produced N bytes of output
        the adapter prints ``BUFFER FULL`` (datasheet: 512-byte RS232 send
        buffer overflows when the PC reads too slowly) and the prompt.
    stall: (seconds, every_n) -- the reply to every n-th request is held back
        ``seconds`` (longer than the client's timeout) and then sent anyway,
        like a Bluetooth/Wi-Fi bridge that buffers.  Input received meanwhile
        is queued, not treated as an interrupt, unless ``stall_interruptible``.
    truncate: ("byte"|"half", every_n) or "byte"/"half" -- the first reply of
        the request loses its last data byte (and what followed it on that
        line) or half of its data bytes on the wire, then the prompt follows
        (lost characters on a noisy serial/radio link).
    kline_reinit: (seconds, every_n) -- on ISO 9141/KWP, a request first
        prints ``BUS INIT: ...`` over ``seconds`` then ``OK`` and the data, as
        when the ELM has to re-initialise a K-line session that timed out.
    response_pending: (count, every_n) -- the first answering ECU sends
        ``count`` negative responses ``7F <mode> 78`` ("request correctly
        received - response pending", ISO 14229 / J1979) ``pending_delay``
        seconds apart before the real answer; they do not count as responses
        for the count digit.
    can_error: every_n -- the request prints ``CAN ERROR`` (datasheet: the
        CAN system had difficulty sending/receiving).
    lf_interrupts: a LF received while busy interrupts like any character
        (default: LF, being a control character the ELM ignores, does not).
    """
    clone_no_multi_pid: Union[bool, str] = False
    partial_multi_pid: Union[bool, int] = 0
    first_pid_only: bool = False
    ignores_count_digit: Union[bool, str] = False
    sticky_echo: bool = False
    no_atst_atat: bool = False
    v10_no_atws: bool = False
    buffer_full_after: Optional[int] = None
    stall: Optional[Tuple[float, int]] = None
    stall_interruptible: bool = False
    truncate: Optional[Union[str, Tuple[str, int]]] = None
    kline_reinit: Optional[Tuple[float, int]] = None
    response_pending: Optional[Tuple[int, int]] = None
    pending_delay: float = 0.02
    can_error: Optional[int] = None
    lf_interrupts: bool = False

    def __post_init__(self):
        if self.truncate is True:
            self.truncate = ("byte", 1)
        elif isinstance(self.truncate, str):
            self.truncate = (self.truncate, 1)
        if self.truncate and self.truncate[0] not in ("byte", "half"):
            raise ValueError("truncate must be 'byte' or 'half'")
        if self.stall is True:
            self.stall = (1.0, 1)
        if self.kline_reinit is True:
            self.kline_reinit = (2.5, 1)
        if self.response_pending is True:
            self.response_pending = (1, 1)
        elif isinstance(self.response_pending, int):
            self.response_pending = (self.response_pending, 1)
        if self.can_error is True:
            self.can_error = 1
        if self.ignores_count_digit is True:
            self.ignores_count_digit = "ignore"
        if self.clone_no_multi_pid is True:
            self.clone_no_multi_pid = "NO DATA"

    @classmethod
    def coerce(cls, q) -> "Quirks":
        if q is None:
            return cls()
        if isinstance(q, cls):
            return q
        if isinstance(q, dict):
            return cls(**q)
        if isinstance(q, str):
            q = [q]
        return cls(**dict((name, True) for name in q))


class Reply(NamedTuple):
    t: float              # time.monotonic() when written to the wire
    ecu: str
    mode: int
    pid: Optional[int]
    data: bytes
    delivered: str        # "full" | "partial" | "missed" | "lost"
    request_no: int


class _Msg(object):
    """One message an ECU puts on the bus (payload = service bytes)."""
    __slots__ = ("payload", "items")

    def __init__(self, payload, items=None):
        self.payload = bytes(payload)
        self.items = items or []     # [(mode, pid, data)] recorded with it


class _Job(object):
    __slots__ = ("gen", "source", "wake_at", "interruptible", "waiting_cr")

    def __init__(self, gen, source):
        self.gen = gen
        self.source = source
        self.wake_at = None
        self.interruptible = True
        self.waiting_cr = False


def _every(n_req: int, every_n) -> bool:
    try:
        every_n = int(every_n)
    except (TypeError, ValueError):
        return False
    return every_n > 0 and n_req % every_n == 0


# --------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------
class FakeElm(object):
    """Fake ELM327 with a simulated car.

    protocol: the car's bus protocol, 1..9 (None: no car at all).
    ecus: list of :class:`Ecu` (default :func:`default_car`); copied.
    quirks: :class:`Quirks`, a dict of its fields, or a list of flag names.
    version: ID string for AT Z / AT I (default ``ELM327 v1.5``).
    adapter_protocol: stored AT SP setting at power-on, "0" = automatic.
    use_pty / tcp / tcp_port / tcp_takeover: transports (see module doc).
    flavour: "elm" or "stn" (adds ST commands).
    linefeed: AT L default (the real default depends on pin 7).
    voltage: AT RV value in volts, or callable(t_since_start) -> volts.
    st_unit: seconds per AT ST count (datasheet 0.004; default 0.001).
    adaptive_wait: inter-response wait under AT AT1.
    search_time / bus_init_time / reset_delay: simulated durations.
    baudrate / enforce_baud: see AT BRD in the module doc.
    banner_on_start: write the power-on banner to the pty at start.
    """

    def __init__(self, protocol: Optional[int] = 6, ecus: Optional[List[Ecu]] = None,
                 quirks=None, *, version: Optional[str] = None,
                 adapter_protocol: str = "0", use_pty: bool = True,
                 tcp: bool = False, tcp_port: int = 0, tcp_takeover: bool = False,
                 flavour: str = "elm", linefeed: bool = False,
                 voltage: Union[float, Callable[[float], float]] = 14.2,
                 st_unit: float = 0.001, adaptive_wait: float = 0.02,
                 search_time: float = 0.05, bus_init_time: float = 0.06,
                 reset_delay: float = 0.01, brt_unit: float = 0.005,
                 baudrate: int = 38400, enforce_baud: bool = False,
                 banner_on_start: bool = False):
        if protocol is not None and protocol not in PROTOCOL_NAMES:
            raise ValueError("protocol must be 1..9")
        self.protocol = protocol
        src = default_car() if ecus is None else ecus
        self.ecus: List[Ecu] = []
        for i, e in enumerate(src):
            c = dataclasses.replace(
                e, pids=tuple(e.pids), stored_dtcs=list(e.stored_dtcs),
                pending_dtcs=list(e.pending_dtcs), permanent_dtcs=list(e.permanent_dtcs),
                dtc_timeline=sorted(e.dtc_timeline, key=lambda x: x[0]),
                generators=dict(e.generators), dids=dict(e.dids),
                lids=dict(e.lids), calids=list(e.calids),
                cvns=[_as_cvn(x) for x in e.cvns],
                freeze_frame=self._norm_freeze(e.freeze_frame))
            for cal in c.calids:
                _as_calid(cal)
            if c.slot is None:
                c.slot = i
            self.ecus.append(c)
        self.quirks = Quirks.coerce(quirks)
        if version is None:
            version = "ELM327 v1.0" if self.quirks.v10_no_atws else (
                "ELM327 v1.4b" if flavour == "stn" else DEFAULT_VERSION)
        self.version = version
        self.flavour = flavour
        self._adapter_protocol_default = adapter_protocol
        self.use_pty = use_pty
        self.tcp = tcp
        self.tcp_takeover = tcp_takeover
        self._tcp_port_req = tcp_port
        self.default_linefeed = linefeed
        self.voltage = voltage
        self.st_unit = st_unit
        self.adaptive_wait = adaptive_wait
        self.search_time = search_time
        self.bus_init_time = bus_init_time
        self.reset_delay = reset_delay
        self.brt_unit = brt_unit
        self.default_baud = baudrate
        self.enforce_baud = enforce_baud
        self.banner_on_start = banner_on_start

        self.port: Optional[str] = None
        self.tcp_port: Optional[int] = None
        self.t0: Optional[float] = None
        self.replies: List[Reply] = []
        self.requests: List[Tuple[float, str, str]] = []   # (t, source, command)
        self.events: List[Tuple[float, str, str]] = []     # (t, kind, detail)
        self.wire: List[Tuple[float, str, str, bytes]] = []  # (t, "in"/"out", source, bytes)
        self.obd_requests = 0
        self.baud = baudrate

        self._lock = threading.RLock()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self._master = self._slave = None
        self._lsock = self._csock = None
        self._wake_r = self._wake_w = None
        self._job: Optional[_Job] = None
        self._cur: Optional[_Job] = None
        self._queued: List[Tuple[bytes, str]] = []
        self._linebuf = bytearray()
        self._last_cmd: Optional[str] = None
        self._last_source = "pty"
        self._pending_baud = None
        self._req_bytes = 0
        self._sp_saved = self._parse_sp(adapter_protocol) or (True, 0)
        self._reset_state(full=True)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "FakeElm":
        if self._thread is not None:
            raise RuntimeError("already started")
        self._stopping = False
        self.t0 = time.monotonic()
        self._wake_r, self._wake_w = os.pipe()
        if self.use_pty:
            self._master, self._slave = os.openpty()
            tty.setraw(self._slave)
            os.set_blocking(self._master, False)
            self.port = os.ttyname(self._slave)
        if self.tcp:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", self._tcp_port_req))
            s.listen(2)
            self._lsock = s
            self.tcp_port = s.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="FakeElm", daemon=True)
        self._thread.start()
        if self.banner_on_start and self._master is not None:
            self._write("pty", ("\r\r%s\r\r>" % self.version).encode())
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping = True
        if self._wake_w is not None:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for attr in ("_csock", "_lsock"):
            s = getattr(self, attr)
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
                setattr(self, attr, None)
        for attr in ("_master", "_slave", "_wake_r", "_wake_w"):
            fd = getattr(self, attr)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, attr, None)

    def __enter__(self) -> "FakeElm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------ test API
    def ecu(self, key) -> Ecu:
        """Look an ECU up by name, Ecu object, CAN id or address."""
        if isinstance(key, Ecu):
            key = key.name
        for e in self.ecus:
            if key in (e.name, e.can_id, e.address):
                return e
        raise KeyError(key)

    @property
    def errors(self) -> List[str]:
        """Exceptions swallowed by the serving thread (should stay empty)."""
        return [d for _t, kind, d in list(self.events) if kind == "error"]

    def now(self) -> float:
        """Seconds since start (the generators' time base)."""
        return time.monotonic() - (self.t0 or time.monotonic())

    def set_silent(self, ecu, silent: bool = True) -> None:
        with self._lock:
            self.ecu(ecu).silent = silent

    def set_dtcs(self, ecu, stored: Optional[List[str]] = None,
                 pending: Optional[List[str]] = None,
                 permanent: Optional[List[str]] = None) -> None:
        with self._lock:
            e = self.ecu(ecu)
            if stored is not None:
                e.stored_dtcs = list(stored)
            if pending is not None:
                e.pending_dtcs = list(pending)
            if permanent is not None:
                e.permanent_dtcs = list(permanent)

    def set_voltage(self, volts) -> None:
        self.voltage = volts

    def replies_for(self, ecu=None, mode: Optional[int] = None, pid=-1,
                    include_undelivered: bool = False) -> List[Reply]:
        name = None if ecu is None else self.ecu(ecu).name
        with self._lock:
            snap = list(self.replies)
        return [r for r in snap
                if (name is None or r.ecu == name)
                and (mode is None or r.mode == mode)
                and (pid == -1 or r.pid == pid)
                and (include_undelivered or r.delivered in ("full", "partial"))]

    def true_values(self, ecu, pid: int, mode: int = 1,
                    include_undelivered: bool = False) -> List[Tuple[float, object]]:
        """[(monotonic time, decoded value)] of every reply ``ecu`` sent for
        ``pid`` (mode 1 by default; mode 9 pid 2 gives VINs)."""
        return [(r.t, decode_value(r.mode, r.pid, r.data))
                for r in self.replies_for(ecu, mode, pid, include_undelivered)]

    def values_between(self, ecu, pid: int, t0: float, t1: float,
                       mode: int = 1) -> list:
        """Decoded values ``ecu`` put on the wire for ``pid`` in [t0, t1]."""
        return [v for t, v in self.true_values(ecu, pid, mode) if t0 <= t <= t1]

    def true_dtcs(self, ecu, mode: int = 3) -> List[Tuple[float, List[str]]]:
        """[(time, [codes])] for every mode 03/07/0A reply of ``ecu``."""
        return [(r.t, decode_dtc_bytes(r.data)) for r in self.replies_for(ecu, mode, None)]

    # ------------------------------------------------------------ state
    @staticmethod
    def _norm_freeze(ff):
        """Copy a freeze frame, hex strings -> bytes, lengths checked
        against J1979 where the fake has a reference formula."""
        if ff is None:
            return None
        dtc, stored = ff
        out = {}
        for pid, data in dict(stored).items():
            pid = int(pid)
            b = bytes.fromhex(data) if isinstance(data, str) else bytes(data)
            if pid in BITMAP_PIDS or pid == 0x02:
                raise ValueError("PID %02X cannot be stored in a freeze frame" % pid)
            n = PID_LENGTHS.get(pid)
            if n is not None and len(b) != n:
                raise ValueError("freeze frame PID %02X needs %d bytes" % (pid, n))
            out[pid] = b
        dtc = dtc or ""
        if dtc:
            encode_dtc(dtc)
        return (dtc, out)

    @staticmethod
    def _parse_sp(arg: str):
        arg = arg.upper()
        if len(arg) == 1 and arg in "0123456789ABC":
            n = int(arg, 16)
            return (True, 0) if n == 0 else (False, n)
        if len(arg) == 2 and arg[0] == "A" and arg[1] in "0123456789ABC":
            return (True, int(arg[1], 16))
        return None

    def _reset_state(self, full: bool) -> None:
        self.echo = True
        self.linefeed = self.default_linefeed
        self.spaces = True
        self.headers = False
        self.caf = True
        self.st = 0x32
        self.at_mode = 1
        self.sh = None          # (ndigits, value) or None = protocol default
        self.cra = None
        self.cp = 0x18
        self.brt = 0x0F
        if full:
            self.sp_auto, self.sp_num = self._sp_saved
            self.active = None
            self._last_cmd = None

    @property
    def _eol(self) -> str:
        return "\r\n" if self.linefeed else "\r"

    def _st_seconds(self) -> float:
        return self.st * self.st_unit

    def _alive(self, e: Ecu, now: Optional[float] = None) -> bool:
        t = (now if now is not None else time.monotonic()) - self.t0
        if e.silent or t < e.wake_after:
            return False
        if e.silent_after is not None and t >= e.silent_after:
            return False
        return True

    # ------------------------------------------------------------ I/O
    def _write(self, source: str, data: bytes) -> None:
        self.wire.append((time.monotonic(), "out", source, data))
        if source == "tcp":
            if self._csock is not None:
                try:
                    self._csock.sendall(data)
                except OSError:
                    self._drop_client()
            return
        if self._master is None:
            return
        view = memoryview(data)
        deadline = time.monotonic() + 0.5
        while view:
            try:
                n = os.write(self._master, view)
                view = view[n:]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return
                select.select([], [self._master], [], 0.05)
            except OSError:
                return

    def _emit(self, text: str) -> None:
        source = self._cur.source if self._cur is not None else self._last_source
        data = text.encode("latin-1")
        self._req_bytes += len(data)
        self._write(source, data)

    def _line(self, text: str) -> None:
        self._emit(text + self._eol)

    def _drop_client(self) -> None:
        if self._csock is not None:
            try:
                self._csock.close()
            except OSError:
                pass
            self._csock = None

    def _client_speed_ok(self, rate: int) -> bool:
        const = getattr(termios, "B%d" % rate, None)
        if const is None or self._slave is None:
            return False
        try:
            return termios.tcgetattr(self._slave)[4] == const
        except termios.error:
            return False

    # ------------------------------------------------------------ server loop
    def _serve(self) -> None:
        while not self._stopping:
            timeout = None
            job = self._job
            if job is not None and job.wake_at is not None:
                timeout = max(0.0, job.wake_at - time.monotonic())
            rlist = [self._wake_r]
            if self._master is not None:
                rlist.append(self._master)
            if self._lsock is not None:
                rlist.append(self._lsock)
            if self._csock is not None:
                rlist.append(self._csock)
            try:
                ready, _, _ = select.select(rlist, [], [], timeout)
            except (OSError, ValueError):
                if self._stopping:
                    break
                time.sleep(0.01)
                continue
            if self._stopping:
                break
            try:
                if self._wake_r in ready:
                    os.read(self._wake_r, 64)
                if self._lsock is not None and self._lsock in ready:
                    self._accept()
                if self._csock is not None and self._csock in ready:
                    try:
                        data = self._csock.recv(4096)
                    except OSError:
                        data = b""
                    if data:
                        self._on_input(data, "tcp")
                    else:
                        self._drop_client()
                if self._master is not None and self._master in ready:
                    try:
                        data = os.read(self._master, 4096)
                    except OSError as exc:
                        if exc.errno not in (errno.EAGAIN, errno.EIO):
                            raise
                        data = b""
                    if data:
                        self._on_input(data, "pty")
                self._advance()
            except Exception as exc:  # keep serving; record for debugging
                self.events.append((time.monotonic(), "error", repr(exc)))
                self._job = None
                self._cur = None

    def _accept(self) -> None:
        try:
            conn, _ = self._lsock.accept()
        except OSError:
            return
        if self._csock is not None and not self.tcp_takeover:
            conn.close()      # one client at a time
            return
        self._drop_client()
        conn.settimeout(1.0)
        self._csock = conn

    def _advance(self) -> None:
        job = self._job
        if job is None or job.wake_at is None or time.monotonic() < job.wake_at:
            return
        if job.waiting_cr:
            job.waiting_cr = False
            self._step(job, False)
        else:
            self._step(job, None)

    def _on_input(self, data: bytes, source: str) -> None:
        self.wire.append((time.monotonic(), "in", source, data))
        if (self.enforce_baud and source == "pty" and self._pending_baud is None
                and not self._client_speed_ok(self.baud)):
            return     # garbled at the wrong rate: nothing understood
        i = 0
        while i < len(data):
            job = self._job
            if job is not None:
                if job.waiting_cr:
                    idx = data.find(b"\r", i)
                    if idx < 0:
                        return
                    i = idx + 1
                    ok = True
                    if self.enforce_baud and source == "pty" and self._pending_baud:
                        ok = self._client_speed_ok(self._pending_baud)
                    if ok:
                        job.waiting_cr = False
                        self._step(job, True)
                    continue
                if not job.interruptible:
                    self._queued.append((bytes(data[i:]), source))
                    return
                if data[i] == 0x0A and not self.quirks.lf_interrupts:
                    i += 1
                    continue
                self._interrupt(job)
                idx = data.find(b"\r", i)
                i = len(data) if idx < 0 else idx + 1
                continue
            b = data[i]
            i += 1
            if b == 0x0D:
                line = bytes(self._linebuf)
                del self._linebuf[:]
                self._start_command(line, source)
            elif b < 0x20 or b == 0x7F:
                continue
            else:
                self._linebuf.append(b)

    def _interrupt(self, job: _Job) -> None:
        self._job = None
        self._cur = job
        try:
            job.gen.close()
        except Exception:
            pass
        self.events.append((time.monotonic(), "stopped", ""))
        self._line("STOPPED")
        self._emit(self._eol + ">")
        self._cur = None

    def _start_command(self, line: bytes, source: str) -> None:
        self._last_source = source
        text = line.decode("latin-1")
        job = _Job(None, source)
        self._cur = job
        self._req_bytes = 0
        if self.echo or self.quirks.sticky_echo:
            self._emit(text + self._eol)
        self._req_bytes = 0
        cmd = "".join(ch for ch in text if ch > " " and ch != "\x7f").upper()
        if not cmd:
            cmd = self._last_cmd or ""
        else:
            self._last_cmd = cmd
        self.requests.append((time.monotonic(), source, cmd))
        if not cmd:
            gen = self._nothing()
        elif cmd.startswith("AT"):
            gen = self._at_job(cmd[2:])
        elif self.flavour == "stn" and cmd.startswith("ST"):
            gen = self._st_job(cmd[2:])
        else:
            gen = self._obd_job(cmd)
        job.gen = gen
        self._step(job, None)

    def _step(self, job: _Job, value) -> None:
        self._cur = job
        while True:
            try:
                action = job.gen.send(value)
            except StopIteration:
                self._job = None
                self._emit(self._eol + ">")
                self._cur = None
                if self._queued:
                    pend, self._queued = self._queued, []
                    for data, src in pend:
                        self._on_input(data, src)
                return
            value = None
            now = time.monotonic()
            if action[0] == "sleep":
                job.interruptible = action[2] if len(action) > 2 else True
                job.waiting_cr = False
                job.wake_at = now + max(0.0, action[1])
            elif action[0] == "wait_cr":
                job.interruptible = False
                job.waiting_cr = True
                job.wake_at = now + max(0.0, action[1])
            else:
                raise ValueError(action)
            self._job = job
            self._cur = None
            return

    @staticmethod
    def _nothing():
        return
        yield  # pragma: no cover  (makes this a generator)

    # ------------------------------------------------------------ AT commands
    def _at_job(self, a: str):
        q = self.quirks
        ok = "OK"
        if a == "Z":
            self._reset_state(full=True)
            self.baud = self.default_baud
            yield ("sleep", self.reset_delay, False)
            self._emit(self._eol + self._eol)
            self._line(self.version)
            return
        if a == "WS":
            if q.v10_no_atws:
                self._line("?")
                return
            self._reset_state(full=True)
            self._emit(self._eol + self._eol)
            self._line(self.version)
            return
        if a == "D":
            self._reset_state(full=False)
            self._line(ok)
            return
        if a == "I":
            self._line(self.version)
            return
        if a == "@1":
            self._line(DEVICE_DESCRIPTION)
            return
        if a in ("E0", "E1"):
            if not (q.sticky_echo and a == "E0"):
                self.echo = a == "E1"
            self._line(ok)
            return
        if a in ("L0", "L1"):
            self.linefeed = a == "L1"
            self._line(ok)
            return
        if a in ("S0", "S1"):
            self.spaces = a == "S1"
            self._line(ok)
            return
        if a in ("H0", "H1"):
            self.headers = a == "H1"
            self._line(ok)
            return
        if a in ("CAF0", "CAF1"):
            self.caf = a == "CAF1"
            self._line(ok)
            return
        if a in ("AT0", "AT1", "AT2"):
            if q.no_atst_atat:
                self._line("?")
                return
            self.at_mode = int(a[2])
            self._line(ok)
            return
        if a.startswith("ST") and len(a) == 4 and set(a[2:]) <= _HEX:
            if q.no_atst_atat:
                self._line("?")
                return
            v = int(a[2:], 16)
            self.st = v if v else 0x32
            self._line(ok)
            return
        if a.startswith("SH"):
            arg = a[2:]
            if len(arg) in (3, 6, 8) and set(arg) <= _HEX:
                self.sh = (len(arg), int(arg, 16))
                self._line(ok)
            else:
                self._line("?")
            return
        if a.startswith("CRA"):
            arg = a[3:]
            if arg == "":
                self.cra = None
                self._line(ok)
            elif len(arg) in (3, 8) and set(arg) <= _HEX | {"X"}:
                self.cra = arg
                self._line(ok)
            else:
                self._line("?")
            return
        if a == "AR":
            self.cra = None
            self._line(ok)
            return
        if a.startswith("SP") or a.startswith("TP"):
            sp = self._parse_sp(a[2:])
            if sp is None:
                self._line("?")
                return
            self.sp_auto, self.sp_num = sp
            if a.startswith("SP"):
                self._sp_saved = sp
            self.active = None
            self._line(ok)
            return
        if a == "DPN":
            num = self.active if self.active is not None else self.sp_num
            self._line(("A" if self.sp_auto else "") + "%X" % num)
            return
        if a == "DP":
            num = self.active if self.active is not None else self.sp_num
            if self.sp_auto:
                self._line("AUTO" if num == 0 else "AUTO, " + PROTOCOL_NAMES[num])
            else:
                self._line(PROTOCOL_NAMES.get(num, "?"))
            return
        if a == "RV":
            v = self.voltage(self.now()) if callable(self.voltage) else self.voltage
            self._line("%.1fV" % v)
            return
        if a == "PC":
            self.active = None      # protocol closed; next request re-inits
            self._line(ok)
            return
        if a.startswith("BRT") and len(a) == 5 and set(a[3:]) <= _HEX:
            self.brt = int(a[3:], 16)
            self._line(ok)
            return
        if a.startswith("BRD") and len(a) == 5 and set(a[3:]) <= _HEX:
            div = int(a[3:], 16)
            if div == 0:
                self._line("?")
                return
            yield from self._brd(div)
            return
        if a.startswith("CP") and len(a) == 4 and set(a[2:]) <= _HEX:
            self.cp = int(a[2:], 16) & 0x1F
            self._line(ok)
            return
        if a == "MA":
            # Monitor all: this bus has no traffic, so it just stays busy
            # until any character stops it (STOPPED).
            while True:
                yield ("sleep", 3600.0, True)
        if a in ("M0", "M1", "R0", "R1", "V0", "V1", "CFC0", "CFC1", "AL", "NL",
                 "KW0", "KW1", "IB10", "IB96", "BI"):
            self._line(ok)
            return
        if (a.startswith("CM") or a.startswith("CF") or a.startswith("SW")
                or a.startswith("WM")) and len(a) > 2 and set(a[2:]) <= _HEX:
            self._line(ok)
            return
        if a in ("FI", "SI"):
            if not self.sp_auto and ((a == "FI" and self.sp_num == 5)
                                     or (a == "SI" and self.sp_num in (3, 4))):
                self.active = None
                yield from self._ensure_connected()
                return
            self._line("?")
            return
        self._line("?")

    def _brd(self, div: int):
        """AT BRD hh handshake (datasheet "Using Higher RS232 Baud Rates")."""
        old = self.baud
        kbps = 4000.0 / div
        target = None
        for r in _STANDARD_RATES:
            if abs(r - kbps * 1000.0) <= 0.03 * r:
                target = r
        brt = (self.brt or 256) * self.brt_unit
        self._line("OK")
        self._pending_baud = target or int(kbps * 1000)
        yield ("sleep", brt, False)
        self._line(self.version)
        got_cr = yield ("wait_cr", brt)
        self._pending_baud = None
        if got_cr:
            self.baud = target or int(kbps * 1000)
            self.events.append((time.monotonic(), "baud", str(self.baud)))
            self._line("OK")
        else:
            self.baud = old
            self.events.append((time.monotonic(), "baud-revert", str(old)))

    def _st_job(self, a: str):
        if a == "I":
            self._line(STN_ID)
        elif a == "DI":
            self._line(STN_DEVICE)
        elif (a.startswith("BR") and a[2:].isdigit()) or \
                (a.startswith("SBR") and a[3:].isdigit()):
            self._line("OK")
        else:
            self._line("?")
        return
        yield  # pragma: no cover

    # ------------------------------------------------------------ OBD
    def _ensure_connected(self):
        """Establish the OBD protocol (search / bus init).  Returns the
        active protocol number or None (message already printed)."""
        if self.active is not None:
            return self.active
        car = self.protocol
        if self.sp_auto:
            self._line("SEARCHING...")
            yield ("sleep", self.search_time, True)
            if car is not None and any(self._alive(e) for e in self.ecus):
                self.active = car
                self.events.append((time.monotonic(), "connected", str(car)))
                return car
            self._line("UNABLE TO CONNECT")
            return None
        sp = self.sp_num
        if sp in KLINE_PROTOS:
            self._emit("BUS INIT: ")
            if sp != 5:
                for _ in range(3):
                    yield ("sleep", self.bus_init_time / 3.0, True)
                    self._emit(".")
            else:
                yield ("sleep", self.bus_init_time / 3.0, True)
            compatible = (car == 3) if sp == 3 else (car in (4, 5))
            if compatible and any(self._alive(e) for e in self.ecus):
                self._line("OK")
                self.active = sp
                return sp
            self._line("ERROR")
            return None
        if sp in J1850_PROTOS:
            self.active = sp
            return sp
        if car in CAN_PROTOS and _CAN_RATE.get(sp) == _CAN_RATE[car]:
            self.active = sp
            return sp
        self._line("CAN ERROR")
        return None

    def _request_header(self, proto: int) -> int:
        if self.sh is None:
            if proto in CAN29_PROTOS:
                return 0x18DB33F1
            if proto in CAN_PROTOS:
                return 0x7DF
            if proto == 1:
                return 0x616AF1
            if proto in (4, 5):
                return 0xC133F1
            return 0x686AF1
        nd, v = self.sh
        if proto in CAN29_PROTOS:
            return v if nd == 8 else ((self.cp << 24) | v if nd == 6 else v)
        if proto in CAN_PROTOS:
            return v & 0x7FF
        return v & 0xFFFFFF

    def _targets(self, proto: int) -> Tuple[List[Ecu], bool]:
        """ECUs addressed by the current header, and whether functional."""
        if self.protocol is None or proto != self.protocol:
            return [], True          # nobody on this bus speaks it
        h = self._request_header(proto)
        if proto in CAN29_PROTOS:
            if (h >> 8) & 0xFFFF == 0xDB33 and h & 0xFF == 0xF1:
                return list(self.ecus), True
            if (h >> 16) & 0xFF == 0xDA and h & 0xFF == 0xF1:
                return [e for e in self.ecus if e.address == (h >> 8) & 0xFF], False
            return [], False
        if proto in CAN_PROTOS:
            if h == 0x7DF:
                return list(self.ecus), True
            if 0x7E0 <= h <= 0x7E7:
                return [e for e in self.ecus if e.can_id == h + 8], False
            return [], False
        target = (h >> 8) & 0xFF
        if target in (0x6A, 0x33):
            return list(self.ecus), True
        return [e for e in self.ecus if e.address == target], False

    def _response_id(self, e: Ecu, proto: int) -> str:
        if proto in CAN29_PROTOS:
            return "18DAF1%02X" % e.address
        if proto in CAN_PROTOS:
            return "%03X" % e.can_id
        return "%02X" % e.address

    def _passes_cra(self, e: Ecu, proto: int) -> bool:
        if not self.cra or proto not in CAN_PROTOS:
            return True
        rid = self._response_id(e, proto)
        if len(rid) != len(self.cra):
            return False
        return all(p == "X" or p == c for p, c in zip(self.cra, rid))

    def _obd_job(self, cmd: str):
        q = self.quirks
        if not set(cmd) <= _HEX:
            self._line("?")
            return
        count = None
        if len(cmd) % 2:
            if q.ignores_count_digit == "?":
                self._line("?")
                return
            digit, cmd = cmd[-1], cmd[:-1]
            if not cmd:
                self._line("?")
                return
            if not q.ignores_count_digit:
                count = int(digit, 16)
                if count == 0:
                    self._line("?")
                    return
        req = bytes.fromhex(cmd)
        proto_now = self.active if self.active is not None else self.sp_num
        can_raw = (not self.caf) and proto_now in CAN_PROTOS
        if len(req) > (8 if can_raw else 7):
            self._line("?")
            return
        self.obd_requests += 1
        n = self.obd_requests
        if q.clone_no_multi_pid and req[0] == 0x01 and len(req) > 2:
            self._line("?" if q.clone_no_multi_pid == "?" else "NO DATA")
            return
        was_active = self.active is not None
        proto = yield from self._ensure_connected()
        if proto is None:
            return
        is_can = proto in CAN_PROTOS
        payload = req
        if is_can and not self.caf:
            pci = req[0]
            if pci >> 4 != 0 or not 0 < (pci & 0xF) <= len(req) - 1:
                payload = b""      # ECUs ignore a malformed single frame
            else:
                payload = req[1:1 + (pci & 0xF)]
        if is_can and _every(n, q.can_error):
            self._line("CAN ERROR")
            return
        if q.kline_reinit and was_active and proto in KLINE_PROTOS \
                and _every(n, q.kline_reinit[1]):
            secs = float(q.kline_reinit[0])
            self._emit("BUS INIT: ")
            for _ in range(3):
                yield ("sleep", secs / 3.0, True)
                self._emit(".")
            self._line("OK")
        targets, functional = self._targets(proto)
        t_req = time.monotonic()
        alive = [e for e in targets if self._alive(e, t_req)]
        alive.sort(key=lambda e: e.latency)
        if payload == b"\x04":
            # J1979 mode 04: every ECU that receives the request clears its
            # stored and pending DTCs (not the permanent ones), the MIL and
            # the freeze frame, whether or not the adapter waits for the 44
            # answers.
            with self._lock:
                for e in alive:
                    e.stored_dtcs = []
                    e.pending_dtcs = []
                    e.mil = None
                    if e.freeze_frame is not None:
                        e.freeze_frame = ("", {})
        events = []        # (offset, ecu, kind)
        pend = q.response_pending if q.response_pending and payload else None
        for idx, e in enumerate(alive):
            off = e.latency
            if pend and idx == 0 and _every(n, pend[1]):
                for k in range(int(pend[0])):
                    events.append((off + k * q.pending_delay, e, "pending"))
                off += int(pend[0]) * q.pending_delay
            events.append((off, e, "final"))
        events.sort(key=lambda x: x[0])
        stall = float(q.stall[0]) if q.stall and _every(n, q.stall[1]) else 0.0
        trunc = q.truncate[0] if q.truncate and _every(n, q.truncate[1]) else None
        st = self._st_seconds()
        if self.at_mode == 0:
            wait_after = st
        else:
            wait_after = min(st, self.adaptive_wait * (1.0 if self.at_mode == 1 else 0.5))
        deadline = st
        shown = 0
        got = 0
        for pos, (off, e, kind) in enumerate(events):
            if off > deadline:
                for off2, e2, kind2 in events[pos:]:
                    if kind2 == "final":
                        self._record_missed(e2, payload, functional, proto, t_req + off2, n, "missed")
                break
            delay = t_req + off - time.monotonic()
            if delay > 0:
                yield ("sleep", delay, True)
            if kind == "pending":
                msgs = [_Msg([0x7F, payload[0], 0x78])]
                self.events.append((time.monotonic(), "pending", e.name))
            else:
                msgs = self._ecu_respond(e, payload, functional, proto)
            if not msgs:
                continue
            if not self._passes_cra(e, proto):
                continue
            if stall:
                self.events.append((time.monotonic(), "stall", "%.3f" % stall))
                yield ("sleep", stall, q.stall_interruptible)
                stall = 0.0
            status = yield from self._print_group(e, msgs, proto, trunc, n)
            if status != "full":
                return
            shown += 1
            if kind == "final":
                got += len(msgs)
                deadline = (time.monotonic() - t_req) + wait_after
            else:
                deadline = (time.monotonic() - t_req) + st + q.pending_delay
            if count is not None and got >= count:
                for off2, e2, kind2 in events[pos + 1:]:
                    if kind2 == "final":
                        self._record_missed(e2, payload, functional, proto, t_req + off2, n, "missed")
                return
        remaining = t_req + deadline - time.monotonic()
        if remaining > 0:
            yield ("sleep", remaining, True)
        if shown == 0:
            self._line("NO DATA")

    def _record(self, e: Ecu, items, delivered: str, n: int, t: Optional[float] = None) -> None:
        t = time.monotonic() if t is None else t
        with self._lock:
            for mode, pid, data in items:
                self.replies.append(Reply(t, e.name, mode, pid, bytes(data), delivered, n))

    def _record_missed(self, e, payload, functional, proto, t, n, how) -> None:
        msgs = self._ecu_respond(e, payload, functional, proto, at=t)
        for m in msgs:
            self._record(e, m.items, how, n, t)

    def _print_group(self, e: Ecu, msgs: List[_Msg], proto: int, trunc, n: int):
        """Print one ECU's messages; returns "full", or "partial" when the
        request ended (truncate / BUFFER FULL)."""
        limit = self.quirks.buffer_full_after
        items = []
        for m in msgs:
            items.extend(m.items)
        printed_any = False
        for mi, m in enumerate(msgs):
            lines = self._format_msg(e, m.payload, proto)
            if trunc:
                lines = self._truncate_lines(lines, trunc)
            for toks, _mask in lines:
                text = self._render(toks) + self._eol
                if limit is not None and self._req_bytes + len(text) > limit:
                    self._line("BUFFER FULL")
                    self._record(e, items, "partial" if printed_any else "lost", n)
                    return "partial"
                self._emit(text)
                printed_any = True
            if trunc:
                self._record(e, items, "partial", n)
                return "partial"
        self._record(e, items, "full", n)
        return "full"
        yield  # pragma: no cover

    # ------------------------------------------------------------ formatting
    def _render(self, toks: List[str]) -> str:
        return (" " if self.spaces else "").join(toks)

    def _legacy_header(self, e: Ecu, proto: int, payload: bytes) -> List[int]:
        if proto == 1:
            return [0x41, 0x6B, e.address]
        if proto in (4, 5):
            return [0x80 | len(payload), 0xF1, e.address]
        return [0x48, 0x6B, e.address]

    @staticmethod
    def _isotp_frames(payload: bytes, pad: int):
        """ISO 15765-2 frames as (8 bytes, (start, end) of payload bytes)."""
        n = len(payload)
        if n <= 7:
            fr = bytes([n]) + payload
            return [(fr + bytes([pad]) * (8 - len(fr)), (1, 1 + n))]
        frames = [(bytes([0x10 | (n >> 8), n & 0xFF]) + payload[:6], (2, 8))]
        rest = payload[6:]
        seq = 1
        while rest:
            chunk, rest = rest[:7], rest[7:]
            fr = bytes([0x20 | (seq & 0xF)]) + chunk
            frames.append((fr + bytes([pad]) * (8 - len(fr)), (1, 1 + len(chunk))))
            seq += 1
        return frames

    def _format_msg(self, e: Ecu, payload: bytes, proto: int):
        """Lines for one message: list of (tokens, payload-mask)."""
        hx = lambda b: "%02X" % b
        lines = []
        if proto in CAN_PROTOS:
            if proto in CAN29_PROTOS:
                hdr = [hx(0x18), hx(0xDA), hx(0xF1), hx(e.address)]
            else:
                hdr = ["%03X" % e.can_id]
            frames = self._isotp_frames(payload, e.padding & 0xFF)
            if self.headers or not self.caf:
                for fr, (a, b) in frames:
                    toks = [hx(x) for x in fr]
                    mask = [a <= i < b for i in range(len(fr))]
                    if self.headers:
                        toks = hdr + toks
                        mask = [False] * len(hdr) + mask
                    lines.append((toks, mask))
            elif len(frames) == 1:
                fr, (a, b) = frames[0]
                toks = [hx(x) for x in fr[a:b]]
                lines.append((toks, [True] * len(toks)))
            else:
                lines.append((["%03X" % len(payload)], [False]))
                for i, (fr, (a, b)) in enumerate(frames):
                    start = 2 if i == 0 else 1
                    toks = ["%X:" % (i & 0xF)] + [hx(x) for x in fr[start:]]
                    mask = [False] + [a <= j < b for j in range(start, len(fr))]
                    lines.append((toks, mask))
            return lines
        toks = [hx(x) for x in payload]
        mask = [True] * len(toks)
        if self.headers:
            hdr = self._legacy_header(e, proto, payload)
            allb = hdr + list(payload)
            cs = j1850_crc(allb) if proto in J1850_PROTOS else sum_checksum(allb)
            toks = [hx(x) for x in hdr] + toks + [hx(cs)]
            mask = [False] * len(hdr) + mask + [False]
        lines.append((toks, mask))
        return lines

    @staticmethod
    def _truncate_lines(lines, kind: str):
        """Cut a message on the wire: keep all but the last payload byte
        ("byte") or the first half of the payload bytes ("half"); everything
        after the cut (padding, check byte, later lines) is lost too."""
        total = sum(sum(1 for m in mask if m) for _t, mask in lines)
        keep = total - 1 if kind == "byte" else total // 2
        out = []
        seen = 0
        for toks, mask in lines:
            new_t, new_m, cut = [], [], False
            for tok, m in zip(toks, mask):
                if m:
                    if seen >= keep:
                        cut = True
                        break
                    seen += 1
                new_t.append(tok)
                new_m.append(m)
            out.append((new_t, new_m))
            if cut:
                break
        return out

    # ------------------------------------------------------------ the ECUs
    def _apply_timeline(self, e: Ecu, t_rel: float) -> None:
        while e.dtc_timeline and e.dtc_timeline[0][0] <= t_rel:
            _t, stored, pending = e.dtc_timeline.pop(0)
            if stored is not None:
                e.stored_dtcs = list(stored)
            if pending is not None:
                e.pending_dtcs = list(pending)

    def _pid_data(self, e: Ecu, pid: int, t_rel: float) -> bytes:
        if pid in e.generators:
            return bytes(e.generators[pid](t_rel))
        if pid in BITMAP_PIDS:
            return e.bitmap(pid)
        if pid == 0x01:
            mil = e.mil if e.mil is not None else bool(e.stored_dtcs)
            a = (0x80 if mil else 0) | (len(e.stored_dtcs) & 0x7F)
            return bytes([a, 0x07, 0x65, 0x04])
        return band_value(pid, e.slot or 0, t_rel)

    def _supports(self, e: Ecu, pid: int) -> bool:
        return pid in e.effective_pids()

    def _ecu_respond(self, e: Ecu, req: bytes, functional: bool, proto: int,
                     at: Optional[float] = None) -> List[_Msg]:
        """What ECU ``e`` answers to ``req`` (J1979); [] = no answer."""
        if not req:
            return []
        q = self.quirks
        is_can = proto in CAN_PROTOS
        mode = req[0]
        with self._lock:
            t_rel = (time.monotonic() if at is None else at) - self.t0
            self._apply_timeline(e, t_rel)
            if mode == 0x01:
                pids = list(req[1:])
                if not pids or len(pids) > 6 or (len(pids) > 1 and not is_can):
                    return []
                if q.first_pid_only:
                    pids = pids[:1]
                answered = [p for p in pids if self._supports(e, p)]
                if len(pids) > 1 and q.partial_multi_pid:
                    k = q.partial_multi_pid
                    if k is True:
                        answered = answered[:-1] if len(answered) > 1 else answered
                    else:
                        answered = answered[:int(k)]
                if not answered:
                    return []
                out = bytearray([0x41])
                items = []
                for p in answered:
                    d = self._pid_data(e, p, t_rel)
                    out += bytes([p]) + d
                    items.append((1, p, d))
                return [_Msg(out, items)]
            if mode in (0x03, 0x07, 0x0A) and len(req) == 1:
                codes = {0x03: e.stored_dtcs, 0x07: e.pending_dtcs,
                         0x0A: e.permanent_dtcs}[mode]
                raw = b"".join(encode_dtc(c) for c in codes)
                rsp = mode + 0x40
                if is_can:
                    return [_Msg(bytes([rsp, len(codes) & 0xFF]) + raw, [(mode, None, raw)])]
                msgs = []
                for i in range(0, max(len(raw), 1), 6):
                    chunk = raw[i:i + 6]
                    msgs.append(_Msg(bytes([rsp]) + chunk + bytes(6 - len(chunk))))
                msgs[-1].items = [(mode, None, raw)]
                return msgs
            if mode == 0x04 and len(req) == 1:
                return [_Msg([0x44], [(4, None, b"")])]
            if mode == 0x02 and e.freeze_frame is not None:
                # J1979 service 02: "02 PID FRAME" -> "42 PID FRAME data";
                # frame 00 only, one PID/frame pair per request.
                if len(req) != 3 or req[2] != 0x00:
                    return []
                pid = req[1]
                if pid not in e.freeze_pids():
                    return []
                dtc, stored = e.freeze_frame
                if pid == 0x02:
                    d = encode_dtc(dtc) if dtc else b"\x00\x00"
                elif pid in BITMAP_PIDS:
                    d = _bitmap_bytes(e.freeze_pids(), pid)
                else:
                    d = stored[pid]
                return [_Msg(bytes([0x42, pid, 0x00]) + d, [(2, pid, d)])]
            if mode in (0x21, 0x22) and is_can and (e.dids if mode == 0x22 else e.lids):
                # ISO 14229-1 ReadDataByIdentifier (22) / KWP2000
                # ReadDataByLocalIdentifier (21): physical requests only.
                if functional:
                    return []
                table = e.dids if mode == 0x22 else e.lids
                body = req[1:]
                if mode == 0x22:
                    if not body or len(body) % 2:
                        return [_Msg([0x7F, mode, 0x13])]
                    ids = [(body[i] << 8) | body[i + 1] for i in range(0, len(body), 2)]
                    width = 2
                else:
                    if len(body) != 1:
                        return [_Msg([0x7F, mode, 0x13])]
                    ids = [body[0]]
                    width = 1
                known = [i for i in ids if i in table]
                if not known:
                    return [_Msg([0x7F, mode, 0x31])]
                out = bytearray([mode + 0x40])
                items = []
                for i in known:
                    d = bytes(table[i](t_rel))
                    out += i.to_bytes(width, "big") + d
                    items.append((mode, i, d))
                return [_Msg(out, items)]
            if mode == 0x09 and len(req) == 2:
                pid = req[1]
                sup = set()
                if e.vin:
                    sup.add(0x02)
                    if not is_can:
                        sup.add(0x01)
                if e.ecu_name and is_can:
                    sup.add(0x0A)
                if e.calids and is_can:
                    sup.add(0x04)
                if e.cvns and is_can:
                    sup.add(0x06)
                if pid == 0x00:
                    bits = 0
                    for p in sup:
                        bits |= 1 << (32 - p)
                    d = bits.to_bytes(4, "big")
                    return [_Msg(bytes([0x49, 0x00]) + d, [(9, 0, d)])]
                if pid not in sup:
                    return []
                if pid == 0x01:
                    return [_Msg([0x49, 0x01, 0x05], [(9, 1, b"\x05")])]
                if pid == 0x02:
                    vin = e.vin.encode("ascii")
                    if is_can:
                        return [_Msg(b"\x49\x02\x01" + vin, [(9, 2, vin)])]
                    padded = bytes(3) + vin
                    msgs = [_Msg(bytes([0x49, 0x02, i + 1]) + padded[4 * i:4 * i + 4])
                            for i in range(5)]
                    msgs[-1].items = [(9, 2, vin)]
                    return msgs
                if pid == 0x04:
                    raw = b"".join(_as_calid(c) for c in e.calids)
                    return [_Msg(bytes([0x49, 0x04, len(e.calids) & 0xFF]) + raw,
                                 [(9, 4, raw)])]
                if pid == 0x06:
                    raw = b"".join(_as_cvn(c) for c in e.cvns)
                    return [_Msg(bytes([0x49, 0x06, len(e.cvns) & 0xFF]) + raw,
                                 [(9, 6, raw)])]
                if pid == 0x0A:
                    name = e.ecu_name.encode("ascii")[:20]
                    name = name + bytes(20 - len(name))
                    return [_Msg(b"\x49\x0A\x01" + name, [(9, 0x0A, name)])]
                return []
            if is_can and not functional:
                return [_Msg([0x7F, mode, 0x11])]
            return []
