"""The MQTT sink against real parts: Debian's Mosquitto on 127.0.0.1, mosquitto_sub as the
consumer, the daemon as a child process reading an ELM327 double written from the
datasheet (fake_elm), and Home Assistant's discovery rules as an independent checker
(hass_schema, from Home Assistant's source) with its templates rendered by Jinja."""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Dict, List

import jinja2
import pytest

import hass_schema
from conftest import (free_port, outbox_files, read_records, stop_process, wait_for,
                      write_config)
from fake_elm import Ecu, FakeElm
from mqtt_broker import Mosquitto, SilentBroker, Subscriber

from eccm.sinks.rows import format_cell, parse_time

INTERVAL = 0.2


def stepping_engine() -> Ecu:
    """An engine whose values change once a second (RPM, speed, coolant): a document and
    the rows around it hold readings that lived long enough to be in both."""
    return Ecu.engine(
        pids=(0x01, 0x05, 0x0C, 0x0D),
        generators={0x0C: lambda t: ((1000 + 100 * int(t)) * 4).to_bytes(2, "big"),
                    0x0D: lambda t: bytes([20 + int(t) % 100]),
                    0x05: lambda t: bytes([100 + int(t) % 30])},
        stored_dtcs=["P0133"])


def status(port: int) -> Dict[str, str]:
    """The socket server's STATUS as key -> text ({} while it is not listening yet)."""
    try:
        return _status(port)
    except ConnectionRefusedError:
        return {}


def _status(port: int) -> Dict[str, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"STATUS\n")
        data = b""
        sock.settimeout(5)
        while not re.search(rb"^(OK|ERR)", data, re.M):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return dict(line.split(": ", 1) for line in data.decode().splitlines() if ": " in line)


def render(template: str, payload: str) -> str:
    """A value_template as Home Assistant renders it: Jinja with value_json."""
    return jinja2.Environment().from_string(template).render(value_json=json.loads(payload))


def header_names(record: Path) -> List[str]:
    return [cell.split(" (")[0] for cell in read_records(record)[0]]


@pytest.fixture
def broker(tmp_path):
    mosquitto = Mosquitto(tmp_path / "broker")
    yield mosquitto
    mosquitto.stop()


@pytest.fixture
def subscribers():
    started: List[Subscriber] = []
    yield started
    for sub in started:
        sub.stop()


def test_home_assistant_sees_the_record_files_values_at_the_configured_rate(
        tmp_path, broker, subscribers, daemon_factory):
    sub = Subscriber(tmp_path, broker.port)
    subscribers.append(sub)
    with FakeElm(protocol=6, ecus=[stepping_engine()]) as fake:
        daemon = daemon_factory(write_config(
            tmp_path, OBD_INTERFACE=fake.port, RECORD_INTERVAL=INTERVAL,
            MQTT_BROKER=f"127.0.0.1:{broker.port}", MQTT_INTERVAL=INTERVAL))
        wait_for(lambda: len([p for p in sub.payloads("eccm/TEST-CAR/state")
                              if json.loads(p)["values"].get("RPM") is not None]) >= 25,
                 40, what="25 documents with values")
        daemon.stop()
    assert daemon.proc.returncode == 0, daemon.log
    [record] = outbox_files(tmp_path / "records")
    rows = read_records(record)
    names = header_names(record)
    times = [parse_time(row[0]) for row in rows[1:]]

    docs = [json.loads(p) for p in sub.payloads("eccm/TEST-CAR/state")]
    live = [d for d in docs if d["values"]]
    assert live and all(list(d["values"]) == names[1:] for d in live)
    # Every value shown is one the record file holds at that moment (rows a document's
    # time falls between): same name, same text; never another moment's value.
    slack = timedelta(seconds=INTERVAL + 0.1)
    checked = 0
    for doc in live:
        moment = parse_time(doc["time"])
        near = [row for row, t in zip(rows[1:], times) if abs(t - moment) <= slack]
        if not near or not times[0] <= moment <= times[-1]:
            continue
        for i, name in enumerate(names[1:], start=1):
            assert any(format_cell(doc["values"][name]) == row[i] for row in near), \
                (name, doc, near)
            checked += 1
    assert checked >= 20 * 4
    # At the configured rate: as many documents as rows over the same stretch.
    span = [d for d in live if times[0] <= parse_time(d["time"]) <= times[-1]]
    assert 0.75 <= len(span) / (len(rows) - 1) <= 1.25, (len(span), len(rows))

    # Discovery: every config is one Home Assistant accepts, for one device.
    configs = [m for m in sub.messages() if m["topic"].startswith("homeassistant/")]
    later = Subscriber(tmp_path, broker.port)  # Home Assistant starting after ECCM
    subscribers.append(later)
    topics = {m["topic"] for m in configs} | {"eccm/TEST-CAR/availability",
                                              "eccm/TEST-CAR/dtc"}
    wait_for(lambda: {m["topic"] for m in later.messages()} >= topics, 10,
             what="the retained configs")
    assert all(m["retain"] for m in later.messages())
    assert later.payloads("eccm/TEST-CAR/availability") == ["offline"]
    found = {}
    for msg in configs:
        component, node, oid = hass_schema.check_topic(msg["topic"])
        found[(component, oid)] = hass_schema.validate(component, json.loads(msg["payload"]))
    assert {c["device"]["identifiers"][0] for c in found.values()} == {"eccm_test-car"}
    assert {c["device"]["serial_number"] for c in found.values()
            if "serial_number" in c["device"]} == {fake.ecus[0].vin}
    sensors = {c["name"]: c for (kind, _), c in found.items() if kind == "sensor"}
    assert set(names[1:]) <= set(sensors)
    assert sensors["SPEED"]["device_class"] == "speed"
    assert sensors["SPEED"]["unit_of_measurement"] == "km/h"
    assert sensors["COOLANT_TEMP"]["unit_of_measurement"] == "°C"
    assert sensors["RPM"]["state_class"] == "measurement"
    # The templates read the values the record holds from the last document.
    last = sub.payloads("eccm/TEST-CAR/state")[-1]
    for name in names[1:]:
        assert render(sensors[name]["value_template"], last) == \
            str(json.loads(last)["values"][name])
    assert render(found[("binary_sensor", "mil")]["value_template"], last) == "ON"
    assert render(found[("binary_sensor", "car_connected")]["value_template"], last) == "ON"
    [dtc] = {p for p in sub.payloads("eccm/TEST-CAR/dtc")}
    assert json.loads(dtc)["stored"] == ["P0133"]
    assert render(sensors["Trouble codes"]["value_template"], dtc) == "1"
    assert sensors["Trouble codes"]["json_attributes_topic"] == "eccm/TEST-CAR/dtc"
    assert ("device_tracker", "position") in found
    # Availability: online while running, offline said on a clean stop.
    assert sub.payloads("eccm/TEST-CAR/availability") == ["online", "offline"]


def test_broker_killed_and_restarted_reconnects_without_replay_and_last_will(
        tmp_path, broker, subscribers, daemon_factory):
    port = free_port()
    sub = Subscriber(tmp_path, broker.port, "eccm/#")
    subscribers.append(sub)
    with FakeElm(protocol=6, ecus=[stepping_engine()]) as fake:
        daemon = daemon_factory(write_config(
            tmp_path, OBD_INTERFACE=fake.port, MQTT_BROKER=f"127.0.0.1:{broker.port}",
            MQTT_INTERVAL=INTERVAL, ENABLE_SOCKET_SERVER="yes", SOCKET_SERVER_PORT=port))
        wait_for(lambda: "online" in sub.payloads("eccm/TEST-CAR/availability"), 30,
                 what="online")
        broker.kill()
        down = datetime.now(timezone.utc)
        wait_for(lambda: status(port).get("mqtt", "").startswith("lost"), 20,
                 what="the broker link lost in STATUS")
        wait_for(lambda: int(status(port)["mqtt_not_sent"]) >= 3, 20,
                 what="documents not sent while the broker is down")
        broker.start()
        up = datetime.now(timezone.utc)
        after = Subscriber(tmp_path, broker.port, "eccm/#")
        subscribers.append(after)
        wait_for(lambda: len(after.payloads("eccm/TEST-CAR/state")) >= 5, 30,
                 what="documents after the restart")
        assert after.payloads("eccm/TEST-CAR/availability")[0] == "online"
        assert status(port)["mqtt"].startswith("connected")
        # Offline-first: nothing produced while the broker was away comes afterwards.
        times = [parse_time(json.loads(p)["time"])
                 for p in after.payloads("eccm/TEST-CAR/state")]
        assert min(times) >= up - timedelta(seconds=0.5), (down, up, min(times))
        # The last will: ECCM dies without a word, the broker says offline for it.
        daemon.stop(signal.SIGKILL)
        wait_for(lambda: after.payloads("eccm/TEST-CAR/availability")[-1:] == ["offline"],
                 20, what="the last will")
    assert "MQTT broker 127.0.0.1:" in daemon.log


def test_a_broker_that_never_answers_does_not_slow_the_obd_sampling(tmp_path,
                                                                    daemon_factory):
    """The same car read for the same time with MQTT off and with a broker that accepts
    and never answers: as many samples (the publisher never holds up the OBD thread)."""
    silent = SilentBroker()
    samples = {}
    try:
        with FakeElm(protocol=6, ecus=[stepping_engine()]) as fake:
            for label, broker in (("off", ""), ("silent", f"127.0.0.1:{silent.port}")):
                port = free_port()
                folder = tmp_path / label
                folder.mkdir()
                daemon = daemon_factory(write_config(
                    folder, OBD_INTERFACE=fake.port, MQTT_BROKER=broker,
                    MQTT_INTERVAL=0.1, ENABLE_SOCKET_SERVER="yes", SOCKET_SERVER_PORT=port))
                wait_for(lambda: int(status(port).get("obd_samples", 0)) > 0, 30,
                         what="the first samples")
                first = int(status(port)["obd_samples"])
                time.sleep(3)  # a fixed stretch of polling, the same for both runs
                final = status(port)
                samples[label] = int(final["obd_samples"]) - first
                if broker:
                    assert final["mqtt"].startswith("connecting"), final
                    assert int(final["mqtt_published"]) == 0
                daemon.stop()
                assert daemon.proc.returncode == 0, daemon.log
    finally:
        silent.stop()
    assert silent.accepted, "ECCM never tried the broker"
    assert samples["silent"] >= 0.7 * samples["off"], samples


def test_wrong_password_is_one_clear_error_and_never_logged(tmp_path, daemon_factory):
    broker = Mosquitto(tmp_path / "broker", users={"eccm": "the-right-password-1"})
    try:
        with FakeElm(protocol=6, ecus=[stepping_engine()]) as fake:
            daemon = daemon_factory(write_config(
                tmp_path, OBD_INTERFACE=fake.port, MQTT_BROKER=f"127.0.0.1:{broker.port}",
                MQTT_USER="eccm", MQTT_PASSWORD="wrong-Secret-42", LOG_LEVEL="DEBUG",
                RECONNECT_MAX_DELAY=1))
            wait_for(lambda: broker.log.count("not authorised") >= 3, 30,
                     what="three refused logins")
            daemon.stop()
    finally:
        broker.stop()
    assert daemon.log.count("refused ECCM's login") == 1, daemon.log
    assert "check MQTT_USER and MQTT_PASSWORD" in daemon.log
    assert "wrong-Secret-42" not in daemon.log
    assert daemon.proc.returncode == 0


def test_right_password_logs_in(tmp_path, subscribers, daemon_factory):
    broker = Mosquitto(tmp_path / "broker", users={"eccm": "pw-1", "ha": "pw-2"})
    try:
        sub = Subscriber(tmp_path, broker.port, "cars/#", user="ha", password="pw-2")
        subscribers.append(sub)
        with FakeElm(protocol=6, ecus=[stepping_engine()]) as fake:
            daemon = daemon_factory(write_config(
                tmp_path, OBD_INTERFACE=fake.port, MQTT_BROKER=f"127.0.0.1:{broker.port}",
                MQTT_USER="eccm", MQTT_PASSWORD="pw-1", MQTT_TOPIC_PREFIX="cars/mine",
                MQTT_INTERVAL=INTERVAL))
            wait_for(lambda: sub.payloads("cars/mine/state"), 30, what="a document")
            daemon.stop()
    finally:
        broker.stop()
    assert sub.payloads("cars/mine/availability") == ["online", "offline"]


def test_tls_to_the_broker_and_a_certificate_not_trusted(tmp_path, subscribers,
                                                         daemon_factory):
    broker = Mosquitto(tmp_path / "broker", tls=True)
    other = Mosquitto(tmp_path / "other", tls=True)  # another authority's certificate
    try:
        sub = Subscriber(tmp_path, broker.port, "eccm/#", cafile=broker.cert)
        subscribers.append(sub)
        with FakeElm(protocol=6, ecus=[stepping_engine()]) as fake:
            good = daemon_factory(write_config(
                tmp_path, OBD_INTERFACE=fake.port, MQTT_BROKER=f"127.0.0.1:{broker.port}",
                MQTT_TLS="yes", MQTT_TLS_CA=broker.cert, MQTT_INTERVAL=INTERVAL))
            wait_for(lambda: sub.payloads("eccm/TEST-CAR/state"), 30, what="a document")
            good.stop()
        (tmp_path / "bad").mkdir()
        with FakeElm(protocol=6, ecus=[stepping_engine()]) as fake:
            bad = daemon_factory(write_config(
                tmp_path / "bad", OBD_INTERFACE=fake.port,
                MQTT_BROKER=f"127.0.0.1:{other.port}", MQTT_TLS="yes",
                MQTT_TLS_CA=broker.cert))
            wait_for(lambda: "certificate verify failed" in bad.log, 30,
                     what="the refused certificate in the log")
            bad.stop()
    finally:
        broker.stop()
        other.stop()
    assert good.proc.returncode == 0 and bad.proc.returncode == 0


def test_check_config_hides_the_mqtt_password(tmp_path):
    import subprocess
    import sys
    config = write_config(tmp_path, MQTT_BROKER="broker.local", MQTT_USER="eccm",
                          MQTT_PASSWORD="hunter2-secret")
    result = subprocess.run([sys.executable, "-m", "eccm", "check-config", "--config",
                             str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "hunter2-secret" not in result.stdout + result.stderr
    assert re.search(r"MQTT_PASSWORD\s+= \(set, hidden\)", result.stdout), result.stdout


@pytest.mark.parametrize("key,value,expected", [
    ("MQTT_BROKER", "mqtt://host:1883", "MQTT_BROKER = 'mqtt://host:1883'"),
    ("MQTT_BROKER", "host:99999", "expected a port from 1 to 65535"),
    ("MQTT_BROKER", "user:pw@host", "MQTT_BROKER"),
    ("MQTT_INTERVAL", "0", "MQTT_INTERVAL = '0'"),
    ("MQTT_TOPIC_PREFIX", "cars/+/x", "expected a topic prefix"),
    ("MQTT_TOPIC_PREFIX", "$SYS/x", "expected a topic prefix"),
    ("MQTT_DISCOVERY_PREFIX", "ha/#", "MQTT_DISCOVERY_PREFIX = 'ha/#'"),
    ("MQTT_TLS_CA", "missing.pem", "MQTT_TLS_CA = 'missing.pem'"),
    ("MQTT_TLS_CA", "junk.pem", "holds no PEM certificate"),
    ("MQTT_BROKER", "192.168.1.10:1883:", "MQTT_BROKER = '192.168.1.10:1883:'"),
    ("MQTT_BROKER", "broker.local::1883", "MQTT_BROKER"),
    ("MQTT_BROKER", "1883", "expected host:port or host"),
    ("MQTT_BROKER", "[foo]:1883", "MQTT_BROKER = '[foo]:1883'"),
    ("MQTT_BROKER", "broker:\uff11\uff18\uff18\uff13", "expected a port"),
    ("MQTT_TOPIC_PREFIX", "cars/my\tcar", "expected a topic prefix"),
])
def test_a_bad_mqtt_setting_is_one_error_naming_the_key(tmp_path, key, value, expected):
    import subprocess
    import sys
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    keys = {"MQTT_BROKER": "broker.local", "MQTT_TLS": "yes", key: value}
    result = subprocess.run([sys.executable, "-m", "eccm", "check-config", "--config",
                             str(write_config(tmp_path, **keys))],
                            capture_output=True, text=True)
    assert result.returncode == 2, result.stdout
    assert expected in result.stderr, result.stderr
    assert "pw@" not in result.stderr


def test_a_password_without_a_user_is_refused(tmp_path):
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "eccm", "check-config", "--config",
                             str(write_config(tmp_path, MQTT_BROKER="b", MQTT_PASSWORD="x"))],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "MQTT_USER: required when MQTT_PASSWORD is set" in result.stderr


def test_mqtt_off_leaves_the_link_disabled_and_status_quiet(tmp_path):
    from eccm.config import load
    from eccm.core.daemon import Daemon
    from eccm.core.health import status_items
    cfg, _ = load(write_config(tmp_path, OBD_INTERFACE=""), environ={})
    daemon = Daemon(cfg)
    assert daemon.mqtt is None
    snap = daemon.state.snapshot()
    assert snap.links["mqtt"].state == "disabled"
    items = dict(status_items(snap.health, snap.links, snap.counters, None, version="1",
                              car="C", uptime=0))
    assert items["mqtt"] == "disabled" and "mqtt_published" not in items


def test_stop_is_prompt_while_the_broker_is_unreachable(tmp_path, daemon_factory):
    """A broker that refuses every connection (the worker between two attempts) must not
    hold up a stop beyond the daemon's 5 s."""
    nobody = free_port()  # nothing listens: every attempt fails; the worker backs off
    with FakeElm(protocol=6, ecus=[stepping_engine()]) as fake:
        daemon = daemon_factory(write_config(
            tmp_path, OBD_INTERFACE=fake.port, MQTT_BROKER=f"127.0.0.1:{nobody}"))
        wait_for(lambda: "cannot reach it" in daemon.log, 20, what="a failed attempt")
        started = time.monotonic()
        stop_process(daemon.proc)
        took = time.monotonic() - started
    assert daemon.proc.returncode == 0, daemon.log
    assert took < 5, took


def publisher(state, port: int, **kw):
    from eccm.sinks.mqtt import MqttPublisher
    stop = threading.Event()
    worker = MqttPublisher(stop, state, car="C", broker=f"127.0.0.1:{port}", **kw)
    worker.start()
    return stop, worker


def stop_worker(stop, worker) -> None:
    stop.set()
    assert worker.join(5)


def test_a_login_never_answered_is_given_up_and_retried():
    from eccm.core.state import SharedState
    silent = SilentBroker()
    state = SharedState()
    stop, worker = publisher(state, silent.port, connack_timeout=0.3, reconnect_cap=0.5)
    try:
        wait_for(lambda: len(silent.accepted) >= 2, 10, what="a second attempt")
        link = state.snapshot().links["mqtt"]
        assert link.state in ("lost", "connecting")
    finally:
        stop_worker(stop, worker)
        silent.stop()
    assert worker.crashed is False


def test_without_paho_the_link_says_what_to_install(monkeypatch):
    import sys
    from eccm.core.state import SharedState
    from eccm.sinks.mqtt import MISSING
    monkeypatch.setitem(sys.modules, "paho", None)
    monkeypatch.setitem(sys.modules, "paho.mqtt", None)
    monkeypatch.setitem(sys.modules, "paho.mqtt.client", None)
    state = SharedState()
    stop, worker = publisher(state, free_port())
    try:
        wait_for(lambda: state.snapshot().links.get("mqtt") is not None
                 and state.snapshot().links["mqtt"].reason == MISSING, 5, what="the reason")
    finally:
        stop_worker(stop, worker)


class StuckBroker(SilentBroker):
    """Takes the login (CONNACK), then never reads again: the TCP window fills."""

    def greet(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.recv(4096)  # the CONNECT packet
        conn.sendall(bytes([0x20, 0x02, 0x00, 0x00]))  # CONNACK: accepted


def test_a_broker_that_stops_reading_drops_the_oldest_documents_and_counts_them():
    from eccm.core.state import Column, EngineRun, SharedState
    broker = StuckBroker()
    state = SharedState()
    columns = tuple(Column(f"V{i}") for i in range(200))
    state.start_engine_run(EngineRun(1, columns), source="obd")
    stop, worker = publisher(state, broker.port, interval=0.01, max_age=3600)
    try:
        for _ in range(2000):
            state.update_values({c.name: ("x" * 50, "") for c in columns}, origin="obd")
            health = state.snapshot().health.parts.get("mqtt")
            if health is not None and health.dropped >= 20:
                break
            time.sleep(0.01)
        health = state.snapshot().health.parts["mqtt"]
        assert health.dropped >= 20, health
        assert state.snapshot().links["mqtt"].state == "connected"
        # The worker is not blocked on the socket: it keeps ticking.
        beat = worker.beat
        wait_for(lambda: worker.beat > beat, 2, step=0.01, what="a heartbeat")
    finally:
        stop_worker(stop, worker)
        broker.stop()


def thread_cpu_seconds(native_id: int) -> float:
    """CPU time (user + system) a thread of this process has used, from /proc."""
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_waiting_for_a_login_answer_does_not_spin():
    """A broker that never answers the login: the publisher waits on its socket, it does
    not busy-loop (a Pi Zero has one core, shared with the OBD thread)."""
    from eccm.core.state import SharedState
    silent = SilentBroker()
    stop, worker = publisher(SharedState(), silent.port, connack_timeout=30)
    try:
        wait_for(lambda: silent.accepted, 10, what="the connection")
        tid = worker._thread.native_id
        before = thread_cpu_seconds(tid)
        time.sleep(1.5)
        used = thread_cpu_seconds(tid) - before
    finally:
        stop_worker(stop, worker)
        silent.stop()
    assert used < 0.5, f"{used:.2f} s of CPU in 1.5 s of waiting"


def test_two_eccms_of_one_car_on_one_broker_do_not_kick_each_other(broker):
    from eccm.core.state import SharedState
    states = [SharedState(), SharedState()]
    workers = [publisher(state, broker.port, interval=0.1) for state in states]
    try:
        for state in states:
            wait_for(lambda: state.snapshot().links.get("mqtt") is not None
                     and state.snapshot().links["mqtt"].state == "connected", 10,
                     what="both connected")
        # A broker drops the older client of an id at once: both keep publishing.
        for state in states:
            wait_for(lambda: state.snapshot().health.parts["mqtt"].published >= 10, 10,
                     what="documents from both")
        assert all(s.snapshot().links["mqtt"].state == "connected" for s in states)
        assert "already connected" not in broker.log
    finally:
        for stop, worker in workers:
            stop_worker(stop, worker)


def test_the_demo_drive_with_gnss_renders_in_home_assistant_as_the_record_holds(
        tmp_path, broker, subscribers):
    """The simulated car and receiver (eccm run --demo): every sensor Home Assistant keeps
    statistics of gets a number (or unknown) from every document, a time sensor a time,
    and the tracker the position the record file holds."""
    import os
    import subprocess
    import sys
    from conftest import REPO
    sub = Subscriber(tmp_path, broker.port)
    subscribers.append(sub)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECCM_")}
    env.update(PYTHONPATH=str(REPO), ECCM_RECORD_INTERVAL="0.5", ECCM_MQTT_INTERVAL="0.5",
               ECCM_MQTT_BROKER=f"127.0.0.1:{broker.port}")
    with open(tmp_path / "out.txt", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "eccm", "run", "--demo"],
                                cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: len(sub.payloads("eccm/DEMO/position")) >= 6, 90,
                     what="positions")
            proc.send_signal(signal.SIGINT)
            proc.wait(10)
        finally:
            stop_process(proc, signal.SIGKILL)
    configs = {m["topic"]: json.loads(m["payload"]) for m in sub.messages()
               if m["topic"].startswith("homeassistant/sensor/")}
    docs = sub.payloads("eccm/DEMO/state")
    assert configs and docs
    for config in configs.values():
        hass_schema.validate("sensor", config)
        for doc in docs:
            if config["state_topic"] != "eccm/DEMO/state":
                continue
            shown = render(config["value_template"], doc)
            if shown == "None":
                continue
            if "state_class" in config:
                float(shown)  # Home Assistant refuses a non-number here
            if config.get("device_class") == "timestamp":
                assert parse_time(shown) is not None, shown
    [record] = outbox_files(tmp_path / "demo-records")
    rows = read_records(record)
    names = header_names(record)
    lat, lon = names.index("LATITUDE"), names.index("LONGITUDE")
    recorded = {(row[lat], row[lon]) for row in rows[1:]}
    positions = [json.loads(p) for p in sub.payloads("eccm/DEMO/position")]
    assert any(p["gnss_time"] <= rows[-1][0] for p in positions)
    assert all((format_cell(p["latitude"]), format_cell(p["longitude"])) in recorded
               for p in positions if p["gnss_time"] <= rows[-1][0]), positions


def test_without_a_usable_paho_the_worker_stays_alive_for_the_watchdog(monkeypatch):
    """An idle publisher still beats (the daemon withholds systemd's watchdog from a
    worker silent for 60 s); paho-mqtt 1.x is named as the problem, not a crash."""
    import sys
    import types
    from eccm.core.state import SharedState
    old = types.ModuleType("paho.mqtt.client")  # paho-mqtt 1.x: no CallbackAPIVersion
    package = types.ModuleType("paho.mqtt")
    package.client = old
    monkeypatch.setitem(sys.modules, "paho", types.ModuleType("paho"))
    monkeypatch.setitem(sys.modules, "paho.mqtt", package)
    monkeypatch.setitem(sys.modules, "paho.mqtt.client", old)
    state = SharedState()
    stop, worker = publisher(state, free_port())
    try:
        wait_for(lambda: "paho-mqtt 2 or newer is needed" in
                 getattr(state.snapshot().links.get("mqtt"), "reason", ""), 5,
                 what="the reason")
        beat = worker.beat
        wait_for(lambda: worker.beat > beat, 3, what="a heartbeat while idle")
        assert worker.is_alive() and not worker.crashed
    finally:
        stop_worker(stop, worker)


class DroppingBroker(SilentBroker):
    """Takes the login, then hangs up at once (an ACL, a connection limit, a proxy)."""

    def greet(self, conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(bytes([0x20, 0x02, 0x00, 0x00]))
        self.times.append(time.monotonic())
        conn.close()

    times: List[float] = []


def test_a_broker_that_hangs_up_after_the_login_gets_growing_waits():
    from eccm.core.state import SharedState
    broker = DroppingBroker()
    broker.times = []
    stop, worker = publisher(SharedState(), broker.port, reconnect_cap=2.0)
    try:
        wait_for(lambda: len(broker.times) >= 5, 20, what="five logins")
    finally:
        stop_worker(stop, worker)
        broker.stop()
    gaps = [b - a for a, b in zip(broker.times, broker.times[1:])]
    assert gaps[-1] >= 1.5, gaps  # 0.5, 1, 2, 2...: not a reconnect every half second


def test_the_device_keeps_its_vin_between_runs(broker, subscribers, tmp_path):
    from eccm.core.health import ObdHealth
    from eccm.core.state import Column, EngineRun, SharedState
    state = SharedState()
    stop, worker = publisher(state, broker.port, interval=0.05)
    try:
        state.start_engine_run(EngineRun(1, (Column("RPM", "rpm"),), vin="1G1JC5444R7252367"),
                               source="obd")
        state.report(ObdHealth(vin="1G1JC5444R7252367"))
        wait_for(lambda: worker.published >= 3, 10, what="documents in the run")
        state.end_engine_run()
        state.report(ObdHealth())  # the poller forgets the VIN when a run ends
        published = worker.published
        wait_for(lambda: worker.published >= published + 3, 10, what="documents after it")
    finally:
        stop_worker(stop, worker)
    later = Subscriber(tmp_path, broker.port, "homeassistant/#")
    subscribers.append(later)
    wait_for(lambda: later.messages(), 10, what="the retained configs")
    time.sleep(0.5)  # every retained config arrives at once
    devices = [json.loads(m["payload"])["device"] for m in later.messages()]
    assert devices and all(d.get("serial_number") == "1G1JC5444R7252367" for d in devices)


class SlowLink:
    """A TCP relay to the broker that carries 2 kB/s from the client (a weak mobile link)."""

    def __init__(self, target: int, rate: int = 2000):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(4)
        self.port = self.server.getsockname()[1]
        self.target, self.rate = target, rate
        self.stopping = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.server.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, upstream, True),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False),
                             daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, slow: bool) -> None:
        src.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                data = src.recv(self.rate // 10 if slow else 65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            try:
                dst.sendall(data)
            except OSError:
                break
            if slow:
                time.sleep(0.1)
        for sock in (src, dst):
            try:
                sock.close()
            except OSError:
                pass

    def stop(self) -> None:
        self.stopping.set()
        self.server.close()


def test_a_slow_link_shows_the_newest_values_not_a_backlog(broker, subscribers, tmp_path,
                                                           caplog):
    """Documents bigger than the link carries per interval, after the discovery configs
    that take seconds to go through: what arrives is recent (each one replaces the waiting
    one; the replaced are counted), never a growing delay, and the configs' slow progress
    is not taken for a dead link."""
    from eccm.core.state import Column, EngineRun, SharedState
    link = SlowLink(broker.port, rate=6000)
    sub = Subscriber(tmp_path, broker.port, "eccm/#")
    subscribers.append(sub)
    state = SharedState()
    columns = tuple(Column(f"V{i}") for i in range(40))
    state.start_engine_run(EngineRun(1, columns), source="obd")
    stop, worker = publisher(state, link.port, interval=0.2, max_age=3600, stall=2.0)
    caplog.set_level(logging.WARNING, logger="eccm.core.worker")
    try:
        deadline = time.monotonic() + 14
        while time.monotonic() < deadline:
            state.update_values({c.name: ("x" * 30, "") for c in columns}, origin="obd")
            time.sleep(0.05)
    finally:
        stop_worker(stop, worker)
        link.stop()
    ages = []
    for msg in sub.messages("eccm/C/state"):
        arrived = datetime.strptime(msg["tst"][:26], "%Y-%m-%dT%H:%M:%S.%f").replace(
            tzinfo=timezone.utc)
        ages.append((arrived - parse_time(json.loads(msg["payload"])["time"]))
                    .total_seconds())
    assert len(ages) >= 5, ages
    assert max(ages[len(ages) // 2:]) < 3, ages  # a backlog grew to 30 s before
    assert worker.dropped > 0
    assert "acknowledged nothing" not in caplog.text


def test_a_link_that_acknowledges_nothing_is_started_again(caplog):
    """A broker that took the login and then nothing (a dead mobile link the keepalive has
    not noticed yet): the link is said lost and a new connection tried."""
    from eccm.core.state import Column, EngineRun, SharedState
    broker = StuckBroker()
    state = SharedState()
    state.start_engine_run(EngineRun(1, (Column("RPM", "rpm"),)), source="obd")
    stop, worker = publisher(state, broker.port, interval=0.05, stall=1.0,
                             reconnect_cap=0.5)
    try:
        with caplog.at_level(logging.WARNING, logger="eccm.core.worker"):
            wait_for(lambda: len(broker.accepted) >= 2, 15, what="a second connection")
    finally:
        stop_worker(stop, worker)
        broker.stop()
    assert any("the broker acknowledged nothing for" in r.getMessage()
               for r in caplog.records), caplog.text


@pytest.mark.parametrize("value,host,port", [
    ("[::1]:1883", "::1", 1883), ("[::1]", "::1", 1883), ("::1", "::1", 1883),
    ("localhost", "localhost", 1883), ("broker1:1884", "broker1", 1884),
    ("host-1", "host-1", 1883), ("192.168.1.10:8883", "192.168.1.10", 8883)])
def test_broker_addresses_users_write_are_taken(value, host, port):
    from eccm.config import split_broker
    assert split_broker(value) == (host, port)
