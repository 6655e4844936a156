"""Record format: names, time, cells, quoting per separator, torn-line repair."""
from __future__ import annotations

import csv
import io
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from eccm.sinks.rows import (RowFormat, complete_length, file_name, file_sequence, format_cell,
                             format_time, parse_file_name, parse_time, row_cells)
from eccm.core.state import Column, SharedState


def test_file_name_is_car_utc_start_counter_and_tag():
    start = datetime(2026, 3, 1, 23, 59, 58, 900000, tzinfo=timezone(timedelta(hours=2)))
    name = file_name("AB-123", start, ".csv", 42, "a1b2c3")
    assert name == "AB-123_20260301T215958Z_000042-a1b2c3.csv"
    assert parse_file_name(name) == ("AB-123", start.replace(microsecond=0))
    assert file_sequence(name) == 42
    assert parse_file_name("notes.txt") is None


@pytest.mark.parametrize("name", ["AB_1_20260301T215958Z.csv", "AB_1_20260301T215958Z-2.tsv",
                                  "AB_1_20260301T215958Z-r1.csv"])
def test_names_of_older_versions_still_parse(name):
    assert parse_file_name(name)[0] == "AB_1"
    assert file_sequence(name) is None


def test_time_parses_back():
    moment = datetime(2026, 11, 24, 22, 18, 50, 360000, tzinfo=timezone.utc)
    assert parse_time(format_time(moment)) == moment
    assert parse_time("yesterday") is None


def test_time_is_iso_utc_with_milliseconds():
    moment = datetime(2026, 11, 24, 22, 18, 50, 360999, tzinfo=timezone.utc)
    assert format_time(moment) == "2026-11-24T22:18:50.360Z"


@pytest.mark.parametrize("value,text", [
    (None, ""), (0, "0"), (True, "1"), (1303.75, "1303.75"), (55.0, "55"),
    (16.8627451, "16.862745"), (-0.0000001, "0"), (float("nan"), ""), (float("inf"), ""),
    ("Gasoline", "Gasoline"), ("two\nlines", "two lines"), (123456789.0, "123456789")])
def test_cells_are_plain(value, text):
    assert format_cell(value) == text


@pytest.mark.parametrize("sep", [",", "\t", "|", ";"])
def test_rows_round_trip_through_csv_reader(sep):
    fmt = RowFormat(sep)
    cells = ["plain", f"has{sep}sep", 'has "quotes"', "", 42, 1.5, " padded "]
    line = fmt.line(cells)
    assert line.endswith("\n") and line.count("\n") == 1
    parsed = next(csv.reader(io.StringIO(line), delimiter=sep))
    assert parsed == [format_cell(c) for c in cells]


def test_header_carries_units():
    fmt = RowFormat(",")
    assert fmt.header([Column("TIME", "UTC"), Column("RPM", "rpm"), Column("MIL")]) == \
        "TIME (UTC),RPM (rpm),MIL\n"


@pytest.mark.parametrize("data,keep", [
    (b"", 0), (b"head", 0), (b"head\n", 5), (b"head\nrow1\nro", 10), (b"head\nrow1\n", 10)])
def test_complete_length_cuts_the_torn_last_line(data, keep):
    assert complete_length(data) == keep


def test_a_row_holds_fresh_values_only():
    state = SharedState()
    state.update_values({"RPM": (800, "rpm")}, mono=100.0, origin="obd")
    state.update_values({"SPEED": (42, "km/h")}, mono=103.0, origin="obd")
    snap = replace(state.snapshot(), mono=104.0)
    moment = datetime(2026, 1, 1, tzinfo=timezone.utc)
    cols = (Column("RPM", "rpm"), Column("SPEED", "km/h"), Column("MISSING"))
    assert row_cells(snap, cols, moment, max_age=2.0) == [moment, None, 42, None]
    assert row_cells(snap, cols, moment, max_age=5.0) == [moment, 800, 42, None]
