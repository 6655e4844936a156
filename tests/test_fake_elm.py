"""Tests of the fake ELM327 itself (tests/fake_elm.py), against examples from
the ELM327 datasheet, SAE J1979 and public transcripts of real adapters.

Only raw pyserial / socket I/O is used: write a command + CR, read up to '>'.
"""
from __future__ import annotations

import os
import socket
import sys
import time

import pytest
import serial

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fake_elm import (  # noqa: E402
    ENGINE_PIDS, ENGINE_PIDS_FULL, Ecu, FakeElm, Quirks, battery_raw,
    decode_battery_did, decode_dtc, decode_pid, encode_dtc, j1850_crc,
)

# The ELM327 datasheet's VIN example (p.42, "Multiline Responses").
DS_VIN = "1D4GP00R55B123456"


# ---------------------------------------------------------------- helpers
def read_prompt(ser, timeout=2.0) -> bytes:
    buf = b""
    end = time.monotonic() + timeout
    while not buf.endswith(b">") and time.monotonic() < end:
        buf += ser.read(ser.in_waiting or 1)
    return buf


def cmd(ser, text, timeout=2.0) -> str:
    ser.write(text.encode("ascii") + b"\r")
    return read_prompt(ser, timeout).decode("latin-1")


def lines(resp: str):
    """Response lines without the trailing blank line and prompt."""
    assert resp.endswith("\r\r>"), repr(resp)
    return resp[:-3].split("\r")


@pytest.fixture
def elm():
    """Factory: elm(**FakeElm kwargs) -> (fake, serial) with echo off."""
    made = []

    def make(echo_off=True, **kw):
        fake = FakeElm(**kw).start()
        ser = serial.Serial(fake.port, 38400, timeout=0.05)
        made.append((fake, ser))
        if echo_off:
            assert cmd(ser, "ATE0").endswith("OK\r\r>")
        return fake, ser

    yield make
    for fake, ser in made:
        ser.close()
        fake.stop()
        assert fake.errors == []


def sum_cs(bs):
    return sum(bs) & 0xFF


def hexbytes(line):
    return [int(x, 16) for x in line.split()]


# ---------------------------------------------------------------- basics
def test_reset_banner_and_identity(elm):
    fake, ser = elm(echo_off=False)
    # echo is on after power-up: "ATZ" echoed, then the reset banner
    assert cmd(ser, "ATZ") == "ATZ\r\r\rELM327 v1.5\r\r>"
    assert cmd(ser, "ATI") == "ATI\rELM327 v1.5\r\r>"
    assert cmd(ser, "AT@1") == "AT@1\rOBDII to RS232 Interpreter\r\r>"
    assert cmd(ser, "ATWS") == "ATWS\r\r\rELM327 v1.5\r\r>"
    assert cmd(ser, "ATRV") == "ATRV\r14.2V\r\r>"
    assert cmd(ser, "ATXYZ") == "ATXYZ\r?\r\r>"
    assert cmd(ser, "ATD") == "ATD\rOK\r\r>"


def test_echo_linefeed_spaces_case(elm):
    fake, ser = elm(echo_off=False)
    assert cmd(ser, "ATE0") == "ATE0\rOK\r\r>"       # echoed with old setting
    assert cmd(ser, "ATI") == "ELM327 v1.5\r\r>"
    assert cmd(ser, "ATL1") == "OK\r\n\r\n>"
    assert cmd(ser, "ATL0") == "OK\r\r>"
    assert cmd(ser, "at e1") == "OK\r\r>"       # echo applies from the next line
    assert cmd(ser, "ate0") == "ate0\rOK\r\r>"   # case / spaces ignored
    assert lines(cmd(ser, "01 0d"))[0] == "SEARCHING..."
    r = cmd(ser, "010d")
    assert lines(r)[0].startswith("41 0D ")
    assert cmd(ser, "ATS0") == "OK\r\r>"
    assert lines(cmd(ser, "010D"))[0].startswith("410D")
    assert cmd(ser, "01G0") == "?\r\r>"                # not hex
    assert cmd(ser, "0102030405060708") == "?\r\r>"    # > 7 bytes


def test_bare_cr_repeats_last_command(elm):
    fake, ser = elm(ecus=[Ecu.engine()])
    cmd(ser, "ATSP6")
    first = lines(cmd(ser, "010D"))
    again = lines(cmd(ser, ""))
    assert first[0][:5] == again[0][:5] == "41 0D"
    assert len(fake.replies_for("engine", 1, 0x0D)) == 2


def test_search_then_dpn_and_dp(elm):
    fake, ser = elm()
    assert lines(cmd(ser, "ATDPN")) == ["A0"]
    r = lines(cmd(ser, "0100"))
    assert r[0] == "SEARCHING..."
    assert len(r) == 3                                 # engine + transmission
    assert lines(cmd(ser, "ATDPN")) == ["A6"]
    assert lines(cmd(ser, "ATDP")) == ["AUTO, ISO 15765-4 (CAN 11/500)"]
    cmd(ser, "ATSP6")
    assert lines(cmd(ser, "ATDPN")) == ["6"]
    assert lines(cmd(ser, "ATDP")) == ["ISO 15765-4 (CAN 11/500)"]
    assert lines(cmd(ser, "0100"))[0].startswith("41 00")    # no SEARCHING


def test_unable_to_connect_and_wrong_protocols(elm):
    fake, ser = elm(ecus=[Ecu.engine(wake_after=0.4)])
    assert lines(cmd(ser, "0100")) == ["SEARCHING...", "UNABLE TO CONNECT"]
    cmd(ser, "ATSP3")
    assert lines(cmd(ser, "0100")) == ["BUS INIT: ...ERROR"]   # CAN car
    cmd(ser, "ATSP8")
    assert lines(cmd(ser, "0100")) == ["CAN ERROR"]            # 250k vs 500k
    time.sleep(max(0.0, 0.45 - fake.now()))                     # the engine is awake
    cmd(ser, "ATSP0")
    r = lines(cmd(ser, "0100"))
    assert r[0] == "SEARCHING..." and r[1].startswith("41 00")


# ---------------------------------------------------------------- headers
def test_datasheet_header_example_can11(elm):
    # Datasheet "Setting the Headers": 7E8 06 41 00 BE 3F B8 13 00
    pids = decode_pid(0x00, bytes.fromhex("BE3FB813"))
    assert 0x20 in pids
    eng = Ecu.engine(pids=[p for p in pids if p != 0x20] + [0x21])
    fake, ser = elm(ecus=[eng, Ecu.transmission()])
    cmd(ser, "ATSP6")
    cmd(ser, "ATH1")
    cmd(ser, "ATSH7E0")                   # physical: only ECU #1 answers
    assert lines(cmd(ser, "01 00")) == ["7E8 06 41 00 BE 3F B8 13 00"]
    cmd(ser, "ATSH7E1")
    r = lines(cmd(ser, "0100"))
    assert len(r) == 1 and r[0].startswith("7E9 06 41 00 ")
    assert r[0].endswith(" AA")                            # its padding byte
    cmd(ser, "ATSH7DF")
    assert len(lines(cmd(ser, "0100"))) == 2


def test_headers_can11_single_frame_and_caf(elm):
    fake, ser = elm()
    cmd(ser, "ATSP6")
    r = lines(cmd(ser, "010D"))
    assert [len(x.split()) for x in r] == [3, 3]           # 41 0D xx, no PCI
    cmd(ser, "ATH1")
    r = lines(cmd(ser, "010D"))
    e, t = r
    # ID, PCI 03, 41 0D speed, then the ECU's padding up to 8 data bytes
    assert e.split()[:4] == ["7E8", "03", "41", "0D"] and e.split()[5:] == ["00"] * 4
    assert t.split()[:4] == ["7E9", "03", "41", "0D"] and t.split()[5:] == ["AA"] * 4
    cmd(ser, "ATS0")
    assert lines(cmd(ser, "010D"))[0].startswith("7E803410D")
    cmd(ser, "ATS1")
    cmd(ser, "ATH0")
    cmd(ser, "ATCAF0")
    # CAF0: the request carries its own PCI byte, replies are shown raw
    r = lines(cmd(ser, "02010D"))
    assert r[0].split()[:3] == ["03", "41", "0D"] and len(r[0].split()) == 8
    assert lines(cmd(ser, "010D")) == ["NO DATA"]          # PCI 01 + "0D": invalid


def test_headers_can29(elm):
    fake, ser = elm(protocol=7)
    cmd(ser, "ATSP7")
    cmd(ser, "ATH1")
    r = lines(cmd(ser, "010C"))
    assert r[0].split()[:7] == ["18", "DA", "F1", "10", "04", "41", "0C"]
    assert r[1].split()[:7] == ["18", "DA", "F1", "18", "04", "41", "0C"]
    cmd(ser, "ATSHDA18F1")                 # physical to address 0x18
    r = lines(cmd(ser, "010C"))
    assert len(r) == 1 and r[0].startswith("18 DA F1 18")
    cmd(ser, "ATSHDB33F1")
    cmd(ser, "ATCRA18DAF110")              # receive filter
    r = lines(cmd(ser, "010C"))
    assert len(r) == 1 and r[0].startswith("18 DA F1 10")


@pytest.mark.parametrize("proto,hdr", [(1, [0x41, 0x6B]), (2, [0x48, 0x6B]),
                                       (3, [0x48, 0x6B])])
def test_headers_j1850_iso9141(elm, proto, hdr):
    fake, ser = elm(protocol=proto, ecus=[Ecu.engine()])
    cmd(ser, "ATSP%d" % proto)
    cmd(ser, "ATH1")
    r = lines(cmd(ser, "010C"))
    if proto == 3:
        assert r[0] == "BUS INIT: ...OK"
        r = r[1:]
    else:
        assert len(r) == 1                               # J1850: no bus init
    b = hexbytes(r[0])
    assert b[:3] == hdr + [0x10] and b[3:5] == [0x41, 0x0C] and len(b) == 8
    if proto in (1, 2):
        assert b[-1] == j1850_crc(b[:-1])
    else:
        assert b[-1] == sum_cs(b[:-1])
    cmd(ser, "ATH0")
    plain = hexbytes(lines(cmd(ser, "010C"))[0])
    assert plain[:2] == b[3:5] and len(plain) == 4     # no header, no check byte


def test_j1850_crc_known_vectors():
    assert j1850_crc(b"123456789") == 0x4B
    assert j1850_crc(bytes([0x68, 0x6A, 0xF1, 0x01, 0x00])) == 0x17


@pytest.mark.parametrize("proto,init", [(4, "BUS INIT: ...OK"), (5, "BUS INIT: OK")])
def test_headers_kwp(elm, proto, init):
    fake, ser = elm(protocol=proto, ecus=[Ecu.engine(vin="WF0FAKE0ELM327001")])
    cmd(ser, "ATSP%d" % proto)
    cmd(ser, "ATH1")
    r = lines(cmd(ser, "010D"))
    assert r[0] == init
    b = hexbytes(r[1])
    assert b[:3] == [0x83, 0xF1, 0x10] and b[3:5] == [0x41, 0x0D]
    assert b[-1] == sum_cs(b[:-1])
    # public KWP transcript (LTSupportAutomotive): first VIN line, checksum 2B
    r = lines(cmd(ser, "0902"))
    assert r[0] == "87 F1 10 49 02 01 00 00 00 57 2B"
    assert len(r) == 5


# ---------------------------------------------------------------- multi-frame
def test_vin_can_datasheet_example(elm):
    fake, ser = elm(ecus=[Ecu.engine(vin=DS_VIN), Ecu.transmission()])
    cmd(ser, "ATSP6")
    assert lines(cmd(ser, "0902")) == [
        "014", "0: 49 02 01 31 44 34", "1: 47 50 30 30 52 35 35",
        "2: 42 31 32 33 34 35 36"]
    cmd(ser, "ATS0")
    assert lines(cmd(ser, "0902"))[1] == "0:490201314434"
    cmd(ser, "ATS1")
    cmd(ser, "ATH1")
    assert lines(cmd(ser, "0902")) == [
        "7E8 10 14 49 02 01 31 44 34", "7E8 21 47 50 30 30 52 35 35",
        "7E8 22 42 31 32 33 34 35 36"]
    assert [v for _t, v in fake.true_values("engine", 2, mode=9)] == [DS_VIN] * 3


def test_vin_j1850_datasheet_example(elm):
    fake, ser = elm(protocol=2, ecus=[Ecu.engine(vin=DS_VIN)])
    cmd(ser, "ATSP2")
    assert lines(cmd(ser, "0902")) == [
        "49 02 01 00 00 00 31", "49 02 02 44 34 47 50", "49 02 03 30 30 52 35",
        "49 02 04 35 42 31 32", "49 02 05 33 34 35 36"]


def test_multi_pid_request_can(elm):
    fake, ser = elm(ecus=[Ecu.engine()])
    cmd(ser, "ATSP6")
    t0 = time.monotonic()
    r = lines(cmd(ser, "010C0D11"))
    t1 = time.monotonic()
    # 41 0C A B 0D A 11 A = 8 bytes -> ISO-TP multi-frame
    assert r[0] == "008"
    data = hexbytes(r[1][2:]) + hexbytes(r[2][2:])
    assert data[:2] == [0x41, 0x0C] and data[4] == 0x0D and data[6] == 0x11
    assert data[8:] == [0] * 5          # FF 6 + CF 7 bytes, 8 used, 5 padding
    rpm = decode_pid(0x0C, data[2:4])
    assert fake.values_between("engine", 0x0C, t0, t1) == [rpm]
    assert fake.values_between("engine", 0x0D, t0, t1) == [data[5]]
    # 2 PIDs fit a single frame
    r = lines(cmd(ser, "010D11"))
    assert len(r) == 1
    b = hexbytes(r[0])
    assert b[0] == 0x41 and b[1] == 0x0D and b[3] == 0x11 and len(b) == 5
    # unsupported PIDs are left out of the answer (J1979)
    b = hexbytes(lines(cmd(ser, "010D0A11"))[0])
    assert b[1] == 0x0D and b[3] == 0x11 and len(b) == 5


def test_multi_pid_not_on_legacy(elm):
    fake, ser = elm(protocol=2, ecus=[Ecu.engine()])
    cmd(ser, "ATSP2")
    assert lines(cmd(ser, "010C0D")) == ["NO DATA"]
    assert lines(cmd(ser, "010C"))[0].startswith("41 0C")


# ---------------------------------------------------------------- timing
def test_response_count_digit_returns_early(elm):
    fake, ser = elm(ecus=[Ecu.engine(latency=0.005), Ecu.transmission(latency=0.01)],
                    st_unit=0.004)
    cmd(ser, "ATSP6")
    cmd(ser, "ATAT0")          # no adaptive timing: full ST after the last reply
    cmd(ser, "ATST40")         # 0x40 * 4 ms = 256 ms
    t = time.monotonic()
    r = lines(cmd(ser, "010D"))
    slow = time.monotonic() - t
    assert len(r) == 2 and slow >= 0.25
    # With a count, the adapter stops listening once it has that many replies: the
    # gearbox's (10 ms, well within ST) is then missed. How much sooner it returns:
    # tests/bench/bench_latency.py.
    r = lines(cmd(ser, "010D1"))
    assert len(r) == 1
    assert [x.delivered for x in fake.replies_for("transmission", 1, 0x0D,
                                                  include_undelivered=True)] == ["full", "missed"]
    r = lines(cmd(ser, "010D2"))
    assert len(r) == 2
    # NO DATA only after the whole ST
    t = time.monotonic()
    assert lines(cmd(ser, "010A")) == ["NO DATA"]
    assert time.monotonic() - t >= 0.25


def test_adaptive_timing_misses_slow_ecu(elm):
    fake, ser = elm(ecus=[Ecu.engine(latency=0.005), Ecu.transmission(latency=0.12)])
    cmd(ser, "ATSP6")
    cmd(ser, "ATSTFF")         # 255 ms
    assert len(lines(cmd(ser, "010D"))) == 1           # AT1: 20 ms after first
    assert fake.replies_for("transmission", 1, 0x0D, include_undelivered=True)[0].delivered == "missed"
    cmd(ser, "ATAT0")
    assert len(lines(cmd(ser, "010D"))) == 2


def test_interrupt_prints_stopped(elm):
    fake, ser = elm(ecus=[Ecu.engine(latency=0.5)], st_unit=0.004)
    cmd(ser, "ATSP6")
    cmd(ser, "ATSTFF")
    ser.write(b"010C\r")
    time.sleep(0.1)
    ser.write(b"X")
    r = read_prompt(ser).decode()
    assert r == "STOPPED\r\r>"  # before the engine's reply (how soon: bench_latency.py)
    assert fake.replies_for("engine") == []
    # the adapter is usable again
    assert lines(cmd(ser, "ATI")) == ["ELM327 v1.5"]


# ---------------------------------------------------------------- DTCs
def test_dtc_encoding():
    assert encode_dtc("P0133") == b"\x01\x33"
    assert encode_dtc("U0100") == b"\xC1\x00"
    assert decode_dtc(b"\x43\x00") == "C0300"


def test_monitor_status_and_dtcs_legacy(elm):
    eng = Ecu.engine(stored_dtcs=["P0133"])
    fake, ser = elm(protocol=3, ecus=[eng])
    cmd(ser, "ATSP3")
    r = lines(cmd(ser, "0101"))
    assert r[1] == "41 01 81 07 65 04"           # datasheet example
    assert lines(cmd(ser, "03")) == ["43 01 33 00 00 00 00"]
    # public J1850 transcript: 5 codes -> 2 messages, padded with 00 00
    fake.set_dtcs("engine", stored=["P0102", "P1120", "P1220", "P1514", "P1515"])
    assert lines(cmd(ser, "03")) == ["43 01 02 11 20 12 20", "43 15 14 15 15 00 00"]
    assert fake.true_dtcs("engine")[-1][1] == ["P0102", "P1120", "P1220", "P1514", "P1515"]
    fake.set_dtcs("engine", stored=[], pending=["P0300"])
    assert lines(cmd(ser, "03")) == ["43 00 00 00 00 00 00"]
    assert lines(cmd(ser, "07")) == ["47 03 00 00 00 00 00"]


def test_dtcs_can_count_byte_and_clear(elm):
    eng = Ecu.engine(stored_dtcs=["P0102", "P0113", "P0123", "P0222"],
                     pending_dtcs=["P0300"], permanent_dtcs=["P0102"])
    fake, ser = elm(ecus=[eng, Ecu.transmission()])
    cmd(ser, "ATSP6")
    cmd(ser, "ATS0")
    # public Mazda (CAN) transcript: "00A", "0:430401020113", "1:01230222000000"
    assert lines(cmd(ser, "03")) == ["00A", "0:430401020113", "1:01230222000000", "4300"]
    cmd(ser, "ATS1")
    cmd(ser, "ATH1")
    r = lines(cmd(ser, "07"))
    assert r == ["7E8 04 47 01 03 00 00 00 00", "7E9 02 47 00 AA AA AA AA AA"]
    assert lines(cmd(ser, "0101"))[0].split()[4] == "84"     # MIL + 4 codes
    assert lines(cmd(ser, "04")) == ["7E8 01 44 00 00 00 00 00 00",
                                     "7E9 01 44 AA AA AA AA AA AA"]
    assert lines(cmd(ser, "03"))[0] == "7E8 02 43 00 00 00 00 00 00"
    assert lines(cmd(ser, "07"))[0] == "7E8 02 47 00 00 00 00 00 00"
    assert lines(cmd(ser, "0A"))[0] == "7E8 04 4A 01 01 02 00 00 00"  # permanent kept
    assert lines(cmd(ser, "0101"))[0].split()[4] == "00"


def test_dtc_list_grows_over_time(elm):
    eng = Ecu.engine(dtc_timeline=[(0.3, ["P0300"], None), (0.6, [], None)])
    fake, ser = elm(ecus=[eng])
    cmd(ser, "ATSP6")
    assert lines(cmd(ser, "03")) == ["43 00"]
    time.sleep(max(0.0, 0.35 - fake.now()))
    assert lines(cmd(ser, "03")) == ["43 01 03 00"]
    time.sleep(max(0.0, 0.65 - fake.now()))
    assert lines(cmd(ser, "03")) == ["43 00"]


# ---------------------------------------------------------------- bitmaps
def test_supported_pid_bitmaps(elm):
    fake, ser = elm(ecus=[Ecu.engine(pids=[0x0C, 0x0D, 0xA6])])
    cmd(ser, "ATSP6")
    # 0C and 0D in 01-20, 20 = "next range supported" because A6 exists
    assert lines(cmd(ser, "0100")) == ["41 00 00 18 00 01"]
    for base in ("20", "40", "60", "80"):
        assert lines(cmd(ser, "01" + base)) == ["41 %s 00 00 00 01" % base]
    assert lines(cmd(ser, "01A0")) == ["41 A0 04 00 00 00"]
    assert lines(cmd(ser, "01C0")) == ["NO DATA"]          # not announced
    assert lines(cmd(ser, "0110")) == ["NO DATA"]          # unsupported PID
    b = hexbytes(lines(cmd(ser, "01A6"))[0])
    assert decode_pid(0xA6, b[2:]) == fake.true_values("engine", 0xA6)[-1][1]
    assert decode_pid(0x00, bytes.fromhex("00180001")) == [0x0C, 0x0D, 0x20]


def test_values_disjoint_between_ecus_and_oracle(elm):
    fake, ser = elm(ecus=[Ecu.engine(), Ecu.transmission(), Ecu.hybrid()])
    cmd(ser, "ATSP6")
    cmd(ser, "ATH1")
    seen = {}
    for _ in range(5):
        t0 = time.monotonic()
        for ln in lines(cmd(ser, "010C")):
            b = hexbytes(ln)
            rpm = decode_pid(0x0C, b[4:6])
            name = {0x7E8: "engine", 0x7E9: "transmission", 0x7EA: "hybrid"}[b[0]]
            assert rpm in fake.values_between(name, 0x0C, t0, time.monotonic())
            assert b[5] not in (0x00, 0xFF, 0xAA, 0x55, 0xCC)
            seen.setdefault(name, set()).add(rpm)
        time.sleep(0.05)
    assert set(seen) == {"engine", "transmission", "hybrid"}
    assert not (seen["engine"] & seen["transmission"]) and not (seen["engine"] & seen["hybrid"])
    assert max(seen["engine"]) < min(seen["transmission"]) <= max(seen["transmission"]) < min(seen["hybrid"])
    # the values change over time
    vals = [v for _t, v in fake.true_values("engine", 0x0C)]
    assert len(set(vals)) > 1


def test_silent_and_late_ecus(elm):
    fake, ser = elm(ecus=[Ecu.engine(), Ecu.transmission(silent_after=0.3)])
    cmd(ser, "ATSP6")
    assert len(lines(cmd(ser, "010D"))) == 2
    time.sleep(max(0.0, 0.32 - fake.now()))
    assert len(lines(cmd(ser, "010D"))) == 1
    fake.set_silent("engine")
    assert lines(cmd(ser, "010D")) == ["NO DATA"]


def test_voltage(elm):
    fake, ser = elm()
    assert lines(cmd(ser, "ATRV")) == ["14.2V"]
    fake.set_voltage(11.83)
    assert lines(cmd(ser, "ATRV")) == ["11.8V"]


# ---------------------------------------------------------------- quirks
def test_quirk_clone_no_multi_pid(elm):
    fake, ser = elm(quirks={"clone_no_multi_pid": True})
    assert lines(cmd(ser, "010C0D")) == ["NO DATA"]
    assert lines(cmd(ser, "010C"))[-1].startswith("41 0C")
    fake, ser = elm(quirks={"clone_no_multi_pid": "?"})
    assert lines(cmd(ser, "010C0D")) == ["?"]


def test_quirk_partial_and_first_pid_only(elm):
    fake, ser = elm(ecus=[Ecu.engine()], quirks={"partial_multi_pid": 2})
    cmd(ser, "ATSP6")
    b = hexbytes(lines(cmd(ser, "010D110C"))[0])
    assert b[0] == 0x41 and b[1] == 0x0D and b[3] == 0x11 and len(b) == 5
    fake, ser = elm(ecus=[Ecu.engine()], quirks=["first_pid_only"])
    cmd(ser, "ATSP6")
    b = hexbytes(lines(cmd(ser, "010D110C"))[0])
    assert b[:2] == [0x41, 0x0D] and len(b) == 3


def test_quirk_ignores_count_digit(elm):
    fake, ser = elm(quirks={"ignores_count_digit": "?"})
    cmd(ser, "ATSP6")
    assert lines(cmd(ser, "010C1")) == ["?"]
    fake, ser = elm(ecus=[Ecu.engine()], quirks={"ignores_count_digit": "ignore"},
                    st_unit=0.004)
    cmd(ser, "ATSP6")
    cmd(ser, "ATAT0")
    cmd(ser, "ATST32")                     # 200 ms
    t = time.monotonic()
    assert lines(cmd(ser, "010C1"))[0].startswith("41 0C")
    assert time.monotonic() - t >= 0.19    # waited for the timeout anyway


def test_quirk_sticky_echo_and_no_atst(elm):
    fake, ser = elm(echo_off=False, quirks=["sticky_echo", "no_atst_atat"])
    assert cmd(ser, "ATE0") == "ATE0\rOK\r\r>"
    assert cmd(ser, "ATI") == "ATI\rELM327 v1.5\r\r>"     # still echoing
    assert cmd(ser, "ATST10") == "ATST10\r?\r\r>"
    assert cmd(ser, "ATAT1") == "ATAT1\r?\r\r>"


def test_quirk_v10(elm):
    fake, ser = elm(quirks=["v10_no_atws"])
    assert cmd(ser, "ATZ") == "\r\rELM327 v1.0\r\r>"   # echo was off
    assert cmd(ser, "ATE0") == "ATE0\rOK\r\r>"        # ATZ turned echo on
    assert lines(cmd(ser, "ATI")) == ["ELM327 v1.0"]
    assert lines(cmd(ser, "ATWS")) == ["?"]


def test_quirk_buffer_full(elm):
    fake, ser = elm(ecus=[Ecu.engine()], quirks={"buffer_full_after": 30})
    cmd(ser, "ATSP6")
    r = lines(cmd(ser, "0902"))
    assert r[-1] == "BUFFER FULL"
    assert r[0] == "014" and len(r) < 5
    assert fake.replies_for("engine", 9, 2)[0].delivered == "partial"


def test_quirk_stall_late_reply_still_arrives(elm):
    fake, ser = elm(ecus=[Ecu.engine()], quirks={"stall": (0.4, 2)})
    cmd(ser, "ATSP6")
    assert lines(cmd(ser, "010D"))[0].startswith("41 0D")   # request 1: normal
    ser.write(b"010C\r")                                     # request 2: stalls
    t = time.monotonic()
    assert read_prompt(ser, timeout=0.15) == b""              # client gives up
    late = read_prompt(ser, timeout=1.0).decode()
    assert time.monotonic() - t >= 0.35
    assert lines(late)[0].startswith("41 0C")
    assert len(fake.replies_for("engine", 1, 0x0C)) == 1


def test_quirk_truncate(elm):
    fake, ser = elm(ecus=[Ecu.engine()], quirks={"truncate": ("byte", 2)})
    cmd(ser, "ATSP6")
    assert len(hexbytes(lines(cmd(ser, "010C"))[0])) == 4
    t0 = time.monotonic()
    r = lines(cmd(ser, "010C"))                  # request 2: last byte lost
    assert len(hexbytes(r[0])) == 3
    rec = fake.replies_for("engine", 1, 0x0C)[-1]
    assert rec.delivered == "partial" and rec.t >= t0
    # zero-padding the lost byte gives a value the ECU never sent
    a = hexbytes(r[0])[2]
    assert decode_pid(0x0C, bytes([a, 0])) not in [v for _t, v in fake.true_values("engine", 0x0C)]
    fake, ser = elm(ecus=[Ecu.engine(vin=DS_VIN)], quirks={"truncate": "half"})
    cmd(ser, "ATSP6")
    r = lines(cmd(ser, "0902"))
    assert r == ["014", "0: 49 02 01 31 44 34", "1: 47 50 30 30"]


def test_quirk_kline_reinit(elm):
    fake, ser = elm(protocol=3, ecus=[Ecu.engine()], quirks={"kline_reinit": (0.3, 2)})
    cmd(ser, "ATSP3")
    r = lines(cmd(ser, "010D"))                   # 1: first contact
    assert r[0] == "BUS INIT: ...OK"
    t = time.monotonic()
    r = lines(cmd(ser, "010C"))                   # 2: re-init mid-session
    assert time.monotonic() - t >= 0.29
    assert r[0] == "BUS INIT: ...OK" and r[1].startswith("41 0C")
    assert len(lines(cmd(ser, "010D"))) == 1      # 3: normal


def test_quirk_response_pending(elm):
    fake, ser = elm(ecus=[Ecu.engine()], quirks={"response_pending": (2, 1)})
    cmd(ser, "ATSP6")
    r = lines(cmd(ser, "010C1"))                  # 7F 78 do not count
    assert r[:2] == ["7F 01 78", "7F 01 78"] and r[2].startswith("41 0C")


def test_quirk_can_error(elm):
    fake, ser = elm(quirks={"can_error": 2})
    cmd(ser, "ATSP6")
    assert lines(cmd(ser, "010C"))[0].startswith("41 0C")
    assert lines(cmd(ser, "010C")) == ["CAN ERROR"]


def test_quirks_coerce():
    q = Quirks.coerce(["truncate", "can_error"])
    assert q.truncate == ("byte", 1) and q.can_error == 1


# ---------------------------------------------------------------- ATBRD, STN
def test_brd_handshake(elm):
    fake, ser = elm()
    ser.write(b"ATBRD23\r")
    first = b""
    end = time.monotonic() + 1
    while b"ELM327 v1.5\r" not in first and time.monotonic() < end:
        first += ser.read(ser.in_waiting or 1)
    assert first == b"OK\rELM327 v1.5\r"          # no prompt after the OK
    ser.write(b"\r")
    assert read_prompt(ser) == b"OK\r\r>"
    assert fake.baud == 115200
    # no CR within BRT -> revert
    ser.write(b"ATBRD45\r")
    r = read_prompt(ser, timeout=1.0)
    assert r == b"OK\rELM327 v1.5\r\r>"
    assert fake.baud == 115200
    assert lines(cmd(ser, "ATBRD00")) == ["?"]


def test_brd_enforced_baud(elm):
    fake, ser = elm(enforce_baud=True)
    ser.write(b"ATBRD23\r")
    buf = b""
    end = time.monotonic() + 1
    while b"v1.5\r" not in buf and time.monotonic() < end:
        buf += ser.read(ser.in_waiting or 1)
    ser.baudrate = 115200                          # switch, then confirm
    ser.write(b"\r")
    assert read_prompt(ser) == b"OK\r\r>"
    assert lines(cmd(ser, "ATI")) == ["ELM327 v1.5"]
    ser.baudrate = 38400                           # wrong rate: nothing understood
    ser.write(b"ATI\r")
    assert read_prompt(ser, timeout=0.2) == b""


def test_stn_flavour(elm):
    fake, ser = elm(flavour="stn")
    assert lines(cmd(ser, "STI")) == ["STN1110 v4.2.1"]
    assert lines(cmd(ser, "ATI")) == ["ELM327 v1.4b"]
    fake, ser = elm()
    assert lines(cmd(ser, "STI")) == ["?"]


# ---------------------------------------------------------------- TCP
def _tcp_cmd(sock, text):
    sock.sendall(text.encode() + b"\r")
    buf = b""
    end = time.monotonic() + 2
    while not buf.endswith(b">") and time.monotonic() < end:
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf.decode()


def test_tcp_transport_one_client_and_reconnect():
    with FakeElm(use_pty=False, tcp=True) as fake:
        assert fake.port is None and fake.tcp_port
        a = socket.create_connection(("127.0.0.1", fake.tcp_port), timeout=2)
        assert _tcp_cmd(a, "ATZ") == "ATZ\r\r\rELM327 v1.5\r\r>"
        assert _tcp_cmd(a, "ATE0") == "ATE0\rOK\r\r>"
        b = socket.create_connection(("127.0.0.1", fake.tcp_port), timeout=2)
        assert b.recv(10) == b""                    # second client refused
        b.close()
        assert lines(_tcp_cmd(a, "010D"))[0] == "SEARCHING..."
        a.close()
        time.sleep(0.05)
        c = socket.create_connection(("127.0.0.1", fake.tcp_port), timeout=2)
        # the ELM state survives the reconnect (echo still off)
        assert lines(_tcp_cmd(c, "010D"))[0].startswith("41 0D")
        c.close()


# ---------------------------------------------------------------- services 21/22, battery ECU
BAD_LAST = (0x00, 0xFF, 0xAA, 0x55, 0xCC)


def three_ecus_and_battery():
    return [Ecu.engine(), Ecu.transmission(), Ecu.battery()]


def did_0101_by_hand(d):
    """The layout of Ecu.battery's docstring, decoded without fake_elm."""
    assert len(d) == 8
    cur = (d[4] << 8) | d[5]
    if cur >= 0x8000:
        cur -= 0x10000
    return {"soc": ((d[0] << 8) | d[1]) * 0.5, "voltage": ((d[2] << 8) | d[3]) / 10.0,
            "current": cur / 10.0, "temp_max": d[6] - 40, "temp_min": d[7] - 40}


def test_battery_did_physical_multiframe_headers_on(elm):
    fake, ser = elm(ecus=three_ecus_and_battery())
    cmd(ser, "ATSP6")
    cmd(ser, "ATH1")
    cmd(ser, "ATSH7E4")                    # physical: the battery ECU only
    t0 = time.monotonic()
    r = lines(cmd(ser, "220101"))
    t1 = time.monotonic()
    # 62 01 01 + 8 data bytes = 11 bytes: first frame (10 0B + 6) + CF (21 + 5 + 2 pad)
    assert len(r) == 2
    ff, cf = hexbytes(r[0]), hexbytes(r[1])
    assert ff[:6] == [0x7EC, 0x10, 0x0B, 0x62, 0x01, 0x01] and len(ff) == 9
    assert cf[:2] == [0x7EC, 0x21] and cf[7:] == [0xCC, 0xCC] and len(cf) == 9
    data = bytes(ff[6:] + cf[2:7])
    v = did_0101_by_hand(data)
    assert 50.0 <= v["soc"] <= 95.0 and (v["soc"] * 2) == int(v["soc"] * 2)
    assert 350.0 <= v["voltage"] <= 400.0
    assert -150.0 <= v["current"] <= 250.0 and v["current"] != 0
    assert 32 <= v["temp_max"] <= 44 and 18 <= v["temp_min"] <= 30
    assert data[-1] not in BAD_LAST
    assert decode_battery_did(0x0101, data) == v
    # the oracle: exactly these bytes were sent in [t0, t1]
    assert fake.values_between("battery", 0x0101, t0, t1, mode=0x22) == [data]
    assert fake.true_values("battery", 0x0101, mode=0x22)[-1][1] == data
    assert fake.replies_for("engine", 0x22) == [] and fake.replies_for("transmission", 0x22) == []
    # without headers (CAF1): byte count line, then 0:/1: lines, padding shown
    cmd(ser, "ATH0")
    r = lines(cmd(ser, "220101"))
    assert r[0] == "00B" and r[1].startswith("0: 62 01 01 ") and r[2].startswith("1: ")
    assert r[2].split()[-2:] == ["CC", "CC"] and len(r[2].split()) == 8
    data = bytes(hexbytes(r[1][3:])[3:] + hexbytes(r[2][3:])[:5])
    assert fake.true_values("battery", 0x0101, mode=0x22)[-1][1] == data


def test_battery_single_frame_dids_lid_and_negative_responses(elm):
    fake, ser = elm(ecus=three_ecus_and_battery())
    cmd(ser, "ATSP6")
    cmd(ser, "ATH1")
    cmd(ser, "ATSH7E4")
    r = lines(cmd(ser, "220102"))
    b = hexbytes(r[0])
    assert len(r) == 1 and b[:5] == [0x7EC, 0x05, 0x62, 0x01, 0x02] and b[7:] == [0xCC] * 2
    state, flags = b[5], b[6]
    assert state in (0, 1, 2) and flags & 0x02 and not flags & 0x7C
    assert bool(flags & 0x01) == (state != 0)          # plugged in iff charging
    assert fake.true_values("battery", 0x0102, mode=0x22)[-1][1] == bytes([state, flags])
    # two DIDs in one request: each DID followed by its data (ISO 14229-1), multi-frame
    r = lines(cmd(ser, "2201020103"))
    ff, cf = hexbytes(r[0]), hexbytes(r[1])
    assert ff[1:6] == [0x10, 0x0B, 0x62, 0x01, 0x02] and cf[1] == 0x21
    assert ff[8] == 0x01 and cf[2] == 0x03                # DID 0103 follows 0102's 2 bytes
    cells = decode_battery_did(0x0103, bytes(cf[3:7]))
    assert 3.9 <= cells["cell_v_min"] < cells["cell_v_max"] <= 4.15
    # an unknown DID among known ones is left out
    assert hexbytes(lines(cmd(ser, "2201029999"))[0])[1:5] == [0x05, 0x62, 0x01, 0x02]
    # service 21 (KWP2000 ReadDataByLocalIdentifier): 61 01 + 3 bytes
    b = hexbytes(lines(cmd(ser, "2101"))[0])
    assert b[:4] == [0x7EC, 0x05, 0x61, 0x01] and 90 <= b[6] <= 97 and b[7:] == [0xCC, 0xCC]
    assert fake.true_values("battery", 0x01, mode=0x21)[-1][1] == bytes(b[4:7])
    n_before = len(fake.replies)
    # unknown DID / LID: requestOutOfRange; bad length: incorrectMessageLength
    assert lines(cmd(ser, "229999")) == ["7EC 03 7F 22 31 CC CC CC CC"]
    assert lines(cmd(ser, "2102")) == ["7EC 03 7F 21 31 CC CC CC CC"]
    assert lines(cmd(ser, "2201")) == ["7EC 03 7F 22 13 CC CC CC CC"]
    assert len(fake.replies) == n_before            # negative responses carry no value
    # the engine has no DIDs at all: serviceNotSupported
    cmd(ser, "ATSH7E0")
    assert lines(cmd(ser, "220101")) == ["7E8 03 7F 22 11 00 00 00 00"]


def test_battery_functional_22_unanswered_and_sh_7df_restores(elm):
    fake, ser = elm(ecus=three_ecus_and_battery())
    cmd(ser, "ATSP6")
    cmd(ser, "ATH1")
    # functional (default 7DF): nobody answers 21/22, not even with 7F
    assert lines(cmd(ser, "220101")) == ["NO DATA"]
    assert lines(cmd(ser, "2101")) == ["NO DATA"]
    assert lines(cmd(ser, "229999")) == ["NO DATA"]
    assert fake.replies_for(mode=0x22, include_undelivered=True) == []
    cmd(ser, "ATSH7E4")
    assert hexbytes(lines(cmd(ser, "220101"))[0])[:3] == [0x7EC, 0x10, 0x0B]
    assert lines(cmd(ser, "0100")) == ["7EC 06 41 00 00 00 00 01 CC"]
    cmd(ser, "ATSH7DF")                    # back to functional
    r = lines(cmd(ser, "0100"))
    assert sorted(x.split()[0] for x in r) == ["7E8", "7E9", "7EC"]
    assert lines(cmd(ser, "220101")) == ["NO DATA"]
    # battery mode 01: bitmaps chain 00 -> 20 -> 40 -> 5B
    cmd(ser, "ATH0")
    cmd(ser, "ATSH7E4")
    assert lines(cmd(ser, "0120")) == ["41 20 00 00 00 01"]
    assert lines(cmd(ser, "0140")) == ["41 40 00 00 00 20"]
    assert lines(cmd(ser, "010C")) == ["NO DATA"]
    cmd(ser, "ATSH7DF")
    r = lines(cmd(ser, "015B"))
    assert len(r) == 1                     # only the battery has 5B in this car
    assert decode_pid(0x5B, hexbytes(r[0])[2:]) == fake.true_values("battery", 0x5B)[-1][1]


def test_battery_cra_filtering(elm):
    fake, ser = elm(ecus=three_ecus_and_battery())
    cmd(ser, "ATSP6")
    cmd(ser, "ATH1")
    cmd(ser, "ATCRA7EC")
    assert lines(cmd(ser, "0100")) == ["7EC 06 41 00 00 00 00 01 CC"]
    cmd(ser, "ATCRA7EX")                   # X = any digit
    assert len(lines(cmd(ser, "0100"))) == 3
    cmd(ser, "ATCRA7E8")
    cmd(ser, "ATSH7E4")
    assert lines(cmd(ser, "220101")) == ["NO DATA"]     # its answer is filtered out
    cmd(ser, "ATCRA")                      # no argument: filter off
    assert hexbytes(lines(cmd(ser, "220101"))[0])[0] == 0x7EC
    cmd(ser, "ATSH7DF")
    assert len(lines(cmd(ser, "0100"))) == 3


def test_battery_can29(elm):
    fake, ser = elm(protocol=7, ecus=three_ecus_and_battery())
    cmd(ser, "ATSP7")
    cmd(ser, "ATH1")
    assert lines(cmd(ser, "220101")) == ["NO DATA"]       # functional 18 DB 33 F1
    cmd(ser, "ATSHDA44F1")
    r = lines(cmd(ser, "220101"))
    assert len(r) == 2
    assert r[0].split()[:9] == ["18", "DA", "F1", "44", "10", "0B", "62", "01", "01"]
    assert r[1].split()[:5] == ["18", "DA", "F1", "44", "21"]
    cmd(ser, "ATCRA18DAF110")
    assert lines(cmd(ser, "220101")) == ["NO DATA"]
    cmd(ser, "ATCRA")
    cmd(ser, "ATSHDB33F1")
    assert len(lines(cmd(ser, "0100"))) == 3


def test_battery_generators_are_consistent():
    e = Ecu.battery()
    assert (e.can_id, e.address, e.padding) == (0x7EC, 0x44, 0xCC)
    states = set()
    for i in range(0, 240):
        t = i * 0.05
        d1, d2, d3 = e.dids[0x0101](t), e.dids[0x0102](t), e.dids[0x0103](t)
        v, s = decode_battery_did(0x0101, d1), decode_battery_did(0x0102, d2)
        assert v == did_0101_by_hand(d1)
        states.add(s["charging"])
        if s["charging"] == 0:
            assert v["current"] > 0 and not s["plug"]
        else:
            assert v["current"] < 0 and s["plug"]
        assert s["contactor"]
        assert s["balancing"] == (s["charging"] != 0 and v["soc"] >= 85.0)
        for d in (d1, d2, d3, e.lids[0x01](t)):
            assert d[-1] not in BAD_LAST
        assert battery_raw(t)["soc2"] == (d1[0] << 8) | d1[1]
    assert states == {0, 1, 2}
    with pytest.raises(ValueError):
        decode_battery_did(0x0101, e.dids[0x0101](0.0)[:-1])


# ---------------------------------------------------------------- mode 01 above 0x5F
def test_pid_formulas_above_5f():
    assert decode_pid(0x61, b"\x7D") == 0 and decode_pid(0x62, b"\xE1") == 100
    assert decode_pid(0x63, bytes.fromhex("015E")) == 350
    assert decode_pid(0x67, bytes.fromhex("037B78")) == {"sensor1": 83, "sensor2": 80}
    assert decode_pid(0x67, bytes.fromhex("017B00")) == {"sensor1": 83}
    assert decode_pid(0x8D, b"\xFF") == 100.0
    assert decode_pid(0xA4, bytes.fromhex("033005F1")) == {"gear": 3, "ratio": 1.521}
    assert decode_pid(0xA4, bytes.fromhex("020005F1")) == {"gear": None, "ratio": 1.521}
    with pytest.raises(ValueError):
        decode_pid(0x67, b"\x03\x7B")


def test_full_engine_pids_above_5f(elm):
    assert set(Ecu.engine().pids) == set(ENGINE_PIDS)      # default unchanged
    assert set(ENGINE_PIDS) < set(ENGINE_PIDS_FULL)
    fake, ser = elm(ecus=[Ecu.engine(full=True), Ecu.transmission()])
    cmd(ser, "ATSP6")
    cmd(ser, "ATSH7E0")
    assert lines(cmd(ser, "0160")) == ["41 60 E2 00 00 01"]     # 61 62 63 67 + 80
    assert lines(cmd(ser, "0180")) == ["41 80 00 08 00 01"]     # 8D + A0
    assert lines(cmd(ser, "01A0")) == ["41 A0 14 00 00 00"]     # A4 A6
    cmd(ser, "ATSH7DF")
    for pid in (0x61, 0x62, 0x63, 0x67, 0x8D, 0xA4, 0xA6):
        t0 = time.monotonic()
        r = lines(cmd(ser, "01%02X" % pid))
        t1 = time.monotonic()
        assert len(r) == 1                     # the gearbox does not have them
        b = hexbytes(r[0])
        assert b[:2] == [0x41, pid] and b[-1] not in BAD_LAST
        assert fake.values_between("engine", pid, t0, t1) == [decode_pid(pid, b[2:])]
    # a packed request of six of them, answered multi-frame (19 bytes)
    r = lines(cmd(ser, "01616263678DA4"))
    assert r[0] == "013"
    data = []
    for ln in r[1:]:
        data += hexbytes(ln.split(":", 1)[1])
    data = data[:19]
    assert data[0] == 0x41 and [data[i] for i in (1, 3, 5, 8, 12, 14)] == [
        0x61, 0x62, 0x63, 0x67, 0x8D, 0xA4]
    assert decode_pid(0x63, data[6:8]) == fake.true_values("engine", 0x63)[-1][1]
    assert decode_pid(0xA4, data[15:19]) == fake.true_values("engine", 0xA4)[-1][1]
    v = decode_pid(0x67, data[9:12])
    assert set(v) == {"sensor1", "sensor2"} and 80 <= v["sensor1"] <= 100


# ---------------------------------------------------------------- mode 09 04 / 06
def test_mode09_calid_cvn(elm):
    fake, ser = elm(ecus=[Ecu.engine(full=True), Ecu.transmission()])
    cmd(ser, "ATSP6")
    cmd(ser, "ATH1")
    r = sorted(lines(cmd(ser, "0900")))
    assert r == ["7E8 06 49 00 54 40 00 00 00",      # 02 04 06 0A
                 "7E9 06 49 00 00 40 00 00 AA"]      # 0A only
    cmd(ser, "ATH0")
    # 2 CALIDs: 49 04 02 + 32 bytes = 35 = 0x23 bytes, FF + 5 CFs
    r = lines(cmd(ser, "0904"))
    assert r[0] == "023" and [x[:2] for x in r[1:]] == ["0:", "1:", "2:", "3:", "4:", "5:"]
    raw = []
    for ln in r[1:]:
        raw += hexbytes(ln.split(":", 1)[1])
    assert raw[35:] == [0] * 6                        # the engine's padding
    assert bytes(raw[:35]) == (b"\x49\x04\x02" + b"FAKECAL-ECM-0001" + b"FAKECAL-ECM-EMS2")
    assert fake.true_values("engine", 4, mode=9)[-1][1] == ["FAKECAL-ECM-0001", "FAKECAL-ECM-EMS2"]
    # 2 CVNs: 49 06 02 + 8 bytes = 11
    assert lines(cmd(ser, "0906")) == ["00B", "0: 49 06 02 17 91 BC", "1: 82 16 E0 62 BE 00 00"]
    assert fake.true_values("engine", 6, mode=9)[-1][1] == ["1791BC82", "16E062BE"]
    assert fake.replies_for("transmission", 9, 4) == []


def test_mode09_calid_cvn_single_and_legacy(elm):
    eng = Ecu.engine(calids=["JMB*36761500"], cvns=[b"\x17\x91\xBC\x82"])
    fake, ser = elm(ecus=[eng])
    cmd(ser, "ATSP6")
    r = lines(cmd(ser, "0904"))                     # 19 bytes, NUL padded CALID
    assert r == ["013", "0: 49 04 01 4A 4D 42", "1: 2A 33 36 37 36 31 35",
                 "2: 30 30 00 00 00 00 00"]
    assert fake.true_values("engine", 4, mode=9)[-1][1] == ["JMB*36761500"]
    assert lines(cmd(ser, "0906")) == ["49 06 01 17 91 BC 82"]
    with pytest.raises(ValueError):
        FakeElm(ecus=[Ecu.engine(cvns=["1791BC"])])
    # legacy protocols: only CAN answers 09 04 / 09 06 in this fake
    fake2, ser2 = elm(protocol=2, ecus=[Ecu.engine(full=True)])
    cmd(ser2, "ATSP2")
    assert lines(cmd(ser2, "0900")) == ["49 00 C0 00 00 00"]   # 01 02 only
    assert lines(cmd(ser2, "0904")) == ["NO DATA"]


# ---------------------------------------------------------------- mode 02 freeze frame
def test_mode02_freeze_frame(elm):
    eng = Ecu.engine(stored_dtcs=["P0301"],
                     freeze_frame=("P0301", {0x04: b"\x80", 0x05: "7B", 0x0C: "1AF8",
                                             0x0D: "32"}))
    fake, ser = elm(ecus=[eng, Ecu.transmission()])
    cmd(ser, "ATSP6")
    # only the engine implements service 02 (the gearbox ignores the functional request)
    assert lines(cmd(ser, "020200")) == ["42 02 00 03 01"]
    assert lines(cmd(ser, "020000")) == ["42 00 00 58 18 00 00"]   # 02 04 05 0C 0D
    assert lines(cmd(ser, "020C00")) == ["42 0C 00 1A F8"]
    assert lines(cmd(ser, "020500")) == ["42 05 00 7B"]
    assert lines(cmd(ser, "021100")) == ["NO DATA"]          # not in the frame
    assert lines(cmd(ser, "020C01")) == ["NO DATA"]          # frame 01
    assert lines(cmd(ser, "022000")) == ["NO DATA"]          # 20 not announced
    assert fake.true_values("engine", 0x0C, mode=2) == [
        (fake.replies_for("engine", 2, 0x0C)[0].t, 1726.0)]   # datasheet's 1A F8
    assert fake.true_values("engine", 0x05, mode=2)[-1][1] == 83
    assert fake.true_values("engine", 2, mode=2)[-1][1] == "P0301"
    assert fake.true_values("engine", 0, mode=2)[-1][1] == [0x02, 0x04, 0x05, 0x0C, 0x0D]
    cmd(ser, "ATH1")
    cmd(ser, "ATSH7E1")
    assert lines(cmd(ser, "020200")) == ["7E9 03 7F 02 11 AA AA AA AA"]
    cmd(ser, "ATSH7DF")
    cmd(ser, "ATH0")
    # mode 04 clears the freeze frame (J1979): DTC 0000, only PID 02 left
    assert len(lines(cmd(ser, "04"))) == 2
    assert lines(cmd(ser, "020200")) == ["42 02 00 00 00"]
    assert fake.true_values("engine", 2, mode=2)[-1][1] is None
    assert lines(cmd(ser, "020000")) == ["42 00 00 40 00 00 00"]
    assert lines(cmd(ser, "020C00")) == ["NO DATA"]
    with pytest.raises(ValueError):
        FakeElm(ecus=[Ecu.engine(freeze_frame=("P0301", {0x0C: "1A"}))])


def test_mode02_freeze_frame_legacy_with_headers(elm):
    eng = Ecu.engine(freeze_frame=("P0420", {0x0D: "32"}))
    fake, ser = elm(protocol=2, ecus=[eng])
    cmd(ser, "ATSP2")
    cmd(ser, "ATH1")
    b = hexbytes(lines(cmd(ser, "020200"))[0])
    assert b[:3] == [0x48, 0x6B, 0x10] and b[3:8] == [0x42, 0x02, 0x00, 0x04, 0x20]
    assert b[-1] == j1850_crc(b[:-1])
    assert hexbytes(lines(cmd(ser, "020D00"))[0])[3:7] == [0x42, 0x0D, 0x00, 0x32]
