"""S3 upload against a real S3 server (SeaweedFS on 127.0.0.1)."""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from eccm.sinks.layout import index_key
from eccm.sinks.records import manifest_from_file, write_manifest
from eccm.core.state import SharedState
from eccm.sinks.upload import (S3Settings, UploadError, Uploader, S3Store, classify, digests,
                               endpoint_url, object_key, pending_files)

from conftest import REPO, free_port, wait_for, write_config
from s3server import ACCESS_KEY, SECRET_KEY, SeaweedFS, serve

BUCKET = "eccm-logs"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    yield from serve(tmp_path_factory, BUCKET)


def settings(endpoint: str, **kw) -> S3Settings:
    args = dict(endpoint=endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                bucket=BUCKET)
    args.update(kw)
    return S3Settings(**args)


def finish(path: Path) -> Path:
    """Give a record file its manifest, as the recorder does when it closes one."""
    write_manifest(path, manifest_from_file(path, [","]))
    return path


def record(outbox: Path, car: str, stamp: str, size: int, seed: int = 0) -> Path:
    """A finished record of about `size` bytes (random whole rows) with its manifest,
    named as an older recorder named them."""
    outbox.mkdir(parents=True, exist_ok=True)
    path = outbox / f"{car}_{stamp}.csv"
    rng = random.Random(seed)
    with open(path, "wb") as fh:
        fh.write(b"TIME (UTC),RPM (rpm)\n")
        while fh.tell() < size:
            fh.write(f"2026-01-01T00:00:00.000Z,{rng.random() * 6000:.2f}\n".encode())
    return finish(path)


def stored(s3: SeaweedFS, key: str) -> bytes:
    return s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()


def test_keys_and_endpoints():
    path = Path("/x/AB-1_20260305T235959Z.csv")
    assert object_key("car-logs", "AB-1", path) == \
        "car-logs/car=AB-1/date=2026-03-05/AB-1_20260305T235959Z.csv"
    assert object_key("", "AB-1", path).startswith("car=AB-1/")
    assert endpoint_url("s3.example.com:9000") == "https://s3.example.com:9000"
    assert endpoint_url("http://127.0.0.1:8333") == "http://127.0.0.1:8333"


@pytest.mark.parametrize("size", [1024, 9 * 1024 * 1024, 60 * 1024 * 1024])
def test_files_arrive_byte_identical_then_local_copy_goes(s3, tmp_path, size):
    outbox = tmp_path / "records" / "outbox"
    path = record(outbox, "CAR1", "20260101T080000Z", size, seed=size)
    data = path.read_bytes()
    session = S3Store(settings(s3.endpoint), "CAR1", outbox)
    key = session.upload(path)
    assert stored(s3, key) == data
    head = s3.client().head_object(Bucket=BUCKET, Key=key)
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert not path.exists()


def test_keep_uploaded_moves_the_file(s3, tmp_path):
    outbox = tmp_path / "records" / "outbox"
    path = record(outbox, "CAR1", "20260101T090000Z", 5000)
    size, _, sha = digests(path)
    S3Store(settings(s3.endpoint), "CAR1", outbox, keep_uploaded=True).upload(path)
    kept = tmp_path / "records" / "uploaded" / path.name
    assert kept.exists() and digests(kept)[2] == sha


def test_s3_fixture_listens_only_on_ports_it_chose(tmp_path):
    """CI once failed because a second `weed mini` (another suite on the same machine)
    held the Iceberg/Lance catalog ports and weed's own search for a free one raced. The
    fixture must start nothing on a port it did not choose (weed's defaults: 8181, 9101,
    gRPC at HTTP port + 10000)."""
    server = SeaweedFS(tmp_path / "weed")
    try:
        assert "Buckets" in server.client().list_buckets()
        listening = server.listening_ports()
        assert server.port in listening
        assert listening <= server.chosen_ports, sorted(listening - server.chosen_ports)
    finally:
        server.stop()


def test_s3_fixture_starts_again_when_weed_moves_a_taken_grpc_port(tmp_path, monkeypatch):
    """A port chosen free can be taken before weed binds it. For a gRPC port weed does not
    exit but listens on a port of its own search (CI saw one): the fixture starts again."""
    import s3server
    real_free_port = s3server.free_port
    calls = []
    with socket.socket() as holder:  # held on all interfaces, as another program would
        holder.bind(("", 0))
        holder.listen()
        taken = holder.getsockname()[1]

        def free_port():
            calls.append(1)
            # Call 3 of the first start is -master.port.grpc (the S3 port, -master.port).
            return taken if len(calls) == 3 else real_free_port()

        monkeypatch.setattr(s3server, "free_port", free_port)
        server = SeaweedFS(tmp_path / "weed")
        try:
            assert taken not in server.chosen_ports
            listening = server.listening_ports()
            assert listening <= server.chosen_ports, sorted(listening - server.chosen_ports)
        finally:
            server.stop()


def test_server_down_then_back_delivers_everything_with_backoff(tmp_path):
    port = free_port()
    outbox = tmp_path / "records" / "outbox"
    files = {record(outbox, "CAR2", f"20260102T0{i}0000Z", 20_000, seed=i).name:
             None for i in range(4)}
    contents = {name: (outbox / name).read_bytes() for name in files}
    state = SharedState()
    stop = threading.Event()
    store = S3Store(settings(f"http://127.0.0.1:{port}"), "CAR2", outbox)
    attempts = []  # when each upload was tried
    real_upload = store.upload

    def upload(path):
        attempts.append(time.monotonic())
        return real_upload(path)
    store.upload = upload
    first, cap = 0.1, 0.8  # the daemon's are 1 s and 300 s: the same doubling, shorter
    # The server answers before its bucket is made: NoSuchBucket, an error only the user
    # can fix, is then retried after `cap` too (the daemon waits a minute).
    uploader = Uploader(stop, state, store, max_delay=cap, first_delay=first, slow_retry=cap)
    uploader.start()
    try:
        # Nothing listens on the port: retried, each time after a longer wait, up to the cap.
        wait_for(lambda: state.snapshot().counters.get("upload_retries", 0) >= 6, 30,
                 what="six retries")
        gaps = [b - a for a, b in zip(attempts, attempts[1:])][:5]
        planned = [min(first * 2 ** i, cap) for i in range(5)]  # 0.1 0.2 0.4 0.8 0.8
        # Backoff jitter is +-20 %; an attempt on a closed port takes milliseconds.
        assert all(p * 0.8 <= g <= p * 1.2 + 1.0 for g, p in zip(gaps, planned)), \
            f"waits {gaps} between attempts, planned {planned}: backoff not observed"
        assert sorted(p.name for p in pending_files(outbox)) == sorted(files)
        server = SeaweedFS(tmp_path / "seaweedfs", s3_port=port)
        try:
            server.make_bucket(BUCKET)
            wait_for(lambda: not pending_files(outbox), 60, what="the backlog to drain")
            for name, data in contents.items():
                assert stored(server, f"car-logs/car=CAR2/date=2026-01-02/{name}") == data
        finally:
            server.stop()
    finally:
        stop.set()
        uploader.join(10)
    assert state.snapshot().counters["files_uploaded"] == 4


def run_upload(config: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECCM_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "eccm", "upload", "--config", str(config)],
                          capture_output=True, text=True, timeout=120, env=env)


def s3_config(tmp_path: Path, endpoint: str, **kw) -> Path:
    values = dict(S3_SERVER_ENDPOINT=endpoint, S3_SERVER_AK=ACCESS_KEY,
                  S3_SERVER_SK=SECRET_KEY, S3_SERVER_BUCKET=BUCKET)
    values.update(kw)
    return write_config(tmp_path, **values)


@pytest.mark.parametrize("problem,expected", [
    ("secret", "rejected the access key or secret key"),
    ("bucket", "bucket does not exist"),
    ("endpoint", "cannot reach the S3 server"),
])
def test_clear_errors_files_kept(s3, tmp_path, problem, expected):
    kw = {}
    endpoint = s3.endpoint
    if problem == "secret":
        kw["S3_SERVER_SK"] = "wrong-secret-key-value"
    elif problem == "bucket":
        kw["S3_SERVER_BUCKET"] = "no-such-bucket-here"
    else:
        endpoint = f"http://127.0.0.1:{free_port()}"
    config = s3_config(tmp_path, endpoint, **kw)
    path = record(tmp_path / "records" / "outbox", "TEST-CAR", "20260103T000000Z", 3000)
    result = run_upload(config)
    assert result.returncode == 1
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert "wrong-secret-key-value" not in result.stdout + result.stderr
    assert SECRET_KEY not in result.stdout + result.stderr
    assert path.exists()


def test_endpoint_without_scheme_on_a_plain_http_server_names_the_fix(s3, tmp_path):
    """`host:port` means https; SeaweedFS serves plain http, so the TLS handshake fails.
    The user is told once what that endpoint means and what to write instead."""
    endpoint = f"127.0.0.1:{s3.port}"
    path = record(tmp_path / "records" / "outbox", "TEST-CAR", "20260103T010000Z", 3000)
    result = run_upload(s3_config(tmp_path, endpoint))
    output = result.stdout + result.stderr
    assert result.returncode == 1
    fix = f"S3_SERVER_ENDPOINT=http://{endpoint}"
    assert output.count(fix) == 1, output
    assert output.count("means https") == 1, output
    assert "1 file, 0.0 MB to upload" in result.stdout
    assert "1 file kept" in result.stderr
    assert "Traceback" not in output and SECRET_KEY not in output
    assert path.exists()


def test_tls_hint_is_the_same_sentence_for_every_file(s3, tmp_path):
    """The daemon logs a problem when it changes: one sentence for all files, not one per
    object URL, and permanent (retried slowly: only the user can fix the endpoint)."""
    outbox = tmp_path / "records" / "outbox"
    session = S3Store(settings(f"127.0.0.1:{s3.port}"), "CAR1", outbox)
    errors = []
    for i in range(2):
        path = record(outbox, "CAR1", f"20260101T1{i}0000Z", 1000, seed=i)
        with pytest.raises(UploadError) as caught:
            session.upload(path)
        errors.append(caught.value)
        assert path.exists()
    assert str(errors[0]) == str(errors[1]) and errors[0].permanent
    assert f"http://127.0.0.1:{s3.port}" in str(errors[0])


def test_https_endpoint_on_a_plain_http_server_names_the_fix_too(s3, tmp_path):
    endpoint = f"https://127.0.0.1:{s3.port}"
    record(tmp_path / "records" / "outbox", "TEST-CAR", "20260103T020000Z", 3000)
    result = run_upload(s3_config(tmp_path, endpoint))
    assert result.returncode == 1
    assert f"S3_SERVER_ENDPOINT=http://127.0.0.1:{s3.port}" in result.stderr, result.stderr


def test_other_tls_failures_are_not_blamed_on_the_scheme():
    """A certificate problem or a dropped handshake is not 'write http://': said as it
    is, and retried with the usual backoff."""
    import ssl

    from botocore.exceptions import SSLError
    for error in (ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] "
                                                  "certificate verify failed"),
                  ssl.SSLEOFError(8, "EOF occurred in violation of protocol")):
        problem = classify(SSLError(endpoint_url="https://h:9000", error=error), "h:9000")
        assert not problem.permanent and "http://" not in str(problem), problem
    plain = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    problem = classify(SSLError(endpoint_url="https://h:9000", error=plain), "h:9000")
    assert problem.permanent and "S3_SERVER_ENDPOINT=http://h:9000" in str(problem)


def test_pruned_copies_are_counted_in_the_singular(tmp_path, caplog):
    outbox = tmp_path / "records" / "outbox"
    old = record(tmp_path / "records" / "uploaded", "CAR1", "20250101T000000Z", 100)
    os.utime(old, (0, 0))
    store = S3Store(settings("http://127.0.0.1:9"), "CAR1", outbox, keep_uploaded=True)
    # clock: over an hour since the last pruning, whatever the machine's uptime
    uploader = Uploader(threading.Event(), SharedState(), store, keep_days=1,
                        clock=lambda: 1e9)
    with caplog.at_level("INFO", logger="eccm.sinks.upload"):
        uploader._housekeeping()
    assert not old.exists()
    assert "removed 1 uploaded copy older than 1 day" in caplog.text


def test_upload_command_pushes_backlog_with_progress(s3, tmp_path):
    outbox = tmp_path / "records" / "outbox"
    for i in range(3):
        record(outbox, "TEST-CAR", f"20260104T00{i}000Z", 100_000, seed=i)
    result = run_upload(s3_config(tmp_path, s3.endpoint))
    assert result.returncode == 0, result.stderr
    assert "3 files, 0.3 MB to upload" in result.stdout
    assert "[3/3]" in result.stdout and "MB/s" in result.stdout
    assert pending_files(outbox) == []


def test_kill9_during_uploads_30_times_loses_and_duplicates_nothing(s3, tmp_path,
                                                                    daemon_factory):
    outbox = tmp_path / "records" / "outbox"
    prefix = "kill9"
    originals = {}
    for i in range(12):
        path = record(outbox, "TEST-CAR", f"20260105T{i:02d}0000Z", 6 * 1024 * 1024, seed=i)
        originals[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    config = s3_config(tmp_path, s3.endpoint, S3_KEY_PREFIX=prefix,
                       OBD_INTERFACE=tmp_path / "no-adapter")
    rng = random.Random(30)
    kills = 0

    def index_of(key: str) -> dict:
        from botocore.exceptions import ClientError
        try:
            return json.loads(stored(s3, index_key(prefix, key)))
        except ClientError:  # not there
            return {}
    while kills < 30:
        daemon = daemon_factory(config)
        time.sleep(rng.uniform(0.3, 2.5))  # before, during or after a PUT, before a delete
        daemon.stop(signal.SIGKILL)
        kills += 1
        for name, sha in originals.items():  # after every kill: each file somewhere, whole
            if not (outbox / name).exists():
                key = f"{prefix}/car=TEST-CAR/date=2026-01-05/{name}"
                head = s3.client().head_object(Bucket=BUCKET, Key=key)
                assert head["Metadata"]["sha256"] == sha, f"{name} lost after kill {kills}"
                # A local file goes only once its index entry is in the bucket too.
                assert index_of(key).get("key") == key, f"{name}: no index entry, kill {kills}"
    daemon = daemon_factory(config)  # let it finish
    wait_for(lambda: not pending_files(outbox), 120, what="the backlog to drain")
    daemon.stop()
    listing = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")
    everything = [o["Key"] for o in listing.get("Contents", [])]
    keys = [k for k in everything if not k.endswith(".manifest.json")]
    assert len(keys) == len(set(keys)) == len(originals)  # no -dup copy either
    assert sorted(everything) == sorted(keys + [k + ".manifest.json" for k in keys])
    for key in keys:
        name = key.rsplit("/", 1)[1]
        assert hashlib.sha256(stored(s3, key)).hexdigest() == originals[name]
        assert index_of(key).get("sha256") == originals[name]  # every record has its entry
    entries = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix + "-index/")
    assert sorted(o["Key"] for o in entries.get("Contents", [])) == \
        sorted(index_key(prefix, k) for k in keys)  # and only one each
    assert list(outbox.iterdir()) == []
    print(f"\nkill -9 x{kills}: {len(keys)}/{len(originals)} files in the bucket exactly once, "
          "byte-identical; 0 lost")


def test_fleet_layout_queried_in_place_with_duckdb(s3, tmp_path):
    duckdb = pytest.importorskip("duckdb", reason="duckdb is a test extra")
    import duckdb_extension_httpfs
    prefix = "fleet"
    rows = {}
    for car, day, count in (("CAR-A", "20260110", 7), ("CAR-A", "20260111", 5),
                            ("CAR-B", "20260110", 3), ("CAR-B", "20260111", 11)):
        outbox = tmp_path / car / "outbox"
        outbox.mkdir(parents=True, exist_ok=True)
        path = outbox / f"{car}_{day}T120000Z.csv"
        path.write_text("TIME (UTC),RPM (rpm)\n" + "".join(
            f"2026-01-10T12:00:{i:02d}.000Z,{800 + i}\n" for i in range(count)))
        finish(path)
        S3Store(settings(s3.endpoint, prefix=prefix), car, outbox).upload(path)
        rows[car] = rows.get(car, 0) + count
    extension = next(Path(duckdb_extension_httpfs.__file__).parent.rglob(
        "httpfs.duckdb_extension"))
    con = duckdb.connect()
    con.execute(f"LOAD '{extension}'")
    con.execute(f"""CREATE SECRET eccm (TYPE s3, KEY_ID '{ACCESS_KEY}',
                    SECRET '{SECRET_KEY}', ENDPOINT '127.0.0.1:{s3.port}',
                    URL_STYLE 'path', USE_SSL false, REGION 'us-east-1')""")
    result = con.execute(
        f"SELECT car, count(*) FROM read_csv('s3://{BUCKET}/{prefix}/*/*/*.csv', "
        "hive_partitioning=true) GROUP BY car ORDER BY car").fetchall()
    assert dict(result) == rows
