"""Login limits of the socket server, each on its own: an in-process SocketServer on
127.0.0.1 with small limits (constructor parameters) where that keeps a test short, and
the failed-login budget (LoginBudget) as pure logic with a fake clock.

The issue's scenarios with the production limits run against the daemon in
test_server_limits.py.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, List, Optional

import pytest

from eccm.server.tcp import (EVICTED, EVICTION_MARGIN, TOO_MANY, LoginBudget, SocketServer,
                             address_key)
from eccm.core.state import SharedState

SECRET = "in-process-Secret-42"
REFUSED = "ERR too many failed logins from your address, try again later"


@pytest.fixture
def start_server():
    """start(**parameters) -> a running SocketServer on 127.0.0.1 (stopped afterwards);
    `obd`: its OBD side (a fake CarAccess), none by default. Its loops look at the stop
    event every 0.05 s (tick), so stopping it takes no 0.5 s per test."""
    started = []

    def start(secret: Optional[str] = SECRET, obd: Any = None, **limits) -> SocketServer:
        stop = threading.Event()
        state = SharedState()
        state.update_values({"RPM": (780, "rpm")}, origin="obd")
        limits.setdefault("tick", 0.05)
        server = SocketServer(stop, state, obd, bind="127.0.0.1", port=0, secret=secret,
                              car="TEST", **limits)
        server.prepare()
        server.start()
        started.append((stop, server))
        return server
    yield start
    for stop, server in started:
        stop.set()
        assert server.join(5)


def connect(server: SocketServer, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5,
                                    source_address=(source, 0))
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 5) -> Optional[str]:
    """What the server sends until it closes; None if still open after timeout."""
    out = b""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return None
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return out.decode(errors="replace")
        out += chunk


def read_until(sock: socket.socket, marker: str, timeout: float = 5, times: int = 1) -> str:
    """What the server sends until `marker` came `times` times."""
    out = b""
    sock.settimeout(timeout)
    while out.count(marker.encode()) < times:
        chunk = sock.recv(65536)
        assert chunk, f"closed before {marker!r}: {out!r}"
        out += chunk
    return out.decode(errors="replace")


def is_open(sock: socket.socket) -> bool:
    """Still open: nothing or only unread greeting lines, no end of stream, within 0.3 s."""
    sock.settimeout(0.3)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return False
            if b"ERR" in chunk:
                return False
    except socket.timeout:
        return True
    except ConnectionResetError:
        return False


def log_in(server: SocketServer, source: str = "127.0.0.1") -> socket.socket:
    sock = connect(server, source)
    sock.sendall(f"AUTH {SECRET}\n".encode())
    read_until(sock, "OK authenticated\n")
    return sock


# Bounded in time and bytes.

def test_no_login_within_the_deadline_closes_the_connection_but_not_a_logged_in_one(
        start_server):
    server = start_server(login_deadline=0.5)
    logged_in = log_in(server)
    idle = connect(server)
    text = read_until_closed(idle, 5)
    assert text is not None and text.startswith("ECCM ") and "AUTH required within 0.5 s" in text
    assert text.endswith("ERR no login within 0.5 s; closing\n")
    # The logged-in client, just as quiet since, is still served.
    logged_in.sendall(b"GET RPM\n")
    assert read_until(logged_in, "\nOK\n").startswith("RPM 780 rpm age=")
    logged_in.close()
    idle.close()
    assert server.state.snapshot().counters["login_timeouts"] == 1


def test_bytes_arriving_one_by_one_before_login_wait_for_their_line_end(start_server):
    """Before login, only the first message may end with a pause (the original ECCM's
    bare secret): a client typing slowly, or a slowloris, is not answered byte by byte,
    and a line typed slowly is one line. The pause that ends a message is shortened."""
    server = start_server(secret="k3y", unterminated_flush=0.03)
    with connect(server) as sock:
        sock.sendall(b"HELP\n")
        read_until(sock, "\nOK ")
        for byte in b"AUTH k3y\n":
            sock.sendall(bytes([byte]))
            time.sleep(0.1)  # longer than the pause that ends a message
        sock.sendall(b"GET RPM\n")
        text = read_until(sock, "\nOK\n")
    assert text.startswith("OK authenticated\nRPM 780 rpm"), text
    assert "ERR" not in text


def test_input_before_login_is_bounded_in_bytes(start_server):
    server = start_server(login_max_bytes=512)
    with connect(server) as sock:
        sock.sendall(b"QUIT-NOT\n" * 125)  # 1000 bytes, never logging in (small answers)
        text = read_until_closed(sock, 10)
    assert text is not None
    assert text.endswith("ERR more than 512 bytes before login; closing\n")
    with log_in(server) as sock:  # after login, no such bound
        sock.sendall(b"GET RPM\n" * 100)
        text = read_until(sock, "\nOK\n", times=100)
    assert text.count("RPM 780 rpm") == 100


# Quotas: waiting connections and sessions.

def test_an_address_at_its_quota_makes_room_by_losing_its_oldest(start_server):
    server = start_server(max_pending_per_address=2)
    first, second, third = (connect(server, "127.0.0.3") for _ in range(3))
    assert read_until_closed(first).endswith(EVICTED + "\n")
    assert is_open(second) and is_open(third)
    with log_in(server, "127.0.0.1"):  # another address: untouched
        pass
    assert is_open(second) and is_open(third)
    for sock in (first, second, third):
        sock.close()


def test_a_full_quota_closes_the_oldest_of_the_address_holding_the_most(start_server):
    server = start_server(max_pending=4, max_pending_per_address=3)
    a = [connect(server, "127.0.0.3") for _ in range(3)]
    b = connect(server, "127.0.0.4")
    c = connect(server, "127.0.0.5")  # full: 127.0.0.3 holds the most
    assert read_until_closed(a[0]).endswith(EVICTED + "\n")
    d = connect(server, "127.0.0.6")  # 127.0.0.3 still holds two
    assert read_until_closed(a[1]).endswith(EVICTED + "\n")
    assert all(is_open(s) for s in (a[2], b, c, d))
    # A newcomer logs in at once; the waiting connections of other addresses stay.
    with log_in(server, "127.0.0.7") as sock:
        sock.sendall(b"GET RPM\n")
        assert "RPM 780 rpm" in read_until(sock, "\nOK\n")
    assert server.counts()[0] <= 4
    assert server.state.snapshot().counters["socket_evicted"] >= 3
    for sock in a + [b, c, d]:
        sock.close()


def test_waiting_connections_never_take_a_session_slot(start_server):
    server = start_server(max_clients=2, max_pending=6)
    waiting = [connect(server, f"127.0.0.{3 + i}") for i in range(4)]
    one, two = log_in(server), log_in(server, "127.0.0.2")
    assert server.counts()[:2] == (4, 2)
    with connect(server, "127.0.0.9") as third:  # the sessions are all taken
        third.sendall(f"AUTH {SECRET}\n".encode())
        assert (read_until_closed(third) or "").endswith(TOO_MANY + "\n")
    one.sendall(b"QUIT\n")
    assert read_until_closed(one).endswith("OK bye\n")
    with log_in(server, "127.0.0.9") as third:  # a freed slot is free again
        third.sendall(b"GET RPM\n")
        assert "RPM 780 rpm" in read_until(third, "\nOK\n")
    for sock in waiting + [one, two]:
        sock.close()


def test_without_a_secret_the_sessions_are_limited_at_connect(start_server):
    server = start_server(secret=None, max_clients=2)
    one, two = connect(server), connect(server)
    for sock in (one, two):
        read_until(sock, "ready;")
    with connect(server) as third:
        assert read_until_closed(third) == TOO_MANY + "\n"
    one.close()
    two.close()


def test_client_threads_stay_bounded_under_a_flood(start_server):
    server = start_server(max_clients=2, max_pending=4, max_pending_per_address=2)
    bound = 2 + 4 + EVICTION_MARGIN
    before = threading.active_count()  # the process's own threads, not the server's count
    peak = 0
    socks: List[socket.socket] = []
    for i in range(150):
        try:
            socks.append(connect(server, f"127.0.4.{1 + i % 30}"))
        except OSError:
            pass
        peak = max(peak, threading.active_count() - before)
    waiting, sessions, threads = server.counts()
    print(f"\n150 connections, limits 2 + 4: peak {peak} client threads (bound {bound})")
    assert peak <= bound and waiting <= 4 and sessions == 0
    with log_in(server, "127.0.0.1") as sock:  # and the server still serves
        sock.sendall(b"GET RPM\n")
        assert "RPM 780 rpm" in read_until(sock, "\nOK\n")
    for sock in socks:
        sock.close()


def test_clients_that_ask_and_never_read_cannot_lock_others_out(start_server):
    """HELP works before login and answers ~1 KB per 5 bytes: connections that send HELP
    many times and never read must not hold their threads in a blocked send (they did,
    for the 5 s send timeout, until every thread slot was taken and a login from any
    address got ERR too many connections)."""
    server = start_server(max_clients=2, max_pending=4, max_pending_per_address=2)
    flood: List[socket.socket] = []
    try:
        deadline = time.monotonic() + 3
        logins = 0
        while time.monotonic() < deadline:
            for _ in range(10):
                if len(flood) > 60:  # the server has closed these long since
                    flood.pop(0).close()
                sock = connect(server, "127.0.0.5")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(b"HELP\n" * 800)  # 4000 bytes, under the input cap
                flood.append(sock)
            with log_in(server, "127.0.0.2") as sock:
                sock.sendall(b"GET RPM\n")
                assert "RPM 780 rpm" in read_until(sock, "\nOK\n")
            logins += 1
        assert logins >= 3
        answer = read_until_closed(flood[-1])
        assert answer is not None and "bytes of answers before login; closing" in answer
    finally:
        for sock in flood:
            sock.close()


# The failed-login budget.

def test_failed_logins_share_one_budget_per_address_across_connections(start_server, caplog):
    caplog.set_level(logging.INFO, logger="eccm.server.tcp")
    server = start_server(login_burst=2, login_period=600)
    with connect(server) as sock:
        sock.sendall(b"AUTH guess-one\nAUTH guess-two\n")
        assert read_until(sock, "ERR wrong secret\nERR wrong secret\n")
    # Every further try from 127.0.0.1 is refused unchecked and closed at once, the right
    # secret too, in every form (AUTH, AUTH HMAC, the bare secret of the original ECCM).
    for attempt in (f"AUTH {SECRET}\n", "AUTH guess-three\n", "AUTH HMAC " + "0" * 64 + "\n",
                    SECRET, "guess-four"):
        with connect(server) as sock:
            sock.sendall(attempt.encode())
            text = read_until_closed(sock)
        assert text is not None and text.endswith(REFUSED + "\n"), (attempt, text)
        assert "OK authenticated" not in text
    with log_in(server, "127.0.0.2"):  # another address has its own budget
        pass
    counters = server.state.snapshot().counters
    assert counters["auth_failures"] == 2 and counters["auth_refused"] == 5
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum("used up its budget" in w for w in warnings) == 1, warnings
    assert sum(w == "failed login from 127.0.0.1" for w in warnings) == 2
    assert not [w for w in warnings if "guess-" in w or SECRET in w]


def test_a_bare_secret_over_the_budget_gets_the_same_answer_right_or_wrong(start_server):
    """The greeting a legacy login skips is decided by the budgeted check: over the
    budget, the right bare secret and a wrong one are answered alike."""
    server = start_server(login_burst=1, login_period=600)
    with connect(server) as sock:
        sock.sendall(b"guess-one")
        read_until(sock, "ERR wrong secret\n")
    answers = []
    for attempt in (SECRET, "guess-two"):
        with connect(server) as sock:
            sock.sendall(attempt.encode())
            text = read_until_closed(sock) or ""
        answers.append(text.split("challenge=")[0] + text.split("\n", 1)[1])
    assert answers[0] == answers[1] and REFUSED in answers[0]


def test_a_right_secret_gives_its_try_back():
    clock = [0.0]
    budget = LoginBudget(burst=2, period=10, clock=lambda: clock[0])
    for _ in range(10):  # logging in does not use the budget up
        assert budget.take("a")[0]
        budget.give_back("a")
    assert budget.tokens("a") == 2


def test_budget_burst_then_one_try_per_period_and_one_line_per_burst():
    clock = [100.0]
    budget = LoginBudget(burst=3, period=10, clock=lambda: clock[0])
    for _ in range(3):
        assert budget.take("10.0.0.9") == (True, None)
        budget.failed("10.0.0.9")
        clock[0] += 0.1
    allowed, notice = budget.take("10.0.0.9")
    assert not allowed
    assert notice == ("failed logins from 10.0.0.9: 3 wrong secrets in 0.3 s used up its "
                      "budget; further tries are refused unchecked (3, then 1 every 10 s)")
    assert budget.take("10.0.0.9") == (False, None)  # said once
    assert budget.take("10.0.0.8") == (True, None)   # another address
    clock[0] += 10
    assert budget.take("10.0.0.9") == (True, None)   # one more per period
    budget.failed("10.0.0.9")
    assert budget.take("10.0.0.9") == (False, None)
    assert budget.sweep() == []                       # not over yet
    clock[0] += 29                                    # 2.93 of 3 tokens back
    assert budget.sweep() == []
    clock[0] += 1                                     # full again: the burst is over
    (summary,) = budget.sweep()
    assert summary.startswith("failed logins from 10.0.0.9 stopped: 7 tries in 10.3 s (")
    assert summary.endswith("4 wrong secrets checked, 3 refused unchecked")
    assert budget.take("10.0.0.9") == (True, None)


def test_parallel_tries_cannot_all_pass_on_the_last_token():
    budget = LoginBudget(burst=5, period=3600)
    results: List[bool] = []
    barrier = threading.Barrier(64)

    def one():
        barrier.wait()
        results.append(budget.take("10.0.0.1")[0])
    threads = [threading.Thread(target=one) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sum(results) == 5 and len(results) == 64


def test_budget_memory_is_bounded_and_never_refuses_an_unseen_address():
    """An address past the remembered ones is not refused for others' failures (it was,
    sharing one overflow bucket): the least recently used address is forgotten."""
    budget = LoginBudget(burst=1, period=3600, max_addresses=2)
    assert budget.take("10.0.0.1")[0] and budget.take("10.0.0.2")[0]
    assert not budget.take("10.0.0.2")[0]
    assert budget.take("10.0.0.3")[0]            # 10.0.0.1 forgotten, not shared
    assert budget.take("10.0.0.4")[0]
    assert len(budget._buckets) == 2


def test_many_addresses_together_have_one_budget_too():
    """An attacker with thousands of addresses (an IPv6 /48) gets no more than the global
    budget checked; said once, without a secret."""
    now = [0.0]
    budget = LoginBudget(burst=5, period=5, max_addresses=4096, global_burst=20,
                         global_period=1.0, clock=lambda: now[0])
    results = [budget.take(f"2001:db8:0:{i:x}::/64") for i in range(5000)]
    allowed = sum(ok for ok, _ in results)
    notices = [line for _, line in results if line]
    assert allowed == 20 and len(notices) == 1 and "many addresses" in notices[0]
    now[0] += 3.0  # three more seconds: three more checks, for anybody
    assert [budget.take(f"192.0.2.{i}")[0] for i in range(5)] == [True] * 3 + [False] * 2
    assert "many addresses" in budget.refusal("192.0.2.4")
    now[0] += 60
    assert any("stopped" in line for line in budget.sweep())


def test_a_few_guessing_addresses_cannot_lock_out_one_that_logged_in_before():
    """Six addresses each guessing at their own budget's pace keep the global bucket empty;
    the user's address, which gave the right secret before, still gets its tries, and a
    refused newcomer is told why (not "your address")."""
    now = [0.0]
    budget = LoginBudget(burst=5, period=5, global_burst=20, global_period=1.0,
                         clock=lambda: now[0])
    assert budget.take("192.0.2.200")[0]
    budget.give_back("192.0.2.200")  # the user logged in, once
    user_in = newcomer_in = 0
    for step in range(600):  # 60 s, a tenth of a second each
        now[0] = step / 10
        for attacker in range(6):
            ok, _ = budget.take(f"192.0.2.{attacker}")
            if ok:
                budget.failed(f"192.0.2.{attacker}")
        if step % 20 == 10:  # every 2 s, the user's right secret, and a stranger's
            if budget.take("192.0.2.200")[0]:
                budget.give_back("192.0.2.200")
                user_in += 1
            if budget.take("192.0.2.201")[0]:
                newcomer_in += 1
                budget.give_back("192.0.2.201")
    assert user_in == 30
    assert newcomer_in < 30
    assert "many addresses" in budget.refusal("192.0.2.202")


@pytest.mark.parametrize("host,key", [
    ("192.0.2.7", "192.0.2.7"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
    ("fe80::1%eth0", "fe80::/64"),
])
def test_limits_apply_per_ipv4_address_and_per_ipv6_64(host, key):
    assert address_key(host) == key
