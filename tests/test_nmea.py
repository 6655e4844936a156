"""The NMEA parser: framing, checksums, epochs, invalid fixes, talkers; fuzzing."""
from __future__ import annotations

import random
from datetime import date, time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eccm.sources.gnss.nmea import LINE_CAP, MODE_2D, MODE_3D, MODE_NONE, NmeaParser, degrees
from eccm.sim.gnss import nmea_sentence

from conftest import SHARED, parse_all

GGA = "GPGGA,123519.00,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
RMC = "GPRMC,123519.00,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W"


def feed(text: str):
    return parse_all(text.encode("latin-1"))


def test_gga_and_rmc_make_one_fix_per_epoch():
    (fix,) = feed(nmea_sentence(GGA) + nmea_sentence(RMC))
    assert fix.time == "1994-03-23T12:35:19.000Z"
    assert fix.lat == pytest.approx(48.1173) and fix.lon == pytest.approx(11.516666667)
    assert fix.alt == 545.4 and fix.sats == 8 and fix.hdop == 0.9
    assert fix.speed == pytest.approx(22.4 * 0.514444) and fix.track == 84.4
    assert fix.mode == MODE_3D and fix.quality == "GPS"


def test_time_of_day_alone_without_a_date():
    (fix,) = feed(nmea_sentence(GGA))
    assert fix.time == "12:35:19.000Z" and fix.date is None


@pytest.mark.parametrize("sentence", [
    "GPRMC,123519,V,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W",
    "GPGGA,123519,4807.038,N,01131.000,E,0,00,,,M,,M,,",
    "GPGLL,4807.038,N,01131.000,E,123519,V,N",
    "GNGNS,123519,4807.038,N,01131.000,E,NN,00,,,,,",
    "GPRMC,123519,A,,,,,,,230394,,,A",
])
def test_invalid_fixes_are_no_fix_never_zero_zero(sentence):
    (fix,) = feed(nmea_sentence(sentence))
    assert fix.mode == MODE_NONE
    assert fix.lat is None and fix.lon is None


@pytest.mark.parametrize("talker", ["GP", "GL", "GA", "GB", "BD", "GQ", "GN"])
def test_every_constellation_talker(talker):
    (fix,) = feed(nmea_sentence(talker + GGA[2:]))
    assert fix.lat == pytest.approx(48.1173)


def test_gns_gsa_vtg_zda():
    text = (nmea_sentence("GNGNS,014035.00,4332.69262,S,17235.48549,E,RR,13,0.9,25.63,11.24,,")
            + nmea_sentence("GNGSA,A,2,05,07,,,,,,,,,,,1.8,1.0,1.5")
            + nmea_sentence("GPVTG,054.7,T,034.4,M,005.5,N,010.2,K,A")
            + nmea_sentence("GPZDA,014035.00,09,11,2026,00,00"))
    (fix,) = feed(text)
    assert fix.lat == pytest.approx(-43.544877) and fix.lon == pytest.approx(172.5914248)
    assert fix.quality == "RTK" and fix.mode == MODE_2D and fix.alt == 25.63
    assert fix.speed == pytest.approx(10.2 / 3.6) and fix.track == 54.7
    assert fix.date == date(2026, 11, 9) and fix.time_of_day == time(1, 40, 35)


def test_bad_checksum_dropped_and_counted():
    parser = NmeaParser()
    good = nmea_sentence(GGA)
    bad = good.replace("*", "*0").replace("*0", "*", 1)[:-4] + "00\r\n"
    assert parser.feed(bad.encode()) + parser.finish() == []
    assert parser.counters.bad_checksum == 1


def test_dollar_inside_a_torn_sentence_restarts():
    text = "$GPGGA,123519.00,4807.0" + nmea_sentence(GGA)
    parser = NmeaParser()
    (fix,) = parser.feed(text.encode()) + parser.finish()
    assert fix.lat == pytest.approx(48.1173)
    assert parser.counters.torn == 1


def test_binary_between_sentences_is_skipped():
    ubx = bytes([0xB5, 0x62, 0x01, 0x07, 0x5C, 0x00]) + bytes(range(256)) + b"$\x00\xff"
    data = nmea_sentence(GGA).encode() + ubx + nmea_sentence(RMC.replace("123519.00",
                                                                         "123520.00")).encode()
    parser = NmeaParser()
    fixes = parser.feed(data) + parser.finish()
    assert [f.time_of_day for f in fixes] == [time(12, 35, 19), time(12, 35, 20)]
    assert parser.counters.garbage_bytes > 0 and parser.counters.torn >= 1


def _stream(end: str, seconds=range(10, 20)) -> bytes:
    """GGA+RMC epochs, each sentence ended by `end` instead of CR LF."""
    return "".join(nmea_sentence(body.replace("123519", f"1235{s}")).replace("\r\n", end)
                   for s in seconds for body in (GGA, RMC)).encode()


def _counted(data: bytes, chunk: int):
    parser = NmeaParser()
    for i in range(0, len(data), chunk):
        parser.feed(data[i:i + chunk])
    parser.finish()
    return parser.counters


@pytest.mark.parametrize("end", ["\r\n", "\n", "\r", "\r\n\r\n", "\n\r"])
@pytest.mark.parametrize("chunk", [1, 2, 7, 1 << 20])
def test_line_ends_between_sentences_are_not_garbage(end, chunk):
    counters = _counted(b"\r\n" + _stream(end), chunk)  # opened after a line's $...*hh
    assert counters.sentences == 20 and counters.fixes == 10
    assert counters.garbage_bytes == 0 and counters.torn == 0


@pytest.mark.parametrize("chunk", [1, 3, 64, 1 << 20])
def test_real_garbage_is_counted_byte_for_byte(chunk):
    """Binary messages and noise count in full, CR/LF bytes inside them too."""
    ubx = bytes([0xB5, 0x62, 0x01, 0x07, 0x04, 0x00, 0x0D, 0x0A, 0x0D, 0x0A])
    noise = b"\x00\xff\r\nabc\r\n"
    data = (noise + _stream("\r\n", [10]) + ubx + _stream("\r\n", [11]) + ubx + ubx
            + _stream("\n", [12]) + noise)
    counters = _counted(data, chunk)
    assert counters.sentences == 6
    assert counters.garbage_bytes == 2 * len(noise) + 3 * len(ubx)


def test_a_fix_survives_a_bad_sentence_that_starts_the_next_epoch():
    torn = "$GPRMC,123520.00,A,4807.038,N,01131.000,E,0.\r\n"  # no checksum, cut short
    fixes = feed(nmea_sentence(GGA) + torn + nmea_sentence(GGA.replace("123519", "123521")))
    assert time(12, 35, 19) in [f.time_of_day for f in fixes]


def test_line_cap_bounds_memory():
    parser = NmeaParser()
    for _ in range(100):
        parser.feed(b"$GPGGA," + b"9" * 500)
        assert parser.buffered <= LINE_CAP
    assert parser.counters.torn >= 1
    assert parser.feed(b"\r\n" + nmea_sentence(GGA).encode()) == []
    assert parser.finish()[0].lat == pytest.approx(48.1173)


@pytest.mark.parametrize("value,hemi,axis,expected", [
    ("4807.038", "N", "NS", 48.1173), ("01131.000", "W", "EW", -11.516666667),
    ("", "N", "NS", None), ("4807.038", "", "NS", None), ("4899.000", "N", "NS", None),
    ("abc", "N", "NS", None), ("9100.000", "N", "NS", None), ("18100.000", "E", "EW", None),
    # a hemisphere letter of the other axis: a latitude of 179.98 or a longitude 'N'
    ("17959.000", "E", "NS", None), ("17000.000", "W", "NS", None),
    ("4807.038", "N", "EW", None), ("4807.038", "NS", "NS", None)])
def test_degrees(value, hemi, axis, expected):
    result = degrees(value, hemi, axis)
    assert result == (pytest.approx(expected) if expected is not None else None)


def test_fuzz_ten_megabytes_of_random_bytes():
    rng = random.Random(1)
    parser = NmeaParser()
    remaining = 10 * 1024 * 1024
    while remaining > 0:
        size = min(remaining, rng.choice([1, 7, 100, 4096, 65536]))
        parser.feed(rng.randbytes(size))
        assert parser.buffered <= LINE_CAP
        remaining -= size
    parser.finish()
    assert parser.counters.fixes == 0
    assert parser.counters.garbage_bytes + parser.counters.torn > 1_000_000


def _captures():
    folder = SHARED / "testdata" / "gpsd"
    return sorted(folder.glob("*.log")) if folder.is_dir() else []


CAPTURES = _captures()
SAMPLE = b"".join(p.read_bytes()[:4000] for p in CAPTURES[:8]) or \
    (nmea_sentence(GGA) + nmea_sentence(RMC)).encode()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(SAMPLE) - 1),
                          st.sampled_from(["flip", "insert", "delete", "cut"]),
                          st.binary(min_size=1, max_size=8)), max_size=30),
       st.integers(1, 512))
def test_fuzz_mutated_captures(mutations, chunk):
    data = bytearray(SAMPLE)
    for pos, kind, blob in mutations:
        pos %= max(1, len(data))
        if kind == "flip" and data:
            data[pos] ^= blob[0]
        elif kind == "insert":
            data[pos:pos] = blob
        elif kind == "delete":
            del data[pos:pos + len(blob)]
        else:
            data = data[:pos]
    parser = NmeaParser()
    for i in range(0, len(data), chunk):
        for fix in parser.feed(bytes(data[i:i + chunk])):
            assert fix.lat is None or -90 <= fix.lat <= 90
            assert fix.lon is None or -180 <= fix.lon <= 180
        assert parser.buffered <= LINE_CAP
    parser.finish()


# Emitting an epoch as soon as it is complete.

def epoch(second: int, *bodies: str) -> bytes:
    """Sentences of one epoch at 12:35:<second>; '{t}' in a body is its time of day."""
    return "".join(nmea_sentence(b.format(t=f"1235{second:02d}.00")) for b in bodies).encode()


CYCLE = ("GNGGA,{t},4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
         "GNGSA,A,3,05,07,,,,,,,,,,,1.8,1.0,1.5",
         "GNGSA,A,3,70,71,,,,,,,,,,,1.8,1.0,1.5",
         "GNRMC,{t},A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W",
         "GPGSV,1,1,02,05,40,083,46,07,30,100,40")


def test_fix_emitted_on_the_learnt_last_sentence_of_the_cycle():
    parser = NmeaParser()
    assert parser.feed(epoch(1, *CYCLE)) == []
    assert [f.time_of_day.second for f in parser.feed(epoch(2, *CYCLE))] == [1]
    assert not parser.cycle_end_known
    # The same last sentence (the RMC; GSV carries no fix data) ended two cycles: learnt,
    # so the third epoch comes out with its own last sentence, not a second later.
    assert [f.time_of_day.second for f in parser.feed(epoch(3, *CYCLE))] == [2, 3]
    assert parser.cycle_end_known
    # A repeated sentence is counted: the first of two GSAs does not end the cycle.
    assert parser.feed(epoch(4, *CYCLE[:2])) == []
    assert parser.feed(epoch(4, *CYCLE[2:3])) == []
    (fix,) = parser.feed(epoch(4, *CYCLE[3:]))
    assert fix.time_of_day.second == 4 and fix.speed == pytest.approx(22.4 * 0.514444)
    assert parser.counters.late == 0


def test_a_sentence_after_the_learnt_end_is_late_never_a_second_fix():
    parser = NmeaParser()
    for second in (1, 2, 3):
        parser.feed(epoch(second, *CYCLE))
    vtg = "GPVTG,054.7,T,034.4,M,005.5,N,010.2,K,A"
    (fix,) = parser.feed(epoch(4, *CYCLE, vtg, CYCLE[0]))  # a VTG, then the GGA again
    assert fix.time_of_day.second == 4
    assert parser.counters.late == 2
    assert not parser.cycle_end_known  # the receiver changed its cycle: learnt again
    emitted = parser.feed(epoch(5, *CYCLE, vtg)) + parser.feed(epoch(6, *CYCLE, vtg))
    assert [f.time_of_day.second for f in emitted] == [5]
    assert [f.time_of_day.second for f in parser.feed(epoch(7, *CYCLE, vtg))] == [6, 7]
    assert parser.cycle_end_known
    assert [f.time_of_day.second for f in parser.feed(epoch(8, *CYCLE, vtg))] == [8]


def test_quiet_line_completes_the_epoch_once():
    parser = NmeaParser()
    assert parser.feed(epoch(1, *CYCLE)) == []
    (fix,) = parser.quiet()
    assert fix.time_of_day.second == 1 and fix.lat == pytest.approx(48.1173)
    assert parser.quiet() == []
    assert [f.time_of_day.second for f in parser.feed(epoch(2, *CYCLE)) + parser.quiet()] \
        == [2]
    assert parser.counters.late == 0


def test_a_pause_inside_a_burst_stops_trusting_pauses():
    parser = NmeaParser()
    parser.feed(epoch(1, *CYCLE[:2]))
    (fix,) = parser.quiet()  # the receiver stalled mid-burst
    assert fix.time_of_day.second == 1
    assert parser.feed(epoch(1, *CYCLE[2:])) == []  # the rest: dropped, counted, no 2nd fix
    assert parser.counters.late == 2
    parser.feed(epoch(2, *CYCLE[:2]))
    assert parser.quiet() == []  # no longer trusted: the epoch waits for its end
    assert [f.time_of_day.second for f in parser.feed(epoch(2, *CYCLE[2:]))
            + parser.feed(epoch(3, *CYCLE))] == [2]


@pytest.mark.skipif(not CAPTURES, reason=f"receiver captures not found in {SHARED / 'testdata' / 'gpsd'}")
def test_captures_give_the_same_fixes_line_by_line_as_whole():
    """Early emission changes when a fix comes out, never which fixes or their values."""
    early = total = 0
    for capture in CAPTURES:
        data = capture.read_bytes()
        parser = NmeaParser()
        fixes = []
        for line in data.splitlines(keepends=True):
            for fix in parser.feed(line):
                early += fix.time_of_day == parser._emitted
                fixes.append(fix)
        fixes += parser.finish()
        total += len(fixes)
        assert fixes == parse_all(data), capture.name
    print(f"\n{early}/{total} fixes emitted on their own epoch's last sentence")
    assert early > total // 2


@pytest.mark.skipif(not CAPTURES,
                    reason=f"receiver captures not found in {SHARED / 'testdata' / 'gpsd'}")
def test_fixes_carry_no_float_noise():
    """44.06889783333333 or 0.014918876000000001 in gnss-parse, JSON or the socket: the
    parser rounds where it converts (degrees+minutes, knots, km/h)."""
    checked = 0
    for capture in CAPTURES:
        parser = NmeaParser()
        for fix in parser.feed(capture.read_bytes()) + parser.finish():
            for value in (fix.lat, fix.lon, fix.speed, fix.alt, fix.track, fix.hdop):
                if isinstance(value, float):
                    checked += 1
                    assert len(repr(value).split(".")[-1]) <= 9, (capture.name, value)
    assert checked > 1000
