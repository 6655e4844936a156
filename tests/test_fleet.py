"""The fleet's data lake against a real S3 server (SeaweedFS on 127.0.0.1): three cars of
different PID sets over two days, uploaded by ECCM's uploader, compacted by `eccm fleet
compact` (a child process), read back by DuckDB over S3 and by Spark in local mode; every
figure checked against the one computed from the CSV files with the csv module."""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Dict, List

import pytest

from eccm.core.state import Column
from eccm.sinks.upload import S3Settings, S3Store, UploadError, pending_files
from eccm.tools import fleet as fleet_tool
from eccm.tools.lake import DOUBLE, VARCHAR, LakeColumn, Schema

from conftest import REPO
from fleet_data import (CARS, figures, record_files, upload_copy, write_drive,
                        write_fleet, write_record)
from s3server import ACCESS_KEY, SECRET_KEY, serve
from spark_local import local_spark

BUCKET = "fleet-lake"

# Per car: rows, min and max RPM, distance (km) by the trapezoid rule over each record.
FIGURES_SQL = """
SELECT car, count(*) AS rows, min(rpm) AS min_rpm, max(rpm) AS max_rpm, sum(km) AS km
FROM (SELECT car, rpm, ({micros}(time) - {micros}(lag(time) OVER w)) / 1e6
             * (lag(speed) OVER w + speed) / 2 / 3600 AS km
      FROM fleet WINDOW w AS (PARTITION BY car, record ORDER BY time))
GROUP BY car ORDER BY car"""


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    yield from serve(tmp_path_factory, BUCKET)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Dict[str, Path]:
    """Each car's record folder: 2 days x 2 drives of 240-360 rows (not uploaded)."""
    return write_fleet(tmp_path_factory.mktemp("fleet"))


def settings(s3, prefix: str) -> S3Settings:
    return S3Settings(s3.endpoint, ACCESS_KEY, SECRET_KEY, BUCKET, prefix=prefix)


def environment(s3, prefix: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECCM_")}
    env.update(PYTHONPATH=str(REPO), ECCM_S3_SERVER_ENDPOINT=s3.endpoint,
               ECCM_S3_SERVER_AK=ACCESS_KEY, ECCM_S3_SERVER_SK=SECRET_KEY,
               ECCM_S3_SERVER_BUCKET=BUCKET, ECCM_S3_KEY_PREFIX=prefix)
    return env


def eccm_fleet(s3, prefix: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m eccm fleet ARGS`, configured by ECCM_* variables alone (no config.ini)."""
    return subprocess.run([sys.executable, "-m", "eccm", "fleet", *args], cwd=cwd,
                          env=environment(s3, prefix), capture_output=True, text=True,
                          timeout=120)


def keys(s3, prefix: str) -> List[str]:
    client = s3.client()
    out: List[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET,
                                                                 Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def query_csv(s3, prefix: str, cwd: Path, sql: str) -> List[Dict[str, str]]:
    done = eccm_fleet(s3, prefix, cwd, "query", sql, "--format", "csv")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    names = lines[0].split(",")
    return [dict(zip(names, line.split(","))) for line in lines[1:]]


def download_lake(s3, prefix: str, folder: Path) -> Path:
    """The Parquet tree copied to a folder: Spark's S3 client (hadoop-aws) is not part of
    pyspark, so Spark reads the same objects from disk."""
    client = s3.client()
    root = f"{prefix}-parquet/"
    for key in keys(s3, root):
        target = folder / key[len(root):]
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(BUCKET, key, str(target))
    return folder


def spark_figures(spark, ddl: str) -> Dict[str, dict]:
    spark.sql("DROP TABLE IF EXISTS fleet")
    for statement in ddl.split(";"):
        if statement.strip():
            spark.sql(statement)
    return {r["car"]: {"rows": r["rows"], "min_rpm": r["min_rpm"], "max_rpm": r["max_rpm"],
                       "km": r["km"]}
            for r in spark.sql(FIGURES_SQL.format(micros="unix_micros")).collect()}


def assert_same_figures(got: Dict[str, dict], want: Dict[str, dict], engine: str) -> None:
    assert sorted(got) == sorted(want), engine
    for car, figure in want.items():
        mine = got[car]
        assert (int(mine["rows"]), float(mine["min_rpm"]), float(mine["max_rpm"])) == \
            (figure["rows"], figure["min_rpm"], figure["max_rpm"]), (engine, car)
        # Sums in another order: equal to the last bits of a double.
        assert math.isclose(float(mine["km"]), figure["km"], rel_tol=1e-12), (engine, car)


def test_each_record_is_in_its_days_index_even_after_a_crash_between_puts(s3, fleet,
                                                                          tmp_path,
                                                                          monkeypatch):
    prefix = "indexed"
    store_settings = settings(s3, prefix)
    # A crash after the record and its manifest, before the index entry: the file stays
    # in the outbox and the next attempt completes the entry, nothing twice.
    outbox = tmp_path / "first" / "outbox"
    first = fleet["EV-789-IJ"] / "outbox"
    outbox.mkdir(parents=True)
    path = pending_files(first)[0]
    for name in (path.name, path.name + ".manifest.json"):
        (outbox / name).write_bytes((first / name).read_bytes())
    store = S3Store(store_settings, "EV-789-IJ", outbox)
    real = S3Store._put_entry

    def crash(self, key, data):
        raise UploadError("connection lost")
    monkeypatch.setattr(S3Store, "_put_entry", crash)
    with pytest.raises(UploadError):
        store.upload(outbox / path.name)
    assert (outbox / path.name).exists() and keys(s3, f"{prefix}-index/") == []
    monkeypatch.setattr(S3Store, "_put_entry", real)
    store.upload(outbox / path.name)
    assert not (outbox / path.name).exists()

    upload_copy(fleet, tmp_path / "all", store_settings)  # every car, the first one again
    records = [k for k in keys(s3, f"{prefix}/") if k.endswith(".csv")]
    assert len(records) == len(record_files(fleet)) == 12  # none twice
    for day in ("2026-01-10", "2026-01-11"):
        entries = keys(s3, f"{prefix}-index/date={day}/")  # one listing: the day, every car
        assert sorted({k.split("/")[2] for k in entries}) == [f"car={c}" for c in CARS]
        assert len(entries) == 6
        for key in entries:
            entry = json.loads(s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read())
            head = s3.client().head_object(Bucket=BUCKET, Key=entry["key"])
            assert entry["key"].startswith(f"{prefix}/car={entry['car']}/date={day}/")
            assert head["Metadata"]["sha256"] == entry["sha256"]
            assert head["ContentLength"] == entry["size"]
            assert entry["columns"][0]["header"] == "TIME (UTC)"
            assert entry["profiles"] == (["demo-ev.json"] if entry["car"] == "EV-789-IJ"
                                         else [])
            manifest = json.loads(s3.client().get_object(
                Bucket=BUCKET, Key=entry["manifest"])["Body"].read())
            assert (manifest["vin"], manifest["profiles"]) == \
                (CARS[entry["car"]]["vin"], entry["profiles"])
            assert {c["source"] for c in manifest["columns"]} >= {"clock", "obd"}


def test_compacted_lake_gives_duckdb_and_spark_the_csv_figures(s3, fleet, tmp_path):
    prefix = "lake"
    upload_copy(fleet, tmp_path / "up", settings(s3, prefix))
    want = figures(record_files(fleet))
    done = eccm_fleet(s3, prefix, tmp_path, "compact")
    assert done.returncode == 0, done.stderr
    assert "12 records to compact" in done.stdout and "12 compacted" in done.stdout
    again = eccm_fleet(s3, prefix, tmp_path, "compact")  # idempotent
    assert again.returncode == 0 and "0 records to compact" in again.stdout, again.stderr
    assert "(12 compacted already)" in again.stdout
    parquet = [k for k in keys(s3, f"{prefix}-parquet/") if k.endswith(".parquet")]
    assert len(parquet) == 12

    # DuckDB over S3, through `eccm fleet query`: the Parquet table and the CSV records.
    duck = {r["car"]: r for r in query_csv(s3, prefix, tmp_path,
                                           FIGURES_SQL.format(micros="epoch_us"))}
    assert_same_figures(duck, want, "duckdb")
    in_place = query_csv(s3, prefix, tmp_path,
                         'SELECT car, count(*) AS rows, min("RPM (rpm)") AS min_rpm, '
                         'max("RPM (rpm)") AS max_rpm FROM fleet_csv GROUP BY car ORDER BY car')
    assert [(r["car"], int(r["rows"]), float(r["max_rpm"])) for r in in_place] == \
        [(car, f["rows"], f["max_rpm"]) for car, f in want.items()]

    # Spark over the same objects, with the table `eccm fleet ddl` prints.
    lake = download_lake(s3, prefix, tmp_path / "lake")
    ddl = eccm_fleet(s3, prefix, tmp_path, "ddl", "--engine", "spark", "--location",
                     lake.as_uri())
    assert ddl.returncode == 0, ddl.stderr
    assert_same_figures(spark_figures(local_spark(), ddl.stdout), want, "spark")

    # Types stable per signal, units in the files' metadata.
    import duckdb
    con = duckdb.connect()
    sample = next(lake.glob("car=EV-789-IJ/date=*/*.parquet"))
    schema = {name: (kind, str(converted), str(logical)) for name, kind, converted, logical
              in con.execute("SELECT name, type, converted_type, logical_type FROM "
                             f"parquet_schema('{sample}')").fetchall()}
    assert "isAdjustedToUTC=1" in schema["time"][2] and schema["rpm"][0] == "DOUBLE"
    assert schema["demo_chrg_state"][:2] == ("BYTE_ARRAY", "UTF8")
    meta = {k.decode(): v.decode() for k, v in con.execute(
        f"SELECT key, value FROM parquet_kv_metadata('{sample}')").fetchall()}
    assert json.loads(meta["eccm.units"])["demo_hvbat_soc"] == "%"
    assert meta["eccm.car"] == "EV-789-IJ" and json.loads(meta["eccm.profiles"]) == \
        ["demo-ev.json"]
    columns = {c["column"]: c for c in json.loads(meta["eccm.columns"])}
    assert columns["demo_chrg_state"]["type"] == "VARCHAR"
    assert columns["rpm"]["header"] == "RPM (rpm)" and columns["rpm"]["source"] == "obd"
    types = {r["column"]: r["type"] for r in query_csv(
        s3, prefix, tmp_path, "SELECT column_name AS column, column_type AS type FROM "
        "(DESCRIBE SELECT * FROM fleet)")}
    assert (types["fuel_type"], types["tcm_speed"], types["date"]) == \
        ("VARCHAR", "DOUBLE", "DATE")

    athena = eccm_fleet(s3, prefix, tmp_path, "ddl", "--engine", "athena").stdout
    assert "'projection.car.values' = 'AB-123-CD,EF-456-GH,EV-789-IJ'" in athena
    assert f"'storage.location.template' = 's3://{BUCKET}/{prefix}-parquet/car=${{car}}/" \
           "date=${date}/'" in athena
    assert "`rpm` double COMMENT 'RPM in rpm (obd)'" in athena
    trino = eccm_fleet(s3, prefix, tmp_path, "ddl", "--engine", "trino").stdout
    assert "partition_projection_enabled = true" in trino and '"fuel_type" varchar' in trino


def test_compact_killed_mid_run_then_run_again_loses_and_doubles_nothing(s3, tmp_path):
    prefix = "killed"
    many = write_fleet(tmp_path / "records", drives_per_day=8, rows=(40, 90))
    total = upload_copy(many, tmp_path / "up", settings(s3, prefix))
    want = figures(record_files(many))
    env = {**environment(s3, prefix), "TMPDIR": str(tmp_path)}  # what a kill leaves
    client = s3.client()

    def compacted() -> int:
        return client.list_objects_v2(Bucket=BUCKET,
                                      Prefix=f"{prefix}-parquet/car=").get("KeyCount", 0)
    for stop_at in (1, 6, 15):  # three runs killed at points further on, then one whole
        proc = subprocess.Popen([sys.executable, "-m", "eccm", "fleet", "compact"],
                                cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline and \
                    compacted() < stop_at:
                time.sleep(0.005)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        assert stop_at <= compacted() < total, f"killed at {compacted()} of {total}"
    done = compacted()
    print(f"\nkilled 3 times, at last after {done} of {total} records")
    again = eccm_fleet(s3, prefix, tmp_path, "compact")
    assert again.returncode == 0, again.stderr
    assert re.search(rf"\b{total - done} records? to compact", again.stdout)
    assert f"({done} compacted already)" in again.stdout
    rows = query_csv(s3, prefix, tmp_path,
                     "SELECT car, count(*) AS rows, count(DISTINCT (record, time)) AS once, "
                     "count(DISTINCT record) AS records FROM fleet GROUP BY car ORDER BY car")
    assert [(r["car"], int(r["rows"]), int(r["once"]), int(r["records"])) for r in rows] == \
        [(car, f["rows"], f["rows"], f["records"]) for car, f in want.items()]


def test_two_compactors_at_once_write_each_record_once_and_agree_on_the_schema(s3, fleet,
                                                                               tmp_path):
    prefix = "twice"
    upload_copy(fleet, tmp_path / "up", settings(s3, prefix))
    runs = [subprocess.Popen([sys.executable, "-m", "eccm", "fleet", "compact"], cwd=tmp_path,
                             env=environment(s3, prefix), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    written = [int(re.search(r"done: (\d+) compacted", out)[1]) for out, _ in outputs]
    assert sum(written) == 12, outputs  # each record written by one of them
    print(f"\ntwo compactors at once wrote {written[0]} and {written[1]} of 12 records")
    assert len(keys(s3, f"{prefix}-parquet/car=")) == 12
    versions = keys(s3, f"{prefix}-parquet/_schema/")
    final = json.loads(s3.client().get_object(Bucket=BUCKET, Key=max(versions))["Body"].read())
    headers = [c["header"] for c in final["columns"]]
    names = [c["column"] for c in final["columns"]]
    assert len(set(headers)) == len(headers) and len(set(names)) == len(names)
    assert final["cars"] == sorted(CARS)
    want = figures(record_files(fleet))
    rows = query_csv(s3, prefix, tmp_path, "SELECT car, count(*) AS rows, "
                     "count(DISTINCT (record, time)) AS once FROM fleet GROUP BY car ORDER BY car")
    assert [(r["car"], int(r["rows"]), int(r["once"])) for r in rows] == \
        [(car, f["rows"], f["rows"]) for car, f in want.items()]


def test_a_new_signal_widens_the_lake_without_rewriting_it(s3, fleet, tmp_path):
    prefix = "widen"
    upload_copy(fleet, tmp_path / "up", settings(s3, prefix))
    assert eccm_fleet(s3, prefix, tmp_path, "compact").returncode == 0
    before = {k: s3.client().head_object(Bucket=BUCKET, Key=k)["ETag"]
              for k in keys(s3, f"{prefix}-parquet/car=")}
    versions = keys(s3, f"{prefix}-parquet/_schema/")
    lake = download_lake(s3, prefix, tmp_path / "lake")
    spark = local_spark()
    spark_figures(spark, eccm_fleet(s3, prefix, tmp_path, "ddl", "--engine", "spark",
                                    "--location", lake.as_uri()).stdout)

    # Car AB's next drive has a value none of the fleet had (a new PID); car EF's has a
    # coolant temperature that is text: its whole column goes to the text twin
    # coolant_temp_text, nothing refused. A new car's drive with a new signal and a time
    # no reader takes is refused before the schema is touched: neither its signal nor
    # its car is in the schema.
    later = tmp_path / "later"
    base = [c for c in CARS["AB-123-CD"]["columns"]]
    write_drive(later / "AB-123-CD", "AB-123-CD",
                datetime(2026, 1, 11, 20, 0, tzinfo=timezone.utc), 120, 90,
                columns=base[:4] + [Column("OIL_TEMP", "degC", source="obd")] + base[4:],
                extra=lambda t: {"OIL_TEMP": round(60 + t / 10, 1)})
    write_drive(later / "EF-456-GH", "EF-456-GH",
                datetime(2026, 1, 11, 21, 0, tzinfo=timezone.utc), 30, 91,
                extra=lambda t: {"COOLANT_TEMP": "LOW" if t < 5 else 80})
    write_record(later / "ZZ-999-ZZ", "ZZ-999-ZZ",
                 datetime(2026, 1, 9, 21, 0, tzinfo=timezone.utc),
                 [("NEW_SIGNAL", "V")], [[1.5], [2.5]], bad_time=True)
    upload_copy({car: later / car for car in ("AB-123-CD", "EF-456-GH", "ZZ-999-ZZ")},
                tmp_path / "up-later", settings(s3, prefix))
    refused = eccm_fleet(s3, prefix, tmp_path, "compact")
    assert refused.returncode == 1
    assert "done: 2 compacted" in refused.stdout and "1 refused" in refused.stdout
    assert "ZZ-999-ZZ" in refused.stderr and "DuckDB cannot convert it" in refused.stderr
    assert "new columns: oil_temp, coolant_temp_text): print the table again with " \
        "`eccm fleet ddl`" in refused.stdout
    final = json.loads(s3.client().get_object(Bucket=BUCKET, Key=max(keys(
        s3, f"{prefix}-parquet/_schema/")))["Body"].read())
    assert "ZZ-999-ZZ" not in final["cars"] and final["first_day"] == "2026-01-10"
    assert "NEW_SIGNAL (V)" not in [c["header"] for c in final["columns"]]
    twin = [c for c in final["columns"] if c["text_of"]]
    assert [(c["column"], c["header"], c["type"], c["text_of"]) for c in twin] == \
        [("coolant_temp_text", "COOLANT_TEMP (degC)", "VARCHAR", "coolant_temp")]

    after = {k: s3.client().head_object(Bucket=BUCKET, Key=k)["ETag"]
             for k in keys(s3, f"{prefix}-parquet/car=")}
    assert {k: after[k] for k in before} == before  # history untouched
    assert len(after) == len(before) + 2
    assert len(keys(s3, f"{prefix}-parquet/_schema/")) == len(versions) + 2
    old_rows = sum(f["rows"] for f in figures(record_files(fleet)).values())
    got = query_csv(s3, prefix, tmp_path,
                    "SELECT count(*) AS rows, count(oil_temp) AS oil, "
                    "count(*) FILTER (WHERE record LIKE '%000090-%') AS new, "
                    "max(oil_temp) AS oil_max, count(coolant_temp_text) AS text, "
                    "count(*) FILTER (WHERE coolant_temp_text = 'LOW') AS low, "
                    "count(coolant_temp) FILTER (WHERE record LIKE '%00005b-%') AS ef "
                    "FROM fleet")
    assert (int(got[0]["rows"]), int(got[0]["oil"]), int(got[0]["new"])) == \
        (old_rows + 120 + 30, 120, 120)
    assert float(got[0]["oil_max"]) == round(60 + 119 * 0.5 / 10, 1)  # as written
    # EF's drive: all 30 cells as text (10 'LOW', 20 '80'), none in the DOUBLE column.
    assert (int(got[0]["text"]), int(got[0]["low"]), int(got[0]["ef"])) == (30, 10, 0)

    # The DDL printed again re-creates Spark's table (it exists from before): the new
    # columns are there without dropping anything by hand.
    lake = download_lake(s3, prefix, tmp_path / "lake")
    ddl = eccm_fleet(s3, prefix, tmp_path, "ddl", "--engine", "spark", "--location",
                     lake.as_uri()).stdout
    assert "`oil_temp` DOUBLE COMMENT 'OIL_TEMP in degC (obd)'" in ddl
    assert "`coolant_temp_text` STRING" in ddl
    for statement in ddl.split(";"):
        if statement.strip():
            spark.sql(statement)
    row = spark.sql("SELECT count(*) AS rows, count(oil_temp) AS oil, "
                    "count(coolant_temp_text) AS text FROM fleet").collect()[0]
    assert (row["rows"], row["oil"], row["text"]) == (old_rows + 150, 120, 30)


def test_fleet_commands_say_what_is_wrong_and_never_show_the_keys(s3, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECCM_")}
    env["PYTHONPATH"] = str(REPO)
    bare = subprocess.run([sys.executable, "-m", "eccm", "fleet", "compact"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert bare.returncode == 2 and "config error: no bucket" in bare.stderr
    bad_sql = eccm_fleet(s3, "lake", tmp_path, "query", "SELEKT 1")
    assert bad_sql.returncode == 1 and "syntax error" in bad_sql.stderr.lower()
    no_lake = eccm_fleet(s3, "nothing-here", tmp_path, "ddl", "--engine", "athena")
    assert no_lake.returncode == 1 and "run `eccm fleet compact` first" in no_lake.stderr
    wrong = environment(s3, "lake")
    wrong["ECCM_S3_SERVER_SK"] = "not-the-secret-key-0123456789"
    denied = subprocess.run([sys.executable, "-m", "eccm", "fleet", "compact"], cwd=tmp_path,
                            env=wrong, capture_output=True, text=True, timeout=60)
    assert denied.returncode == 1
    assert "rejected the access key or secret key" in denied.stderr
    for result in (bad_sql, no_lake, denied):
        assert SECRET_KEY not in result.stdout + result.stderr
        assert "not-the-secret-key" not in result.stdout + result.stderr


# Records of odd shapes, each car's own: units other than ECCM's, other separators and
# extensions, a signal with numbers in one record and text in the next, index entries
# that cannot be trusted (a separator of two characters or a number, columns as text).
JAN10 = datetime(2026, 1, 10, 6, tzinfo=timezone.utc)
JAN11 = datetime(2026, 1, 11, 6, tzinfo=timezone.utc)
ODD = [  # car, start, columns, rows, separator, extension, sequence
    ("A-US", JAN10, [("SPEED", "mph"), ("RPM", "rpm")], [[60, 2000], [62, 2100]], ",",
     ".csv", 1),
    ("B-EU", JAN10, [("SPEED", "km/h"), ("RPM", "rpm"), ("TCM.SPEED", "km/h")],
     [[100, 2000, 99], [110, 2100, 109]], ",", ".csv", 1),
    ("C-TSV", JAN10, [("SPEED", "km/h"), ("NOTE", "")], [[50, "a\tb"], [51, 'x "q" y']],
     "\t", ".tsv", 1),
    ("D-PIPE", JAN10, [("SPEED", "km/h"), ("NOTE", "")], [[70, "a|b"], [71, " lead"]], "|",
     ".txt", 1),
    ("E-SEMI", JAN10, [("SPEED", "km/h"), ("GEAR", "")], [[70, 1], [71, 2]], ";", ".csv", 1),
    ("E-SEMI", JAN11, [("SPEED", "km/h"), ("GEAR", "")], [[72, "R"], [73, "N"]], ";", ".csv",
     2),
    ("F-BAD", JAN10, [("RPM", "rpm")], [[1000], [1100]], ",", ".csv", 1),
    ("F-BAD", JAN10 + timedelta(hours=1), [("RPM", "rpm")], [[1000], [1100]], ",", ".csv", 2),
    ("F-BAD", JAN10 + timedelta(hours=2), [("RPM", "rpm")], [[1000], [1100]], ",", ".csv", 3),
    ("G-OK", JAN10, [("RPM", "rpm")], [[3000], [3100]], ",", ".csv", 1),
]
BAD_ENTRIES = [{"separator": "ab"}, {"columns": "oops"}, {"separator": 7}]


def patch_entry(s3, key: str, **changes) -> None:
    client = s3.client()
    entry = json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    entry.update(changes)
    client.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(entry).encode())


@pytest.fixture(scope="module")
def odd(s3, tmp_path_factory):
    """The ODD records uploaded by ECCM's uploader, F-BAD's entries spoiled, compacted
    once by `eccm fleet compact`: (prefix, the run, a work folder)."""
    prefix = "odd"
    folder = tmp_path_factory.mktemp("odd")
    for car, start, columns, rows, separator, extension, sequence in ODD:
        write_record(folder / "records" / car, car, start, columns, rows, separator,
                     extension, sequence, source="profile" if car == "E-SEMI" else "obd")
    upload_copy({car: folder / "records" / car for car in dict.fromkeys(r[0] for r in ODD)},
                folder / "up", settings(s3, prefix))
    for key, changes in zip(sorted(keys(s3, f"{prefix}-index/date=2026-01-10/car=F-BAD/")),
                            BAD_ENTRIES):
        patch_entry(s3, key, **changes)
    return prefix, eccm_fleet(s3, prefix, folder, "compact"), folder


def test_bad_index_entries_are_refused_one_by_one_and_the_others_go_on(odd):
    prefix, done, _ = odd
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "done: 7 compacted" in done.stdout and "3 refused" in done.stdout
    refused = sorted(line for line in done.stderr.splitlines() if "not compacted" in line)
    assert [line.split("F-BAD_20260110T0", 1)[1][:1] for line in refused] == ["6", "7", "8"]
    assert 'gives the separator "ab": not one character' in refused[0]
    assert "columns are not a list of columns" in refused[1]
    assert "gives the separator 7: not one character" in refused[2]
    assert re.search(r"\] odd/car=G-OK/\S+ -> odd-parquet/car=G-OK/", done.stdout)  # after


def test_names_and_types_stay_put_whatever_the_order_of_the_cars(s3, odd):
    """`speed` is km/h although the mph car is compacted first; GEAR, numbers in E's first
    record and text in its second, keeps both: the second in gear_text."""
    prefix, _, folder = odd
    rows = query_csv(s3, prefix, folder,
                     "SELECT car, date, speed, speed_mph, tcm_speed, gear, gear_text "
                     "FROM fleet ORDER BY car, time")
    got = [(r["car"], r["speed"], r["speed_mph"], r["tcm_speed"], r["gear"], r["gear_text"])
           for r in rows]
    assert got == [
        ("A-US", "", "60.0", "", "", ""), ("A-US", "", "62.0", "", "", ""),
        ("B-EU", "100.0", "", "99.0", "", ""), ("B-EU", "110.0", "", "109.0", "", ""),
        ("C-TSV", "50.0", "", "", "", ""), ("C-TSV", "51.0", "", "", "", ""),
        ("D-PIPE", "70.0", "", "", "", ""), ("D-PIPE", "71.0", "", "", "", ""),
        ("E-SEMI", "70.0", "", "", "1.0", ""), ("E-SEMI", "71.0", "", "", "2.0", ""),
        ("E-SEMI", "72.0", "", "", "", "R"), ("E-SEMI", "73.0", "", "", "", "N"),
        ("G-OK", "", "", "", "", ""), ("G-OK", "", "", "", "", "")]
    types = {r["column"]: r["type"] for r in query_csv(
        s3, prefix, folder, "SELECT column_name AS column, column_type AS type FROM "
        "(DESCRIBE SELECT * FROM fleet)")}
    assert (types["gear"], types["gear_text"], types["speed"]) == \
        ("DOUBLE", "VARCHAR", "DOUBLE")


def test_records_view_reads_every_separator_and_extension(s3, odd):
    prefix, _, folder = odd
    done = eccm_fleet(s3, prefix, folder, "query",
                      'SELECT car, count(*) AS n, string_agg("NOTE", \'/\' '
                      'ORDER BY "TIME (UTC)") AS notes, max("SPEED (km/h)") AS top '
                      "FROM fleet_csv GROUP BY car ORDER BY car", "--format", "json")
    assert done.returncode == 0, done.stderr
    got = {r["car"]: (r["n"], r["notes"], r["top"])
           for r in map(json.loads, done.stdout.splitlines())}
    assert got["C-TSV"] == (2, 'a\tb/x "q" y', 51) and got["D-PIPE"] == (2, "a|b/ lead", 71)
    assert got["E-SEMI"][0] == 4 and got["B-EU"][2] == 110
    assert got["F-BAD"][0] == 2  # two of its entries give no usable separator: left out


def test_fleet_reads_only_the_compactors_files_and_drives_say_which_are_in(s3, odd,
                                                                         tmp_path):
    prefix, _, folder = odd
    import duckdb
    foreign = tmp_path / "foreign.parquet"
    duckdb.connect().execute("COPY (SELECT 'pwned' AS record, 1e9 AS rpm) TO "
                             f"'{foreign}' (FORMAT parquet)")
    s3.client().upload_file(str(foreign), BUCKET,
                            f"{prefix}-parquet/car=A-US/date=2026-01-10/evil.parquet")
    # And under the index: an object that is not JSON, an entry naming another record.
    client = s3.client()
    client.put_object(Bucket=BUCKET, Key=f"{prefix}-index/date=2026-01-10/car=A-US/x.json",
                      Body=b"not json {")
    (entry,) = keys(s3, f"{prefix}-index/date=2026-01-10/car=B-EU/")
    client.copy_object(Bucket=BUCKET, Key=f"{prefix}-index/date=2026-01-10/car=B-EU/y.json",
                       CopySource={"Bucket": BUCKET, "Key": entry})
    rows = query_csv(s3, prefix, folder, "SELECT count(*) AS n, max(rpm) AS top, "
                     "count(*) FILTER (WHERE record = 'pwned') AS evil FROM fleet")
    assert (int(rows[0]["n"]), float(rows[0]["top"]), int(rows[0]["evil"])) == (14, 3100, 0)
    csv_rows = query_csv(s3, prefix, folder, "SELECT count(*) AS n FROM fleet_csv")
    assert int(csv_rows[0]["n"]) == 16  # each record once: 7 compacted, 1 of F-BAD's
    drives = query_csv(s3, prefix, folder, "SELECT car, count(*) AS n, "
                       "count(*) FILTER (WHERE in_lake) AS in_lake FROM drives "
                       "WHERE start < \"end\" AND date = DATE '2026-01-10' + (car = 'E-SEMI' "
                       "AND start > TIMESTAMPTZ '2026-01-11 00:00:00+00')::INT "
                       "GROUP BY car ORDER BY car")
    assert [(r["car"], int(r["n"]), int(r["in_lake"])) for r in drives] == [
        ("A-US", 1, 1), ("B-EU", 1, 1), ("C-TSV", 1, 1), ("D-PIPE", 1, 1), ("E-SEMI", 2, 2),
        ("F-BAD", 3, 0), ("G-OK", 1, 1)]


def test_query_runs_one_select_and_nothing_else(s3, odd, tmp_path):
    """Statements that write (to disk or to the bucket), several statements, ATTACH,
    CREATE, SET: refused before anything runs. DuckDB's secrets (the access key id is
    not redacted there) are refused however the query reaches them."""
    prefix, _, folder = odd
    written = tmp_path / "written.csv"
    attached = tmp_path / "x.db"
    evil = f"{prefix}-parquet/car=A-US/date=2026-01-10/copied.parquet"
    before = keys(s3, "")
    cases = {
        f"COPY (SELECT 42 AS x) TO '{written}'": "got COPY",
        f"SELECT 1; COPY (SELECT 43 AS x) TO '{written}'; SELECT 2": "got 3 statements",
        f"COPY (SELECT 1 AS pwned) TO 's3://{BUCKET}/{evil}'": "got COPY",
        f"ATTACH '{attached}' AS x; CREATE TABLE x.t AS SELECT 1; SELECT 1": "3 statements",
        f"ATTACH '{attached}' AS x": "got ATTACH",
        "CREATE TABLE t AS SELECT * FROM fleet": "got CREATE",
        "SET s3_endpoint = 'elsewhere'": "got SET",
        f"EXPORT DATABASE '{tmp_path / 'export'}'": "got EXPORT",
        "SELECT * FROM duckdb_secrets()": "reads DuckDB's secrets",
        "SELECT * FROM query('SELECT * FROM duckdb_' || 'secrets()')":
            "reads DuckDB's secrets",
        "SELEC nonsense": "syntax error",
    }
    for sql, said in cases.items():
        done = eccm_fleet(s3, prefix, folder, "query", sql)
        assert done.returncode == 1 and said in done.stderr, (sql, done.stderr)
        assert ACCESS_KEY not in done.stdout + done.stderr
        assert SECRET_KEY not in done.stdout + done.stderr
    assert not written.exists() and not attached.exists()
    assert not (tmp_path / "export").exists()
    assert keys(s3, "") == before
    fine = eccm_fleet(s3, prefix, folder, "query",
                      "WITH a AS (SELECT count(*) AS n FROM fleet) SELECT n FROM a;")
    assert fine.returncode == 0 and fine.stdout.split()[-1] == "14", fine.stderr


def test_records_without_an_index_entry_are_found_said_and_the_missing_forgotten(
        s3, tmp_path):
    prefix = "legacy"
    folder = tmp_path / "records"
    for number in range(1, 5):
        write_record(folder / "H-1", "H-1", JAN10 + timedelta(hours=number),
                     [("RPM", "rpm")], [[1000 * number], [1000 * number + 1]],
                     sequence=number)
    upload_copy({"H-1": folder / "H-1"}, tmp_path / "up", settings(s3, prefix))
    client = s3.client()
    entries = sorted(keys(s3, f"{prefix}-index/"))
    records = sorted(k for k in keys(s3, f"{prefix}/") if k.endswith(".csv"))
    for key in entries[1:3]:  # records 2 and 3: as if uploaded before the index existed
        client.delete_object(Bucket=BUCKET, Key=key)
    client.delete_object(Bucket=BUCKET, Key=records[3])  # record 4: deleted from the bucket
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/car=H-1/date=2026-01-09/H-1_old.csv",
                      Body=b"TIME (UTC),RPM (rpm)\n2026-01-09T06:00:00.000Z,500\n")

    first = eccm_fleet(s3, prefix, tmp_path, "compact")
    assert first.returncode == 1, first.stderr
    assert "2 records of the first 3 listed have no entry" in first.stdout
    assert "eccm fleet compact --scan" in first.stdout
    assert f"{records[3]} missing: the index lists it, but it is not in the bucket" \
        in first.stdout
    assert "--forget KEY" in first.stdout and "1 missing" in first.stdout

    scan = eccm_fleet(s3, prefix, tmp_path, "compact", "--scan")
    assert scan.returncode == 1, scan.stderr
    assert "note: 1 object under" in scan.stdout and "have no manifest" in scan.stdout
    assert f"{prefix}/car=H-1/date=2026-01-09/H-1_old.csv" in scan.stdout
    assert "--scan: 2 records without an index entry" in scan.stdout
    assert "done: 2 compacted" in scan.stdout and "1 missing" in scan.stdout

    forgot = eccm_fleet(s3, prefix, tmp_path, "compact", "--forget", records[3])
    assert forgot.returncode == 0, forgot.stderr
    assert f"{records[3]}: forgotten" in forgot.stdout
    assert "0 records to compact" in forgot.stdout and "1 forgotten" in forgot.stdout
    assert "no entry" not in forgot.stdout  # the scanned records have one now
    again = eccm_fleet(s3, prefix, tmp_path, "compact", "--forget", records[0])
    assert again.returncode == 1 and "it is in the lake: nothing to forget" in again.stderr
    drives = query_csv(s3, prefix, tmp_path, "SELECT key, in_lake FROM drives ORDER BY key")
    assert [(r["key"], r["in_lake"]) for r in drives] == \
        [(k, "False" if k == records[3] else "True") for k in records]
    rows = query_csv(s3, prefix, tmp_path, "SELECT count(*) AS n, max(rpm) AS top FROM fleet")
    assert (int(rows[0]["n"]), float(rows[0]["top"])) == (6, 3001)


def test_a_bucket_without_index_says_to_scan(s3, tmp_path):
    prefix = "unindexed"
    write_record(tmp_path / "I-1", "I-1", JAN10, [("RPM", "rpm")], [[900]])
    upload_copy({"I-1": tmp_path / "I-1"}, tmp_path / "up", settings(s3, prefix))
    for key in keys(s3, f"{prefix}-index/"):
        s3.client().delete_object(Bucket=BUCKET, Key=key)
    lines: List[str] = []
    report = fleet_tool.compact(settings(s3, prefix), say=lines.append)
    assert report.compacted == 0
    assert any(f"the index (s3://{BUCKET}/{prefix}-index/) has no entries" in line and
               "--scan" in line for line in lines), lines


def test_two_compactors_without_conditional_put_never_both_win_a_schema_version(s3):
    """A server that answers If-None-Match with 501: both compactors find version 1 free
    and put theirs, B's PUT after A has checked its own. A reads its version back a
    moment later, finds B's and decides again: every car and type ends in the schema."""
    from botocore.exceptions import ClientError
    prefix = "noconditional"
    both_saw_it_free = threading.Barrier(2, timeout=30)
    a_checked, b_put = threading.Event(), threading.Event()

    class NoConditionalPut:
        def __init__(self, name):
            self.real, self.name, self.heads = s3.client(), name, 0

        def put_object(self, **kw):
            if "IfNoneMatch" in kw:
                raise ClientError({"Error": {"Code": "NotImplemented"},
                                   "ResponseMetadata": {"HTTPStatusCode": 501}}, "PutObject")
            if self.name == "B":
                assert a_checked.wait(30)
            try:
                return self.real.put_object(**kw)
            finally:
                if self.name == "B":
                    b_put.set()

        def head_object(self, **kw):
            try:
                return self.real.head_object(**kw)
            finally:
                self.heads += 1
                if self.heads == 1:
                    both_saw_it_free.wait()
                elif self.heads == 2 and self.name == "A":
                    a_checked.set()  # A's PUT is verified: B's comes now

        def get_object(self, **kw):
            if self.name == "A" and kw["Key"].endswith("v000001.json"):
                assert b_put.wait(30)  # A reads back after B's PUT has landed
            return self.real.get_object(**kw)

        def __getattr__(self, name):
            return getattr(self.real, name)

    results: Dict[str, Any] = {}

    def compactor(name: str, kind: str) -> None:
        bucket = fleet_tool.Bucket(settings(s3, prefix), NoConditionalPut(name))
        bucket.settle_seconds = 0  # the hooks above order the PUTs and the read-back
        column = LakeColumn("", "GEAR", "GEAR", "", kind, "profile", name)
        results[name] = fleet_tool.commit_schema(bucket, prefix, Schema(), [column], name,
                                                 "2026-01-10")
    threads = [threading.Thread(target=compactor, args=("A", DOUBLE)),
               threading.Thread(target=compactor, args=("B", VARCHAR))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    final = fleet_tool.load_schema(fleet_tool.Bucket(settings(s3, prefix)), prefix)
    assert (results["B"].version, results["A"].version, final.version) == (1, 2, 2)
    assert final == results["A"] and final.cars == ("A", "B")
    assert [(c.column, c.type) for c in final.columns if c.header == "GEAR"] == \
        [("gear", VARCHAR)]  # B's decision, the first in the bucket, stands


def test_scan_indexes_only_what_the_uploader_would_have_put_there(s3, tmp_path):
    """--scan gives an entry only to a record under its uploader's key (its manifest's
    car and start day; the -dupN key of a taken one counts) whose bytes are its
    manifest's: a copy under another car and day, or changed bytes, are refused and
    nothing is written for them. Forgotten records are left out of --scan and the hint."""
    prefix = "scanned"
    for number in range(1, 4):
        write_record(tmp_path / "K-1", "K-1", JAN10 + timedelta(hours=number),
                     [("RPM", "rpm")], [[1000 * number], [1000 * number + 1]],
                     sequence=number)
    upload_copy({"K-1": tmp_path / "K-1"}, tmp_path / "up", settings(s3, prefix))
    client = s3.client()
    for key in keys(s3, f"{prefix}-index/"):  # as if uploaded before the index existed
        client.delete_object(Bucket=BUCKET, Key=key)
    r1, r2, r3 = sorted(k for k in keys(s3, f"{prefix}/") if k.endswith(".csv"))

    def read(key):
        return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    client.put_object(Bucket=BUCKET, Key=r2, Body=read(r2).replace(b"2001", b"9999"))
    dup = r3.replace(".csv", "-dup1.csv")  # an uploader's key for a taken one
    copy = r1.replace("car=K-1", "car=K-2").replace("date=2026-01-10", "date=2025-05-05")
    for suffix in ("", ".manifest.json"):
        client.put_object(Bucket=BUCKET, Key=dup + suffix, Body=read(r3 + suffix))
        client.delete_object(Bucket=BUCKET, Key=r3 + suffix)
        client.put_object(Bucket=BUCKET, Key=copy + suffix, Body=read(r1 + suffix))

    scan = eccm_fleet(s3, prefix, tmp_path, "compact", "--scan")
    assert scan.returncode == 1, scan.stderr
    assert "--scan: 4 records without an index entry" in scan.stdout
    assert f"{copy} not compacted: its uploader puts it under {r1}" in scan.stdout
    assert f"{r2} not compacted: its bytes" in scan.stdout
    assert "done: 2 compacted" in scan.stdout and "2 refused" in scan.stdout
    indexed = sorted(keys(s3, f"{prefix}-index/"))
    assert indexed == sorted(fleet_tool.index_key(prefix, k) for k in (r1, dup))
    assert not keys(s3, f"{prefix}-parquet/car=K-2/")
    drives = query_csv(s3, prefix, tmp_path, "SELECT key, file, in_lake FROM drives "
                       "ORDER BY key")
    assert [(r["key"], r["file"], r["in_lake"]) for r in drives] == [
        (r1, r1.rsplit("/", 1)[1], "True"), (dup, r3.rsplit("/", 1)[1], "True")]

    forgot = eccm_fleet(s3, prefix, tmp_path, "compact", "--forget", copy, "--forget", r2)
    assert forgot.returncode == 0, forgot.stdout + forgot.stderr
    assert "no entry" not in forgot.stdout and "--scan" not in forgot.stdout
    again = eccm_fleet(s3, prefix, tmp_path, "compact", "--scan")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "not compacted" not in again.stdout and "2 forgotten" in again.stdout


def test_forget_takes_only_a_key_a_run_could_have_named(s3, tmp_path):
    prefix = "forgets"
    write_record(tmp_path / "L-1", "L-1", JAN10, [("RPM", "rpm")], [[900]])
    upload_copy({"L-1": tmp_path / "L-1"}, tmp_path / "up", settings(s3, prefix))
    (record,) = [k for k in keys(s3, f"{prefix}/") if k.endswith(".csv")]
    s3.client().delete_object(Bucket=BUCKET, Key=record)  # missing: may be forgotten
    folder, name = record.rsplit("/", 1)
    bad = [f"{folder}/nope.csv", "", f"{prefix}/car=../date=2026-01-10/{name}",
           f"{prefix}/car=L-1/date=notadate/{name}", f"{prefix}/car=L-1/date=2026-02-30/x",
           f"{prefix}/extra/car=L-1/date=2026-01-10/{name}", f"{folder}/",
           f"{folder}/{name}/x", f"other/car=L-1/date=2026-01-10/{name}"]
    for key in bad:
        with pytest.raises(fleet_tool.BadKey):
            fleet_tool.forget(settings(s3, prefix), [record, key], say=lambda line: None)
    done = eccm_fleet(s3, prefix, tmp_path, "compact", "--forget", record, "--forget",
                      f"{folder}/nope.csv")
    assert done.returncode == 2 and "nope.csv" in done.stderr, done.stderr
    assert "nothing forgotten" in done.stderr
    assert not keys(s3, f"{prefix}-parquet/")  # no marker, not even the good key's
    fine = eccm_fleet(s3, prefix, tmp_path, "compact", "--forget", record)
    assert fine.returncode == 0 and f"{record}: forgotten" in fine.stdout, fine.stderr


def test_query_never_installs_or_autoloads_an_extension(s3, odd):
    prefix, _, folder = odd
    rows = query_csv(s3, prefix, folder,
                     "SELECT current_setting('autoinstall_known_extensions') AS i, "
                     "current_setting('autoload_known_extensions') AS l, count(*) AS n "
                     "FROM fleet")
    assert [(r["i"], r["l"], r["n"]) for r in rows] == [("False", "False", "14")]
