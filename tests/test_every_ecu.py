"""Every ECU's mode-01 values, each the answer of the ECU it is filed under, on the team's
independent fake adapter (tests/fake_elm.py: written from the ELM327 datasheet and SAE
J1979, not from ECCM)."""
from __future__ import annotations

import time
from typing import Any, Dict, List, Tuple

import obd
import pytest

from eccm.sources.obd.adapter import ElmConnection
from eccm.sources.obd.j1979 import PidSpec

from fake_elm import Ecu, FakeElm

ROUNDS = 10


def connect(fake: FakeElm) -> ElmConnection:
    deadline = time.monotonic() + 10
    while True:  # a K-line init may fail the first attempt
        try:
            return ElmConnection(fake.port, timeout=0.5)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def oracle_value(cmd: Any, value: Any) -> Any:
    """A decoded value in the fake oracle's terms (its own J1979 decoder)."""
    if isinstance(cmd, PidSpec):
        return float(value[cmd.columns[0].name])
    if cmd.name == "STATUS":
        return {"mil": bool(value.MIL), "dtc_count": int(value.DTC_count)}
    return float(value.magnitude)


def sent_by(fake: FakeElm, ecu: str, pid: int) -> List[Any]:
    return [v if isinstance(v, dict) else float(v) for _, v in fake.true_values(ecu, pid)]


def address_of(ecu: Ecu, protocol: int) -> int:
    return ecu.can_id if protocol in (6, 8) else ecu.address


CARS = [
    ("can11", 6, [Ecu.engine(), Ecu.transmission(), Ecu.hybrid()]),
    ("can29", 7, [Ecu.engine(), Ecu.transmission(), Ecu.hybrid()]),
    ("J1850 VPW", 2, [Ecu.engine(), Ecu.transmission()]),
    ("ISO 9141-2", 3, [Ecu.engine(), Ecu.transmission()]),
    ("can11 gearbox answers first", 6,
     [Ecu.engine(latency=0.015), Ecu.transmission(latency=0.002)]),
]


@pytest.mark.parametrize("name,protocol,ecus", CARS, ids=[c[0] for c in CARS])
def test_each_ecus_values_are_its_own(name, protocol, ecus):
    """The same PID (RPM, speed, voltage) has a different value on each ECU of the fake:
    a value filed under the wrong ECU, shifted or padded would be one it never sent."""
    with FakeElm(protocol=protocol, ecus=ecus) as fake:
        conn = connect(fake)
        try:
            by_address = {address_of(e, protocol): e for e in ecus}
            assert set(conn.supported_by) == set(by_address)
            for address, ecu in by_address.items():
                assert conn.supported_by[address] >= set(ecu.data_pids())
            commands = sorted({c for a in by_address for c in conn.commands_of(a)},
                              key=lambda c: c.pid)
            seen: Dict[Tuple[int, Any], List[Any]] = {}
            for _ in range(ROUNDS):
                for group in conn.groups(commands):
                    for address, values in conn.query_group_all(group).items():
                        for cmd, value in values.items():
                            assert cmd.pid in conn.supported_by[address]
                            seen.setdefault((address, cmd), [])
                            if value is not None:
                                seen[address, cmd].append(oracle_value(cmd, value))
            for address, ecu in by_address.items():
                for cmd in conn.commands_of(address):
                    values = seen.get((address, cmd), [])
                    sent = sent_by(fake, ecu.name, cmd.pid)
                    for value in values:
                        assert any(value == s if isinstance(s, dict) else
                                   value == pytest.approx(s) for s in sent), \
                            f"{ecu.name} {cmd.name} = {value}: never sent by it ({name})"
                    assert len(values) >= ROUNDS // 2, \
                        f"{ecu.name} {cmd.name} filled {len(values)} of {ROUNDS} ({name})"
            assert not fake.errors
        finally:
            conn.close()


def test_a_pid_only_the_gearbox_has_is_read_from_the_gearbox():
    """SPEED and the gear ratio on the gearbox alone: asked of every ECU, answered by it."""
    gearbox = Ecu.transmission(pids=(0x01, 0x0D, 0x42))
    with FakeElm(protocol=6, ecus=[Ecu.engine(pids=(0x01, 0x0C, 0x05)), gearbox]) as fake:
        conn = connect(fake)
        try:
            speed = obd.commands.SPEED
            assert speed not in conn.supported_commands
            got = conn.query_group_all([speed, obd.commands.RPM])
            assert set(got) == {0x7E8, 0x7E9}
            assert got[0x7E8] == {obd.commands.RPM: got[0x7E8][obd.commands.RPM]}
            assert float(got[0x7E9][speed].magnitude) in sent_by(fake, "transmission", 0x0D)
        finally:
            conn.close()


def test_poller_fills_every_ecus_columns_and_the_profile_with_true_values(tmp_path):
    """Engine (PIDs past 0x5F too), gearbox and an EV battery ECU answering only
    mode 22 to its own header: every column is filled, each value is one its ECU sent
    (the fake's own decoders say what was sent), and the manifest facts are the car's."""
    import threading

    from eccm.core.state import SharedState
    from eccm.sources.obd.poller import ObdPoller
    from eccm.sources.obd.profile import load

    from conftest import REPO, wait_for
    from fake_elm import decode_battery_did

    engine = Ecu.engine(full=True, stored_dtcs=["P0133"],
                        freeze_frame=("P0133", {0x0C: bytes([0x1A, 0xF8]), 0x05: b"\x7b"}))
    ecus = [engine, Ecu.transmission(), Ecu.battery()]
    profiles = load(REPO / "eccm" / "profiles" / "demo-ev.json")
    with FakeElm(protocol=6, ecus=ecus) as fake:
        state, stop = SharedState(), threading.Event()
        poller = ObdPoller(stop, state, port=fake.port, timeout=0.5, session_timeout=2,
                           max_delay=1.0, profiles=profiles)
        poller.start()
        try:
            run = wait_for(lambda: state.snapshot().engine_run, 20, what="a run")
            names = [c.name for c in run.columns]
            wait_for(lambda: set(names) <= set(state.snapshot().values), 20,
                     what="every column filled: "
                     f"{sorted(set(names) - set(state.snapshot().values))}")
        finally:
            stop.set()
            assert poller.join(10)
        values = state.snapshot().values
        assert "ODOMETER" in names and "ENGINE_REF_TORQUE" in names
        assert "TCM.SPEED" in names and "TCM.RPM" in names and "BECM.PIDS_A" not in names
        assert {"DEMO_HVBAT_SOC", "DEMO_HVBAT_I", "DEMO_CHRG_STATE"} <= set(names)
        # Mode 01: each value is one its own ECU sent.
        checks = {"RPM": ("engine", 0x0C), "ODOMETER": ("engine", 0xA6),
                  "ENGINE_REF_TORQUE": ("engine", 0x63), "TCM.RPM": ("transmission", 0x0C),
                  "TCM.SPEED": ("transmission", 0x0D)}
        for name, (ecu, pid) in checks.items():
            assert values[name].value in [pytest.approx(float(v)) for _, v in
                                          fake.true_values(ecu, pid)], name
        # Mode 22: decoded by the fake's own reference decoder.
        sent = [decode_battery_did(0x0101, data) for _, data in
                fake.true_values("battery", 0x0101, mode=0x22)]
        got = (values["DEMO_HVBAT_SOC"].value, values["DEMO_HVBAT_V"].value,
               values["DEMO_HVBAT_I"].value, values["DEMO_HVBAT_T_MAX"].value)
        assert got in [(s["soc"], s["voltage"], s["current"], s["temp_max"]) for s in sent]
        states = {0: "NOT_CHARGING", 1: "CHARGING_AC", 2: "CHARGING_DC"}
        charging = [decode_battery_did(0x0102, data) for _, data in
                    fake.true_values("battery", 0x0102, mode=0x22)]
        assert (values["DEMO_CHRG_STATE"].value, values["DEMO_CHRG_PLUG"].value) in \
            [(states[c["charging"]], int(c["plug"])) for c in charging]
        # What the car said of itself at the start of the run.
        facts = run.facts
        assert facts["ecus"]["7E8"]["role"] == "engine"
        assert facts["ecus"]["7E8"]["calibration_ids"] == ["FAKECAL-ECM-0001",
                                                           "FAKECAL-ECM-EMS2"]
        assert facts["ecus"]["7E8"]["cvns"] == ["1791BC82", "16E062BE"]
        assert facts["ecus"]["7E9"]["name"] == "TCM-TransmissionCtl"
        assert facts["ecus"]["7E9"]["columns_prefix"] == "TCM."
        assert facts["dtcs"]["stored"] == ["P0133"] and facts["dtcs"]["pending"] == []
        # 1A F8 -> (256 * 26 + 248) / 4 = 1726 rpm; 7B -> 123 - 40 = 83 degC.
        assert facts["freeze_frame"] == {"dtc": "P0133", "values": {
            "RPM": 1726.0, "COOLANT_TEMP": 83}}
        assert "BECM.HYBRID_BATTERY_REMAINING" in names  # its mode 01, named by 09 0A
        # Header switching: every mode-01 request went out functional and unfiltered.
        sent_text = b"".join(d for _, way, _, d in list(fake.wire) if way == "in").decode()
        header, receive_filter, polled_22 = "7DF", "", 0
        for command in sent_text.replace("\n", "").upper().replace(" ", "").split("\r"):
            if command.startswith("ATSH"):
                header = command[4:]
            elif command.startswith("ATCRA"):
                receive_filter = command[5:]
            elif command.startswith("ATAR"):
                receive_filter = ""
            elif command.startswith("01"):
                assert (header, receive_filter) == ("7DF", ""), command
            elif command.startswith("22"):
                polled_22 += 1
                assert (header, receive_filter) == ("7E4", "7EC"), command
        assert polled_22 >= 2
        assert not fake.errors


def demo_profile():
    from eccm.sources.obd.profile import load

    from conftest import REPO
    return load(REPO / "eccm" / "profiles" / "demo-ev.json")


def sent_commands(fake: FakeElm) -> List[str]:
    text = b"".join(d for _, way, _, d in list(fake.wire) if way == "in").decode()
    return [c for c in text.replace("\n", "").upper().replace(" ", "").split("\r") if c]


def refusing(conn: ElmConnection, prefix: str) -> List[str]:
    """The adapter answers '?' to AT commands starting with `prefix` (an older ELM327);
    the list fills with the commands refused."""
    from eccm.sources.obd.link import Answer
    real = conn.link.command
    refused: List[str] = []

    def command(text, timeout=None):
        if text.upper().startswith(prefix):
            refused.append(text)
            return Answer(["?"], True)
        return real(text, timeout)
    conn.link.command = command
    return refused


def test_an_adapter_without_a_receive_filter_still_reads_the_profile_by_sender():
    """An ELM327 before v1.4b has no ATCRA: the answers are told apart by their sender,
    the connection stays (no reconnect loop), and ATCRA is not asked again."""
    with FakeElm(protocol=6, ecus=[Ecu.engine(), Ecu.transmission(), Ecu.battery()]) as fake:
        conn = connect(fake)
        try:
            refused = refusing(conn, "ATCRA")
            (cells, charging) = demo_profile()[0].commands
            for _ in range(2):
                got = conn.query_profile([cells, charging])
                assert {"DEMO_HVBAT_SOC", "DEMO_CHRG_STATE"} <= set(got)
                sent = [decode_battery(data) for _, data in
                        fake.true_values("battery", 0x0101, mode=0x22)]
                assert got["DEMO_HVBAT_SOC"] in [s["soc"] for s in sent]
            assert not conn.profiles_off
            rpm = conn.query_group_all([obd.commands.RPM])
            assert rpm[0x7E8][obd.commands.RPM] is not None  # the OBD header is back
            assert rpm[0x7E9][obd.commands.RPM] is not None
            assert refused == ["ATCRA7EC"]  # asked once, never again
        finally:
            conn.close()


def decode_battery(data: bytes) -> dict:
    from fake_elm import decode_battery_did
    return decode_battery_did(0x0101, data)


def test_an_adapter_that_refuses_the_header_turns_profiles_off_not_the_car():
    with FakeElm(protocol=6, ecus=[Ecu.engine(), Ecu.battery()]) as fake:
        conn = connect(fake)
        try:
            refusing(conn, "ATSH")
            assert conn.query_profile(list(demo_profile()[0].commands)) == {}
            assert "refused the header 7E4" in conn.profiles_off
            assert conn.query_profile(list(demo_profile()[0].commands)) == {}
            assert conn.query_group([obd.commands.RPM])[obd.commands.RPM] is not None
        finally:
            conn.close()
        assert not any(c.startswith("22") for c in sent_commands(fake))


def test_a_request_nobody_answers_is_counted():
    from eccm.sources.obd.profile import ProfileCommand
    (cells, _) = demo_profile()[0].commands
    nobody = ProfileCommand(header=0x7E5, receive=0x7ED, service=cells.service, pid=cells.pid,
                            period=1.0, signals=cells.signals)
    with FakeElm(protocol=6, ecus=[Ecu.engine(), Ecu.battery()]) as fake:
        conn = connect(fake)
        try:
            assert conn.query_profile([nobody]) == {}
            assert conn.anomalies["profile_no_answer"] == 1
        finally:
            conn.close()


def run_poller(fake: FakeElm, profiles, until, what: str):
    import threading

    from eccm.core.state import SharedState
    from eccm.sources.obd.poller import ObdPoller

    from conftest import wait_for
    state, stop = SharedState(), threading.Event()
    poller = ObdPoller(stop, state, port=fake.port, timeout=0.5, session_timeout=2,
                       max_delay=1.0, profiles=profiles)
    poller.start()
    try:
        wait_for(lambda: until(state), 20, what=what)
    finally:
        stop.set()
        assert poller.join(10)
    return state


def test_a_profile_of_many_requests_never_holds_the_fast_tier_up():
    """OBDb files ask ~100 DIDs of one ECU every 10 s: between two mode-01 requests at
    most PROFILE_BATCH profile requests go out, so the engine's values keep coming."""
    from dataclasses import replace

    from eccm.sources.obd.poller import PROFILE_BATCH
    from eccm.sources.obd.profile import Profile
    (cells, _) = demo_profile()[0].commands
    many = tuple(replace(cells, signals=tuple(replace(s, id=f"{s.id}_{n}")
                                              for s in cells.signals))
                 for n in range(40))
    profile = Profile("many.json", many)
    with FakeElm(protocol=6, ecus=[Ecu.engine(), Ecu.battery()]) as fake:
        run_poller(fake, [profile], lambda state: "DEMO_HVBAT_SOC_39" in state.snapshot().values,
                   "all 40 requests answered")
    run = 0
    longest = 0
    for command in sent_commands(fake):
        if command.startswith("22"):
            run += 1
            longest = max(longest, run)
        elif command.startswith("01"):
            run = 0
    assert 1 <= longest <= PROFILE_BATCH


def test_an_11_bit_profile_is_not_sent_on_a_29_bit_car(caplog):
    import logging
    caplog.set_level(logging.WARNING)
    with FakeElm(protocol=7, ecus=[Ecu.engine(), Ecu.battery()]) as fake:
        state = run_poller(fake, demo_profile(), lambda state: "RPM" in state.snapshot().values,
                           "the engine's values")
    assert not any(c.startswith(("ATSH", "ATCP", "22")) for c in sent_commands(fake))
    assert "2 requests of the vehicle profiles use 11-bit headers" in caplog.text
    assert "DEMO_HVBAT_SOC" not in [c.name for c in state.snapshot().declared()]


def test_a_receive_filter_refused_for_the_second_ecu_of_a_batch_is_not_left_on():
    """ATCRA taken for the gearbox, then refused for the battery (a reply lost on a
    Bluetooth link reads the same): the gearbox's filter is cleared, so the engine's
    mode-01 answers are seen again (a filter left on would freeze them)."""
    from dataclasses import replace

    from eccm.sources.obd.link import Answer
    (cells, _) = demo_profile()[0].commands
    gearbox = replace(cells, header=0x7E1, receive=0x7E9)
    with FakeElm(protocol=6, ecus=[Ecu.engine(), Ecu.transmission(), Ecu.battery()]) as fake:
        conn = connect(fake)
        try:
            real = conn.link.command
            refused = []

            def command(text, timeout=None):
                if text == "ATCRA7EC" and not refused:
                    refused.append(text)
                    return Answer(["?"], True)
                return real(text, timeout)
            conn.link.command = command
            got = conn.query_profile([gearbox, cells])
            assert refused and "DEMO_HVBAT_SOC" in got  # by its sender alone
            rpm = conn.query_group_all([obd.commands.RPM])
            assert rpm[0x7E8][obd.commands.RPM] is not None
        finally:
            conn.close()


def test_profile_requests_that_fall_behind_their_periods_are_said(caplog):
    import logging
    from dataclasses import replace

    from eccm.sources.obd.profile import Profile
    caplog.set_level(logging.WARNING)
    (cells, _) = demo_profile()[0].commands
    many = tuple(replace(cells, period=0.01, signals=tuple(
        replace(s, id=f"{s.id}_{n}") for s in cells.signals)) for n in range(12))
    with FakeElm(protocol=6, ecus=[Ecu.engine(), Ecu.battery()]) as fake:
        run_poller(fake, [Profile("fast.json", many)],
                   lambda state: "fall behind" in caplog.text, "the warning")
    assert caplog.text.count("fall behind their periods") == 1
