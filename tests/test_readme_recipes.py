"""The README's recipes, run as written: a reader copies them, so they must work."""
from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from eccm.sinks.records import manifest_from_file, write_manifest
from eccm.sinks.upload import S3Settings

from conftest import REPO, require_tool, write_config
from s3server import ACCESS_KEY, SECRET_KEY, SeaweedFS

README = (REPO / "README.md").read_text(encoding="utf-8")


def fenced(language: str) -> List[str]:
    """The README's code blocks of one language, in order."""
    return re.findall(rf"^ *```{language}\n(.*?)^ *```", README, re.M | re.S)


def test_quick_start_names_the_system_packages_ci_installs():
    """A new user installs what the README says; CI installs what .ci/run says: the same."""
    (line,) = [b for b in fenced("sh") if "apt-get install" in b]
    readme = set(line.split("apt-get install", 1)[1].split())
    ci = (REPO / ".ci" / "run").read_text()
    ci_packages = set(re.search(r"apt-get install -y -qq --no-install-recommends ([^\\\n]+)",
                                ci)[1].split())
    assert "socat" in ci_packages and readme == ci_packages


def test_rfcomm_unit_is_accepted_by_systemd(tmp_path):
    (unit,) = [block for block in fenced("ini") if "rfcomm bind" in block]
    unit = "\n".join(line.strip() for line in unit.splitlines()) + "\n"
    path = tmp_path / "eccm-rfcomm.service"
    path.write_text(unit)
    analyze = require_tool("systemd-analyze")
    assert require_tool("rfcomm") == "/usr/bin/rfcomm"  # verify checks that ExecStart exists
    done = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "eccm-rfcomm" not in done.stdout + done.stderr


# Two cars of different PID sets and column orders, over two days: the README's query must
# pair each value with its own column.
DRIVES = {
    ("CAR-A", "20260110T080000Z"): ("TIME (UTC),RPM (rpm),SPEED (km/h)", [(900, 10), (2500, 50)]),
    ("CAR-A", "20260111T080000Z"): ("TIME (UTC),RPM (rpm),SPEED (km/h)", [(1200, 30)]),
    ("CAR-B", "20260110T090000Z"): ("TIME (UTC),COOLANT_TEMP (degC),RPM (rpm)",
                                    [(90, 3100), (91, 3300), (92, 800)]),
}


def duckdb_recipe(marker: str, port: int):
    """The README's DuckDB block holding `marker`, run but for its last statement, with
    the reader's own values in place of its placeholders: (connection, last statement).
    DuckDB's extension server is out of reach here: the PyPI package's httpfs file."""
    import duckdb
    import duckdb_extension_httpfs
    (recipe,) = [block for block in fenced("sql") if marker in block]
    extension = next(Path(duckdb_extension_httpfs.__file__).parent.rglob(
        "httpfs.duckdb_extension"))
    assert recipe.startswith("INSTALL httpfs;\nLOAD httpfs;\n")
    sql = (recipe.replace("INSTALL httpfs;\nLOAD httpfs;", f"LOAD '{extension}';")
           .replace("my-access-key", ACCESS_KEY).replace("my-secret-key", SECRET_KEY)
           .replace("s3.example.net:8333", f"127.0.0.1:{port}"))
    con = duckdb.connect()
    statements = [s for s in sql.split(";") if s.strip()]
    for statement in statements[:-1]:
        con.execute(statement)
    return con, statements[-1]


def test_duckdb_fleet_query_runs_as_written(tmp_path):
    duckdb = pytest.importorskip("duckdb", reason="duckdb is a test extra")
    server = SeaweedFS(tmp_path / "s3")
    try:
        server.make_bucket("my-bucket")
        for car in ("CAR-A", "CAR-B"):
            outbox = tmp_path / car / "records" / "outbox"
            outbox.mkdir(parents=True)
            for (name, stamp), (header, rows) in DRIVES.items():
                if name == car:
                    path = outbox / f"{car}_{stamp}.csv"
                    path.write_text(header + "\n" + "".join(
                        f"2026-01-10T08:00:0{i}.000Z,{a},{b}\n" for i, (a, b) in enumerate(rows)))
                    write_manifest(path, manifest_from_file(path, [","]))  # as when closed
            config = write_config(tmp_path / car, CAR_IDENTIFIER=car,
                                  S3_SERVER_ENDPOINT=server.endpoint, S3_SERVER_AK=ACCESS_KEY,
                                  S3_SERVER_SK=SECRET_KEY, S3_SERVER_BUCKET="my-bucket")
            env = {k: v for k, v in os.environ.items() if not k.startswith("ECCM_")}
            env["PYTHONPATH"] = str(REPO)
            done = subprocess.run([sys.executable, "-m", "eccm", "upload", "--config",
                                   str(config)], capture_output=True, text=True, env=env,
                                  timeout=120)
            assert done.returncode == 0, done.stderr

        con, last = duckdb_recipe("CREATE SECRET fleet", server.port)
        got = [(car, str(date), rows, max_rpm)
               for car, date, rows, max_rpm in con.execute(last).fetchall()]
        assert got == [("CAR-A", "2026-01-10", 2, 2500), ("CAR-A", "2026-01-11", 1, 1200),
                       ("CAR-B", "2026-01-10", 3, 3300)]
        # Why the README insists on union_by_name: without it, a column that one car
        # lacks stops the read.
        every_column = ("SELECT * FROM read_csv('s3://my-bucket/car-logs/*/*/*.csv', "
                        "hive_partitioning = true, union_by_name = {})")
        with pytest.raises(duckdb.Error, match="schema mismatch"):
            con.execute(every_column.format("false")).fetchall()
        coolant = con.execute(
            f'SELECT car, "COOLANT_TEMP (degC)" FROM ({every_column.format("true")}) '
            'WHERE "COOLANT_TEMP (degC)" IS NOT NULL ORDER BY 2').fetchall()
        assert coolant == [("CAR-B", 90), ("CAR-B", 91), ("CAR-B", 92)]
    finally:
        server.stop()


def test_fleet_recipes_run_as_written(tmp_path, monkeypatch):
    """A fleet: the `eccm fleet` commands, DuckDB's SQL and pyspark's Python as written, on
    three cars of different PID sets over two days, each giving the figures computed from
    the CSV files; the Athena table's lines as `eccm fleet ddl` prints them."""
    pytest.importorskip("duckdb", reason="duckdb is a test extra")
    from fleet_data import figures, record_files, upload_copy, write_fleet
    from spark_local import local_spark
    server = SeaweedFS(tmp_path / "s3")
    try:
        server.make_bucket("my-bucket")
        records = write_fleet(tmp_path / "records")
        upload_copy(records, tmp_path / "up", S3Settings(
            server.endpoint, ACCESS_KEY, SECRET_KEY, "my-bucket", prefix="car-logs"))
        want = figures(record_files(records))
        for name in [k for k in os.environ if k.startswith("ECCM_")]:
            monkeypatch.delenv(name)
        for key, value in (("S3_SERVER_ENDPOINT", server.endpoint), ("S3_SERVER_AK", ACCESS_KEY),
                           ("S3_SERVER_SK", SECRET_KEY), ("S3_SERVER_BUCKET", "my-bucket")):
            monkeypatch.setenv(f"ECCM_{key}", value)  # the reader's keys, as in config.ini
        monkeypatch.setenv("PYTHONPATH", str(REPO))
        monkeypatch.chdir(tmp_path)

        (commands,) = [block for block in fenced("sh") if "eccm fleet compact" in block]
        printed = []
        for line in commands.splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["eccm"]:
                done = subprocess.run([sys.executable, "-m", *words], capture_output=True,
                                      text=True, timeout=120)
                assert done.returncode == 0, (line, done.stderr)
                printed.append(done.stdout)
        compacted, table, athena = printed
        assert "12 records to compact" in compacted and "12 compacted" in compacted
        assert f"```\n{table}```" in README  # the README shows what the query prints
        assert [line.split() for line in table.splitlines()[2:]] == [
            [car, str(f["rows"]), str(f["min_rpm"]), str(f["max_rpm"])]
            for car, f in want.items()]
        (shown,) = [block for block in fenced("sql") if "CREATE EXTERNAL TABLE" in block]
        lines = athena.splitlines()
        assert [line for line in shown.splitlines() if line not in lines] == []

        def same(rows) -> None:
            assert [(car, int(n), float(low), float(high), float(km))
                    for car, n, low, high, km in rows] == [
                (car, f["rows"], f["min_rpm"], f["max_rpm"], round(f["km"], 3))
                for car, f in want.items()]
            assert all(math.isfinite(f["km"]) and f["km"] > 1 for f in want.values())

        con, last = duckdb_recipe("read_parquet(", server.port)
        same(con.execute(last).fetchall())

        # Spark cannot reach S3 without hadoop-aws: the lake copied as `aws s3 sync` would.
        client = server.client()
        for page in client.get_paginator("list_objects_v2").paginate(
                Bucket="my-bucket", Prefix="car-logs-parquet/"):
            for item in page.get("Contents", []):
                target = tmp_path / "fleet-lake" / item["Key"][len("car-logs-parquet/"):]
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file("my-bucket", item["Key"], str(target))
        (code,) = [block for block in fenced("python") if "pyspark" in block]
        assert '["eccm", ' in code
        code = code.replace('["eccm", ', f'[{sys.executable!r}, "-m", "eccm", ')
        # The run's one Spark, which the recipe's getOrCreate() takes, without the table
        # another test left in it (a reader's new session has none).
        local_spark().sql("DROP TABLE IF EXISTS fleet")
        namespace: dict = {}
        exec(compile(code, "README.md (pyspark recipe)", "exec"), namespace)
        same([tuple(row) for row in namespace["figures"].collect()])
    finally:
        server.stop()


def test_readme_says_one_compactor_at_a_time_without_conditional_put():
    text = " ".join(README.split())
    assert "On a server without conditional PUT, two compactors at once are not safe: " \
        "run one compactor at a time there." in text
    assert "only a best effort" in text
