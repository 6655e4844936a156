"""`eccm fleet`: the fleet's side of ECCM, on a server or a laptop (not the car's Pi), over
the bucket the cars upload to. DuckDB converts and queries; boto3 reads and writes.

compact: every record not yet in the Parquet lake (eccm/tools/lake.py) is fetched, checked
    against its SHA-256, converted locally and put in one conditional PUT: an object
    appears whole or not at all (S3 PUTs are atomic), under a name that depends only on
    its record, so a run killed at any point and run again skips what is done and never
    writes a row twice. The schema grows by immutable versions, each created only if its
    key is free (If-None-Match): two compactors at once cannot lose a column or give a
    signal two types; the one that loses the race reads the winner's and goes on. On a
    server without conditional PUT two compactors at once are not safe (run one at a
    time there): a version is read back after a moment, as a best effort, and whoever
    finds another's bytes there has lost the race in the same way.
query: one SELECT over the whole fleet through DuckDB's httpfs: the Parquet table, the
    records themselves and the index; nothing else (no COPY, ATTACH, SET ...), checked
    before anything runs.
ddl: the Athena, Trino or Spark table of the lake, from its schema.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from eccm import __version__
from eccm.sinks.layout import (INDEX_FORMAT, INDEX_SUFFIX, MANIFEST_SUFFIX, ManifestError,
                               dump_manifest, index_entry, index_key, key_partition,
                               load_manifest, parse_header, sibling_prefix,
                               valid_car, valid_separator)
from eccm.sinks.rows import parse_file_name, parse_time
from eccm.sinks.upload import (MAX_ALTERNATIVES, S3Settings, alternative_key, classify,
                               endpoint_url, make_client, put_refusal)
from eccm.tools import lake
from eccm.tools.lake import Schema

PARQUET_TYPE = "application/vnd.apache.parquet"
SCHEMA_ATTEMPTS = 20  # schema versions lost to other compactors before giving up
# On a server without conditional PUT: how long after writing a schema version it is read
# back. Another compactor that found the key free (its HEAD) before this one's PUT has put
# its own version by then, and only one of the two finds its own bytes.
SETTLE_SECONDS = 1.0
HINT_SAMPLE = 1000  # records listed (one request) to see whether some lack an index entry


class FleetError(Exception):
    """A problem said in one sentence to the user (the bucket, the keys, the lake)."""


class Missing(FleetError):
    """An object that is not (or no longer) in the bucket."""


class Refused(Exception):
    """This record is not compacted (why is the message); the others go on."""


class Gone(Refused):
    """The index lists a record that is not in the bucket (deleted)."""


class BadKey(FleetError):
    """A key given on the command line that is not one this bucket's runs could name."""


class Bucket:
    """The S3 operations of the fleet commands, with one client. S3 errors come out as
    FleetError with the uploader's wording (keys are never part of it)."""

    def __init__(self, settings: S3Settings, client: Any = None,
                 settle_seconds: float = SETTLE_SECONDS):
        self.settings = settings
        self.name = settings.bucket
        self.client = client or make_client(settings)
        self.settle_seconds = settle_seconds
        self.conditional: Optional[bool] = None  # does the server honour If-None-Match?

    def first_keys(self, prefix: str, count: int) -> List[str]:
        """The first `count` keys under prefix (at most 1000: one request)."""
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            page = self.client.list_objects_v2(Bucket=self.name, Prefix=prefix,
                                               MaxKeys=count)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc) from None
        return [item["Key"] for item in page.get("Contents", [])]

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

    def sha256(self, key: str) -> str:
        """The object's SHA-256, read through (nothing kept)."""
        from botocore.exceptions import BotoCoreError, ClientError
        digest = hashlib.sha256()
        try:
            body = self.client.get_object(Bucket=self.name, Key=key)["Body"]
            for block in iter(lambda: body.read(1 << 20), b""):
                digest.update(block)
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
        is the guard, as for the uploader, and a PUT of another compactor that came
        after this one's (its HEAD found the key free too) is seen when the object is
        read back: False then as well (`conditional` says which server this is)."""
        from botocore.exceptions import BotoCoreError, ClientError
        sha = hashlib.sha256(data).hexdigest()
        args = dict(Bucket=self.name, Key=key, Body=data, ContentType=content_type,
                    ContentMD5=base64.b64encode(hashlib.md5(data).digest()).decode(),
                    Metadata={"sha256": sha, **(metadata or {})})
        try:
            try:
                self.client.put_object(IfNoneMatch="*", **args)
                self.conditional = True
            except ClientError as exc:
                refusal = put_refusal(exc)
                if refusal == "taken":
                    self.conditional = True
                    return False
                if refusal != "unsupported":
                    raise
                self.conditional = False
                if self.head(key) is not None:
                    return False
                self.client.put_object(**args)
            head = self.head(key)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc) from None
        if head is not None and not self.conditional and \
                head.get("Metadata", {}).get("sha256") not in (None, sha):
            return False  # another compactor's PUT came after this one's
        if head is None or head.get("ContentLength") != len(data) or \
                head.get("Metadata", {}).get("sha256") != sha:
            raise FleetError(f"s3://{self.name}/{key}: the server's copy does not match "
                             "what was sent")
        return True

    def still_ours(self, key: str, data: bytes) -> bool:
        """After put_new on a server without conditional PUT: whether key still holds
        data once the other compactors' PUTs that raced this one have landed."""
        if self.conditional is not False:
            return True
        time.sleep(self.settle_seconds)
        try:
            return self.read(key) == data
        except Missing:
            return False


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
        key, data = lake.schema_key(prefix, merged.version), merged.to_json()
        if bucket.put_new(key, data, "application/json") and bucket.still_ours(key, data):
            return merged
        schema = load_schema(bucket, prefix)
    raise FleetError(f"the lake's schema changed {SCHEMA_ATTEMPTS} times while this "
                     "compactor tried to add to it")


@dataclass
class Pending:
    """A record to compact: its key, its index entry, where its Parquet goes."""
    record: str
    described_by: str  # its index entry
    target: str


@dataclass
class Survey:
    """What find_pending saw in the bucket."""
    todo: List[Pending] = field(default_factory=list)
    already: int = 0  # records of the index in the lake already
    forgotten: int = 0  # records of the index that `--forget` said to stop taking
    unindexed: List[str] = field(default_factory=list)  # --scan: manifested, no entry
    no_manifest: List[str] = field(default_factory=list)  # --scan: not ECCM-described
    hint: str = ""  # records seem to lack index entries: run --scan


def list_forgotten(bucket: Bucket, prefix: str) -> set:
    folder = f"{lake.parquet_root(prefix)}/{lake.FORGOTTEN_FOLDER}/"
    return {r for k in bucket.keys(folder) for r in [lake.record_key_of_forgotten(prefix, k)]
            if r is not None}


def list_index(bucket: Bucket, prefix: str, since: str = "") -> Dict[str, str]:
    """record key -> its index entry's key, for the entries from day `since` on."""
    index = sibling_prefix(prefix, INDEX_SUFFIX)
    found: Dict[str, str] = {}
    for key in bucket.keys(f"{index}/date=", f"{index}/date={since}" if since else ""):
        if key.endswith(".json"):
            try:
                found[lake.record_key_of_index(prefix, key)] = key
            except IndexError:  # a key too short to be an entry's
                continue
    return found


def records_tree(prefix: str) -> str:
    head = prefix.strip("/")
    return f"{head}/car=" if head else "car="


def record_day(key: str) -> Optional[str]:
    try:
        return key_partition(key)[1]
    except ValueError:
        return None


def find_pending(bucket: Bucket, prefix: str, since: str = "", scan: bool = False
                 ) -> Survey:
    """Records of the index (from day `since`, the UTC day their record started, on) with
    no Parquet object yet. `scan`: also list the records' tree, for records uploaded by an
    ECCM older than the index (`unindexed`, to be indexed) and objects no manifest
    describes (`no_manifest`: these cannot be compacted). Without `scan`, one listing
    request of the records' tree tells whether some records seem to lack an entry."""
    done = set(bucket.keys(f"{lake.parquet_root(prefix)}/car="))
    forgotten = list_forgotten(bucket, prefix)
    found = list_index(bucket, prefix, since)
    survey = Survey()
    if scan:
        keys = set(bucket.keys(records_tree(prefix)))
        for key in sorted(keys):
            if key.endswith(MANIFEST_SUFFIX) or key in found:
                continue
            day = record_day(key)
            if since and (day is None or day < since):
                continue
            if key in forgotten:
                survey.forgotten += 1
                continue
            if day is None or key + MANIFEST_SUFFIX not in keys:
                survey.no_manifest.append(key)
            else:
                survey.unindexed.append(key)
    else:
        survey.hint = index_hint(bucket, prefix, found, since, forgotten)
    for record, entry in sorted(found.items()):
        target = lake.parquet_key(prefix, record)
        if target in done:
            survey.already += 1
        elif record in forgotten:
            survey.forgotten += 1
        else:
            survey.todo.append(Pending(record, entry, target))
    return survey


def index_hint(bucket: Bucket, prefix: str, found: Dict[str, str], since: str,
               forgotten: frozenset = frozenset()) -> str:
    """A sentence when records seem to have no index entry (uploaded by an ECCM older
    than the index): the first records of the tree (one listing request) are looked up
    in the index. '' when they all have one (records `--forget` named do not count)."""
    keys = [k for k in bucket.first_keys(records_tree(prefix), HINT_SAMPLE)
            if k not in forgotten and k[:-len(MANIFEST_SUFFIX)] not in forgotten]
    listed = set(keys)
    records = [k for k in keys if k + MANIFEST_SUFFIX in listed and
               (not since or (record_day(k) or "") >= since)]
    lacking = [k for k in records if k not in found]
    where = f"s3://{bucket.name}/{sibling_prefix(prefix, INDEX_SUFFIX)}/"
    if not found and keys and not since:
        said = (f"the index ({where}) has no entries, but s3://{bucket.name}/"
                f"{records_tree(prefix)}... holds objects")
    elif lacking:
        said = (f"{plural(len(lacking), 'record')} of the first {len(records)} listed "
                f"{'has' if len(lacking) == 1 else 'have'} no entry in {where}")
    else:
        return ""
    return (f"note: {said}: records uploaded by an ECCM older than the index are only "
            "found by `eccm fleet compact --scan` (run it once; an upload in progress "
            "looks like this for a moment)")


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def check_entry(entry: Any, record: str, where: str) -> Dict[str, Any]:
    """The index entry if it can be trusted to describe the record; Refused otherwise."""
    if not isinstance(entry, dict) or entry.get("format") != INDEX_FORMAT:
        raise Refused(f"{where} is not an ECCM index entry")
    if entry.get("key") != record:
        raise Refused(f"{where} names another record")
    sha = entry.get("sha256")
    if not isinstance(sha, str) or len(sha) != 64 or \
            any(c not in "0123456789abcdef" for c in sha):
        raise Refused(f"{where} gives no SHA-256")
    separator = entry.get("separator")
    if separator is not None and not valid_separator(separator):
        raise Refused(f"{where} gives the separator {json.dumps(separator)}: not one "
                      "character other than a letter, digit, quote or line break")
    columns = entry.get("columns")
    if columns is not None and (not isinstance(columns, list) or not all(
            isinstance(c, dict) and all(isinstance(c.get(k), (str, type(None)))
                                        for k in ("header", "source")) for c in columns)):
        raise Refused(f"{where}'s columns are not a list of columns (header, source)")
    return entry


def describe(bucket: Bucket, item: Pending) -> Dict[str, Any]:
    """The record's index entry, checked."""
    try:
        data = bucket.read(item.described_by)
    except Missing:
        raise Refused("its index entry was deleted meanwhile") from None
    try:
        entry = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused(f"its index entry is not JSON ({exc})") from None
    return check_entry(entry, item.record, "its index entry")


def index_scanned(bucket: Bucket, prefix: str, record: str) -> None:
    """Give a record found by --scan the index entry its uploader would have put (built
    from its manifest, only if the key is free): it is then a record like the others, in
    the index, in `drives` and in `fleet`. Refused, with nothing written, for a manifest
    that is not valid, a record that is not where its uploader puts it (its manifest's
    car, the UTC day it started, its name or the -dupN name of a taken key) or whose
    bytes are not those its manifest describes."""
    try:
        data = bucket.read(record + MANIFEST_SUFFIX)
    except Missing as exc:
        raise Refused(str(exc)) from None
    name = record.rsplit("/", 1)[-1]
    try:
        manifest = load_manifest(data, uploaded_name(data, name))
    except ManifestError as exc:
        raise Refused(f"its manifest {exc}") from None
    expected = uploader_key(prefix, manifest)
    if expected is None:
        raise Refused("its manifest says neither by its file name nor by its start which "
                      "day it started: where its uploader put it is unknown")
    if record != expected and not is_alternative(record, expected):
        raise Refused(f"its uploader puts it under {expected} (its manifest's car and "
                      "the UTC day it started), not here: a copy or a move")
    head = bucket.head(record)
    if head is None:
        raise Refused("it is no longer in the bucket")
    if head.get("ContentLength") != manifest["size"]:
        raise Refused(f"its size ({head.get('ContentLength')} bytes) is not the "
                      f"{manifest['size']} its manifest describes")
    sha = head.get("Metadata", {}).get("sha256") or bucket.sha256(record)
    if sha != manifest["sha256"]:
        raise Refused(f"its bytes (sha256 {str(sha)[:12]}...) are not those its manifest "
                      "describes")
    entry = check_entry(index_entry(manifest, record), record, "its manifest")
    bucket.put_new(index_key(prefix, record), dump_manifest(entry), "application/json")


DUP_RE = re.compile(r"-dup([1-9][0-9]*)(?=\.[^.]*$|$)")


def uploaded_name(manifest_data: bytes, name: str) -> str:
    """The file name a stored record's manifest should give: its own, or for a record
    under a -dupN key (the uploader's rule for a taken key: NAME-dup1.csv) the name the
    manifest gives if that is the one the -dupN name was made from."""
    try:
        said = json.loads(manifest_data.decode("utf-8")).get("file")
    except (UnicodeDecodeError, ValueError, AttributeError):
        return name
    return said if isinstance(said, str) and is_alternative(name, said) else name


def is_alternative(key: str, original: str) -> bool:
    """Whether key is one of the uploader's -dupN keys for original."""
    found = DUP_RE.findall(key.rsplit("/", 1)[-1])
    return bool(found) and 1 <= int(found[-1]) <= MAX_ALTERNATIVES and \
        alternative_key(original, int(found[-1])) == key


def uploader_key(prefix: str, manifest: Dict[str, Any]) -> Optional[str]:
    """Where the uploader puts the record a manifest describes (upload.object_key): the
    manifest's car, the UTC day of its start (from its file name, else its manifest);
    None if neither says it."""
    named = parse_file_name(manifest["file"])
    start = named[1] if named is not None else \
        parse_time(manifest["start"]) if isinstance(manifest.get("start"), str) else None
    if start is None or "/" in manifest["file"]:
        return None
    head = prefix.strip("/")
    return (f"{head + '/' if head else ''}car={manifest['car']}/"
            f"date={start.date().isoformat()}/{manifest['file']}")


def read_header(path: Path, separator: str) -> List[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return next(csv.reader(fh, delimiter=separator), [])


def compact_one(bucket: Bucket, con: Any, prefix: str, schema: Schema, item: Pending,
                folder: Path) -> Tuple[Schema, int, int]:
    """Convert one record and put its Parquet object; (schema, rows, bytes), bytes 0 when
    another compactor put it first. Refused for a record that cannot go into the lake as
    it stands (Gone: not in the bucket), before the schema is touched: a refused record
    never adds a column or a car."""
    import duckdb
    source = folder / "record.csv"
    target = folder / "record.parquet"
    try:
        entry = describe(bucket, item)
        try:
            sha = bucket.download(item.record, source)
        except Missing:
            raise Gone("the index lists it, but it is not in the bucket (deleted?)") \
                from None
        if sha != entry.get("sha256"):
            raise Refused(f"its bytes (sha256 {sha[:12]}...) are not those its manifest "
                          "describes")
        separator = entry.get("separator") or ","
        try:
            headers = read_header(source, separator)
        except UnicodeDecodeError:
            raise Refused("its header is not UTF-8 text") from None
        except csv.Error as exc:
            raise Refused(f"its header cannot be read ({exc})") from None
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
        car, day, name = key_partition(item.record)
        new = lake.new_columns(column_facts(headers, entry), counts, name)
        # Converted with the schema this record would make, before that schema is
        # committed; again only if the committed one (another compactor's) differs.
        planned = lake.record_columns(schema.merged(new, car, day), headers, counts)
        convert(con, planned, headers, entry, source, target, separator, name)
        schema = commit_schema(bucket, prefix, schema, new, car, day)
        columns = lake.record_columns(schema, headers, counts)
        if columns != planned:
            convert(con, columns, headers, entry, source, target, separator, name)
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


def convert(con: Any, columns: Sequence[Tuple[str, lake.LakeColumn]], headers: List[str],
            entry: Dict[str, Any], source: Path, target: Path, separator: str,
            name: str) -> None:
    """The record at source as the Parquet file at target, in the lake's columns."""
    import duckdb
    select = lake.convert_sql(columns, headers, str(source), separator, name)
    metadata = lake.file_metadata(columns, entry, __version__)
    try:
        con.execute(lake.copy_sql(select, str(target), metadata))
    except duckdb.Error as exc:
        raise Refused(f"DuckDB cannot convert it: {exc}") from None


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
    missing: List[str] = field(default_factory=list)  # in the index, not in the bucket
    forgotten: int = 0
    no_manifest: int = 0


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
    survey = find_pending(bucket, prefix, since, scan)
    report = Report(already=survey.already, forgotten=survey.forgotten,
                    no_manifest=len(survey.no_manifest))
    if survey.hint:
        say(survey.hint)
    if survey.no_manifest:
        say(f"note: {plural(len(survey.no_manifest), 'object')} under "
            f"s3://{bucket.name}/{records_tree(prefix)}... have no manifest beside them "
            "(or lie outside car=CAR/date=DAY/), so nothing says they are ECCM records, "
            "their separator or their SHA-256: they cannot be compacted "
            f"(e.g. {survey.no_manifest[0]})")
    if survey.unindexed:
        say(f"--scan: {plural(len(survey.unindexed), 'record')} without an index entry: "
            "each gets the one its uploader would have put")
        done = set(bucket.keys(f"{lake.parquet_root(prefix)}/car="))
        for record in survey.unindexed:
            try:
                index_scanned(bucket, prefix, record)
            except Refused as exc:
                report.refused.append(f"{record}: {exc}")
                say(f"{record} not compacted: {exc}")
                continue
            target = lake.parquet_key(prefix, record)
            if target in done:
                report.already += 1
            else:
                survey.todo.append(Pending(record, index_key(prefix, record), target))
        survey.todo.sort(key=lambda p: p.record)
    todo = survey.todo
    forgotten = f", {survey.forgotten} forgotten" if survey.forgotten else ""
    say(f"{plural(len(todo), 'record')} to compact into "
        f"s3://{bucket.name}/{lake.parquet_root(prefix)}/ "
        f"({report.already} compacted already{forgotten})")
    schema = first = load_schema(bucket, prefix)
    con = duckdb_connection()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="eccm-fleet-", dir=workdir) as folder:
        for number, item in enumerate(todo, 1):
            try:
                schema, rows, size = compact_one(bucket, con, prefix, schema, item,
                                                 Path(folder))
            except Gone as exc:
                report.missing.append(f"{item.record}: {exc}")
                say(f"[{number}/{len(todo)}] {item.record} missing: {exc}")
                continue
            except Refused as exc:
                report.refused.append(f"{item.record}: {exc}")
                say(f"[{number}/{len(todo)}] {item.record} not compacted: {exc}")
                continue
            except (ValueError, TypeError, KeyError, AttributeError, OSError) as exc:
                # Not foreseen above: this record alone, said in one line.
                problem = f"cannot be compacted ({exc.__class__.__name__}: {exc})"
                report.refused.append(f"{item.record}: {problem}")
                say(f"[{number}/{len(todo)}] {item.record} {problem}")
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
    missing = f", {len(report.missing)} missing" if report.missing else ""
    say(f"done: {report.compacted} compacted ({report.rows} rows, {rate:.0f} rows/s), "
        f"{report.already} already there, {len(report.refused)} refused{missing}")
    if schema.version != first.version:
        say(schema_growth(first, schema))
    if report.missing:
        say(f"{plural(len(report.missing), 'record')} of the index "
            f"{'is' if len(report.missing) == 1 else 'are'} no longer in the bucket: not "
            "compacted. If gone for good, `eccm fleet compact --forget KEY` (once per "
            "record) stops this reminder")
    return report


def schema_growth(before: Schema, after: Schema) -> str:
    """What a run added to the schema, and what to do about it."""
    known = {c.column for c in before.columns}
    columns = [c.column for c in after.columns if c.column not in known]
    cars = [c for c in after.cars if c not in before.cars]
    added = "; ".join(part for part in (
        f"new columns: {', '.join(columns)}" if columns else "",
        f"new cars: {', '.join(cars)}" if cars else "") if part) or "a new first day"
    return (f"the lake's schema is now version {after.version} ({added}): print the table "
            "again with `eccm fleet ddl` and run it")


def forget(settings: S3Settings, records: Sequence[str],
           say: Callable[[str], None] = print) -> List[str]:
    """Tell compact to stop taking these records (deleted from the bucket, or refused
    for good): a marker each under PARQUET/_forgotten/. The problems, one per record
    that could not be forgotten."""
    bucket = Bucket(settings)
    check_forgettable(bucket, settings.prefix, records)
    problems = []
    for record in records:
        if bucket.head(lake.parquet_key(settings.prefix, record)) is not None:
            problems.append(f"{record}: it is in the lake: nothing to forget")
            continue
        marker = lake.forgotten_key(settings.prefix, record)
        body = (json.dumps({"format": lake.FORGOTTEN_FORMAT, "key": record,
                            "forgotten_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                          time.gmtime()),
                            "eccm_version": __version__}, indent=1) + "\n").encode()
        if bucket.put_new(marker, body, "application/json"):
            say(f"{record}: forgotten: compact no longer takes it (to take it again, "
                f"delete s3://{bucket.name}/{marker})")
        else:
            say(f"{record}: forgotten already")
    return problems


def check_forgettable(bucket: Bucket, prefix: str, records: Sequence[str]) -> None:
    """BadKey, before any marker is written, unless every key is a record key of this
    bucket (PREFIX/car=CAR/date=YYYY-MM-DD/NAME, nothing more) that the index lists or
    that is stored (a record a --scan refused): a typo is said, never remembered."""
    indexed = None
    head = prefix.strip("/")
    shape = f"{records_tree(prefix)}CAR/date=YYYY-MM-DD/NAME"
    for record in records:
        rest = record[len(head) + 1:] if head and record.startswith(head + "/") else \
            None if head else record
        parts = (rest or "").split("/")
        well_formed = len(parts) == 3 and parts[0].startswith("car=") and \
            valid_car(parts[0][4:]) and parts[1].startswith("date=") and \
            re.fullmatch(r"\d{4}-\d{2}-\d{2}", parts[1][5:]) is not None and \
            parts[2] not in ("", ".", "..")
        if well_formed:
            try:
                time.strptime(parts[1][5:], "%Y-%m-%d")
            except ValueError:
                well_formed = False
        if not well_formed:
            raise BadKey(f"{record!r} is not a record key of this bucket ({shape}): "
                         "nothing forgotten")
        if indexed is None:
            indexed = list_index(bucket, prefix)
        if record not in indexed and bucket.head(record) is None:
            raise BadKey(f"{record}: neither the index nor the bucket has this record "
                         "(a typo? give a key a run said is missing or refused): nothing "
                         "forgotten")


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


def query_statement(sql: str) -> str:
    """The query, if it is exactly one SELECT (WITH, FROM-first, DESCRIBE, SHOW, PIVOT
    with its values listed... all parse as one); FleetError otherwise. Parsed only:
    nothing runs, so a COPY, ATTACH, CREATE, SET or a second statement never does."""
    import duckdb
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise FleetError(str(exc)) from None
    if len(statements) != 1:
        raise FleetError(f"expected one SELECT statement, got {len(statements)} statements "
                         "(nothing was run)")
    kind = str(statements[0].type).rsplit(".", 1)[-1]
    if kind != "SELECT":
        raise FleetError(f"expected a SELECT statement, got {kind} (nothing was run): "
                         "eccm fleet query only reads")
    return statements[0].query


def reads_secrets(con: Any, sql: str) -> bool:
    """Whether the query's plan reads DuckDB's secrets, however it names them (a
    query() of a built string too): duckdb_secrets() shows the S3 access key id, which
    DuckDB does not redact."""
    plan = con.execute(f"EXPLAIN (FORMAT json) {sql}").fetchall()
    text = " ".join(str(cell) for row in plan for cell in row).upper()
    return "DUCKDB_SECRETS" in text


def setup_views(con: Any, settings: S3Settings, named: Sequence[str]) -> None:
    """The views the query names (lake.views_sql), from listings of the bucket: `fleet`
    reads exactly the Parquet files of records in the index (never what a glob finds),
    `fleet_csv` the records of the index that are in the bucket, each by its separator,
    `drives` the index entries with `in_lake`. Entries that are not valid JSON, not ECCM
    index entries or that name another record than their own are left out."""
    if not named:
        return
    import duckdb
    bucket = Bucket(settings)
    prefix = settings.prefix
    index = sibling_prefix(prefix, INDEX_SUFFIX)
    url = f"s3://{settings.bucket}/"
    indexed = list_index(bucket, prefix)
    separators: List[str] = []
    structure = ""
    try:
        if "fleet" in named or "drives" in named:
            lake_keys = set(bucket.keys(f"{lake.parquet_root(prefix)}/car="))
            in_lake = sorted(r for r in indexed if lake.parquet_key(prefix, r) in lake_keys)
            if "fleet" in named and not in_lake:
                raise FleetError(f"s3://{settings.bucket}/{lake.parquet_root(prefix)}/ "
                                 "holds no compacted record yet: run `eccm fleet compact` "
                                 "first")
            con.execute(f"CREATE TEMP TABLE {lake.LAKE_RECORDS} AS "
                        "SELECT unnest(?::VARCHAR[]) AS key", [in_lake])
            con.execute(f"SET VARIABLE {lake.LAKE_FILES} = ?::VARCHAR[]",
                        [[url + lake.parquet_key(prefix, r) for r in in_lake]])
        if "fleet_csv" in named or "drives" in named:
            if not indexed:
                raise FleetError(f"s3://{settings.bucket}/{index}/ holds no index entry yet")
            entries = load_index(con, settings, index)
            if not entries:
                raise FleetError(f"s3://{settings.bucket}/{index}/ holds no valid index "
                                 "entry")
            structure = con.execute(f"SELECT json_group_structure(content::JSON) FROM "
                                    f"{lake.INDEX_TABLE}").fetchone()[0]
        if "fleet_csv" in named:
            stored = set(bucket.keys(records_tree(prefix)))
            groups: Dict[str, List[str]] = {}
            for record, separator in entries:
                if record in stored and (separator is None or valid_separator(separator)):
                    groups.setdefault(separator or ",", []).append(url + record)
            if not groups:
                raise FleetError(f"s3://{settings.bucket}/{index}/ lists no record that is "
                                 "in the bucket")
            for number, (separator, files) in enumerate(sorted(groups.items())):
                con.execute(f"SET VARIABLE {lake.CSV_FILES.format(number)} = ?::VARCHAR[]",
                            [sorted(files)])
                separators.append(separator)
        for statement in lake.views_sql(named, separators, structure):
            con.execute(statement)
    except duckdb.Error as exc:
        raise FleetError(scrub(str(exc), settings)) from None


def load_index(con: Any, settings: S3Settings, index: str) -> List[Tuple[str, Any]]:
    """Every index entry read by DuckDB (many at once) into the table lake.INDEX_TABLE,
    as text; those that are not valid JSON, not ECCM index entries or that name another
    record than the one their key stands for are left out. (record key, separator) of
    those kept."""
    url = f"s3://{settings.bucket}/"
    con.execute(
        f"CREATE TEMP TABLE {lake.INDEX_TABLE} AS SELECT filename, content "
        f"FROM read_text({lake.literal(f'{url}{index}/date=*/car=*/*.json')}) "
        f"WHERE json_valid(content) AND "
        f"json_extract_string(content, '$.format') = {lake.literal(INDEX_FORMAT)}")
    rows = con.execute(f"SELECT filename, json_extract_string(content, '$.key'), "
                       f"json_extract_string(content, '$.separator') "
                       f"FROM {lake.INDEX_TABLE}").fetchall()
    kept = []
    for filename, record, separator in rows:
        try:
            own = lake.record_key_of_index(settings.prefix, filename[len(url):])
        except IndexError:
            continue
        if record == own:
            kept.append((filename, record, separator))
    con.execute(f"DELETE FROM {lake.INDEX_TABLE} WHERE filename NOT IN "
                "(SELECT unnest(?::VARCHAR[]))", [[k[0] for k in kept]])
    return [(record, separator) for _, record, separator in kept]


def query(settings: S3Settings, sql: str) -> Tuple[List[str], List[tuple]]:
    """(column names, rows) of one SELECT over the fleet's views (lake.views_sql). Times
    with a time zone come back as their UTC text. Anything but one SELECT is refused
    before anything runs; once the views are made, DuckDB's configuration is locked, a
    query that reads DuckDB's secrets is refused and the bucket's keys, should a cell
    hold them anyway, are shown as ***."""
    import duckdb
    statement = query_statement(sql.strip())
    con = duckdb_connection()
    open_bucket(con, settings)
    setup_views(con, settings, lake.views_named(statement))
    try:
        # Nothing a query names is ever downloaded or loaded: httpfs (loaded above) and
        # what DuckDB has built in only.
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET autoload_known_extensions = false")
        con.execute("SET lock_configuration = true")
        relation = con.sql(statement)  # bound, not run: errors name the query's words
        if relation is None:
            raise FleetError("the SQL is not a query (expected SELECT ...)")
        if reads_secrets(con, statement):
            raise FleetError("the query reads DuckDB's secrets, which hold the bucket's "
                             "keys: not shown")
        exprs = [f"CAST(#{i} AS VARCHAR)" if "TIME ZONE" in str(kind) else f"#{i}"
                 for i, kind in enumerate(relation.types, 1)]
        rows = relation.query("q", f"SELECT {', '.join(exprs)} FROM q").fetchall()
    except duckdb.Error as exc:
        raise FleetError(scrub(str(exc), settings)) from None
    return list(relation.columns), [tuple(scrub_cell(v, settings) for v in row)
                                    for row in rows]


def scrub_cell(value: Any, settings: S3Settings) -> Any:
    """A result cell with the bucket's keys (anywhere in its text) shown as ***."""
    if isinstance(value, str):
        return scrub(value, settings)
    if isinstance(value, (list, tuple, dict)):
        text = str(value)
        if scrub(text, settings) != text:
            return scrub(text, settings)
    return value


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
