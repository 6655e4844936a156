"""TCP socket server: accept loop, connection limits and login limits, TLS; one thread per client.

One accept thread, one thread per client (bounded). A client only ever reads the shared
state or asks the OBD side through CarAccess (DTC read/clear, one value now; the
poller implements it, the server knows nothing of python-OBD), so a slow or hostile client
never blocks the others or the polling. Protocol decisions are the
Conversation's (protocol.py); this module owns the sockets and the limits:

- a connection must log in within `login_deadline` seconds and `login_max_bytes` bytes;
- connections not logged in yet have their own quota, in total and per source address;
  when it is full, the oldest waiting connection of the address holding the most is closed
  to make room, so logged-in users (their own `max_clients` slots) and a newcomer from
  another address are never locked out by idle or slow connections;
- failed logins share one budget per source address across all its connections
  (LoginBudget); a try over the budget is refused without checking the secret and the
  connection closes at once: nothing ever sleeps while holding a slot;
- line length, idle time after login, send timeout (a client that does not read is
  dropped), WATCH rate.
"""
from __future__ import annotations

import ipaddress
import logging
import secrets
import select
import socket
import ssl
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple

from eccm import __version__
from eccm.server.protocol import MAX_LINE, Backend, Reply, Conversation, strip_telnet
from eccm.core.health import status_items
from eccm.core.state import SharedState, Snapshot, Unavailable
from eccm.core.text import plural
from eccm.core.worker import Worker

log = logging.getLogger(__name__)

MAX_CLIENTS = 64          # logged-in sessions
MAX_PENDING = 32          # connections not logged in yet, all addresses together
MAX_PENDING_PER_ADDRESS = 8
LOGIN_DEADLINE = 10.0     # seconds from connect to a successful login
LOGIN_MAX_BYTES = 4096    # bytes a client may send before it has logged in
# Bytes the server sends before a login (greeting, HELP, errors): well under the socket's
# send buffer, so a client that asks and never reads cannot hold its thread in sendall()
# for SEND_TIMEOUT, and an evicted one goes at once.
LOGIN_MAX_OUTPUT = 8192
LOGIN_BURST = 5           # wrong secrets an address may try at once ...
LOGIN_PERIOD = 5.0        # ... then one more every this many seconds
BUDGET_ADDRESSES = 4096   # addresses whose failed logins are remembered one by one
GLOBAL_BURST = 20         # secrets checked at once from all addresses together ...
GLOBAL_PERIOD = 1.0       # ... then one more every this many seconds (86400 a day at most)
TRUSTED_ADDRESSES = 1024  # addresses that logged in lately: not held by the global budget
TRUSTED_FOR = 30 * 86400.0
EVICTION_MARGIN = 16      # client threads still closing, on top of the slots
IDLE_TIMEOUT = 600.0      # seconds without a line from a logged-in client that is not watching
SEND_TIMEOUT = 5.0        # a client that does not read for this long is dropped
SEND_BUFFER = 32 * 1024   # per client: bounds kernel memory (Linux would grow it to 4 MiB)
GREETING_GRACE = 0.25     # a legacy client sends its bare secret at once, before any greeting
UNTERMINATED_FLUSH = 0.2  # legacy clients send messages without a line end
REQUEST_TIMEOUT = 15.0    # DTC read/clear, legacy queries through the OBD side
TICK = 0.5                # the accept and client loops look at the stop event this often
QUOTA_NOTICE_EVERY = 60.0  # seconds between two log lines about a full login quota

TOO_MANY = "ERR too many connections, try again later"
EVICTED = "ERR too many connections waiting to log in; closing"


def address_key(host: str) -> str:
    """The source a limit applies to: the IPv4 address, or the IPv6 /64 (one host or LAN
    can use a whole /64); an IPv4-mapped IPv6 address counts as its IPv4 address."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


def _readable(conn: socket.socket, timeout: float) -> bool:
    """Whether conn has bytes (or its end) within timeout; poll(), not select(), which
    fails on descriptors past 1023."""
    poller = select.poll()
    poller.register(conn, select.POLLIN)
    return bool(poller.poll(max(0.0, timeout) * 1000))


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context (TLS 1.2 or newer) with the certificate chain and its key; raises
    OSError (ssl.SSLError included) if they cannot be loaded. Never asks for a passphrase."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key, password=lambda: b"")
    return context


@dataclass
class _Bucket:
    tokens: float
    updated: float
    since: float          # the first failure of the current burst
    last: float = 0.0     # the latest try
    failed: int = 0       # wrong secrets checked in the burst
    refused: int = 0      # tries refused unchecked in the burst
    announced: bool = False


class LoginBudget:
    """Failed logins per source address, across all its connections: a token bucket.

    Pure logic (its own lock, the clock a parameter). Each secret check takes a token
    first, so parallel connections cannot all pass on the last one; a correct secret gives
    it back. An address has `burst` tokens and gains one every `period` seconds; every check
    also takes a token of one bucket for all addresses together (`global_burst`, one more
    every `global_period`), except from an address that gave the right secret in the last
    30 days. take() reports the moment a bucket runs out, sweep() the end of its burst
    (bucket full again): once each per burst, without any secret.
    """

    ALL = "all addresses"  # the bucket every check also takes from

    def __init__(self, burst: int = LOGIN_BURST, period: float = LOGIN_PERIOD,
                 clock: Callable[[], float] = time.monotonic,
                 max_addresses: int = BUDGET_ADDRESSES, global_burst: int = GLOBAL_BURST,
                 global_period: float = GLOBAL_PERIOD):
        self.burst = burst
        self.period = period
        self.clock = clock
        self.max_addresses = max_addresses
        self._buckets: Dict[str, _Bucket] = {}
        # Many addresses (an IPv6 /48 holds 65536 /64s) must not multiply the guesses:
        # every check also takes a token of this one bucket.
        self._all = _Bucket(float(global_burst), clock(), clock())
        self._all_burst = float(global_burst)
        self._all_period = global_period
        # Addresses that gave the right secret lately (-> when), least recent first: a
        # handful of guessing addresses can empty the global bucket, but not lock out the
        # user's own address, which an attacker cannot join without the secret.
        self._trusted: "OrderedDict[str, float]" = OrderedDict()
        self._lock = threading.Lock()

    def _bucket(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_addresses:
                # Memory stays bounded; an address never seen is not refused for others'
                # failures: the least recently used one is forgotten (the global bucket
                # still bounds what forgetting could give back).
                oldest = min(self._buckets, key=lambda k: self._buckets[k].last)
                del self._buckets[oldest]
            bucket = self._buckets[key] = _Bucket(float(self.burst), now, now)
        else:
            bucket.tokens = min(float(self.burst),
                                bucket.tokens + (now - bucket.updated) / self.period)
            bucket.updated = now
        return bucket

    def _refill_all(self, now: float) -> _Bucket:
        bucket = self._all
        bucket.tokens = min(self._all_burst,
                            bucket.tokens + (now - bucket.updated) / self._all_period)
        bucket.updated = now
        return bucket

    def take(self, key: str) -> Tuple[bool, Optional[str]]:
        """(may one secret be checked now for this address, a line to log or None)."""
        now = self.clock()
        with self._lock:
            bucket = self._bucket(key, now)
            bucket.last = now
            everyone = self._refill_all(now)
            trusted = now - self._trusted.get(key, -TRUSTED_FOR) < TRUSTED_FOR
            if bucket.tokens >= 1.0 and (trusted or everyone.tokens >= 1.0):
                bucket.tokens -= 1.0
                if not trusted:
                    everyone.tokens -= 1.0
                return True, None
            if bucket.tokens >= 1.0:  # this address has tries left; all together have not
                everyone.refused += 1
                if everyone.announced:
                    return False, None
                everyone.announced = True
                return False, (
                    f"failed logins from many addresses used up the budget of "
                    f"{self.ALL}; further tries are refused unchecked "
                    f"({self._all_burst:g}, then 1 every {self._all_period:g} s)")
            bucket.refused += 1
            if bucket.announced:
                return False, None
            bucket.announced = True
            return False, (
                f"failed logins from {key}: {plural(bucket.failed, 'wrong secret')} in "
                f"{now - bucket.since:.1f} s used up its budget; further tries are refused "
                f"unchecked ({self.burst}, then 1 every {self.period:g} s)")

    def give_back(self, key: str) -> None:
        """The secret was right: its token goes back."""
        with self._lock:
            now = self.clock()
            bucket = self._bucket(key, now)
            bucket.tokens = min(float(self.burst), bucket.tokens + 1.0)
            if now - self._trusted.get(key, -TRUSTED_FOR) >= TRUSTED_FOR:
                everyone = self._refill_all(now)  # its global token was taken
                everyone.tokens = min(self._all_burst, everyone.tokens + 1.0)
            self._trusted.pop(key, None)
            self._trusted[key] = now
            while len(self._trusted) > TRUSTED_ADDRESSES:
                self._trusted.popitem(last=False)

    def failed(self, key: str) -> None:
        """The secret checked was wrong (its token stays spent)."""
        now = self.clock()
        with self._lock:
            bucket = self._bucket(key, now)
            if bucket.failed == 0:
                bucket.since = now
            bucket.failed += 1

    def sweep(self) -> List[str]:
        """Forget addresses whose bucket is full again; a summary line for each burst that
        was announced."""
        now = self.clock()
        lines = []
        with self._lock:
            everyone = self._refill_all(now)
            if everyone.announced and everyone.tokens >= self._all_burst:
                everyone.announced = False
                lines.append(f"failed logins from many addresses stopped: "
                             f"{everyone.refused} tries refused unchecked")
                everyone.refused = 0
            for key in list(self._buckets):
                bucket = self._bucket(key, now)
                if bucket.tokens < self.burst:
                    continue
                del self._buckets[key]
                if bucket.announced:
                    span = max(0.001, bucket.last - bucket.since)
                    tries = bucket.failed + bucket.refused
                    lines.append(
                        f"failed logins from {key} stopped: {plural(tries, 'try', 'tries')} in "
                        f"{span:.1f} s ({tries / span:.1f} per s), "
                        f"{plural(bucket.failed, 'wrong secret')} checked, "
                        f"{bucket.refused} refused unchecked")
        return lines

    def refusal(self, key: str) -> str:
        """What a refused try is told: its own address's budget, or everyone's."""
        with self._lock:
            own = self._bucket(key, self.clock()).tokens >= 1.0
        return ("too many failed logins from many addresses, try again later" if own else
                "too many failed logins from your address, try again later")

    def tokens(self, key: str) -> float:
        with self._lock:
            return self._bucket(key, self.clock()).tokens


DTCs = Tuple[List[Tuple[str, str]], List[Tuple[str, str]]]  # (stored, pending) (code, text)


class CarAccess(Protocol):
    """What the server may ask of the OBD side (sources/obd's poller offers it). Each
    question waits at most `timeout` seconds and raises core.state.Unavailable, whose
    message the client is shown, when the car cannot answer."""

    def read_dtcs(self, timeout: float, pending: bool = True) -> DTCs:
        """Stored and pending trouble codes, with descriptions (pending=False: only the
        stored ones are read, the pending list is empty)."""

    def clear_dtcs(self, timeout: float) -> int:
        """Mode 04; the number of stored codes left."""

    def query(self, name: str, timeout: float) -> Optional[str]:
        """One engine value now, as python-OBD's text shows it; None when the car gave none
        or has no value of that name."""

    def request_reconnect(self) -> None:
        """Close and reopen the adapter (RESTART_DATA_MANAGER); returns at once."""


class DaemonBackend(Backend):
    """The Backend of one client session: shared state + questions to the OBD side."""

    def __init__(self, server: "SocketServer", peer: str, key: Optional[str] = None):
        self.server = server
        self.peer = peer
        self.key = key or address_key(peer)

    def snapshot(self) -> Snapshot:
        return self.server.state.snapshot()

    def _car(self) -> CarAccess:
        """The OBD side; it raises Unavailable itself when the car cannot answer."""
        if self.server.obd is None:
            raise Unavailable("no OBD adapter configured")
        return self.server.obd

    def read_dtcs(self, pending: bool = True) -> DTCs:
        return self._car().read_dtcs(self.server.request_timeout, pending)

    def clear_dtcs(self) -> int:
        return self._car().clear_dtcs(self.server.request_timeout)

    def query(self, name: str) -> Optional[str]:
        return self._car().query(name, self.server.request_timeout)

    def has_car(self) -> bool:
        return self.server.obd is not None

    def request_reconnect(self) -> None:
        if self.server.obd is not None:
            self.server.obd.request_reconnect()

    def status(self) -> List[Tuple[str, Any]]:
        return self.server.status()

    def audit(self, message: str) -> None:
        log.warning("AUDIT %s (client %s)", message, self.peer)

    def try_login(self) -> bool:
        return self.server.try_login(self.key)

    def login_refusal(self) -> str:
        return self.server.budget.refusal(self.key)

    def give_back_login(self) -> None:
        self.server.budget.give_back(self.key)


class SocketServer(Worker):
    """The accept thread. Every limit and delay is a parameter (default: the constants
    above) so tests can shorten them; the daemon uses the defaults."""
    name = "socket"

    def __init__(self, stop_event: threading.Event, state: SharedState,
                 obd: Optional[CarAccess], *, bind: str, port: int,
                 secret: Optional[str], car: str,
                 tls_cert: Optional[str] = None, tls_key: Optional[str] = None,
                 max_clients: int = MAX_CLIENTS, max_pending: int = MAX_PENDING,
                 max_pending_per_address: int = MAX_PENDING_PER_ADDRESS,
                 login_deadline: float = LOGIN_DEADLINE,
                 login_max_bytes: int = LOGIN_MAX_BYTES,
                 login_burst: int = LOGIN_BURST, login_period: float = LOGIN_PERIOD,
                 idle_timeout: float = IDLE_TIMEOUT, send_timeout: float = SEND_TIMEOUT,
                 greeting_grace: float = GREETING_GRACE,
                 unterminated_flush: float = UNTERMINATED_FLUSH,
                 request_timeout: float = REQUEST_TIMEOUT, tick: float = TICK):
        super().__init__(stop_event)
        self.state = state
        self.obd = obd
        self.bind = bind
        self.port = port
        self.secret = secret
        self.car = car
        self.tls_files = (tls_cert, tls_key) if tls_cert or tls_key else None
        self.tls: Optional[ssl.SSLContext] = None
        self.max_clients = max_clients
        self.max_pending = max_pending
        self.max_pending_per_address = max_pending_per_address
        self.max_threads = max_clients + max_pending + EVICTION_MARGIN
        self.login_deadline = login_deadline
        self.login_max_bytes = login_max_bytes
        self.budget = LoginBudget(login_burst, login_period)
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout
        self.greeting_grace = greeting_grace
        self.unterminated_flush = unterminated_flush
        self.request_timeout = request_timeout
        self.tick = tick
        self.started = time.monotonic()
        self._listener: Optional[socket.socket] = None
        self._pending: Dict[int, "_Client"] = {}  # insertion order: oldest first
        self._active: Dict[int, "_Client"] = {}
        self._threads: Dict[int, threading.Thread] = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0
        self._next_quota_notice = 0.0

    @classmethod
    def from_config(cls, stop_event: threading.Event, state: SharedState,
                    obd: Optional[CarAccess], cfg: Any) -> Optional["SocketServer"]:
        """The server the configuration describes, or None with ENABLE_SOCKET_SERVER=no."""
        if not cfg.ENABLE_SOCKET_SERVER:
            return None
        return cls(stop_event, state, obd, bind=cfg.SOCKET_SERVER_BIND,
                   port=cfg.SOCKET_SERVER_PORT, secret=cfg.SOCKET_SERVER_SECRET,
                   car=cfg.CAR_IDENTIFIER, tls_cert=cfg.SOCKET_SERVER_TLS_CERT,
                   tls_key=cfg.SOCKET_SERVER_TLS_KEY)

    def prepare(self) -> None:
        """Listen now, so a taken port or an unusable certificate fails the start-up with a
        clear message."""
        if self.tls_files is not None and self.tls is None:
            cert, key = self.tls_files
            if not cert or not key:
                raise OSError("socket server: TLS needs both SOCKET_SERVER_TLS_CERT and "
                              "SOCKET_SERVER_TLS_KEY")
            try:
                self.tls = tls_context(cert, key)
            except OSError as exc:  # ssl.SSLError is one; its text never holds the key
                raise OSError(f"socket server: SOCKET_SERVER_TLS_CERT/SOCKET_SERVER_TLS_KEY "
                              f"({cert}, {key}) cannot be loaded: {exc.__class__.__name__}"
                              ) from None
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
        sock.settimeout(self.tick)
        self._listener = sock
        self.port = sock.getsockname()[1]
        log.info("socket server listening on %s:%d, %s%s", self.bind, self.port,
                 "TLS" if self.tls else "plain text",
                 "" if self.secret else " (no secret: loopback only)")

    def run(self) -> None:
        """Runs in the socket thread: accept clients until stopped."""
        if self._listener is None:
            self.prepare()
        assert self._listener is not None
        while not self.stop_event.is_set():
            self.heartbeat()
            self._sweep()
            try:
                conn, addr = self._listener.accept()
            except socket.timeout:
                continue
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                self.stop_event.wait(0.5)
                continue
            self._admit(conn, str(addr[0]))

    def on_exit(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            threads = list(self._threads.values())
            waiting = list(self._pending.values())
        for client in waiting:  # wakes one in a TLS handshake, which waits for no event
            client.evict("ERR ECCM is stopping; closing")
        deadline = time.monotonic() + 1.0
        for thread in threads:
            thread.join(max(0.05, deadline - time.monotonic()))

    def _sweep(self) -> None:
        """Accept thread, at most once a second: log the failed-login bursts that ended."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        for line in self.budget.sweep():
            log.warning("%s", line)

    # Admission: the accept thread.

    def _admit(self, conn: socket.socket, peer: str) -> None:
        """Give a new connection a thread, within the limits; close a waiting one to make
        room if the login quota is full."""
        client = _Client(self, conn, peer, address_key(peer))
        victim: Optional[_Client] = None
        refusal: Optional[str] = None
        with self._lock:
            self._threads = {k: t for k, t in self._threads.items() if t.is_alive()}
            if len(self._threads) >= self.max_threads:
                refusal = TOO_MANY
            elif client.conversation.authenticated:  # no secret: a session at once
                if len(self._active) >= self.max_clients:
                    refusal = TOO_MANY
                else:
                    self._active[id(client)] = client
            else:
                victim = self._victim(client.key)
                if victim is not None:
                    del self._pending[id(victim)]
                self._pending[id(client)] = client
            if refusal is None:
                thread = threading.Thread(target=client.serve, name=f"client-{peer}",
                                          daemon=True)
                self._threads[id(client)] = thread
        if refusal is not None:
            self.state.count("socket_refused")
            self._reject(conn, None if self.tls else refusal)
            return
        if victim is not None:
            self.state.count("socket_evicted")
            self._quota_notice(victim.key)
            victim.evict(EVICTED)
        thread.start()

    def _victim(self, key: str) -> "Optional[_Client]":
        """Lock held: the waiting connection to close before one more from `key` waits: the
        oldest of this address at its quota, else, the total quota full, the oldest of the
        address that holds the most."""
        mine = [c for c in self._pending.values() if c.key == key]
        if len(mine) >= self.max_pending_per_address:
            return mine[0]
        if len(self._pending) < self.max_pending:
            return None
        counts = Counter(c.key for c in self._pending.values())
        most = max(counts.values())
        return next(c for c in self._pending.values() if counts[c.key] == most)

    def _quota_notice(self, key: str) -> None:
        now = time.monotonic()
        if now >= self._next_quota_notice:
            self._next_quota_notice = now + QUOTA_NOTICE_EVERY
            log.warning("socket server: too many connections waiting to log in (at most %d, "
                        "%d per address); closing the oldest ones of %s to make room "
                        "(said once a minute; STATUS counts them as socket_evicted)",
                        self.max_pending, self.max_pending_per_address, key)

    @staticmethod
    def _reject(conn: socket.socket, text: Optional[str]) -> None:
        try:
            conn.settimeout(1.0)
            if text:
                conn.sendall(text.encode() + b"\n")
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            conn.close()

    # Called from client threads.

    def promote(self, client: "_Client") -> Optional[str]:
        """The client just logged in: move it to a session slot; None, or the refusal."""
        with self._lock:
            if self._pending.pop(id(client), None) is None:
                return client.evicted or EVICTED  # closed to make room meanwhile
            if len(self._active) >= self.max_clients:
                return TOO_MANY
            self._active[id(client)] = client
        return None

    def forget(self, client: "_Client") -> None:
        with self._lock:
            self._pending.pop(id(client), None)
            self._active.pop(id(client), None)
            self._threads.pop(id(client), None)

    def counts(self) -> Tuple[int, int, int]:
        """(waiting to log in, logged in, client threads)."""
        with self._lock:
            return len(self._pending), len(self._active), len(self._threads)

    def try_login(self, key: str) -> bool:
        allowed, notice = self.budget.take(key)
        if notice:
            log.warning("%s", notice)
        if not allowed:
            self.state.count("auth_refused")
        return allowed

    def auth_failed(self, key: str, peer: str) -> None:
        """Count a wrong secret (its try is already spent from the address's budget)."""
        self.budget.failed(key)
        self.state.count("auth_failures")
        log.warning("failed login from %s", peer)

    def status(self) -> List[Tuple[str, Any]]:
        """STATUS: the shared health model, as every other reader sees it."""
        snap = self.state.snapshot()
        return status_items(snap.health, snap.links, snap.counters, snap.gnss,
                            version=__version__, car=self.car,
                            uptime=time.monotonic() - self.started,
                            sources=tuple(snap.columns))


class _Client:
    """The I/O loop of one connection; protocol decisions are the Conversation's."""

    def __init__(self, server: SocketServer, conn: socket.socket, peer: str, key: str):
        self.server = server
        self.conn = conn
        self.peer = peer
        self.key = key
        deadline = server.login_deadline
        self.conversation = Conversation(
            DaemonBackend(server, peer, key), server.secret, secrets.token_hex(16),
            f"ECCM {__version__} car={server.car} ready; AUTH required"
            f"{f' within {deadline:g} s' if server.secret else ''}, "
            "HELP lists the commands;")
        self.connected = time.monotonic()
        self.deadline = self.connected + deadline
        self.buf = b""
        self.received = 0  # bytes before login
        self.sent = 0  # bytes answered before login
        self.last_input = self.connected
        self.closing = False
        self.greeted = False
        self.next_watch = 0.0
        self.evicted: Optional[str] = None
        self.tls_up = False
        self._lock = threading.Lock()  # self.conn: replaced (TLS), closed, shut by evict()

    def serve(self) -> None:
        """Runs in the client's own thread."""
        try:
            self.run()
        except socket.timeout:  # its buffers are full: it stopped reading
            log.info("client %s dropped: it read nothing for %g s", self.peer,
                     self.server.send_timeout)
        except OSError as exc:  # reset, broken pipe, TLS error: drop this client only
            log.debug("client %s dropped: %s", self.peer, exc)
        except Exception:
            log.exception("client %s: unexpected error", self.peer)
        finally:
            self._close()
            self.server.forget(self)  # counted until closed: the thread bound holds

    def _close(self) -> None:
        """TLS: say close_notify first (waiting at most briefly for the client's), so the
        client sees the end of the session, not a cut."""
        conn = self.conn
        if isinstance(conn, ssl.SSLSocket) and self.tls_up:
            try:
                conn.settimeout(0.5)
                conn = conn.unwrap()
            except (OSError, ValueError):  # ValueError: already closed
                pass
        with self._lock:
            conn.close()
            self.conn.close()

    def evict(self, reason: str) -> None:
        """Any thread: close this connection (it is waiting to log in) with `reason`. Its
        own thread wakes up (read side shut down), says why and closes."""
        with self._lock:
            self.evicted = reason
            try:
                socket.socket.shutdown(self.conn, socket.SHUT_RD)  # not SSLSocket's: fd only
            except OSError:
                pass  # closed already

    def send(self, lines: List[str]) -> None:
        if not lines:
            return
        data = ("\n".join(lines) + "\n").encode("utf-8", "replace")
        if not self.conversation.authenticated:
            self.sent += len(data)
            if self.sent > LOGIN_MAX_OUTPUT:
                data = (f"ERR more than {LOGIN_MAX_OUTPUT} bytes of answers before login; "
                        "closing\n").encode()
                self.closing = True
        self.conn.sendall(data)

    def _say_and_close(self, line: str) -> None:
        try:
            self.send([line])
        except OSError:
            pass
        self.closing = True

    def _left(self) -> float:
        return self.deadline - time.monotonic()

    def _start_tls(self) -> bool:
        """The TLS handshake, within the login deadline; False: no usable client."""
        assert self.server.tls is not None
        with self._lock:
            if self.evicted is not None:
                return False
            self.conn = self.server.tls.wrap_socket(self.conn, server_side=True,
                                                    do_handshake_on_connect=False)
        self.conn.settimeout(max(0.05, self._left()))
        try:
            self.conn.do_handshake()
        except OSError as exc:  # ssl.SSLError (not TLS, bad version), timeout, reset
            log.debug("client %s: no TLS handshake: %s", self.peer, exc)
            return False
        self.conn.settimeout(self.server.send_timeout)
        self.tls_up = True
        return True

    def _read(self, timeout: float) -> Optional[bytes]:
        """Bytes received within timeout; None if nothing came, b"" if the client closed."""
        tls = isinstance(self.conn, ssl.SSLSocket)
        if not (tls and self.conn.pending()) and \
                not _readable(self.conn, timeout):
            return None
        if not tls:
            return self.conn.recv(4096)
        self.conn.settimeout(0.5)  # a partial TLS record: do not wait for the rest long
        try:
            return self.conn.recv(4096)
        except socket.timeout:
            return None
        finally:
            self.conn.settimeout(self.server.send_timeout)

    def run(self) -> None:
        self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self.conn.settimeout(self.server.send_timeout)
        if self.server.tls is not None and not self._start_tls():
            return
        stop = self.server.stop_event
        # A legacy client sends its bare secret at once and expects no greeting.
        first = self._read(self.server.greeting_grace)
        if first is None and self.evicted is None:
            self.send([self.conversation.greeting()])
            self.greeted = True
        elif first:
            self._received(first)
        elif first == b"" and self.evicted is None:
            return
        while not stop.is_set() and not self.closing:
            if self.evicted is not None:
                self._say_and_close(self.evicted)
                return
            now = time.monotonic()
            self._process(now)
            if self.closing:
                return
            if not self.conversation.authenticated:
                if self.received > self.server.login_max_bytes:
                    self._say_and_close(f"ERR more than {self.server.login_max_bytes} bytes "
                                        "before login; closing")
                    return
                if now >= self.deadline:
                    self.server.state.count("login_timeouts")
                    log.debug("client %s closed: no login within %g s", self.peer,
                              self.server.login_deadline)
                    self._say_and_close(
                        f"ERR no login within {self.server.login_deadline:g} s; closing")
                    return
            if self.conversation.watch is not None and now >= self.next_watch:
                self.send([self.conversation.watch_line()])
                self.next_watch = max(self.next_watch + 1.0 / self.conversation.watch[1], now)
            elif self.conversation.watch is None and \
                    now - self.last_input > self.server.idle_timeout:
                self.send(["ERR idle for too long; closing"])
                return
            timeout = self.server.tick
            if self.buf and self._pause_ends_message():
                timeout = max(0.0, self.server.unterminated_flush - (now - self.last_input))
            if self.conversation.watch is not None:
                timeout = max(0.0, min(timeout, self.next_watch - now))
            if not self.conversation.authenticated:
                timeout = min(timeout, self.deadline - now)
            data = self._read(timeout)
            if self.evicted is not None:
                continue
            if data == b"":
                return
            if data:
                self._received(data)

    def _received(self, data: bytes) -> None:
        if not self.conversation.authenticated:
            self.received += len(data)
        self.buf += data
        self.last_input = time.monotonic()

    def _pause_ends_message(self) -> bool:
        """The legacy framing (a message without a line end, then a pause) holds for the
        first message and after login; before login, later bytes wait for a line end, so a
        client sending a byte at a time is not answered byte by byte."""
        return self.conversation.authenticated or self.conversation.lines_seen == 0

    def _process(self, now: float) -> None:
        """Handle the complete lines received, then (they may have logged in) a message
        without a line end that a pause ended."""
        while b"\n" in self.buf and not self.closing:
            raw, self.buf = self.buf.split(b"\n", 1)
            if len(raw) > MAX_LINE:
                self._say_and_close("ERR line too long (at most 1024 bytes); closing")
                return
            self._handle(strip_telnet(raw).rstrip(b"\r").decode("utf-8", "replace"))
        if self.closing or not self.buf:
            return
        if len(self.buf) > MAX_LINE:
            self._say_and_close("ERR line too long (at most 1024 bytes); closing")
        elif now - self.last_input >= self.server.unterminated_flush and \
                self._pause_ends_message():
            raw, self.buf = self.buf, b""
            self._handle(strip_telnet(raw).rstrip(b"\r").decode("utf-8", "replace"))

    def _handle(self, line: str) -> None:
        was_authenticated = self.conversation.authenticated
        reply: Reply = self.conversation.handle(line)
        lines = list(reply.lines)
        close = reply.close
        if reply.auth_failed:
            self.server.auth_failed(self.key, self.peer)
        if self.conversation.authenticated and not was_authenticated:
            refusal = self.server.promote(self)
            if refusal is not None:
                self.server.state.count("socket_refused")
                lines, close = [refusal], True
        if not self.greeted:
            # Decided after the first message is handled, by the Conversation's own (budgeted,
            # constant-time) check: whether the greeting comes tells nothing about a guess
            # that was not checked.
            self.greeted = True
            if not (self.conversation.legacy and self.conversation.authenticated):
                lines.insert(0, self.conversation.greeting())
        self.send(lines)
        if self.conversation.watch is None:
            self.next_watch = 0.0
        elif self.next_watch == 0.0:
            self.next_watch = time.monotonic()
        if close:
            self.closing = True
