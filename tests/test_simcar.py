"""The built-in simulated ELM327: the pure responder, and python-OBD talking to it."""
from __future__ import annotations

from typing import Dict, List

import obd
import pytest

from eccm.sim.car import (AdapterProfile, ElmResponder, SimulatedCar, drive_distance,
                          drive_speed, drive_state, encode_dtc)


def make(**fields):
    """The full demo car (engine 7E8, transmission 7E9, battery ECU 7EC) at t = 0."""
    car = SimulatedCar(clock=lambda: 0.0, **fields)
    return car, ElmResponder(car)


def lone_engine():
    """The engine alone, as the timing benchmarks use it."""
    return make(tcm=False, battery_ecu=False)


def lines(reply: str):
    assert reply.endswith(">")
    return [ln for ln in reply[:-1].split("\r") if ln]


def test_echo_and_headers_follow_at_commands():
    _, elm = lone_engine()
    assert lines(elm.handle("ATZ")) == ["ATZ", "ELM327 v1.5"]
    assert lines(elm.handle("ATE0")) == ["ATE0", "OK"]  # the echo of ATE0 itself
    assert lines(elm.handle("ATH1")) == ["OK"]
    assert lines(elm.handle("0100"))[0] == "SEARCHING..."
    assert lines(elm.handle("010D")) == ["7E8 03 41 0D 00"]
    assert lines(elm.handle("ATS0")) == ["OK"]
    assert lines(elm.handle("010D1")) == ["7E803410D00"]  # response-count digit accepted
    assert lines(elm.handle("\x7f\x7f")) == ["?"]
    assert lines(elm.handle("ATDPN")) == ["A6"]


def test_supported_pid_bitmaps_chain():
    car, elm = lone_engine()
    elm.handle("ATE0")
    first = lines(elm.handle("0100"))[-1].split()
    bits = int("".join(first[2:6]), 16)
    supported = [pid for pid in range(1, 33) if bits >> (32 - pid) & 1]
    assert 0x0C in supported and 0x0D in supported and 0x05 in supported
    assert 0x20 in supported  # more PIDs in the next map
    assert set(supported) - {0x20} == {p for p in car.supported() if p <= 0x20}


def test_dtcs_carry_the_j1979_count_byte_and_clear():
    car, elm = lone_engine()
    car.stored_dtcs = ["P0301", "C0123"]
    car.pending_dtcs = ["P0171"]
    elm.handle("ATE0")
    elm.handle("0100")
    assert lines(elm.handle("03")) == ["43 02 03 01 41 23"]
    car.stored_dtcs = ["P0301", "C0123", "U0100"]  # 8 bytes: ISO-TP multi-frame
    assert lines(elm.handle("03")) == ["008", "0: 43 03 03 01 41 23", "1: C1 00"]
    assert lines(elm.handle("07")) == ["47 01 01 71"]
    assert lines(elm.handle("04")) == ["44"]
    assert lines(elm.handle("03")) == ["43 00"]


def test_multiframe_vin_without_headers():
    car, elm = make()
    elm.handle("ATE0")
    elm.handle("0100")
    out = lines(elm.handle("0902"))
    assert out[0] == "014"  # 20 bytes
    assert out[1].startswith("0: 49 02 01")


def test_ignition_off_means_no_answer():
    car, elm = make()
    car.ignition = False
    elm.handle("ATE0")
    assert "UNABLE TO CONNECT" in lines(elm.handle("0100"))


def test_encode_dtc():
    assert encode_dtc("P0420") == [0x04, 0x20]
    assert encode_dtc("B1A2F") == [0x9A, 0x2F]


def test_drive_moves_like_a_drive():
    speeds = [drive_speed(t) for t in range(0, 150)]
    assert min(speeds) == 0 and max(speeds) == 90
    assert drive_state(0).rpm < 900  # idling at start
    assert 1500 < drive_state(100).rpm < 4500  # at 90 km/h
    assert drive_state(600).coolant > drive_state(0).coolant + 50  # warms up


def test_python_obd_reads_values_dtcs_and_clears(sim_adapter):
    sim_adapter.car.stored_dtcs = ["P0301", "P0420"]
    conn = obd.OBD(sim_adapter.port, timeout=1)
    try:
        assert conn.status() == obd.OBDStatus.CAR_CONNECTED
        for name in ("RPM", "SPEED", "COOLANT_TEMP", "MAF", "FUEL_RATE"):
            assert conn.supports(obd.commands[name])
            assert not conn.query(obd.commands[name]).is_null()
        codes = conn.query(obd.commands.GET_DTC).value
        assert [c for c, _ in codes] == ["P0301", "P0420"]
        conn.query(obd.commands.CLEAR_DTC)
        assert conn.query(obd.commands.GET_DTC).value == []
        assert sim_adapter.car.stored_dtcs == []
    finally:
        conn.close()


# The full car: engine 7E8, transmission 7E9, traction battery ECU 7EC.

def headers_on(elm: ElmResponder) -> None:
    """Echo off, headers on, protocol found (the first request searches)."""
    elm.handle("ATE0")
    elm.handle("ATH1")
    elm.handle("0100")


def messages(reply_lines: List[str]) -> Dict[str, List[int]]:
    """ISO-TP reassembly of lines printed with headers on: {sender ID: payload}."""
    out: Dict[str, List[int]] = {}
    total: Dict[str, int] = {}
    for line in reply_lines:
        sender, *tokens = line.split()
        data = [int(t, 16) for t in tokens]
        kind = data[0] >> 4
        if kind == 0:       # single frame
            assert sender not in out
            out[sender] = data[1:1 + (data[0] & 0x0F)]
            total[sender] = len(out[sender])
        elif kind == 1:     # first frame
            assert sender not in out
            total[sender] = (data[0] & 0x0F) << 8 | data[1]
            out[sender] = data[2:]
        else:               # consecutive frame
            assert kind == 2 and sender in out
            out[sender] += data[1:]
    for sender, payload in out.items():
        assert len(payload) == total[sender], sender
    return out


def supported_by_bitmaps(elm: ElmResponder, sender: str) -> List[int]:
    """Walk one ECU's 0100, 0120, ... chain (each bit 32 announces the next map)."""
    found, base = [], 0x00
    while True:
        reply = messages(lines(elm.handle(f"01{base:02X}")))[sender]
        assert reply[:2] == [0x41, base]
        bits = int.from_bytes(bytes(reply[2:6]), "big")
        found += [base + i for i in range(1, 33) if bits >> (32 - i) & 1]
        if base + 0x20 not in found:
            return [pid for pid in found if pid % 0x20]
        base += 0x20


def test_functional_0100_answered_by_engine_then_transmission():
    car, elm = make()
    elm.handle("ATE0")
    elm.handle("ATH1")
    out = lines(elm.handle("0100"))
    assert out[0] == "SEARCHING..."
    assert [ln[:3] for ln in out[1:]] == ["7E8", "7E9"]
    assert out[2] == "7E9 06 41 00 80 08 00 01"  # 01, 0D and 'more above 20'
    assert supported_by_bitmaps(elm, "7E8") == sorted(car.supported())
    assert supported_by_bitmaps(elm, "7E9") == [0x01, 0x0D, 0xA4]


def test_engine_bitmaps_chain_up_to_a6():
    car, elm = make()
    headers_on(elm)
    assert {0x62, 0x63, 0xA6} <= set(car.supported())
    for base, more in ((0x40, True), (0x60, True), (0x80, True), (0xA0, False)):
        bitmap = messages(lines(elm.handle(f"01{base:02X}")))["7E8"][2:]
        assert bool(bitmap[3] & 1) == more, hex(base)
    assert lines(elm.handle("0160")) == ["7E8 06 41 60 60 00 00 01",  # 62, 63; more
                                         "7E9 06 41 60 00 00 00 01"]
    assert lines(elm.handle("01A0"))[0] == "7E8 06 41 A0 04 00 00 00"  # A6, the last


def test_packed_request_each_ecu_answers_its_own_pids():
    _, elm = make()
    headers_on(elm)
    # t = 0: standing, 780 rpm (0x0C30 / 4)
    assert lines(elm.handle("010D0C")) == ["7E8 06 41 0D 00 0C 0C 30", "7E9 03 41 0D 00"]
    assert lines(elm.handle("010C")) == ["7E8 04 41 0C 0C 30"]  # the TCM stays silent
    assert lines(elm.handle("01A4")) == ["7E9 06 41 A4 03 00 00 00"]  # engine silent
    assert lines(elm.handle("0105A4")) == ["7E8 03 41 05 3C",  # 20 degC
                                            "7E9 06 41 A4 03 00 00 00"]
    assert lines(elm.handle("01C0")) == ["NO DATA"]


def test_count_digit_counts_frames_of_all_ecus():
    _, elm = make()
    headers_on(elm)
    assert lines(elm.handle("010D0C1")) == ["7E8 06 41 0D 00 0C 0C 30"]  # done after 1
    assert elm.satisfied
    assert len(lines(elm.handle("010D0C2"))) == 2 and elm.satisfied
    assert len(lines(elm.handle("010D0C3"))) == 2 and not elm.satisfied  # waits it out
    assert len(lines(elm.handle("090A3"))) == 4 and elm.satisfied  # the engine's 4 frames
    assert len(lines(elm.handle("090A5"))) == 8 and elm.satisfied  # and the TCM's


def test_lone_engine_timing_is_unchanged_by_the_other_ecus():
    """The benchmarks' car: same reply, same count-digit decision as before the TCM."""
    profile = AdapterProfile("t", 38400, 0.010, 0.002)
    full, alone = (ElmResponder(car, profile) for car in (
        SimulatedCar(clock=lambda: 0.0),
        SimulatedCar(clock=lambda: 0.0, tcm=False, battery_ecu=False)))
    for elm in (full, alone):
        elm.handle("ATE0")
        elm.handle("0100")
    assert alone.handle("010C1") == full.handle("010C1") == "41 0C 0C 30\r\r>"
    assert full.satisfied and alone.satisfied
    reply = alone.handle("010D")
    assert reply == "41 0D 00\r\r>" and alone.wait_after_reply() == 0.030
    both = full.handle("010D")
    assert both == "41 0D 00\r41 0D 00\r\r>"  # the TCM's bytes add to the reply
    assert full.timing(5, len(both)) - alone.timing(5, len(reply)) == \
        pytest.approx((len(both) - len(reply)) * 10 / 38400)


def test_odometer_torque_and_gear_per_j1979():
    now = [0.0]
    car = SimulatedCar(clock=lambda: now[0])
    elm = ElmResponder(car)
    headers_on(elm)
    # A6: (2^24 A + 2^16 B + 2^8 C + D) / 10 km; 0x00075B41 = 7 * 65536 + 0x5B41 =
    # 458752 + 23361 = 482113 -> 48211.3 km at the start.
    assert lines(elm.handle("01A6")) == ["7E8 06 41 A6 00 07 5B 41"]
    # One 150 s loop of the drive: 0.5 * 12 * 50 + 30 * 50 + 0.5 * 15 * 140 + 25 * 90 +
    # 0.5 * 8 * 160 + 20 * 70 + 0.5 * 20 * 70 = 7840 km/h*s = 2.1778 km.
    now[0] = 150.0
    assert abs(drive_distance(150.0) - 7840 / 3600) < 1e-9
    assert lines(elm.handle("01A6")) == ["7E8 06 41 A6 00 07 5B 57"]  # 482135: 48213.5 km
    # 62: A - 125 %; at t = 0 the load is 20 %: torque 0.85 * 20 - 5 = 12 % -> A = 137.
    now[0] = 0.0
    assert lines(elm.handle("0162")) == ["7E8 03 41 62 89"]
    assert lines(elm.handle("0163")) == ["7E8 04 41 63 00 FA"]  # 256 A + B = 250 Nm
    # A4 at t = 100 s: 70 km/h, 4th gear (B bits 7-4), ratio 37 rpm per km/h * 1.95 m *
    # 60 / 1000 / 3.9 = 1.110 -> 1110 = 0x0456.
    now[0] = 100.0
    assert drive_state(100.0).speed == 70
    assert lines(elm.handle("01A4")) == ["7E9 06 41 A4 03 40 04 56"]
    assert lines(elm.handle("010D")) == ["7E8 03 41 0D 46", "7E9 03 41 0D 46"]


def test_battery_ecu_reads_by_identifier_on_its_physical_address():
    car, elm = make()
    headers_on(elm)
    assert lines(elm.handle("220101")) == ["NO DATA"]  # functional: it does not listen
    assert lines(elm.handle("ATSH7E4")) == ["OK"]
    out = lines(elm.handle("220101"))
    assert out == ["7EC 10 0B 62 01 01 00 9D 0F", "7EC 21 36 01 90 41 3E"]
    data = messages(out)["7EC"]
    assert data[:3] == [0x62, 0x01, 0x01] and len(data) == 11
    soc = (data[3] << 8 | data[4]) / 2               # 0x009D = 157 -> 78.5 %
    volts = (data[5] << 8 | data[6]) / 10            # 0x0F36 = 3894 -> 389.4 V
    amps = int.from_bytes(bytes(data[7:9]), "big", signed=True) / 10  # 0x0190 -> 40.0 A
    assert (soc, volts, amps) == (78.5, 389.4, 40.0)  # 20 % load * 2 A; 360 + 0.4 * 78.5
    assert (data[9] - 40, data[10] - 40) == (25, 22)  # - 0.05 * 40 V; cells 24.6, 22.1
    assert lines(elm.handle("220102")) == ["7EC 05 62 01 02 00 02"]  # contactor closed
    assert lines(elm.handle("220105")) == ["7EC 03 7F 22 31"]  # requestOutOfRange
    assert lines(elm.handle("0100")) == ["7EC 03 7F 01 11"]    # serviceNotSupported
    assert lines(elm.handle("03")) == ["7EC 03 7F 03 11"]
    assert lines(elm.handle("090A")) == ["7EC 03 7F 09 11"]
    car.charging = 2  # DC: -150 A, two's complement; plug connected, contactor closed
    data = messages(lines(elm.handle("220101")))["7EC"]
    assert data[7:9] == [0xFA, 0x24]                 # 65536 - 1500
    assert lines(elm.handle("220102")) == ["7EC 05 62 01 02 02 03"]
    elm.handle("ATH0")
    assert lines(elm.handle("220101"))[0] == "00B"   # 11 bytes: ISO-TP multi-frame
    elm.handle("ATH1")
    assert lines(elm.handle("ATSH7DF")) == ["OK"]
    assert [ln[:3] for ln in lines(elm.handle("0100"))] == ["7E8", "7E9"]


def test_request_header_picks_the_ecu():
    _, elm = make()
    headers_on(elm)
    elm.handle("AT SH 7E0")
    assert lines(elm.handle("010D")) == ["7E8 03 41 0D 00"]
    assert lines(elm.handle("220101")) == ["7E8 03 7F 22 11"]  # physical: refused
    elm.handle("ATSH7E1")
    assert lines(elm.handle("010D")) == ["7E9 03 41 0D 00"]
    assert lines(elm.handle("010C")) == ["NO DATA"]
    elm.handle("ATSH7E2")
    assert lines(elm.handle("0100")) == ["NO DATA"]  # nobody there
    assert lines(elm.handle("ATSH7G0")) == ["?"]
    for reset in ("ATD", "ATWS", "ATZ"):
        elm.handle("ATSH7E4")
        elm.handle("ATCRA7EC")
        elm.handle(reset)
        headers_on(elm)
        assert [ln[:3] for ln in lines(elm.handle("010D"))] == ["7E8", "7E9"], reset


def test_receive_filter_shows_matching_senders_only():
    _, elm = make()
    headers_on(elm)
    assert lines(elm.handle("ATCRA7E9")) == ["OK"]
    assert lines(elm.handle("010D0C")) == ["7E9 03 41 0D 00"]
    assert lines(elm.handle("010C")) == ["NO DATA"]
    elm.handle("ATCRA7EX")
    assert [ln[:3] for ln in lines(elm.handle("010D"))] == ["7E8", "7E9"]
    elm.handle("ATSH7E4")
    elm.handle("ATCRA7EC")
    assert [ln[:3] for ln in lines(elm.handle("220101"))] == ["7EC", "7EC"]
    elm.handle("ATCRA7E8")
    assert lines(elm.handle("220101")) == ["NO DATA"]
    elm.handle("ATSH7DF")
    assert lines(elm.handle("ATCRA")) == ["OK"]
    assert len(lines(elm.handle("010D"))) == 2
    elm.handle("ATCRA7E8")
    assert len(lines(elm.handle("010D"))) == 1
    assert lines(elm.handle("ATAR")) == ["OK"]
    assert len(lines(elm.handle("010D"))) == 2
    assert lines(elm.handle("ATCP18")) == ["OK"]


def test_mode09_identification_from_both_ecus():
    _, elm = make()
    headers_on(elm)
    names = messages(lines(elm.handle("090A")))
    assert sorted(names) == ["7E8", "7E9"]
    for sender, name in (("7E8", b"ECM-EngineControl"), ("7E9", b"TCM-TransmissionCtl")):
        assert names[sender][:3] == [0x49, 0x0A, 0x01] and len(names[sender]) == 23
        assert bytes(names[sender][3:]) == name.ljust(20, b"\0")
    cals = messages(lines(elm.handle("0904")))
    assert all(c[:3] == [0x49, 0x04, 0x01] and len(c) == 19 for c in cals.values())
    assert bytes(cals["7E8"][3:]).rstrip(b"\0").decode() != \
        bytes(cals["7E9"][3:]).rstrip(b"\0").decode()
    cvns = messages(lines(elm.handle("0906")))
    assert all(c[:3] == [0x49, 0x06, 0x01] and len(c) == 7 for c in cvns.values())
    bitmaps = messages(lines(elm.handle("0900")))
    assert bitmaps == {"7E8": [0x49, 0x00, 0x54, 0x40, 0x00, 0x00],   # 02 04 06 0A
                       "7E9": [0x49, 0x00, 0x14, 0x40, 0x00, 0x00]}   # 04 06 0A
    assert list(messages(lines(elm.handle("0902")))) == ["7E8"]       # VIN: engine only
    elm.handle("ATH0")
    out = lines(elm.handle("090A"))  # without headers: one reply after the other
    assert [ln for ln in out if not ln[1:2] == ":"] == ["017", "017"]
    text = "".join(ln.split(":")[1] for ln in out if ln[1:2] == ":").replace(" ", "")
    assert "ECM-EngineControl" in bytes.fromhex(text).decode("ascii")
    assert "TCM-TransmissionCtl" in bytes.fromhex(text).decode("ascii")


def test_dtcs_from_both_ecus_and_switched_off_ecus():
    car, elm = make()
    headers_on(elm)
    assert lines(elm.handle("03")) == ["7E8 04 43 01 04 20", "7E9 02 43 00"]
    assert lines(elm.handle("04")) == ["7E8 01 44", "7E9 01 44"]
    assert car.stored_dtcs == []
    _, elm = make(tcm=False)
    headers_on(elm)
    assert lines(elm.handle("010D")) == ["7E8 03 41 0D 00"]
    elm.handle("ATSH7E1")
    assert lines(elm.handle("010D")) == ["NO DATA"]
    _, elm = make(battery_ecu=False)
    headers_on(elm)
    elm.handle("ATSH7E4")
    assert lines(elm.handle("220101")) == ["NO DATA"]
