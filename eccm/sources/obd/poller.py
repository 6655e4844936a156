"""OBD poller thread: owns the ELM327 adapter; discovers and polls every engine value.

The adapter is driven by sources/obd/adapter.py (whole replies only, packed requests,
response counts; python-OBD decodes).
Values are polled in two tiers: the fast ones (RPM, speed, throttle...) every cycle, the
slow ones (temperatures, fuel level...) spread over OBD_SLOW_EVERY cycles, so the fast
tier refreshes as often as the adapter allows while every value is still logged.

This thread alone touches the adapter (python-OBD is not thread-safe either). Other threads
ask through read_dtcs(), clear_dtcs(), query() and request_reconnect() (the server's
CarAccess), or hand it work with submit(), which runs a function with the open connection on
this thread and waits for the result with a timeout; what cannot be answered is one
Unavailable (core.state) whose message says why. The adapter is reopened forever with
growing backoff when it is missing, unplugged, or the ignition is off.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from datetime import datetime, timezone
from dataclasses import replace
from types import MappingProxyType
from concurrent.futures import TimeoutError as FutureTimeout
from typing import (TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple,
                    TypeVar)

import obd

from eccm.sources.obd import values as obd_values
from eccm.sources.obd.values import VOLTAGE_COLUMN
from eccm.sources.obd.frames import CAN29
from eccm.sources.obd.adapter import (CAN_PROTOCOLS, MAX_PACK, PROBE_BAUDS, AdapterError,
                                      ElmConnection, EngineChanged, NoCar, ReadError,
                                      parse_volts, probe_voltage)
from eccm.sources.obd.profile import Profile, load as load_profiles
from eccm.sources.obd.link import ElmLink, PortInUse, check_free, is_url
from eccm.core.health import ObdHealth, RateMeter
from eccm.core.state import (CONNECTED, CONNECTING, LOST, Column, EngineRun, SharedState,
                             Unavailable)
from eccm.core.text import plural
from eccm.core.worker import Backoff, LinkLog, Worker

if TYPE_CHECKING:
    from eccm.config import Config

log = logging.getLogger(__name__)
T = TypeVar("T")

_obd_log = logging.getLogger("obd")


class NotConnected(Unavailable):
    """The car is not reachable right now; the message says why."""


def quiet_python_obd(debug: bool) -> None:
    """python-OBD logs to its own stderr handler; route it through ours, errors only.

    ECCM reports connection problems itself, once per state change.
    """
    for handler in list(_obd_log.handlers):
        if isinstance(handler, logging.StreamHandler):
            _obd_log.removeHandler(handler)
    _obd_log.setLevel(logging.DEBUG if debug else logging.CRITICAL)


# Fast-changing values, read every cycle unless OBD_FAST_PIDS says otherwise: six, so
# that on CAN they fit one packed request.
DEFAULT_FAST = ("RPM", "SPEED", "THROTTLE_POS", "ENGINE_LOAD", "MAF", "ACCELERATOR_POS_D")

VOLTAGE_EVERY = 2.0      # s between two ATRV readings while polling
VOLTAGE_PROBE = 10.0     # s between two ATRV readings while the engine is off
VOLTAGE_HYSTERESIS = 0.3
HEALTH_EVERY = 1.0       # s between two health reports (samples per second) while polling
PROFILE_BATCH = 4        # vehicle-profile requests at most between two mode-01 cycles


def schedule(commands: List[Any], fast_names: Sequence[str], slow_every: int,
             group_size: int = 1) -> List[List[Any]]:
    """The commands of each cycle: every fast one, plus a share of the slow ones, so each
    slow value is read at least once every `slow_every` cycles. With packed requests
    (group_size 6) the share is rounded up to fill the last request: a slot left empty
    would cost as much time as a full one."""
    fast = [c for c in commands if c.name in fast_names]
    slow = [c for c in commands if c.name not in fast_names]
    if not slow:
        return [fast]
    share = -(-len(slow) // max(1, slow_every))
    if group_size > 1:
        total = -(-(len(fast) + share) // group_size) * group_size
        share = max(1, min(len(slow), total - len(fast)))
        return [fast + slow[i:i + share] for i in range(0, len(slow), share)]
    every = max(1, min(slow_every, len(slow)))
    return [fast + slow[k::every] for k in range(every)]


class ObdPoller(Worker):
    name = "obd"

    def __init__(self, stop_event: threading.Event, state: SharedState, *,
                 port: Optional[str], baudrate: Optional[int] = None,
                 protocol: Optional[str] = None, timeout: float = 1.0,
                 session_timeout: float = 5.0, max_delay: float = 30.0,
                 fast_names: Sequence[str] = DEFAULT_FAST, slow_every: int = 20,
                 fast_baudrate: int = 0, sleep_below: float = 0.0,
                 profiles: Sequence[Profile] = ()):
        """`profiles`: vehicle profiles whose requests are polled on their own periods
        alongside mode 01."""
        super().__init__(stop_event)
        self.profiles = tuple(profiles)
        for profile in self.profiles:
            log.info("vehicle profile %s: %s, %s", profile.path,
                     plural(len(profile.commands), "request"),
                     plural(len(profile.signals), "signal"))
            for line in profile.skipped:
                log.warning("vehicle profile %s: %s", profile.path, line)
            if not profile.commands:
                log.warning("vehicle profile %s has no request ECCM can send: nothing of it "
                            "is recorded (`eccm profile check %s` says why)", profile.path,
                            profile.path)
        self.state = state
        self.port = port
        self.baudrate = baudrate
        self.protocol = protocol
        self.timeout = timeout
        self.session_timeout = session_timeout
        self.backoff = Backoff(max_delay)
        self.fast_names = tuple(fast_names)
        self.slow_every = slow_every
        self.fast_baudrate = fast_baudrate
        self.sleep_below = sleep_below
        self._requests: "queue.Queue[tuple]" = queue.Queue()
        self._reconnect = threading.Event()
        self._sessions = 0
        self._conn: Optional[ElmConnection] = None
        self._link = LinkLog(state, self.name, "OBD adapter")
        state.declare(self.name, ())  # its place in the record, first; columns at each run
        self._asleep = False  # ended for low voltage: probe the voltage only
        # The configured adapter's port, held open (and so locked) between sessions: a
        # second ECCM cannot take it while the car is off.
        self._held: Optional[ElmLink] = None

    @classmethod
    def from_config(cls, stop_event: threading.Event, state: SharedState,
                    cfg: "Config") -> "ObdPoller":
        """The poller the configuration describes (python-OBD's own log quiet unless
        LOG_LEVEL=DEBUG)."""
        quiet_python_obd(cfg.LOG_LEVEL == "DEBUG")
        return cls(stop_event, state, port=cfg.OBD_INTERFACE, baudrate=cfg.OBD_BAUDRATE,
                   protocol=cfg.OBD_PROTOCOL, timeout=cfg.OBD_TIMEOUT,
                   session_timeout=cfg.OBD_SESSION_TIMEOUT, max_delay=cfg.RECONNECT_MAX_DELAY,
                   fast_names=cfg.OBD_FAST_PIDS or DEFAULT_FAST, slow_every=cfg.OBD_SLOW_EVERY,
                   fast_baudrate=cfg.OBD_FAST_BAUDRATE, sleep_below=cfg.OBD_SLEEP_BELOW_VOLTAGE,
                   profiles=load_profiles(cfg.OBD_PROFILE) if cfg.OBD_PROFILE else ())

    def check_port_free(self) -> None:
        """Main thread, before starting: PortInUse if another process holds the
        configured adapter (two ECCMs would each read the other's replies)."""
        if self.port:
            check_free(self.port)

    # Called from other threads.

    def submit(self, fn: Callable[[Any], T], timeout: float = 10.0) -> T:
        """Run fn(connection) on the poller thread and return its result. Raises Unavailable
        when the car cannot answer (NotConnected; no whole answer; the adapter failed; no
        answer within timeout), any other error of fn as it is."""
        future: "Future[T]" = Future()
        self._requests.put((fn, future))
        try:
            return future.result(timeout)
        except (FutureTimeout, TimeoutError):  # one class since Python 3.11
            future.cancel()
            raise Unavailable(f"no answer from the OBD thread within {timeout:g} s") from None
        except (AdapterError, ReadError) as exc:
            raise Unavailable(str(exc)) from exc

    def read_dtcs(self, timeout: float, pending: bool = True
                  ) -> Tuple[List[Tuple[str, str]], List[Tuple[str, str]]]:
        """Stored and pending trouble codes read from the car now, with descriptions;
        pending=False reads only the stored ones (mode 03; the pending list is then
        empty). Raises Unavailable."""
        if not pending:
            stored = self.submit(lambda conn: conn.read_dtcs(3), timeout)
            self._codes_read({"stored": stored})
            return _described(stored), []
        stored, waiting = self.submit(lambda conn: (conn.read_dtcs(3), conn.read_dtcs(7)),
                                      timeout)
        self._codes_read({"stored": stored, "pending": waiting})
        return _described(stored), _described(waiting)

    def _codes_read(self, lists: Dict[str, List[str]]) -> None:
        """Trouble codes read on request replace the run's (consumers such as MQTT show
        them), stamped with when they were read."""
        run = self.state.snapshot().engine_run
        if run is None:
            return
        last = run.dtcs_now if run.dtcs_now is not None else (run.facts.get("dtcs") or {})
        kept = {k: v for k, v in last.items()
                if k != "read_at" and k.replace("_unread", "") not in lists}
        self.state.set_run_dtcs(run.number, {
            **kept, **lists,
            "read_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")})

    def clear_dtcs(self, timeout: float) -> int:
        """Mode 04; the stored codes left. Raises Unavailable."""
        try:
            stored, waiting = self.submit(lambda conn: conn.clear_and_reread(), timeout)
        except Unavailable as exc:  # cleared or not, the last list read may be wrong now
            why = f"unknown after a clear request: {exc}"
            self._codes_read({"stored": None, "stored_unread": why,
                              "pending": None, "pending_unread": why})
            raise
        lists: Dict[str, Any] = {"stored": stored, "pending": waiting}
        if waiting is None:
            lists["pending_unread"] = "not read after the clear"
        self._codes_read(lists)
        return len(stored)

    def query(self, name: str, timeout: float) -> Optional[str]:
        """One engine value read from the car now, as python-OBD's text shows it (a pint
        quantity such as '780.0 revolutions_per_minute'); None when the car gave no value
        or python-OBD has no value of that name (it is asked nothing then). Raises
        Unavailable."""
        if not obd.commands.has_name(name):
            return None
        command = obd.commands[name]

        def read(conn: ElmConnection) -> Optional[str]:
            value = conn.query(command)
            return None if value is None else str(value)
        return self.submit(read, timeout)

    def request_reconnect(self) -> None:
        """Close and reopen the adapter (RESTART_DATA_MANAGER)."""
        self._reconnect.set()

    # Poller thread.

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.heartbeat()
            self._reconnect.clear()
            if self._asleep:
                self._wait_for_engine()
                continue
            conn = self._open()
            if conn is None:
                self._idle(self.backoff.next())
                continue
            try:
                self._poll_session(conn)
            finally:
                self._close(conn)
            if not self.stop_event.is_set() and not self._reconnect.is_set():
                self._idle(self.backoff.next())

    def on_exit(self) -> None:
        if self._conn is not None:
            self._close(self._conn)
        self._release()
        self._fail_requests("ECCM is stopping")

    def _release(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None

    def _open(self) -> Optional[ElmConnection]:
        ports = [self.port] if self.port else obd.scan_serial()
        where = self.port or "auto-detected ports"
        self._link(CONNECTING, where)
        if not ports:
            self._link(LOST, "no serial port found (adapter unplugged?)")
            return None
        reason = ""
        for port in ports:
            if not is_url(port) and not os.path.exists(port):
                reason = f"{port} does not exist (adapter unplugged?)"
                continue
            try:
                if self.port and self._held is None:  # held from now on, car on or off
                    self._held = ElmLink(port if is_url(port) else os.path.realpath(port),
                                         self.baudrate or PROBE_BAUDS[0], self.timeout)
                return ElmConnection(port, baudrate=self.baudrate, protocol=self.protocol,
                                     timeout=self.timeout, fast_baudrate=self.fast_baudrate,
                                     link=self._held)
            except NoCar as exc:
                reason = str(exc)  # the adapter answers: keep holding it
            except PortInUse as exc:
                reason = str(exc)
            except AdapterError as exc:
                reason = f"no adapter answers on {port}: {exc}"
                self._release()  # unplugged, or not an adapter: open it afresh next time
        self._link(LOST, reason)
        return None

    def _close(self, conn: ElmConnection) -> None:
        self._conn = None
        self.state.end_engine_run()
        # Between runs nothing is polled; the last run's anomaly counts, those of the cycle
        # that ended it included, stay visible (why did the adapter drop?) until the next.
        self.state.report(ObdHealth(anomalies=MappingProxyType(dict(conn.anomalies))))
        conn.close()

    def _poll_session(self, conn: ElmConnection) -> None:
        self._conn = conn
        try:
            vin = conn.read_vin()
            facts = self._car_facts(conn)
        except AdapterError as exc:  # unplugged while asking: reopened like any loss
            self._link(LOST, f"the adapter stopped answering ({exc})")
            self._release()
            return
        names = {int(ecu, 16): about.get("name") for ecu, about in facts["ecus"].items()}
        prefixes = obd_values.ecu_prefixes(conn.engine, names)
        for ecu, about in facts["ecus"].items():
            about["columns_prefix"] = prefixes.get(int(ecu, 16), "")
        # Every ECU's PIDs: the engine's under today's names, another's with its prefix.
        by_ecu = {ecu: [c for c in conn.commands_of(ecu) if obd_values.is_recordable(c)]
                  for ecu in sorted(conn.supported_by, key=lambda e: (e != conn.engine, e))}
        commands = sorted({c for cmds in by_ecu.values() for c in cmds}, key=lambda c: c.pid)
        columns: Tuple[Column, ...] = ()
        units: Dict[str, str] = {}
        for ecu, cmds in by_ecu.items():
            for column in obd_values.session_columns(cmds):
                columns += (replace(column, name=prefixes[ecu] + column.name),)
        columns += (VOLTAGE_COLUMN,)
        profile_commands = self._profile_commands(conn)
        columns += tuple(Column(s.id, s.unit) for c in profile_commands for s in c.signals)
        units = {c.name: c.unit for c in columns}
        self._sessions += 1
        session = EngineRun(self._sessions, columns, protocol=conn.protocol_name(),
                             port=conn.port_name(), vin=vin, facts=facts)
        try:
            self.state.start_engine_run(session, source=self.name)
        except ValueError as exc:  # another source took one of these names first
            self._link(LOST, f"cannot record this car's values: {exc}")
            self._release()
            return
        pids = sum(len(cmds) for cmds in by_ecu.values())
        health = ObdHealth(protocol=session.protocol, vin=vin, pids=pids)
        self.state.report(health)
        meter = RateMeter()
        next_report = time.monotonic() + HEALTH_EVERY
        # PIDs asked of the car, and the columns they fill (a PID may fill several; the
        # adapter's own voltage is one more): the same count as LIST and the record header.
        self._link(CONNECTED, f"{session.protocol}, {plural(len(by_ecu), 'ECU')}, {pids} PIDs"
                              + (f" and {plural(len(profile_commands), 'profile request')}"
                                 if profile_commands else "")
                              + f" ({len(columns)} values)"
                              + (f", VIN {vin}" if vin else "") + f", {conn.version}")
        last_answer = time.monotonic()
        next_voltage = 0.0
        low_since: Optional[float] = None
        volts = 0.0
        number = 0
        packing: Optional[bool] = None
        anomalies: dict = {}
        due: Dict[Any, float] = {}  # from the schedule's second rotation on
        behind = False  # said once a run
        try:
            while not self.stop_event.is_set() and not self._reconnect.is_set():
                if packing != conn.can_pack:  # (again) after a fallback to single PIDs
                    packing = conn.can_pack
                    cycles = schedule(commands, self.fast_names, self.slow_every,
                                      MAX_PACK if packing else 1)
                answered = 0
                for group in conn.groups(cycles[number % len(cycles)]):
                    self._serve_requests(conn)
                    if self.stop_event.is_set() or self._reconnect.is_set():
                        return
                    readings = {}
                    for ecu, values in conn.query_group_all(group).items():
                        for cmd, value in values.items():
                            for name, plain in obd_values.flatten(cmd, value).items():
                                name = prefixes.get(ecu, "") + name
                                if name in units:
                                    readings[name] = (plain, units[name])
                            answered += value is not None
                    if readings:
                        # each request its own time
                        self.state.update_values(readings, origin=self.name)
                number += 1
                now = time.monotonic()
                # Profiles from the second rotation of the schedule on: every mode-01 value
                # has been read once before the first header switch.
                # At most PROFILE_BATCH requests between two cycles, the longest waiting
                # first: a profile of a hundred requests never holds the fast tier up.
                if number >= len(cycles) and not due:
                    due = {command: now for command in profile_commands}
                asked = sorted((c for c in profile_commands if due[c] <= now),
                               key=lambda c: due[c])[:PROFILE_BATCH] \
                    if due and not conn.profiles_off else []
                if asked:
                    self._serve_requests(conn)
                    late = max(now - due[c] - c.period for c in asked)
                    if late > 0 and not behind:
                        behind = True  # asked more than a whole period after it was due
                        log.warning("vehicle profile requests fall behind their periods (one "
                                    "waited %.1f s more than its period): the adapter's time "
                                    "is shared with mode 01; fewer or slower requests keep "
                                    "them on time", late)
                    for command in asked:
                        due[command] = now + command.period
                    found = conn.query_profile(asked)
                    if found:
                        self.state.update_values({name: (value, units[name])
                                                  for name, value in found.items()
                                                  if name in units}, origin=self.name)
                        answered += len(found)
                    now = time.monotonic()
                if now >= next_voltage:  # the adapter's own reading: no bus traffic
                    next_voltage = now + VOLTAGE_EVERY
                    reading = conn.voltage()
                    if reading is not None:
                        volts = reading
                        self.state.update_values(
                            {VOLTAGE_COLUMN.name: (volts, VOLTAGE_COLUMN.unit)}, origin=self.name)
                        low = self.sleep_below and volts < self.sleep_below
                        low_since = (low_since or now) if low else None
                if low_since is not None and now - low_since > self.session_timeout:
                    self._link(LOST, f"battery at {volts:.1f} V, below "
                                     f"{self.sleep_below:g} V: engine off, letting the ECUs "
                                     "sleep")
                    self._asleep = True
                    return
                meter.add(answered, now)
                if conn.anomalies != anomalies or now >= next_report:
                    anomalies = dict(conn.anomalies)
                    next_report = now + HEALTH_EVERY
                    health = replace(health, samples_per_s=meter.rate(now),
                                     anomalies=MappingProxyType(anomalies))
                    self.state.report(health)
                if answered:
                    self.state.count("obd_samples", answered)
                    self.state.count("obd_cycles")
                    last_answer = time.monotonic()
                    self.backoff.reset()
                elif time.monotonic() - last_answer > self.session_timeout:
                    self._link(LOST, f"no answer from the car for {self.session_timeout:g} s "
                                     "(ignition off?)")
                    return
                if not commands:
                    self.stop_event.wait(0.1)
        except EngineChanged as exc:  # the link is fine: discovery starts again on it
            self._link(LOST, str(exc))
        except AdapterError as exc:
            self._link(LOST, f"the adapter stopped answering ({exc})")
            self._release()

    def _car_facts(self, conn: ElmConnection) -> Dict[str, Any]:
        """What the car says of itself as the run begins, for the record's manifest: each
        ECU's name, calibration IDs and CVNs (mode 09), the trouble codes present (03,
        07, 0A) and the engine's freeze frame (02). A list that cannot be read whole is
        written as unread, with why, never as empty."""
        ecus = {f"{ecu:X}": {"role": "engine" if ecu == conn.engine else "",
                             "pids": sorted(f"{p:02X}" for p in conn.supported_by.get(ecu, ())
                                            if p % 0x20)}
                for ecu in sorted(conn.ecus)}
        for ecu, about in conn.read_identification().items():
            ecus.setdefault(f"{ecu:X}", {}).update(about)
        dtcs: Dict[str, Any] = {}
        for mode, kind in ((3, "stored"), (7, "pending"), (0x0A, "permanent")):
            try:
                dtcs[kind] = conn.read_dtcs(mode)
            except ReadError as exc:
                dtcs[kind] = None
                dtcs[f"{kind}_unread"] = str(exc)
        return {"ecus": ecus, "dtcs": dtcs, "freeze_frame": conn.read_freeze_frame(),
                "profiles": [p.path for p in self.profiles]}

    def _profile_commands(self, conn: ElmConnection) -> List[Any]:
        """The profiles' requests this car can be sent: CAN only (their headers are CAN
        IDs), 11-bit headers on an 11-bit bus and 29-bit ones on a 29-bit bus; what is
        left out is said once in the log."""
        commands = [c for profile in self.profiles for c in profile.commands]
        if commands and conn.protocol_id not in CAN_PROTOCOLS:
            log.warning("vehicle profiles address CAN ECUs; this car speaks %s: their "
                        "values are not polled", conn.protocol_name())
            return []
        wide = conn.protocol_id in CAN29
        fitting = [c for c in commands if (c.header > 0x7FF) == wide]
        if len(fitting) < len(commands):
            log.warning("%s of the vehicle profiles use %s-bit headers and this car's bus "
                        "is %s-bit (%s): not polled",
                        plural(len(commands) - len(fitting), "request"),
                        "11" if wide else "29", "29" if wide else "11", conn.protocol_name())
        return fitting

    def _wait_for_engine(self) -> None:
        """After a low-voltage stop: ask only the adapter for the voltage (the car's bus
        stays quiet) every VOLTAGE_PROBE seconds, until the engine charges again."""
        port = self.port or ""
        try:
            if self._held is not None:
                volts = parse_volts(self._held.command("ATRV").lines)
            else:
                volts = probe_voltage(port, self.baudrate, self.timeout) if port else None
        except AdapterError:
            self._release()
            volts = None
        if volts is None or volts >= self.sleep_below + VOLTAGE_HYSTERESIS:
            self._asleep = False
            if volts is not None:
                log.info("battery at %.1f V: engine running, reconnecting", volts)
            return
        self.state.update_values({VOLTAGE_COLUMN.name: (volts, VOLTAGE_COLUMN.unit)},
                                 origin=self.name)
        self._idle(VOLTAGE_PROBE)

    def _serve_requests(self, conn: Optional[ElmConnection]) -> None:
        self.heartbeat()  # called between requests, and every 0.1 s while idle
        while True:
            try:
                fn, future = self._requests.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            if conn is None:
                future.set_exception(NotConnected(self._why_not_connected()))
                continue
            try:
                future.set_result(fn(conn))
            except Exception as exc:  # handed to the caller, who reports it
                future.set_exception(exc)

    def _why_not_connected(self) -> str:
        link = self.state.snapshot().links.get(self.name)
        return f"car not connected: {link.reason}" if link and link.reason else \
            "car not connected"

    def _fail_requests(self, why: str) -> None:
        while True:
            try:
                _fn, future = self._requests.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(NotConnected(why))

    def _idle(self, delay: float) -> None:
        """Wait before the next attempt, answering requests with NotConnected meanwhile."""
        deadline = time.monotonic() + delay
        while not self.stop_event.is_set() and not self._reconnect.is_set():
            self._serve_requests(None)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.stop_event.wait(min(0.1, remaining))


def _described(codes: List[str]) -> List[Tuple[str, str]]:
    """Codes with python-OBD's descriptions (SAE J2012 generic codes)."""
    return [(code, obd.codes.DTC.get(code, "")) for code in codes]
