"""The socket protocol's pure session logic, including a hypothesis state machine."""
from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from datetime import date, datetime, time as clock_time, timezone

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
import pytest

from eccm.sources.gnss.nmea import MODE_NONE, Fix
from eccm.server.protocol import COMMANDS as TABLE
from eccm.server.protocol import (MAX_AUTH_ATTEMPTS, Backend, Conversation, Unavailable,
                                  hmac_answer, split_command)
from eccm.sinks.rows import RowFormat, row_cells
from eccm.sources.gnss.reader import publish_fix
from eccm.sources.gnss.columns import COLUMNS as GNSS_COLUMNS
from eccm.core.state import DISABLED, Column, EngineRun, SharedState

SECRET = "Open Sesame 42"


class Car(Backend):
    """A backend over a real SharedState and an in-memory car (the data side is not
    under test here: the session's decisions are)."""

    def __init__(self, connected: bool = True):
        self.state = SharedState()
        self.state.start_engine_run(EngineRun(1, (Column("RPM", "rpm"),
                                                    Column("SPEED", "km/h"))), source="obd")
        self.state.declare("gnss", GNSS_COLUMNS)  # as the daemon's GNSS reader does
        self.state.update_values({"RPM": (812.5, "rpm"), "SPEED": (42, "km/h")}, origin="obd")
        self.connected = connected
        self.stored = [("P0301", "Cylinder 1 Misfire Detected")]
        self.left_after_clear = 0
        self.clears = 0
        self.audits = []
        self.asked = []  # (method, name) of each question that reached the car
        self.reconnects = 0

    def snapshot(self):
        return self.state.snapshot()

    def read_dtcs(self, pending=True):
        if not self.connected:
            raise Unavailable("car not connected: ignition off?")
        self.asked.append(("read_dtcs", "" if pending else "stored"))
        return list(self.stored), []

    def clear_dtcs(self):
        if not self.connected:
            raise Unavailable("car not connected")
        self.asked.append(("clear_dtcs", ""))
        self.clears += 1
        self.stored = []
        return self.left_after_clear

    def query(self, name):
        if not self.connected:
            raise Unavailable("no")
        self.asked.append(("query", name))
        return {"RPM": "812.5 revolutions_per_minute"}.get(name)

    def request_reconnect(self):
        self.reconnects += 1

    def status(self):
        return [("uptime_s", 3), ("obd", "connected")]

    def audit(self, message):
        self.audits.append(message)


def session(**kw):
    car = Car(**kw)
    return car, Conversation(car, SECRET, "c0ffee", "ECCM test")


def test_strip_telnet_negotiation():
    from eccm.server.protocol import strip_telnet
    assert strip_telnet(b"\xff\xfd\x03\xff\xfb\x18AUTH x\r") == b"AUTH x\r"
    assert strip_telnet(b"a\xff\xffb\xff\xfa\x18\x01\xff\xf0c") == b"a\xffbc"
    assert strip_telnet(b"plain") == b"plain"


def test_split_command():
    assert split_command("get rpm speed\r") == ("GET", ["rpm", "speed"])
    assert split_command("QUERY_COMMAND>>RPM") == ("QUERY_COMMAND", ["RPM"])
    assert split_command("   ") == ("", [])


def test_nothing_but_auth_help_quit_before_login():
    car, s = session()
    assert s.handle("HELP").lines[-1].startswith("OK")
    for line in ("GET RPM", "CLEAR_DTC", "DTC", "ALL", "WATCH RPM", "STATUS"):
        assert s.handle(line).lines == ["ERR not authenticated: AUTH <secret> first"]
    assert car.clears == 0
    assert s.handle("auth " + SECRET).lines == ["OK authenticated"]
    reply = s.handle("get rpm")
    assert reply.lines[0].startswith("RPM 812.5 rpm age=") and reply.lines[-1] == "OK"


def test_names_of_other_ecus_and_profiles_are_found_in_any_case():
    """A profile's signal keeps its own spelling (OBDb ids may have lower case); another
    ECU's values carry its prefix. The client types them in any case."""
    car, s = session()
    car.state.declare("can", (Column("Kona_SoC", "%"), Column("TCM.SPEED", "km/h")))
    car.state.update_values({"Kona_SoC": (76.5, "%"), "TCM.SPEED": (41, "km/h")},
                            origin="can")
    s.handle(f"AUTH {SECRET}")
    reply = s.handle("GET kona_soc tcm.speed")
    assert reply.lines[0].startswith("Kona_SoC 76.5 % age=")
    assert reply.lines[1].startswith("TCM.SPEED 41 km/h age=") and reply.lines[-1] == "OK"
    assert s.handle("WATCH KONA_SOC 2").lines[-1].startswith("OK watching 1 value")


def test_get_unknown_names_it():
    _, s = session()
    s.handle(f"AUTH {SECRET}")
    reply = s.handle("GET RPM FOO")
    assert reply.lines[0].startswith("RPM 812.5 rpm age=")
    assert reply.lines[-1] == "ERR unknown value FOO"


def test_three_wrong_secrets_close():
    _, s = session()
    for attempt in range(1, MAX_AUTH_ATTEMPTS + 1):
        reply = s.handle("AUTH nope")
        assert reply.auth_failed and reply.lines[-1].startswith("ERR")
        assert reply.close == (attempt == MAX_AUTH_ATTEMPTS)


def test_hmac_login_never_sends_the_secret():
    _, s = session()
    assert "challenge=c0ffee" in s.greeting()
    assert s.handle("AUTH HMAC " + "0" * 64).auth_failed
    assert s.handle("AUTH HMAC " + hmac_answer(SECRET, "c0ffee")).lines == ["OK authenticated"]


def test_legacy_bare_secret_and_commands():
    car, s = session()
    assert s.handle(SECRET).lines == []  # the original answered nothing
    assert s.handle("QUERY_COMMAND>>RPM").lines == ["812.5 revolutions_per_minute"]
    assert s.handle("GET_DTC").lines == [str(car.stored)]
    assert s.handle("GET_COMMAND_LIST").lines == ["RPM,SPEED"]
    assert s.handle("CLEAR_DTC").lines == ["None"]
    assert s.handle("NONSENSE").lines == ["INVALID COMMAND"]
    car.connected = False
    assert s.handle("QUERY_COMMAND>>RPM").lines == ["DATA MANAGER NOT AVAILABLE"]


def test_legacy_query_status_reads_only_the_status_values():
    car, s = session()
    s.handle(SECRET)
    assert s.handle("QUERY_STATUS>>RPM").lines == ["None"]  # no status: the car is not asked
    assert s.handle("QUERY_COMMAND>>NO_SUCH").lines == ["None"]
    assert s.handle("QUERY_STATUS>>AIR_STATUS").lines == ["None"]
    assert car.asked == [("query", "NO_SUCH"), ("query", "AIR_STATUS")]
    car.has_car = lambda: False  # a daemon without an OBD side
    car.connected = False
    assert s.handle("QUERY_STATUS>>RPM").lines == ["DATA MANAGER NOT AVAILABLE"]
    assert s.handle("GET_DTC").lines == ["DATA MANAGER NOT AVAILABLE"]
    assert s.handle("CLEAR_DTC").lines == ["DATA MANAGER NOT AVAILABLE"]


def test_wrong_bare_secret_counts_as_failed_login():
    _, s = session()
    reply = s.handle("not the secret")
    assert reply.auth_failed and reply.lines == ["ERR wrong secret"]


def test_dtc_and_clear_report_and_audit():
    car, s = session()
    s.handle(f"AUTH {SECRET}")
    assert s.handle("dtc").lines == ["STORED P0301 Cylinder 1 Misfire Detected",
                                     "OK 1 stored, 0 pending"]
    assert s.handle("CLEAR_DTC").lines == ["OK trouble codes cleared; 0 stored codes left"]
    assert car.audits == ["CLEAR_DTC done, 0 stored codes left"]
    car.connected = False
    assert s.handle("DTC").lines == ["ERR car not connected: ignition off?"]


def test_json_mode_and_watch():
    _, s = session()
    s.handle(f"AUTH {SECRET}")
    assert s.handle("JSON on").lines == ['{"ok": true, "message": "json on"}']
    value = json.loads(s.handle("GET SPEED").lines[0])
    assert value["name"] == "SPEED" and value["value"] == 42 and value["unit"] == "km/h"
    assert s.handle("WATCH RPM 50").lines[-1].startswith('{"ok": true')
    assert s.watch == (["RPM"], 10.0)  # capped
    assert json.loads(s.watch_line()) == {"watch": {"RPM": 812.5}}
    s.handle("UNWATCH")
    assert s.watch is None
    assert json.loads(s.handle("WATCH").lines[0])["ok"] is False


# The command table: HELP, the login gate and dispatch.
# Written out here, not taken from eccm.server.protocol.COMMANDS: a command dropped from,
# renamed in or added to the table fails these tests.

HELP_TEXT = [
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
# A line for each command, and the start of what that command (and no other) answers.
MODERN = {
    "AUTH x": ["OK already authenticated"],
    "HELP": [HELP_TEXT[0]],
    "LIST": ["RPM rpm", "SPEED km/h", "OK 2 values"],
    "GET RPM": ["RPM 812.5 rpm age=", "OK"],
    "ALL": ["RPM 812.5 rpm age=", "SPEED 42 km/h age=", "OK 2 values"],
    "POSITION": ["OK no fix"],
    "STATUS": ["uptime_s: 3", "obd: connected", "OK"],
    "DTC": ["STORED P0301 Cylinder 1 Misfire Detected", "OK 1 stored, 0 pending"],
    "CLEAR_DTC": ["OK trouble codes cleared; 0 stored codes left"],
    "WATCH RPM": ["OK watching 1 value at 1 Hz; UNWATCH stops"],
    "UNWATCH": ["OK stopped"],
    "JSON OFF": ["OK json off"],
    "QUIT": ["OK bye"],
}
LEGACY_COMMANDS = {
    "QUERY_COMMAND>>RPM": ["812.5 revolutions_per_minute"],
    "QUERY_STATUS>>FUEL_STATUS": ["None"],
    "GET_DTC": ["[('P0301', 'Cylinder 1 Misfire Detected')]"],
    "CLEAR_DTC": ["None"],
    "GET_COMMAND_LIST": ["RPM,SPEED"],
    "RESTART_DATA_MANAGER": ["RESTART IN PROGRESS"],
}


def starts(lines, expected):
    """Each line starts with its expected beginning, and there are as many."""
    return len(lines) == len(expected) and all(ln.startswith(e) for ln, e in zip(lines, expected))


def test_help_lists_the_commands_in_order_with_their_usage():
    _, s = session()
    lines = s.handle("help").lines
    assert lines == HELP_TEXT + ["OK 13 commands"]
    assert [c.name for c in TABLE if not c.legacy] == [ln.split()[0] for ln in HELP_TEXT]


def test_every_command_is_answered_by_its_own_handler():
    car, s = logged_in()
    for line, expected in MODERN.items():
        reply = s.handle(line)
        if line == "HELP":
            assert reply.lines[:-1] == HELP_TEXT, line
        else:
            assert starts(reply.lines, expected), (line, reply.lines)
        assert reply.close == (line == "QUIT"), line
    assert car.clears == 1 and car.audits == ["CLEAR_DTC done, 0 stored codes left"]
    asked = list(car.asked)  # by DTC and CLEAR_DTC
    for word in ("NOPE", "QUERY_COMMAND>>RPM", "GET_DTC", "GET_COMMAND_LIST",
                 "RESTART_DATA_MANAGER", "QUERY_STATUS>>FUEL_STATUS"):
        assert s.handle(word).lines == [
            f"ERR unknown command {word.split('>>')[0]!r}; HELP lists them"], word
    assert car.asked == asked and car.reconnects == 0  # the original's commands: not here


def test_the_original_commands_answer_after_the_bare_secret():
    car, s = session()
    assert s.handle(SECRET).lines == [] and s.legacy
    for line, expected in LEGACY_COMMANDS.items():
        assert s.handle(line).lines == expected, line
    assert car.asked == [("query", "RPM"), ("query", "FUEL_STATUS"),
                         ("read_dtcs", "stored"), ("clear_dtcs", "")]
    assert car.reconnects == 1 and car.audits == ["CLEAR_DTC (legacy command)"]
    assert s.handle("NOPE").lines == ["INVALID COMMAND"]
    # The newer commands work in such a session too.
    for line in ("GET RPM", "LIST", "STATUS", "WATCH RPM", "UNWATCH", "QUIT"):
        assert starts(s.handle(line).lines, MODERN[line]), line


def test_before_login_only_auth_help_and_quit_are_answered():
    every = [*MODERN, *LEGACY_COMMANDS, "AUTH", "NOPE", "get rpm", "quit"]
    answered = []
    for line in every:
        car, s = session()
        s.handle("HELP")  # not the first message: no bare-secret login
        reply = s.handle(line)
        if reply.lines != ["ERR not authenticated: AUTH <secret> first"]:
            answered.append(line)
        assert not s.authenticated and car.clears == 0 and car.asked == [], line
    assert answered == ["AUTH x", "HELP", "QUIT", "AUTH", "quit"]


def test_every_command_word_is_no_bare_secret():
    """A first message that is a command word, in any case, is that command, never a
    guess at the secret: only other words are checked as the original's bare secret."""
    for word in ["AUTH", "HELP", "QUIT", "LIST", "GET", "ALL", "POSITION", "STATUS", "DTC",
                 "CLEAR_DTC", "WATCH", "UNWATCH", "JSON", "QUERY_COMMAND>>RPM",
                 "QUERY_STATUS>>X", "GET_DTC", "GET_COMMAND_LIST", "RESTART_DATA_MANAGER"]:
        _, s = session()
        reply = s.handle(word.lower())
        assert not reply.auth_failed and reply.lines != ["ERR wrong secret"], word
    _, s = session()
    assert s.handle("SOMETHING_ELSE").auth_failed


COMMANDS = st.sampled_from([
    "AUTH wrong", f"AUTH {SECRET}", SECRET, "HELP", "LIST", "GET RPM", "GET NOPE", "ALL",
    "POSITION", "STATUS", "DTC", "CLEAR_DTC", "clear_dtc", "WATCH RPM 3", "UNWATCH",
    "JSON on", "JSON off", "QUERY_COMMAND>>RPM", "GET_DTC", "RESTART_DATA_MANAGER",
    "GET_COMMAND_LIST", "QUIT", "", "AUTH HMAC 00", "\x00\xff garbage", "GET",
])


class SessionMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.car, self.conversation = session()
        self.closed = False

    @rule(line=st.one_of(COMMANDS, st.text(max_size=60)))
    def send(self, line):
        if self.closed:
            return
        was_authenticated = self.conversation.authenticated
        clears_before = self.car.clears
        reply = self.conversation.handle(line)
        if self.car.clears != clears_before:
            assert was_authenticated, "CLEAR_DTC reached the car without a login"
        if reply.close:
            self.closed = True
        if reply.lines and not self.conversation.legacy and line.strip():
            last = reply.lines[-1]
            assert last.startswith(("OK", "ERR", '{"ok"')), reply.lines

    @invariant()
    def never_cleared_unauthenticated(self):
        if not self.conversation.authenticated:
            assert self.car.clears == 0


TestSessionMachine = SessionMachine.TestCase
TestSessionMachine.settings = settings(max_examples=300, stateful_step_count=30,
                                       deadline=None)


# GNSS values under the record header's names.

FIX = Fix(time_of_day=clock_time(12, 35, 19), date=date(1994, 3, 23), lat=48.1173,
          lon=11.516667, alt=545.4, speed=11.52, track=84.4, mode=3, quality="GPS", sats=8,
          hdop=0.9)


def arrived(fix: Fix) -> Fix:
    """The fix as the reader publishes it: stamped with its arrival, now."""
    return replace(fix, mono=time.monotonic())
HEADER = RowFormat(",").header(GNSS_COLUMNS).strip()  # as a record file writes it
HEADER_NAMES = [h.split(" (")[0] for h in HEADER.split(",")]  # 'LATITUDE (deg)' -> LATITUDE


def logged_in(**kw):
    car, s = session(**kw)
    s.handle(f"AUTH {SECRET}")
    return car, s


def test_get_knows_every_gnss_column_of_the_record_file_by_its_header_name():
    car, s = logged_in()
    publish_fix(car.state, arrived(FIX))
    assert HEADER_NAMES[:3] == ["GNSS_TIME", "LATITUDE", "LONGITUDE"]
    reply = s.handle("GET " + " ".join(n.lower() for n in HEADER_NAMES))  # any case
    assert reply.lines[-1] == "OK"
    assert [ln.split()[0] for ln in reply.lines[:-1]] == HEADER_NAMES
    assert re.fullmatch(r"LATITUDE 48\.1173 deg age=\d+\.\ds", reply.lines[1])
    assert reply.lines[0].startswith("GNSS_TIME 1994-03-23T12:35:19.000Z UTC age=")
    assert reply.lines[6].startswith("FIX_MODE 3 age=")
    mixed = s.handle("get Rpm Latitude")
    assert mixed.lines[0].startswith("RPM 812.5 rpm") and mixed.lines[-1] == "OK"
    s.handle("JSON on")
    value = json.loads(s.handle("GET LONGITUDE").lines[0])
    assert value == {"name": "LONGITUDE", "value": 11.516667, "unit": "deg",
                     "age": value["age"]}


def test_gnss_values_are_the_cells_the_recorder_writes():
    car, s = logged_in()
    publish_fix(car.state, arrived(FIX))
    view = car.state.snapshot()
    columns = view.declared()
    assert [c.name for c in columns] == ["RPM", "SPEED"] + HEADER_NAMES
    cells = row_cells(view, columns, datetime.now(timezone.utc), 1e9)[1:]
    s.handle("JSON on")
    got = s.handle("GET " + " ".join(c.name for c in columns)).lines[:-1]
    assert [json.loads(line)["value"] for line in got] == cells
    assert [json.loads(line)["unit"] for line in got] == [c.unit for c in columns]


def test_get_a_gnss_value_without_a_fix_says_so():
    car, s = logged_in()
    assert s.handle("GET LATITUDE").lines == ["ERR no value LATITUDE (no GNSS fix yet)"]
    reply = s.handle("GET RPM latitude NOPE")
    assert reply.lines[0].startswith("RPM 812.5 rpm")
    assert reply.lines[-1] == "ERR unknown value NOPE; no value LATITUDE (no GNSS fix yet)"
    car.state.set_link("gnss", DISABLED)
    assert s.handle("GET ALTITUDE").lines == ["ERR no value ALTITUDE (GNSS is off)"]
    # A fix without a position: an empty value, as for an engine value without one.
    publish_fix(car.state, Fix(time_of_day=clock_time(1, 2, 3), mode=MODE_NONE, sats=2,
                           mono=time.monotonic()))  # arrived now
    reply = s.handle("GET LATITUDE SATELLITES")
    assert re.fullmatch(r"LATITUDE - deg age=\d+\.\ds", reply.lines[0])
    assert reply.lines[1].startswith("SATELLITES 2 count") and reply.lines[-1] == "OK"


def test_list_all_and_watch_include_the_gnss_values():
    car, s = logged_in()
    before = s.handle("LIST").lines
    assert before == ["RPM rpm", "SPEED km/h", "OK 2 values"]
    publish_fix(car.state, arrived(FIX))
    listed = s.handle("LIST").lines
    assert listed[:2] == before[:2]
    assert listed[2:-1] == [f"{c.name} {c.unit}".rstrip() for c in GNSS_COLUMNS]
    assert listed[-1] == f"OK {2 + len(GNSS_COLUMNS)} values"
    everything = s.handle("ALL").lines
    assert any(ln.startswith("LATITUDE 48.1173 deg") for ln in everything)
    assert s.handle("WATCH latitude hdop 2").lines[-1].startswith("OK watching 2 values")
    assert s.watch_line() == "WATCH LATITUDE=48.1173 HDOP=0.9"


def test_legacy_query_command_answers_gnss_values_from_the_fix():
    car, s = session(connected=False)  # the car is not needed for a position
    s.handle(SECRET)
    assert s.handle("QUERY_COMMAND>>LATITUDE").lines == ["None"]
    publish_fix(car.state, arrived(FIX))
    assert s.handle("QUERY_COMMAND>>LATITUDE").lines == ["48.1173 deg"]
    assert s.handle("QUERY_COMMAND>>satellites").lines == ["8 count"]
    assert s.handle("QUERY_COMMAND>>RPM").lines == ["DATA MANAGER NOT AVAILABLE"]


# Counts in replies.

def test_replies_with_a_count_of_one_are_singular():
    car, s = logged_in()
    assert s.handle("WATCH RPM 2").lines == ["OK watching 1 value at 2 Hz; UNWATCH stops"]
    assert s.handle("WATCH RPM SPEED").lines == [
        "OK watching 2 values at 1 Hz; UNWATCH stops"]
    car.state = SharedState()
    car.state.update_values({"RPM": (800, "rpm")}, origin="obd")
    assert s.handle("LIST").lines[-1] == "OK 1 value"
    assert s.handle("ALL").lines[-1] == "OK 1 value"
    car.left_after_clear = 1
    assert s.handle("CLEAR_DTC").lines == ["OK trouble codes cleared; 1 stored code left"]
    assert car.audits[-1] == "CLEAR_DTC done, 1 stored code left"
    car.left_after_clear = 2
    assert s.handle("CLEAR_DTC").lines == ["OK trouble codes cleared; 2 stored codes left"]


# The failed-login budget, as the session sees it.

class Budgeted(Car):
    """A backend whose failed-login budget the test sets: `tries` left, and the calls."""

    def __init__(self, tries: int):
        super().__init__()
        self.tries = tries
        self.taken = 0
        self.given_back = 0

    def try_login(self):
        if self.tries <= 0:
            return False
        self.tries -= 1
        self.taken += 1
        return True

    def give_back_login(self):
        self.tries += 1
        self.given_back += 1


REFUSED = "ERR too many failed logins from your address, try again later"


def budgeted(tries: int):
    car = Budgeted(tries)
    return car, Conversation(car, SECRET, "c0ffee", "ECCM test")


@pytest.mark.parametrize("attempt", [f"AUTH {SECRET}", "AUTH wrong",
                                     "AUTH HMAC " + hmac_answer(SECRET, "c0ffee"), SECRET,
                                     "wrong bare secret"])
def test_over_the_budget_nothing_is_checked_and_the_connection_ends(attempt):
    car, s = budgeted(0)
    reply = s.handle(attempt)
    assert reply.lines == [REFUSED] and reply.close and reply.auth_refused
    assert not reply.auth_failed and not s.authenticated and car.given_back == 0


def test_every_check_takes_a_try_and_a_right_secret_gives_it_back():
    car, s = budgeted(2)
    assert s.handle("AUTH wrong").lines == ["ERR wrong secret"]
    assert (car.taken, car.given_back, car.tries) == (1, 0, 1)
    assert s.handle(f"AUTH {SECRET}").lines == ["OK authenticated"]
    assert (car.taken, car.given_back, car.tries) == (2, 1, 1)
    car, s = budgeted(1)
    assert s.handle(SECRET).lines == [] and s.legacy  # the original's bare secret
    assert (car.taken, car.given_back) == (1, 1)


def test_lines_that_check_no_secret_take_no_try():
    car, s = budgeted(0)
    for line in ("HELP", "GET RPM", "AUTH", "AUTH   ", "", "   ", "STATUS"):
        reply = s.handle(line)
        assert not reply.auth_refused and not reply.auth_failed and not reply.close, line
    assert s.handle("AUTH").lines == ["ERR AUTH needs the secret: AUTH <secret>"]
    assert car.taken == 0


def test_blank_lines_before_the_bare_secret_are_not_its_first_message():
    """A client that sends an empty line first (a stray line end) is not taken for a wrong
    bare secret, and can still log in the original way."""
    car, s = budgeted(5)
    assert s.handle("").lines == [] and s.handle("\r").lines == []
    assert car.taken == 0
    assert s.handle(SECRET).lines == [] and s.authenticated and s.legacy


def test_auth_takes_the_secret_as_typed_with_its_inner_blanks():
    """A secret with two spaces or a tab inside (the config accepts it) logged in only as a
    bare first line: AUTH rebuilt it with single spaces."""
    for secret in ("two  spaces inside-0123456789", "a\ttab inside-0123456789"):
        session = Conversation(Car(), secret, "c0ffee", "hello")
        reply = session.handle(f"AUTH {secret}")
        assert reply.lines == ["OK authenticated"], (secret, reply.lines)
        other = Conversation(Car(), secret, "c0ffee", "hello")
        assert other.handle("AUTH " + " ".join(secret.split())).auth_failed
