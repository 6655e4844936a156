"""Disk budget: kept copies go first; un-uploaded files only with the opt-in policy."""
from __future__ import annotations

import os
import time

from eccm.sinks.disk import check_budget


def make(folder, name, size, age):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(b"x" * size)
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def test_under_budget_touches_nothing(tmp_path):
    make(tmp_path / "outbox", "a.csv", 100, 10)
    report = check_budget(tmp_path, 1000, drop_oldest=True)
    assert not report.full and report.dropped == [] and report.waiting == 1


def test_kept_copies_go_first_then_nothing_unuploaded_by_default(tmp_path):
    make(tmp_path / "uploaded", "old.csv", 600, 100)
    make(tmp_path / "outbox", "a.csv", 600, 50)
    make(tmp_path / "outbox", "b.csv", 600, 10)
    report = check_budget(tmp_path, 1000, drop_oldest=False)
    assert report.freed_copies == 1 and report.full and report.dropped == []
    assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == ["a.csv", "b.csv"]


def test_opt_in_drops_oldest_waiting_files(tmp_path, caplog):
    make(tmp_path / "outbox", "a.csv", 600, 50)
    make(tmp_path / "outbox", "b.csv", 600, 10)
    make(tmp_path, "current.csv.part", 100, 0)
    report = check_budget(tmp_path, 1000, drop_oldest=True)
    assert report.dropped == ["a.csv"] and not report.full
    assert (tmp_path / "current.csv.part").exists()
    assert "deleted a.csv, never uploaded" in caplog.text
