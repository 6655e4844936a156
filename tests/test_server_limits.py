"""The issue's attacks on the running daemon, with the production limits (eccm.server.tcp's
constants): idle and slowloris connections before login, 64 parallel guessers from one
address, and the legacy clients that must keep working.

Linux routes all of 127.0.0.0/8 to loopback: a client socket bound to 127.0.0.2 (or
127.0.1.x) is another source address for a server on 127.0.0.1, so "an attacker" and "a
real user" can be told apart without listening anywhere but on loopback.
"""
from __future__ import annotations

import math
import re
import select
import socket
import threading
import time
from collections import Counter
from typing import Dict, List

from eccm.server.tcp import (EVICTION_MARGIN, LOGIN_BURST, LOGIN_DEADLINE, LOGIN_PERIOD,
                             MAX_PENDING, MAX_PENDING_PER_ADDRESS)

import test_server
from conftest import require_tool, wait_for
from test_server import SECRET, run_client
from test_server_login import read_until_closed

frozen_car, server = test_server.frozen_car, test_server.server  # fixtures: the daemon

REFUSED = "ERR too many failed logins from your address, try again later"


def connect(port: int, source: str = "127.0.0.1", timeout: float = 5) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def login_and_get_rpm(port: int, source: str) -> float:
    """A real client: seconds from connect to its RPM value."""
    start = time.monotonic()
    with connect(port, source) as sock:
        sock.sendall(f"AUTH {SECRET}\nGET RPM\n".encode())
        out = b""
        while b"\nRPM " not in out:
            chunk = sock.recv(4096)
            assert chunk, f"closed before answering: {out!r}"
            out += chunk
        elapsed = time.monotonic() - start
    assert b"OK authenticated\n" in out
    return elapsed


def daemon_threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return int(next(ln for ln in fh if ln.startswith("Threads:")).split()[1])


def test_idle_and_slowloris_connections_leave_a_real_client_in(server):
    port, daemon, _ = server
    base_threads = daemon_threads(daemon.proc.pid)
    # 100 idle connections from 50 addresses (2 each: under the per-address quota, so the
    # total quota is what holds), then 20 slowloris from 20 more, which send one complete
    # line (HELP, so their bytes are not a guess at the secret) and then a byte a second.
    # When the quota is full, the oldest connection of the address holding the most is
    # closed: here the idle ones, the slowloris wait for the login deadline.
    idle: List[socket.socket] = []
    idle_opened: List[float] = []
    for i in range(100):
        idle.append(connect(port, f"127.0.1.{1 + i // 2}"))
        idle_opened.append(time.monotonic())
    stop = threading.Event()
    slow_result: Dict[int, tuple] = {}
    slow_sent: Dict[int, int] = {}  # single bytes each slowloris has sent so far

    def slowloris(n: int) -> None:
        sock = connect(port, f"127.0.2.{1 + n}")
        opened = time.monotonic()
        out = b""
        sent = 0
        try:
            sock.sendall(b"HELP\n")
            while not stop.is_set():
                try:
                    sock.sendall(b"AUTH x"[sent % 6:sent % 6 + 1])
                    sent += 1
                    slow_sent[n] = sent
                except OSError:
                    break
                if select.select([sock], [], [], 1.0)[0]:  # one byte a second
                    try:
                        chunk = sock.recv(65536)
                    except OSError:
                        chunk = b""
                    if not chunk:
                        break
                    out += chunk
            slow_result[n] = (time.monotonic() - opened, sent, out.decode(errors="replace"),
                              stop.is_set())
        finally:
            sock.close()

    slow = [threading.Thread(target=slowloris, args=(n,)) for n in range(20)]
    try:
        for t in slow:
            t.start()
        wait_for(lambda: len(slow_sent) == 20 and min(slow_sent.values()) >= 2, 10,
                 what="the slowloris to send their line and a few bytes each")
        during_threads = daemon_threads(daemon.proc.pid)

        # A real client, from 127.0.0.1, while all of that is connected.
        login_time = login_and_get_rpm(port, "127.0.0.1")
        nc = require_tool("nc")
        out = run_client([nc, "-q", "2", "127.0.0.1", str(port)],
                         f"AUTH {SECRET}\nGET RPM\nQUIT\n")
        assert "OK authenticated" in out and re.search(r"^RPM 780 rpm age=", out, re.M), out

        # Every attacking connection is closed by the server within the login deadline of
        # its connect: the oldest to make room for newer ones, the rest by the deadline.
        idle_out = []
        for sock, opened in zip(idle, idle_opened):
            text = read_until_closed(sock, LOGIN_DEADLINE + 5 - (time.monotonic() - opened))
            idle_out.append((text, time.monotonic() - opened))
        for t in slow:
            t.join(LOGIN_DEADLINE + 10)
    finally:
        stop.set()  # a slowloris the server never closed stops now: the test failed
        for t in slow:
            t.join(5)
        for sock in idle:
            sock.close()
    still_open = [n for n, (text, _) in enumerate(idle_out) if text is None]
    assert not still_open, f"idle connections never closed: {still_open}"
    by_deadline = sum(f"ERR no login within {LOGIN_DEADLINE:g} s; closing" in text
                      for text, _ in idle_out)
    evicted = sum("ERR too many connections waiting to log in" in text for text, _ in idle_out)
    assert by_deadline + evicted == 100, [text for text, _ in idle_out]
    assert by_deadline >= 1 and evicted >= 100 - MAX_PENDING
    assert max(age for _, age in idle_out) < LOGIN_DEADLINE + 3

    assert len(slow_result) == 20
    slow_by_deadline = 0
    for n, (lasted, sent, text, stopped) in slow_result.items():
        assert not stopped, f"slowloris {n} was never closed ({sent} bytes sent)"
        assert lasted < LOGIN_DEADLINE + 3, (n, lasted)
        # Its single bytes were never taken as messages: only HELP was answered.
        assert "not authenticated" not in text and "wrong secret" not in text, text
        assert text.count("\nOK ") <= 1, text
        slow_by_deadline += "ERR no login within" in text
        assert "ERR no login within" in text or "ERR too many connections waiting" in text
    assert slow_by_deadline == 20
    print(f"\n100 idle + 20 slowloris: real client logged in and read RPM in "
          f"{login_time * 1000:.0f} ms; idle closed by the deadline {by_deadline}, to make "
          f"room {evicted}; slowloris closed after {min(r[0] for r in slow_result.values()):.1f}"
          f"-{max(r[0] for r in slow_result.values()):.1f} s; daemon threads "
          f"{base_threads} before, {during_threads} during the attack; slowloris closed by the "
          f"deadline {slow_by_deadline} of 20")
    assert login_time < 1.0
    assert during_threads <= base_threads + MAX_PENDING + EVICTION_MARGIN
    assert "Traceback" not in daemon.log


def test_64_parallel_guessers_get_one_budget_and_a_second_address_is_not_locked_out(server):
    """20 s of guessing from 64 connections at a time (each reconnects at once when
    closed) from 127.0.0.1: the secrets actually checked stay within the address's one
    budget, the rest are refused unchecked; a client from 127.0.0.2 logs in meanwhile."""
    port, daemon, _ = server
    window = 20.0
    stop = threading.Event()
    tally: Counter = Counter()
    lock = threading.Lock()

    def guesser(n: int) -> None:
        tries = 0
        while not stop.is_set():
            try:
                with connect(port, "127.0.0.1", timeout=10) as sock:
                    sock.sendall("".join(f"AUTH guess-{n}-{tries + k}\n"
                                         for k in range(3)).encode())
                    tries += 3
                    text = read_until_closed(sock, 15) or ""
            except OSError:
                with lock:
                    tally["connect_errors"] += 1
                continue
            with lock:
                tally["connections"] += 1
                tally["wrong"] += text.count("ERR wrong secret")
                tally["refused"] += text.count(REFUSED)
                tally["evicted"] += text.count("ERR too many connections waiting")
                tally["authenticated"] += text.count("OK authenticated")

    threads = [threading.Thread(target=guesser, args=(n,)) for n in range(64)]
    start = time.monotonic()
    try:
        for t in threads:
            t.start()
        stop.wait(5)
        meanwhile = login_and_get_rpm(port, "127.0.0.2")  # a second source address
        nc = require_tool("nc")
        out = run_client([nc, "-q", "2", "-s", "127.0.0.2", "127.0.0.1", str(port)],
                         f"AUTH {SECRET}\nGET RPM\nQUIT\n")
        assert "OK authenticated" in out and re.search(r"^RPM 780 rpm", out, re.M), out
        stop.wait(max(0.0, window - (time.monotonic() - start)))
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    elapsed = time.monotonic() - start

    bound = LOGIN_BURST + math.ceil(elapsed / LOGIN_PERIOD) + 1
    logged = daemon.log.count("failed login from 127.0.0.1")
    print(f"\n64 guessers, {elapsed:.1f} s, one address: {tally['wrong']} wrong secrets "
          f"checked (bound {bound}; server log {logged}), {tally['refused']} refused "
          f"unchecked, {tally['evicted']} closed to make room, {tally['connections']} "
          f"connections; 127.0.0.2 logged in and read RPM in {meanwhile * 1000:.0f} ms "
          "during the attack")
    assert tally["authenticated"] == 0
    assert 0 < tally["wrong"] <= bound
    assert logged == tally["wrong"]  # the server's audit: every checked secret, no more
    assert tally["refused"] > 10 * tally["wrong"]
    assert meanwhile < 1.0
    # The attack is logged once (the budget running out), never with a guess.
    assert daemon.log.count("failed logins from 127.0.0.1:") == 1
    assert "used up its budget" in daemon.log
    assert "guess-" not in daemon.log and SECRET not in daemon.log
    # The address itself is locked out until its budget refills, even with the secret.
    with connect(port, "127.0.0.1") as sock:
        sock.sendall(f"AUTH {SECRET}\n".encode())
        assert REFUSED in (read_until_closed(sock, 5) or "")


def test_legacy_client_and_pipelined_client_after_an_attack(server):
    """The original ECCM's app (bare secret, then messages without line ends) and a script
    piping AUTH + commands keep working next to connections being closed for the limits."""
    port, _, _ = server
    crowd = [connect(port, "127.0.3.1") for _ in range(MAX_PENDING_PER_ADDRESS + 4)]
    try:
        with connect(port, "127.0.0.1") as sock:
            sock.sendall(SECRET.encode())
            time.sleep(0.5)
            sock.sendall(b"QUERY_COMMAND>>RPM")
            assert sock.recv(1024) == b"780.0 revolutions_per_minute\n"
            sock.sendall(b"GET_DTC")
            assert sock.recv(4096).decode().startswith("[('P0301', 'Cylinder 1 Misfire")
        with connect(port, "127.0.0.1") as sock:
            sock.sendall(f"AUTH {SECRET}\nGET RPM\nQUIT\n".encode())
            text = read_until_closed(sock, 5)
        assert text is not None and "OK authenticated\nRPM 780 rpm" in text
        assert text.rstrip().endswith("OK bye")
        evicted = sum("ERR too many connections waiting" in (read_until_closed(s, 0.5) or "")
                      for s in crowd[:4])
        assert evicted == 4  # the oldest of that address made room
    finally:
        for sock in crowd:
            sock.close()
