"""Vehicle profiles in OBDb's signal-set format: decoding to the true values, the answer
address, what is refused and what is skipped, and `eccm profile check`.

Every expected value is worked out by hand in the comments (bix 0 is the most significant
bit of the first byte after the response service byte and the PID/DID echo; multi-byte
fields are big-endian; value = raw * mul / div + add), never with the code under test.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from eccm.sources.obd.profile import ProfileError, load, parse

PROFILES = REPO / "eccm" / "profiles"


def load_file(path):
    """One profile file, as the daemon loads it."""
    return load(path)[0]


def signal(signal_id, unit=None, **fmt):
    if unit is not None:
        fmt["unit"] = unit
    return {"id": signal_id, "name": signal_id.replace("_", " ").lower(), "path": "Battery",
            "fmt": fmt}


BENCH = {"commands": [
    {"hdr": "7E4", "cmd": {"22": "0101"}, "freq": 1, "signals": [
        signal("B_SOC", "percent", len=8, max=100, div=2),
        signal("B_PACK_V", "volts", bix=8, len=16, max=1000, div=10),
        signal("B_PACK_I", "amps", bix=24, len=16, sign=True, min=-1000, max=1000, div=10),
        {"id": "B_STATE", "name": "state", "fmt": {"bix": 40, "len": 3, "map": {
            "0": {"description": "Idle", "value": "IDLE"},
            "1": {"description": "Driving", "value": "DRIVE"},
            "2": {"description": "AC charging", "value": "CHARGING_AC"},
            "3": {"description": "DC charging", "value": "CHARGING_DC"}}}},
        signal("B_PLUG", "offon", bix=43, len=1, max=1),
        signal("B_POWER", "kilowatts", bix=44, len=12, max=409.5, div=10),
        signal("B_TEMP", "celsius", bix=56, len=8, sign=True, min=-40, max=80),
        signal("B_SPEED", "milesPerHour", bix=64, len=16, blsb=True, sign=True, min=-180,
               max=180, div=100),
        signal("B_TRIM", "scalar", bix=80, len=8, max=25.5, mul=0.1),
        signal("B_SOC_DISPLAY", "percent", bix=88, len=8, max=100, mul=100, div=255),
        signal("B_AMBIENT", "celsius", bix=96, len=8, min=-40, max=87.5, div=2, add=-40),
        signal("B_RANGE", "kilometers", bix=104, len=8, max=255, nullmax=255),
    ]},
]}

# 62 01 01 (positive answer to 22, echo 0101), then the data, byte by byte:
#  [0]  99        B_SOC: 0x99 = 153, 153 / 2 = 76.5 %
#  [1]  0D EC     B_PACK_V: 0x0DEC = 3564, / 10 = 356.4 V
#  [3]  FF 85     B_PACK_I: 0xFF85 = 65413 -> two's complement 65413 - 65536 = -123, / 10
#                 = -12.3 A
#  [5]  71        0111 0001: bits 40-42 = 011 = 3 -> B_STATE CHARGING_DC; bit 43 = 1 ->
#                 B_PLUG 1; bits 44-47 = 0001 begin B_POWER
#  [6]  F4        B_POWER: bits 44-55 = 0001 1111 0100 = 0x1F4 = 500, / 10 = 50.0 kW
#  [7]  FB        B_TEMP: 0xFB = 251 -> 251 - 256 = -5 degC (whole: no mul/div/add)
#  [8]  D6 FE     B_SPEED (blsb): bytes swapped -> 0xFED6 = 65238 - 65536 = -298, / 100
#                 = -2.98 mph (OBDb/Hyundai-Kona-Electric's recorded 7E2.7EA.2101 answer)
#  [10] 03        B_TRIM: 3 * 0.1 = 0.3 (exactly: never 0.30000000000000004)
#  [11] 35        B_SOC_DISPLAY: 53 * 100 / 255 = 20.7843137... -> 20.78431 % (five
#                 significant digits of the 0.392 step; OBDb/Chevrolet-Bolt-EV's case)
#  [12] 64        B_AMBIENT: 100 / 2 - 40 = 10.0 degC (add after scaling; before would
#                 give (100 - 40) / 2 = 30)
#  [13] 64        B_RANGE: 100 km
ANSWER = bytes.fromhex("620101" "99" "0DEC" "FF85" "71" "F4" "FB" "D6FE" "03" "35" "64" "64")
VALUES = {"B_SOC": 76.5, "B_PACK_V": 356.4, "B_PACK_I": -12.3, "B_STATE": "CHARGING_DC",
          "B_PLUG": 1, "B_POWER": 50.0, "B_TEMP": -5, "B_SPEED": -2.98, "B_TRIM": 0.3,
          "B_SOC_DISPLAY": 20.78431, "B_AMBIENT": 10.0, "B_RANGE": 100}


def write(folder: Path, name: str, document) -> Path:
    path = folder / name
    path.write_text(document if isinstance(document, str) else json.dumps(document, indent=1))
    return path


@pytest.fixture
def bench(tmp_path):
    return load_file(write(tmp_path, "bench.json", BENCH)).commands[0]


def with_data(data_hex: str) -> bytes:
    return bytes.fromhex("620101" + data_hex)


def test_one_answer_gives_every_signal_its_true_value(bench):
    values = bench.decode(ANSWER)
    assert values == VALUES
    for name in ("B_PLUG", "B_TEMP", "B_RANGE"):  # whole steps: int, always
        assert type(values[name]) is int
    for name in ("B_SOC", "B_POWER", "B_AMBIENT", "B_TRIM"):  # fractional steps: float
        assert type(values[name]) is float
    assert repr(values["B_TRIM"]) == "0.3"


def test_units_metrics_and_the_request(bench):
    units = {s.id: s.unit for s in bench.signals}
    assert units == {"B_SOC": "%", "B_PACK_V": "V", "B_PACK_I": "A", "B_STATE": "",
                     "B_PLUG": "", "B_POWER": "kW", "B_TEMP": "degC", "B_SPEED": "mph",
                     "B_TRIM": "", "B_SOC_DISPLAY": "%", "B_AMBIENT": "degC",
                     "B_RANGE": "km"}
    assert bench.request == "220101"
    assert (bench.service, bench.pid, bench.period) == (0x22, b"\x01\x01", 1.0)
    state = next(s for s in bench.signals if s.id == "B_STATE")
    assert dict(state.values) == {0: "IDLE", 1: "DRIVE", 2: "CHARGING_AC", 3: "CHARGING_DC"}


def test_values_outside_the_valid_range_are_not_recorded(bench):
    # [0] FF: 255 / 2 = 127.5 % > max 100; [3] 80 00: -32768 / 10 = -3276.8 A < min -1000;
    # [7] 7F: 127 degC > max 80; [13] FF: 255 >= nullmax 255. OBDb's app would clamp the
    # first three to 100, -1000 and 80: ECCM writes nothing rather than a false value.
    values = bench.decode(with_data("FF" "0DEC" "8000" "71" "F4" "7F" "D6FE" "03" "35" "64"
                                    "FF"))
    for name in ("B_SOC", "B_PACK_I", "B_TEMP", "B_RANGE"):
        assert name not in values
    assert values["B_PACK_V"] == 356.4
    # The range is inclusive: D8 F0 = 55536 - 65536 = -10000, / 10 = -1000.0 A; C8 = 200,
    # / 2 = 100.0 %; 50 = 80 degC.
    edge = bench.decode(with_data("C8" "0DEC" "D8F0" "71" "F4" "50"))
    assert (edge["B_SOC"], edge["B_PACK_I"], edge["B_TEMP"]) == (100.0, -1000.0, 80)


def test_a_raw_value_the_enumeration_lacks_is_not_recorded(bench):
    # [5] 90 = 1001 0000: bits 40-42 = 100 = 4, not in the map; bit 43 = 1.
    values = bench.decode(with_data("99" "0DEC" "FF85" "90" "00"))
    assert "B_STATE" not in values and values["B_PLUG"] == 1 and values["B_POWER"] == 0.0


def test_a_short_answer_gives_only_the_fields_it_reaches(bench):
    # 5 data bytes: SOC, voltage and current end by bit 39; bits 40-43 need byte 5.
    assert bench.decode(with_data("99" "0DEC" "FF85")) == {"B_SOC": 76.5, "B_PACK_V": 356.4,
                                                            "B_PACK_I": -12.3}
    # 6 bytes: state and plug fit in byte 5; the power's bits 44-55 run into byte 6.
    assert set(bench.decode(with_data("99" "0DEC" "FF85" "71"))) == {
        "B_SOC", "B_PACK_V", "B_PACK_I", "B_STATE", "B_PLUG"}
    power = next(s for s in bench.signals if s.id == "B_POWER")
    assert power.decode(bytes.fromhex("990DECFF8571")) is None
    assert bench.decode(bytes.fromhex("620101")) == {}


@pytest.mark.parametrize("message, said", [
    ("610101990DEC", "not the positive answer 62"),   # answer to service 21
    ("620102990DEC", "echoes 0102, not 0101"),        # another DID
    ("6201", "echoes 01, not 0101"),                  # echo cut short
    ("7F2231", "negative response to 220101 (31: request out of range)"),
    ("7F2278", "78: response pending"),
    ("", "empty answer"),
])
def test_anything_but_the_positive_answer_to_this_request_is_refused(bench, message, said):
    with pytest.raises(ValueError, match=said.replace("(", r"\(").replace(")", r"\)")):
        bench.decode(bytes.fromhex(message))


def one_command(folder: Path, **command):
    command.setdefault("cmd", {"22": "0101"})
    command.setdefault("freq", 1)
    command.setdefault("signals", [signal("S", "percent", len=8, max=100)])
    return load_file(write(folder, "one.json", {"commands": [command]}))


@pytest.mark.parametrize("fields, header, receive", [
    ({"hdr": "7E4"}, 0x7E4, 0x7EC),                      # ISO 15765-4: 7E0..7E7 -> +8
    ({"hdr": "7E0"}, 0x7E0, 0x7E8),
    ({"hdr": "7E7"}, 0x7E7, 0x7EF),
    ({"hdr": "713", "rax": "77D"}, 0x713, 0x77D),        # rax as written
    ({"hdr": "DA10"}, 0x18DA10F1, 0x18DAF110),           # 18DA<target><source> swapped
    ({"hdr": "DA10", "rax": "10"}, 0x18DA10F1, 0x18DAF110),  # OBDb: the sender byte
    ({"hdr": "DA10", "rax": "10", "pri": "14"}, 0x14DA10F1, 0x14DAF110),
    ({"hdr": "FC00", "rax": "FE007B", "pri": "17"}, 0x17FC00F1, 0x17FE007B),  # low 24 bits
    ({"hdr": "D016", "rax": "1EC60E80"}, 0x18D016F1, 0x1EC60E80),  # the whole ID
])
def test_the_answer_address(tmp_path, fields, header, receive):
    command = one_command(tmp_path, **fields).commands[0]
    assert (command.header, command.receive) == (header, receive)


def test_an_answer_address_that_cannot_be_known_is_an_error(tmp_path):
    with pytest.raises(ProfileError) as caught:
        one_command(tmp_path, hdr="7A0")
    assert caught.value.field == "commands[0].rax"
    assert str(caught.value).startswith(f"{tmp_path / 'one.json'}: commands[0].rax: missing")


@pytest.mark.parametrize("cmd, text, pid", [
    ({"22": "8334"}, "228334", b"\x83\x34"),
    ({"21": "01"}, "2101", b"\x01"),
    ({"01": "0c"}, "010C", b"\x0c"),
])
def test_request_text(tmp_path, cmd, text, pid):
    command = one_command(tmp_path, hdr="7E0", cmd=cmd).commands[0]
    assert (command.request, command.pid, command.service) == (text, pid, int(text[:2], 16))


def test_service_21_and_01_answers_echo_one_byte(tmp_path):
    command = one_command(tmp_path, hdr="7E2", cmd={"21": "01"}, signals=[
        signal("KONA_SPEED", "milesPerHour", bix=8, len=16, blsb=True, sign=True, min=-180,
               max=180, div=100)]).commands[0]
    # 61 01, then [0] 00, [1-2] 31 00 -> swapped 0x0031 = 49, / 100 = 0.49 mph
    assert command.decode(bytes.fromhex("6101003100")) == {"KONA_SPEED": 0.49}


def test_period_defaults_when_freq_is_absent(tmp_path):
    document = {"commands": [{"hdr": "7E4", "cmd": {"22": "0101"},
                              "signals": [signal("S", "percent", len=8, max=100)]}]}
    assert load_file(write(tmp_path, "p.json", document)).commands[0].period == 5.0


def test_unknown_keys_are_tolerated(tmp_path):
    document = {"commands": [{"hdr": "7E4", "cmd": {"22": "0101"}, "freq": 2, "newKey": 1,
                              "tmo": "FA", "dbg": True, "filter": {"from": 2019},
                              "signals": [{**signal("S", "percent", len=8, max=100,
                                                    futureFmt=True), "newSignalKey": "x",
                                           "hidden": True}]}],
                "futureTopLevel": {"anything": []}}
    profile = load_file(write(tmp_path, "p.json", document))
    assert [s.id for s in profile.signals] == ["S"] and profile.skipped == ()


def test_commands_eccm_cannot_send_are_skipped_with_a_reason(tmp_path):
    keep = {"hdr": "7E4", "cmd": {"22": "0101"}, "freq": 1,
            "signals": [signal("KEEP", "percent", len=8, max=100),
                        signal("VIN_TEXT", "ascii", bix=8, len=136, max=0)]}

    def variant(number, **fields):
        return {"hdr": "7E4", "cmd": {"22": f"02{number:02X}"}, "freq": 1,
                "signals": [signal(f"S{number}", "percent", len=8, max=100)], **fields}
    document = {"diagnosticLevel": "03", "commands": [
        keep, variant(1, eax="07"), variant(2, tst="2A"), variant(3, fcm1=True),
        variant(4, din="03"), variant(5, proto="9141-2"), variant(6, tst="F1"),
        variant(7, hdr="7DF"), variant(8, fcm1=False, proto="15765-4-11bit"),
        variant(9, hdr="7C0", fcm1=True)]}  # no rax needed: skipped anyway
    profile = load_file(write(tmp_path, "skips.json", document))
    assert [c.request for c in profile.commands] == ["220101", "220206", "220208"]
    assert [s.id for s in profile.signals] == ["KEEP", "S6", "S8"]
    skipped = "\n".join(profile.skipped)
    for expected in ("diagnosticLevel 03: not entered",
                     "commands[0].signals[1] (VIN_TEXT): skipped: unit 'ascii'",
                     "commands[1] (7E4 220201): skipped: extended addressing (eax 07)",
                     "commands[2] (7E4 220202): skipped: tester address 2A",
                     "commands[3] (7E4 220203): skipped: needs flow control mode 1",
                     "commands[4] (7E4 220204): skipped: needs diagnostic session 03",
                     "commands[5] (7E4 220205): skipped: protocol '9141-2'",
                     "commands[7] (7DF 220207): skipped: sent to the functional address",
                     "commands[9] (7C0 220209): skipped: needs flow control mode 1"):
        assert expected in skipped
    assert len(profile.skipped) == 9


def test_signal_ids_are_unique_across_the_files_loaded_together(tmp_path):
    first = write(tmp_path, "a.json", {"commands": [
        {"hdr": "7E4", "cmd": {"22": "0101"}, "freq": 1,
         "signals": [signal("SOC", "percent", len=8, max=100)]}]})
    second = write(tmp_path, "b.json", {"commands": [
        {"hdr": "7E5", "cmd": {"22": "0101"}, "freq": 1,
         "signals": [signal("T", "celsius", len=8, max=100),
                     signal("SOC", "percent", len=8, max=100)]}]})
    assert [len(p.signals) for p in load(first)] == [1]
    with pytest.raises(ProfileError) as caught:
        load(tmp_path)  # the folder: a.json then b.json
    assert caught.value.file == str(second)
    assert caught.value.field == "commands[0].signals[1].id"
    assert "commands[0].signals[0] in " + str(first) in caught.value.message


def test_a_folder_loads_every_json_file_in_order(tmp_path):
    for name, signal_id in (("b.json", "B"), ("a.json", "A")):
        write(tmp_path, name, {"commands": [{"hdr": "7E4", "cmd": {"22": "0101"}, "freq": 1,
                                             "signals": [signal(signal_id, "percent", len=8,
                                                                max=100)]}]})
    write(tmp_path, "notes.txt", "not a profile")
    assert [Path(p.path).name for p in load(tmp_path)] == ["a.json", "b.json"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ProfileError, match="holds no \\*.json profile"):
        load(empty)


def test_the_shipped_demo_profile_decodes_its_documented_example():
    profiles = {Path(p.path).name: p for p in load(PROFILES)}
    assert sorted(profiles) == ["chevrolet-bolt-ev.json", "demo-ev.json"]
    assert all(p.skipped == () for p in profiles.values())
    cells, charging = profiles["demo-ev.json"].commands
    assert (cells.header, cells.receive, cells.request, cells.period) == \
        (0x7E4, 0x7EC, "220101", 1.0)
    assert (charging.request, charging.period) == ("220102", 5.0)
    # 0099 -> 153 / 2 = 76.5 %; 0DEC -> 3564 / 10 = 356.4 V; FF85 -> -123 / 10 = -12.3 A;
    # 48 -> 72 - 40 = 32 degC; 3D -> 61 - 40 = 21 degC.
    assert cells.decode(bytes.fromhex("620101" "0099" "0DEC" "FF85" "48" "3D")) == {
        "DEMO_HVBAT_SOC": 76.5, "DEMO_HVBAT_V": 356.4, "DEMO_HVBAT_I": -12.3,
        "DEMO_HVBAT_T_MAX": 32, "DEMO_HVBAT_T_MIN": 21}
    # 02: CHARGING_DC; 83 = 1000 0011: plug 1 (bit 0), contactor 1 (bit 1), balancing 1.
    assert charging.decode(bytes.fromhex("620102" "02" "83")) == {
        "DEMO_CHRG_STATE": "CHARGING_DC", "DEMO_CHRG_PLUG": 1, "DEMO_HVBAT_CONTACTOR": 1,
        "DEMO_HVBAT_BALANCING": 1}
    # 00 02: NOT_CHARGING, unplugged, contactor closed (driving), not balancing.
    assert charging.decode(bytes.fromhex("620102" "00" "02")) == {
        "DEMO_CHRG_STATE": "NOT_CHARGING", "DEMO_CHRG_PLUG": 0, "DEMO_HVBAT_CONTACTOR": 1,
        "DEMO_HVBAT_BALANCING": 0}


def test_the_shipped_bolt_profile_reads_obdbs_recorded_answers():
    """The answers OBDb/Chevrolet-Bolt-EV recorded (tests/test_cases/2017/commands)."""
    bolt = {c.request: c for c in load_file(PROFILES / "chevrolet-bolt-ev.json").commands}
    # 0x35 = 53, 53 * 100 / 255 = 20.784313... ; 0xFF: 255 * 100 / 255 = 100
    assert bolt["228334"].decode(bytes.fromhex("62833435")) == {
        "BOLT_HVBAT_SOC_DISPLAY": 20.78431}
    assert bolt["228334"].decode(bytes.fromhex("628334FF")) == {"BOLT_HVBAT_SOC_DISPLAY": 100.0}
    # 0x40 = 64 - 40 = 24 degC; 0x4B = 75 - 40 = 35 degC
    assert bolt["22434F"].decode(bytes.fromhex("62434F40")) == {"BOLT_HVBAT_TEMP": 24}
    assert bolt["22434F"].decode(bytes.fromhex("62434F4B")) == {"BOLT_HVBAT_TEMP": 35}
    # bix 15 = the last bit of byte 1: 00 00 -> 0; 00 01 -> 1
    assert bolt["224373"].decode(bytes.fromhex("6243730000")) == {
        "BOLT_CHARGE_MODE": "NOT_CHARGING"}
    assert bolt["224373"].decode(bytes.fromhex("6243730001")) == {
        "BOLT_CHARGE_MODE": "CHARGING"}


def eccm(*args, cwd: Path, pythonpath: str = str(REPO)):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECCM_")}
    env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-m", "eccm", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def good(**fmt):
    fmt = {"len": 8, "max": 100, "unit": "percent", **fmt}
    return {"commands": [{"hdr": "7E4", "cmd": {"22": "0101"}, "freq": 1,
                          "signals": [{"id": "SOC", "name": "charge", "fmt": fmt}]}]}


def changed(command=None, **fmt):
    document = good(**fmt)
    document["commands"][0].update(command or {})
    return document


MALFORMED = [
    ("not-json", '{"commands": [\n  {"hdr": "7E4",}\n]}', "line 2 column 17", "not JSON"),
    ("no-object", "[1, 2]", "top level", "must be a JSON object"),
    ("no-commands", {"signals": []}, "commands", "missing"),
    ("bad-header", changed({"hdr": "7G4"}), "commands[0].hdr", "hex digits"),
    ("wide-header", changed({"hdr": "FE4"}), "commands[0].hdr", "not an 11-bit CAN ID"),
    ("unknown-service", changed({"cmd": {"2E": "0101"}}), "commands[0].cmd.2E",
     "unknown service '2E'"),
    ("short-did", changed({"cmd": {"22": "01"}}), "commands[0].cmd.22", "4 hex digits"),
    ("len-zero", changed(len=0), "commands[0].signals[0].fmt.len", "must be 1..64 bits"),
    ("len-huge", changed(len=65), "commands[0].signals[0].fmt.len", "must be 1..64 bits"),
    ("beyond-iso-tp", changed(bix=32736), "commands[0].signals[0].fmt.bix",
     "past the longest answer"),
    ("no-unit", {"commands": [{"hdr": "7E4", "cmd": {"22": "0101"}, "freq": 1, "signals": [
        {"id": "SOC", "name": "charge", "fmt": {"len": 8, "max": 100}}]}]},
     "commands[0].signals[0].fmt.unit", "missing"),
    ("div-zero", changed(div=0), "commands[0].signals[0].fmt.div", "must not be 0"),
    ("sign-text", changed(sign="yes"), "commands[0].signals[0].fmt.sign", "true or false"),
    ("min-above-max", changed(min=200), "commands[0].signals[0].fmt.min", "above max"),
    ("no-rax", changed({"hdr": "7A0"}), "commands[0].rax", "give rax"),
    ("wide-rax", changed({"hdr": "DA10", "rax": "F110"}), "commands[0].rax",
     "2 or 6 or 8 hex digits"),
    ("freq-zero", changed({"freq": 0}), "commands[0].freq", "must be above 0"),
    ("bad-id", {"commands": [{"hdr": "7E4", "cmd": {"22": "0101"}, "freq": 1, "signals": [
        {"id": "SOC (%)", "name": "charge", "fmt": {"len": 8, "max": 100, "unit": "percent"}}
    ]}]}, "commands[0].signals[0].id", "names the record column"),
    ("same-id", {"commands": [{"hdr": "7E4", "cmd": {"22": "0101"}, "freq": 1, "signals": [
        {"id": "SOC", "name": "a", "fmt": {"len": 8, "max": 100, "unit": "percent"}},
        {"id": "SOC", "name": "b", "fmt": {"bix": 8, "len": 8, "max": 100, "unit": "percent"}}
    ]}]}, "commands[0].signals[1].id", "is already the id of commands[0].signals[0]"),
    ("map-key", {"commands": [{"hdr": "7E4", "cmd": {"22": "0101"}, "freq": 1, "signals": [
        {"id": "MODE", "name": "mode", "fmt": {"len": 1, "map": {"one": "ON"}}}]}]},
     "commands[0].signals[0].fmt.map.one", "raw values in decimal"),
    ("twice", '{"commands": [{"hdr": "7E4", "cmd": {"22": "0101"}, "freq": 1, "signals": ['
              '{"id": "SOC", "name": "charge", "fmt": {"len": 8, "len": 16, "max": 100, '
              '"unit": "percent"}}]}]}', "commands[0].signals[0].fmt.len",
     "written twice"),
    ("blsb-unaligned", changed(bix=4, len=16, blsb=True), "commands[0].signals[0].fmt.blsb",
     "whole bytes"),
    ("bad-unit", changed(unit="km/h"), "commands[0].signals[0].fmt.unit",
     "not an OBDb unit"),
    # Numbers that would overflow a float or take a Fraction forever at run time.
    ("mul-overflow", '{"commands": [{"hdr": "7E4", "cmd": {"22": "0101"}, "freq": 1, '
     '"signals": [{"id": "SOC", "name": "c", "fmt": {"len": 8, "mul": 1e400, "div": 3, '
     '"max": 1e500, "unit": "percent"}}]}]}', "commands[0].signals[0].fmt", "between"),
    ("div-exponent", '{"commands": [{"hdr": "7E4", "cmd": {"22": "0101"}, "freq": 1, '
     '"signals": [{"id": "SOC", "name": "c", "fmt": {"len": 8, "div": 2e999999999, '
     '"max": 100, "unit": "percent"}}]}]}', "commands[0].signals[0].fmt.div", "between"),
    ("huge-integer", '{"commands": [{"hdr": "7E4", "cmd": {"22": "0101"}, "freq": 1, '
     '"signals": [{"id": "SOC", "name": "c", "fmt": {"len": 8, "max": 1' + "0" * 5000 +
     ', "unit": "percent"}}]}]}', "", ""),
    ("newline-id", {"commands": [{"hdr": "7E4", "cmd": {"22": "0101"}, "freq": 1, "signals": [
        {"id": "SOC\n", "name": "charge", "fmt": {"len": 8, "max": 100, "unit": "percent"}}
    ]}]}, "commands[0].signals[0].id", "names the record column"),
    ("newline-header", changed({"hdr": "7E4\n"}), "commands[0].hdr", "hex digits"),
    ("long-map-key", {"commands": [{"hdr": "7E4", "cmd": {"22": "0101"}, "freq": 1,
                                    "signals": [{"id": "MODE", "name": "mode", "fmt": {
                                        "len": 8, "map": {"1" * 5000: "ON"}}}]}]},
     "commands[0].signals[0].fmt.map.11111111111111111111", "raw values in decimal"),
    ("many-digits", '{"commands": [{"hdr": "7E4", "cmd": {"22": "0101"}, "freq": 1, '
     '"signals": [{"id": "SOC", "name": "c", "fmt": {"len": 8, "div": 1.' + "0" * 400000 +
     '1, "max": 100, "unit": "percent"}}]}]}', "commands[0].signals[0].fmt.div", "between"),
    ("dotted-id", {"commands": [{"hdr": "7E4", "cmd": {"22": "0101"}, "freq": 1, "signals": [
        {"id": "TCM.SPEED", "name": "s", "fmt": {"len": 8, "max": 100, "unit": "percent"}}
    ]}]}, "commands[0].signals[0].id", "names the record column"),
]


@pytest.mark.parametrize("name, document, field, message", MALFORMED,
                         ids=[case[0] for case in MALFORMED])
def test_check_gives_one_line_naming_file_and_field_and_exit_2(tmp_path, name, document,
                                                               field, message):
    path = write(tmp_path, f"{name}.json", document)
    result = eccm("profile", "check", path, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"eccm: {path}: {field}"), lines[0]
    assert message in lines[0]


@pytest.mark.parametrize("signal_id, owner", [
    ("RPM", "a standard value"), ("rpm", "a standard value"),
    ("BATTERY_VOLTAGE", "a standard value"), ("latitude", "a standard value"),
    ("ODOMETER", "a standard value"), ("Soc", "signal SOC"),
])
def test_a_signal_named_like_another_value_is_refused(tmp_path, signal_id, owner):
    """One column never holds two values: OBDb's own SAEJ1979 file names signals RPM and
    MAF; GET finds names in any case, so case does not make a name new."""
    document = good()
    document["commands"][0]["signals"].append(
        {"id": signal_id, "name": "x", "fmt": {"bix": 8, "len": 8, "max": 100,
                                                "unit": "percent"}})
    path = write(tmp_path, "clash.json", document)
    result = eccm("profile", "check", path, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"eccm: {path}: signal {signal_id}: its id is the name "
                                    f"of {owner}"), result.stderr


def test_check_names_the_second_file_of_a_clashing_pair(tmp_path):
    first = write(tmp_path, "first.json", good())
    second = write(tmp_path, "second.json", good())
    result = eccm("profile", "check", first, second, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"eccm: {second}: commands[0].signals[0].id: 'SOC' is "
                                    f"already the id of commands[0].signals[0] in {first}")
    missing = eccm("profile", "check", tmp_path / "absent.json", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr == (f"eccm: {tmp_path / 'absent.json'}: file: cannot be read: "
                              "No such file or directory\n")


def test_check_summarizes_the_shipped_profiles(tmp_path):
    result = eccm("profile", "check", PROFILES, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert f"{PROFILES / 'demo-ev.json'}: 2 commands, 9 signals, 1 ECU\n" \
           "  7E4 -> 7EC: 2 requests every 1..5 s, 9 signals\n" in result.stdout
    assert f"{PROFILES / 'chevrolet-bolt-ev.json'}: 3 commands, 3 signals, 1 ECU" \
        in result.stdout
    verbose = eccm("profile", "check", "-v", PROFILES / "demo-ev.json", cwd=tmp_path)
    assert "    220102 every 5 s: DEMO_CHRG_STATE, DEMO_CHRG_PLUG, DEMO_HVBAT_CONTACTOR, " \
        "DEMO_HVBAT_BALANCING\n" in verbose.stdout


def test_check_lists_what_it_skips(tmp_path):
    document = good()
    document["commands"].append({"hdr": "7E4", "fcm1": True, "cmd": {"22": "0102"},
                                 "freq": 1, "signals": [signal("T", "celsius", len=8,
                                                               max=100)]})
    result = eccm("profile", "check", write(tmp_path, "p.json", document), cwd=tmp_path)
    assert result.returncode == 0
    assert "  commands[1] (7E4 220102): skipped: needs flow control mode 1 (fcm1)" \
        in result.stdout


def test_check_needs_none_of_eccms_dependencies(tmp_path):
    """Checking a profile on a laptop: no python-OBD, pyserial or boto3 needed."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\n" + "".join(
        f"sys.modules[{m!r}] = None\n"
        for m in ("obd", "serial", "pynmea2", "boto3", "botocore", "dotenv")))
    result = eccm("profile", "check", PROFILES / "demo-ev.json", cwd=tmp_path,
                  pythonpath=f"{blocker}{os.pathsep}{REPO}")
    assert result.returncode == 0, result.stderr


def test_a_signal_set_is_parsed_from_its_text_without_a_file(tmp_path):
    profile = parse(json.dumps(BENCH), "bench.json")
    from_file = load_file(write(tmp_path, "bench.json", BENCH))
    assert profile.path == "bench.json"
    assert [(c.request, c.header) for c in profile.commands] == \
        [(c.request, c.header) for c in from_file.commands]
    with pytest.raises(ProfileError) as caught:
        parse("[1, 2]", "mine.json")
    assert str(caught.value).startswith("mine.json: top level: must be a JSON object")
