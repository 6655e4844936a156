"""The lake's pure rules (eccm/tools/lake.py, the index names in eccm/sinks/layout.py):
names every engine takes, one type per signal, keys that only depend on the record."""
from __future__ import annotations

from eccm.sinks.layout import index_entry, index_key, sibling_prefix
from eccm.tools.lake import (DOUBLE, VARCHAR, LakeColumn, Schema, ddl, free_column_name,
                             misfits, new_columns, parquet_key, record_key_of_index,
                             safe_name, schema_key, schema_version, views_named)

KEY = "car-logs/car=AB-1/date=2026-03-05/AB-1_20260305T235959Z_000042-7f3a9c-dup1.csv"


def test_keys_depend_on_the_record_alone_and_sit_beside_the_records():
    assert index_key("car-logs", KEY) == ("car-logs-index/date=2026-03-05/car=AB-1/"
                                          "AB-1_20260305T235959Z_000042-7f3a9c-dup1.csv.json")
    assert record_key_of_index("car-logs", index_key("car-logs", KEY)) == KEY
    assert parquet_key("car-logs", KEY) == ("car-logs-parquet/car=AB-1/date=2026-03-05/"
                                            "AB-1_20260305T235959Z_000042-7f3a9c-dup1.parquet")
    bare = KEY.split("/", 1)[1]  # S3_KEY_PREFIX empty: records at the bucket's root
    assert index_key("", bare).startswith("index/date=2026-03-05/car=AB-1/")
    assert record_key_of_index("", index_key("", bare)) == bare
    assert sibling_prefix("fleet/logs/", "-parquet") == "fleet/logs-parquet"
    assert schema_version(schema_key("car-logs", 12)) == 12
    entry = index_entry({"file": "x.csv", "sha256": "ab", "columns": [
        {"name": "RPM", "unit": "rpm", "header": "RPM (rpm)", "source": "obd"}]}, KEY)
    assert (entry["car"], entry["date"], entry["manifest"]) == \
        ("AB-1", "2026-03-05", KEY + ".manifest.json")


def test_column_names_every_engine_takes_and_never_two_signals_in_one():
    assert safe_name("TCM.SPEED") == "tcm_speed" and safe_name("ECU7EA.RPM") == "ecu7ea_rpm"
    assert safe_name("2ND_O2") == "c_2nd_o2"
    assert free_column_name("SPEED", "mph", {"speed"}) == "speed_mph"
    assert free_column_name("TCM_SPEED", "", {"tcm_speed"}) == "tcm_speed_2"
    assert free_column_name("TIME", "s", {"time", "record", "car", "date"}) == "time_s"


def heads(*headers):
    return [{"header": h, "name": h.split(" (")[0],
             "unit": h.split(" (")[1][:-1] if " (" in h else "", "source": "obd"}
            for h in headers]


def test_a_signals_first_type_stands_and_a_misfit_is_named():
    counts = {"RPM (rpm)": (10, 10), "FUEL_TYPE": (10, 0), "NEVER (s)": (0, 0)}
    new = new_columns(heads("TIME (UTC)", "RPM (rpm)", "FUEL_TYPE", "NEVER (s)"), counts,
                      "a.csv")
    assert [(c.header, c.type) for c in new] == [("RPM (rpm)", DOUBLE),
                                                 ("FUEL_TYPE", VARCHAR)]
    schema = Schema().merged(new, "AB-1", "2026-03-05")
    assert schema.version == 1 and schema.cars == ("AB-1",)
    assert schema.merged(new, "AB-1", "2026-03-06") is schema  # nothing new: no version
    later = [LakeColumn("", "RPM (rpm)", "RPM", "rpm", VARCHAR, "obd")]
    assert schema.merged(later, "CD-2", "2026-03-01").by_header()["RPM (rpm)"].type == DOUBLE
    assert misfits(schema, {"RPM (rpm)": (5, 4), "FUEL_TYPE": (5, 5)}) == ["RPM (rpm)"]
    back = Schema.from_json(schema.to_json())
    assert back == schema


def test_ddl_projects_partitions_and_views_are_made_only_when_named():
    schema = Schema().merged([LakeColumn("", "RPM (rpm)", "RPM", "rpm", DOUBLE, "obd")],
                             "AB-1", "2026-03-05")
    athena = ddl(schema, "athena", "fleet", "s3://b/car-logs-parquet/")
    assert "'projection.date.range' = '2026-03-05,NOW'" in athena
    assert "`rpm` double COMMENT 'RPM in rpm (obd)'" in athena
    spark = ddl(schema, "spark", "db.fleet", "file:///lake")
    assert "LOCATION 'file:///lake/'" in spark and "MSCK REPAIR TABLE db.fleet" in spark
    assert views_named("SELECT * FROM Fleet JOIN drives USING (car)") == ["fleet", "drives"]
