"""GNSS reader thread: serial port (or a gpsd server) -> nmea parser -> shared state.

The port is reopened forever with growing backoff when it is missing or unplugged; the
engine logging never waits for it. `gpsd://host:port` as the port reads the NMEA that a
running gpsd relays (many Pi users let gpsd own the receiver).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import asdict
from types import MappingProxyType
from datetime import date, timedelta
from typing import TYPE_CHECKING, Callable, Optional, Tuple
from urllib.parse import urlsplit

import serial

from eccm.core.clock import RELEASED, TRUST_YEARS
from eccm.core.health import GnssHealth
from eccm.sources.gnss.columns import COLUMNS, SOURCE
from eccm.sources.gnss.nmea import Fix, NmeaParser
from eccm.core.state import CONNECTED, CONNECTING, DISABLED, LOST, SharedState
from eccm.core.worker import Backoff, LinkLog, Worker

if TYPE_CHECKING:
    from eccm.config import Config

log = logging.getLogger(__name__)

READ_TIMEOUT = 0.25  # also the pause after which a burst is taken as a whole epoch
SILENCE_LIMIT = 5.0  # seconds without a byte: the receiver is reported silent
GPSD_WATCH = b'?WATCH={"enable":true,"nmea":true};\n'


def live_dates() -> Tuple[date, date]:
    """The dates a receiver can truly give a running ECCM: from its release to the day
    before the record clock stops trusting GNSS (a year '70' read as 2070 and a
    week-rollover 1999 are not now)."""
    first = RELEASED.date()
    return first, first.replace(year=first.year + TRUST_YEARS) - timedelta(days=1)


class _Source:
    """A byte stream: read(timeout-bounded) -> bytes ('' on timeout), close()."""

    def read(self) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _SerialSource(_Source):
    def __init__(self, port: str, baudrate: int, timeout: float = READ_TIMEOUT):
        self._ser = serial.Serial(os.path.realpath(port), baudrate, timeout=timeout)

    def read(self) -> bytes:
        return self._ser.read(self._ser.in_waiting or 1)

    def close(self) -> None:
        self._ser.close()


class _GpsdSource(_Source):
    def __init__(self, url: str, timeout: float = READ_TIMEOUT):
        parts = urlsplit(url)
        self._sock = socket.create_connection((parts.hostname or "127.0.0.1",
                                               parts.port or 2947), timeout=5)
        self._sock.settimeout(timeout)
        self._sock.sendall(GPSD_WATCH)

    def read(self) -> bytes:
        try:
            data = self._sock.recv(4096)
        except socket.timeout:
            return b""
        if not data:
            raise ConnectionError("gpsd closed the connection")
        return data

    def close(self) -> None:
        self._sock.close()


def publish_fix(state: SharedState, fix: Fix) -> None:
    """A fix into the state: its fields as the GNSS source's readings, every field at
    once with the epoch's arrival time (a row never mixes two fixes), and the whole fix
    for POSITION."""
    state.update_values(fix.readings(), mono=fix.mono, origin=GnssReader.name)
    state.set_gnss(fix)


class GnssReader(Worker):
    name = SOURCE

    def __init__(self, stop_event: threading.Event, state: SharedState, *, port: str,
                 baudrate: int = 9600, max_delay: float = 30.0,
                 on_fix: Optional[Callable[[Fix], None]] = None,
                 read_timeout: float = READ_TIMEOUT):
        super().__init__(stop_event)
        self.state = state
        self.port = port
        self.baudrate = baudrate
        self.backoff = Backoff(max_delay)
        self.on_fix = on_fix
        self.read_timeout = read_timeout  # a pause this long ends an epoch's burst
        self.parser = NmeaParser(dates=live_dates())
        self._link = LinkLog(state, self.name, "GNSS receiver")
        state.declare(self.name, COLUMNS)  # the record has them, with or without a fix

    @classmethod
    def from_config(cls, stop_event: threading.Event, state: SharedState, cfg: "Config", *,
                    on_fix: Optional[Callable[[Fix], None]] = None) -> Optional["GnssReader"]:
        """The reader the configuration describes, or None with GPS_POSITION_MONITORING=no
        (declared off); on_fix is the daemon's (record clock)."""
        if not cfg.GPS_POSITION_MONITORING:
            cls.declare_off(state)
            return None
        return cls(stop_event, state, port=cfg.GNSS_PORT, baudrate=cfg.GNSS_BAUDRATE,
                   max_delay=cfg.RECONNECT_MAX_DELAY, on_fix=on_fix)

    @staticmethod
    def declare_off(state: SharedState) -> None:
        """GNSS is off: the fields are known by name (GET LATITUDE says 'GNSS is off')
        but never recorded."""
        state.set_link(GnssReader.name, DISABLED)
        state.declare(GnssReader.name, COLUMNS)

    def _open(self) -> _Source:
        if self.port.startswith("gpsd://"):
            return _GpsdSource(self.port, self.read_timeout)
        return _SerialSource(self.port, self.baudrate, self.read_timeout)

    def run(self) -> None:
        """Runs in the gnss thread."""
        while not self.stop_event.is_set():
            self.heartbeat()
            self._link(CONNECTING, self.port)
            try:
                source = self._open()
            except (OSError, serial.SerialException, ValueError) as exc:
                self._link(LOST, f"cannot open {self.port}: {exc}")
                self.stop_event.wait(self.backoff.next())
                continue
            # A new stream: an epoch half-read from the old one must not surface later
            # as a fresh fix. The counters go on.
            self.parser = NmeaParser(counters=self.parser.counters, dates=live_dates())
            try:
                self._link(CONNECTED, self.port)
                self._read(source)
            except (OSError, serial.SerialException, ConnectionError) as exc:
                self._link(LOST, f"{self.port} stopped: {exc}")
            finally:
                source.close()
            self.stop_event.wait(self.backoff.next())

    def _read(self, source: _Source) -> None:
        last_byte = time.monotonic()
        silent = False
        while not self.stop_event.is_set():
            self.heartbeat()
            data = source.read()
            now = time.monotonic()
            if not data:
                if not self.parser.cycle_end_known:  # a pause ends the burst of an epoch
                    for fix in self.parser.quiet():
                        self._publish(fix)
                if not silent and now - last_byte > SILENCE_LIMIT:
                    silent = True
                    self.state.set_link(self.name, CONNECTED, "no data from the receiver")
                continue
            if silent:
                silent = False
                self.state.set_link(self.name, CONNECTED, self.port)
            last_byte = now
            self.backoff.reset()
            # Fixes carry the arrival of their epoch's first sentence, not of the bytes
            # that completed them (a second later on receivers whose burst holds two).
            for fix in self.parser.feed(data, now):
                self._publish(fix)
            self.state.report(GnssHealth(MappingProxyType(asdict(self.parser.counters))))

    def _publish(self, fix: Fix) -> None:
        publish_fix(self.state, fix)
        self.state.count("gnss_fixes")
        if self.on_fix is not None and fix.utc is not None:
            self.on_fix(fix)
