"""Native TLS of the socket server (stdlib ssl): real TLS clients (openssl s_client,
ncat --ssl, Python ssl) log in and read values; a plain-text client gets nothing usable;
the configuration refuses half or broken TLS settings, naming the key, printing no file
content. Throwaway certificates are made with the openssl command; every server listens
on 127.0.0.1.
"""
from __future__ import annotations

import re
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Tuple

import pytest

from eccm.config import ConfigError, load
from eccm.server.tcp import SocketServer
from eccm.core.state import SharedState

import test_server
from conftest import REPO, free_port, require_tool, wait_for, write_config
from test_server import run_client

frozen_car = test_server.frozen_car  # the fixture: the simulated car on a pty

SECRET = "tls-Secret-0123456789"


def make_pair(folder: Path, name: str = "eccm", encrypt: bool = False) -> Tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (EC P-256: quick to make) and its key."""
    openssl = require_tool("openssl")
    cert, key = folder / f"{name}-cert.pem", folder / f"{name}-key.pem"
    argv = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)]
    argv += ["-passout", "pass:hunter2-passphrase"] if encrypt else ["-nodes"]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Tuple[Path, Path]:
    return make_pair(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_server(pair, request):
    """An in-process TLS server; its login deadline 2 s, or the test's parameter."""
    stop = threading.Event()
    state = SharedState()
    state.update_values({"RPM": (780, "rpm")}, origin="obd")
    server = SocketServer(stop, state, None, bind="127.0.0.1", port=0, secret=SECRET,
                          car="TEST", tls_cert=str(pair[0]), tls_key=str(pair[1]),
                          login_deadline=getattr(request, "param", 2.0), tick=0.05)
    server.prepare()
    server.start()
    yield server
    stop.set()
    assert server.join(5)


SCRIPT = f"AUTH {SECRET}\nGET RPM\nQUIT\n"


def assert_served(out: str) -> None:
    assert re.search(r"^ECCM .* challenge=[0-9a-f]+$", out, re.M), out
    assert "OK authenticated\nRPM 780 rpm age=" in out, out
    assert out.rstrip().endswith("OK bye"), out


def test_openssl_s_client_logs_in_and_reads(tls_server):
    openssl = require_tool("openssl")
    done = subprocess.run([openssl, "s_client", "-connect", f"127.0.0.1:{tls_server.port}",
                           "-quiet"], input=SCRIPT.encode(), capture_output=True, timeout=20)
    assert_served(done.stdout.decode())
    assert done.returncode == 0, done.stderr  # the server ended the session cleanly


def test_ncat_ssl_logs_in_and_reads(tls_server):
    ncat = require_tool("ncat")
    done = subprocess.run([ncat, "--ssl", "127.0.0.1", str(tls_server.port)],
                          input=SCRIPT.encode(), capture_output=True, timeout=20)
    assert_served(done.stdout.decode())
    assert done.returncode == 0, done.stderr


def test_python_client_verifies_the_served_certificate(tls_server, pair):
    context = ssl.create_default_context(cafile=str(pair[0]))
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            assert sock.version() in ("TLSv1.2", "TLSv1.3")
            sock.sendall(SCRIPT.encode())
            out = b""
            while b"OK bye" not in out:
                chunk = sock.recv(4096)
                assert chunk
                out += chunk
    assert_served(out.decode())


@pytest.mark.parametrize("tls_server", [0.5], indirect=True)  # a short login deadline
def test_a_plain_text_client_gets_nothing_usable(tls_server):
    nc = require_tool("nc")
    out = run_client([nc, "-q", "3", "127.0.0.1", str(tls_server.port)], SCRIPT)
    assert not re.search(r"ECCM|OK|RPM|ERR|challenge", out), out
    # One that waits for a greeting gets none, and is closed by the login deadline.
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as sock:
        sock.settimeout(tls_server.login_deadline + 3)
        assert sock.recv(4096) == b""
    assert "RPM 780" not in out


@pytest.mark.parametrize("tls_server", [0.5], indirect=True)  # a short login deadline
def test_tls_connections_count_against_the_same_limits(tls_server, pair):
    """The handshake happens inside the login deadline and the waiting quota: a client
    that opens TLS and never logs in is closed like a plain one."""
    context = ssl.create_default_context(cafile=str(pair[0]))
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.settimeout(tls_server.login_deadline + 3)
            out = b""
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                out += chunk
    assert out.decode().endswith("ERR no login within 0.5 s; closing\n")


# Configuration.

def tls_config(tmp_path: Path, **keys: str) -> Path:
    return write_config(tmp_path, ENABLE_SOCKET_SERVER="yes", SOCKET_SERVER_SECRET=SECRET,
                        **keys)


def check_config(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eccm", "check-config", "--config",
                           str(path)], capture_output=True, text=True, timeout=60,
                          cwd=path.parent, env={"PATH": "/usr/bin:/bin",
                                                "PYTHONPATH": str(REPO)})


def problems(path: Path):
    with pytest.raises(ConfigError) as err:
        load(path, environ={})
    return err.value.problems


def test_config_takes_both_files_relative_to_its_folder(tmp_path, pair):
    (tmp_path / "tls").mkdir()
    cert, key = make_pair(tmp_path / "tls")
    cfg, _ = load(tls_config(tmp_path, SOCKET_SERVER_TLS_CERT="tls/eccm-cert.pem",
                             SOCKET_SERVER_TLS_KEY="tls/eccm-key.pem"), environ={})
    assert cfg.SOCKET_SERVER_TLS_CERT == str(cert)
    assert cfg.SOCKET_SERVER_TLS_KEY == str(key)
    cfg, _ = load(tls_config(tmp_path), environ={})
    assert cfg.SOCKET_SERVER_TLS_CERT is None and cfg.SOCKET_SERVER_TLS_KEY is None


@pytest.mark.parametrize("given,missing", [
    ("SOCKET_SERVER_TLS_CERT", "SOCKET_SERVER_TLS_KEY"),
    ("SOCKET_SERVER_TLS_KEY", "SOCKET_SERVER_TLS_CERT"),
])
def test_config_wants_both_tls_files_or_neither(tmp_path, pair, given, missing):
    path = tls_config(tmp_path, **{given: str(pair[0] if given.endswith("CERT") else pair[1])})
    (problem,) = problems(path)
    assert problem.startswith(f"{missing}: required when {given} is set"), problem
    done = check_config(path)
    assert done.returncode == 2 and missing in done.stderr


def test_config_names_a_missing_or_unusable_tls_file_without_printing_it(tmp_path, pair):
    cert, key = pair
    (problem,) = problems(tls_config(tmp_path, SOCKET_SERVER_TLS_CERT=str(tmp_path / "no.pem"),
                                     SOCKET_SERVER_TLS_KEY=str(key)))
    assert problem.startswith("SOCKET_SERVER_TLS_CERT = ") and "no such file" in problem
    # A key given as the certificate, and the other way round: named, never quoted.
    (problem,) = problems(tls_config(tmp_path, SOCKET_SERVER_TLS_CERT=str(key),
                                     SOCKET_SERVER_TLS_KEY=str(key)))
    assert problem.startswith("SOCKET_SERVER_TLS_CERT = ") and "not a PEM certificate" in problem
    path = tls_config(tmp_path, SOCKET_SERVER_TLS_CERT=str(cert), SOCKET_SERVER_TLS_KEY=str(cert))
    (problem,) = problems(path)
    assert problem.startswith("SOCKET_SERVER_TLS_KEY = ")
    key_text = key.read_text()
    body = key_text.splitlines()[1]
    done = check_config(path)
    assert done.returncode == 2 and "SOCKET_SERVER_TLS_KEY" in done.stderr
    assert body not in done.stdout + done.stderr
    assert "PRIVATE KEY-----" not in done.stdout + done.stderr


def test_config_refuses_another_certificates_key_and_a_key_with_a_passphrase(tmp_path, pair):
    other_cert, other_key = make_pair(tmp_path, "other")
    (problem,) = problems(tls_config(tmp_path, SOCKET_SERVER_TLS_CERT=str(pair[0]),
                                     SOCKET_SERVER_TLS_KEY=str(other_key)))
    assert problem.startswith("SOCKET_SERVER_TLS_KEY = ") and "own private key" in problem
    locked_cert, locked_key = make_pair(tmp_path, "locked", encrypt=True)
    path = tls_config(tmp_path, SOCKET_SERVER_TLS_CERT=str(locked_cert),
                      SOCKET_SERVER_TLS_KEY=str(locked_key))
    (problem,) = problems(path)
    assert problem.startswith("SOCKET_SERVER_TLS_KEY = ") and "without a passphrase" in problem
    done = check_config(path)  # never stops to ask for the passphrase
    assert done.returncode == 2 and "hunter2" not in done.stdout + done.stderr


def test_check_config_shows_the_tls_files(tmp_path, pair):
    done = check_config(tls_config(tmp_path, SOCKET_SERVER_TLS_CERT=str(pair[0]),
                                   SOCKET_SERVER_TLS_KEY=str(pair[1])))
    assert done.returncode == 0, done.stderr
    assert re.search(r"SOCKET_SERVER_TLS_CERT\s+= " + re.escape(str(pair[0])), done.stdout)
    assert SECRET not in done.stdout


def test_the_server_refuses_to_start_with_files_it_cannot_load(tmp_path, pair):
    server = SocketServer(threading.Event(), SharedState(), None, bind="127.0.0.1", port=0,
                          secret=SECRET, car="TEST", tls_cert=str(pair[1]),
                          tls_key=str(pair[1]))
    with pytest.raises(OSError, match="SOCKET_SERVER_TLS_CERT/SOCKET_SERVER_TLS_KEY"):
        server.prepare()


def test_the_daemon_serves_tls_when_configured(tmp_path, pair, frozen_car, daemon_factory):
    port = free_port()
    daemon = daemon_factory(tls_config(
        tmp_path, OBD_INTERFACE=frozen_car.port, SOCKET_SERVER_PORT=str(port),
        SOCKET_SERVER_TLS_CERT=str(pair[0]), SOCKET_SERVER_TLS_KEY=str(pair[1])))
    wait_for(lambda: "socket server listening" in daemon.log, 30, what="the server")
    assert f"listening on 127.0.0.1:{port}, TLS" in daemon.log
    openssl = require_tool("openssl")
    done = subprocess.run([openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-quiet"],
                          input=SCRIPT.encode(), capture_output=True, timeout=20)
    assert "OK authenticated" in done.stdout.decode()
