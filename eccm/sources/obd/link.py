"""The byte link to an ELM327 (serial port, Bluetooth rfcomm, or Wi-Fi `socket://`): one
command out, its reply up to the '>' prompt back, and resynchronisation when a prompt is
missed, so that a late reply is never read as the answer to the next request.

Used by the OBD poller thread only.
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from typing import List, Optional

import serial

log = logging.getLogger(__name__)

PROMPT = b">"
# Replies that say the adapter is still at work, and how long it may take (ELM327
# datasheet: a protocol search tries every protocol; a K-line bus init takes 2-3 s;
# ISO 15765 / 14230: an ECU answering 7F xx 78 "response pending" has up to 5 s more).
SEARCH_TIMEOUT = 15.0
BUS_INIT_TIMEOUT = 6.0
PENDING_TIMEOUT = 5.0
# After a missed prompt: how long to let the adapter finish on its own before
# interrupting it, and the silence that proves nothing more is coming.
LATE_GRACE = 1.0
QUIET = 0.1
# A harmless command every adapter answers (its identity), never a bare CR (which
# repeats the last command: a repeated 04 would clear the codes again). Its first byte
# stops a busy adapter ('STOPPED'); what follows is answered, or '?'.
RESYNC = b"ATI\r"


class AdapterError(Exception):
    """The adapter is missing, gone, or not an ELM327."""


class PortInUse(AdapterError):
    """Another process holds the adapter's port (the port is opened exclusively)."""


@dataclass
class Answer:
    """The lines of one reply; `complete` only when the prompt ended it."""
    lines: List[str]
    complete: bool


def is_url(port: str) -> bool:
    """pyserial URL handlers (socket://host:port for Wi-Fi adapters, rfc2217://...)."""
    return "://" in port


def holder_of(device: str) -> Optional[str]:
    """'PID 1234 (eccm run ...)' of the process holding device's lock (/proc/locks, the
    flock pyserial takes for an exclusive open)."""
    try:
        st = os.stat(device)
        with open("/proc/locks") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == where:
            pid = fields[4]
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                cmd = ""
            return f"PID {pid}" + (f" ({cmd[:80]})" if cmd else "")
    return None


def check_free(port: str) -> None:
    """Raise PortInUse if another process holds this adapter (a second ECCM, say); a
    missing port or a URL is left to the poller, which reports and retries."""
    if is_url(port) or not os.path.exists(port):
        return
    try:
        ElmLink(port, 38400, 0.1).close()
    except PortInUse:
        raise
    except AdapterError:
        return


class ElmLink:
    """One open adapter; `stale_bytes` and `missed_prompts` count what went wrong."""

    def __init__(self, port: str, baudrate: int, timeout: float):
        self.port = port
        self.timeout = timeout
        self.url = is_url(port)
        try:
            if self.url:
                self.ser = serial.serial_for_url(port, baudrate=baudrate, timeout=0.05,
                                                 write_timeout=2)
            else:
                self.ser = serial.Serial(port, baudrate, timeout=0.05, write_timeout=2,
                                         exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            if not self.url and "lock" in str(exc).lower():
                who = holder_of(port) or "another process"
                raise PortInUse(f"{port} is in use by {who}") from None
            raise AdapterError(f"cannot open {port}: {exc}") from None
        self.synced = True
        self._pending = b""       # read past a marker by read_until
        self.stale_bytes = 0      # bytes that arrived when no reply was awaited
        self.missed_prompts = 0

    def command(self, text: str, timeout: Optional[float] = None) -> Answer:
        """Send text + CR; the reply's non-empty lines (prompt and echo removed)."""
        if not self.synced:
            self.resync()
        self._drain_stale()
        self.write(text.encode("ascii") + b"\r")
        data, complete = self._read_reply(self.timeout if timeout is None else timeout)
        if not complete:
            self.synced = False
            self.missed_prompts += 1
        lines = [ln.strip() for ln in data.replace(b"\x00", b"").decode("ascii", "replace")
                 .replace("\n", "\r").split("\r")]
        lines = [ln for ln in lines if ln]
        if lines and lines[0].replace(" ", "").upper() == text.replace(" ", "").upper():
            lines = lines[1:]  # the echo (an adapter that keeps echoing despite ATE0)
        return Answer(lines, complete)

    def _read_reply(self, timeout: float) -> "tuple[bytes, bool]":
        start = time.monotonic()
        deadline = start + timeout
        out = bytearray()
        try:
            while True:
                chunk = self.ser.read(self.ser.in_waiting or 1)
                if chunk:
                    out += chunk
                    if PROMPT in chunk:
                        reply, _, rest = bytes(out).partition(PROMPT)
                        if rest.strip(b"\r\n \x00"):
                            self.stale_bytes += len(rest)  # nothing follows a prompt
                        return reply, True
                    deadline = max(deadline, start + self._patience(out, timeout))
                if time.monotonic() > deadline:
                    return bytes(out), False
        except (serial.SerialException, OSError) as exc:
            raise AdapterError(f"adapter disconnected: {exc}") from None

    @staticmethod
    def _patience(out: bytes, timeout: float) -> float:
        """A longer wait while the adapter says it is still at work."""
        text = bytes(out).upper().replace(b" ", b"")
        if b"SEARCHING" in text:
            return SEARCH_TIMEOUT
        if b"BUSINIT" in text:
            return BUS_INIT_TIMEOUT
        if _PENDING.search(text):
            return timeout + PENDING_TIMEOUT
        return timeout

    def _drain_stale(self) -> None:
        self.stale_bytes += len(self._pending)
        self._pending = b""
        try:  # a socket's in_waiting says 0 or 1: read until nothing is left
            while self.ser.in_waiting:
                self.stale_bytes += len(self.ser.read(self.ser.in_waiting))
        except (serial.SerialException, OSError) as exc:
            raise AdapterError(f"adapter disconnected: {exc}") from None

    def resync(self) -> None:
        """After a missed prompt: let the adapter finish (its late reply is dropped), or
        interrupt it, until a prompt is followed by silence. Raises AdapterError if the
        adapter never prompts again."""
        data, complete = self._read_reply(LATE_GRACE)
        self.stale_bytes += len(data)
        if not complete:
            self.write(RESYNC)
            data, complete = self._read_reply(LATE_GRACE)
            self.stale_bytes += len(data)
            if not complete:
                raise AdapterError("the adapter stopped answering (no prompt)")
        for _ in range(50):  # a second prompt may follow (STOPPED, then '?' for RESYNC)
            data, complete = self._read_reply(QUIET)
            self.stale_bytes += len(data)
            if not complete and not data:
                self.synced = True
                return
        raise AdapterError("the adapter does not stop sending")

    def raw(self, data: bytes, timeout: float) -> Answer:
        """Bytes out as they are (baud probing); the reply up to the prompt."""
        self._drain_stale()
        self.write(data)
        reply, complete = self._read_reply(timeout)
        return Answer([reply.decode("ascii", "replace")], complete)

    def write(self, data: bytes) -> None:
        try:
            self.ser.write(data)
        except (serial.SerialException, OSError) as exc:
            raise AdapterError(f"adapter disconnected: {exc}") from None

    def read_until(self, marker: bytes, timeout: float) -> bytes:
        """Raw bytes up to and including marker (the baud-switch handshake); bytes read
        past it are kept for the next read_until."""
        deadline = time.monotonic() + timeout
        out = bytearray(self._pending)
        try:
            while marker not in out and time.monotonic() < deadline:
                out += self.ser.read(self.ser.in_waiting or 1)
        except (serial.SerialException, OSError) as exc:
            raise AdapterError(f"adapter disconnected: {exc}") from None
        head, found, self._pending = bytes(out).partition(marker)
        return head + found

    def discard(self, seconds: float) -> None:
        """Read and drop whatever arrives for `seconds` (a device timing: the adapter
        falling back to its old speed); a wait that also empties the line."""
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                self.ser.read(self.ser.in_waiting or 1)
        except (serial.SerialException, OSError) as exc:
            raise AdapterError(f"adapter disconnected: {exc}") from None
        self._pending = b""

    @property
    def baudrate(self) -> int:
        return int(getattr(self.ser, "baudrate", 0) or 0)

    @baudrate.setter
    def baudrate(self, value: int) -> None:
        self.ser.baudrate = value

    def close(self) -> None:
        try:
            self.ser.close()
        except (serial.SerialException, OSError):
            pass


# A negative response "response pending" (7F <mode> 78) in the reply so far.
_PENDING = re.compile(rb"7F[0-9A-F]{2}78")
