"""Recorder: rows from snapshots, stale values empty, rotation, outbox moves, recovery."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from eccm.recorder import Recorder, recover
from eccm.state import Column, ObdSession, SharedState

from conftest import outbox_files, part_files, read_records

COLS = (Column("RPM", "rpm"), Column("SPEED", "km/h"), Column("FUEL_TYPE"))


class Clock:
    def __init__(self):
        self.now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)

    def __call__(self):
        self.now += timedelta(seconds=1)
        return self.now


def make(tmp_path, **kw):
    state = SharedState()
    args = dict(car="CAR1", folder=str(tmp_path / "rec"), extension=".csv", separator=",",
                interval=0.5, fsync_interval=1.0, rotate_seconds=3600,
                rotate_bytes=1 << 20, max_age=5.0, gnss=False, clock=Clock())
    args.update(kw)
    rec = Recorder(threading.Event(), state, **args)
    rec.prepare()
    return state, rec


def test_rows_follow_the_session_and_close_into_the_outbox(tmp_path):
    state, rec = make(tmp_path)
    rec.tick()  # no engine session: no file
    assert part_files(rec.folder) == []
    state.start_obd_session(ObdSession(1, COLS))
    state.update_values({"RPM": (812.5, "rpm"), "FUEL_TYPE": ("Petrol, E10", "")})
    rec.tick()
    state.update_values({"SPEED": (42.0, "km/h")})
    rec.tick()
    (part,) = part_files(rec.folder)
    assert part.name == "CAR1_20260102T030406Z.csv.part"
    state.end_obd_session()
    rec.tick()
    assert part_files(rec.folder) == []
    (done,) = outbox_files(rec.folder)
    rows = read_records(done)
    assert rows[0] == ["TIME (UTC)", "RPM (rpm)", "SPEED (km/h)", "FUEL_TYPE"]
    assert rows[1] == ["2026-01-02T03:04:06.000Z", "812.5", "", "Petrol, E10"]
    assert rows[2] == ["2026-01-02T03:04:07.000Z", "812.5", "42", "Petrol, E10"]


def test_stale_values_are_empty_cells(tmp_path):
    state, rec = make(tmp_path, max_age=0.2)
    state.start_obd_session(ObdSession(1, COLS))
    state.update_values({"RPM": (900, "rpm")}, mono=time.monotonic() - 1.0)
    state.update_values({"SPEED": (10, "km/h")})
    rec.tick()
    rec.close_file("test")
    rows = read_records(outbox_files(rec.folder)[0])
    assert rows[1][1:] == ["", "10", ""]


def test_new_session_and_size_limit_rotate(tmp_path):
    state, rec = make(tmp_path, rotate_bytes=200)
    state.start_obd_session(ObdSession(1, COLS))
    state.update_values({"RPM": (1000, "rpm")})
    for _ in range(3):
        rec.tick()
    state.start_obd_session(ObdSession(2, COLS[:1]))
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
    state.start_obd_session(ObdSession(1, COLS))
    state.update_values({"RPM": (1000, "rpm"), "FUEL_TYPE": ("a,b|c\td", "")})
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
    state.start_obd_session(ObdSession(1, COLS))
    rec.tick()
    rec.close_file("test")
    rows = read_records(outbox_files(rec.folder)[0])
    assert rows[0][-9:] == ["GNSS_TIME (UTC)", "LATITUDE (deg)", "LONGITUDE (deg)",
                            "ALTITUDE (m)", "GNSS_SPEED (m/s)", "TRACK (deg)", "FIX_MODE",
                            "SATELLITES (count)", "HDOP"]
    assert rows[1][-9:] == [""] * 9


def test_recover_cuts_torn_line_and_queues(tmp_path):
    folder = tmp_path / "rec"
    outbox = folder / "outbox"
    outbox.mkdir(parents=True)
    (folder / "CAR_20260101T000000Z.csv.part").write_bytes(b"TIME,RPM\nt1,800\nt2,8")
    (folder / "CAR_20260101T010000Z.csv.part").write_bytes(b"TIME,RPM\n")
    (folder / "CAR_20260101T020000Z.csv.part").write_bytes(b"TIME,R")
    (outbox / "CAR_20260101T030000Z.csv").write_bytes(b"TIME,RPM\nold,1\n")
    (folder / "CAR_20260101T030000Z.csv.part").write_bytes(b"TIME,RPM\nnew,2\n")
    queued = recover(folder, outbox)
    assert [p.name for p in queued] == ["CAR_20260101T000000Z.csv",
                                        "CAR_20260101T030000Z-r1.csv"]
    assert (outbox / "CAR_20260101T000000Z.csv").read_bytes() == b"TIME,RPM\nt1,800\n"
    assert (outbox / "CAR_20260101T030000Z.csv").read_bytes() == b"TIME,RPM\nold,1\n"
    assert list(folder.glob("*.part")) == []


def test_prepare_recovers_leftovers(tmp_path):
    folder = tmp_path / "rec"
    folder.mkdir()
    (folder / "CAR1_20260101T000000Z.csv.part").write_bytes(b"H\nrow\ntor")
    state, rec = make(tmp_path)
    assert [p.name for p in outbox_files(rec.folder)] == ["CAR1_20260101T000000Z.csv"]
    assert state.snapshot().counters["files_recovered"] == 1


def test_write_error_is_counted_not_raised(tmp_path):
    import os
    state, rec = make(tmp_path)
    state.start_obd_session(ObdSession(1, COLS))
    state.update_values({"RPM": (1000, "rpm")})
    rec.tick()
    broken = rec._file.path
    os.close(rec._file._fd)  # the storage fails under the recorder
    rec.tick()
    counters = state.snapshot().counters
    assert counters["record_errors"] == 2  # the row, then closing the file
    assert counters["rows_recorded"] == 1
    rec.tick()  # recording goes on in a fresh file
    assert len(part_files(rec.folder)) == 2
    rec.close_file("test")
    assert [p.name for p in recover(rec.folder, rec.outbox)] == [broken.name[:-5]]
    assert sum(len(read_records(f)) - 1 for f in outbox_files(rec.folder)) == 2
