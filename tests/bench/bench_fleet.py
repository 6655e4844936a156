"""Fleet lake benchmark: compaction throughput, and Parquet against CSV (and the wide table
against a long "narrow" one) in size and query time, on the same records in a real S3
server (SeaweedFS on 127.0.0.1, started and stopped here).

Run:  python tests/bench/bench_fleet.py [--drives 4] [--rows 3600] [--repeat 5]
The records are the test fleet's (tests/fleet_data.py: three cars of different PID sets,
two days), `--drives` per car and day of `--rows` rows (0.5 s apart: 3600 rows = 30 min).
Wide: `eccm fleet compact` itself. Narrow: one row per value (time, record, signal, unit,
value DOUBLE, text VARCHAR), sorted by signal then time, written here the same way (fetch,
convert with DuckDB, one PUT). Queries run through DuckDB's httpfs over S3, each the median
of --repeat runs after one warm-up; ratios are measured in this run.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from eccm.sinks.upload import S3Settings  # noqa: E402
from eccm.tools import fleet as fleet_tool, lake  # noqa: E402
from fleet_data import CARS, record_files, upload_copy, write_fleet  # noqa: E402
from s3server import ACCESS_KEY, SECRET_KEY, SeaweedFS  # noqa: E402

BUCKET = "bench"
PREFIX = "car-logs"
NARROW = f"{PREFIX}-narrow"

DISTANCE = ("SELECT car, sum(km) FROM (SELECT car, (epoch_us(time) - epoch_us(lag(time) "
            "OVER w)) / 1e6 * (lag(speed) OVER w + speed) / 2 / 3600 AS km FROM {source} "
            "WINDOW w AS (PARTITION BY car, record ORDER BY time)) GROUP BY car")
QUERIES = {
    "per car: rows, min/max RPM, mean speed": {
        "csv": 'SELECT car, count(*), min("RPM (rpm)"), max("RPM (rpm)"), '
               'avg("SPEED (km/h)") FROM {csv} GROUP BY car',
        "wide": "SELECT car, count(*), min(rpm), max(rpm), avg(speed) FROM {wide} GROUP BY car",
        "narrow": "SELECT car, count(DISTINCT (record, time)), "
                  "min(value) FILTER (WHERE signal = 'RPM'), "
                  "max(value) FILTER (WHERE signal = 'RPM'), "
                  "avg(value) FILTER (WHERE signal = 'SPEED') FROM {narrow} "
                  "WHERE signal IN ('RPM', 'SPEED') GROUP BY car",
    },
    "per car: distance (speed over time)": {
        "csv": DISTANCE.format(source='(SELECT car, filename AS record, "TIME (UTC)"::'
                                      'TIMESTAMPTZ AS time, "SPEED (km/h)" AS speed '
                                      'FROM {csv})'),
        "wide": DISTANCE.format(source="{wide}"),
        "narrow": DISTANCE.format(source="(SELECT car, record, time, value AS speed "
                                         "FROM {narrow} WHERE signal = 'SPEED')"),
    },
}


def narrow_sql(headers: List[str], csv_path: str, record: str, target: str) -> str:
    """One record as one row per value, sorted by signal then time."""
    pairs = ", ".join(f"({lake.literal(h)}, {lake.literal(c['name'])}, {lake.literal(c['unit'])})"
                      for h, c in zip(headers[1:], fleet_tool.column_facts(
                          headers, {})[1:]))
    return (f"COPY (SELECT CAST({lake.quote(lake.TIME_HEADER)} AS TIMESTAMPTZ) AS time, "
            f"{lake.literal(record)} AS record, h.signal, h.unit, "
            "TRY_CAST(cell AS DOUBLE) AS value, "
            "CASE WHEN TRY_CAST(cell AS DOUBLE) IS NULL THEN cell END AS text "
            f"FROM (UNPIVOT (SELECT * FROM {lake.read_csv_sql(headers, csv_path, ',')}) "
            f"ON COLUMNS(* EXCLUDE ({lake.quote(lake.TIME_HEADER)})) "
            "INTO NAME header VALUE cell) AS u "
            f"JOIN (VALUES {pairs}) AS h(header, signal, unit) USING (header) "
            f"ORDER BY h.signal, time) TO {lake.literal(target)} "
            "(FORMAT parquet, COMPRESSION zstd)")


def compact_narrow(settings: S3Settings, folder: Path) -> int:
    """The narrow table, made as compact makes the wide one; rows written."""
    bucket = fleet_tool.Bucket(settings)
    con = fleet_tool.duckdb_connection()
    rows = 0
    for key in bucket.keys(f"{PREFIX}/car="):
        if not key.endswith(".csv"):
            continue
        source, target = folder / "r.csv", folder / "r.parquet"
        bucket.download(key, source)
        headers = fleet_tool.read_header(source, ",")
        con.execute(narrow_sql(headers, str(source), key.rsplit("/", 1)[-1], str(target)))
        rows += con.execute(f"SELECT count(*) FROM '{target}'").fetchone()[0]
        car, day, name = lake.key_partition(key)
        bucket.put_new(f"{NARROW}/car={car}/date={day}/{name[:-4]}.parquet",
                       target.read_bytes(), fleet_tool.PARQUET_TYPE)
    return rows


def size_of(client, prefix: str, suffix: str) -> int:
    total = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        total += sum(o["Size"] for o in page.get("Contents", []) if o["Key"].endswith(suffix))
    return total


def timed(fn: Callable[[], object]) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--drives", type=int, default=4, help="drives per car and day")
    parser.add_argument("--rows", type=int, default=3600, help="rows per drive")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="eccm-bench-fleet-"))
    server = SeaweedFS(work / "s3")
    try:
        server.make_bucket(BUCKET)
        settings = S3Settings(server.endpoint, ACCESS_KEY, SECRET_KEY, BUCKET, prefix=PREFIX)
        records = write_fleet(work / "records", drives_per_day=args.drives,
                              rows=(args.rows, args.rows))
        files = record_files(records)
        upload_copy(records, work / "up", settings)
        client = server.client()
        csv_bytes = size_of(client, f"{PREFIX}/", ".csv")

        # The table of standard value names (python-OBD's, loaded once per run, 0.4 s) is
        # the command's start-up, as importing DuckDB is: not part of the conversion.
        lake.standard_units()
        report = fleet_tool.compact(settings, say=lambda line: None)
        wide_s, rows = report.seconds, report.rows
        (work / "narrow").mkdir()
        started = time.monotonic()
        narrow_rows = compact_narrow(settings, work / "narrow")
        narrow_s = time.monotonic() - started
        wide_bytes = size_of(client, f"{lake.parquet_root(PREFIX)}/car=", ".parquet")
        narrow_bytes = size_of(client, f"{NARROW}/", ".parquet")

        con = fleet_tool.duckdb_connection()
        fleet_tool.open_bucket(con, settings)
        sources = {
            "csv": f"read_csv('s3://{BUCKET}/{PREFIX}/*/*/*.csv', hive_partitioning = true, "
                   "union_by_name = true, filename = true)",
            "wide": f"read_parquet('s3://{BUCKET}/{lake.parquet_root(PREFIX)}/*/*/*.parquet', "
                    "hive_partitioning = true, union_by_name = true)",
            "narrow": f"read_parquet('s3://{BUCKET}/{NARROW}/*/*/*.parquet', "
                      "hive_partitioning = true)",
        }
        print(f"data: {len(CARS)} cars, 2 days, {len(files)} records, {rows:,} rows, "
              f"{min(len(c['columns']) for c in CARS.values()) + 1} to "
              f"{max(len(c['columns']) for c in CARS.values()) + 1} columns per car; "
              f"CSV {csv_bytes / 1e6:.1f} MB in the bucket")
        print(f"compaction, wide:   {wide_s:6.2f} s, {rows / wide_s:9,.0f} rows/s "
              f"({csv_bytes / 1e6 / wide_s:.1f} MB of CSV/s)")
        print(f"compaction, narrow: {narrow_s:6.2f} s, {rows / narrow_s:9,.0f} rows/s "
              f"({narrow_rows:,} narrow rows); wide takes {wide_s / narrow_s:.2f}x "
              "the narrow time")
        print(f"size: wide Parquet {wide_bytes / 1e6:.2f} MB, narrow {narrow_bytes / 1e6:.2f} MB;"
              f" CSV / wide {csv_bytes / wide_bytes:.1f}x, CSV / narrow "
              f"{csv_bytes / narrow_bytes:.1f}x, narrow / wide {narrow_bytes / wide_bytes:.2f}x")
        for title, forms in QUERIES.items():
            seconds: Dict[str, float] = {}
            answers = {}
            for form, sql in forms.items():
                text = sql.format(**sources)
                answers[form] = sorted(tuple(round(v, 6) if isinstance(v, float) else v
                                             for v in row)
                                       for row in con.execute(text).fetchall())
                seconds[form] = statistics.median(
                    timed(lambda: con.execute(text).fetchall()) for _ in range(args.repeat))
            agree = all(a == answers["wide"] for a in answers.values())
            print(f"query '{title}' (median of {args.repeat}): CSV {seconds['csv']:.3f} s, "
                  f"wide {seconds['wide']:.3f} s, narrow {seconds['narrow']:.3f} s; "
                  f"CSV / wide {seconds['csv'] / seconds['wide']:.1f}x, narrow / wide "
                  f"{seconds['narrow'] / seconds['wide']:.1f}x"
                  + ("" if agree else "  (ANSWERS DIFFER)"))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
