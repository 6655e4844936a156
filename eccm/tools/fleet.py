"""`eccm fleet`: the fleet's side of ECCM, on a server or a laptop (not the car's Pi), over
the bucket the cars upload to. DuckDB converts and queries; boto3 reads and writes.

compact: every record not yet in the Parquet lake (eccm/tools/lake.py) is fetched, checked
    against its SHA-256, converted locally and put in one conditional PUT: an object
    appears whole or not at all (S3 PUTs are atomic), under a name that depends only on
    its record, so a run killed at any point and run again skips what is done and never
    writes a row twice. The schema grows by immutable versions, each created only if its
    key is free (If-None-Match): two compactors at once cannot lose a column or give a
    signal two types; the one that loses the race reads the winner's and goes on.
query: SQL over the whole fleet through DuckDB's httpfs: the Parquet table, the records
    themselves and the index.
ddl: the Athena, Trino or Spark table of the lake, from its schema.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from eccm import __version__
from eccm.sinks.layout import (INDEX_SUFFIX, MANIFEST_SUFFIX, ManifestError, index_entry,
                               key_partition, load_manifest, parse_header, sibling_prefix)
from eccm.sinks.upload import (S3Settings, classify, endpoint_url, make_client,
                               put_refusal)
from eccm.tools import lake
from eccm.tools.lake import Schema

PARQUET_TYPE = "application/vnd.apache.parquet"
SCHEMA_ATTEMPTS = 20  # schema versions lost to other compactors before giving up


class FleetError(Exception):
    """A problem said in one sentence to the user (the bucket, the keys, the lake)."""


class Missing(FleetError):
    """An object that is not (or no longer) in the bucket."""


class Refused(Exception):
    """This record is not compacted (why is the message); the others go on."""


class Bucket:
    """The S3 operations of the fleet commands, with one client. S3 errors come out as
    FleetError with the uploader's wording (keys are never part of it)."""

    def __init__(self, settings: S3Settings, client: Any = None):
        self.settings = settings
        self.name = settings.bucket
        self.client = client or make_client(settings)

    def _fail(self, exc: Exception, key: str = "") -> FleetError:
        from botocore.exceptions import ClientError
        if key and isinstance(exc, ClientError) and \
                exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return Missing(f"s3://{self.name}/{key} is not in the bucket")
        return FleetError(str(classify(exc, self.settings.endpoint)))

    def keys(self, prefix: str, start_after: str = "") -> Iterator[str]:
        from botocore.exceptions import BotoCoreError, ClientError
        args: Dict[str, Any] = {"Bucket": self.name, "Prefix": prefix}
        if start_after:
            args["StartAfter"] = start_after
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(**args):
                for item in page.get("Contents", []):
                    yield item["Key"]
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc) from None

    def read(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, key) from None

    def download(self, key: str, path: Path) -> str:
        """The object into path; its SHA-256."""
        from botocore.exceptions import BotoCoreError, ClientError
        digest = hashlib.sha256()
        try:
            body = self.client.get_object(Bucket=self.name, Key=key)["Body"]
            with open(path, "wb") as fh:
                for block in iter(lambda: body.read(1 << 20), b""):
                    digest.update(block)
                    fh.write(block)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, key) from None
        return digest.hexdigest()

    def head(self, key: str) -> Optional[Dict[str, Any]]:
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            return self.client.head_object(Bucket=self.name, Key=key)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404 or exc.response.get("Error", {}).get("Code") in ("404",
                                                                               "NoSuchKey"):
                return None
            raise self._fail(exc) from None
        except BotoCoreError as exc:
            raise self._fail(exc) from None

    def put_new(self, key: str, data: bytes, content_type: str,
                metadata: Optional[Dict[str, str]] = None) -> bool:
        """Create key with data in one PUT only if the key is free; False if it was taken
        (by another compactor). On a server without conditional PUT, a HEAD just before
        is the guard, as for the uploader."""
        from botocore.exceptions import BotoCoreError, ClientError
        sha = hashlib.sha256(data).hexdigest()
        args = dict(Bucket=self.name, Key=key, Body=data, ContentType=content_type,
                    ContentMD5=base64.b64encode(hashlib.md5(data).digest()).decode(),
                    Metadata={"sha256": sha, **(metadata or {})})
        try:
            try:
                self.client.put_object(IfNoneMatch="*", **args)
            except ClientError as exc:
                refusal = put_refusal(exc)
                if refusal == "taken":
                    return False
                if refusal != "unsupported":
                    raise
                if self.head(key) is not None:
                    return False
                self.client.put_object(**args)
            head = self.head(key)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc) from None
        if head is None or head.get("ContentLength") != len(data) or \
                head.get("Metadata", {}).get("sha256") != sha:
            raise FleetError(f"s3://{self.name}/{key}: the server's copy does not match "
                             "what was sent")
        return True


def load_schema(bucket: Bucket, prefix: str) -> Schema:
    """The newest schema version in the bucket; an empty schema before the first."""
    folder = f"{lake.parquet_root(prefix)}/{lake.SCHEMA_FOLDER}/"
    versions = [(v, k) for k in bucket.keys(folder)
                for v in [lake.schema_version(k)] if v is not None]
    if not versions:
        return Schema()
    key = max(versions)[1]
    try:
        return Schema.from_json(bucket.read(key))
    except ValueError as exc:
        raise FleetError(f"s3://{bucket.name}/{key}: {exc}") from None


def commit_schema(bucket: Bucket, prefix: str, schema: Schema,
                  new: Sequence[lake.LakeColumn], car: str, day: str) -> Schema:
    """The schema with `new` columns, the car and the day in it, committed as the next
    version; the schema as it stands if they are all there already. A version is created
    only if its key is free: when another compactor took it, its version is read and
    merged again, so the first decision on a signal's type is the one every file gets."""
    for _ in range(SCHEMA_ATTEMPTS):
        merged = schema.merged(new, car, day)
        if merged is schema:
            return schema
        if bucket.put_new(lake.schema_key(prefix, merged.version), merged.to_json(),
                          "application/json"):
            return merged
        schema = load_schema(bucket, prefix)
    raise FleetError(f"the lake's schema changed {SCHEMA_ATTEMPTS} times while this "
                     "compactor tried to add to it")


@dataclass
class Pending:
    """A record to compact: its key, where its description is, where its Parquet goes."""
    record: str
    described_by: str  # its index entry, or (found by --scan) its manifest
    target: str


def find_pending(bucket: Bucket, prefix: str, since: str = "", scan: bool = False
                 ) -> Tuple[List[Pending], int]:
    """Records of the index (from day `since` on) with no Parquet object yet, and how many
    have one. `scan`: also records found by listing the records' tree (uploaded by an
    ECCM older than the index)."""
    done = set(bucket.keys(f"{lake.parquet_root(prefix)}/car="))
    index = sibling_prefix(prefix, INDEX_SUFFIX)
    found: Dict[str, Pending] = {}
    for key in bucket.keys(f"{index}/date=", f"{index}/date={since}" if since else ""):
        if not key.endswith(".json"):
            continue
        record = lake.record_key_of_index(prefix, key)
        found[record] = Pending(record, key, lake.parquet_key(prefix, record))
    if scan:
        head = prefix.strip("/")
        for key in bucket.keys(f"{head}/car=" if head else "car="):
            if not key.endswith(MANIFEST_SUFFIX):
                continue
            record = key[:-len(MANIFEST_SUFFIX)]
            try:
                day = key_partition(record)[1]
            except ValueError:
                continue
            if record not in found and (not since or day >= since):
                found[record] = Pending(record, key, lake.parquet_key(prefix, record))
    todo = [p for p in found.values() if p.target not in done]
    return sorted(todo, key=lambda p: p.record), len(found) - len(todo)


def describe(bucket: Bucket, item: Pending) -> Dict[str, Any]:
    """The record's index entry (built from its manifest for a record found by --scan)."""
    data = bucket.read(item.described_by)
    if item.described_by.endswith(MANIFEST_SUFFIX):
        try:
            manifest = load_manifest(data, item.record.rsplit("/", 1)[-1])
        except ManifestError as exc:
            raise Refused(f"its manifest {exc}") from None
        return index_entry(manifest, item.record)
    try:
        entry = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused(f"its index entry is not JSON ({exc})") from None
    if not isinstance(entry, dict) or entry.get("key") != item.record:
        raise Refused(f"its index entry {item.described_by} names another record")
    return entry


def read_header(path: Path, separator: str) -> List[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return next(csv.reader(fh, delimiter=separator), [])


def compact_one(bucket: Bucket, con: Any, prefix: str, schema: Schema, item: Pending,
                folder: Path) -> Tuple[Schema, int, int]:
    """Convert one record and put its Parquet object; (schema, rows, bytes), bytes 0 when
    another compactor put it first. Refused for a record that cannot go into the lake as
    it stands."""
    import duckdb
    source = folder / "record.csv"
    target = folder / "record.parquet"
    try:
        try:
            entry = describe(bucket, item)
            sha = bucket.download(item.record, source)
        except Missing as exc:
            raise Refused(str(exc)) from None
        if sha != entry.get("sha256"):
            raise Refused(f"its bytes (sha256 {sha[:12]}...) are not those its manifest "
                          "describes")
        separator = entry.get("separator") or ","
        try:
            headers = read_header(source, separator)
        except UnicodeDecodeError:
            raise Refused("its header is not UTF-8 text") from None
        if not headers or headers[0] != lake.TIME_HEADER:
            raise Refused(f"its first column is not {lake.TIME_HEADER}")
        if len(set(headers)) != len(headers):
            raise Refused("two of its columns have the same header")
        try:
            row = con.execute(lake.count_sql(headers, str(source), separator)).fetchone()
        except duckdb.Error as exc:
            raise Refused(f"DuckDB cannot read it: {exc}") from None
        rows = int(row[0])
        counts = {h: (int(row[1 + 2 * i]), int(row[2 + 2 * i]))
                  for i, h in enumerate(headers[1:])}
        car, day, _ = key_partition(item.record)
        since = item.record.rsplit("/", 1)[-1]
        schema = commit_schema(bucket, prefix, schema,
                               lake.new_columns(column_facts(headers, entry), counts, since),
                               car, day)
        wrong = lake.misfits(schema, counts)
        if wrong:
            raise Refused(f"{wrong[0]} holds text where the lake's column "
                          f"{schema.by_header()[wrong[0]].column} holds numbers")
        select = lake.convert_sql(schema, headers, str(source), separator,
                                  item.record.rsplit("/", 1)[-1])
        metadata = lake.file_metadata(schema, headers, entry, __version__)
        try:
            con.execute(lake.copy_sql(select, str(target), metadata))
        except duckdb.Error as exc:
            raise Refused(f"DuckDB cannot convert it: {exc}") from None
        data = target.read_bytes()
        if not bucket.put_new(item.target, data, PARQUET_TYPE, {"source-sha256": sha}):
            return schema, rows, 0
        return schema, rows, len(data)
    finally:
        for path in (source, target):
            try:
                path.unlink()
            except FileNotFoundError:
                pass


def column_facts(headers: Sequence[str], entry: Dict[str, Any]) -> List[Dict[str, str]]:
    """Each header's name and unit (from the header itself) and origin (its manifest's)."""
    sources = {c.get("header"): c.get("source") for c in entry.get("columns") or []}
    return [{"header": header, "name": column.name, "unit": column.unit,
             "source": sources.get(header) or "obd"}
            for header, column in zip(headers, parse_header(headers))]


@dataclass
class Report:
    compacted: int = 0
    already: int = 0
    rows: int = 0
    bytes: int = 0
    seconds: float = 0.0
    refused: List[str] = field(default_factory=list)


def duckdb_connection() -> Any:
    """An in-memory DuckDB whose times read and print in UTC, as ECCM writes them."""
    import duckdb
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con


def compact(settings: S3Settings, since: str = "", scan: bool = False,
            say: Callable[[str], None] = print, workdir: Optional[str] = None) -> Report:
    """Convert every record not in the lake yet, in key order (car, day, start); what
    was done. A refused record is reported and the others go on."""
    bucket = Bucket(settings)
    prefix = settings.prefix
    todo, already = find_pending(bucket, prefix, since, scan)
    report = Report(already=already)
    say(f"{len(todo)} records to compact into s3://{bucket.name}/{lake.parquet_root(prefix)}/"
        f" ({already} compacted already)")
    schema = load_schema(bucket, prefix)
    con = duckdb_connection()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="eccm-fleet-", dir=workdir) as folder:
        for number, item in enumerate(todo, 1):
            try:
                schema, rows, size = compact_one(bucket, con, prefix, schema, item,
                                                 Path(folder))
            except Refused as exc:
                report.refused.append(f"{item.record}: {exc}")
                say(f"[{number}/{len(todo)}] {item.record} not compacted: {exc}")
                continue
            if not size:
                report.already += 1
                say(f"[{number}/{len(todo)}] {item.record}: compacted meanwhile by another "
                    "run")
                continue
            report.compacted += 1
            report.rows += rows
            report.bytes += size
            say(f"[{number}/{len(todo)}] {item.record} -> {item.target} "
                f"({rows} rows, {size / 1e3:.1f} kB)")
    report.seconds = time.monotonic() - started
    rate = report.rows / report.seconds if report.seconds > 0 else 0.0
    say(f"done: {report.compacted} compacted ({report.rows} rows, {rate:.0f} rows/s), "
        f"{report.already} already there, {len(report.refused)} refused")
    return report


def httpfs_file() -> Optional[Path]:
    """The httpfs extension of PyPI's duckdb-extension-httpfs, for this DuckDB version."""
    try:
        import duckdb
        import duckdb_extension_httpfs
    except ImportError:
        return None
    found = sorted(Path(duckdb_extension_httpfs.__file__).parent.rglob(
        "httpfs.duckdb_extension"))
    own = [p for p in found if f"v{duckdb.__version__}" in p.parts]
    return (own or found or [None])[0]


def open_bucket(con: Any, settings: S3Settings) -> None:
    """httpfs loaded and the bucket's keys given to DuckDB as a secret (never shown: a
    DuckDB error that quoted them is cut before it is said)."""
    import duckdb
    path = httpfs_file()
    try:
        if path is not None:
            con.execute(f"LOAD {lake.literal(str(path))}")
        else:
            con.execute("INSTALL httpfs")
            con.execute("LOAD httpfs")
    except duckdb.Error as exc:
        raise FleetError(f"DuckDB's httpfs extension cannot be loaded ({exc}); install "
                         "ECCM's [fleet] extra, which brings it from PyPI") from None
    url = urlsplit(endpoint_url(settings.endpoint))
    try:
        con.execute(
            f"CREATE SECRET eccm (TYPE s3, KEY_ID {lake.literal(settings.access_key)}, "
            f"SECRET {lake.literal(settings.secret_key)}, "
            f"REGION {lake.literal(settings.region)}, ENDPOINT {lake.literal(url.netloc)}, "
            f"URL_STYLE 'path', USE_SSL {'true' if url.scheme == 'https' else 'false'})")
    except duckdb.Error as exc:
        raise FleetError(scrub(f"DuckDB refused the S3 settings: {exc}", settings)) from None


def scrub(text: str, settings: S3Settings) -> str:
    for secret in (settings.secret_key, settings.access_key):
        if secret:
            text = text.replace(secret, "***")
    return text


def query(settings: S3Settings, sql: str) -> Tuple[List[str], List[tuple]]:
    """(column names, rows) of a query over the fleet's views (lake.views_sql). Times with
    a time zone come back as their UTC text."""
    import duckdb
    con = duckdb_connection()
    open_bucket(con, settings)
    index = sibling_prefix(settings.prefix, INDEX_SUFFIX)
    sql = sql.strip().rstrip(";")
    try:
        for statement in lake.views_sql(settings.bucket, settings.prefix, index,
                                        lake.views_named(sql)):
            con.execute(statement)
        relation = con.sql(sql)
        if relation is None:
            raise FleetError("the SQL is not a query (expected SELECT ...)")
        exprs = [f"CAST(#{i} AS VARCHAR)" if "TIME ZONE" in str(kind) else f"#{i}"
                 for i, kind in enumerate(relation.types, 1)]
        rows = relation.query("q", f"SELECT {', '.join(exprs)} FROM q").fetchall()
    except duckdb.Error as exc:
        raise FleetError(scrub(str(exc), settings)) from None
    return list(relation.columns), rows


def render(columns: Sequence[str], rows: Sequence[Sequence[Any]], form: str) -> str:
    """Query results as a text table, CSV or JSON lines."""
    if form == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        return out.getvalue()
    if form == "json":
        return "".join(json.dumps(dict(zip(columns, row)), default=str) + "\n"
                       for row in rows)
    return lake.format_table(columns, rows) + "\n"


def table_ddl(settings: S3Settings, engine: str, table: str = "fleet",
              where: str = "") -> str:
    """The engine's table definition of the lake as it stands in the bucket."""
    schema = load_schema(Bucket(settings), settings.prefix)
    if schema.version == 0:
        raise FleetError(f"s3://{settings.bucket}/{lake.parquet_root(settings.prefix)}/ "
                         "holds no lake yet: run `eccm fleet compact` first")
    return lake.ddl(schema, engine, table,
                    where or lake.location(engine, settings.bucket, settings.prefix))
