"""TCP socket server: sessions of the text protocol for netcat/telnet clients and apps.

One accept thread, one thread per client (bounded). A client only ever reads the shared
state or sends a request to the OBD poller (DTC read/clear, legacy live queries), so a slow
or hostile client never blocks the others or the polling. Limits: line length, idle time,
connections, failed logins per connection and per source address (growing delay), send
timeout (a client that does not read is dropped), WATCH rate.
"""
from __future__ import annotations

import logging
import secrets
import select
import socket
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from . import __version__
from .elm import AdapterError, ReadError
from .obd_poller import NotConnected, ObdPoller
from .protocol import MAX_LINE, Backend, Reply, Session, Unavailable, strip_telnet
from .state import DISABLED, SharedState, Snapshot
from .worker import Worker

log = logging.getLogger(__name__)

MAX_CLIENTS = 64
IDLE_TIMEOUT = 600.0      # seconds without a line from a client that is not watching
SEND_TIMEOUT = 5.0        # a client that does not read for this long is dropped
SEND_BUFFER = 32 * 1024   # per client: bounds kernel memory (Linux would grow it to 4 MiB)
GREETING_GRACE = 0.25     # a legacy client sends its bare secret at once, before any greeting
UNTERMINATED_FLUSH = 0.2  # legacy clients send messages without a line end
REQUEST_TIMEOUT = 15.0    # DTC read/clear through the poller
AUTH_DELAY_CAP = 8.0
AUTH_MEMORY = 600.0       # seconds a source address's failures are remembered


class DaemonBackend(Backend):
    """The Backend of one client session: shared state + OBD poller requests."""

    def __init__(self, server: "SocketServer", peer: str):
        self.server = server
        self.peer = peer

    def snapshot(self) -> Snapshot:
        return self.server.state.snapshot()

    def _ask(self, fn: Any) -> Any:
        """fn(poller): the OBD side answers through its own methods (the server never
        touches the adapter); its failures become one Unavailable message."""
        poller = self.server.poller
        if poller is None:
            raise Unavailable("no OBD adapter configured")
        try:
            return fn(poller)
        except (NotConnected, AdapterError, ReadError) as exc:
            raise Unavailable(str(exc)) from None
        except TimeoutError:
            raise Unavailable(f"no answer from the OBD thread within {REQUEST_TIMEOUT:g} s") \
                from None

    def read_dtcs(self) -> Tuple[List[Tuple[str, str]], List[Tuple[str, str]]]:
        return self._ask(lambda poller: poller.read_dtcs(REQUEST_TIMEOUT))

    def clear_dtcs(self) -> int:
        return self._ask(lambda poller: poller.clear_dtcs(REQUEST_TIMEOUT))

    def query_legacy(self, kind: str, name: str) -> str:
        return self._ask(lambda poller: poller.legacy_answer(kind, name, REQUEST_TIMEOUT))

    def reconnect(self) -> None:
        if self.server.poller is not None:
            self.server.poller.request_reconnect()

    def status(self) -> List[Tuple[str, Any]]:
        return self.server.status()

    def audit(self, message: str) -> None:
        log.warning("AUDIT %s (client %s)", message, self.peer)


class SocketServer(Worker):
    name = "socket"

    def __init__(self, stop_event: threading.Event, state: SharedState,
                 poller: Optional[ObdPoller], *, bind: str, port: int,
                 secret: Optional[str], car: str):
        super().__init__(stop_event)
        self.state = state
        self.poller = poller
        self.bind = bind
        self.port = port
        self.secret = secret
        self.car = car
        self.started = time.monotonic()
        self._listener: Optional[socket.socket] = None
        self._clients: Dict[int, threading.Thread] = {}
        self._lock = threading.Lock()
        self._failures: Dict[str, Tuple[int, float]] = {}
        self._rate: Tuple[float, int] = (time.monotonic(), 0)

    # --- lifecycle --------------------------------------------------------------------

    def prepare(self) -> None:
        """Listen now, so a taken port fails the start-up with a clear message."""
        family = socket.AF_INET6 if ":" in self.bind else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.bind, self.port))
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"socket server cannot listen on {self.bind}:"
                                     f"{self.port}: {exc.strerror}") from None
        sock.listen(128)
        sock.settimeout(0.5)
        self._listener = sock
        self.port = sock.getsockname()[1]
        log.info("socket server listening on %s:%d%s", self.bind, self.port,
                 "" if self.secret else " (no secret: loopback only)")

    def run(self) -> None:
        """Runs in the socket thread: accept clients until stopped."""
        if self._listener is None:
            self.prepare()
        assert self._listener is not None
        while not self.stop_event.is_set():
            self.heartbeat()
            try:
                conn, addr = self._listener.accept()
            except socket.timeout:
                continue
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                self.stop_event.wait(0.5)
                continue
            with self._lock:
                self._clients = {k: t for k, t in self._clients.items() if t.is_alive()}
                full = len(self._clients) >= MAX_CLIENTS
            if full:
                self.state.count("socket_refused")
                self._reject(conn, "ERR too many connections, try again later")
                continue
            thread = threading.Thread(target=self._serve, args=(conn, addr),
                                      name=f"client-{addr[0]}:{addr[1]}", daemon=True)
            with self._lock:
                self._clients[id(thread)] = thread
            thread.start()

    def on_exit(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            clients = list(self._clients.values())
        deadline = time.monotonic() + 1.0
        for thread in clients:
            thread.join(max(0.05, deadline - time.monotonic()))

    @staticmethod
    def _reject(conn: socket.socket, text: str) -> None:
        try:
            conn.settimeout(1.0)
            conn.sendall(text.encode() + b"\n")
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            conn.close()

    # --- status -----------------------------------------------------------------------

    def status(self) -> List[Tuple[str, Any]]:
        snap = self.state.snapshot()
        now = time.monotonic()
        samples = snap.counters.get("obd_samples", 0)
        then, before = self._rate
        rate = (samples - before) / (now - then) if now - then > 0.5 else 0.0
        self._rate = (now, samples)
        obd_link = snap.links.get("obd")
        gnss_link = snap.links.get("gnss")
        session = snap.obd_session
        fix = snap.gnss
        items: List[Tuple[str, Any]] = [
            ("version", __version__), ("car", self.car),
            ("uptime_s", round(now - self.started)),
            ("obd", f"{obd_link.state} {obd_link.reason}".strip() if obd_link else "unknown"),
            ("obd_protocol", session.protocol if session else ""),
            ("vin", (session.vin or "") if session else ""),
            ("pids_polled", snap.info.get("obd_pids", 0) if session else 0),
            ("samples_per_s", round(rate, 1)),
            ("obd_samples", samples),
            ("obd_anomalies", " ".join(f"{k}={v}" for k, v in sorted(
                snap.info.get("obd_anomalies", {}).items())) or "none"),
            ("gnss", f"{gnss_link.state} {gnss_link.reason}".strip() if gnss_link
             else "unknown"),
            ("gnss_fix", "none" if fix is None or fix.lat is None else
             f"mode {fix.mode} {fix.lat:.6f},{fix.lon:.6f} at {fix.time}"),
            ("gnss_input", " ".join(f"{k}={v}" for k, v in
                                    snap.info.get("gnss_counters", {}).items())),
            ("record_file", snap.info.get("record_file") or ""),
            ("recording", snap.info.get("record_problem") or "ok"),
            ("rows_lost", snap.counters.get("rows_lost", 0)),
            *self._upload_status(snap),
        ]
        errors = {k: v for k, v in snap.counters.items()
                  if "error" in k or k.startswith("restarts_") or k == "socket_refused"}
        items.append(("errors", " ".join(f"{k}={v}" for k, v in sorted(errors.items()))
                      or "none"))
        return items

    @staticmethod
    def _upload_status(snap: Snapshot) -> List[Tuple[str, Any]]:
        """Upload lines that say something even before, or without, any upload."""
        link = snap.links.get("s3")
        if link is not None and link.state == DISABLED:
            return [("upload", "off (S3 not configured)")]
        backlog = snap.info.get("upload_backlog")
        # No s3 link yet: the uploader has not tried to upload anything so far.
        state = f"{link.state} {link.reason}".strip() if link else "on, nothing tried yet"
        return [
            ("upload", state),
            ("upload_backlog", "not counted yet" if backlog is None else backlog),
            ("upload_held", snap.info.get("upload_held", 0)),
            ("last_upload", snap.info.get("last_upload") or "never"),
        ]

    # --- one client (its own thread) --------------------------------------------------

    def auth_failed(self, peer: str) -> float:
        """Count a failed login from this address; the delay before answering it."""
        now = time.monotonic()
        with self._lock:
            count, last = self._failures.get(peer, (0, now))
            if now - last > AUTH_MEMORY:
                count = 0
            self._failures[peer] = (count + 1, now)
        self.state.count("auth_failures")
        log.warning("failed login from %s", peer)
        return min(AUTH_DELAY_CAP, 0.25 * 2 ** count)

    def auth_succeeded(self, peer: str) -> None:
        with self._lock:
            self._failures.pop(peer, None)

    def _serve(self, conn: socket.socket, addr: Tuple[Any, ...]) -> None:
        peer = str(addr[0])
        try:
            _Client(self, conn, peer).run()
        except socket.timeout:  # its buffers are full: it stopped reading
            log.info("client %s dropped: it read nothing for %g s", peer, SEND_TIMEOUT)
        except OSError as exc:  # reset, broken pipe: drop this client only
            log.debug("client %s dropped: %s", peer, exc)
        except Exception:
            log.exception("client %s: unexpected error", peer)
        finally:
            conn.close()


class _Client:
    """The I/O loop of one connection; protocol decisions are the Session's."""

    def __init__(self, server: SocketServer, conn: socket.socket, peer: str):
        self.server = server
        self.conn = conn
        self.peer = peer
        self.session = Session(DaemonBackend(server, peer), server.secret,
                               secrets.token_hex(16),
                               f"ECCM {__version__} car={server.car} ready; AUTH required, "
                               "HELP lists the commands;")
        self.buf = b""
        self.last_input = time.monotonic()
        self.closing = False
        self.next_watch = 0.0

    def send(self, lines: List[str]) -> None:
        if lines:
            self.conn.sendall(("\n".join(lines) + "\n").encode("utf-8", "replace"))

    def run(self) -> None:
        self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self.conn.settimeout(SEND_TIMEOUT)
        stop = self.server.stop_event
        if not select.select([self.conn], [], [], GREETING_GRACE)[0]:
            self.send([self.session.greeting()])
            greeted = True
        else:
            greeted = False
        while not stop.is_set() and not self.closing:
            timeout = 0.5
            if self.buf:  # an unterminated message: flush it once the client pauses
                timeout = max(0.0, UNTERMINATED_FLUSH - (time.monotonic() - self.last_input))
            if self.session.watch is not None:
                timeout = max(0.0, min(timeout, self.next_watch - time.monotonic()))
            readable = select.select([self.conn], [], [], timeout)[0]
            now = time.monotonic()
            if readable:
                data = self.conn.recv(4096)
                if not data:
                    return
                self.buf += data
                self.last_input = now
            lines = self._complete_lines(now)
            if lines and not greeted:
                if not self._is_bare_secret(lines[0]):
                    self.send([self.session.greeting()])
                greeted = True
            for line in lines:
                self._handle(line)
                if self.closing:
                    return
            if len(self.buf) > MAX_LINE:
                self.send(["ERR line too long (at most 1024 bytes); closing"])
                return
            if self.session.watch is not None and now >= self.next_watch:
                self.send([self.session.watch_line()])
                self.next_watch = max(self.next_watch + 1.0 / self.session.watch[1], now)
            elif self.session.watch is None and now - self.last_input > IDLE_TIMEOUT:
                self.send(["ERR idle for too long; closing"])
                return

    def _is_bare_secret(self, line: str) -> bool:
        secret = self.server.secret
        return bool(secret) and line.strip() == secret

    def _complete_lines(self, now: float) -> List[str]:
        lines = []
        while b"\n" in self.buf:
            raw, self.buf = self.buf.split(b"\n", 1)
            if len(raw) > MAX_LINE:
                self.send(["ERR line too long (at most 1024 bytes); closing"])
                self.closing = True
                return []
            lines.append(strip_telnet(raw).rstrip(b"\r").decode("utf-8", "replace"))
        if self.buf and now - self.last_input >= UNTERMINATED_FLUSH and len(self.buf) <= MAX_LINE:
            lines.append(strip_telnet(self.buf).rstrip(b"\r").decode("utf-8", "replace"))
            # ^ a message without a line end, then a pause: the legacy clients' framing
            self.buf = b""
        return lines

    def _handle(self, line: str) -> None:
        was_authenticated = self.session.authenticated
        reply: Reply = self.session.handle(line)
        if reply.auth_failed:
            delay = self.server.auth_failed(self.peer)
            self.server.stop_event.wait(delay)  # slows guessing; only this client waits
        elif self.session.authenticated and not was_authenticated:
            self.server.auth_succeeded(self.peer)
        self.send(reply.lines)
        if self.session.watch is None:
            self.next_watch = 0.0
        elif self.next_watch == 0.0:
            self.next_watch = time.monotonic()
        if reply.close:
            self.closing = True
