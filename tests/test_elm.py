"""ECCM's ELM327 driver: packing, response counts, speed switch, each with its fallback;
decoded values equal single-PID requests."""
from __future__ import annotations

import obd
import pytest

from eccm.sources.obd.adapter import ElmConnection
from eccm.sources.obd.poller import DEFAULT_FAST, schedule
from eccm.sim.car import PROFILES, RICH_PIDS, AdapterProfile, SimulatedAdapter, SimulatedCar

from conftest import query_values


@pytest.fixture
def adapter_factory():
    made = []

    def make(profile=None, pids=None):
        car = SimulatedCar(clock=lambda: 42.0, pids=list(pids or RICH_PIDS), tcm=False,
                           battery_ecu=False)  # a lone engine
        adapter = SimulatedAdapter(car, latency=0.0, profile=profile).start()
        made.append(adapter)
        return adapter
    yield make
    for adapter in made:
        adapter.stop()


def engine_commands(conn):
    return sorted((c for c in conn.supported_commands if c.mode == 1 and c.pid % 0x20
                   and c.name not in ("O2_SENSORS", "O2_SENSORS_ALT")), key=lambda c: c.pid)


def test_packed_values_equal_single_pid_requests(adapter_factory):
    conn = ElmConnection(adapter_factory().port)
    try:
        cmds = engine_commands(conn)
        assert len(cmds) >= 30 and conn.can_pack
        packed = query_values(conn, cmds)
        assert len(conn.groups(cmds)) == -(-len(cmds) // 6)
        assert conn.ecus == {0x7E8} and conn.engine == 0x7E8
        conn.pack = False
        single = query_values(conn, cmds)
        for cmd in cmds:
            assert packed[cmd] is not None, cmd.name
            if cmd.name in ("STATUS",):
                assert packed[cmd].DTC_count == single[cmd].DTC_count
            else:
                assert packed[cmd] == single[cmd], cmd.name
    finally:
        conn.close()


def test_clone_that_rejects_packing_falls_back_to_single(adapter_factory):
    adapter = adapter_factory(AdapterProfile("clone", packing=False))
    conn = ElmConnection(adapter.port)
    try:
        cmds = engine_commands(conn)
        first = query_values(conn, cmds)
        assert not conn.can_pack  # learnt from the rejected packed requests
        assert all(first[c] is not None for c in cmds)
        assert len(conn.groups(cmds)) == len(cmds)
    finally:
        conn.close()


def test_response_count_learnt_and_refused_digit_dropped(adapter_factory):
    adapter = adapter_factory(AdapterProfile("digit", count_digit=True))
    conn = ElmConnection(adapter.port)
    try:
        conn.query(obd.commands.RPM)
        assert conn._hints.get("single:7E8") == 1
        original = adapter.responder._obd

        def reject_digit(cmd):  # an adapter answering '?' to '010D1'
            return ["?"] if len(cmd) % 2 else original(cmd)
        adapter.responder._obd = reject_digit
        assert conn.query(obd.commands.SPEED) is not None
        assert conn._digit  # one refusal may be one garbled request
        assert conn.query(obd.commands.RPM) is not None
        assert not conn._digit  # twice: the session goes on without digits
        assert conn.query(obd.commands.RPM) is not None
    finally:
        conn.close()


def test_speed_switch_and_fallback(adapter_factory):
    fast = adapter_factory(PROFILES["obdlink"])
    conn = ElmConnection(fast.port, fast_baudrate=2_000_000)
    try:
        assert fast.responder.baudrate == 2_000_000 and conn.link.baudrate == 2_000_000
        assert conn.query(obd.commands.RPM) is not None
    finally:
        conn.close()
    slow = adapter_factory(PROFILES["clone"])
    conn = ElmConnection(slow.port, fast_baudrate=2_000_000)
    try:
        assert slow.responder.baudrate == 38400
        assert conn.query(obd.commands.RPM) is not None
    finally:
        conn.close()


def test_schedule_tiers():
    cmds = [obd.commands[1][p] for p in RICH_PIDS]
    fast = [c for c in cmds if c.name in DEFAULT_FAST]
    slow = [c for c in cmds if c.name not in DEFAULT_FAST]
    single = schedule(cmds, DEFAULT_FAST, 20, 1)
    assert all(set(fast) <= set(cycle) for cycle in single)
    assert sorted(c.pid for cycle in single for c in cycle if c in slow) == \
        sorted(c.pid for c in slow)
    assert len(single) <= 20
    packed = schedule(cmds, DEFAULT_FAST, 20, 6)
    assert all(len(cycle) % 6 == 0 or cycle is packed[-1] for cycle in packed)
    assert {c for cycle in packed for c in cycle} == set(cmds)


def test_a_second_ecu_is_told_apart_by_its_header(adapter_factory):
    """A gearbox ECU that starts answering mid-session: its replies never become the
    engine's values, and packing goes on."""
    adapter = adapter_factory()
    conn = ElmConnection(adapter.port)
    try:
        cmds = engine_commands(conn)
        expected = query_values(conn, cmds)
        responder = adapter.responder
        original = responder._obd

        def two_ecus(cmd):  # 7E9 answers first, with other numbers
            lines = original(cmd)
            if not cmd.startswith("01") or not lines or not lines[0].startswith("7E8"):
                return lines
            other = [("7E9" + ln[3:]).replace("41", "41", 1) for ln in lines]
            other = [ln[:-2] + f"{(int(ln[-2:], 16) ^ 0x5A):02X}" for ln in other]
            return other + lines
        responder._obd = two_ecus
        again = query_values(conn, cmds)
        assert 0x7E9 in conn.ecus and conn.can_pack
        for cmd in cmds:
            if cmd.name != "STATUS":
                assert again[cmd] == expected[cmd], cmd.name
    finally:
        conn.close()
