"""The socket server in the running daemon, driven by real nc, socat, telnet and sockets.
(The protocol over a socket with a fake OBD side and shortened delays, in-process:
test_server_session.py.)

The car is ECCM's simulated adapter on a pty with a frozen drive clock, so its values are
known exactly (RPM 780), and J1979-conformant DTC replies (ELM327-emulator 4.0.0 omits
the DTC-count byte in mode 03/07 replies; see DESIGN.md).
"""
from __future__ import annotations

import itertools
import os
import pty
import re
import socket
import subprocess
import threading
import time
import tty

import pytest

from eccm.server.tcp import LOGIN_BURST, MAX_PENDING_PER_ADDRESS, SocketServer
from eccm.sim.car import SimulatedAdapter, SimulatedCar
from eccm.sim.gnss import nmea_sentence
from eccm.core.state import CONNECTED, DISABLED, LOST, SharedState
from eccm.core.health import UploadHealth

from conftest import free_port, part_files, read_records, require_tool, wait_for, write_config

SECRET = "t0p-secret-Key"


@pytest.fixture
def frozen_car():
    car = SimulatedCar(clock=lambda: 0.0, stored_dtcs=["P0301", "P0420"],
                       pending_dtcs=["P0171"])
    adapter = SimulatedAdapter(car, latency=0.002).start()
    yield adapter
    adapter.stop()


@pytest.fixture
def server(tmp_path, frozen_car, daemon_factory):
    port = free_port()
    daemon = daemon_factory(write_config(
        tmp_path, OBD_INTERFACE=frozen_car.port, ENABLE_SOCKET_SERVER="yes",
        SOCKET_SERVER_PORT=port, SOCKET_SERVER_SECRET=SECRET))
    wait_for(lambda: "OBD adapter connected" in daemon.log, 30, what="the car")
    return port, daemon, frozen_car


def talk(port: int, lines, pause: float = 0.3, read_for: float = 1.0,
         source: str = "127.0.0.1") -> str:
    """A Python socket client from `source` (any 127.x address is this machine): send each
    line, then collect what the server says (until it closes or read_for passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5,
                                  source_address=(source, 0)) as sock:
        for line in lines:
            try:
                sock.sendall(line.encode() + b"\n")
            except (BrokenPipeError, ConnectionResetError):
                break  # the server closed: what it said is still to be read
            time.sleep(pause)
        sock.settimeout(read_for)
        out = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                out += chunk
        except (socket.timeout, ConnectionResetError):
            pass
    return out.decode(errors="replace")


def run_client(argv, script: str, timeout: float = 15) -> str:
    result = subprocess.run(argv, input=script.encode(), capture_output=True, timeout=timeout)
    return result.stdout.decode(errors="replace")


def test_nc_get_dtc_clear(server):
    port, daemon, adapter = server
    nc = require_tool("nc")
    out = run_client([nc, "-q", "2", "127.0.0.1", str(port)],
                     f"AUTH {SECRET}\nGET RPM\nDTC\nCLEAR_DTC\nDTC\nQUIT\n")
    lines = out.splitlines()
    assert lines[0].startswith("ECCM ") and "challenge=" in lines[0]
    assert "OK authenticated" in lines
    rpm = next(ln for ln in lines if ln.startswith("RPM "))
    assert re.match(r"RPM 780 rpm age=\d+\.\ds$", rpm)
    assert "STORED P0301 Cylinder 1 Misfire Detected" in lines
    assert any(ln.startswith("STORED P0420") for ln in lines)
    assert any(ln.startswith("PENDING P0171") for ln in lines)
    assert "OK 2 stored, 1 pending" in lines
    assert "OK trouble codes cleared; 0 stored codes left" in lines
    assert "OK 0 stored, 0 pending" in lines
    assert adapter.car.stored_dtcs == []  # cleared in the car itself
    assert lines[-1] == "OK bye"
    assert "AUDIT CLEAR_DTC done" in daemon.log
    assert SECRET not in daemon.log


def test_socat_and_telnet_clients(server):
    port, _, _ = server
    socat = require_tool("socat")
    out = run_client([socat, "-t", "2", "-", f"TCP:127.0.0.1:{port}"],
                     f"auth {SECRET}\nstatus\nquit\n")
    assert "OK authenticated" in out
    assert re.search(r"^vin: VF1SMULATED000042$", out, re.M)
    assert re.search(r"^pids_polled: \d+$", out, re.M)
    telnet = require_tool("telnet")
    script = f"AUTH {SECRET}\\nLIST\\nQUIT\\n"
    out = run_client(["sh", "-c", f"(sleep 1; printf '{script}'; sleep 2) | "
                      f"{telnet} 127.0.0.1 {port}"], "")
    assert "OK authenticated" in out
    assert re.search(r"^RPM rpm\r?$", out, re.M)
    assert "OK bye" in out


def test_legacy_sequence_unchanged(server):
    """An app of the original ECCM: bare secret, then commands without line ends."""
    port, _, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(SECRET.encode())
        time.sleep(0.5)
        sock.sendall(b"QUERY_COMMAND>>RPM")
        assert sock.recv(1024) == b"780.0 revolutions_per_minute\n"
        sock.sendall(b"GET_DTC")
        reply = sock.recv(4096).decode()
    assert reply.startswith("[('P0301', 'Cylinder 1 Misfire Detected'), ('P0420'")
    nc = require_tool("nc")
    out = run_client([nc, "-q", "2", "127.0.0.1", str(port)],
                     f"{SECRET}\nQUERY_COMMAND>>RPM\nGET_DTC\n")
    assert out.splitlines()[0] == "780.0 revolutions_per_minute"  # no greeting for legacy
    assert out.splitlines()[1].startswith("[('P0301'")


def samples(port: int) -> int:
    out = talk(port, [f"AUTH {SECRET}", "JSON on", "STATUS"], pause=0.2, read_for=0.5)
    import json
    status = json.loads([ln for ln in out.splitlines() if '"status"' in ln][0])["status"]
    return int(status["obd_samples"])


def test_abuse_leaves_server_and_polling_alive(server):
    """Behaviour only: under abuse a correct login is served and the car is still polled.
    How much of the polling rate survives: tests/bench/bench_server_abuse.py."""
    port, daemon, _ = server
    results: dict = {}

    def huge_line():
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            try:
                sock.sendall(b"A" * 1_000_000 + b"\n")
            except OSError:
                pass  # the server may close before reading it all
            data = b""
            try:
                while True:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
        results["huge"] = data.decode(errors="replace")

    def garbage():
        results["garbage"] = talk(port, ["\x00\x01\xff\xfe binary \x1b[2J", "\x7f" * 50],
                                  pause=0.1)

    def wrong_secrets():
        # 34 clients at once from another address, 3 wrong secrets each: that address's
        # failed-login budget lets a few be checked; the others are refused unchecked (and
        # the connection closed) or the connection closed to make room, at once.
        outs = []

        def one():
            outs.append(talk(port, ["AUTH wrong"] * 3, pause=0.05, read_for=40,
                             source="127.0.0.5"))
        threads = [threading.Thread(target=one) for _ in range(34)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        results["wrong"] = sum(o.count("ERR wrong secret") for o in outs)
        results["answered"] = sum("ERR" in o for o in outs)

    watchers = []

    def watchers_that_never_read():
        for _ in range(5):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(f"AUTH {SECRET}\nWATCH RPM SPEED COOLANT_TEMP 10\n".encode())
            watchers.append(sock)

    start = samples(port)
    workers = [threading.Thread(target=f) for f in
               (huge_line, garbage, wrong_secrets, watchers_that_never_read)]
    for w in workers:
        w.start()
    # While the attack goes on (the watchers that never read stay connected until the
    # end), a correct login is served and the poller keeps counting samples.
    during = wait_for(lambda: (n := samples(port)) > start and n, 60,
                      what="samples counted under attack")
    wait_for(lambda: samples(port) > during, 60, what="the polling to go on under attack")
    wait_for(lambda: len(watchers) == 5, 30, what="the watchers that never read")
    for w in workers:
        w.join(180)
    assert "ERR line too long" in results["huge"]
    assert "ERR" in results["garbage"]
    assert 0 < results["wrong"] <= LOGIN_BURST + 1  # one budget for the address
    assert results["answered"] == 34

    # 200 simultaneous connections that do not log in: the oldest are closed with a clear
    # line to make room, and a late one is served.
    crowd = []
    for _ in range(200):
        try:
            crowd.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            break
    with socket.create_connection(("127.0.0.1", port), timeout=5) as late:
        late.sendall(f"AUTH {SECRET}\n".encode())
        late.settimeout(5)
        served = late.recv(1024).decode()
    closed = 0
    for sock in crowd:
        sock.settimeout(1)
        try:
            closed += b"ERR too many connections waiting to log in" in sock.recv(4096) + \
                sock.recv(4096)
        except OSError:
            pass
    for sock in crowd + watchers:
        sock.close()
    assert "OK authenticated" in served
    assert closed >= 200 - MAX_PENDING_PER_ADDRESS

    # The daemon is alive and still serving after the crowd leaves.
    wait_for(lambda: "OK authenticated" in talk(port, [f"AUTH {SECRET}"]), 60,
             what="the server to serve again")
    assert daemon.proc.poll() is None
    assert samples(port) > during


def upload_status(state: SharedState) -> dict:
    server = SocketServer(threading.Event(), state, None, bind="127.0.0.1", port=0,
                          secret=None, car="TEST")  # never listens: status() only
    upload = {k: v for k, v in server.status() if "upload" in k}
    assert all(str(value).strip() for value in upload.values()), upload  # no blank line
    return upload


def test_status_upload_lines_say_something_when_nothing_was_uploaded():
    state = SharedState()
    state.set_link("s3", DISABLED)  # what the daemon sets without S3 settings
    assert upload_status(state) == {"upload": "off (S3 not configured)"}

    state = SharedState()  # S3 configured, the uploader not through its first look yet
    assert upload_status(state) == {"upload": "on, nothing tried yet",
                                    "upload_backlog": "not counted yet", "upload_held": 0,
                                    "last_upload": "never"}
    state.report(UploadHealth(backlog=0))
    assert upload_status(state)["upload_backlog"] == 0
    state.report(UploadHealth(backlog=1))
    state.set_link("s3", LOST, "connection refused")
    assert upload_status(state) == {"upload": "lost connection refused",
                                    "upload_backlog": 1, "upload_held": 0,
                                    "last_upload": "never"}
    state.set_link("s3", CONNECTED, "car-logs")
    state.report(UploadHealth(backlog=0, held=1,
                              last="TEST/x.csv at 2026-01-01T00:00:00+00:00"))
    assert upload_status(state) == {
        "upload": "connected car-logs", "upload_backlog": 0, "upload_held": 1,
        "last_upload": "TEST/x.csv at 2026-01-01T00:00:00+00:00"}


GGA = "GPGGA,{t},4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
RMC = "GPRMC,{t},A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W"


def test_gnss_values_and_status_over_the_socket(tmp_path, frozen_car, daemon_factory):
    """The daemon with a receiver on a pty: GET answers every GNSS column of the record
    file by its header name, and STATUS has no blank upload lines nor line ends counted
    as garbage in a healthy CR LF stream."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)  # a daemon that died reads nothing: fail, never hang
    try:
        port = free_port()
        records = tmp_path / "records"
        daemon = daemon_factory(write_config(
            tmp_path, OBD_INTERFACE=frozen_car.port, ENABLE_SOCKET_SERVER="yes",
            SOCKET_SERVER_PORT=port, SOCKET_SERVER_SECRET=SECRET,
            GPS_POSITION_MONITORING="yes", GNSS_PORT=os.ttyname(slave)))
        seconds = itertools.count()

        def latitude():
            """Send one epoch (the reader may not have the port open yet), then ask."""
            t = f"12{next(seconds) % 3600:04d}.00"
            try:
                os.write(master, (nmea_sentence(GGA.format(t=t)) +
                                  nmea_sentence(RMC.format(t=t))).encode())
            except BlockingIOError:  # nobody has read the pty for a while
                pass
            try:
                out = talk(port, [f"AUTH {SECRET}", "GET latitude"], pause=0.1, read_for=0.3)
            except OSError:  # not listening yet
                return None
            return re.search(r"^LATITUDE 48\.1173 deg age=\d+\.\ds$", out, re.M)
        wait_for(latitude, 60, what="GET LATITUDE to answer the position sent")

        files = wait_for(lambda: part_files(records), 30, what="a record file")
        header = read_records(files[0])[0]
        gnss = [h.split(" (")[0] for h in header[header.index("GNSS_TIME (UTC)"):]]
        assert gnss[:3] == ["GNSS_TIME", "LATITUDE", "LONGITUDE"]
        out = talk(port, [f"AUTH {SECRET}", "GET " + " ".join(n.lower() for n in gnss),
                          "STATUS"], pause=0.2, read_for=0.5)
        lines = out.splitlines()
        answered = [ln.split()[0] for ln in lines if ln.split() and ln.split()[0] in gnss]
        assert answered == gnss, out
        assert "ERR" not in out, out
        assert "upload: off (S3 not configured)" in lines
        assert not [ln for ln in lines if ln.startswith(("upload_backlog:", "last_upload:"))]
        counters = dict(item.split("=") for item in
                        next(ln for ln in lines if ln.startswith("gnss_input: "))
                        .split(": ", 1)[1].split())
        assert int(counters["sentences"]) >= 4 and counters["garbage_bytes"] == "0", out

        # One count of values everywhere a user sees it: the connect log, the record
        # header and LIST (the GNSS fields included while there is a fix).
        values = [h.split(" (")[0] for h in header[1:]]

        def listed():
            out = talk(port, [f"AUTH {SECRET}", "LIST"], pause=0.2, read_for=0.5)
            names = [ln.split()[0] for ln in out.splitlines()
                     if ln.split() and not ln.startswith(("OK", "ERR", "ECCM"))]
            return sorted(names) == sorted(values) and f"OK {len(values)} values" in out
        wait_for(listed, 20, what="LIST to show the record's columns")
        engine = len(values) - len(gnss)
        pids = re.search(r" (\d+) PIDs \((\d+) values\)", daemon.log)
        assert pids and int(pids[2]) == engine
        status = talk(port, [f"AUTH {SECRET}", "STATUS"], pause=0.2, read_for=0.5)
        assert f"pids_polled: {pids[1]}" in status.splitlines(), status
    finally:
        os.close(master)
        os.close(slave)
