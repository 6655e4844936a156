"""Recorder: rows from snapshots, stale values empty, rotation, outbox moves, recovery."""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from eccm.sinks.records import Recorder, manifest_orphans, recover_parts
from eccm.sources.gnss.columns import COLUMNS as GNSS_COLUMNS
from eccm.core.state import Column, EngineRun, SharedState

from conftest import outbox_files, outbox_manifests, part_files, read_records

COLS = (Column("RPM", "rpm"), Column("SPEED", "km/h"), Column("FUEL_TYPE"))


class Clock:
    def __init__(self):
        self.now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)

    def __call__(self):
        self.now += timedelta(seconds=1)
        return self.now


def recover(folder, outbox):
    """What Recorder.prepare does at start-up: repair and queue the .part files left
    behind, give a manifest to every record in the outbox without one."""
    queued, _ = manifest_orphans(folder, outbox, [","], recover_parts(folder, outbox))
    return queued


def make(tmp_path, gnss=False, **kw):
    """A recorder as the daemon wires it: the OBD source declared first, then (gnss=True)
    the GNSS receiver's columns."""
    state = SharedState()
    state.declare("obd", ())
    if gnss:
        state.declare("gnss", GNSS_COLUMNS)
    args = dict(car="CAR1", folder=str(tmp_path / "rec"), extension=".csv", separator=",",
                interval=0.5, fsync_interval=1.0, rotate_seconds=3600,
                rotate_bytes=1 << 20, max_age=5.0, clock=Clock())
    args.update(kw)
    rec = Recorder(threading.Event(), state, **args)
    rec.prepare()
    return state, rec


def test_rows_follow_the_engine_run_and_close_into_the_outbox(tmp_path, caplog):
    caplog.set_level("INFO", logger="eccm.sinks.records")
    state, rec = make(tmp_path)
    rec.tick()  # no engine run: no file
    assert part_files(rec.folder) == []
    state.start_engine_run(EngineRun(1, COLS), source="obd")
    state.update_values({"RPM": (812.5, "rpm"), "FUEL_TYPE": ("Petrol, E10", "")}, origin="obd")
    rec.tick()
    state.update_values({"SPEED": (42.0, "km/h")}, origin="obd")
    rec.tick()
    (part,) = part_files(rec.folder)
    assert re.fullmatch(r"CAR1_20260102T030406Z_000001-[0-9a-f]{6}\.csv\.part", part.name)
    state.end_engine_run()
    rec.tick()
    assert part_files(rec.folder) == []
    (done,) = outbox_files(rec.folder)
    rows = read_records(done)
    assert rows[0] == ["TIME (UTC)", "RPM (rpm)", "SPEED (km/h)", "FUEL_TYPE"]
    assert rows[1] == ["2026-01-02T03:04:06.000Z", "812.5", "", "Petrol, E10"]
    assert rows[2] == ["2026-01-02T03:04:07.000Z", "812.5", "42", "Petrol, E10"]
    assert f"closed {done.name} (engine run ended, " in caplog.text


def test_stale_values_are_empty_cells(tmp_path):
    state, rec = make(tmp_path, max_age=0.2)
    state.start_engine_run(EngineRun(1, COLS), source="obd")
    state.update_values({"RPM": (900, "rpm")}, mono=time.monotonic() - 1.0, origin="obd")
    state.update_values({"SPEED": (10, "km/h")}, origin="obd")
    rec.tick()
    rec.close_file("test")
    rows = read_records(outbox_files(rec.folder)[0])
    assert rows[1][1:] == ["", "10", ""]


def test_new_session_and_size_limit_rotate(tmp_path):
    state, rec = make(tmp_path, rotate_bytes=200)
    state.start_engine_run(EngineRun(1, COLS), source="obd")
    state.update_values({"RPM": (1000, "rpm")}, origin="obd")
    for _ in range(3):
        rec.tick()
    state.start_engine_run(EngineRun(2, COLS[:1]), source="obd")
    for _ in range(12):
        rec.tick()
    rec.close_file("test")
    files = outbox_files(rec.folder)
    assert len(files) >= 3
    headers = [read_records(f)[0] for f in files]
    assert headers[0] == ["TIME (UTC)", "RPM (rpm)", "SPEED (km/h)", "FUEL_TYPE"]
    assert headers[-1] == ["TIME (UTC)", "RPM (rpm)"]
    assert sum(len(read_records(f)) - 1 for f in files) == 15
    assert all(f.stat().st_size < 200 + 60 for f in files)


@pytest.mark.parametrize("ext,sep", [(".csv", ","), (".tsv", "\t"), (".txt", "|")])
def test_separator_per_extension_in_files(tmp_path, ext, sep):
    from eccm.config import default_separator
    state, rec = make(tmp_path, extension=ext, separator=default_separator(ext))
    state.start_engine_run(EngineRun(1, COLS), source="obd")
    state.update_values({"RPM": (1000, "rpm"), "FUEL_TYPE": ("a,b|c\td", "")}, origin="obd")
    rec.tick()
    rec.close_file("test")
    (done,) = outbox_files(rec.folder)
    assert done.suffix == ext
    text = done.read_text()
    assert text.splitlines()[0] == sep.join(["TIME (UTC)", "RPM (rpm)", "SPEED (km/h)",
                                             "FUEL_TYPE"])
    assert read_records(done, sep)[1][3] == "a,b|c\td"


def test_gnss_columns_reserved_when_enabled(tmp_path):
    state, rec = make(tmp_path, gnss=True)
    state.start_engine_run(EngineRun(1, COLS), source="obd")
    rec.tick()
    rec.close_file("test")
    rows = read_records(outbox_files(rec.folder)[0])
    assert rows[0][-9:] == ["GNSS_TIME (UTC)", "LATITUDE (deg)", "LONGITUDE (deg)",
                            "ALTITUDE (m)", "GNSS_SPEED (m/s)", "TRACK (deg)", "FIX_MODE",
                            "SATELLITES (count)", "HDOP"]
    assert rows[1][-9:] == [""] * 9


HEADER = b"TIME (UTC),RPM (rpm)\n"


def test_recover_cuts_torn_line_and_queues(tmp_path):
    folder = tmp_path / "rec"
    outbox = folder / "outbox"
    outbox.mkdir(parents=True)
    (folder / "CAR_20260101T000000Z.csv.part").write_bytes(
        HEADER + b"2026-01-01T00:00:01.000Z,800\n2026-01-01T00:00:02.000Z,8")
    (folder / "CAR_20260101T010000Z.csv.part").write_bytes(HEADER)
    (folder / "CAR_20260101T020000Z.csv.part").write_bytes(b"TIME (UTC),R")
    (outbox / "CAR_20260101T030000Z.csv").write_bytes(HEADER + b"old,1\n")
    (outbox / "CAR_20260101T030000Z.csv.manifest.json").write_bytes(b"{}")
    (folder / "CAR_20260101T030000Z.csv.part").write_bytes(HEADER + b"new,2\n")
    queued = recover(folder, outbox)
    assert [p.name for p in queued] == ["CAR_20260101T000000Z.csv",
                                        "CAR_20260101T030000Z-r1.csv"]
    assert (outbox / "CAR_20260101T000000Z.csv").read_bytes() == \
        HEADER + b"2026-01-01T00:00:01.000Z,800\n"
    assert (outbox / "CAR_20260101T030000Z.csv").read_bytes() == HEADER + b"old,1\n"
    assert list(folder.glob("*.part")) == []
    manifest = json.loads((outbox / "CAR_20260101T000000Z.csv.manifest.json").read_text())
    assert manifest["car"] == "CAR" and manifest["rows"] == 1 and manifest["recovered"]
    assert manifest["start"] == manifest["end"] == "2026-01-01T00:00:01.000Z"
    assert manifest["sha256"] == hashlib.sha256(
        (outbox / "CAR_20260101T000000Z.csv").read_bytes()).hexdigest()
    assert manifest["clock"] == ["unknown"]


def test_prepare_recovers_leftovers(tmp_path):
    folder = tmp_path / "rec"
    folder.mkdir()
    (folder / "CAR1_20260101T000000Z.csv.part").write_bytes(b"H\nrow\ntor")
    state, rec = make(tmp_path)
    assert [p.name for p in outbox_files(rec.folder)] == ["CAR1_20260101T000000Z.csv"]
    assert [p.name for p in outbox_manifests(rec.folder)] == [
        "CAR1_20260101T000000Z.csv.manifest.json"]
    assert state.snapshot().counters["files_recovered"] == 1


def test_recovery_manifests_records_of_older_versions_but_nothing_else(tmp_path):
    """An upgrade: finished files of an ECCM without manifests are still records; an export
    or a plot that a user wrote into the outbox is not, and stays unmanifested."""
    outbox = tmp_path / "rec" / "outbox"
    outbox.mkdir(parents=True)
    (outbox / "CAR1_20260101T000000Z.csv").write_bytes(
        HEADER + b"2026-01-01T00:00:01.000Z,800\n")
    (outbox / "CAR1_20260101T000000Z.gpx").write_bytes(b"<?xml version='1.0'?><gpx/>\n")
    (outbox / "CAR1_20260101T000000Z.png").write_bytes(b"\x89PNG\r\n")
    (outbox / "notes.csv").write_bytes(HEADER)
    (outbox / "gone.csv.manifest.json").write_bytes(b"{}")  # its record was uploaded
    state, rec = make(tmp_path)
    assert sorted(p.name for p in outbox_manifests(rec.folder)) == [
        "CAR1_20260101T000000Z.csv.manifest.json"]


def test_closed_file_has_a_true_manifest(tmp_path):
    state, rec = make(tmp_path, gnss=True)
    state.start_engine_run(EngineRun(1, COLS, protocol="ISO 15765-4 (CAN 11/500)",
                                       vin="1HGCM82633A004352"), source="obd")
    state.update_values({"RPM": (812.5, "rpm")}, origin="obd")
    rec.tick()
    rec.tick()
    rec.close_file("test")
    (done,) = outbox_files(rec.folder)
    manifest = json.loads(done.with_name(done.name + ".manifest.json").read_text())
    data = done.read_bytes()
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["size"] == len(data) and manifest["rows"] == 2
    assert manifest["car"] == "CAR1" and manifest["vin"] == "1HGCM82633A004352"
    assert manifest["file"] == done.name and manifest["sequence"] == 1
    rows = read_records(done)
    assert [c["header"] for c in manifest["columns"]] == rows[0]
    assert manifest["columns"][1] == {"name": "RPM", "unit": "rpm", "header": "RPM (rpm)",
                                      "source": "obd"}
    assert manifest["columns"][-1]["source"] == "gnss"
    assert (manifest["start"], manifest["end"]) == (rows[1][0], rows[2][0])
    assert manifest["clock"] == ["system"] and not manifest["recovered"]


FACTS = {"ecus": {"7E8": {"role": "engine", "calibration_ids": ["JMB*36761500"],
                          "cvns": ["1791BC82"]},
                  "7E9": {"role": "", "name": "TCM-TransmissionCtl",
                          "columns_prefix": "TCM."}},
         "dtcs": {"stored": ["P0133"], "pending": [], "permanent": None,
                  "permanent_unread": "the car did not answer"},
         "freeze_frame": {"dtc": "P0133", "values": {"RPM": 1726.0}}, "profiles": []}


def test_what_the_car_said_at_the_start_is_in_the_manifest(tmp_path):
    state, rec = make(tmp_path)
    state.start_engine_run(EngineRun(1, COLS, facts=FACTS), source="obd")
    state.update_values({"RPM": (812.5, "rpm")}, origin="obd")
    rec.tick()
    rec.close_file("test")
    (done,) = outbox_files(rec.folder)
    manifest = json.loads(done.with_name(done.name + ".manifest.json").read_text())
    assert manifest["obd"] == FACTS


def test_what_the_car_said_survives_a_power_cut(tmp_path):
    state, rec = make(tmp_path)
    state.start_engine_run(EngineRun(1, COLS, facts=FACTS), source="obd")
    state.update_values({"RPM": (812.5, "rpm")}, origin="obd")
    rec.tick()
    # The Pi loses power: the .part file and its descriptor stay; the next start recovers.
    state2, rec2 = make(tmp_path)
    (done,) = outbox_files(rec2.folder)
    manifest = json.loads(done.with_name(done.name + ".manifest.json").read_text())
    assert manifest["recovered"] and manifest["obd"] == FACTS


def test_two_files_with_the_same_clock_name_differ(tmp_path):
    """A Pi without a clock may boot at the same saved time twice: the names still differ,
    also when the record folder's counter was lost."""
    names = []
    for boot in range(3):
        clock = lambda: datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)  # noqa: E731
        state, rec = make(tmp_path, clock=clock)
        state.start_engine_run(EngineRun(1, COLS), source="obd")
        state.update_values({"RPM": (800 + boot, "rpm")}, origin="obd")
        rec.tick()
        rec.close_file("test")
        names.append(outbox_files(rec.folder)[-1].name)
        for path in outbox_files(rec.folder) + outbox_manifests(rec.folder):
            path.unlink()  # uploaded and deleted
        if boot == 1:
            (rec.folder / ".sequence").unlink()
    assert len(set(names)) == 3
    assert all(n.startswith("CAR1_20260102T030405Z_") for n in names)


def test_write_error_is_counted_not_raised(tmp_path):
    import os
    state, rec = make(tmp_path, interval=0)  # retry at the next tick
    state.start_engine_run(EngineRun(1, COLS), source="obd")
    state.update_values({"RPM": (1000, "rpm")}, origin="obd")
    rec.tick()
    broken = rec._file.path
    os.close(rec._file._fd)  # the storage fails under the recorder
    rec.tick()
    counters = state.snapshot().counters
    assert counters["record_errors"] == 2  # the row, then closing the file
    assert counters["rows_recorded"] == 1
    assert "Bad file descriptor" in state.snapshot().health.record.problem
    rec.tick()  # recording goes on in a fresh file
    assert len(part_files(rec.folder)) == 2
    assert state.snapshot().health.record.problem is None
    rec.close_file("test")
    assert [p.name for p in recover(rec.folder, rec.outbox)] == [broken.name[:-5]]
    assert sum(len(read_records(f)) - 1 for f in outbox_files(rec.folder)) == 2


def test_a_file_cut_by_a_power_cut_keeps_vin_protocol_and_clock(tmp_path):
    """Cutting the power at ignition-off is how a car's Pi usually stops: the recovered
    file's manifest still says what only the running recorder knew."""
    state, rec = make(tmp_path, clock_source=lambda: "gnss")
    state.start_engine_run(EngineRun(1, COLS, protocol="SAE J1850 VPW",
                                       vin="1HGCM82633A004352"), source="obd")
    state.update_values({"RPM": (812.5, "rpm")}, origin="obd")
    rec.tick()
    rec.tick()
    # power cut: no close; the next start recovers
    state2, rec2 = make(tmp_path)
    (done,) = outbox_files(rec2.folder)
    manifest = json.loads(done.with_name(done.name + ".manifest.json").read_text())
    assert manifest["recovered"] and manifest["rows"] == 2
    assert manifest["vin"] == "1HGCM82633A004352"
    assert manifest["obd_protocol"] == "SAE J1850 VPW" and manifest["clock"] == ["gnss"]
    assert list(rec2.folder.glob("*.json")) == []  # the descriptor went with the manifest


def test_a_manifest_that_failed_at_start_is_written_without_a_restart(tmp_path, monkeypatch):
    from eccm.sinks import records as recorder_module
    outbox = tmp_path / "rec" / "outbox"
    outbox.mkdir(parents=True)
    old = outbox / "CAR1_20260101T000000Z.csv"
    old.write_bytes(HEADER + b"2026-01-01T00:00:01.000Z,800\n")
    real = recorder_module.write_atomic

    def full(path, data):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(recorder_module, "write_atomic", full)
    state, rec = make(tmp_path, retry_cap=0)
    assert outbox_manifests(rec.folder) == []
    monkeypatch.setattr(recorder_module, "write_atomic", real)
    rec.tick()  # space again: no engine run needed
    assert [p.name for p in outbox_manifests(rec.folder)] == [old.name + ".manifest.json"]


def test_a_new_source_adds_columns_without_touching_the_recorder(tmp_path):
    """A CAN sniffer, another ECU, an MQTT bridge: a source declares its columns and
    publishes readings; the record and its manifest follow, in the sources' order."""
    state, rec = make(tmp_path, gnss=True)
    state.declare("can", (Column("STEERING_ANGLE", "deg"), Column("DOOR_OPEN")))
    state.start_engine_run(EngineRun(1, COLS), source="obd")
    state.update_values({"RPM": (800, "rpm")}, origin="obd")
    state.update_values({"STEERING_ANGLE": (-12.5, "deg"), "DOOR_OPEN": (False, "")},
                        origin="can")
    rec.tick()
    state.declare("can", (Column("STEERING_ANGLE", "deg"),))  # the source changed its mind
    rec.tick()
    rec.close_file("test")
    first, second = outbox_files(rec.folder)
    rows = read_records(first)
    assert rows[0][:4] == ["TIME (UTC)", "RPM (rpm)", "SPEED (km/h)", "FUEL_TYPE"]
    assert rows[0][4:6] == ["GNSS_TIME (UTC)", "LATITUDE (deg)"]  # GNSS declared first
    assert rows[0][-2:] == ["STEERING_ANGLE (deg)", "DOOR_OPEN"]
    assert rows[1][-2:] == ["-12.5", "0"]
    manifest = json.loads(first.with_name(first.name + ".manifest.json").read_text())
    assert [c["source"] for c in manifest["columns"]] == (
        ["clock"] + ["obd"] * 3 + ["gnss"] * 9 + ["can"] * 2)
    assert read_records(second)[0][-1] == "STEERING_ANGLE (deg)"  # new columns: new file


def test_a_name_is_one_sources_only_and_a_column_takes_only_its_sources_value(tmp_path):
    state, rec = make(tmp_path)
    state.start_engine_run(EngineRun(1, COLS), source="obd")
    with pytest.raises(ValueError, match="can declares SPEED, already a column of obd"):
        state.declare("can", (Column("STEERING_ANGLE", "deg"), Column("SPEED", "km/h")))
    assert "can" not in state.snapshot().columns
    state.update_values({"SPEED": (12, "km/h")}, origin="can")  # a source's stray value
    state.update_values({"RPM": (800, "rpm")}, origin="obd")
    rec.tick()
    rec.close_file("test")
    assert read_records(outbox_files(rec.folder)[0])[1][1:3] == ["800", ""]
