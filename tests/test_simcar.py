"""The built-in simulated ELM327: the pure responder, and python-OBD talking to it."""
from __future__ import annotations

import obd

from eccm.sim.car import ElmResponder, SimulatedCar, drive_speed, drive_state, encode_dtc


def make():
    car = SimulatedCar(clock=lambda: 0.0)
    return car, ElmResponder(car)


def lines(reply: str):
    assert reply.endswith(">")
    return [ln for ln in reply[:-1].split("\r") if ln]


def test_echo_and_headers_follow_at_commands():
    _, elm = make()
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
    car, elm = make()
    elm.handle("ATE0")
    first = lines(elm.handle("0100"))[-1].split()
    bits = int("".join(first[2:6]), 16)
    supported = [pid for pid in range(1, 33) if bits >> (32 - pid) & 1]
    assert 0x0C in supported and 0x0D in supported and 0x05 in supported
    assert 0x20 in supported  # more PIDs in the next map
    assert set(supported) - {0x20} == {p for p in car.supported() if p <= 0x20}


def test_dtcs_carry_the_j1979_count_byte_and_clear():
    car, elm = make()
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
