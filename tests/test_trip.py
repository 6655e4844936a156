"""Looking at a drive: summary, GPX/GeoJSON/KML export, plot, and bad input."""
from __future__ import annotations

import json
import math
import re
import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from xml.etree import ElementTree as ET

import pytest

from eccm.sinks.rows import RowFormat, TIME_COLUMN, format_time
from eccm.sources.gnss.columns import COLUMNS as GNSS_COLUMNS
from eccm.core.state import Column
from eccm.tools.trip import format_distance, format_duration, haversine, load, summarize

from conftest import REPO, outbox_files, part_files, wait_for

SIDE_M, SPEED_KMH, STEP_S = 1000.0, 36.0, 0.5
START = datetime(2026, 5, 1, 8, 0, 0, tzinfo=timezone.utc)
ORIGIN = (45.0, 5.0)


def square_trip(path, gnss=True, separator=",", rows_per_fix=1):
    """A square of 1 km sides at a steady 36 km/h (10 m/s), a row every 0.5 s; the GNSS
    columns change every rows_per_fix rows (2: a 1 Hz receiver, as in a real car)."""
    cols = [TIME_COLUMN, Column("RPM", "rpm"), Column("SPEED", "km/h"),
            Column("COOLANT_TEMP", "degC"), Column("MAF", "g/s")]
    if gnss:
        cols += list(GNSS_COLUMNS)
    fmt = RowFormat(separator)
    lines = [fmt.header(cols)]
    metres_per_deg_lat = 111_132.0
    metres_per_deg_lon = 111_320.0 * math.cos(math.radians(ORIGIN[0]))
    total = 4 * SIDE_M / (SPEED_KMH / 3.6)
    steps = int(total / STEP_S)
    for i in range(steps + 1):
        t = i * STEP_S
        d = t * SPEED_KMH / 3.6
        side, along = divmod(d, SIDE_M)
        x, y = [(along, 0), (SIDE_M, along), (SIDE_M - along, SIDE_M), (0, SIDE_M - along),
                (0, 0)][int(side)]
        moment = START + timedelta(seconds=t)
        row = [moment, 2000.0, SPEED_KMH, 80 + i / steps * 10, 12.5]
        if gnss and i % rows_per_fix == 0:
            fix = [format_time(moment), ORIGIN[0] + y / metres_per_deg_lat,
                   ORIGIN[1] + x / metres_per_deg_lon, 200.0, SPEED_KMH / 3.6, 0, 3, 9, 0.8]
        if gnss:
            row += fix
        lines.append(fmt.line(row))
    path.write_text("".join(lines))
    return path


def test_summary_of_a_known_route(tmp_path):
    s = summarize(load(square_trip(tmp_path / "CAR_20260501T080000Z.csv")))
    assert s["duration_s"] == 400.0
    assert s["max_speed_kmh"] == SPEED_KMH
    assert abs(s["distance_gnss_km"] - 4.0) / 4.0 < 0.01
    assert abs(s["distance_speed_km"] - 4.0) / 4.0 < 0.02
    assert s["rpm_max"] == 2000 and s["coolant_max_c"] == 90
    assert s["fuel_source"].startswith("MAF")
    assert s["fuel_l"] == pytest.approx(12.5 * 400 / 14.7 / 745, rel=0.01)
    assert s["idle_s"] == 0


def run_eccm(*args, timeout=120):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECCM_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "eccm", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_exports_reparse(tmp_path):
    import gpxpy
    path = square_trip(tmp_path / "trip.tsv", separator="\t")
    trip = load(path)
    rows = len(trip.points())
    for fmt in ("gpx", "geojson", "kml"):
        result = run_eccm("export", path, "--format", fmt)
        assert result.returncode == 0, result.stderr
    gpx = gpxpy.parse((tmp_path / "trip.gpx").read_text())
    points = gpx.tracks[0].segments[0].points
    assert len(points) == rows
    assert points[0].time == START and points[-1].time == START + timedelta(seconds=400)
    assert points[5].elevation == 200.0
    collection = json.loads((tmp_path / "trip.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    for feature in collection["features"]:
        assert feature["type"] == "Feature" and isinstance(feature["properties"], dict)
        geometry = feature["geometry"]
        assert geometry["type"] in ("LineString", "Point")
        coords = geometry["coordinates"] if geometry["type"] == "LineString" else \
            [geometry["coordinates"]]
        assert all(-180 <= c[0] <= 180 and -90 <= c[1] <= 90 for c in coords)
    assert collection["features"][0]["geometry"]["type"] == "LineString"
    assert len(collection["features"]) == rows + 1
    kml = ET.fromstring((tmp_path / "trip.kml").read_text().encode())
    assert kml.tag.endswith("kml")


def test_plot_of_a_demo_recording(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECCM_")}
    env.update(PYTHONPATH=str(REPO), ECCM_RECORD_DIRECTORY_LOCATION=str(tmp_path / "rec"),
               ECCM_RECORD_INTERVAL="0.2")
    demo = subprocess.Popen([sys.executable, "-m", "eccm", "run", "--demo"], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: part_files(tmp_path / "rec") and
                 part_files(tmp_path / "rec")[0].read_text().count("\n") > 25, 60,
                 what="demo rows")
    finally:
        demo.send_signal(signal.SIGINT)
        demo.wait(10)
    (recording,) = outbox_files(tmp_path / "rec")
    result = run_eccm("plot", recording, "-o", tmp_path / "trip.png")
    assert result.returncode == 0, result.stderr
    png = (tmp_path / "trip.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_engine_only_file_still_summarised_and_plotted(tmp_path):
    path = square_trip(tmp_path / "engine.csv", gnss=False)
    result = run_eccm("summary", path, "--json")
    assert result.returncode == 0
    summary = json.loads(result.stdout)[0]
    assert summary["distance_gnss_km"] is None and summary["distance_speed_km"] > 3.9
    assert run_eccm("plot", path).returncode == 0 and (tmp_path / "engine.png").exists()
    result = run_eccm("export", path, "--format", "gpx")
    assert result.returncode == 2 and "no GNSS position" in result.stderr


@pytest.mark.parametrize("content,message", [
    (b"", "empty"),
    (b"hello world\nthis is not a record\n", "not an ECCM record"),
    (b"TIME (UTC);RPM (rpm)\n", "no readable rows"),
    (b"\x00\xff\xfe binary", "not an ECCM record"),
])
def test_bad_input_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    for command in (["summary", path], ["plot", path], ["export", path, "--format", "kml"]):
        result = run_eccm(*command)
        assert result.returncode == 2, (command, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr


def test_torn_last_line_is_left_out_and_said(tmp_path):
    path = square_trip(tmp_path / "torn.csv")
    path.write_bytes(path.read_bytes() + b"2026-05-01T08:06:40.500Z,2000,3")
    result = run_eccm("summary", path)
    assert result.returncode == 0
    assert "torn" in result.stdout and "Duration          6 min 40 s" in result.stdout


def test_zero_filled_tail_after_a_power_cut(tmp_path):
    path = square_trip(tmp_path / "cut.csv")
    path.write_bytes(path.read_bytes() + b"2026-05-01T08:06:4" + b"\x00" * 4096)
    result = run_eccm("summary", path)
    assert result.returncode == 0, result.stderr
    assert "4096 NUL bytes" in result.stdout
    assert "Duration          6 min 40 s" in result.stdout


def test_exports_have_one_point_per_gnss_fix(tmp_path):
    """2 rows/s and a 1 Hz receiver: each fix is in two rows, but once in every export;
    the first row of each fix is the one kept. Distances are those of all rows."""
    import gpxpy
    path = square_trip(tmp_path / "trip.csv", rows_per_fix=2)
    trip = load(path)
    rows = trip.points()
    fixes = sorted({trip.values["GNSS_TIME"][r] for r, _, _ in rows})
    assert len(rows) == 801 and len(fixes) == 401
    s = summarize(trip)
    along_rows = sum(haversine(a[1], a[2], b[1], b[2]) for a, b in zip(rows, rows[1:]))
    assert s["distance_gnss_km"] == round(along_rows / 1000, 3)
    assert abs(s["distance_gnss_km"] - 4.0) / 4.0 < 0.01
    for fmt in ("gpx", "geojson", "kml"):
        result = run_eccm("export", path, "--format", fmt)
        assert result.returncode == 0, result.stderr
    points = gpxpy.parse((tmp_path / "trip.gpx").read_text()).tracks[0].segments[0].points
    assert [format_time(p.time) for p in points] == fixes
    collection = json.loads((tmp_path / "trip.geojson").read_text())
    line, *marks = collection["features"]
    assert len(line["geometry"]["coordinates"]) == len(marks) == len(fixes)
    assert [m["properties"]["time"] for m in marks] == [f.replace(".000Z", "Z")
                                                        for f in fixes]
    kml = ET.fromstring((tmp_path / "trip.kml").read_text().encode())
    ns = {"k": "http://www.opengis.net/kml/2.2"}
    assert len(kml.findall(".//k:Placemark/k:TimeStamp", ns)) == len(fixes)
    assert len(kml.find(".//k:LineString/k:coordinates", ns).text.split()) == len(fixes)


def noisy_trip(path):
    """Cells as another tool (or float arithmetic) writes them: 15+ decimals."""
    lines = ["TIME (UTC),RPM (rpm),SPEED (km/h),MAF (g/s),GNSS_TIME (UTC),LATITUDE (deg),"
             "LONGITUDE (deg),ALTITUDE (m)\n"]
    for i in range(20):
        moment = format_time(START + timedelta(seconds=i))
        lines.append(f"{moment},{2000.1234567891 + i},{36.00000000000001 + i / 3},"
                     f"{12.345678901234567},{moment},{45.766308166666676 + i / 3e4},"
                     f"{4.8357166666666665 + i / 3e4},{201.30000000000001 + i / 7}\n")
    path.write_text("".join(lines))
    return path


def test_json_outputs_carry_no_float_noise(tmp_path):
    path = noisy_trip(tmp_path / "noisy.csv")
    summary = run_eccm("summary", path, "--json")
    assert summary.returncode == 0, summary.stderr
    export = run_eccm("export", path, "--format", "geojson")
    assert export.returncode == 0, export.stderr
    geojson = (tmp_path / "noisy.geojson").read_text()
    for text in (summary.stdout, geojson):
        noise = re.findall(r"-?\d+\.\d{8,}", text)
        assert noise == [], noise[:5]
    s = json.loads(summary.stdout)[0]
    assert s["rpm_max"] == 2019.123 and s["max_speed_kmh"] == 42.333
    line, first, *_ = json.loads(geojson)["features"]
    assert first["geometry"]["coordinates"] == [4.8357167, 45.7663082]
    assert line["geometry"]["coordinates"][0] == [4.8357167, 45.7663082, 201.3]
    assert first["properties"]["MAF"] == 12.346 and first["properties"]["RPM"] == 2000.123


def test_text_summary_reads_like_a_person_wrote_it(tmp_path):
    result = run_eccm("summary", square_trip(tmp_path / "CAR_20260501T080000Z.csv"))
    assert result.returncode == 0, result.stderr
    lines = dict(re.split(r"\s{2,}", ln.strip(), maxsplit=1)
                 for ln in result.stdout.splitlines()[1:])
    assert lines["Duration"] == "6 min 40 s"
    assert re.fullmatch(r"(3\.9\d|4\.0\d) km", lines["Distance (GNSS)"])
    assert lines["Max speed"] == "36 km/h" and lines["Average speed"] == "36 km/h"
    assert lines["Idle time"] == "0 s" and lines["RPM max"] == "2000 rpm"
    assert lines["Coolant max"] == "90 degC"
    assert re.fullmatch(r"0\.\d\d L  \(from MAF .*\)", lines["Fuel used"])


@pytest.mark.parametrize("seconds,shown", [
    (0.4, "0 s"), (45, "45 s"), (155.001, "2 min 35 s"), (400, "6 min 40 s"),
    (3600, "1 h 0 min 0 s"), (3725.4, "1 h 2 min 5 s"),
])
def test_durations_for_people(seconds, shown):
    assert format_duration(seconds) == shown


def test_distances_for_people():
    assert format_distance(0.8504) == "850 m" and format_distance(2.179) == "2.18 km"


def test_one_malformed_line_is_said_in_the_singular(tmp_path):
    path = square_trip(tmp_path / "one.csv")
    lines = path.read_text().splitlines(keepends=True)
    lines.insert(5, "2026-05-01T08:00:02.000Z,only,three\n")
    path.write_text("".join(lines))
    result = run_eccm("summary", path)
    assert result.returncode == 0, result.stderr
    assert "note: left out 1 malformed line\n" in result.stdout + "\n"
