"""Latency benchmark: how fast answers come where the tests only check what they say.

Run:  python tests/bench/bench_latency.py [--repeat 20]
Prints medians measured in this run and their ratio to a baseline measured beside them:

- a request (read DTCs, one-off query) while no car is connected: the poller answers
  NotConnected from its idle loop, against the same request served by a connected poller
  (the simulated adapter) and against the request's own timeout (tests/test_obd_poller.py
  checks that NotConnected comes, with its reason);
- the independent fake ELM327 (tests/fake_elm.py): a request with a response count
  (`010D1`) returns after the counted reply, against the same request waiting out the ST
  timer; an interrupt prints STOPPED against the ECU's latency it cuts short
  (tests/test_fake_elm.py checks the replies and which ECU replies were missed).
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, List

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import serial  # noqa: E402

from eccm.core.state import SharedState  # noqa: E402
from eccm.sim.car import SimulatedAdapter  # noqa: E402
from eccm.sources.obd.poller import NotConnected, ObdPoller, quiet_python_obd  # noqa: E402
from fake_elm import Ecu, FakeElm  # noqa: E402

REQUEST_TIMEOUT = 5.0


def median_ms(samples: List[float]) -> float:
    return statistics.median(samples) * 1000


def timed(fn: Callable[[], object], repeat: int) -> List[float]:
    out = []
    for _ in range(repeat):
        started = time.monotonic()
        fn()
        out.append(time.monotonic() - started)
    return out


def started_poller(port: str, connected: bool) -> "tuple[threading.Event, ObdPoller]":
    stop = threading.Event()
    state = SharedState()
    poller = ObdPoller(stop, state, port=port, timeout=1.0, session_timeout=1.5,
                       max_delay=1.0)
    poller.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        snap = state.snapshot()
        link = snap.links.get("obd")
        if (snap.engine_run is not None) if connected else (link and link.state == "lost"):
            return stop, poller
        time.sleep(0.05)
    raise SystemExit(f"the poller on {port} did not get {'connected' if connected else 'lost'}")


def requests(repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stop, idle = started_poller(str(Path(tmp) / "no-such-adapter"), connected=False)

        def refused() -> None:
            try:
                idle.submit(lambda conn: None, timeout=REQUEST_TIMEOUT)
            except NotConnected:
                return
            raise SystemExit("a request without a car was answered")
        without = timed(refused, repeat)
        stop.set()
        idle.join(5)
    adapter = SimulatedAdapter(latency=0.002).start()
    try:
        stop, busy = started_poller(adapter.port, connected=True)
        served = timed(lambda: busy.submit(lambda conn: None, timeout=REQUEST_TIMEOUT), repeat)
        stop.set()
        busy.join(5)
    finally:
        adapter.stop()
    print(f"request without a car -> NotConnected: median {median_ms(without):.1f} ms, "
          f"max {max(without) * 1000:.1f} ms")
    print(f"the same request on a connected poller: median {median_ms(served):.1f} ms")
    print(f"  ratio {median_ms(without) / max(1e-3, median_ms(served)):.2f} x the connected "
          f"answer; {statistics.median(without) / REQUEST_TIMEOUT:.3f} x the request timeout")


def read_prompt(ser: serial.Serial, timeout: float = 2.0) -> bytes:
    buf = b""
    end = time.monotonic() + timeout
    while not buf.endswith(b">") and time.monotonic() < end:
        buf += ser.read(ser.in_waiting or 1)
    return buf


def command(ser: serial.Serial, text: str) -> bytes:
    ser.write(text.encode("ascii") + b"\r")
    return read_prompt(ser)


def fake_elm(repeat: int) -> None:
    ecus = [Ecu.engine(latency=0.005), Ecu.transmission(latency=0.01)]
    with FakeElm(ecus=ecus, st_unit=0.004) as fake:
        ser = serial.Serial(fake.port, 38400, timeout=0.05)
        try:
            for setup in ("ATE0", "ATSP6", "ATAT0", "ATST40"):  # ST 256 ms, not adaptive
                command(ser, setup)
            waited = timed(lambda: command(ser, "010D"), repeat)
            counted = timed(lambda: command(ser, "010D1"), repeat)
        finally:
            ser.close()
    print(f"fake ELM327, ST 256 ms: 010D (waits out ST) median {median_ms(waited):.0f} ms, "
          f"010D1 (count 1) {median_ms(counted):.0f} ms: ratio "
          f"{statistics.median(counted) / statistics.median(waited):.2f}")
    latency = 0.5
    stopped = []
    with FakeElm(ecus=[Ecu.engine(latency=latency)], st_unit=0.004) as fake:
        ser = serial.Serial(fake.port, 38400, timeout=0.05)
        try:
            for setup in ("ATE0", "ATSP6", "ATSTFF"):
                command(ser, setup)
            for _ in range(max(3, repeat // 4)):
                ser.write(b"010C\r")
                time.sleep(0.1)  # the request is under way, the ECU not yet answering
                ser.write(b"X")
                started = time.monotonic()
                if read_prompt(ser) != b"STOPPED\r\r>":
                    raise SystemExit("the interrupt did not print STOPPED")
                stopped.append(time.monotonic() - started)
        finally:
            ser.close()
    print(f"fake ELM327 interrupt -> STOPPED: median {median_ms(stopped):.0f} ms, against "
          f"the {latency * 1000:.0f} ms the ECU would take: ratio "
          f"{statistics.median(stopped) / latency:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    quiet_python_obd(False)
    logging.getLogger("eccm").setLevel(logging.ERROR)  # the missing adapter, said once
    requests(args.repeat)
    fake_elm(args.repeat)


if __name__ == "__main__":
    main()
