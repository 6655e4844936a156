"""The NMEA parser: framing, checksums, epochs, invalid fixes, talkers; fuzzing."""
from __future__ import annotations

import random
from datetime import date, time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eccm.nmea import LINE_CAP, MODE_2D, MODE_3D, MODE_NONE, NmeaParser, degrees, parse_all
from eccm.simgnss import nmea_sentence

from conftest import SHARED

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


@pytest.mark.parametrize("value,hemi,expected", [
    ("4807.038", "N", 48.1173), ("01131.000", "W", -11.516666667), ("", "N", None),
    ("4807.038", "", None), ("4899.000", "N", None), ("abc", "N", None),
    ("9100.000", "N", None), ("18100.000", "E", None)])
def test_degrees(value, hemi, expected):
    result = degrees(value, hemi)
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
