"""One fix, one second: receivers whose bursts carry sentences of two UTC seconds.

Some marine and multi-talker units send GGA/GLL of second T with RMC/ZDA of T+1 in one
burst. Every fix must carry the time of one second and only that second's data: position,
altitude, speed, track, satellites, HDOP and date. The stream here is generated from a
"truth" (each second has its own values), so any mixing shows as a wrong value.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import pytest

from eccm.sources.gnss.nmea import KNOTS, MODE_NONE, Fix, NmeaParser
from eccm.sim.gnss import nmea_sentence

MIDNIGHT = datetime(2026, 11, 23, 23, 59, 54)  # the streams cross into 2026-11-24


@dataclass(frozen=True)
class Second:
    """What the receiver knows at one second: every field distinct from its neighbours'."""
    utc: datetime
    lat: float
    lon: float
    knots: float
    track: float
    alt: float
    sats: int
    hdop: float


def second(index: int, start: datetime = MIDNIGHT) -> Second:
    return Second(utc=start + timedelta(seconds=index), lat=round(48 + index * 0.001, 6),
                  lon=round(-11 - index * 0.002, 6), knots=float(index % 40 + 1),
                  track=float(10 + index % 300), alt=100.0 + index % 500,
                  sats=4 + index % 20, hdop=round(0.6 + 0.1 * (index % 10), 1))


def _dm(value: float, width: int) -> str:
    value = abs(value)
    whole = int(value)
    return f"{whole:0{width}d}{(value - whole) * 60:09.6f}"


def hms(moment: datetime) -> str:
    return moment.strftime("%H%M%S.00")


def sentence(kind: str, s: Second, talker: str = "GP") -> str:
    """One NMEA sentence (body without $ and checksum) of second s."""
    lat = f"{_dm(s.lat, 2)},{'N' if s.lat >= 0 else 'S'}"
    lon = f"{_dm(s.lon, 3)},{'E' if s.lon >= 0 else 'W'}"
    clock = hms(s.utc)
    bodies = {
        "GGA": f"GGA,{clock},{lat},{lon},1,{s.sats:02d},{s.hdop},{s.alt},M,46.9,M,,",
        "GLL": f"GLL,{lat},{lon},{clock},A,A",
        "RMC": f"RMC,{clock},A,{lat},{lon},{s.knots},{s.track},{s.utc:%d%m%y},,,A",
        "GNS": f"GNS,{clock},{lat},{lon},AA,{s.sats:02d},{s.hdop},{s.alt},46.9,,",
        "ZDA": f"ZDA,{clock},{s.utc:%d},{s.utc:%m},{s.utc:%Y},00,00",
        "GSA": f"GSA,A,3,05,07,13,15,,,,,,,,,1.9,{s.hdop},1.6",
        "VTG": f"VTG,{s.track},T,,M,{s.knots},N,{s.knots * 1.852:.4f},K,A",
    }
    return talker + bodies[kind]


# A burst pattern: (sentence kind, second offset from T). Timeless sentences (GSA, VTG)
# describe the second of the timed sentence before them, as gpsd assumes.
Pattern = Sequence[Tuple[str, int]]
PATTERNS: Dict[str, Pattern] = {
    "GGA GLL of T, RMC ZDA of T+1": [("GGA", 0), ("GLL", 0), ("RMC", 1), ("ZDA", 1)],
    "... then GSA VTG": [("GGA", 0), ("GLL", 0), ("RMC", 1), ("ZDA", 1), ("GSA", 1),
                         ("VTG", 1)],
    "GGA GSA of T, RMC VTG of T+1": [("GGA", 0), ("GSA", 0), ("RMC", 1), ("VTG", 1)],
    "RMC ZDA of T+1 first": [("RMC", 1), ("ZDA", 1), ("GGA", 0), ("GLL", 0)],
    "GGA of T, ZDA of T+1": [("GGA", 0), ("ZDA", 1)],
    "GGA of T, ZDA of T+1, GSA": [("GGA", 0), ("ZDA", 1), ("GSA", 1)],
    "GGA of T+1, RMC of T": [("GGA", 1), ("RMC", 0)],
    "RMC T+1, GGA T, ZDA T+1, GLL T": [("RMC", 1), ("GGA", 0), ("ZDA", 1), ("GLL", 0)],
    "GGA T, RMC T+1, GLL T, ZDA T+1": [("GGA", 0), ("RMC", 1), ("GLL", 0), ("ZDA", 1)],
    "one second (control)": [("GGA", 0), ("RMC", 0), ("GSA", 0), ("VTG", 0)],
}


def burst(index: int, pattern: Pattern, start: datetime = MIDNIGHT,
          talkers: Optional[Sequence[str]] = None) -> bytes:
    """The bytes of burst `index` (its T is second `index`)."""
    out = []
    for n, (kind, offset) in enumerate(pattern):
        talker = talkers[n % len(talkers)] if talkers else "GP"
        out.append(nmea_sentence(sentence(kind, second(index + offset, start), talker)))
    return "".join(out).encode()


def run(bursts: Iterable[bytes], quiet: bool, chunk: int = 0) -> Tuple[List[Fix], NmeaParser]:
    """Fixes as the live reader gets them: bytes as they come, quiet() after each burst
    while the cycle end is unknown (gnss_reader does this on a pause)."""
    parser = NmeaParser()
    fixes: List[Fix] = []
    for data in bursts:
        step = chunk or len(data)
        for i in range(0, len(data), step):
            fixes += parser.feed(data[i:i + step])
        if quiet and not parser.cycle_end_known:
            fixes += parser.quiet()
    return fixes + parser.finish(), parser


def mixed(fix: Fix, start: datetime = MIDNIGHT) -> List[str]:
    """Every field of the fix that is not the truth of the fix's own second."""
    candidates = [second(i, start) for i in range(-3, 400)]
    own = [s for s in candidates if s.utc.time() == fix.time_of_day]
    assert own, f"{fix.time} is not a second of the stream"
    s = own[0]
    wrong = []
    if fix.date is not None and fix.date != s.utc.date():
        wrong.append(f"date {fix.date}")
    if fix.lat is not None and (abs(fix.lat - s.lat) > 1e-6 or abs(fix.lon - s.lon) > 1e-6):
        wrong.append(f"position {fix.lat},{fix.lon}")
    for name, value, true in (("alt", fix.alt, s.alt), ("sats", fix.sats, s.sats),
                              ("hdop", fix.hdop, s.hdop), ("track", fix.track, s.track)):
        if value is not None and value != true:
            wrong.append(f"{name} {value}")
    if fix.speed is not None and abs(fix.speed - s.knots * KNOTS) > 1e-3:
        wrong.append(f"speed {fix.speed}")
    return wrong


@pytest.mark.parametrize("quiet", [True, False], ids=["quiet-after-bursts", "no-pauses"])
@pytest.mark.parametrize("name", list(PATTERNS))
def test_every_fix_is_one_seconds_data_across_midnight(name, quiet):
    fixes, parser = run((burst(i, PATTERNS[name]) for i in range(14)), quiet)
    bad = {f.time: mixed(f) for f in fixes if mixed(f)}
    assert not bad, f"fixes mixing seconds: {bad}"
    # Every second that had a position sentence gives a fix with that position.
    positioned = {f.time_of_day for f in fixes if f.lat is not None}
    for i in range(1, 13):
        assert second(i).utc.time() in positioned, f"second {i} lost its position"
    assert parser.counters.late == 0, "a pause inside a two-second burst taken as its end"


@pytest.mark.parametrize("quiet", [True, False], ids=["quiet-after-bursts", "no-pauses"])
def test_two_second_bursts_with_every_talker(quiet):
    talkers = ["GN", "GP", "GL", "GA", "GB"]
    pattern = [("GNS", 0), ("GSA", 0), ("RMC", 1), ("GLL", 0), ("ZDA", 1), ("GSA", 1),
               ("VTG", 1), ("GGA", 0)]
    fixes, _ = run((burst(i, pattern, talkers=talkers) for i in range(12)), quiet, chunk=37)
    assert fixes and not {f.time: mixed(f) for f in fixes if mixed(f)}


def test_a_position_sentence_without_a_time_joins_no_epoch():
    """Its second is unknown: its position must not be given the time of another."""
    s0, s1 = second(0), second(1)
    untimed = sentence("GGA", s1).replace(hms(s1.utc), "", 1)
    garbled = sentence("GLL", s1).replace(hms(s1.utc), "0000xx", 1)
    rmc_untimed = sentence("RMC", s1).replace(hms(s1.utc), "", 1)
    for extra in (untimed, garbled, rmc_untimed):
        data = "".join(nmea_sentence(b) for b in (sentence("GGA", s0), sentence("RMC", s0),
                                                  extra)).encode()
        for quiet in (True, False):
            fixes, _ = run([data], quiet)
            assert [f.time_of_day for f in fixes] == [s0.utc.time()]
            assert not mixed(fixes[0]), (extra, mixed(fixes[0]))


def test_a_zda_without_a_time_gives_no_date():
    s0, s1 = second(5), second(6)  # 23:59:59, then 00:00:00 of the next day
    zda = sentence("ZDA", s1).replace(hms(s1.utc), "", 1)
    data = "".join(nmea_sentence(b) for b in (sentence("RMC", second(4)), sentence("GGA", s0),
                                              zda)).encode()
    fixes, _ = run([data], quiet=True)
    assert fixes[-1].time_of_day == s0.utc.time() and fixes[-1].date == date(2026, 11, 23)


def test_a_leap_second_is_not_merged_into_second_59():
    """23:59:60 is a second of its own; a time type that stops at 59 must not fold it
    into 23:59:59 (the leap second has no fix: the parser cannot represent its time)."""
    s59 = second(5)
    leap = Second(**{**second(6).__dict__, "utc": s59.utc})
    body = sentence("RMC", leap).replace(hms(s59.utc), "235960.00", 1)
    data = "".join(nmea_sentence(b) for b in (sentence("GGA", s59), sentence("RMC", s59),
                                              body, "GPGSA,A,3,05,07,,,,,,,,,,,1.8,9.9,1.5",
                                              sentence("GGA", second(6)))).encode()
    fixes, _ = run([data], quiet=True)
    (fix59,) = [f for f in fixes if f.time_of_day == s59.utc.time()]
    assert not mixed(fix59), mixed(fix59)
    assert fix59.hdop == s59.hdop  # the leap second's GSA (HDOP 9.9) is not merged either


def test_the_carried_date_rolls_over_at_midnight():
    """A GGA-only receiver: the date came once (ZDA); the next day begins at 00:00:00."""
    data = nmea_sentence(sentence("ZDA", second(0))) + "".join(
        nmea_sentence(sentence("GGA", second(i))) for i in range(10))
    fixes, _ = run([data.encode()], quiet=False)
    assert [f.date for f in fixes] == [second(i).utc.date() for i in range(10)]
    assert fixes[6].time == "2026-11-24T00:00:00.000Z"


def test_a_date_of_the_next_second_is_not_applied_to_this_one():
    """GGA of 23:59:59 read after RMC of 00:00:00 (24th) of another burst: that GGA is
    of the 23rd, also when it is emitted first (both seconds read in one burst, in time
    order)."""
    fixes, _ = run([burst(4, [("RMC", 1)]), burst(5, [("GGA", 0), ("RMC", 1)])], quiet=True)
    assert [(f.time, f.lat is not None) for f in fixes] == [
        ("2026-11-23T23:59:59.000Z", True), ("2026-11-24T00:00:00.000Z", True)]
    fixes, parser = run([burst(5, [("RMC", 1), ("GGA", 0)])], quiet=True)
    assert [(f.time, f.lat is not None) for f in fixes] == [
        ("2026-11-23T23:59:59.000Z", True), ("2026-11-24T00:00:00.000Z", True)]
    assert parser.counters.stale == 0


BACKWARDS = ["RMC ZDA of T+1 first", "RMC T+1, GGA T, ZDA T+1, GLL T",
             "GGA T, RMC T+1, GLL T, ZDA T+1", "GGA of T+1, RMC of T"]


@pytest.mark.parametrize("quiet", [True, False], ids=["quiet-after-bursts", "no-pauses"])
@pytest.mark.parametrize("name", BACKWARDS)
def test_split_seconds_are_assembled_in_time_order(name, quiet):
    """Bursts that send T+1's RMC before (or among) T's GGA/GLL made the fixes of T come
    out after those of T+1 (times 1, 0, 2, 1, ...: GNSS_TIME going back in the records),
    each second split in two fixes: speed and date from the RMC, altitude from the GGA.
    gpsd 3.22 does the same. Here each second is one fix with all its own fields."""
    fixes, parser = run((burst(i, PATTERNS[name]) for i in range(14)), quiet)
    assert not {f.time: mixed(f) for f in fixes if mixed(f)}
    index = {second(i).utc.time(): i for i in range(-1, 16)}
    seconds = [index[f.time_of_day] for f in fixes]
    assert all(a < b for a, b in zip(seconds, seconds[1:])), seconds
    assert set(range(1, 14)) <= set(seconds)
    for fix in fixes:
        if index[fix.time_of_day] in range(1, 14):
            assert None not in (fix.lat, fix.speed, fix.alt, fix.sats, fix.date), fix
    assert parser.counters.fixes == len(fixes) and parser.counters.late == 0


def test_a_sentence_of_a_second_already_emitted_is_dropped_and_counted():
    """Never a second fix of a time already published, nor one older: stale."""
    control = PATTERNS["one second (control)"]
    data = [burst(i, control) for i in range(3)] + [burst(1, [("GGA", 0), ("GSA", 0)]),
                                                    burst(0, [("RMC", 0)]), burst(3, control)]
    for quiet in (True, False):
        fixes, parser = run(data, quiet)
        index = {second(i).utc.time(): i for i in range(5)}
        assert [index[f.time_of_day] for f in fixes] == [0, 1, 2, 3]
        assert not [f for f in fixes if mixed(f)]
        assert parser.counters.stale == 2


def test_a_receiver_clock_jumping_back_is_followed():
    """Only a fix a few seconds behind is a straggler of a split burst; a receiver whose
    time jumps back further (reset, corrected) is reported as it is, not silenced."""
    data = [burst(i, [("GGA", 0), ("RMC", 0)]) for i in (100, 101, 102, 40, 41)]
    fixes, parser = run(data, quiet=True)
    index = {second(i).utc.time(): i for i in range(200)}
    assert [index[f.time_of_day] for f in fixes] == [100, 101, 102, 40, 41]
    assert parser.counters.stale == 0


def test_a_fix_carries_when_its_first_sentence_arrived():
    """The record clock compares GNSS time with arrival time: a fix that can only be
    completed by the next burst must still carry the arrival of its own second."""
    parser = NmeaParser()
    pattern = PATTERNS["GGA GLL of T, RMC ZDA of T+1"]
    arrivals = {}
    out = []
    for i in range(6):
        arrivals[second(i + 1).utc.time()] = 100.0 + i
        out += parser.feed(burst(i, pattern), mono=100.0 + i)
        out += parser.quiet()
    out += parser.finish()
    assert len(out) >= 5
    for fix in out[1:]:
        assert fix.mono == arrivals[fix.time_of_day], fix.time


def test_quiet_does_not_cut_an_epoch_begun_inside_a_burst():
    """After a burst holding GGA of T and ZDA of T+1, the pause does not end T+1: its GGA
    comes with the next burst. Repeated quiet() calls in one pause change nothing."""
    parser = NmeaParser()
    pattern = PATTERNS["GGA of T, ZDA of T+1"]
    published: List[Fix] = []
    for i in range(8):
        published += parser.feed(burst(i, pattern))
        for _ in range(3):
            published += parser.quiet()
    assert all(f.mode != MODE_NONE for f in published), [f.time for f in published]
    assert parser.counters.late == 0
    index = {second(i).utc.time(): i for i in range(10)}
    seconds = [index[f.time_of_day] for f in published]
    assert seconds == sorted(set(seconds))  # each second once, in order


def test_one_second_bursts_are_still_emitted_on_the_pause():
    parser = NmeaParser()
    for i in range(4):
        fixes = parser.feed(burst(i, PATTERNS["one second (control)"]))
        assert fixes == [] or parser.cycle_end_known
        (fix,) = fixes or parser.quiet()
        assert fix.time_of_day == second(i).utc.time() and not mixed(fix)


def test_midnight_truth_is_what_the_streams_cross():
    assert second(5).utc.time() == time(23, 59, 59)
    assert second(6).utc.date() == date(2026, 11, 24)
