"""The socket text protocol: parsing and formatting, and one session's state machine.

Pure logic: a Conversation turns one received line into reply lines, asking a Backend for data
(the server supplies one that talks to the shared state and the OBD poller). No sockets,
no threads, so every path can be driven directly by tests.

Every reply ends with a line starting with OK or ERR, so a script knows it is complete.
Every check of a secret is first allowed by the Backend (the server's failed-login budget
per source address); a try over the budget is refused unchecked and ends the connection.
Legacy commands of the original ECCM (a bare secret as first line, QUERY_COMMAND>>NAME,
QUERY_STATUS>>NAME, GET_DTC, CLEAR_DTC, GET_COMMAND_LIST, RESTART_DATA_MANAGER) answer
one line each, as the original did.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List, Optional, Sequence, Tuple

from eccm.sinks.rows import GNSS_COLUMNS, GNSS_FIX_ATTRS, format_cell
from eccm.core.state import DISABLED, Reading, Snapshot
from eccm.core.text import plural

MAX_LINE = 1024
MAX_AUTH_ATTEMPTS = 3
MAX_WATCH_HZ = 10.0
DEFAULT_WATCH_HZ = 1.0

HELP = [
    "AUTH <secret>            authenticate (or AUTH HMAC <hex>, see the greeting's challenge)",
    "HELP                     this list",
    "LIST                     every value available now, with its unit",
    "GET <NAME> [NAME...]     latest value(s) with unit and age",
    "ALL                      every latest value",
    "POSITION                 latest GNSS fix",
    "STATUS                   health of ECCM",
    "DTC                      read stored and pending trouble codes from the car",
    "CLEAR_DTC                clear the car's trouble codes and freeze frame (mode 04)",
    "WATCH <NAME...> [HZ]     stream values (at most 10 per second) until UNWATCH",
    "UNWATCH                  stop streaming",
    "JSON ON|OFF              one JSON object per reply line",
    "QUIT                     close the connection",
]
OPEN_COMMANDS = {"AUTH", "HELP", "QUIT"}
LEGACY = {"QUERY_COMMAND", "QUERY_STATUS", "GET_DTC", "GET_COMMAND_LIST",
          "RESTART_DATA_MANAGER"}
LEGACY_UNAVAILABLE = "DATA MANAGER NOT AVAILABLE"
WATCH_MAX_AGE = 5.0  # an older value streams as '-'

# A client asks for a GNSS value by the name it sees in the record header.
GNSS_NAMES = tuple(c.name for c in GNSS_COLUMNS)


def gnss_readings(snap: Snapshot) -> Dict[str, Reading]:
    """The latest fix as readings named like the record's GNSS columns; {} without one."""
    fix = snap.gnss
    if fix is None:
        return {}
    mono = fix.mono if fix.mono is not None else snap.mono
    wall = datetime.now(timezone.utc) - timedelta(seconds=max(0.0, snap.mono - mono))
    return {col.name: Reading(getattr(fix, attr, None), col.unit, mono, wall)
            for col, attr in zip(GNSS_COLUMNS, GNSS_FIX_ATTRS)}


class Unavailable(Exception):
    """The car cannot be asked now (not connected, busy); the message says why."""


class Backend:
    """What a session may ask of the daemon; the server implements it."""

    def snapshot(self) -> Snapshot:
        raise NotImplementedError

    def read_dtcs(self) -> Tuple[List[Tuple[str, str]], List[Tuple[str, str]]]:
        """(stored, pending) as (code, description); raises Unavailable."""
        raise NotImplementedError

    def clear_dtcs(self) -> int:
        """Mode 04, then the number of stored codes left; raises Unavailable."""
        raise NotImplementedError

    def query_legacy(self, kind: str, name: str) -> str:
        """The original ECCM's answer text for QUERY_COMMAND/QUERY_STATUS/GET_DTC/CLEAR_DTC."""
        raise NotImplementedError

    def reconnect(self) -> None:
        raise NotImplementedError

    def status(self) -> List[Tuple[str, Any]]:
        raise NotImplementedError

    def audit(self, message: str) -> None:
        raise NotImplementedError

    def try_login(self) -> bool:
        """Before a secret is checked: take one try from this client's failed-login budget.
        False: over the budget; the secret must not be checked at all."""
        return True

    def give_back_login(self) -> None:
        """The secret checked was right: its try goes back to the budget."""

    def login_refusal(self) -> str:
        """Why try_login() said no, for the client."""
        return "too many failed logins from your address, try again later"


@dataclass
class Reply:
    lines: List[str] = field(default_factory=list)
    close: bool = False
    auth_failed: bool = False   # a secret was checked and was wrong
    auth_refused: bool = False  # a try over the budget, refused without checking


def split_command(line: str) -> Tuple[str, List[str]]:
    """'get rpm speed' -> ('GET', ['rpm', 'speed']); 'QUERY_COMMAND>>RPM' -> legacy form."""
    text = line.strip()
    if ">>" in text:
        word, _, arg = text.partition(">>")
        return word.strip().upper(), [arg.strip()]
    parts = text.split()
    if not parts:
        return "", []
    return parts[0].upper(), parts[1:]


IAC = 0xFF


def strip_telnet(data: bytes) -> bytes:
    """Remove telnet negotiation (IAC sequences) a telnet client may send; IAC IAC is 0xFF."""
    if IAC not in data:
        return data
    out = bytearray()
    i = 0
    while i < len(data):
        byte = data[i]
        if byte != IAC:
            out.append(byte)
            i += 1
            continue
        cmd = data[i + 1] if i + 1 < len(data) else None
        if cmd == IAC:
            out.append(IAC)
            i += 2
        elif cmd is not None and 251 <= cmd <= 254:  # WILL/WONT/DO/DONT <option>
            i += 3
        elif cmd == 250:  # SB ... IAC SE
            end = data.find(bytes([IAC, 240]), i + 2)
            i = len(data) if end < 0 else end + 2
        else:
            i += 2
    return bytes(out)


def hmac_answer(secret: str, challenge: str) -> str:
    """What a client sends after AUTH HMAC: hex HMAC-SHA256 of the challenge, keyed by the
    secret."""
    return hmac.new(secret.encode(), challenge.encode(), hashlib.sha256).hexdigest()


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "replace"), b.encode("utf-8", "replace"))


class Conversation:
    """One client's conversation. handle() is called with each received line."""

    def __init__(self, backend: Backend, secret: Optional[str], challenge: str,
                 greeting: str):
        self.backend = backend
        self.secret = secret or ""
        self.challenge = challenge
        self._greeting = greeting
        self.authenticated = not self.secret  # no secret: loopback-only server
        self.legacy = False
        self.json = False
        self.failures = 0
        self.lines_seen = 0
        self.watch: Optional[Tuple[List[str], float]] = None

    def greeting(self) -> str:
        return f"{self._greeting} challenge={self.challenge}"

    # Formatting.

    def _ok(self, text: str = "", **data: Any) -> str:
        if self.json:
            return json.dumps({"ok": True, **({"message": text} if text else {}), **data})
        return ("OK " + text).rstrip()

    def _err(self, text: str) -> str:
        return json.dumps({"ok": False, "error": text}) if self.json else f"ERR {text}"

    def _value_line(self, snap: Snapshot, name: str, reading: Reading) -> str:
        age = max(0.0, snap.mono - reading.mono)
        if self.json:
            return json.dumps({"name": name, "value": reading.value, "unit": reading.unit,
                               "age": round(age, 3)})
        unit = f" {reading.unit}" if reading.unit else ""
        return f"{name} {format_cell(reading.value) or '-'}{unit} age={age:.1f}s"

    # Dispatch.

    def handle(self, line: str) -> Reply:
        if not line.strip():
            return Reply()  # nothing, not even a first message
        self.lines_seen += 1
        self._line = line
        first = self.lines_seen == 1
        word, args = split_command(line)
        if not self.authenticated:
            if first and self.secret and word not in self._all_commands():
                return self._bare_secret(line)  # the original ECCM's login
            if word not in OPEN_COMMANDS:
                return Reply([self._err("not authenticated: AUTH <secret> first")])
        if self.legacy and (word in LEGACY or word == "CLEAR_DTC"):
            return Reply([self._legacy(word, args)])
        handler = getattr(self, f"_cmd_{word.lower()}", None)
        if handler is None or word.lower() not in self._handlers():
            return Reply(["INVALID COMMAND" if self.legacy else
                          self._err(f"unknown command {word[:40]!r}; HELP lists them")])
        return handler(args)

    @staticmethod
    def _handlers() -> Sequence[str]:
        return ("auth", "help", "list", "get", "all", "position", "status", "dtc",
                "clear_dtc", "watch", "unwatch", "json", "quit")

    def _all_commands(self) -> set:
        return {h.upper() for h in self._handlers()} | LEGACY | {"CLEAR_DTC"}

    def _bare_secret(self, line: str) -> Reply:
        """A first message that is no command: the bare secret of the original ECCM."""
        if not self.backend.try_login():
            return self._refused()
        if _same(line.strip(), self.secret):
            self.backend.give_back_login()
            self.authenticated = True
            self.legacy = True
            return Reply()  # the original answered nothing
        return self._auth_failure()

    def _cmd_auth(self, args: List[str]) -> Reply:
        if self.authenticated:
            return Reply([self._ok("already authenticated")])
        if not args:
            return Reply([self._err("AUTH needs the secret: AUTH <secret>")])
        if not self.backend.try_login():
            return self._refused()
        if len(args) == 2 and args[0].upper() == "HMAC":
            good = _same(args[1].lower(), hmac_answer(self.secret, self.challenge))
        else:
            # The secret as typed after AUTH, inner blanks and tabs as they are.
            good = _same(self._line.strip().split(None, 1)[1], self.secret)
        if good:
            self.backend.give_back_login()
            self.authenticated = True
            return Reply([self._ok("authenticated")])
        return self._auth_failure()

    def _refused(self) -> Reply:
        return Reply([self._err(self.backend.login_refusal())],
                     close=True, auth_refused=True)

    def _auth_failure(self) -> Reply:
        self.failures += 1
        if self.failures >= MAX_AUTH_ATTEMPTS:
            return Reply([self._err("wrong secret; too many attempts, closing")], close=True,
                         auth_failed=True)
        return Reply([self._err("wrong secret")], auth_failed=True)

    def _cmd_help(self, args: List[str]) -> Reply:
        return Reply(HELP + [self._ok(plural(len(HELP), "command"))])

    def _cmd_quit(self, args: List[str]) -> Reply:
        return Reply([self._ok("bye")], close=True)

    @staticmethod
    def _readings(snap: Snapshot) -> Dict[str, Reading]:
        """Engine values (sorted by name), then the GNSS fix's in record column order."""
        readings = {name: snap.values[name] for name in sorted(snap.values)}
        for name, reading in gnss_readings(snap).items():
            readings.setdefault(name, reading)
        return readings

    def _cmd_list(self, args: List[str]) -> Reply:
        lines = []
        for name, reading in self._readings(self.backend.snapshot()).items():
            lines.append(json.dumps({"name": name, "unit": reading.unit}) if self.json
                         else f"{name} {reading.unit}".rstrip())
        return Reply(lines + [self._ok(plural(len(lines), "value"))])

    def _cmd_all(self, args: List[str]) -> Reply:
        snap = self.backend.snapshot()
        lines = [self._value_line(snap, name, reading)
                 for name, reading in self._readings(snap).items()]
        return Reply(lines + [self._ok(plural(len(lines), "value"))])

    def _cmd_get(self, args: List[str]) -> Reply:
        if not args:
            return Reply([self._err("GET needs a value name, e.g. GET RPM; LIST shows them")])
        snap = self.backend.snapshot()
        readings = self._readings(snap)
        names = [a.upper() for a in args]
        lines = [self._value_line(snap, n, readings[n]) for n in names if n in readings]
        missing = [n for n in names if n not in readings]
        unknown = [n for n in missing if n not in GNSS_NAMES]
        no_fix = [n for n in missing if n in GNSS_NAMES]  # known, but no fix to read
        problems = []
        if unknown:
            problems.append("unknown value " + " ".join(u[:40] for u in unknown[:5]))
        if no_fix:
            gnss = snap.links.get("gnss")
            why = "GNSS is off" if gnss is not None and gnss.state == DISABLED else \
                "no GNSS fix yet"
            problems.append(f"no value {' '.join(no_fix[:5])} ({why})")
        if problems:
            return Reply(lines + [self._err("; ".join(problems))])
        return Reply(lines + [self._ok()])

    def _cmd_position(self, args: List[str]) -> Reply:
        fix = self.backend.snapshot().gnss
        if fix is None or fix.lat is None:
            return Reply([self._ok("no fix")] if not self.json else
                         [json.dumps({"ok": True, "fix": None})])
        data = fix.as_dict()
        if self.json:
            return Reply([json.dumps({"ok": True, "fix": data})])
        text = " ".join(f"{k}={format_cell(v) or '-'}" for k, v in data.items())
        return Reply([f"POSITION {text}", self._ok()])

    def _cmd_status(self, args: List[str]) -> Reply:
        items = self.backend.status()
        if self.json:
            return Reply([json.dumps({"ok": True, "status": dict(items)}, default=str)])
        return Reply([f"{k}: {format_cell(v) if not isinstance(v, str) else v}"
                      for k, v in items] + [self._ok()])

    def _cmd_dtc(self, args: List[str]) -> Reply:
        try:
            stored, pending = self.backend.read_dtcs()
        except Unavailable as exc:
            return Reply([self._err(str(exc))])
        lines = []
        for kind, codes in (("STORED", stored), ("PENDING", pending)):
            for code, desc in codes:
                lines.append(json.dumps({"kind": kind.lower(), "code": code,
                                         "description": desc}) if self.json
                             else f"{kind} {code} {desc}".rstrip())
        return Reply(lines + [self._ok(f"{len(stored)} stored, {len(pending)} pending")])

    def _cmd_clear_dtc(self, args: List[str]) -> Reply:
        try:
            left = self.backend.clear_dtcs()
        except Unavailable as exc:
            self.backend.audit(f"CLEAR_DTC failed: {exc}")
            return Reply([self._err(str(exc))])
        left_text = plural(left, "stored code")
        self.backend.audit(f"CLEAR_DTC done, {left_text} left")
        return Reply([self._ok(f"trouble codes cleared; {left_text} left")])

    def _cmd_watch(self, args: List[str]) -> Reply:
        if not args:
            return Reply([self._err("WATCH needs value names, e.g. WATCH RPM SPEED 5")])
        hz = DEFAULT_WATCH_HZ
        names = [a.upper() for a in args]
        try:
            hz = float(names[-1])
            names = names[:-1]
        except ValueError:
            pass
        if not names or not (hz > 0):
            return Reply([self._err("WATCH needs value names and a rate above 0")])
        hz = min(hz, MAX_WATCH_HZ)
        known = self.backend.snapshot().values
        unknown = [n for n in names if n not in known and n not in GNSS_NAMES]
        if unknown:
            return Reply([self._err("unknown value " + " ".join(u[:40] for u in unknown[:5]))])
        self.watch = (names, hz)
        return Reply([self._ok(f"watching {plural(len(names), 'value')} at {hz:g} Hz; "
                               "UNWATCH stops")])

    def _cmd_unwatch(self, args: List[str]) -> Reply:
        self.watch = None
        return Reply([self._ok("stopped")])

    def _cmd_json(self, args: List[str]) -> Reply:
        mode = args[0].upper() if args else ""
        if mode not in ("ON", "OFF"):
            return Reply([self._err("JSON ON or JSON OFF")])
        self.json = mode == "ON"
        return Reply([self._ok(f"json {mode.lower()}")])

    def watch_line(self) -> str:
        """One streamed line for the current WATCH (the server calls this on its timer)."""
        assert self.watch is not None
        snap = self.backend.snapshot()
        readings = self._readings(snap)
        names, _hz = self.watch
        fresh: List[Tuple[str, Optional[Reading]]] = []
        for name in names:
            reading = readings.get(name)
            if reading is not None and snap.mono - reading.mono > WATCH_MAX_AGE:
                reading = None
            fresh.append((name, reading))
        if self.json:
            return json.dumps({"watch": {name: reading.value if reading else None
                                         for name, reading in fresh}})
        return "WATCH " + " ".join(f"{name}={format_cell(reading.value) if reading else '-'}"
                                   for name, reading in fresh)

    def _legacy(self, word: str, args: List[str]) -> str:
        if word == "RESTART_DATA_MANAGER":
            self.backend.reconnect()
            return "RESTART IN PROGRESS"
        if word == "GET_COMMAND_LIST":
            session = self.backend.snapshot().engine_run
            if session is None:
                return LEGACY_UNAVAILABLE
            return ",".join(c.name for c in session.columns)
        if word == "CLEAR_DTC":
            self.backend.audit("CLEAR_DTC (legacy command)")
        name = args[0].upper() if args else ""
        if word == "QUERY_COMMAND" and name in GNSS_NAMES:  # from the fix, not the car
            reading = gnss_readings(self.backend.snapshot()).get(name)
            if reading is None or reading.value is None:
                return "None"  # what the original answered for a value it did not have
            return f"{format_cell(reading.value)} {reading.unit}".rstrip()
        try:
            return self.backend.query_legacy(word, args[0] if args else "")
        except Unavailable:
            return LEGACY_UNAVAILABLE
