"""Server abuse benchmark: how much of the OBD polling survives hostile socket clients.

Run:  python tests/bench/bench_server_abuse.py [--seconds 3] [--repeat 2]
The daemon runs as a process against ECCM's simulated adapter (a frozen car), with the
socket server on. Prints the OBD samples counted (STATUS obd_samples) over the same
stretch quiet and under abuse, measured side by side in this run, and their ratio:
a 1,000,000-byte line, binary garbage, 34 clients trying wrong secrets from one address,
5 clients that WATCH at 10 Hz and never read, and 200 connections that never log in.
(tests/test_server.py checks the behaviour: every abuser gets its answer, a late login is
served and the polling goes on.) Before the restructuring the suite asserted a ratio of
at least 0.5 here.
"""
from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, List

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from conftest import DaemonProcess, free_port, write_config  # noqa: E402
from eccm.sim.car import SimulatedAdapter, SimulatedCar  # noqa: E402
from test_server import SECRET, samples, talk  # noqa: E402


def huge_line(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(b"A" * 1_000_000 + b"\n")
            while sock.recv(4096):
                pass
        except OSError:
            pass  # the server closes before reading it all


def garbage(port: int) -> None:
    talk(port, ["\x00\x01\xff\xfe binary \x1b[2J", "\x7f" * 50], pause=0.1)


def wrong_secrets(port: int) -> None:
    threads = [threading.Thread(target=talk, args=(port, ["AUTH wrong"] * 3),
                                kwargs=dict(pause=0.05, read_for=40, source="127.0.0.5"))
               for _ in range(34)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)


def abuse(port: int, seconds: float) -> int:
    """OBD samples counted over `seconds` while the abusers run."""
    held: List[socket.socket] = []
    for _ in range(5):  # watchers that never read
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(f"AUTH {SECRET}\nWATCH RPM SPEED COOLANT_TEMP 10\n".encode())
        held.append(sock)
    workers = [threading.Thread(target=f, args=(port,))
               for f in (huge_line, garbage, wrong_secrets)]
    start = samples(port)
    started = time.monotonic()
    for w in workers:
        w.start()
    for _ in range(200):  # connections that never log in
        try:
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            break
    time.sleep(max(0.0, seconds - (time.monotonic() - started)))
    counted = samples(port) - start
    for w in workers:
        w.join(180)
    for sock in held:
        sock.close()
    return counted


def quiet(port: int, seconds: float) -> int:
    start = samples(port)
    time.sleep(seconds)
    return samples(port) - start


def wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    car = SimulatedCar(clock=lambda: 0.0, stored_dtcs=["P0301"])
    adapter = SimulatedAdapter(car, latency=0.002).start()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        daemon = DaemonProcess(write_config(
            Path(tmp), OBD_INTERFACE=adapter.port, ENABLE_SOCKET_SERVER="yes",
            SOCKET_SERVER_PORT=port, SOCKET_SERVER_SECRET=SECRET))
        try:
            wait(lambda: "OBD adapter connected" in daemon.log, 30, "the car")
            wait(lambda: samples(port) > 0, 30, "the first samples")
            for run in range(1, args.repeat + 1):
                baseline = quiet(port, args.seconds)
                during = abuse(port, args.seconds)
                print(f"run {run}: OBD samples in {args.seconds:g} s: quiet {baseline}, "
                      f"under abuse {during} (ratio {during / max(1, baseline):.2f})")
                wait(lambda: "OK authenticated" in talk(port, [f"AUTH {SECRET}"]), 60,
                     "the server to serve again")
        finally:
            daemon.stop()
            adapter.stop()


if __name__ == "__main__":
    main()
