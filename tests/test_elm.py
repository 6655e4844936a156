"""ECCM's ELM327 driver: packing, response counts, speed switch, each with its fallback;
decoded values equal single-PID requests."""
from __future__ import annotations

import obd
import pytest

from eccm.elm import ElmConnection, bare_messages, count_frames, split_packed
from eccm.obd_poller import DEFAULT_FAST, schedule
from eccm.simcar import PROFILES, RICH_PIDS, AdapterProfile, SimulatedAdapter, SimulatedCar


@pytest.fixture
def adapter_factory():
    made = []

    def make(profile=None, pids=None):
        car = SimulatedCar(clock=lambda: 42.0, pids=list(pids or RICH_PIDS))
        adapter = SimulatedAdapter(car, latency=0.0, profile=profile).start()
        made.append(adapter)
        return adapter
    yield make
    for adapter in made:
        adapter.stop()


def engine_commands(conn):
    return sorted((c for c in conn.supported_commands if c.mode == 1 and c.pid % 0x20
                   and c.name not in ("O2_SENSORS", "O2_SENSORS_ALT")), key=lambda c: c.pid)


def test_split_packed():
    data = bytes([0x41, 0x0C, 0x1A, 0xF8, 0x0D, 0x32, 0x05, 0x7B])
    assert split_packed(data, [0x0C, 0x0D, 0x05]) == {
        0x0C: bytes([0x41, 0x0C, 0x1A, 0xF8]), 0x0D: bytes([0x41, 0x0D, 0x32]),
        0x05: bytes([0x41, 0x05, 0x7B])}
    assert split_packed(data, [0x0D]) is None          # an unrequested PID first
    assert split_packed(bytes([0x7F, 0x01, 0x12]), [0x0C]) is None  # negative reply
    assert split_packed(bytes([0x41, 0x0C, 0x1A]), [0x0C]) is None  # cut short


# Replies as an ELM327 prints them with headers off (ATH0), spaces on and off; the
# multi-frame one is the datasheet's layout: byte count, then 'n:' per CAN frame.
PACKED_BARE = ["014", "0: 41 0C 0F A0 0D 32", "1: 05 7B 11 40 04 3F 0F",
               "2: 40 00 00 00 00 00 00"]


def test_bare_messages_reassemble_multi_frame_replies():
    (message,) = bare_messages(PACKED_BARE)
    assert len(message) == 0x14 and message[:6] == bytes.fromhex("410C0FA00D32")
    assert split_packed(message, [0x0C, 0x0D, 0x05, 0x11, 0x04, 0x0F]) == {
        0x0C: bytes.fromhex("410C0FA0"), 0x0D: bytes.fromhex("410D32"),
        0x05: bytes.fromhex("41057B"), 0x11: bytes.fromhex("411140"),
        0x04: bytes.fromhex("41043F"), 0x0F: bytes.fromhex("410F40")}
    assert bare_messages(["410C0FA0"]) == [bytes.fromhex("410C0FA0")]
    assert bare_messages(["410C0FA0", "410C0FA4"]) == [bytes.fromhex("410C0FA0"),
                                                       bytes.fromhex("410C0FA4")]
    assert bare_messages(PACKED_BARE[:3]) == []            # a frame missing: no message
    assert bare_messages(["NO DATA"]) == [] and bare_messages(["?"]) == []
    assert bare_messages(["7F0112"]) == [bytes.fromhex("7F0112")]


def test_frames_counted_with_headers_on_and_off():
    assert count_frames(PACKED_BARE) == 3  # the byte-count line is not a frame
    assert count_frames(["7E8100E410C0FA00D", "7E8210511040F4000", "7E822000000"]) == 3
    assert count_frames(["410C0FA0"]) == 1 and count_frames(["NO DATA", ">"]) == 0


def test_packed_values_equal_single_pid_requests(adapter_factory):
    conn = ElmConnection(adapter_factory().port)
    try:
        cmds = engine_commands(conn)
        assert len(cmds) >= 30 and conn.can_pack
        packed = conn.query_values(cmds)
        assert len(conn.groups(cmds)) == -(-len(cmds) // 6)
        assert conn.single_ecu and not conn.headers  # multi-frame replies read bare
        conn.pack = False
        single = conn.query_values(cmds)
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
        first = conn.query_values(cmds)
        assert not conn.can_pack  # learnt from the rejected packed requests
        assert all(first[c] is not None for c in cmds)
        assert len(conn.groups(cmds)) == len(cmds)
    finally:
        conn.close()


def test_response_count_learnt_and_dropped_where_it_breaks(adapter_factory):
    adapter = adapter_factory(AdapterProfile("no-digit", count_digit=True))
    conn = ElmConnection(adapter.port)
    try:
        conn.query(obd.commands.RPM)
        assert conn.hints.get("single") == 1
        adapter.responder.profile = AdapterProfile("breaks", count_digit=False)
        original = adapter.responder._obd

        def reject_digit(cmd):  # an adapter answering '?' to '010D1'
            return ["?"] if len(cmd) % 2 else original(cmd)
        adapter.responder._obd = reject_digit
        assert conn.query(obd.commands.SPEED).value is not None
        assert "010D" in conn.no_hint
    finally:
        conn.close()


def test_speed_switch_and_fallback(adapter_factory):
    fast = adapter_factory(PROFILES["obdlink"])
    conn = ElmConnection(fast.port, fast_baudrate=2_000_000)
    try:
        assert fast.responder.baudrate == 2_000_000 and conn.link.ser.baudrate == 2_000_000
        assert conn.query(obd.commands.RPM).value is not None
    finally:
        conn.close()
    slow = adapter_factory(PROFILES["clone"])
    conn = ElmConnection(slow.port, fast_baudrate=2_000_000)
    try:
        assert slow.responder.baudrate == 38400
        assert conn.query(obd.commands.RPM).value is not None
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


def test_a_second_ecu_turns_headers_back_on(adapter_factory):
    """Headers off hides who answers: when two replies come, ask again with headers."""
    adapter = adapter_factory()
    conn = ElmConnection(adapter.port)
    try:
        cmds = engine_commands(conn)
        expected = conn.query_values(cmds)
        assert conn.single_ecu
        responder = adapter.responder
        original = responder._obd

        def two_ecus(cmd):  # a gearbox ECU answering as well, printed without headers
            lines = original(cmd)
            return lines + lines if not responder.headers and cmd.startswith("01") else lines
        responder._obd = two_ecus
        again = conn.query_values(cmds)
        assert not conn.single_ecu and conn.headers
        assert conn.can_pack  # the second ECU is no reason to stop packing
        for cmd in cmds:
            if cmd.name != "STATUS":
                assert again[cmd] == expected[cmd], cmd.name
    finally:
        conn.close()
