"""A simulated GNSS receiver for the demo: the simulated car's drive as NMEA on a pty.

The track is generated here (no third-party capture): the car drives the speed profile of
sim.car.drive_speed, turning 90 degrees every 37.5 s, from a start point near Lyon. Each
second the receiver sends GGA, RMC, GSA and VTG, like a common GPS module.
"""
from __future__ import annotations

import math
import os
import time
from datetime import datetime, timezone
from typing import Callable, List, Tuple

from eccm.sim.car import drive_speed
from eccm.sim.device import PtyDevice

START = (45.7640, 4.8357)
EARTH_M_PER_DEG = 111_320.0


def nmea_sentence(body: str) -> str:
    checksum = 0
    for ch in body:
        checksum ^= ord(ch)
    return f"${body}*{checksum:02X}\r\n"


def _dm(value: float, lat: bool) -> Tuple[str, str]:
    hemi = ("N" if value >= 0 else "S") if lat else ("E" if value >= 0 else "W")
    value = abs(value)
    whole = int(value)
    minutes = (value - whole) * 60
    return (f"{whole:02d}{minutes:08.5f}" if lat else f"{whole:03d}{minutes:08.5f}"), hemi


def heading(t: float) -> float:
    return (int(t // 37.5) * 90.0) % 360.0


def track(seconds: int) -> List[Tuple[float, float, float, float]]:
    """(lat, lon, speed m/s, heading) for each whole second of the drive."""
    lat, lon = START
    points = []
    for t in range(seconds + 1):
        speed = drive_speed(t) / 3.6
        head = heading(t)
        points.append((lat, lon, speed, head))
        lat += speed * math.cos(math.radians(head)) / EARTH_M_PER_DEG
        lon += speed * math.sin(math.radians(head)) / (EARTH_M_PER_DEG *
                                                        math.cos(math.radians(lat)))
    return points


def epoch_sentences(when: datetime, lat: float, lon: float, speed: float,
                    head: float) -> str:
    hms = when.strftime("%H%M%S") + f".{when.microsecond // 10000:02d}"
    dmy = when.strftime("%d%m%y")
    la, ns = _dm(lat, True)
    lo, ew = _dm(lon, False)
    knots = speed / 0.514444
    alt = 170.0 + 5 * math.sin(lat * 1000)
    return "".join([
        nmea_sentence(f"GPGGA,{hms},{la},{ns},{lo},{ew},1,09,0.9,{alt:.1f},M,47.9,M,,"),
        nmea_sentence(f"GPRMC,{hms},A,{la},{ns},{lo},{ew},{knots:.2f},{head:.1f},{dmy},,,A"),
        nmea_sentence("GPGSA,A,3,02,05,07,13,15,18,21,24,30,,,,1.6,0.9,1.3"),
        nmea_sentence(f"GPVTG,{head:.1f},T,,M,{knots:.2f},N,{speed * 3.6:.2f},K,A"),
    ])


class SimulatedReceiver(PtyDevice):
    """Writes one epoch a second to a pty from its own thread; `port` is the path."""

    thread_name = "simgnss"

    def __init__(self, started: float, clock: Callable[[], float] = time.monotonic):
        self.started = started
        self.clock = clock
        super().__init__()
        os.set_blocking(self._master, False)  # nobody reading: drop, like a real UART

    def _serve(self) -> None:
        """Runs in the simgnss thread."""
        points = track(3600)
        while not self._stop.wait(1.0 - time.time() % 1.0):
            t = int(self.clock() - self.started) % len(points)
            lat, lon, speed, head = points[t]
            data = epoch_sentences(datetime.now(timezone.utc), lat, lon, speed, head)
            try:
                os.write(self._master, data.encode("ascii"))
            except BlockingIOError:
                continue
            except OSError:
                return
