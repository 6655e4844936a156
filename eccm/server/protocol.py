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

One table, COMMANDS (at the end), names every command with its HELP line, its handler,
whether it works before login and whether it is the original's; HELP, the login gate and
dispatch all read it.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

from eccm.core.state import DISABLED, Reading, Snapshot, Unavailable
from eccm.core.text import format_cell, plural

MAX_LINE = 1024
MAX_AUTH_ATTEMPTS = 3
MAX_WATCH_HZ = 10.0
DEFAULT_WATCH_HZ = 1.0

LEGACY_UNAVAILABLE = "DATA MANAGER NOT AVAILABLE"
# The values QUERY_STATUS>>NAME reads (python-OBD's names); any other name answers None.
LEGACY_STATUS_NAMES = ("FUEL_STATUS", "AIR_STATUS", "AUX_INPUT_STATUS")
WATCH_MAX_AGE = 5.0  # an older value streams as '-'

# Why a value a source declared has none yet, per source.
WAITING = {"gnss": "no GNSS fix yet", "obd": "no answer from the car yet"}


def source_of(snap: Snapshot, name: str) -> Optional[str]:
    """The source that declared a value name (its record column), or None."""
    for source, columns in snap.columns.items():
        if any(col.name == name for col in columns):
            return source
    return None


def value_names(snap: Snapshot, words: List[str]) -> List[str]:
    """Value names as a client typed them -> as the sources spelt them: case does not
    matter (a profile's signal may be 'BoltSoc', the client types BOLTSOC)."""
    spelt = {col.name.upper(): col.name for cols in snap.columns.values() for col in cols}
    spelt.update({name.upper(): name for name in snap.values})
    return [spelt.get(word.upper(), word.upper()) for word in words]


class Backend:
    """What a session may ask of the daemon; the server implements it."""

    def snapshot(self) -> Snapshot:
        raise NotImplementedError

    def read_dtcs(self, pending: bool = True
                  ) -> Tuple[List[Tuple[str, str]], List[Tuple[str, str]]]:
        """(stored, pending) as (code, description); pending=False asks only for the
        stored codes (pending then empty); raises Unavailable (core.state)."""
        raise NotImplementedError

    def clear_dtcs(self) -> int:
        """Mode 04, then the number of stored codes left; raises Unavailable."""
        raise NotImplementedError

    def query(self, name: str) -> Optional[str]:
        """One engine value read from the car now, as python-OBD's text shows it ('780.0
        revolutions_per_minute'); None when the car gave none or has no value of that name;
        raises Unavailable."""
        raise NotImplementedError

    def has_car(self) -> bool:
        """Whether there is an OBD side to ask at all (configured; connected or not)."""
        return True

    def request_reconnect(self) -> None:
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

    def handle(self, line: str) -> Reply:
        if not line.strip():
            return Reply()  # nothing, not even a first message
        self.lines_seen += 1
        self._line = line
        first = self.lines_seen == 1
        word, args = split_command(line)
        if not self.authenticated:
            if first and self.secret and word not in ALL_NAMES:
                return self._bare_secret(line)  # the original ECCM's login
            if word not in OPEN_COMMANDS:
                return Reply([self._err("not authenticated: AUTH <secret> first")])
        # A session that logged in the original way gets the original's commands first.
        command = (_LEGACY_BY_NAME.get(word) if self.legacy else None) or _BY_NAME.get(word)
        if command is None:
            return Reply(["INVALID COMMAND" if self.legacy else
                          self._err(f"unknown command {word[:40]!r}; HELP lists them")])
        return command.handler(self, args)

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
        """Every value that has a reading, in the record's column order (the sources in
        the order the daemon created them), then any value no source declared, by name."""
        readings = {}
        for col in snap.declared():
            reading = snap.values.get(col.name)
            if reading is not None:
                readings.setdefault(col.name, reading)
        for name in sorted(snap.values):
            readings.setdefault(name, snap.values[name])
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
        names = value_names(snap, args)
        lines = [self._value_line(snap, n, readings[n]) for n in names if n in readings]
        missing = [n for n in names if n not in readings]
        unknown = [n for n in missing if source_of(snap, n) is None]
        problems = []
        if unknown:
            problems.append("unknown value " + " ".join(u[:40] for u in unknown[:5]))
        waiting: Dict[str, List[str]] = {}  # a source's names that have no value yet
        for name in missing:
            source = source_of(snap, name)
            if source is not None:
                waiting.setdefault(source, []).append(name)
        for source, names_left in waiting.items():
            link = snap.links.get(source)
            why = f"{source.upper()} is off" if link is not None and \
                link.state == DISABLED else WAITING.get(source, f"nothing from {source} yet")
            problems.append(f"no value {' '.join(names_left[:5])} ({why})")
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
        names = list(args)
        try:
            hz = float(names[-1])
            names = names[:-1]
        except ValueError:
            pass
        if not names or not (hz > 0):
            return Reply([self._err("WATCH needs value names and a rate above 0")])
        hz = min(hz, MAX_WATCH_HZ)
        snap = self.backend.snapshot()
        names = value_names(snap, names)
        unknown = [n for n in names if n not in snap.values and source_of(snap, n) is None]
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

    # The original ECCM's commands: one line each, no OK/ERR.

    def _legacy_restart(self, args: List[str]) -> Reply:
        self.backend.request_reconnect()
        return Reply(["RESTART IN PROGRESS"])

    def _legacy_command_list(self, args: List[str]) -> Reply:
        run = self.backend.snapshot().engine_run
        if run is None:
            return Reply([LEGACY_UNAVAILABLE])
        return Reply([",".join(c.name for c in run.columns)])

    def _legacy_query_command(self, args: List[str]) -> Reply:
        name = args[0].upper() if args else ""
        snap = self.backend.snapshot()
        if source_of(snap, name) not in (None, "obd"):  # the receiver's, not the car's
            reading = snap.values.get(name)
            if reading is None or reading.value is None:
                return Reply(["None"])  # what the original answered for a value it lacked
            return Reply([f"{format_cell(reading.value)} {reading.unit}".rstrip()])
        return self._ask_car(lambda: _legacy_text(self.backend.query(args[0] if args else "")))

    def _legacy_query_status(self, args: List[str]) -> Reply:
        name = args[0] if args else ""
        if name not in LEGACY_STATUS_NAMES:  # the car is not asked
            return Reply(["None" if self.backend.has_car() else LEGACY_UNAVAILABLE])
        return self._ask_car(lambda: _legacy_text(self.backend.query(name)))

    def _legacy_get_dtc(self, args: List[str]) -> Reply:
        # The stored codes as the original printed its list of (code, description): mode 03
        # alone, as it asked (a car that cannot give its pending codes still answers).
        return self._ask_car(lambda: str([(code, text) for code, text
                                          in self.backend.read_dtcs(pending=False)[0]]))

    def _legacy_clear_dtc(self, args: List[str]) -> Reply:
        self.backend.audit("CLEAR_DTC (legacy command)")

        def clear() -> str:
            self.backend.clear_dtcs()
            return "None"  # what the original answered
        return self._ask_car(clear)

    def _ask_car(self, question: Callable[[], str]) -> Reply:
        """A legacy command's one line from the car, or the original's line when the car
        cannot be asked."""
        try:
            return Reply([question()])
        except Unavailable:
            return Reply([LEGACY_UNAVAILABLE])


def _legacy_text(value: Optional[str]) -> str:
    """The original's text of a value: python-OBD's, 'None' for no value."""
    return "None" if value is None else value


@dataclass(frozen=True)
class Command:
    """One command of the protocol."""
    name: str       # the word a client sends, in any case
    usage: str      # HELP's left column
    help: str       # HELP's text
    handler: Callable[[Conversation, List[str]], Reply]
    open: bool = False    # works before login (nothing else does)
    legacy: bool = False  # the original ECCM's: only after its bare-secret login; not in HELP


C = Conversation
COMMANDS: Tuple[Command, ...] = (
    Command("AUTH", "AUTH <secret>",
            "authenticate (or AUTH HMAC <hex>, see the greeting's challenge)", C._cmd_auth,
            open=True),
    Command("HELP", "HELP", "this list", C._cmd_help, open=True),
    Command("LIST", "LIST", "every value available now, with its unit", C._cmd_list),
    Command("GET", "GET <NAME> [NAME...]", "latest value(s) with unit and age", C._cmd_get),
    Command("ALL", "ALL", "every latest value", C._cmd_all),
    Command("POSITION", "POSITION", "latest GNSS fix", C._cmd_position),
    Command("STATUS", "STATUS", "health of ECCM", C._cmd_status),
    Command("DTC", "DTC", "read stored and pending trouble codes from the car", C._cmd_dtc),
    Command("CLEAR_DTC", "CLEAR_DTC",
            "clear the car's trouble codes and freeze frame (mode 04)", C._cmd_clear_dtc),
    Command("WATCH", "WATCH <NAME...> [HZ]",
            f"stream values (at most {MAX_WATCH_HZ:g} per second) until UNWATCH",
            C._cmd_watch),
    Command("UNWATCH", "UNWATCH", "stop streaming", C._cmd_unwatch),
    Command("JSON", "JSON ON|OFF", "one JSON object per reply line", C._cmd_json),
    Command("QUIT", "QUIT", "close the connection", C._cmd_quit, open=True),
    # The original ECCM's, answered one line each as it did.
    Command("QUERY_COMMAND", "QUERY_COMMAND>>NAME", "a value as python-OBD's text, or None",
            C._legacy_query_command, legacy=True),
    Command("QUERY_STATUS", "QUERY_STATUS>>NAME", "a status value (FUEL_STATUS...) as text",
            C._legacy_query_status, legacy=True),
    Command("GET_DTC", "GET_DTC", "the stored trouble codes as a list of (code, description)",
            C._legacy_get_dtc, legacy=True),
    Command("CLEAR_DTC", "CLEAR_DTC", "clear the trouble codes (mode 04); answers None",
            C._legacy_clear_dtc, legacy=True),
    Command("GET_COMMAND_LIST", "GET_COMMAND_LIST", "the names of the values polled",
            C._legacy_command_list, legacy=True),
    Command("RESTART_DATA_MANAGER", "RESTART_DATA_MANAGER", "reopen the OBD adapter",
            C._legacy_restart, legacy=True),
)
del C

HELP: List[str] = [f"{c.usage:<24} {c.help}" for c in COMMANDS if not c.legacy]
OPEN_COMMANDS: FrozenSet[str] = frozenset(c.name for c in COMMANDS if c.open)
ALL_NAMES: FrozenSet[str] = frozenset(c.name for c in COMMANDS)
_BY_NAME: Dict[str, Command] = {c.name: c for c in COMMANDS if not c.legacy}
_LEGACY_BY_NAME: Dict[str, Command] = {c.name: c for c in COMMANDS if c.legacy}
