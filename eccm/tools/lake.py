"""The fleet's Parquet data lake: where its objects go, the schema every file follows, the
SQL that converts a record and the tables engines read it through. Pure functions, no I/O
(eccm/tools/fleet.py reads and writes the bucket).

Layout, beside the records' tree (layout.sibling_prefix), never inside it:

    PREFIX-parquet/car=CAR/date=DAY/NAME.parquet     one file per record, named after it
    PREFIX-parquet/_schema/v000001.json ...          the schema, one immutable version each

The table is wide: one column per signal, named for every engine (`rpm`, `tcm_speed`), with
the same type in every file. A signal's type is decided the first time it is seen with a
value and kept in the schema from then on, never written with a second type: a record whose
cells of a numeric signal are not all numbers puts that signal's column, whole and as
text, in the signal's text twin (`gear_text`, VARCHAR), leaving the numeric one NULL. A
signal seen for the first time adds a column to the schema; files written before simply
lack it, and engines that match Parquet columns by name (all of DuckDB, Spark, Athena and
Trino do) read NULL there, so history is never rewritten.

Column names do not depend on which car was compacted first: a standard ECCM value
(python-OBD's and ECCM's own mode-01 PIDs, the GNSS values, BATTERY_VOLTAGE, also behind an
ECU prefix such as TCM.) has its plain name (`speed`) only in ECCM's own unit (km/h); in any
other unit it is always named with the unit (`speed_mph`). Other signals (a profile's) take
the plain name in the first unit seen, unless it reads like a standard value's name.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from eccm.sinks.layout import key_partition, sibling_prefix

PARQUET_SUFFIX = "-parquet"
SCHEMA_FOLDER = "_schema"  # '_': Spark, Hive and Athena skip it when they read the tree
FORGOTTEN_FOLDER = "_forgotten"  # records `compact --forget` was told to stop taking
FORGOTTEN_FORMAT = "eccm-fleet-forgotten"
SCHEMA_FORMAT = "eccm-fleet-schema"

TIMESTAMP, DOUBLE, VARCHAR = "TIMESTAMP", "DOUBLE", "VARCHAR"
TIME_HEADER = "TIME (UTC)"
PARTITIONS = ("car", "date")

# The engines' names of the three types. Time is an instant (Parquet TIMESTAMP adjusted to
# UTC, microseconds); Trino's Hive connector reads it as timestamp(3).
ENGINE_TYPES = {
    "duckdb": {TIMESTAMP: "TIMESTAMPTZ", DOUBLE: "DOUBLE", VARCHAR: "VARCHAR"},
    "athena": {TIMESTAMP: "timestamp", DOUBLE: "double", VARCHAR: "string"},
    "trino": {TIMESTAMP: "timestamp(3)", DOUBLE: "double", VARCHAR: "varchar"},
    "spark": {TIMESTAMP: "TIMESTAMP", DOUBLE: "DOUBLE", VARCHAR: "STRING"},
}
ENGINES = ("athena", "trino", "spark")
TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,2}")
LOCATION_SCHEMES = {"athena": "s3", "trino": "s3", "spark": "s3a"}


@dataclass(frozen=True)
class LakeColumn:
    """One column of the table: its Parquet name, the record header it comes from."""
    column: str
    header: str
    name: str
    unit: str
    type: str
    source: str
    since: str = ""  # the record that brought it
    text_of: str = ""  # a text twin: the numeric column whose records with text it holds

    def describe(self) -> str:
        """A column comment: what the value is, in what unit, read from where."""
        if self.column == "record":
            return "the record file the row comes from"
        unit = f" in {self.unit}" if self.unit else ""
        if self.text_of:
            return (f"{self.name}{unit} ({self.source}) as text, for records where it is "
                    f"not only numbers ({self.text_of} is NULL there)")
        return f"{self.name}{unit} ({self.source})"


FIXED = (
    LakeColumn("time", TIME_HEADER, "TIME", "UTC", TIMESTAMP, "clock"),
    LakeColumn("record", "", "record", "", VARCHAR, "eccm"),
)
RESERVED = {c.column for c in FIXED} | set(PARTITIONS)


@dataclass(frozen=True)
class Schema:
    """Every column the lake's files may hold, the cars and the first day: what a table
    definition needs. `version` 0: nothing compacted yet."""
    version: int = 0
    columns: Tuple[LakeColumn, ...] = FIXED
    cars: Tuple[str, ...] = ()
    first_day: str = ""

    def by_header(self) -> Dict[str, LakeColumn]:
        """Each header's column (its text twin aside)."""
        return {c.header: c for c in self.columns if c.header and not c.text_of}

    def text_twins(self) -> Dict[str, LakeColumn]:
        """Each numeric header's text twin, for those that have one."""
        return {c.header: c for c in self.columns if c.text_of}

    def to_json(self) -> bytes:
        return (json.dumps({"format": SCHEMA_FORMAT, "version": self.version,
                            "layout": "wide",
                            "columns": [c.__dict__ for c in self.columns],
                            "cars": list(self.cars), "first_day": self.first_day},
                           indent=1, ensure_ascii=False) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> "Schema":
        """ValueError for anything but a schema this version can read."""
        try:
            doc = json.loads(data.decode("utf-8"))
            if doc.get("format") != SCHEMA_FORMAT:
                raise ValueError("not an ECCM fleet schema")
            columns = tuple(LakeColumn(**c) for c in doc["columns"])
            return cls(int(doc["version"]), columns, tuple(doc.get("cars", ())),
                       str(doc.get("first_day", "")))
        except (UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"unreadable fleet schema ({exc})") from None

    def merged(self, new: Sequence[LakeColumn], car: str, day: str) -> "Schema":
        """This schema with the columns of `new` whose header it lacks (named so as not to
        clash with any column it has), the car and the day; itself when nothing changes.
        Headers it has keep their column and type: the first decision stands. Text (a
        VARCHAR column in `new`) for a header whose column holds numbers adds that
        column's text twin, once."""
        known = self.by_header()
        twins = self.text_twins()
        taken = {c.column for c in self.columns} | RESERVED
        added: List[LakeColumn] = []
        for column in new:
            first = known.get(column.header)
            if first is not None:
                if first.type == DOUBLE and column.type == VARCHAR and \
                        column.header not in twins:
                    name = free_text_name(first.column, taken)
                    taken.add(name)
                    twins[column.header] = replace(column, column=name, text_of=first.column)
                    added.append(twins[column.header])
                continue
            name = free_column_name(column.name, column.unit, taken)
            taken.add(name)
            known[column.header] = column
            added.append(replace(column, column=name, text_of=""))
        cars = tuple(sorted(set(self.cars) | {car}))
        first = min([d for d in (self.first_day, day) if d] or [""])
        if not added and cars == self.cars and first == self.first_day:
            return self
        return Schema(self.version + 1, self.columns + tuple(added), cars, first)


def safe_name(text: str) -> str:
    """'TCM.SPEED' -> 'tcm_speed': lower-case letters, digits and '_', which every engine
    takes as a column name (Athena/Glue lower-case all names, Spark reads '.' as a field)."""
    name = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return name if name and not name[0].isdigit() else f"c_{name}"


# 'TCM.' or 'ECU7E9.': the prefix ECCM puts before a standard value read from another ECU
# (eccm.sources.obd.values.ecu_prefixes).
ECU_PREFIX = re.compile(r"(?:[A-Za-z0-9]{2,4}|ECU[0-9A-Fa-f]{1,8})\.(?P<name>.+)")
ECU_PREFIX_SAFE = re.compile(r"(?:[a-z0-9]{2,4}|ecu[0-9a-f]{1,8})_(?P<name>.+)")

_standard: Dict[str, str] = {}
_standard_safe: set = set()


def standard_units() -> Dict[str, str]:
    """Every standard ECCM value's name -> the unit ECCM always records it in: the OBD
    source's (python-OBD's mode-01 values, ECCM's own PIDs and the adapter's battery
    voltage, as eccm.sources.obd.values names them) and the GNSS columns."""
    if not _standard:
        from eccm.sources.gnss.columns import COLUMNS as GNSS_COLUMNS
        from eccm.sources.obd.values import standard_units as obd_units
        found = obd_units()  # only sources/obd imports python-OBD; the adapter's voltage too
        found.update({c.name: c.unit for c in GNSS_COLUMNS})
        _standard.update(found)
    return _standard


def standard_unit(name: str) -> Optional[str]:
    """The unit of a standard value's name (also behind an ECU prefix); None for any
    other name (a profile's signal)."""
    units = standard_units()
    if name in units:
        return units[name]
    match = ECU_PREFIX.fullmatch(name)
    return units.get(match["name"]) if match else None


def reads_as_standard(safe: str) -> bool:
    """A safe column name that a standard value takes (`speed`, `tcm_speed`)."""
    if not _standard_safe:
        _standard_safe.update(safe_name(n) for n in standard_units())
    names = _standard_safe
    match = ECU_PREFIX_SAFE.fullmatch(safe)
    return safe in names or bool(match and match["name"] in names)


def free_column_name(name: str, unit: str, taken: Iterable[str]) -> str:
    """The signal's column name, the same whichever car is compacted first:
    - a standard value in ECCM's own unit: its plain safe name (`speed`);
    - a standard value in another unit: always with the unit (`speed_mph`);
    - another signal: its plain name in the first unit seen, with the unit after that,
      and always with the unit when the plain name reads like a standard value's.
    Numbered as a last resort (two names that differ only by characters a column name
    cannot hold)."""
    taken = set(taken)
    plain = safe_name(name)
    with_unit = safe_name(f"{name}_{unit}" if unit else f"{name}_unitless")
    standard = standard_unit(name)
    if standard is not None:
        candidates = [plain, with_unit] if unit == standard else [with_unit]
    else:
        candidates = [with_unit] if reads_as_standard(plain) else [plain, with_unit]
    for candidate in candidates:
        if candidate not in taken:
            return candidate
    number = 2
    while f"{candidates[-1]}_{number}" in taken:
        number += 1
    return f"{candidates[-1]}_{number}"


def free_text_name(column: str, taken: Iterable[str]) -> str:
    """The name of a numeric column's text twin: `gear` -> `gear_text`."""
    taken = set(taken)
    name = f"{column}_text"
    number = 2
    while name in taken:
        name = f"{column}_text_{number}"
        number += 1
    return name


def parquet_root(prefix: str) -> str:
    return sibling_prefix(prefix, PARQUET_SUFFIX)


def parquet_key(prefix: str, record_key: str) -> str:
    """The Parquet object of the record stored under record_key: named after the record
    alone, so a second run finds it and never writes the rows twice."""
    car, day, name = key_partition(record_key)
    stem = name.rpartition(".")[0] or name
    return f"{parquet_root(prefix)}/car={car}/date={day}/{stem}.parquet"


def schema_key(prefix: str, version: int) -> str:
    return f"{parquet_root(prefix)}/{SCHEMA_FOLDER}/v{version:06d}.json"


def schema_version(key: str) -> Optional[int]:
    match = re.search(rf"/{SCHEMA_FOLDER}/v(\d+)\.json$", key)
    return int(match[1]) if match else None


def forgotten_key(prefix: str, record_key: str) -> str:
    """The marker that tells compact to stop taking the record stored under record_key."""
    car, day, name = key_partition(record_key)
    return f"{parquet_root(prefix)}/{FORGOTTEN_FOLDER}/car={car}/date={day}/{name}.json"


def record_key_of_forgotten(prefix: str, marker_key: str) -> Optional[str]:
    """forgotten_key's inverse; None for a key that is not a marker's."""
    parts = marker_key.split("/")
    if len(parts) < 3 or not parts[-3].startswith("car=") or \
            not parts[-2].startswith("date=") or not parts[-1].endswith(".json"):
        return None
    head = prefix.strip("/")
    return (f"{head + '/' if head else ''}{parts[-3]}/{parts[-2]}/"
            f"{parts[-1][:-len('.json')]}")


def record_key_of_index(prefix: str, index_key: str) -> str:
    """The record key an index entry key stands for (layout.index_key's inverse)."""
    parts = index_key.split("/")
    day, car, name = parts[-3][5:], parts[-2][4:], parts[-1][:-len(".json")]
    head = prefix.strip("/")
    return f"{head + '/' if head else ''}car={car}/date={day}/{name}"


def quote(identifier: str) -> str:
    """A double-quoted SQL identifier (DuckDB, Trino, Athena's queries)."""
    return '"' + identifier.replace('"', '""') + '"'


def literal(text: str) -> str:
    """A single-quoted SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def new_columns(headers: Sequence[Mapping[str, str]], counts: Mapping[str, Tuple[int, int]],
                since: str) -> List[LakeColumn]:
    """Columns for a record's headers, each typed by its cells: DOUBLE when every value
    is a number, VARCHAR otherwise (enumerations, FUEL_TYPE, a GNSS time of day). A header
    without any value gets no column yet: there is nothing to decide its type by.
    `counts`: header -> (values, values that are numbers)."""
    out = []
    for head in headers:
        values, numbers = counts.get(head["header"], (0, 0))
        if head["header"] == TIME_HEADER or values == 0:
            continue
        kind = DOUBLE if numbers == values and head.get("unit") != "UTC" else VARCHAR
        out.append(LakeColumn("", head["header"], head["name"], head.get("unit") or "", kind,
                              head.get("source") or "obd", since))
    return out


def record_columns(schema: Schema, headers: Sequence[str],
                   counts: Mapping[str, Tuple[int, int]]) -> List[Tuple[str, LakeColumn]]:
    """(header, the lake column its cells go to) for a record's headers after the time:
    the header's column; for a header whose column holds numbers while this record has
    text in it, the column's text twin (the record's whole column, as text: a value is
    never split between two columns by row). Headers the schema has no column for (no
    value yet) are left out. ValueError for text with no twin in the schema (merge the
    record's new_columns first)."""
    known = schema.by_header()
    twins = schema.text_twins()
    out = []
    for header in headers[1:]:
        column = known.get(header)
        if column is None:
            continue
        values, numbers = counts.get(header, (0, 0))
        if column.type == DOUBLE and numbers != values:
            if header not in twins:
                raise ValueError(f"{header} holds text and the lake's column "
                                 f"{column.column} has no text twin")
            column = twins[header]
        out.append((header, column))
    return out


def convert_sql(columns: Sequence[Tuple[str, LakeColumn]], headers: Sequence[str],
                csv_path: str, separator: str, record_name: str) -> str:
    """The SELECT that reads one record (every cell as text, as written) into the lake's
    columns and types (`columns`: record_columns)."""
    select = [f"CAST({quote(TIME_HEADER)} AS TIMESTAMPTZ) AS time",
              f"{literal(record_name)} AS record"]
    for header, column in columns:
        cell = quote(header)
        select.append(f"{cell if column.type == VARCHAR else f'CAST({cell} AS DOUBLE)'}"
                      f" AS {quote(column.column)}")
    return f"SELECT {', '.join(select)} FROM {read_csv_sql(headers, csv_path, separator)}"


def read_csv_sql(headers: Sequence[str], csv_path: str, separator: str) -> str:
    """read_csv of a record with its own header, every cell as text: nothing guessed."""
    columns = ", ".join(f"{literal(h)}: 'VARCHAR'" for h in headers)
    return (f"read_csv({literal(csv_path)}, header = true, auto_detect = false, "
            f"delim = {literal(separator)}, quote = '\"', escape = '\"', "
            f"columns = {{{columns}}})")


# A number as ECCM writes one: finite, decimal (not nan, inf, 1_000, 0x10 or 1e400).
NUMBER_RE = r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?"


def count_sql(headers: Sequence[str], csv_path: str, separator: str) -> str:
    """Per column after the time: how many values, how many of them numbers (NUMBER_RE
    and finite as a DOUBLE)."""
    parts = []
    for header in headers[1:]:
        cell = quote(header)
        parts.append(f"count({cell}), count(CASE WHEN regexp_full_match({cell}, "
                     f"{literal(NUMBER_RE)}) AND isfinite(TRY_CAST({cell} AS DOUBLE)) "
                     "THEN 1 END)")
    return (f"SELECT count(*){', ' if parts else ''}{', '.join(parts)} "
            f"FROM {read_csv_sql(headers, csv_path, separator)}")


def file_metadata(record: Sequence[Tuple[str, LakeColumn]], entry: Mapping[str, Any],
                  compacted_by: str) -> Dict[str, str]:
    """Parquet key-value metadata: each column's unit and origin, and where the rows come
    from, so a file is understood without the schema or the manifest at hand (`record`:
    record_columns)."""
    columns = [c for c in FIXED] + [c for _, c in record]
    return {
        "eccm.units": json.dumps({c.column: c.unit for c in columns}, ensure_ascii=False),
        "eccm.columns": json.dumps([{k: getattr(c, k) for k in
                                     ("column", "header", "name", "unit", "type", "source",
                                      "text_of")}
                                    for c in columns], ensure_ascii=False),
        "eccm.record": str(entry.get("key", "")),
        "eccm.record_sha256": str(entry.get("sha256", "")),
        "eccm.car": str(entry.get("car", "")),
        "eccm.vin": str(entry.get("vin") or ""),
        "eccm.start": str(entry.get("start") or ""),
        "eccm.end": str(entry.get("end") or ""),
        "eccm.recorded_by": str(entry.get("eccm_version") or ""),
        "eccm.profiles": json.dumps(entry.get("profiles") or []),
        "eccm.compacted_by": compacted_by,
    }


def copy_sql(select: str, target: str, metadata: Mapping[str, str]) -> str:
    pairs = ", ".join(f"{literal(k)}: {literal(v)}" for k, v in metadata.items())
    return (f"COPY ({select}) TO {literal(target)} "
            f"(FORMAT parquet, COMPRESSION zstd, KV_METADATA {{{pairs}}})")


def _comment(text: str) -> str:
    """Comment text safe inside every engine's quotes (and in a script split at ';')."""
    return text.replace("'", "").replace("\\", "/").replace(";", ",")


def location(engine: str, bucket: str, prefix: str) -> str:
    return f"{LOCATION_SCHEMES[engine]}://{bucket}/{parquet_root(prefix)}/"


def ddl(schema: Schema, engine: str, table: str, where: str) -> str:
    """The table definition of the lake for Athena, Trino (Hive connector) or Spark SQL:
    every column by name with its type and unit, partitioned by car and date. Athena and
    Trino project the partitions (car: the cars compacted so far, date: from the first
    day to today) so no partition is ever registered; Spark finds them by listing.
    It re-creates the table (DROP TABLE IF EXISTS, then CREATE): the schema's new
    columns and cars reach a table made by an earlier run. The table is external (it
    has a location), so DROP leaves the Parquet files alone in every engine."""
    types = ENGINE_TYPES[engine]
    days = schema.first_day or "2020-01-01"
    cars = list(schema.cars) or ["NONE"]
    base = where if where.endswith("/") else where + "/"
    template = base + "car=${car}/date=${date}/"
    drop = f"DROP TABLE IF EXISTS {table};\n"
    if engine == "athena":
        body = ",\n".join(f"  `{c.column}` {types[c.type]} COMMENT '{_comment(c.describe())}'"
                          for c in schema.columns)
        props = {
            "projection.enabled": "true",
            "projection.car.type": "enum",
            "projection.car.values": ",".join(cars),
            "projection.date.type": "date",
            "projection.date.format": "yyyy-MM-dd",
            "projection.date.range": f"{days},NOW",
            "projection.date.interval": "1",
            "projection.date.interval.unit": "DAYS",
            "storage.location.template": template,
        }
        listed = ",\n".join(f"  '{k}' = '{v}'" for k, v in props.items())
        return (f"{drop}CREATE EXTERNAL TABLE {table} (\n{body}\n)\n"
                f"PARTITIONED BY (`car` string, `date` string)\n"
                f"STORED AS PARQUET\nLOCATION '{base}'\n"
                f"TBLPROPERTIES (\n{listed}\n);\n")
    if engine == "trino":
        body = [f"  {quote(c.column)} {types[c.type]} COMMENT '{_comment(c.describe())}'"
                for c in schema.columns]
        values = ", ".join(f"'{car}'" for car in cars)
        body.append(f"  \"car\" varchar WITH (partition_projection_type = 'ENUM', "
                    f"partition_projection_values = ARRAY[{values}])")
        body.append("  \"date\" varchar WITH (partition_projection_type = 'DATE', "
                    "partition_projection_format = 'yyyy-MM-dd', "
                    f"partition_projection_range = ARRAY['{days}', 'NOW'], "
                    "partition_projection_interval = 1, "
                    "partition_projection_interval_unit = 'DAYS')")
        return (f"{drop}CREATE TABLE {table} (\n" + ",\n".join(body) + "\n)\n"
                f"WITH (\n  external_location = '{base}',\n  format = 'PARQUET',\n"
                f"  partitioned_by = ARRAY['car', 'date'],\n"
                f"  partition_projection_enabled = true,\n"
                f"  partition_projection_location_template = '{template}'\n);\n")
    if engine == "spark":
        body = [f"  `{c.column}` {types[c.type]} COMMENT '{_comment(c.describe())}'"
                for c in schema.columns] + ["  `car` STRING", "  `date` STRING"]
        return (f"{drop}CREATE TABLE {table} (\n" + ",\n".join(body) + "\n)\n"
                f"USING parquet\nPARTITIONED BY (`car`, `date`)\nLOCATION '{base}';\n"
                f"MSCK REPAIR TABLE {table};\n")
    raise ValueError(f"unknown engine {engine!r}: one of {', '.join(ENGINES)}")


# The names `eccm fleet query` gives the fleet's data, each a DuckDB view made only when
# the query names it (making one reads every file's header or footer).
VIEW_NAMES = ("fleet", "fleet_csv", "drives")
# What the views read, set by eccm/tools/fleet.py from its listings of the bucket: the
# lake's own Parquet files, the records' files by separator (DuckDB variables, lists of
# URLs) and the records that are in the lake (a table, for drives.in_lake).
LAKE_FILES = "eccm_lake_files"
CSV_FILES = "eccm_csv_files_{}"
LAKE_RECORDS = "eccm_lake_records"
INDEX_TABLE = "eccm_index"  # (filename, content): the valid index entries, as text
PARTITIONS_SQL = "hive_partitioning = true, hive_types = {'car': VARCHAR, 'date': DATE}"
# The index entry's fields (layout.index_entry) as `drives` gives them, whatever the
# entries hold (a field all null would otherwise come out as a number): DuckDB's
# json_transform structure; a value of another shape reads NULL. Then, read from text:
ENTRY_STRUCTURE = {
    "format": "VARCHAR", "key": "VARCHAR", "manifest": "VARCHAR", "car": "VARCHAR",
    "date": "VARCHAR", "file": "VARCHAR", "vin": "VARCHAR", "start": "VARCHAR",
    "end": "VARCHAR", "rows": "BIGINT", "size": "BIGINT", "sha256": "VARCHAR",
    "separator": "VARCHAR", "eccm_version": "VARCHAR", "profiles": ["VARCHAR"],
    "columns": [{"name": "VARCHAR", "unit": "VARCHAR", "header": "VARCHAR",
                 "source": "VARCHAR"}],
}
ENTRY_TYPES = {"start": "TIMESTAMPTZ", "end": "TIMESTAMPTZ", "date": "DATE"}


def views_sql(named: Iterable[str], separators: Sequence[str] = (),
              entry_structure: str = "") -> List[str]:
    """CREATE VIEW statements for the views a query names:
    - `fleet`: the Parquet table: exactly the files of the LAKE_FILES variable, never a
      glob, so a file someone else put under the tree never becomes fleet rows;
    - `fleet_csv`: the records themselves, columns matched by header name: one read_csv
      per separator (`separators[i]` reads the files of variable CSV_FILES.format(i)),
      UNION ALL BY NAME;
    - `drives`: the index, one row per record (the entries of INDEX_TABLE: the fields
      of ENTRY_STRUCTURE, then any other field of `entry_structure`, DuckDB's
      json_group_structure of them), with `in_lake`: whether its rows are in `fleet`
      (its key in the LAKE_RECORDS table)."""
    wanted = set(named)
    out = []
    if "fleet" in wanted:
        out.append(f"CREATE VIEW fleet AS SELECT * FROM read_parquet("
                   f"getvariable({literal(LAKE_FILES)}), union_by_name = true, "
                   f"{PARTITIONS_SQL})")
    if "fleet_csv" in wanted:
        parts = [f"SELECT * FROM read_csv(getvariable({literal(CSV_FILES.format(i))}), "
                 f"header = true, delim = {literal(sep)}, quote = '\"', escape = '\"', "
                 f"union_by_name = true, {PARTITIONS_SQL})"
                 for i, sep in enumerate(separators)]
        out.append("CREATE VIEW fleet_csv AS " + " UNION ALL BY NAME ".join(parts))
    if "drives" in wanted:
        found = json.loads(entry_structure) if entry_structure else {}
        fields = {**ENTRY_STRUCTURE, **{k: v for k, v in found.items()
                                        if k not in ENTRY_STRUCTURE and k != "in_lake"}}
        typed = ", ".join(f"TRY_CAST({quote(name)} AS {kind}) AS {quote(name)}"
                          for name, kind in ENTRY_TYPES.items())
        out.append(f"CREATE VIEW drives AS SELECT * REPLACE ({typed}), key IN (SELECT key "
                   f"FROM {LAKE_RECORDS}) AS in_lake FROM (SELECT unnest(from_json("
                   f"content, {literal(json.dumps(fields))})) FROM {INDEX_TABLE})")
    return out


def views_named(sql: str) -> List[str]:
    """The view names a query mentions (as words, any case)."""
    words = {w.lower() for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", sql)}
    return [name for name in VIEW_NAMES if name in words]


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows as an aligned text table (NULL for None), numbers right-aligned."""
    def text(value: Any) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, float):
            return repr(value)
        return str(value)
    cells = [[text(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] is None for row in rows)
               and any(row[i] is not None for row in rows) for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip()
    return "\n".join([line(columns), line(["-" * w for w in widths])] +
                     [line(r) for r in cells])
