"""Record format: names, time, cells, quoting per separator, torn-line repair."""
from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone

import pytest

from eccm.recordfmt import (RowFormat, complete_length, file_name, format_cell, format_time,
                            parse_file_name)
from eccm.state import Column


def test_file_name_is_car_and_utc_start():
    start = datetime(2026, 3, 1, 23, 59, 58, 900000, tzinfo=timezone(timedelta(hours=2)))
    name = file_name("AB-123", start, ".csv")
    assert name == "AB-123_20260301T215958Z.csv"
    assert parse_file_name(name) == ("AB-123", start.replace(microsecond=0))
    assert file_name("AB-123", start, ".tsv", 2) == "AB-123_20260301T215958Z-2.tsv"
    assert parse_file_name("notes.txt") is None


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
