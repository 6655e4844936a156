"""The socket server in-process over real sockets, with a fake OBD side (a CarAccess): the
protocol's replies as a client reads them, and the server's delays shortened through its
constructor instead of waited out. The daemon with real clients (nc, socat, telnet) and the
real car simulator is test_server.py.
"""
from __future__ import annotations

import logging
import re
import socket
import threading
from typing import List, Optional, Tuple

import pytest

from eccm.core.state import SharedState, Unavailable
from eccm.server.protocol import hmac_answer
from eccm.server.tcp import REQUEST_TIMEOUT

import test_server_login
from conftest import wait_for
from test_server_login import SECRET, connect, log_in, read_until, read_until_closed

start_server = test_server_login.start_server  # the fixture: a running in-process server


class FakeCar:
    """The OBD side as the server sees it (CarAccess), with no adapter behind it."""

    def __init__(self) -> None:
        self.stored = [("P0301", "Cylinder 1 Misfire Detected")]
        self.pending = [("P0171", "System Too Lean (Bank 1)")]
        self.why_not = ""  # set: the car cannot be asked, this is why
        self.timeouts: List[float] = []
        self.asked: List[Tuple[str, str]] = []
        self.reconnects = 0

    def _ask(self, timeout: float) -> None:
        self.timeouts.append(timeout)
        if self.why_not:
            raise Unavailable(self.why_not)

    def read_dtcs(self, timeout: float, pending: bool = True):
        self._ask(timeout)
        self.asked.append(("read_dtcs", "" if pending else "stored"))
        return list(self.stored), list(self.pending)

    def clear_dtcs(self, timeout: float) -> int:
        self._ask(timeout)
        self.asked.append(("clear_dtcs", ""))
        self.stored = []
        return 0

    def query(self, name: str, timeout: float) -> Optional[str]:
        self._ask(timeout)
        self.asked.append(("query", name))
        return {"RPM": "780.0 revolutions_per_minute"}.get(name)

    def request_reconnect(self) -> None:
        self.reconnects += 1


def ask(sock: socket.socket, line: str, marker: str = "\nOK") -> str:
    sock.sendall(line.encode() + b"\n")
    return read_until(sock, marker)


# The OBD side through CarAccess.

def test_dtc_and_clear_are_asked_of_the_obd_side(start_server, caplog):
    caplog.set_level(logging.WARNING, logger="eccm.server.tcp")
    car = FakeCar()
    server = start_server(obd=car, request_timeout=3.0)
    with log_in(server) as sock:
        assert ask(sock, "DTC", "pending\n") == (
            "STORED P0301 Cylinder 1 Misfire Detected\n"
            "PENDING P0171 System Too Lean (Bank 1)\nOK 1 stored, 1 pending\n")
        assert ask(sock, "CLEAR_DTC", "left\n") == \
            "OK trouble codes cleared; 0 stored codes left\n"
        assert ask(sock, "DTC", "pending\n") == \
            "PENDING P0171 System Too Lean (Bank 1)\nOK 0 stored, 1 pending\n"
    assert car.timeouts == [3.0, 3.0, 3.0]  # the server's request timeout, every time
    assert any("AUDIT CLEAR_DTC done, 0 stored codes left (client 127.0.0.1)" in r.getMessage()
               for r in caplog.records)


def test_a_car_that_cannot_be_asked_is_one_err_line_and_the_session_goes_on(start_server):
    car = FakeCar()
    car.why_not = "car not connected: /dev/ttyUSB0 does not exist (adapter unplugged?)"
    server = start_server(obd=car)
    with log_in(server) as sock:
        assert ask(sock, "DTC", "\n") == f"ERR {car.why_not}\n"
        assert ask(sock, "CLEAR_DTC", "\n") == f"ERR {car.why_not}\n"
        assert ask(sock, "GET RPM", "\nOK\n").startswith("RPM 780 rpm age=")
    assert car.timeouts == [REQUEST_TIMEOUT] * 2  # the default: 15 s


def test_without_an_obd_side_the_car_commands_say_so(start_server):
    server = start_server(obd=None)
    with log_in(server) as sock:
        assert ask(sock, "DTC", "\n") == "ERR no OBD adapter configured\n"
        assert ask(sock, "CLEAR_DTC", "\n") == "ERR no OBD adapter configured\n"


def test_the_original_client_gets_the_obd_sides_text_as_it_is(start_server):
    """Bare secret, then messages without line ends, each ended by a pause (shortened here);
    no greeting; the OBD side's text passed on, its absence the original's one line."""
    car = FakeCar()
    server = start_server(obd=car, unterminated_flush=0.05)
    with connect(server) as sock:
        sock.sendall(SECRET.encode())
        wait_for(lambda: server.counts()[1] == 1, 5, step=0.02, what="the legacy login")
        sock.sendall(b"QUERY_COMMAND>>RPM")
        assert read_until(sock, "\n") == "780.0 revolutions_per_minute\n"
        sock.sendall(b"GET_DTC")
        assert read_until(sock, "\n") == "[('P0301', 'Cylinder 1 Misfire Detected')]\n"
        sock.sendall(b"RESTART_DATA_MANAGER")
        assert read_until(sock, "\n") == "RESTART IN PROGRESS\n"
        car.why_not = "car not connected"
        sock.sendall(b"QUERY_COMMAND>>RPM")
        assert read_until(sock, "\n") == "DATA MANAGER NOT AVAILABLE\n"
    assert car.asked == [("query", "RPM"), ("read_dtcs", "stored")]
    assert car.reconnects == 1


def test_the_poller_gives_the_server_only_unavailable_with_the_reason(tmp_path):
    """The OBD side's request methods: no car, no whole answer, adapter gone, no answer in
    time: each one Unavailable whose message is what the client is shown."""
    from eccm.sources.obd.adapter import AdapterError, ReadError
    from eccm.sources.obd.poller import ObdPoller

    stop = threading.Event()
    poller = ObdPoller(stop, SharedState(), port=str(tmp_path / "no-adapter"))
    with pytest.raises(Unavailable, match=r"^no answer from the OBD thread within 0\.2 s$"):
        poller.read_dtcs(0.2)  # not started: nobody answers

    class Conn:
        def read_dtcs(self, mode: int):
            raise ReadError("no whole answer to mode 03")

        def clear_and_reread(self):
            raise AdapterError("adapter disconnected")

    def serve(conn, done: threading.Event) -> None:
        """The poller thread's part: answer the requests, with `conn` as the connection."""
        while not done.is_set():
            poller._serve_requests(conn)
            done.wait(0.01)

    for method, conn, message in ((poller.read_dtcs, Conn(), "no whole answer to mode 03"),
                                  (poller.clear_dtcs, Conn(), "adapter disconnected"),
                                  (poller.read_dtcs, None, "car not connected")):
        done = threading.Event()
        helper = threading.Thread(target=serve, args=(conn, done))
        helper.start()
        try:
            with pytest.raises(Unavailable) as caught:
                method(5)
        finally:
            done.set()
            helper.join(5)
        assert str(caught.value) == message


def test_the_original_get_dtc_asks_only_for_the_stored_codes(tmp_path, start_server):
    """The original GET_DTC read mode 03 alone: a car whose pending codes (07) cannot be
    read still gives its stored list, through the real OBD side."""
    from eccm.sources.obd.adapter import ReadError
    from eccm.sources.obd.poller import ObdPoller

    stop = threading.Event()
    poller = ObdPoller(stop, SharedState(), port=str(tmp_path / "no-adapter"))
    modes: List[int] = []

    class Conn:
        def read_dtcs(self, mode: int):
            modes.append(mode)
            if mode != 3:
                raise ReadError("ECU 7E9 did not answer the trouble code request")
            return ["P0301"]

    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            poller._serve_requests(Conn())
            done.wait(0.01)

    helper = threading.Thread(target=serve)
    helper.start()
    server = start_server(obd=poller, unterminated_flush=0.05)
    try:
        with connect(server) as sock:
            sock.sendall(SECRET.encode())
            wait_for(lambda: server.counts()[1] == 1, 5, step=0.02, what="the legacy login")
            sock.sendall(b"GET_DTC")
            assert read_until(sock, "\n") == "[('P0301', 'Cylinder 1 Misfire Detected')]\n"
    finally:
        done.set()
        helper.join(5)
    assert modes == [3]


# Login, streaming and the delays.

def test_hmac_login(start_server):
    server = start_server()
    server.state.update_values({"SPEED": (0, "km/h")}, origin="obd")
    with connect(server) as sock:
        greeting = read_until(sock, "\n")
        challenge = re.search(r"challenge=([0-9a-f]+)", greeting)[1]
        sock.sendall(f"AUTH HMAC {hmac_answer(SECRET, challenge)}\nGET SPEED\n".encode())
        out = read_until(sock, "\nOK\n")
    assert out.startswith("OK authenticated\nSPEED 0 km/h")


def test_a_watcher_that_never_reads_is_dropped_once_its_buffers_fill(start_server, caplog):
    """The server never blocks on a client: when its socket buffers are full for the send
    timeout (shortened here), the client is dropped and the others are served."""
    caplog.set_level(logging.INFO, logger="eccm.server.tcp")
    server = start_server(send_timeout=0.5)
    names = [f"VALUE_{i:02d}" for i in range(30)]  # ~1.8 KB a line: full in a few seconds
    server.state.update_values({name: ("x" * 50, "") for name in names}, origin="obd")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(f"AUTH {SECRET}\nWATCH {' '.join(names)} 10\n".encode())
        wait_for(lambda: any("read nothing for 0.5 s" in r.getMessage()
                             for r in caplog.records), 60,
                 what="the server to drop the client that does not read")
        received = read_until_closed(sock, 5)
        assert received is not None and received.count("\nWATCH ") > 10  # it streamed
    finally:
        sock.close()
    with log_in(server) as other:
        assert ask(other, "GET RPM", "\nOK\n").startswith("RPM 780 rpm")
    assert server.is_alive()


def test_a_quiet_client_is_closed_after_the_idle_timeout_but_a_watcher_is_not(start_server):
    server = start_server(idle_timeout=0.5)
    quiet, watcher = log_in(server), log_in(server, "127.0.0.2")
    watcher.sendall(b"WATCH RPM 10\n")
    # The quiet one is closed for being idle (the shortened timeout's message) while the
    # watcher, as idle as it, streams on.
    assert read_until_closed(quiet, 5) == "ERR idle for too long; closing\n"
    text = read_until(watcher, "WATCH RPM=780\n", times=12)  # 1.2 s of streaming, still on
    assert "ERR" not in text
    watcher.sendall(b"UNWATCH\n")
    assert read_until_closed(watcher, 5).endswith("OK stopped\nERR idle for too long; closing\n")
    quiet.close()
    watcher.close()
