"""Uploader: finished record files (outbox/) -> S3, verified, exactly once, never over
another object.

Only manifested records are taken (layout.py): the record goes first, then its manifest,
so a manifest in the bucket means its record is there whole. The key's car comes from the
manifest, not from today's configuration. Each file goes to a deterministic key, so a
retry after a crash finds its own object rather than making a second one; an object of
other bytes already under the key is never replaced: the file goes under the next free
key (NAME-dup1.csv ...), logged, and both are kept (the PUT is conditional, If-None-Match,
so two writers cannot race either). The PUT carries Content-MD5 and the file's SHA-256 as
metadata; HeadObject must then show the same size and SHA-256 before the local file is
deleted (or moved to uploaded/). A single PUT is used (record files are far below S3's
5 GB limit), so no multipart upload can be left behind. Network trouble, 5xx and
throttling retry with exponential backoff and jitter; wrong credentials or a missing
bucket are reported once, clearly, and retried slowly. Files are never deleted unverified.

After the manifest, the record's index entry (layout.index_key) is put: the local file goes
only once all three are in the bucket, so a crash between any two PUTs is mended by the
retry, which finds the first ones already there.
"""
from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Dict, List, Optional, Tuple

from eccm.sinks.layout import (DEMO_CAR, MANIFEST_SUFFIX, OUTBOX, UPLOADED, ManifestError,
                               dump_manifest, index_entry, index_key, is_manifest,
                               load_manifest, manifest_name)
from eccm.sinks.rows import PART_SUFFIX, parse_file_name
from eccm.sinks.records import tidy_orphan_manifests
from eccm.core.health import UploadHealth
from eccm.core.text import plural
from eccm.core.state import CONNECTED, DISABLED, LOST, SharedState
from eccm.core.worker import Backoff, Worker

if TYPE_CHECKING:
    from eccm.config import Config

log = logging.getLogger(__name__)

MAX_ALTERNATIVES = 1000
CONTENT_TYPES = {".csv": "text/csv", ".tsv": "text/tab-separated-values"}
IDLE_POLL = 2.0
SLOW_RETRY = 60.0  # after an error only the user can fix (credentials, bucket)
CONFIG_ERRORS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied",
                 "NoSuchBucket", "InvalidBucketName", "AuthorizationHeaderMalformed",
                 "InvalidToken", "ExpiredToken", "AccountProblem", "Forbidden", "403",
                 "404"}


@dataclass(frozen=True)
class S3Settings:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    region: str = "us-east-1"
    prefix: str = "car-logs"
    verify_tls: bool = True

    @classmethod
    def from_config(cls, cfg: "Config") -> "S3Settings":
        """The bucket the configuration names (the daemon, `eccm upload`, `eccm fleet`)."""
        return cls(endpoint=cfg.S3_SERVER_ENDPOINT, access_key=cfg.S3_SERVER_AK,
                   secret_key=cfg.S3_SERVER_SK, bucket=cfg.S3_SERVER_BUCKET,
                   region=cfg.S3_SERVER_REGION, prefix=cfg.S3_KEY_PREFIX or "",
                   verify_tls=cfg.S3_VERIFY_TLS)


class UploadError(Exception):
    """One failed attempt; `permanent` when only the user can fix it (keys, bucket)."""

    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


class FileHeld(UploadError):
    """This file is not uploaded (its manifest is wrong, it changed after it was finished,
    it is a demo drive); it stays in the outbox and the others go on."""


def endpoint_url(endpoint: str) -> str:
    """'host:port' -> 'https://host:port' (as the original ECCM's MinIO client); URLs as given."""
    return endpoint if "://" in endpoint else f"https://{endpoint}"


def object_key(prefix: str, car: str, path: Path) -> str:
    """prefix/car=CAR/date=YYYY-MM-DD/NAME, the date of the file's UTC start (hive layout)."""
    parsed = parse_file_name(path.name)
    if parsed is not None:
        day = parsed[1].date()
    else:
        day = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).date()
    head = prefix.strip("/")
    return f"{head + '/' if head else ''}car={car}/date={day.isoformat()}/{path.name}"


def digests(path: Path) -> Tuple[int, str, str]:
    """(size, MD5 base64, SHA-256 hex) in one read."""
    md5 = hashlib.md5()
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            md5.update(block)
            sha.update(block)
            size += len(block)
    return size, base64.b64encode(md5.digest()).decode(), sha.hexdigest()


def alternative_key(key: str, number: int) -> str:
    """dir/NAME.csv -> dir/NAME-dup1.csv: the same folder and extension, another name."""
    folder, _, name = key.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    new = f"{stem}-dup{number}.{ext}" if dot and stem else f"{name}-dup{number}"
    return f"{folder}/{new}" if folder else new


def _outbox_records(outbox: Path) -> Tuple[List[Path], List[Path]]:
    """(manifested records, files that look finished but have no manifest)."""
    if not outbox.is_dir():
        return [], []
    names = {p.name for p in outbox.iterdir() if p.is_file()}
    candidates = [n for n in names if not n.startswith(".") and not is_manifest(n)
                  and not n.endswith(PART_SUFFIX)]
    done = [outbox / n for n in candidates if manifest_name(n) in names]
    bare = [outbox / n for n in candidates if manifest_name(n) not in names]
    return done, bare


def pending_files(outbox: Path) -> List[Path]:
    """Finished records (with their manifest), oldest first; nothing else in the folder."""
    files = _outbox_records(outbox)[0]

    def age(path: Path) -> Tuple[float, str]:
        try:
            return path.stat().st_mtime, path.name
        except OSError:  # taken by another uploader meanwhile
            return 0.0, path.name
    return sorted(files, key=age)


def unmanifested_files(outbox: Path) -> List[Path]:
    """Files in the outbox without a manifest: not uploaded (an export, or a record of an
    older ECCM or an unclean stop, which the daemon manifests when it starts)."""
    return sorted(_outbox_records(outbox)[1])


def make_client(settings: S3Settings) -> Any:
    """A boto3 S3 client for AWS or any S3-compatible server (path-style addressing).

    Checksums are sent only when an operation requires them: some S3-compatible servers
    mishandle the chunked-trailer checksums newer botocore sends by default; integrity is
    ensured by Content-MD5 and the SHA-256 check instead.
    """
    import boto3
    from botocore.config import Config as BotoConfig
    config = BotoConfig(
        s3={"addressing_style": "path"}, region_name=settings.region,
        signature_version="s3v4", retries={"max_attempts": 1, "mode": "standard"},
        connect_timeout=10, read_timeout=60,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required")
    return boto3.client("s3", endpoint_url=endpoint_url(settings.endpoint),
                        aws_access_key_id=settings.access_key,
                        aws_secret_access_key=settings.secret_key,
                        verify=settings.verify_tls, config=config)


# What an OpenSSL handshake reports when the other side answered in plain HTTP.
PLAIN_HTTP_SIGNS = ("WRONG_VERSION_NUMBER", "RECORD LAYER FAILURE", "HTTP_REQUEST",
                    "PACKET LENGTH TOO LONG")


def scheme_note(endpoint: str) -> str:
    """Which scheme the endpoint means, and how to write the other one."""
    url = endpoint_url(endpoint)
    if "://" in endpoint:
        return (f"S3 uploads go to {url}" if url.startswith("http://") else
                f"S3 uploads go to {url} (for a plain-http server write "
                f"S3_SERVER_ENDPOINT=http://{endpoint.split('://', 1)[1]})")
    return (f"S3 uploads go to {url} (S3_SERVER_ENDPOINT without a scheme means https; "
            f"for a plain-http server write S3_SERVER_ENDPOINT=http://{endpoint})")


def classify(exc: Exception, endpoint: str = "") -> UploadError:
    """botocore's errors -> one user-readable sentence (never the keys). `endpoint` as the
    user wrote it: a TLS failure on a bare host:port gets the fix, in words that name no
    object, so the daemon (which logs a problem when its text changes) says it once."""
    from botocore.exceptions import BotoCoreError, ClientError, SSLError
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return UploadError(f"the S3 server rejected the access key or secret key ({code})",
                               permanent=True)
        if code == "NoSuchBucket":
            return UploadError("the S3 bucket does not exist (NoSuchBucket)", permanent=True)
        if code in CONFIG_ERRORS or status in (401, 403):
            return UploadError(f"the S3 server refused access ({code or status})",
                               permanent=True)
        return UploadError(f"the S3 server answered {code or status}")
    if isinstance(exc, SSLError) and endpoint:
        reason = re.sub(r"\s*\(_ssl\.c:\d+\)", "", str(exc.kwargs.get("error", "")))
        if any(sign in reason.upper() for sign in PLAIN_HTTP_SIGNS):
            # The TLS handshake read an HTTP reply: the server speaks plain http. Only the
            # user can change the endpoint; other TLS failures (a certificate, a dropped
            # link) are reported and retried as they are.
            return UploadError(f"TLS handshake with the S3 server failed ({reason}): the "
                               f"server answers in plain HTTP; {scheme_note(endpoint)}",
                               permanent=True)
    if isinstance(exc, BotoCoreError):
        return UploadError(f"cannot reach the S3 server: {exc}")
    return UploadError(f"{exc.__class__.__name__}: {exc}")


def put_refusal(exc: Any) -> str:
    """What a refused conditional PUT (If-None-Match: *) means: 'taken' (the key holds an
    object: another writer was first), 'unsupported' (a server without conditional
    writes) or 'other'."""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
        return "taken"
    if code == "NotImplemented" or status == 501:
        return "unsupported"
    return "other"


class S3Store:
    """Uploads and verifies files with one client; used by one thread at a time."""

    def __init__(self, settings: S3Settings, car: str, outbox: Path,
                 keep_uploaded: bool = False):
        self.settings = settings
        self.car = car
        self.outbox = outbox
        self.keep_uploaded = keep_uploaded
        self._client: Any = None
        self._conditional = True  # False once the server said it cannot do If-None-Match

    @classmethod
    def from_config(cls, cfg: "Config") -> "S3Store":
        """The bucket the configuration names, for the record folder's outbox (the daemon's
        uploader and `eccm upload` alike)."""
        return cls(S3Settings.from_config(cfg), cfg.CAR_IDENTIFIER,
                   Path(cfg.RECORD_DIRECTORY_LOCATION) / OUTBOX,
                   keep_uploaded=cfg.S3_KEEP_UPLOADED)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client(self.settings)
        return self._client

    def upload(self, path: Path) -> str:
        """Put one record, its manifest and its index entry, verify them, then remove the
        files locally; the record's key. Raises UploadError (FileHeld for this file alone),
        OSError."""
        from botocore.exceptions import BotoCoreError, ClientError
        manifest_path = path.with_name(manifest_name(path.name))
        manifest_bytes = manifest_path.read_bytes()
        try:
            manifest = load_manifest(manifest_bytes, path.name)
        except ManifestError as exc:
            raise FileHeld(f"{path.name} is not uploaded: its manifest {exc}") from None
        car = manifest["car"]
        if car == DEMO_CAR and self.car != DEMO_CAR:
            raise FileHeld(f"{path.name} is a drive of the simulated car ({DEMO_CAR}): not "
                           f"uploaded with car {self.car}'s settings")
        size, md5_b64, sha256 = digests(path)
        if (size, sha256) != (manifest["size"], manifest["sha256"]):
            raise FileHeld(f"{path.name} is not uploaded: it changed after it was finished "
                           f"(size {size}, sha256 {sha256[:12]}..., its manifest says "
                           f"{manifest['size']}, {str(manifest['sha256'])[:12]}...)")
        key = object_key(self.settings.prefix, car, path)
        try:
            with open(path, "rb") as body:
                key = self._put_new(key, body, size, md5_b64, sha256,
                                    CONTENT_TYPES.get(path.suffix.lower(), "text/plain"))
            meta = io.BytesIO(manifest_bytes)
            self._put_new(key + MANIFEST_SUFFIX, meta, len(manifest_bytes),
                          base64.b64encode(hashlib.md5(manifest_bytes).digest()).decode(),
                          hashlib.sha256(manifest_bytes).hexdigest(), "application/json")
            self._put_entry(index_key(self.settings.prefix, key),
                            dump_manifest(index_entry(manifest, key)))
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code.isdigit():  # a HEAD reply has no body to say why: ask in a way that does
                self._diagnose()
            raise classify(exc, self.settings.endpoint) from None
        except BotoCoreError as exc:
            raise classify(exc, self.settings.endpoint) from None
        self._retire(path)  # the record first: a manifest left alone is tidied later
        try:
            self._retire(manifest_path)
        except FileNotFoundError:
            pass  # tidied meanwhile (tidy_orphan_manifests) as an orphan
        return key

    def _put_new(self, key: str, body: BinaryIO, size: int, md5_b64: str, sha256: str,
                 content_type: str) -> str:
        """Put body under key, or under the first alternative key whose object is absent
        or already these bytes; never over other bytes. The key it is stored under."""
        candidate, number = key, 0
        while True:
            found = self._stored(candidate, size, sha256)
            if found == "same":  # after a crash or a lost reply it may be there already
                return candidate
            if found == "different":
                number += 1
                if number > MAX_ALTERNATIVES:
                    raise UploadError(f"{key}: {MAX_ALTERNATIVES} other objects hold its "
                                      "names already")
                log.warning("s3://%s/%s holds other bytes than %s; not replaced: trying %s",
                            self.settings.bucket, candidate, key.rsplit("/", 1)[-1],
                            alternative_key(key, number))
                candidate = alternative_key(key, number)
                continue
            body.seek(0)
            if not self._put(candidate, body, size, md5_b64, sha256, content_type):
                continue  # another writer got there first: look at what it wrote
            if self._stored(candidate, size, sha256) != "same":
                raise UploadError(f"{candidate}: the server's copy does not match the file")
            return candidate

    def _put_entry(self, key: str, data: bytes) -> None:
        """Put an index entry unless one is there. The entry's key is named after the
        record's own key, which no other record can hold: any entry already there (this
        upload's, before a crash, or an older ECCM's wording) describes this record."""
        sha256 = hashlib.sha256(data).hexdigest()
        if self._stored(key, len(data), sha256) != "absent":
            return
        self._put(key, io.BytesIO(data), len(data),
                  base64.b64encode(hashlib.md5(data).digest()).decode(), sha256,
                  "application/json")  # False: another uploader put it meanwhile
        if self._stored(key, len(data), sha256) == "absent":
            raise UploadError(f"{key}: not in the bucket after its PUT")

    def _put(self, key: str, body: BinaryIO, size: int, md5_b64: str, sha256: str,
             content_type: str) -> bool:
        """One PUT that creates the object only if the key is free; False if it was not."""
        from botocore.exceptions import ClientError
        args = dict(Bucket=self.settings.bucket, Key=key, Body=body, ContentMD5=md5_b64,
                    ContentLength=size, ContentType=content_type,
                    Metadata={"sha256": sha256})
        try:
            if self._conditional:
                self.client.put_object(IfNoneMatch="*", **args)
            else:
                self.client.put_object(**args)
            return True
        except ClientError as exc:
            refusal = put_refusal(exc)
            if refusal == "taken":
                return False
            if self._conditional and refusal == "unsupported":
                # An S3 server without conditional writes: the HEAD just before the PUT
                # is then the only guard.
                log.warning("the S3 server does not support conditional PUT (If-None-Match); "
                            "ECCM checks each key just before it writes instead")
                self._conditional = False
                body.seek(0)
                return self._put(key, body, size, md5_b64, sha256, content_type)
            raise

    def _diagnose(self) -> None:
        """Raise the precise UploadError (bad keys, no bucket...) behind a bare 403/404."""
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            self.client.list_objects_v2(Bucket=self.settings.bucket, MaxKeys=1)
        except (ClientError, BotoCoreError) as exc:
            raise classify(exc, self.settings.endpoint) from None

    def _stored(self, key: str, size: int, sha256: str) -> str:
        """'absent', 'same' (these bytes) or 'different' (anything else) under key."""
        from botocore.exceptions import ClientError
        try:
            head = self.client.head_object(Bucket=self.settings.bucket, Key=key)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404 or exc.response.get("Error", {}).get("Code") in ("404",
                                                                               "NoSuchKey"):
                return "absent"
            raise
        if head.get("ContentLength") != size:
            return "different"
        stored_sha = head.get("Metadata", {}).get("sha256")
        if stored_sha is None:  # put there by another tool: compare the bytes themselves
            obj = self.client.get_object(Bucket=self.settings.bucket, Key=key)
            digest = hashlib.sha256()
            for block in iter(lambda: obj["Body"].read(1 << 20), b""):
                digest.update(block)
            stored_sha = digest.hexdigest()
        return "same" if stored_sha == sha256 else "different"

    def _retire(self, path: Path) -> None:
        if self.keep_uploaded:
            folder = self.outbox.parent / UPLOADED
            folder.mkdir(exist_ok=True)
            os.replace(path, folder / path.name)
        else:
            path.unlink()


def prune_uploaded(folder: Path, keep_days: float, now: Optional[float] = None) -> int:
    """Delete kept copies older than keep_days (they are on the server); how many."""
    if not folder.is_dir():
        return 0
    limit = (now or time.time()) - keep_days * 86400
    removed = 0
    for path in folder.iterdir():
        if path.is_file() and path.stat().st_mtime < limit:
            path.unlink()
            removed += 1
    return removed


class Uploader(Worker):
    """The upload thread: outbox, oldest first, forever."""

    name = "uploader"
    beats = False  # one upload may rightly take minutes on a slow link; botocore times out

    def __init__(self, stop_event: threading.Event, state: SharedState, store: S3Store,
                 *, max_delay: float = 300.0, keep_days: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, first_delay: float = 1.0,
                 idle_poll: float = IDLE_POLL, slow_retry: float = SLOW_RETRY):
        super().__init__(stop_event)
        self.state = state
        self.store = store
        self.backoff = Backoff(max_delay, first=first_delay)  # between failed attempts
        self.idle_poll = idle_poll  # between two looks at an empty outbox
        self.slow_retry = slow_retry  # at least, after an error only the user can fix
        self.keep_days = keep_days
        self.clock = clock
        self._problem: Optional[str] = None
        self._last_prune = 0.0
        self._held: Dict[str, str] = {}  # file name -> why it is not uploaded (logged once)
        self._health = UploadHealth()

    @classmethod
    def from_config(cls, stop_event: threading.Event, state: SharedState,
                    cfg: "Config") -> Optional["Uploader"]:
        """The uploader the configuration describes, with its own S3Store; None without an
        S3 server (its link then says disabled)."""
        if not cfg.s3_enabled:
            state.set_link("s3", DISABLED)
            return None
        return cls(stop_event, state, S3Store.from_config(cfg),
                   keep_days=cfg.S3_KEEP_UPLOADED_DAYS)

    def run(self) -> None:
        """Runs in the uploader thread."""
        while not self.stop_event.is_set():
            files = [p for p in pending_files(self.store.outbox)
                     if p.name not in self._held]
            self._report(backlog=len(files), held=len(self._held))
            if not files:
                self._housekeeping()
                self.stop_event.wait(self.idle_poll)
                continue
            for path in files:
                if self.stop_event.is_set():
                    return
                if not path.exists():
                    continue
                delay = self._attempt(path)
                if delay:
                    self.state.count("upload_retries")
                    self.stop_event.wait(delay)
                    break

    def _attempt(self, path: Path) -> float:
        """Upload one file; 0 on success or when only this file is held back, else the
        delay before trying again."""
        try:
            key = self.store.upload(path)
        except FileHeld as exc:
            self._held[path.name] = str(exc)  # until the next start: a person must look
            self.state.count("upload_held")
            log.error("%s; it stays in %s", exc, self.store.outbox)
            return 0.0
        except UploadError as exc:
            self._problem_seen(str(exc))
            delay = self.backoff.next()
            return max(delay, self.slow_retry) if exc.permanent else delay
        except OSError as exc:  # the local file: vanished or unreadable
            self._problem_seen(f"cannot read {path.name}: {exc}")
            return self.backoff.next()
        self.backoff.reset()
        if self._problem is not None:
            log.info("S3 upload works again")
            self._problem = None
        self.state.set_link("s3", CONNECTED, self.store.settings.bucket)
        self.state.count("files_uploaded")
        self._report(last=f"{key} at "
                          f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}")
        log.info("uploaded %s -> s3://%s/%s", path.name, self.store.settings.bucket, key)
        return 0.0

    def _report(self, **changes: Any) -> None:
        self._health = replace(self._health, **changes)
        self.state.report(self._health)

    def _problem_seen(self, problem: str) -> None:
        self.state.set_link("s3", LOST, problem)
        self.state.count("upload_errors")
        if problem != self._problem:
            log.error("S3 upload failed, files kept and retried: %s", problem)
            self._problem = problem

    def _housekeeping(self) -> None:
        """While idle: tidy what a stop between two removals left, prune kept copies."""
        tidy_orphan_manifests(self.store.outbox, self.store.outbox.parent / UPLOADED)
        if self.store.keep_uploaded and self.clock() - self._last_prune > 3600:
            self._last_prune = self.clock()
            removed = prune_uploaded(self.store.outbox.parent / UPLOADED, self.keep_days)
            if removed:
                log.info("removed %s older than %s", plural(removed, "uploaded copy",
                                                            "uploaded copies"),
                         plural(float(self.keep_days), "day"))

