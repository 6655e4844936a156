"""ECCM's NMEA parser against the real gpsd daemon, the oracle, on generated streams.

Receiver captures ECCM has not seen: two-second bursts (GGA/GLL of T with RMC/ZDA of T+1,
in both orders, with GSA/VTG), several talkers (GN/GP/GL/GA/GB), hostile values and
midnight rollover. Each stream goes to gpsd through a pseudo-terminal and, byte for byte,
to sources.gnss.nmea.NmeaParser (as the live reader feeds it: quiet() after each burst while the
cycle end is unknown, and again with no pauses at all). Then:

- every gpsd TPV with a time and a position has an ECCM fix with the same time of day and
  lat/lon within 1e-6 degrees (and the same date, see below);
- ECCM never pairs a time with a position that gpsd gave another time; where gpsd reported
  positions for a time, ECCM's position for that time is one of them.

What gpsd 3.22 did that decides how it is driven and compared:
- it reports on sentence content alone (a cycle ends on the sentence learnt to end it;
  arrival times play no part), so once it has identified the device the whole stream can
  be written at once; bytes written while it still probes the port are lost, hence the
  warm-up of TXT sentences until it reports the NMEA0183 driver;
- its day only ever rolls forward (a time of day lower than the previous one adds a day):
  a GGA of 23:59:59 read after the RMC of 00:00:00 is dated the next day. ECCM dates it
  the day before, which is the truth of the stream; that one case is allowed, counted;
- before its cycle detection is reliable, a ZDA (kept out of that detection) re-times
  the previous second's GGA and the next GSA forces a report: a time paired with another
  second's position. Those reports are counted and must not be reproduced;
- a leap second (23:59:60) becomes 00:00:00 of the next day, a second time 00:00:00 with
  another position; ECCM gives the leap second no fix. Leap seconds are left out here;
- Debian's gpsd takes at most 4 devices, so the streams are shared between two daemons.
"""
from __future__ import annotations

import json
import os
import pty
import random
import select
import socket
import subprocess
import time
import tty
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

import pytest

from eccm.sources.gnss.nmea import Fix
from eccm.sim.gnss import nmea_sentence

from conftest import free_port, require_tool, stop_process, wait_for
from test_gnss_epochs import MIDNIGHT, PATTERNS, Second, hms, burst, run, second, sentence

NOON = datetime(2026, 11, 23, 12, 0, 0)
MAX_DEVICES = 4  # Debian's build: a fifth device is "Too many devices on command line"


def hostile_stream() -> Tuple[List[bytes], int]:
    """1 Hz GGA+RMC across midnight, one impossible field per second, and position
    sentences with no usable time. Returns the bursts and how many values are out of
    range (each must be counted once by ECCM)."""
    def edited(kind: str, i: int, over: Dict[str, str]) -> str:
        """Second i's sentence with fields replaced: f7="-5" is field 7 (talker+type 0)."""
        body = sentence(kind, second(i)).split(",")
        for index, value in over.items():
            body[int(index[1:])] = value
        return ",".join(body)

    def gga(i: int, **over: str) -> str:
        return edited("GGA", i, over)

    def rmc(i: int, **over: str) -> str:
        return edited("RMC", i, over)

    def untimed(kind: str, i: int, time_field: str = "") -> str:
        return sentence(kind, second(i)).replace(hms(second(i).utc), time_field, 1)

    def zda_year(i: int, year: str) -> str:
        return sentence("ZDA", second(i)).replace(f"{second(i).utc:%Y}", year)

    bursts = [
        (gga(0), rmc(0)),
        (gga(1), rmc(1, f7="1000000000.0")),           # 514444000 m/s
        (gga(2), rmc(2, f7="-48.6", f8="999.0")),       # -25 m/s, track 999
        (gga(3, f9="1000000000.0"), rmc(3)),            # altitude 1e9
        (gga(4, f7="-5", f8="-1.0"), rmc(4)),           # -5 satellites, HDOP -1
        (gga(5), rmc(5, f9=f"{second(5).utc:%d%m}70")),  # year '70' (2070: the clock's job)
        (gga(6), rmc(6, f3="9130.000000")),             # latitude 91.5
        (gga(7), zda_year(7, "2199"), rmc(7)),
        (untimed("GGA", 9), gga(8), rmc(8)),            # a GGA of unknown time (second 9's)
        (gga(9), rmc(9), untimed("GLL", 10)),
        (gga(10), rmc(10), untimed("GLL", 11, "0000xx")),  # a garbled time
        (gga(11), rmc(11), untimed("RMC", 12)),
        (gga(12), rmc(12)),
        (gga(13), rmc(13)),
    ]
    # 1e9 kn, -48.6 kn, 999, 1e9 m, -5, -1.0, 91.5, 2199, '0000xx'; all before the RMC
    # that ends each cycle (what comes after it is late, dropped unread).
    out_of_range = 9
    return ["".join(nmea_sentence(b) for b in group).encode() for group in bursts], \
        out_of_range


def random_streams(count: int, seed: int = 2947) -> Dict[str, Tuple[List[bytes], datetime]]:
    """Two-second burst patterns nobody chose: the first `count` the seeded generator
    makes that hold a date (RMC or ZDA) and a position, random talkers, across midnight."""
    rng = random.Random(seed)
    out: Dict[str, Tuple[List[bytes], datetime]] = {}
    while len(out) < count:
        kinds = rng.sample(["GGA", "GLL", "RMC", "ZDA", "GSA", "VTG", "GNS"], rng.randint(2, 7))
        if not {"RMC", "ZDA"} & set(kinds) or not {"GGA", "GLL", "RMC", "GNS"} & set(kinds):
            continue
        pattern = [(kind, rng.choice([0, 1])) for kind in kinds]
        talkers = [rng.choice(["GP", "GN", "GL", "GA", "GB"]) for _ in pattern]
        name = "random " + " ".join(f"{t}{k}{'+1' if o else ''}"
                                    for (k, o), t in zip(pattern, talkers))
        out[name] = ([burst(i, pattern, talkers=talkers) for i in range(12)], MIDNIGHT)
    return out


STREAMS: Dict[str, Tuple[List[bytes], datetime]] = {
    "two-second GP +GSA/VTG, midnight":
        ([burst(i, PATTERNS["... then GSA VTG"]) for i in range(14)], MIDNIGHT),
    "GGA of T + ZDA of T+1, midnight":
        ([burst(i, PATTERNS["GGA of T, ZDA of T+1, GSA"]) for i in range(14)], MIDNIGHT),
    "RMC/ZDA of T+1 first, midnight":
        ([burst(i, PATTERNS["RMC ZDA of T+1 first"]) for i in range(14)], MIDNIGHT),
    "RMC T+1, GGA T, ZDA T+1, GLL T, midnight":
        ([burst(i, PATTERNS["RMC T+1, GGA T, ZDA T+1, GLL T"]) for i in range(14)],
         MIDNIGHT),
    "talkers GN/GP/GL/GA/GB, two seconds":
        ([burst(i, [("GNS", 0), ("GSA", 0), ("RMC", 1), ("GLL", 0), ("ZDA", 1), ("GSA", 1),
                    ("VTG", 1), ("GGA", 0)], start=NOON, talkers=["GN", "GP", "GL", "GA", "GB"])
          for i in range(12)], NOON),
    "hostile values, midnight": (hostile_stream()[0], MIDNIGHT),
    "GGA of T+1 with RMC of T, GL/GA":
        ([burst(i, PATTERNS["GGA of T+1, RMC of T"], start=NOON, talkers=["GL", "GA"])
          for i in range(12)], NOON),
    **random_streams(2),
}


class Gpsd:
    """A gpsd daemon reading pseudo-terminals, listening on 127.0.0.1 only (no -G), read
    through its JSON watch (with NMEA echo: a sentinel sentence tells when it has read
    everything written before it)."""

    def __init__(self, exe: str, folder: Path, names: Sequence[str]):
        assert len(names) <= MAX_DEVICES
        self.ptys: Dict[str, Tuple[int, int, str]] = {}
        for name in names:
            master, slave = pty.openpty()
            tty.setraw(slave)
            self.ptys[name] = (master, slave, os.ttyname(slave))
        self.port = free_port()
        self.log_path = folder / f"gpsd-{self.port}.log"
        self._log = open(self.log_path, "wb")
        # -N foreground, -n open the devices at once, -b read-only (never write to the
        # "receiver"), -S port on loopback (no -G), -F a control socket of our own.
        self.proc = subprocess.Popen(
            [exe, "-N", "-n", "-b", "-S", str(self.port), "-F",
             str(folder / f"gpsd-{self.port}.sock")] + [p[2] for p in self.ptys.values()],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        self.sock: Optional[socket.socket] = None
        self.messages: List[dict] = []
        self._buf = b""

    def connect(self, timeout: float = 20) -> None:
        def listening() -> Optional[socket.socket]:
            assert self.proc.poll() is None, self.log_path.read_text(errors="replace")
            try:
                return socket.create_connection(("127.0.0.1", self.port), timeout=1)
            except OSError:
                return None  # gpsd probes its devices before it listens
        self.sock = wait_for(listening, timeout, step=0.05, what="gpsd to listen")
        self.sock.sendall(b'?WATCH={"enable":true,"json":true,"nmea":true};\n')
        self.read_until(lambda: any(m.get("class") == "WATCH" for m in self.messages),
                        timeout, "gpsd's WATCH reply")

    def _read(self, wait: float) -> None:
        assert self.sock is not None
        ready, _, _ = select.select([self.sock], [], [], max(0.0, wait))
        if not ready:
            return
        data = self.sock.recv(65536)
        assert data, "gpsd closed the connection"
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            line = line.strip()
            if line.startswith(b"{"):
                self.messages.append(json.loads(line))
            elif line:
                self.messages.append({"class": "NMEA", "text": line.decode("latin-1")})

    def read_until(self, done, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout} s waiting for {what}")
            self._read(min(0.1, deadline - time.monotonic()))

    def warm_up(self, timeout: float = 15) -> None:
        """TXT sentences (no fix data) until gpsd has identified every device as NMEA;
        sent again each round, as gpsd loses what arrives while it probes a port."""
        def pending() -> List[str]:
            known = {m.get("path") for m in self.messages
                     if m.get("class") == "DEVICE" and m.get("driver")}
            return [n for n, p in self.ptys.items() if p[2] not in known]
        deadline = time.monotonic() + timeout
        while pending():
            if time.monotonic() > deadline:
                pytest.fail(f"gpsd did not identify {pending()} in {timeout} s")
            for name in pending():
                os.write(self.ptys[name][0], nmea_sentence("GPTXT,01,01,02,warm-up").encode())
            round_end = time.monotonic() + 0.2
            while pending() and time.monotonic() < round_end:
                self._read(round_end - time.monotonic())

    def play(self, streams: Dict[str, List[bytes]], timeout: float = 15) -> None:
        """Write each stream to its device, then wait for gpsd to have read it all."""
        for name, bursts in streams.items():
            for data in bursts + [nmea_sentence(f"GPTXT,01,01,02,END {name}").encode()]:
                os.write(self.ptys[name][0], data)
                self._read(0)  # keep gpsd's replies flowing
        self.read_until(lambda: all(
            any(m.get("text", "").startswith(f"$GPTXT,01,01,02,END {name}*")
                for m in self.messages) for name in streams), timeout, "gpsd to read all")

    def tpvs(self, name: str) -> List[dict]:
        path = self.ptys[name][2]
        return [m for m in self.messages if m.get("class") == "TPV" and m.get("device") == path]

    def stop(self) -> None:
        if self.sock is not None:
            self.sock.close()
        stop_process(self.proc)  # by its own process id
        self._log.close()
        for master, slave, _ in self.ptys.values():
            os.close(master)
            os.close(slave)


@pytest.fixture(scope="module")
def gpsd_reports(tmp_path_factory) -> Dict[str, List[dict]]:
    """gpsd's TPV reports for every stream (two daemons started side by side)."""
    exe = require_tool("gpsd")
    folder = tmp_path_factory.mktemp("gpsd")
    names = list(STREAMS)
    daemons = [Gpsd(exe, folder, names[i:i + MAX_DEVICES])
               for i in range(0, len(names), MAX_DEVICES)]
    try:
        for daemon in daemons:
            daemon.connect()
        for daemon in daemons:
            daemon.warm_up()
        for daemon in daemons:
            daemon.play({name: STREAMS[name][0] for name in daemon.ptys})
        return {name: daemon.tpvs(name) for daemon in daemons for name in daemon.ptys}
    finally:
        for daemon in daemons:
            daemon.stop()


Pair = Tuple[str, float, float]  # time of day 'HH:MM:SS.fff', lat, lon


def _tod(fix: Fix) -> str:
    return fix.time[-13:-1]


def _near(a: Tuple[float, float], b: Tuple[float, float]) -> bool:
    return abs(a[0] - b[0]) <= 1e-6 and abs(a[1] - b[1]) <= 1e-6


def _truth(tod: str, start: datetime) -> Second:
    for i in range(-3, 200):
        s = second(i, start)
        if s.utc.strftime("%H:%M:%S.000") == tod:
            return s
    raise AssertionError(f"{tod} is no second of the stream")


FIGURES = ("gpsd", "matched", "gpsd_merged", "eccm", "confirmed", "gpsd_day_ahead")


def compare(name: str, tpvs: List[dict], fixes: List[Fix], start: datetime,
            dates: bool) -> Dict[str, int]:
    """Check ECCM's fixes against gpsd's reports; return the figures.

    The streams are generated, so each time of day has one true position. A gpsd report
    pairing a time with another second's position is gpsd merging two seconds (it does
    before its cycle detection is reliable: a ZDA, which it keeps out of cycle detection,
    re-times the previous second's GGA and a GSA forces the report). Such a report is
    counted, and ECCM must not reproduce it; every other gpsd report must be reproduced."""
    figures = dict.fromkeys(FIGURES, 0)
    gpsd: Dict[str, List[Tuple[float, float]]] = {}
    gpsd_days: Dict[Pair, Set[str]] = {}
    merged: List[Pair] = []
    for tpv in tpvs:
        if "time" not in tpv or "lat" not in tpv or "lon" not in tpv:
            continue
        tod = tpv["time"][11:23]
        true = _truth(tod, start)
        if not _near((tpv["lat"], tpv["lon"]), (true.lat, true.lon)):
            merged.append((tod, tpv["lat"], tpv["lon"]))
            continue
        gpsd.setdefault(tod, []).append((tpv["lat"], tpv["lon"]))
        gpsd_days.setdefault((tod, tpv["lat"], tpv["lon"]), set()).add(tpv["time"][:10])
    figures["gpsd_merged"] = len(merged)
    eccm: Dict[str, List[Fix]] = {}
    for fix in fixes:
        if fix.lat is not None:
            eccm.setdefault(_tod(fix), []).append(fix)

    for (tod, lat, lon), days in gpsd_days.items():
        figures["gpsd"] += 1
        same = [f for f in eccm.get(tod, []) if _near((f.lat, f.lon), (lat, lon))]
        assert same, f"{name}: gpsd's {tod} {lat},{lon} has no ECCM fix"
        figures["matched"] += 1
        if not dates:
            continue
        for day in days:
            for fix in same:
                if fix.date is None or fix.date.isoformat() == day:
                    continue
                # gpsd's day only rolls forward: the one known difference, where ECCM's
                # date is the stream's truth and gpsd's the day after.
                assert fix.date == _truth(tod, start).utc.date() and \
                    date.fromisoformat(day) == fix.date + timedelta(days=1), \
                    f"{name}: {tod} dated {fix.date} by ECCM, {day} by gpsd"
                figures["gpsd_day_ahead"] += 1
    owners: Dict[Tuple[float, float], Set[str]] = {}
    for tod, positions in gpsd.items():
        for pos in positions:
            owners.setdefault((round(pos[0], 6), round(pos[1], 6)), set()).add(tod)
    for tod, tod_fixes in eccm.items():
        for fix in tod_fixes:
            figures["eccm"] += 1
            pos = (fix.lat, fix.lon)
            true = _truth(tod, start)
            assert _near(pos, (true.lat, true.lon)), f"{name}: ECCM's {fix.time} is at {pos}"
            assert (tod, fix.lat, fix.lon) not in merged
            other = owners.get((round(pos[0], 6), round(pos[1], 6)), set()) - {tod}
            assert not other, f"{name}: ECCM pairs {tod} with gpsd's position of {other}"
            if tod in gpsd:
                assert any(_near(pos, g) for g in gpsd[tod]), \
                    f"{name}: ECCM's {tod} {pos} is none of gpsd's {gpsd[tod]}"
                figures["confirmed"] += 1
    return figures


@pytest.mark.parametrize("quiet", [True, False], ids=["quiet-after-bursts", "no-pauses"])
def test_eccm_agrees_with_gpsd_on_generated_streams(gpsd_reports, quiet):
    report = []
    totals = dict.fromkeys(FIGURES, 0)
    for name, (bursts, start) in STREAMS.items():
        tpvs = gpsd_reports[name]
        assert sum(1 for t in tpvs if "time" in t and "lat" in t) >= 8, \
            f"gpsd reported too little on {name}: {tpvs}"
        fixes, parser = run(bursts, quiet)
        figures = compare(name, tpvs, fixes, start, dates=not name.startswith("hostile"))
        if name.startswith("hostile"):
            assert parser.counters.out_of_range == hostile_stream()[1]
        for key, value in figures.items():
            totals[key] += value
        report.append(f"  {name[:38]:38s} gpsd {figures['matched']:3d}/{figures['gpsd']:3d} "
                      f"reproduced (+{figures['gpsd_merged']} merging two seconds, not); "
                      f"ECCM {figures['confirmed']:3d}/{figures['eccm']:3d} confirmed; "
                      f"gpsd a day ahead {figures['gpsd_day_ahead']}")
    print(f"\ngpsd oracle ({'quiet() after bursts' if quiet else 'no pauses'}): "
          f"{totals['matched']}/{totals['gpsd']} gpsd position reports reproduced; "
          f"{totals['gpsd_merged']} gpsd reports pairing a time with another second's "
          f"position, none reproduced; {totals['confirmed']}/{totals['eccm']} ECCM fixes "
          f"confirmed by a gpsd report of their time, none contradicted")
    print("\n".join(report))
    assert totals["matched"] == totals["gpsd"]
    # gpsd merges seconds only while it learns the cycle: a handful, not a pattern.
    assert totals["gpsd_merged"] <= len(STREAMS)
