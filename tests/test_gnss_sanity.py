"""GNSS sanity: every field range-checked; an impossible value is an empty cell, counted.

A tester recorded speed 1e9 kn (514444000 m/s), -25 m/s, altitude 1e9 m, track 999,
-5 satellites, HDOP -1, years 1999/2199, and speed/track/satellites with no position.
"""
from __future__ import annotations

from dataclasses import asdict
from datetime import date

import pytest

from eccm.core.clock import RELEASED, TRUST_YEARS
from eccm.sources.gnss.reader import live_dates
from eccm.sources.gnss.nmea import MODE_NONE, NmeaParser
from eccm.sim.gnss import nmea_sentence

from conftest import parse_all

GGA = "GPGGA,123519.00,4807.038,N,01131.000,E,1,{sats},{hdop},{alt},M,46.9,M,,"
RMC = "GPRMC,123519.00,{status},{lat},N,{lon},E,{knots},{track},{day},003.1,W"
GOOD = dict(sats="08", hdop="0.9", alt="545.4", status="A", lat="4807.038", lon="01131.000",
            knots="022.4", track="084.4", day="230394")


def parse(**fields):
    values = {**GOOD, **fields}
    parser = NmeaParser()
    data = (nmea_sentence(GGA.format(**values)) + nmea_sentence(RMC.format(**values))).encode()
    (fix,) = parser.feed(data) + parser.finish()
    return fix, parser.counters


def test_good_values_pass_untouched():
    fix, counters = parse()
    assert fix.speed == pytest.approx(22.4 * 0.514444) and fix.track == 84.4
    assert fix.alt == 545.4 and fix.sats == 8 and fix.hdop == 0.9
    assert fix.date == date(1994, 3, 23) and counters.out_of_range == 0


@pytest.mark.parametrize("field,value,attr", [
    ("knots", "1000000000.0", "speed"),    # 514444000 m/s
    ("knots", "-48.6", "speed"),           # -25 m/s
    ("knots", "1001", "speed"),            # above the 1000 kn limit receivers obey
    ("knots", "nan", "speed"),
    ("track", "999.0", "track"),
    ("track", "-1.0", "track"),
    ("alt", "1000000000.0", "alt"),
    ("alt", "-1500.0", "alt"),
    ("alt", "inf", "alt"),
    ("sats", "-5", "sats"),
    ("sats", "250", "sats"),
    ("sats", "7.5", "sats"),
    ("hdop", "-1.0", "hdop"),
    ("hdop", "150.0", "hdop"),
])
def test_an_impossible_value_is_empty_and_counted(field, value, attr):
    fix, counters = parse(**{field: value})
    assert getattr(fix, attr) is None
    assert counters.out_of_range == 1
    assert fix.lat is not None  # the rest of the fix stands
    assert "out_of_range" in asdict(counters)  # STATUS shows it (gnss_input=...)


@pytest.mark.parametrize("hdop", ["99.99", "99.9", "99.0", "0.0"])
def test_hdop_the_receiver_marks_unknown_is_empty_not_an_error(hdop):
    fix, counters = parse(hdop=hdop)
    assert fix.hdop is None and counters.out_of_range == 0


@pytest.mark.parametrize("lat,lon", [("9130.000", "01131.000"), ("4807.038", "18100.000"),
                                     ("4872.000", "01131.000"), ("-4807.038", "01131.000")])
def test_an_impossible_position_is_empty_and_counted(lat, lon):
    parser = NmeaParser()
    data = nmea_sentence(RMC.format(**{**GOOD, "lat": lat, "lon": lon})).encode()
    (fix,) = parser.feed(data) + parser.finish()
    assert fix.lat is None and fix.lon is None and fix.mode == MODE_NONE
    assert parser.counters.out_of_range == 1


@pytest.mark.parametrize("lat,lon", [
    ("17959.000,E", "01131.000,E"),   # a latitude field with a longitude's letter: 179.98
    ("17000.000,W", "01131.000,E"),   # -170
    ("4807.038,N", "01131.000,N"),    # a longitude with a latitude's letter
    ("4807.038,E", "01131.000,N"),    # both swapped
])
def test_a_hemisphere_letter_of_the_other_axis_is_no_position(lat, lon):
    body = f"GPRMC,123519.00,A,{lat},{lon},022.4,084.4,230394,003.1,W"
    gga = f"GPGGA,123519.00,{lat},{lon},1,08,0.9,545.4,M,46.9,M,,"
    for text in (body, gga):
        parser = NmeaParser()
        (fix,) = parser.feed(nmea_sentence(text).encode()) + parser.finish()
        assert fix.lat is None and fix.lon is None and fix.mode == MODE_NONE, text
        assert parser.counters.out_of_range >= 1, text


def test_limits_themselves_are_accepted():
    fix, counters = parse(knots="1000", track="360.0", alt="-430.5", sats="00", hdop="0.5")
    assert fix.speed == pytest.approx(514.444) and fix.track == 360.0
    assert fix.alt == -430.5 and fix.sats == 0 and fix.hdop == 0.5
    assert counters.out_of_range == 0


@pytest.mark.parametrize("zda_date,expected", [
    ("23,03,2027", date(2027, 3, 23)),
    ("23,03,1979", None),   # before the GPS epoch (1980-01-06): no GNSS says so
    ("05,01,1980", None),
    ("23,03,2199", None),   # beyond any GNSS week count or RMC year
    ("31,02,2027", None),   # no such day
    ("23,13,2027", None),
])
def test_impossible_dates_are_not_taken(zda_date, expected):
    parser = NmeaParser()
    data = nmea_sentence(f"GPZDA,123519.00,{zda_date},00,00").encode() + \
        nmea_sentence(GGA.format(**GOOD)).encode()
    (fix,) = parser.feed(data) + parser.finish()
    assert fix.date == expected
    assert parser.counters.out_of_range == (0 if expected else 1)


def test_two_digit_years_stay_in_the_gnss_era():
    """RMC's yy: 80-99 -> 19yy, 00-79 -> 20yy. With the default (offline) window a '70'
    is 2070 and a '99' 1999: possible GNSS dates for an old capture (`eccm gnss-parse`)."""
    assert parse(day="230370")[0].date == date(2070, 3, 23)
    assert parse(day="230399")[0].date == date(1999, 3, 23)


@pytest.mark.parametrize("day", ["010170", "010199", "311026", "011146"])
def test_the_live_window_refuses_dates_that_cannot_be_now(day):
    """A running ECCM (GnssReader) parses with the window RELEASED .. RELEASED +
    TRUST_YEARS: 2070, 1999, the day before the release and the day the trust ends are
    not taken (the fix has no date, so its time is the time of day alone) and counted."""
    values = {**GOOD, "day": day}
    parser = NmeaParser(dates=live_dates())
    data = (nmea_sentence(GGA.format(**values)) + nmea_sentence(RMC.format(**values))).encode()
    (fix,) = parser.feed(data) + parser.finish()
    assert fix.date is None and fix.time == "12:35:19.000Z" and fix.lat is not None
    assert parser.counters.out_of_range == 1


def test_the_live_window_takes_its_own_limits():
    first, last = live_dates()
    assert first == RELEASED.date() and last < date(RELEASED.year + TRUST_YEARS, 11, 1)
    for day in (first, last):
        values = {**GOOD, "day": f"{day:%d%m%y}"}
        parser = NmeaParser(dates=(first, last))
        data = nmea_sentence(RMC.format(**values)).encode()
        (fix,) = parser.feed(data) + parser.finish()
        assert fix.date == day and parser.counters.out_of_range == 0


@pytest.mark.parametrize("body", [
    "GPRMC,123519.00,V,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W",
    "GPGGA,123519.00,4807.038,N,01131.000,E,0,08,0.9,545.4,M,46.9,M,,",
])
def test_no_speed_track_satellites_without_a_position(body):
    vtg = "GPVTG,054.7,T,034.4,M,005.5,N,010.2,K,N"
    gsa = "GPGSA,A,1,,,,,,,,,,,,,,2.5,"
    (fix,) = parse_all((nmea_sentence(body) + nmea_sentence(vtg) + nmea_sentence(gsa)
                        + nmea_sentence(body)).encode())
    assert fix.mode == MODE_NONE
    assert (fix.lat, fix.lon, fix.alt, fix.speed, fix.track, fix.sats, fix.hdop) == \
        (None,) * 7


def test_gsa_and_vtg_values_are_checked_too():
    text = (nmea_sentence(GGA.format(**{**GOOD, "hdop": ""}))
            + nmea_sentence("GPGSA,A,3,05,07,,,,,,,,,,,1.8,-3.0,1.5")
            + nmea_sentence("GPVTG,999.0,T,034.4,M,005.5,N,99999.0,K,A"))
    parser = NmeaParser()
    (fix,) = parser.feed(text.encode()) + parser.finish()
    assert fix.hdop is None and fix.track is None and fix.speed is None
    assert parser.counters.out_of_range == 3
