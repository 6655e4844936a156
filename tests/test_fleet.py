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
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List

import pytest

from eccm.core.state import Column
from eccm.sinks.upload import S3Settings, S3Store, UploadError, pending_files

from conftest import REPO
from fleet_data import (CARS, figures, record_files, upload_copy, write_drive,
                        write_fleet)
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
    assert f"{total - done} records to compact" in again.stdout
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

    # Car AB's next drive has a value none of the fleet had (a new PID), and car EF's a
    # coolant temperature that is text: refused, as the lake's column holds numbers.
    later = tmp_path / "later"
    base = [c for c in CARS["AB-123-CD"]["columns"]]
    write_drive(later / "AB-123-CD", "AB-123-CD",
                datetime(2026, 1, 11, 20, 0, tzinfo=timezone.utc), 120, 90,
                columns=base[:4] + [Column("OIL_TEMP", "degC", source="obd")] + base[4:],
                extra=lambda t: {"OIL_TEMP": round(60 + t / 10, 1)})
    write_drive(later / "EF-456-GH", "EF-456-GH",
                datetime(2026, 1, 11, 21, 0, tzinfo=timezone.utc), 30, 91,
                extra=lambda t: {"COOLANT_TEMP": "LOW"})
    upload_copy({car: later / car for car in ("AB-123-CD", "EF-456-GH")},
                tmp_path / "up-later", settings(s3, prefix))
    refused = eccm_fleet(s3, prefix, tmp_path, "compact")
    assert refused.returncode == 1
    assert "done: 1 compacted" in refused.stdout and "1 refused" in refused.stdout
    assert "COOLANT_TEMP (degC) holds text where the lake's column coolant_temp holds " \
           "numbers" in refused.stderr

    after = {k: s3.client().head_object(Bucket=BUCKET, Key=k)["ETag"]
             for k in keys(s3, f"{prefix}-parquet/car=")}
    assert {k: after[k] for k in before} == before  # history untouched
    assert len(after) == len(before) + 1
    assert len(keys(s3, f"{prefix}-parquet/_schema/")) == len(versions) + 1
    old_rows = sum(f["rows"] for f in figures(record_files(fleet)).values())
    got = query_csv(s3, prefix, tmp_path,
                    "SELECT count(*) AS rows, count(oil_temp) AS oil, "
                    "count(*) FILTER (WHERE record LIKE '%000090-%') AS new, "
                    "max(oil_temp) AS oil_max FROM fleet")
    assert (int(got[0]["rows"]), int(got[0]["oil"]), int(got[0]["new"])) == \
        (old_rows + 120, 120, 120)
    assert float(got[0]["oil_max"]) == round(60 + 119 * 0.5 / 10, 1)  # as written

    lake = download_lake(s3, prefix, tmp_path / "lake")
    ddl = eccm_fleet(s3, prefix, tmp_path, "ddl", "--engine", "spark", "--location",
                     lake.as_uri()).stdout
    assert "`oil_temp` DOUBLE COMMENT 'OIL_TEMP in degC (obd)'" in ddl
    spark = local_spark()
    spark_figures(spark, ddl)
    row = spark.sql("SELECT count(*) AS rows, count(oil_temp) AS oil FROM fleet").collect()[0]
    assert (row["rows"], row["oil"]) == (old_rows + 120, 120)


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
