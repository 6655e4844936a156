"""Reply parsing against replies as the ELM327 datasheet and python-OBD's own test fixtures
print them (facts about real adapters, not ECCM's simulator)."""
from __future__ import annotations

import pytest

from eccm.sources.obd.adapter import SIZES
from eccm.sources.obd.frames import (Message, decode_dtcs, decode_vin, dtc_code, parse_reply,
                                     split_mode01)


def msgs(lines, protocol):
    return [(m.ecu, m.data.hex().upper()) for m in parse_reply(lines, protocol).messages]


# --- python-OBD's fixture strings (tests/test_protocol_can.py, test_protocol_legacy.py) --

@pytest.mark.parametrize("protocol", ["6", "8"])
def test_python_obd_can_fixtures(protocol):
    assert msgs(["7E8 06 41 00 00 01 02 03"], protocol) == [(0x7E8, "410000010203")]
    assert msgs(["7E8 01 41"], protocol) == [(0x7E8, "41")]
    assert msgs(["7E8 07 41 00 00 01 02 03 04"], protocol) == [(0x7E8, "41000001020304")]
    for bad in (["7E8 01"], ["7E8 08 41 00 00 01 02 03 04 05"], ["7E8 00"],
                ["7E8 08 41 00 00 01 02 03 04 0"]):
        assert msgs(bad, protocol) == [], bad
    assert msgs(["7E8 06 41 00 00 01 02 03", "7EB 06 41 00 00 01 02 03",
                 "7EA 06 41 00 00 01 02 03"], protocol) == [
        (0x7E8, "410000010203"), (0x7EB, "410000010203"), (0x7EA, "410000010203")]
    multi = ["7E8 10 20 49 04 00 01 02 03", "7E8 21 04 05 06 07 08 09 0A",
             "7E8 22 0B 0C 0D 0E 0F 10 11", "7E8 23 12 13 14 15 16 17 18"]
    # 0x20 = 32 bytes announced, 27 sent: not whole, so not a message (python-OBD
    # accepts it; ECCM never reads a message that is shorter than its own length).
    assert msgs(multi, protocol) == []
    whole = ["7E8 10 1B 49 04 00 01 02 03"] + multi[1:]
    assert msgs(whole, protocol) == [(0x7E8, "4904" + bytes(range(25)).hex().upper())]
    for n in range(1, len(whole)):  # a frame missing: no message
        assert msgs(whole[:n] + whole[n + 1:], protocol) == []


@pytest.mark.parametrize("protocol", ["1", "2", "3", "4", "5"])
def test_python_obd_legacy_fixtures(protocol):
    assert msgs(["48 6B 10 41 00 FF"], protocol) == [(0x10, "4100")]
    assert msgs(["48 6B 10 41 00 00 01 02 03 04 FF"], protocol) == [(0x10, "41000001020304")]
    assert msgs(["48 6B 10 41 FF"], protocol) == [(0x10, "41")]
    assert msgs(["48 6B 10 41 00 00 F"], protocol) == []
    assert msgs(["48 6B 13 41 00 00 01 02 03 FF", "48 6B 10 41 00 00 01 02 03 FF"],
                protocol) == [(0x13, "410000010203"), (0x10, "410000010203")]
    vin_parts = ["48 6B 10 49 02 01 00 01 02 03 FF", "48 6B 10 49 02 02 04 05 06 07 FF"]
    assert [e for e, _ in msgs(vin_parts, protocol)] == [0x10, 0x10]


def test_can_29_bit_and_kwp_headers():
    assert msgs(["18 DA F1 10 03 41 0D 32"], "7") == [(0x10, "410D32")]
    assert msgs(["18 DB 33 F1 02 01 0D"], "7") == []  # a request echo, not an answer
    # KWP: the format byte carries the data length (84: four bytes)
    assert msgs(["84 F1 10 41 0C 1A F8 C8"], "4") == [(0x10, "410C1AF8")]
    assert msgs(["84 F1 10 41 0C 1A C8"], "5") == []  # a byte lost


def test_adapter_messages_and_flagged_lines():
    reply = parse_reply(["NO DATA"], "6")
    assert reply.no_data and not reply.messages
    assert parse_reply(["?"], "6").unknown_command
    for fault in ("STOPPED", "BUFFER FULL", "CAN ERROR", "48 6B 10 41 0D 32 A4 <DATA ERROR"):
        reply = parse_reply([fault], "3" if fault.startswith("48") else "6")
        assert reply.problems and not reply.messages, fault
    reply = parse_reply(["SEARCHING...", "7E8 03 41 0D 32"], "6")
    assert msgs(["SEARCHING...", "7E8 03 41 0D 32"], "6") == [(0x7E8, "410D32")]
    assert not reply.problems


def test_truncated_frames_are_not_messages():
    assert msgs(["7E8 04 41 0C 1A"], "6") == []          # last byte lost
    assert msgs(["7E804410C1AF"], "6") == []             # half a byte lost
    assert msgs(["7E8 03 41 0D 32", "7E9 04 41 0C"], "6") == [(0x7E8, "410D32")]


def test_mode01_segments_must_be_the_requested_pids_with_their_lengths():
    data = bytes.fromhex("410C1AF80D3205 7B".replace(" ", ""))
    assert split_mode01(data, [0x0C, 0x0D, 0x05], SIZES) == {
        0x0C: bytes.fromhex("1AF8"), 0x0D: bytes.fromhex("32"), 0x05: bytes.fromhex("7B")}
    assert split_mode01(data, [0x0C, 0x0D, 0x05, 0x11], SIZES)[0x0D] == b"\x32"  # partial
    assert split_mode01(data, [0x0D], SIZES) is None               # not what was asked
    assert split_mode01(bytes.fromhex("410C1A"), [0x0C], SIZES) is None   # cut short
    assert split_mode01(bytes.fromhex("410D"), [0x0D], SIZES) is None
    assert split_mode01(bytes.fromhex("410D3200"), [0x0D], SIZES) is None  # too long
    assert split_mode01(bytes.fromhex("7F0112"), [0x0C], SIZES) is None    # negative
    assert split_mode01(bytes.fromhex("410C1AF80C1AF8"), [0x0C], SIZES) is None  # twice


def test_dtc_codes_per_sae_j2012():
    assert dtc_code(0x01, 0x33) == "P0133"
    assert dtc_code(0x0A, 0x80) == "P0A80"       # upper case, never 'P0a80'
    assert dtc_code(0x41, 0x23) == "C0123"
    assert dtc_code(0x91, 0x00) == "B1100"
    assert dtc_code(0xC1, 0x00) == "U0100"


def test_dtc_lists_on_can_and_legacy_buses():
    # ELM327 datasheet: "43 01 33 00 00 00 00" on a legacy bus is P0133 and padding
    assert decode_dtcs([Message(0x10, bytes.fromhex("43013300000000"))], 3, False) == \
        ["P0133"]
    # a Corvette's J1850 list in two messages (3 codes each, padded)
    legacy = [Message(0x10, bytes.fromhex("43011120122012")),
              Message(0x10, bytes.fromhex("43151415150000"))]
    assert decode_dtcs(legacy, 3, False) == ["P0111", "P2012", "P2012", "P1514", "P1515"]
    assert decode_dtcs([Message(0x10, bytes.fromhex("43000000000000"))], 3, False) == []
    # CAN: count byte, then two bytes per code
    can = Message(0x7E8, bytes.fromhex("430401020113012302220000"[:20]))
    assert decode_dtcs([can], 3, True) == ["P0102", "P0113", "P0123", "P0222"]
    assert decode_dtcs([Message(0x7E8, bytes.fromhex("4300"))], 3, True) == []
    with pytest.raises(ValueError):  # the count says 4, three came
        decode_dtcs([Message(0x7E8, bytes.fromhex("4304010201130123"))], 3, True)
    with pytest.raises(ValueError):
        decode_dtcs([Message(0x10, bytes.fromhex("470133"))], 7, False)
    assert decode_dtcs([Message(0x7E8, bytes.fromhex("47010171"))], 7, True) == ["P0171"]


def test_vin_whole_and_valid_only():
    can = parse_reply(["7E8 10 14 49 02 01 31 44 34", "7E8 21 47 50 30 30 52 35 35",
                       "7E8 22 42 31 32 33 34 35 36"], "6").messages
    assert decode_vin(can, True) == "1D4GP00R55B123456"  # the datasheet's example
    assert decode_vin(can[:0], True) is None
    cut = parse_reply(["7E8 10 14 49 02 01 31 47 31", "7E8 21 4A 43 35 34 34 34 52",
                       "BUFFER FULL"], "6")
    assert cut.messages == [] and cut.problems
    legacy = [Message(0x10, bytes.fromhex("49020" + str(n) + part)) for n, part in
              enumerate(["00000031", "44344750", "30305235", "35423132", "33343536"], 1)]
    assert decode_vin(legacy, False) == "1D4GP00R55B123456"
    assert decode_vin(legacy[:4], False) is None
    bad = Message(0x7E8, b"\x49\x02\x01" + b"1D4GP00R55B12345I")  # 'I' is never in a VIN
    assert decode_vin([bad], True) is None


def test_a_byte_lost_inside_a_padded_frame_is_not_refilled_by_padding():
    """ISO 15765-4 frames carry 8 bytes; an ECU that pads its single frames has every
    shorter frame cut on the way (reported by a reviewer: '7E804410C1A000000' read as RPM
    1664, '7E806430201330400' as P0133 P0400)."""
    first = parse_reply(["7E8 03 41 05 46 00 00 00 00"], "6")
    assert first.padded == {0x7E8} and msgs(["7E8 03 41 05 46 00 00 00 00"], "6")
    for cut in (["7E804410C1A000000"], ["7E806430201330400"],
                ["7E8 10 0A 43 04 01 02 01 13", "7E8 21 01 23 02 22 00 00"]):
        reply = parse_reply(cut, "6", padded={0x7E8})
        assert reply.messages == [] and reply.problems, cut
    # an ECU that never padded (ECCM's simulator, some clones) is read as before; a
    # single frame full to its 7 bytes is no evidence of padding
    assert parse_reply(["7E8 03 41 0D 32"], "6").padded == set()
    assert parse_reply(["7E8 07 41 00 BE 3F B8 13 01"], "6").padded == set()
    assert msgs(["7E8 03 41 0D 32"], "6") == [(0x7E8, "410D32")]
