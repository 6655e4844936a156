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
    Ecu, FakeElm, Quirks, decode_dtc, decode_pid, encode_dtc, j1850_crc,
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
