"""The lake's pure rules (eccm/tools/lake.py, the index names in eccm/sinks/layout.py):
names every engine takes, one type per signal, keys that only depend on the record."""
from __future__ import annotations

import pytest

from eccm.sinks.layout import index_entry, index_key, sibling_prefix, valid_separator
from eccm.sources.obd.values import VOLTAGE_COLUMN
from eccm.tools.lake import (DOUBLE, VARCHAR, LakeColumn, Schema, ddl,
                             forgotten_key, free_column_name, new_columns, parquet_key,
                             record_columns, record_key_of_forgotten, record_key_of_index,
                             safe_name, schema_key, schema_version, standard_units,
                             views_named, views_sql)

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
    assert record_key_of_forgotten("car-logs", forgotten_key("car-logs", KEY)) == KEY
    assert forgotten_key("car-logs", KEY).startswith("car-logs-parquet/_forgotten/car=AB-1/")
    # A manifest whose columns are not a list of columns: the entry keeps them as they
    # are (the compactor refuses it, saying why) and the uploader does not crash.
    assert index_entry({"columns": "oops"}, KEY)["columns"] == "oops"
    assert [valid_separator(s) for s in (",", "\t", "|", ";", " ")] == [True] * 5
    assert [valid_separator(s) for s in ("ab", 7, "", '"', "\n", "a", "7", None)] == \
        [False] * 8


def test_column_names_every_engine_takes_and_never_two_signals_in_one():
    assert safe_name("TCM.SPEED") == "tcm_speed" and safe_name("ECU7EA.RPM") == "ecu7ea_rpm"
    assert safe_name("2ND_O2") == "c_2nd_o2"
    assert free_column_name("SPEED", "mph", {"speed"}) == "speed_mph"
    assert free_column_name("GEAR", "", {"gear"}) == "gear_unitless"
    assert free_column_name("GEAR", "", {"gear", "gear_unitless"}) == "gear_unitless_2"
    assert free_column_name("TIME", "s", {"time", "record", "car", "date"}) == "time_s"


def names(schema):
    return {c.header: c.column for c in schema.columns if c.header}


@pytest.mark.parametrize("order", [1, -1])
def test_a_standard_value_has_its_plain_name_only_in_its_own_unit_whatever_comes_first(
        order):
    """`speed` is km/h in every lake, whichever car is compacted first: a US car's mph
    is `speed_mph` even when it is the first car. A profile's signal keeps its plain name
    in the first unit seen, unless the name reads like a standard value's."""
    cars = [("US-1", [LakeColumn("", "SPEED (mph)", "SPEED", "mph", DOUBLE, "obd"),
                      LakeColumn("", "GEAR", "GEAR", "", DOUBLE, "profile"),
                      LakeColumn("", "TCM_SPEED (km/h)", "TCM_SPEED", "km/h", DOUBLE,
                                 "profile"),
                      LakeColumn("", "SPEED", "SPEED", "", DOUBLE, "profile")]),
            ("EU-1", [LakeColumn("", "SPEED (km/h)", "SPEED", "km/h", DOUBLE, "obd"),
                      LakeColumn("", "TCM.SPEED (km/h)", "TCM.SPEED", "km/h", DOUBLE, "obd"),
                      LakeColumn("", "BATTERY_VOLTAGE (V)", "BATTERY_VOLTAGE", "V", DOUBLE,
                                 "adapter"),
                      LakeColumn("", "GNSS_SPEED (km/h)", "GNSS_SPEED", "km/h", DOUBLE,
                                 "gnss")])]
    schema = Schema()
    for car, columns in cars[::order]:
        schema = schema.merged(columns, car, "2026-03-05")
    assert names(schema) == {
        "TIME (UTC)": "time", "SPEED (mph)": "speed_mph", "SPEED (km/h)": "speed",
        "SPEED": "speed_unitless", "GEAR": "gear", "TCM_SPEED (km/h)": "tcm_speed_km_h",
        "TCM.SPEED (km/h)": "tcm_speed", "BATTERY_VOLTAGE (V)": "battery_voltage",
        "GNSS_SPEED (km/h)": "gnss_speed_km_h"}
    # The standard values and units are ECCM's own (GNSS speed is m/s there).
    units = standard_units()
    assert (units["SPEED"], units["RPM"], units["GNSS_SPEED"], units["LATITUDE"],
            units["ACTUAL_ENGINE_TORQUE"], units["STATUS_MIL"]) == \
        ("km/h", "rpm", "m/s", "deg", "%", "")
    assert units[VOLTAGE_COLUMN.name] == VOLTAGE_COLUMN.unit  # the OBD source's own list
    # A profile's signal: the first unit keeps the plain name, the next one has its unit.
    later = schema.merged([LakeColumn("", "GEAR (ratio)", "GEAR", "ratio", DOUBLE,
                                      "profile")], "EU-1", "2026-03-05")
    assert names(later)["GEAR (ratio)"] == "gear_ratio"


def heads(*headers):
    return [{"header": h, "name": h.split(" (")[0],
             "unit": h.split(" (")[1][:-1] if " (" in h else "", "source": "obd"}
            for h in headers]


def test_a_signals_first_type_stands_and_text_goes_to_its_twin():
    counts = {"RPM (rpm)": (10, 10), "FUEL_TYPE": (10, 0), "NEVER (s)": (0, 0)}
    new = new_columns(heads("TIME (UTC)", "RPM (rpm)", "FUEL_TYPE", "NEVER (s)"), counts,
                      "a.csv")
    assert [(c.header, c.type) for c in new] == [("RPM (rpm)", DOUBLE),
                                                 ("FUEL_TYPE", VARCHAR)]
    schema = Schema().merged(new, "AB-1", "2026-03-05")
    assert schema.version == 1 and schema.cars == ("AB-1",)
    assert schema.merged(new, "AB-1", "2026-03-06") is schema  # nothing new: no version
    # A record with text in RPM: the column stays DOUBLE, its text twin is added once,
    # and that record's whole RPM column goes there (numbers too: never split by row).
    later = [LakeColumn("", "RPM (rpm)", "RPM", "rpm", VARCHAR, "obd")]
    wider = schema.merged(later, "CD-2", "2026-03-01")
    assert wider.by_header()["RPM (rpm)"].type == DOUBLE
    twin = wider.text_twins()["RPM (rpm)"]
    assert (twin.column, twin.type, twin.text_of, twin.unit) == ("rpm_text", VARCHAR, "rpm",
                                                                 "rpm")
    assert wider.merged(later, "CD-2", "2026-03-01") is wider  # once
    headers = ["TIME (UTC)", "RPM (rpm)", "FUEL_TYPE", "NEVER (s)"]
    assert [(h, c.column) for h, c in record_columns(
        wider, headers, {"RPM (rpm)": (5, 4), "FUEL_TYPE": (5, 5)})] == \
        [("RPM (rpm)", "rpm_text"), ("FUEL_TYPE", "fuel_type")]
    assert [(h, c.column) for h, c in record_columns(
        wider, headers, {"RPM (rpm)": (5, 5), "FUEL_TYPE": (5, 0)})] == \
        [("RPM (rpm)", "rpm"), ("FUEL_TYPE", "fuel_type")]
    with pytest.raises(ValueError, match="no text twin"):
        record_columns(schema, headers, {"RPM (rpm)": (5, 4)})
    back = Schema.from_json(wider.to_json())
    assert back == wider


def test_ddl_projects_partitions_and_views_are_made_only_when_named():
    schema = Schema().merged([LakeColumn("", "RPM (rpm)", "RPM", "rpm", DOUBLE, "obd")],
                             "AB-1", "2026-03-05")
    athena = ddl(schema, "athena", "fleet", "s3://b/car-logs-parquet/")
    assert "'projection.date.range' = '2026-03-05,NOW'" in athena
    assert "`rpm` double COMMENT 'RPM in rpm (obd)'" in athena
    spark = ddl(schema, "spark", "db.fleet", "file:///lake")
    assert "LOCATION 'file:///lake/'" in spark and "MSCK REPAIR TABLE db.fleet" in spark
    # Printed again after a new car or signal, it re-creates the table in every engine:
    # a CREATE ... IF NOT EXISTS would leave the old columns and cars in place.
    for engine in ("athena", "trino", "spark"):
        text = ddl(schema, engine, "db.fleet", "s3://b/car-logs-parquet/")
        assert text.startswith("DROP TABLE IF EXISTS db.fleet;\nCREATE ")
        assert "IF NOT EXISTS" not in text.split("\n", 1)[1]
    assert views_named("SELECT * FROM Fleet JOIN drives USING (car)") == ["fleet", "drives"]
    # `fleet` reads the files the compactor listed, never a glob over the tree;
    # `fleet_csv` one read_csv per separator.
    (fleet,) = views_sql(["fleet"])
    assert "getvariable('eccm_lake_files')" in fleet and "*" not in fleet.split("FROM", 1)[1]
    (csv,) = views_sql(["fleet_csv"], [",", "\t", "|"])
    assert csv.count("read_csv(getvariable('eccm_csv_files_") == 3
    assert csv.count("UNION ALL BY NAME") == 2 and "delim = '\t'" in csv
    # `drives`: the entry's own fields with their types whatever the entries hold (a VIN
    # null in every entry stays text), other fields as DuckDB finds them.
    (drives,) = views_sql(["drives"], entry_structure='{"key": "VARCHAR", "vin": "NULL", '
                          '"extra": "UBIGINT"}')
    assert 'REPLACE (TRY_CAST("start" AS TIMESTAMPTZ) AS "start", ' in drives
    assert '"vin": "VARCHAR"' in drives and '"extra": "UBIGINT"' in drives
    assert "AS in_lake" in drives and "eccm_index" in drives


def test_only_finite_decimal_numbers_count_as_numbers(tmp_path):
    """nan, inf, Infinity, 1_000, 1e400: DuckDB casts them to a DOUBLE, but ECCM never
    writes them as numbers: such a column is text (its record goes to the _text twin)."""
    import duckdb
    from eccm.tools.lake import count_sql
    path = tmp_path / "r.csv"
    cells = ["nan", "inf", "Infinity", "1_000", "1e400", "-1.5e-05", "12", ""]
    path.write_text("TIME (UTC),X (V)\n" + "".join(f"{i},{c}\n" for i, c in enumerate(cells)))
    row = duckdb.connect().execute(count_sql(["TIME (UTC)", "X (V)"], str(path), ",")
                                   ).fetchone()
    assert row == (8, 7, 2)
    for cell in cells[:5]:
        counts = {"X (V)": (1, duckdb.connect().execute(count_sql(
            ["TIME (UTC)", "X (V)"], str(path), ",") + f" WHERE \"X (V)\" = '{cell}'"
        ).fetchone()[2])}
        (column,) = new_columns([{"header": "X (V)", "name": "X", "unit": "V"}], counts, "d")
        assert column.type == VARCHAR, cell
