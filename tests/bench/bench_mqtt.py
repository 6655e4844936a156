"""MQTT benchmark: the broker traffic of one JSON document per interval against a retained
topic per value, for the same values, measured by Mosquitto itself ($SYS counters).

Run:  python tests/bench/bench_mqtt.py [--intervals 300] [--seconds 4]
The values are a real snapshot: ECCM's OBD poller reads the simulated demo car (eccm.sim)
for --seconds, then each way of publishing sends that snapshot --intervals times to a fresh
Mosquitto on 127.0.0.1 with one subscriber on eccm/# (a Home Assistant). Bytes and messages
received and sent by the broker come from $SYS/broker/...; ratios are measured in this run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import paho.mqtt.client as mqtt  # noqa: E402

from conftest import free_port, require_tool, stop_process, write_config  # noqa: E402
from eccm.config import load  # noqa: E402
from eccm.core.state import SharedState  # noqa: E402
from eccm.sim.car import SimulatedAdapter  # noqa: E402
from eccm.sinks.hass import json_value, state_document  # noqa: E402
from eccm.sinks.rows import format_time  # noqa: E402
from eccm.sources.obd.poller import ObdPoller  # noqa: E402

Messages = List[Tuple[str, str, bool]]


def demo_snapshot(seconds: float):
    """A snapshot of the demo car's values as the daemon would hold them."""
    with tempfile.TemporaryDirectory() as tmp:
        adapter = SimulatedAdapter(latency=0.002).start()
        try:
            cfg, _ = load(write_config(Path(tmp), OBD_INTERFACE=adapter.port,
                                       OBD_PROFILE=REPO / "eccm/profiles/demo-ev.json"),
                          environ={})
            stop = threading.Event()
            state = SharedState()
            poller = ObdPoller.from_config(stop, state, cfg)
            poller.start()
            time.sleep(seconds)
            snap = state.snapshot()  # during the engine run
            stop.set()
            poller.join(5)
            return snap
        finally:
            adapter.stop()


def as_document(snap) -> Callable[[], Messages]:
    from datetime import datetime, timezone

    def make() -> Messages:
        doc = state_document(snap, datetime.now(timezone.utc), 3600)
        return [("eccm/BENCH/state", json.dumps(doc), False)]
    return make


def as_topics(snap, with_time: bool) -> Callable[[], Messages]:
    """A retained topic per value: the bare value, or JSON with its time and unit."""
    from datetime import datetime, timezone

    def make() -> Messages:
        doc = state_document(snap, datetime.now(timezone.utc), 3600)
        out = []
        for name, value in doc["values"].items():
            if with_time:
                payload = json.dumps({"value": value, "unit": snap.values[name].unit,
                                      "time": format_time(snap.values[name].wall)})
            else:
                payload = json.dumps(json_value(value))
            out.append((f"eccm/BENCH/{name}", payload, True))
        return out
    return make


def sys_counters(port: int) -> Dict[str, int]:
    sub = require_tool("mosquitto_sub")
    topics = ["$SYS/broker/bytes/received", "$SYS/broker/bytes/sent",
              "$SYS/broker/messages/received", "$SYS/broker/messages/sent"]
    args = [sub, "-h", "127.0.0.1", "-p", str(port), "-C", str(len(topics)), "-v",
            "-W", "10"]
    for topic in topics:
        args += ["-t", topic]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return {line.split()[0].rsplit("/", 2)[-2] + "_" + line.split()[0].rsplit("/", 1)[-1]:
            int(line.split()[1]) for line in out.splitlines()}


def measure(make: Callable[[], Messages], intervals: int, folder: Path) -> Dict[str, int]:
    port = free_port()
    conf = folder / f"m{port}.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "sys_interval 1\n")
    broker = subprocess.Popen([require_tool("mosquitto"), "-c", str(conf)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        consumer = subprocess.Popen([require_tool("mosquitto_sub"), "-h", "127.0.0.1",
                                     "-p", str(port), "-t", "eccm/#"],
                                    stdout=subprocess.DEVNULL)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        client.connect("127.0.0.1", port)
        client.loop_start()
        for _ in range(intervals):
            for topic, payload, retain in make():
                client.publish(topic, payload, qos=0, retain=retain)
        time.sleep(2.5)  # $SYS is refreshed every second
        counts = sys_counters(port)
        client.loop_stop()
        client.disconnect()
        stop_process(consumer)
        return counts
    finally:
        stop_process(broker)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    snap = demo_snapshot(args.seconds)
    if snap.engine_run is None:
        sys.exit("the simulated car was not read: no values to publish")
    print(f"{len(snap.declared())} values of the simulated demo car, "
          f"{args.intervals} intervals")
    ways = {"one document per interval": as_document(snap),
            "retained topic per value (bare value)": as_topics(snap, False),
            "retained topic per value (JSON value, unit, time)": as_topics(snap, True)}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, make in ways.items():
            results[label] = measure(make, args.intervals, Path(tmp))
    base = results["one document per interval"]
    for label, counts in results.items():
        print(f"{label}:")
        for key in ("bytes_received", "messages_received", "bytes_sent", "messages_sent"):
            print(f"  {key:18} {counts[key]:>10}  {counts[key] / base[key]:5.2f}x")


if __name__ == "__main__":
    main()
