"""The MQTT sink: live values, position, trouble codes and Home Assistant discovery, sent
to a broker every MQTT_INTERVAL.

One worker thread owns the paho-mqtt client (non-threaded mode: the network I/O happens in
this thread's loop, with a timeout on every wait). It reads snapshots, never calls the OBD
or the recorder, so a slow or silent broker costs them nothing. Each topic has at most one
document in flight (QoS 1, until the broker acknowledges it) and one waiting, which a newer
one replaces (counted): a slow link delays the newest values, it never queues old ones.
Offline-first: while the broker is unreachable no document is kept for later (the
record files are the history); after a reconnect the next document is the live one.
paho-mqtt is imported only when MQTT_BROKER is set (the `mqtt` extra).
"""
from __future__ import annotations

import json
import re
import secrets
import logging
import ssl
import threading
import time
from datetime import datetime, timezone
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from eccm import __version__
from eccm.config import split_broker
from eccm.core.health import Link
from eccm.core.state import CONNECTED, CONNECTING, DISABLED, LOST, SharedState
from eccm.core.worker import Backoff, LinkLog, Worker
from eccm.sinks.hass import (OFFLINE, ONLINE, Topics, discovery, dtc_document,
                             position_document, state_document)

if TYPE_CHECKING:
    from eccm.config import Config

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 3.0  # seconds for TCP (and TLS) to connect
CONNACK_TIMEOUT = 10.0  # seconds for the broker to answer the login
KEEPALIVE = 30         # seconds; a broker silent for 1.5x this is gone
RECONNECT_CAP = 60.0   # longest wait between two attempts
STALL = 10.0           # seconds without any acknowledgement, while a message waits for
                       # one, before the link counts as lost
STABLE = 30.0          # seconds a link must last before the waits start afresh
MISSING = ("paho-mqtt is not installed: MQTT_BROKER needs the mqtt extra "
           "(pip install 'eccm[mqtt]', or ./start.sh)")


@dataclass(frozen=True)
class MqttHealth:
    """The publisher's part of the health model (core.health.Part); its broker link is
    the `mqtt` link."""
    broker: str = ""               # host:port
    published: int = 0             # documents the broker acknowledged
    dropped: int = 0               # replaced while waiting by newer ones (a slow broker)
    not_sent: int = 0              # produced while the broker was unreachable (not kept)
    name: str = "mqtt"

    def status_items(self, link: Optional[Link]) -> List[Tuple[str, Any]]:
        return [("mqtt", f"{link.text() if link else 'starting'} ({self.broker})"),
                ("mqtt_published", self.published), ("mqtt_dropped", self.dropped),
                ("mqtt_not_sent", self.not_sent)]

    def status_line(self, link: Optional[Link]) -> Optional[str]:
        return None  # the link's state is on the line already


class MqttPublisher(Worker):
    """Publishes to one broker; reconnects with a growing delay, forever."""

    name = "mqtt"

    def __init__(self, stop_event: threading.Event, state: SharedState, *, car: str,
                 broker: str, user: Optional[str] = None, password: Optional[str] = None,
                 tls: bool = False, tls_ca: Optional[str] = None, prefix: Optional[str] = None,
                 interval: float = 5.0, announce: bool = True,
                 discovery_prefix: str = "homeassistant", max_age: float = 2.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 connect_timeout: float = CONNECT_TIMEOUT,
                 connack_timeout: float = CONNACK_TIMEOUT, keepalive: int = KEEPALIVE,
                 reconnect_cap: float = RECONNECT_CAP, stall: float = STALL):
        super().__init__(stop_event)
        self.state = state
        self.car = car
        self.broker = broker
        self.host, self.port = split_broker(broker, tls)
        self.user = user
        self._password = password
        self.tls = tls
        self.tls_ca = tls_ca
        self.topics = Topics(prefix or f"eccm/{car}")
        self.interval = interval
        self.announce = announce
        self.discovery_prefix = discovery_prefix
        self.max_age = max_age
        self.clock = clock
        self.connect_timeout = connect_timeout
        self.connack_timeout = connack_timeout
        # A document unacknowledged this long means a stalled link.
        self.stall = stall
        self.keepalive = keepalive
        self.backoff = Backoff(reconnect_cap)
        self.link = LinkLog(state, "mqtt", f"MQTT broker {broker}")
        # The newest document of each topic not yet handed to the client, and the message
        # id of the one the broker has not acknowledged yet (QoS 1): one in flight per
        # topic, so a slow link never holds a backlog of old values.
        self._pending: Dict[str, str] = {}
        self._in_flight: Dict[str, Tuple[int, float]] = {}  # topic -> (mid, sent at)
        self._client: Any = None
        self._paho: Any = None  # the paho.mqtt.client module, imported by run()
        self._connected = False
        self._refused: Optional[str] = None  # why the broker refused the login
        self._gone: Optional[str] = None     # why the connection ended
        self._announced: Dict[str, str] = {}  # discovery topic -> payload sent
        self._announced_for: Any = None  # the (columns, VIN) they were made for
        self._last_offline = 0.0
        self._vin: Optional[str] = None
        self._up_since: Optional[float] = None  # when the broker accepted this login
        self._last_ack = 0.0  # when the broker last acknowledged a message
        self._dtc: Optional[str] = None
        self.published = self.dropped = self.not_sent = 0

    @classmethod
    def from_config(cls, stop_event: threading.Event, state: SharedState, cfg: "Config", *,
                    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
                    ) -> Optional["MqttPublisher"]:
        """The publisher the configuration describes, or None when MQTT_BROKER is empty
        (its link then says disabled); the clock is the daemon's (the documents carry the
        time the record rows carry)."""
        if not cfg.mqtt_enabled:
            state.set_link("mqtt", DISABLED)
            return None
        return cls(stop_event, state, car=cfg.CAR_IDENTIFIER, broker=cfg.MQTT_BROKER,
                   user=cfg.MQTT_USER, password=cfg.MQTT_PASSWORD, tls=cfg.MQTT_TLS,
                   tls_ca=cfg.MQTT_TLS_CA, prefix=cfg.MQTT_TOPIC_PREFIX,
                   interval=cfg.MQTT_INTERVAL, announce=cfg.MQTT_DISCOVERY,
                   discovery_prefix=cfg.MQTT_DISCOVERY_PREFIX, max_age=cfg.VALUE_MAX_AGE,
                   reconnect_cap=cfg.RECONNECT_MAX_DELAY, clock=clock)

    def run(self) -> None:
        self._report()
        try:
            import paho.mqtt.client as paho  # only when MQTT is on
        except ImportError:
            paho = None
        problem = MISSING if paho is None else None
        if paho is not None and not hasattr(paho, "CallbackAPIVersion"):  # paho-mqtt 1.x
            problem = (f"paho-mqtt 2 or newer is needed, {_version(paho)} is installed "
                       "(pip install 'eccm[mqtt]')")
        if problem:
            self.link(LOST, problem)
            # Idle, but alive: the systemd watchdog must not take this for a hung thread.
            while not self.stop_event.wait(1.0):
                self.heartbeat()
            return
        self._paho = paho
        while not self.stop_event.is_set():
            self.heartbeat()
            self.link(CONNECTING)
            try:
                self._session()
            except (OSError, ValueError) as exc:  # socket, TLS, DNS; paho's ValueError
                self.link(LOST, f"cannot reach it: {_why(exc)}")
            self._close(goodbye=self.stop_event.is_set())
            if self.stop_event.is_set():
                break
            delay = self.backoff.next()
            deadline = time.monotonic() + delay
            while not self.stop_event.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
                self.heartbeat()
                self._tick_offline()
                if time.monotonic() >= deadline:
                    break

    def on_exit(self) -> None:
        self._close(goodbye=True)

    def _session(self) -> None:
        """One connection: log in, then publish every interval until it ends."""
        self._connect()
        asked = time.monotonic()
        next_tick = asked
        while not self.stop_event.is_set():
            self.heartbeat()
            now = time.monotonic()
            # Waiting for the login: no tick to keep, so no busy loop either.
            wait = max(0.0, min(0.2, next_tick - now)) if self._connected else 0.2
            rc = self._client.loop(timeout=wait)
            if self._refused is not None:
                self.link(LOST, self._refused)
                return
            if self._gone is not None or (rc != 0 and self._connected):
                self.link(LOST, self._gone or f"connection lost ({self._paho.error_string(rc)})")
                return
            if not self._connected:
                if rc != 0:
                    self.link(LOST, "connection lost before the login was answered "
                                    f"({self._paho.error_string(rc)})")
                    return
                if now - asked > self.connack_timeout:
                    self.link(LOST, f"no answer to the login within "
                                    f"{self.connack_timeout:g} s")
                    return
                continue
            if self._up_since is not None and now - self._up_since >= STABLE:
                # Up for a while: the next loss starts the waits afresh. A broker that
                # takes the login and drops us at once keeps the delay growing instead.
                self.backoff.reset()
                self._up_since = None
            if self._in_flight and now - self._last_ack > self.stall:
                # Something waits and the broker acknowledged nothing at all (no config, no
                # document) for this long: a dead link the keepalive has not noticed yet.
                # Start again rather than show values that do not arrive.
                self.link(LOST, f"the broker acknowledged nothing for "
                                f"{now - self._last_ack:.0f} s")
                return
            if now >= next_tick:
                self._tick()
                next_tick += self.interval
                if next_tick < now:  # a stall (slow system): keep the cadence
                    next_tick = now + self.interval
            self._send()

    def _connect(self) -> None:
        """A fresh client for each connection: nothing of the last one is replayed."""
        mqtt = self._paho
        # A broker drops the older of two clients with one id: a random tail keeps a
        # second ECCM of the same car (a test bench, a spare Pi) from kicking this one.
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             # Up to 23 letters and digits: what MQTT 3.1.1 guarantees.
                             client_id="eccm" + re.sub(r"[^0-9A-Za-z]", "", self.car)[:13]
                             + secrets.token_hex(3),
                             protocol=mqtt.MQTTv311)
        client.connect_timeout = self.connect_timeout
        if self.user:
            client.username_pw_set(self.user, self._password)
        if self.tls:
            client.tls_set(ca_certs=self.tls_ca, cert_reqs=ssl.CERT_REQUIRED)
        client.will_set(self.topics.availability, OFFLINE, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        self._connected = False
        self._refused = self._gone = None
        self._in_flight.clear()
        self._pending.clear()
        self._up_since = None
        client.connect(self.host, self.port, keepalive=self.keepalive)

    def _close(self, goodbye: bool = False) -> None:
        """End the connection; on a clean stop say `offline` first (a clean disconnect does
        not send the last will)."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            if goodbye and self._connected:
                info = client.publish(self.topics.availability, OFFLINE, qos=1, retain=True)
                deadline = time.monotonic() + 1.0
                while not info.is_published() and time.monotonic() < deadline:
                    if client.loop(timeout=0.1) != 0:
                        break
            if goodbye:
                client.disconnect()
                client.loop(timeout=0.1)
            else:
                # A lost or stalled link: drop it without DISCONNECT, so the broker sends
                # the last will (offline) rather than keep `online` for a silent ECCM.
                sock = client.socket()
                if sock is not None:
                    sock.close()
        except (OSError, ValueError, RuntimeError):
            pass  # going anyway
        self._connected = False
        self._report()

    # paho's callbacks run in this thread, from client.loop().

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason: Any,
                    _properties: Any) -> None:
        if reason.is_failure:
            text = str(reason)
            if "password" in text.lower() or "authori" in text.lower():
                self._refused = (f"the broker refused ECCM's login ({text}): check "
                                 "MQTT_USER and MQTT_PASSWORD")
            else:
                self._refused = f"the broker refused the connection ({text})"
            return
        self._connected = True
        self._up_since = time.monotonic()
        self._last_ack = time.monotonic()
        self.link(CONNECTED, f"{self.host}:{self.port}, topics {self.topics.prefix}/#")
        self._announced.clear()
        self._announced_for = None
        self._dtc = None
        client.publish(self.topics.availability, ONLINE, qos=1, retain=True)
        self._announce()

    def _on_disconnect(self, _client: Any, _userdata: Any, _flags: Any, reason: Any,
                       _properties: Any) -> None:
        if self._connected:
            self._gone = f"connection lost ({reason})"
        self._connected = False

    def _on_publish(self, _client: Any, _userdata: Any, mid: int, *_rest: Any) -> None:
        """The broker acknowledged a message (QoS 1): the link moves."""
        self._last_ack = time.monotonic()
        for topic, (waiting, _sent) in list(self._in_flight.items()):
            if waiting == mid:
                del self._in_flight[topic]
                self.published += 1  # delivered to the broker, not only handed over


    def _tick(self) -> None:
        """Once an interval, connected: the live documents, and what changed since."""
        snap = self.state.snapshot()
        self._announce(snap)
        self._enqueue(self.topics.state,
                      json.dumps(state_document(snap, self.clock(), self.max_age)))
        position = position_document(snap, self.max_age)
        if position is not None:
            self._enqueue(self.topics.position, json.dumps(position))
        dtc = dtc_document(snap.engine_run)
        if dtc is not None:
            text = json.dumps(dtc)
            if text != self._dtc:
                self._client.publish(self.topics.dtc, text, qos=1, retain=True)
                self._dtc = text
        self._report()

    def _tick_offline(self) -> None:
        """Once an interval while the broker is unreachable: count, keep nothing."""
        now = time.monotonic()
        if now - self._last_offline >= self.interval:
            self._last_offline = now
            self.not_sent += 1
            self._report()

    def _announce(self, snap: Any = None) -> None:
        """Discovery configs (retained) that are new or changed: at login, and when a run
        brings new values or the VIN."""
        if not self.announce:
            return
        snap = snap or self.state.snapshot()
        vin = snap.engine_run.vin if snap.engine_run is not None else snap.health.obd.vin
        # The car keeps its VIN between runs (the OBD health forgets it when a run ends).
        self._vin = vin or self._vin
        vin = self._vin
        key = (snap.declared(), vin)
        if key == self._announced_for:
            return
        self._announced_for = key
        for topic, payload in discovery(self.car, vin, snap.declared(), self.topics,
                                        self.discovery_prefix, self.interval, __version__):
            text = json.dumps(payload, sort_keys=True)
            if self._announced.get(topic) != text:
                self._client.publish(topic, text, qos=1, retain=True)
                self._announced[topic] = text

    def _enqueue(self, topic: str, payload: str) -> None:
        """Each document replaces the last one of its topic that is still waiting: a
        consumer is shown the newest values, never a backlog (replaced ones are counted)."""
        if topic in self._pending:
            self.dropped += 1
        self._pending[topic] = payload

    def _send(self) -> None:
        """Hand each topic's waiting document to the client once the broker acknowledged
        the previous one (a broker or link that stops taking them leaves them here, where
        newer ones replace them)."""
        for topic in [t for t in self._pending if t not in self._in_flight]:
            if not self._connected:
                return
            info = self._client.publish(topic, self._pending.pop(topic), qos=1, retain=False)
            self._in_flight[topic] = (info.mid, time.monotonic())

    def _report(self) -> None:
        self.state.report(MqttHealth(broker=self.broker, published=self.published,
                                     dropped=self.dropped, not_sent=self.not_sent))


def _version(module: Any) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return f"paho-mqtt {version('paho-mqtt')}"
    except PackageNotFoundError:
        return f"paho-mqtt {getattr(module, '__version__', '(version unknown)')}"


def _why(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__
    return text
