"""Polling benchmark: python-OBD vs ECCM vs a raw ideal client, on a timing-faithful
simulated ELM327 (eccm.sim.car profiles) and on the real ELM327-emulator.

Run:  python tests/bench/bench_polling.py [--seconds 5]
Prints values/s, the fast tier's (RPM) refresh rate and ratios measured in this run.
Every client is measured in steady state: counting starts after WARMUP seconds of
polling (connection set-up and first-pass learning, such as response counts, excluded).
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import obd  # noqa: E402
import serial  # noqa: E402

from eccm.sources.obd.poller import ObdPoller, quiet_python_obd  # noqa: E402
from eccm.sim.car import DEMO_PIDS, PROFILES, RICH_PIDS, SimulatedAdapter, SimulatedCar  # noqa
from eccm.core.state import SharedState  # noqa: E402

PIDS30 = sorted(set(DEMO_PIDS) | set(p for p in RICH_PIDS if p not in DEMO_PIDS))[:29] + [0x01]
SWITCH_TO = 2_000_000
WARMUP = 1.5


class Tally:
    def __init__(self):
        self.values = 0
        self.rpm = 0
        self.lock = threading.Lock()

    def add(self, names):
        with self.lock:
            self.values += len(names)
            self.rpm += "RPM" in names


def commands(conn) -> List:
    return sorted((c for c in conn.supported_commands if c.mode == 1 and c.pid and c.pid % 0x20
                   and c.name not in ("O2_SENSORS", "O2_SENSORS_ALT")), key=lambda c: c.pid)


def run_python_obd_async(port: str, seconds: float) -> Tally:
    tally = Tally()
    conn = obd.Async(port)
    for cmd in commands(conn):
        conn.watch(cmd, callback=lambda r, n=cmd.name: (not r.is_null()) and tally.add([n]))
    conn.start()
    time.sleep(WARMUP)
    tally.values = tally.rpm = 0
    time.sleep(seconds)
    conn.stop()
    conn.close()
    return tally


def run_python_obd_fast(port: str, seconds: float) -> Tally:
    tally = Tally()
    conn = obd.OBD(port, fast=True)
    cmds = commands(conn)
    counting = time.monotonic() + WARMUP
    end = counting + seconds
    while time.monotonic() < end:
        for cmd in cmds:
            if time.monotonic() >= end:  # count only what the window holds
                break
            if not conn.query(cmd).is_null() and time.monotonic() >= counting:
                tally.add([cmd.name])
    conn.close()
    return tally


class CountingState(SharedState):
    def __init__(self, tally: Tally):
        super().__init__()
        self.tally = tally

    def update_values(self, readings, mono=None, wall=None, *, origin):
        super().update_values(readings, mono, wall, origin=origin)
        names = [n for n in readings if not n.endswith("_DTC_COUNT")]
        self.tally.add(names)


def run_eccm(port: str, seconds: float, profiles=()) -> Tally:
    tally = Tally()
    state = CountingState(tally)
    stop = threading.Event()
    poller = ObdPoller(stop, state, port=port, fast_baudrate=SWITCH_TO, profiles=profiles)
    poller.start()
    while state.snapshot().engine_run is None:
        time.sleep(0.01)
    time.sleep(WARMUP)
    tally.values = tally.rpm = 0
    time.sleep(seconds)
    stop.set()
    poller.join(5)
    return tally


def run_ideal(port: str, seconds: float, packing: bool, can_switch: bool) -> Tally:
    """A raw-serial client doing everything right: no echo/spaces/headers, packed
    requests with a response count, the highest speed the adapter takes."""
    tally = Tally()
    ser = serial.Serial(port, timeout=1)

    def ask(cmd: bytes) -> bytes:
        ser.write(cmd + b"\r")
        out = b""
        while not out.endswith(b">"):
            out += ser.read(ser.in_waiting or 1)
        return out
    for setup in (b"ATZ", b"ATE0", b"ATS0", b"ATH0", b"ATL0", b"0100"):
        ask(setup)
    if can_switch:  # OK at the old speed, then the ID at the new one, then our CR
        ser.write(b"STBR %d\r" % SWITCH_TO)
        ser.read_until(b"OK\r")
        ser.baudrate = SWITCH_TO
        ser.read_until(b"\r")
        ser.write(b"\r")
        ser.read_until(b">")
    pids = [p for p in PIDS30 if p != 0x01] + [0x01]
    size = 6 if packing else 1
    groups = [pids[i:i + size] for i in range(0, len(pids), size)]
    names = {p: obd.commands[1][p].name for p in pids}
    counting = time.monotonic() + WARMUP
    end = counting + seconds
    while time.monotonic() < end:
        for group in groups:
            if time.monotonic() >= end:
                break
            reply = ask(b"01" + b"".join(b"%02X" % p for p in group) + b"1")
            text = re.sub(rb"(^|\r)[0-9]:", b"", reply).replace(b"\r", b"")
            got = [p for p in group if b"%02X" % p in text[2:]]
            if time.monotonic() >= counting:
                tally.add([names[p] for p in got])
    ser.close()
    return tally


def physical_bound(profile) -> float:
    """values/s if each request cost only its bytes (no echo, spaces or headers) at the top
    speed, the adapter's overhead and one ECU round trip, never a wait: the model's
    ECU-latency-limited bound for these 30 PIDs."""
    baud = max(profile.baudrate, profile.max_baudrate)
    sizes = [max(0, obd.commands[1][p].bytes - 2) for p in PIDS30]
    groups = [sizes[i:i + 6] for i in range(0, 30, 6)] if profile.packing else \
        [[n] for n in sizes]
    total = 0.0
    for group in groups:
        request = 2 + 2 * len(group) + 2                      # "01" PIDs digit CR
        payload = 1 + sum(1 + n for n in group)               # 41 (PID data)...
        if payload <= 7:
            reply = 2 * payload + 3                           # hex CR CR >
        else:
            frames = 1 + -(-(payload - 6) // 7)
            reply = 4 + 2 * payload + 3 * frames + 2          # "0XX" + "n:" + CRs + >
        total += profile.overhead + profile.ecu_latency + (request + reply) * 10 / baud
    return 30 / total


def measure(profile_name: str, seconds: float) -> Dict[str, Tally]:
    results = {}
    profile = PROFILES[profile_name]
    for kind in ("python-obd Async (default)", "python-obd query loop (fast=True)",
                 "ECCM poller", "raw ideal client"):
        adapter = SimulatedAdapter(SimulatedCar(pids=list(PIDS30), tcm=False, battery_ecu=False),
                                   profile=profile).start()
        try:
            if kind.startswith("python-obd Async"):
                results[kind] = run_python_obd_async(adapter.port, seconds)
            elif kind.startswith("python-obd query"):
                results[kind] = run_python_obd_fast(adapter.port, seconds)
            elif kind == "ECCM poller":
                results[kind] = run_eccm(adapter.port, seconds)
            else:
                results[kind] = run_ideal(adapter.port, seconds, profile.packing,
                                          bool(profile.max_baudrate))
        finally:
            adapter.stop()
    return results


def report(title: str, results: Dict[str, Tally], seconds: float, bound: float = 0) -> None:
    print(f"\n{title}")
    base = results.get("python-obd Async (default)")
    fast = results.get("python-obd query loop (fast=True)")
    ideal = results.get("raw ideal client")
    for kind, tally in results.items():
        vps, rps = tally.values / seconds, tally.rpm / seconds
        extras = []
        if base and base.values:
            extras.append(f"{tally.values / base.values:.2f}x Async")
        if ideal and ideal.values:
            extras.append(f"{tally.values / ideal.values:.0%} of ideal")
        if fast and fast.rpm:
            extras.append(f"RPM {tally.rpm / fast.rpm:.2f}x query loop")
        if bound:
            extras.append(f"{vps / bound:.0%} of bound")
        print(f"  {kind:36s} {vps:7.1f} values/s  RPM {rps:5.2f}/s   " + ", ".join(extras))
    if bound:
        print(f"  {'model bound (ECU-latency-limited)':36s} {bound:7.1f} values/s")


def every_ecu_run(seconds: float) -> None:
    """The engine's fast tier (its RPM refreshes) with the engine alone, and with a gearbox
    answering the same requests and a battery ECU polled through the demo profile (mode 22
    every 1 s and 5 s, header switched and restored each time)."""
    from eccm.sources.obd.profile import load
    profiles = load(REPO / "eccm" / "profiles" / "demo-ev.json")
    profile = PROFILES["obdlink"]
    results = {}
    for label, full in (("engine alone", False),
                        ("engine + gearbox + battery ECU profile", True)):
        car = SimulatedCar(pids=list(PIDS30), tcm=full, battery_ecu=full)
        adapter = SimulatedAdapter(car, profile=profile).start()
        try:
            results[label] = run_eccm(adapter.port, seconds, profiles if full else ())
        finally:
            adapter.stop()
    print("\nevery ECU (obdlink profile, ECCM poller; RPM = the engine's own)")
    base = results["engine alone"]
    for label, tally in results.items():
        print(f"  {label:40s} {tally.values / seconds:7.1f} values/s  "
              f"RPM {tally.rpm / seconds:5.2f}/s  RPM {tally.rpm / max(1, base.rpm):.2f}x "
              "engine alone")


def emulator_run(seconds: float) -> None:
    exe = str(Path(sys.executable).parent / "elm")
    if not os.path.isfile(exe):
        print(f"\nELM327-emulator not installed in {Path(exe).parent}: skipped")
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "elm.out"
        results = {}
        for kind in ("python-obd query loop (fast=True)", "ECCM poller"):
            proc = subprocess.Popen([exe, "-s", "car", "-b", str(out)], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    cwd=tmp)  # it writes elm.log where it runs
            proc.stdin.write(b"delay 0.01\n")  # 10 ms per reply, like an ECU
            proc.stdin.flush()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not (out.exists() and out.read_text()):
                time.sleep(0.1)
            port = out.read_text().splitlines()[0]
            try:
                results[kind] = (run_python_obd_fast(port, seconds) if "query" in kind
                                 else run_eccm(port, seconds))
            finally:
                proc.terminate()
                proc.wait(10)
                out.unlink()
        report("ELM327-emulator 'car' scenario, delay 0.01 s per reply", results, seconds)


def start_to_first_row() -> float:
    adapter = SimulatedAdapter(SimulatedCar(pids=list(PIDS30), tcm=False, battery_ecu=False),
                               profile=PROFILES["obdlink"]).start()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "config.ini"
        cfg.write_text(f"CAR_IDENTIFIER=BENCH\nOBD_INTERFACE={adapter.port}\n"
                       f"RECORD_DIRECTORY_LOCATION={tmp}/rec\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ECCM_")}
        env["PYTHONPATH"] = str(REPO)
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "eccm", "run", "--config", str(cfg)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                parts = list((Path(tmp) / "rec").glob("*.part"))
                if parts and parts[0].read_bytes().count(b"\n") >= 2:
                    return time.monotonic() - started
                if time.monotonic() - started > 30:
                    return float("nan")
                time.sleep(0.005)
        finally:
            proc.terminate()
            proc.wait(10)
            adapter.stop()


def resources(seconds: float, s3: bool, server: bool = False) -> Tuple[float, float, int]:
    """(steady RSS MB, CPU s per 1000 rows, rows) of a demo run, with S3 upload (to a closed
    port: boto3 loaded and retrying) and the socket server on or off."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ECCM_")}
        env.update(PYTHONPATH=str(REPO), ECCM_RECORD_DIRECTORY_LOCATION=f"{tmp}/rec",
                   ECCM_RECORD_INTERVAL="0.05")
        if s3:  # a finished file waiting, so that boto3 is loaded and retrying
            Path(tmp, "rec", "outbox").mkdir(parents=True)
            Path(tmp, "rec", "outbox", "DEMO_20260101T000000Z.csv").write_text("TIME (UTC)\n")
            env.update(ECCM_S3_SERVER_ENDPOINT="http://127.0.0.1:9", ECCM_S3_SERVER_AK="a",
                       ECCM_S3_SERVER_SK="b", ECCM_S3_SERVER_BUCKET="bench")
        if server:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            env.update(ECCM_ENABLE_SOCKET_SERVER="yes", ECCM_SOCKET_SERVER_PORT=str(port))
        # The demo uploads only when asked (--upload): without it, S3 is never loaded.
        command = ["run", "--demo"] + (["--upload"] if s3 else [])
        proc = subprocess.Popen([sys.executable, "-m", "eccm", *command], cwd=tmp,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(5)  # connected and steady
        ticks = os.sysconf("SC_CLK_TCK")

        def cpu() -> float:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / ticks

        def rows() -> int:
            return sum(p.read_bytes().count(b"\n") for p in Path(tmp, "rec").rglob("*.csv*"))
        cpu0, rows0 = cpu(), rows()
        time.sleep(seconds)
        cpu1, rows1 = cpu(), rows()
        rss = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{proc.pid}/status").read_text())[1])
        proc.terminate()
        proc.wait(10)
        made = rows1 - rows0
        return rss / 1024, (cpu1 - cpu0) / max(1, made) * 1000, made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--resources", action="store_true",
                        help="only the demo's memory and CPU figures")
    parser.add_argument("--every-ecu", action="store_true",
                        help="only the fast tier with a gearbox and a battery ECU profile")
    args = parser.parse_args()
    if args.resources:
        return report_resources()
    if args.every_ecu:
        quiet_python_obd(False)
        return every_ecu_run(args.seconds)
    quiet_python_obd(False)
    print(f"30 supported PIDs; each client measured for {args.seconds:g} s in this run")
    for name in ("obdlink", "clone"):
        profile = PROFILES[name]
        report(f"profile {name}: {profile.baudrate} baud, ECU {profile.ecu_latency * 1000:g} ms"
               f" + adapter {profile.overhead * 1000:g} ms, packing "
               f"{'yes' if profile.packing else 'no'}, speed switch up to "
               f"{profile.max_baudrate or '-'}", measure(name, args.seconds), args.seconds,
               physical_bound(profile))
    every_ecu_run(args.seconds)
    emulator_run(args.seconds)
    print(f"\nprocess start -> first recorded row (obdlink profile): "
          f"{start_to_first_row():.2f} s")
    report_resources()


def report_resources() -> None:
    for label, s3, server in (("demo alone", False, False), ("demo + S3 upload", True, False),
                              ("demo + S3 upload + socket server", True, True)):
        rss, cpu, made = resources(10, s3, server)
        print(f"{label:34s} steady RSS {rss:.1f} MB, CPU {cpu:.2f} s per 1000 rows "
              f"({made} rows measured)")


if __name__ == "__main__":
    main()
