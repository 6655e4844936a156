"""ECCM's own mode-01 decoders past python-OBD's table (PIDs 0x61-0xC4): every expected
value is worked out by hand from the J1979 formula in the comment beside it."""
from __future__ import annotations

import re

import obd
import pytest

from eccm.core.state import Column
from eccm.sources.obd import j1979


def dec(pid: int, hexdata: str):
    return j1979.PIDS[pid].decode(bytes.fromhex(hexdata))


# (pid, data bytes after '41 pid', expected {column: value})
CASES = [
    # 0x61 driver's demand torque, A - 125
    (0x61, "00", {"DRIVER_DEMAND_TORQUE": -125}),          # 0 - 125
    (0x61, "7D", {"DRIVER_DEMAND_TORQUE": 0}),             # 125 - 125
    (0x61, "FF", {"DRIVER_DEMAND_TORQUE": 130}),           # 255 - 125
    # 0x62 actual torque, A - 125
    (0x62, "AF", {"ACTUAL_ENGINE_TORQUE": 50}),            # 175 - 125
    (0x62, "64", {"ACTUAL_ENGINE_TORQUE": -25}),           # 100 - 125
    # 0x63 reference torque, 256A + B Nm
    (0x63, "01F4", {"ENGINE_REF_TORQUE": 500}),            # 256 + 244
    (0x63, "0000", {"ENGINE_REF_TORQUE": 0}),
    (0x63, "FFFF", {"ENGINE_REF_TORQUE": 65535}),
    # 0x64 percent torque at idle and points 2-5, each byte - 125
    (0x64, "7D00FF9664", {"ENGINE_TORQUE_DATA_IDLE": 0,       # 125 - 125
                          "ENGINE_TORQUE_DATA_POINT_2": -125,  # 0 - 125
                          "ENGINE_TORQUE_DATA_POINT_3": 130,   # 255 - 125
                          "ENGINE_TORQUE_DATA_POINT_4": 25,    # 150 - 125
                          "ENGINE_TORQUE_DATA_POINT_5": -25}),  # 100 - 125
    # 0x65 aux I/O: A bits 0-3 supported, B bits 0-3 the states
    (0x65, "0F05", {"AUX_IO_PTO_ACTIVE": 1, "AUX_IO_AT_IN_GEAR": 0,     # B = 0b0101
                    "AUX_IO_MT_IN_GEAR": 1, "AUX_IO_GLOW_PLUG_LAMP": 0}),
    (0x65, "030F", {"AUX_IO_PTO_ACTIVE": 1, "AUX_IO_AT_IN_GEAR": 1}),   # A = 0b0011 only
    (0x65, "00FF", {}),                                               # nothing supported
    (0x65, "F0FF", {}),                                               # reserved bits only
    # 0x66 MAF A/B: A0/A1 supported, (256B + C)/32 and (256D + E)/32 g/s
    (0x66, "0304D2FFFF", {"MAF_SENSOR_A": 38.5625,        # 0x04D2 = 1234, 1234/32
                          "MAF_SENSOR_B": 2047.96875}),   # 65535/32
    (0x66, "0104D2FFFF", {"MAF_SENSOR_A": 38.5625}),      # B's bit clear
    (0x66, "0204D20001", {"MAF_SENSOR_B": 0.03125}),      # 1/32; A's bit clear
    (0x66, "FC04D2FFFF", {}),                             # bits 2-7 only
    # 0x67 coolant temperature 1/2: A0/A1, B - 40, C - 40 degC
    (0x67, "0300FF", {"ECT_SENSOR_1": -40, "ECT_SENSOR_2": 215}),  # 0-40, 255-40
    (0x67, "027B82", {"ECT_SENSOR_2": 90}),                          # 130-40; 1 absent
    (0x67, "017B82", {"ECT_SENSOR_1": 83}),                          # 123-40; 2 absent
    # 0x68 intake air temperature B1S1-3, B2S1-3: A0-A5, byte - 40 degC
    (0x68, "3F283C5000FF41", {"IAT_SENSOR_B1S1": 0, "IAT_SENSOR_B1S2": 20,    # 40, 60 - 40
                              "IAT_SENSOR_B1S3": 40, "IAT_SENSOR_B2S1": -40,  # 80, 0 - 40
                              "IAT_SENSOR_B2S2": 215, "IAT_SENSOR_B2S3": 25}),  # 255, 65 - 40
    (0x68, "09283C5000FF41", {"IAT_SENSOR_B1S1": 0, "IAT_SENSOR_B2S1": -40}),  # bits 0, 3
    (0x68, "C0283C5000FF41", {}),                                               # bits 6, 7
    # 0x69 EGR: A0-A5; commanded/actual 100A/255 %, error 100A/128 - 100 %
    (0x69, "3FFF8000003381", {"EGR_CONTROL_A_CMD": 100.0,       # 255*100/255
                                 "EGR_CONTROL_A_ACT": 50.2,        # 128*100/255 = 50.196
                                 "EGR_CONTROL_A_ERROR": -100.0,    # 0*100/128 - 100
                                 "EGR_CONTROL_B_CMD": 0.0,
                                 "EGR_CONTROL_B_ACT": 20.0,        # 51*100/255
                                 "EGR_CONTROL_B_ERROR": 0.78125}),  # 129*100/128 - 100
    (0x69, "24FFFFFFFFFFFF", {"EGR_CONTROL_A_ERROR": 99.21875,     # 255*100/128 - 100
                              "EGR_CONTROL_B_ERROR": 99.21875}),   # A = bits 2 and 5
    # 0x6A diesel intake air flow: A0-A3, 100X/255 %
    (0x6A, "0F00FF6601", {"DIESEL_AIR_FLOW_A_CMD": 0.0, "DIESEL_AIR_FLOW_A_POS": 100.0,
                          "DIESEL_AIR_FLOW_B_CMD": 40.0,           # 102*100/255
                          "DIESEL_AIR_FLOW_B_POS": 0.39}),         # 100/255 = 0.392
    (0x6A, "0500FF6601", {"DIESEL_AIR_FLOW_A_CMD": 0.0, "DIESEL_AIR_FLOW_B_CMD": 40.0}),
    # 0x6C throttle actuator: A0-A3, 100X/255 %
    (0x6C, "0A33806699", {"THROTTLE_CONTROL_A_POS": 50.2,        # bit 1: 128*100/255
                          "THROTTLE_CONTROL_B_POS": 60.0}),      # bit 3: 153*100/255
    (0x6C, "0F33806699", {"THROTTLE_CONTROL_A_CMD": 20.0, "THROTTLE_CONTROL_A_POS": 50.2,
                          "THROTTLE_CONTROL_B_CMD": 40.0, "THROTTLE_CONTROL_B_POS": 60.0}),
    # 0x6D fuel rail A/B: A0-A5; pressures 10(256X + Y) kPa, temperatures X - 40 degC
    (0x6D, "3F01F4FFFF5A0000006400",
     {"FUEL_RAIL_A_PRESSURE_CMD": 5000,     # 0x01F4 = 500, *10
      "FUEL_RAIL_A_PRESSURE": 655350,       # 65535*10
      "FUEL_RAIL_A_TEMP": 50,               # 90 - 40
      "FUEL_RAIL_B_PRESSURE_CMD": 0,
      "FUEL_RAIL_B_PRESSURE": 1000,         # 100*10
      "FUEL_RAIL_B_TEMP": -40}),            # 0 - 40
    (0x6D, "1201F4FFFF5A0000006400", {"FUEL_RAIL_A_PRESSURE": 655350,   # bits 1 and 4
                                      "FUEL_RAIL_B_PRESSURE": 1000}),
    # 0x6E injection control pressure A/B: A0-A3, 10(256X + Y) kPa
    (0x6E, "0F00011000FFFF0000", {"INJECTION_PRESSURE_A_CMD": 10,     # 1*10
                                  "INJECTION_PRESSURE_A": 40960,      # 0x1000 = 4096, *10
                                  "INJECTION_PRESSURE_B_CMD": 655350,
                                  "INJECTION_PRESSURE_B": 0}),
    (0x6E, "0800011000FFFF1234", {"INJECTION_PRESSURE_B": 46600}),   # 0x1234 = 4660, *10
    # 0x72 wastegate: A0-A3, 100X/255 %
    (0x72, "0FFF000133", {"WASTEGATE_A_CMD": 100.0, "WASTEGATE_A_POS": 0.0,
                          "WASTEGATE_B_CMD": 0.39, "WASTEGATE_B_POS": 20.0}),  # 1, 51
    (0x72, "06FF000133", {"WASTEGATE_A_POS": 0.0, "WASTEGATE_B_CMD": 0.39}),   # bits 1, 2
    # 0x73 exhaust pressure B1/B2: A0/A1, (256X + Y)/100 kPa
    (0x73, "032710FFFF", {"EXHAUST_PRESSURE_B1": 100.0,    # 0x2710 = 10000, /100
                          "EXHAUST_PRESSURE_B2": 655.35}),  # 65535/100
    (0x73, "022710FFFF", {"EXHAUST_PRESSURE_B2": 655.35}),
    # 0x75/0x76 turbo temperatures: A0-A3; compressor X - 40, turbine (256X + Y)/10 - 40
    (0x75, "0F41A01F400000", {"TURBO_A_TEMP_COMPRESSOR_IN": 25,       # 65 - 40
                              "TURBO_A_TEMP_COMPRESSOR_OUT": 120,     # 160 - 40
                              "TURBO_A_TEMP_TURBINE_IN": 760.0,       # 0x1F40 = 8000, /10 - 40
                              "TURBO_A_TEMP_TURBINE_OUT": -40.0}),    # 0/10 - 40
    (0x75, "0C41A01F400000", {"TURBO_A_TEMP_TURBINE_IN": 760.0,       # bits 2, 3 only
                              "TURBO_A_TEMP_TURBINE_OUT": -40.0}),
    (0x76, "0100FFFFFFFFFF", {"TURBO_B_TEMP_COMPRESSOR_IN": -40}),    # bit 0 only
    (0x76, "0800000000FFFF", {"TURBO_B_TEMP_TURBINE_OUT": 6513.5}),   # 6553.5 - 40
    # 0x77 charge air cooler B1S1, B1S2, B2S1, B2S2: A0-A3, X - 40 degC
    (0x77, "0F00FF2846", {"CHARGE_AIR_TEMP_B1S1": -40, "CHARGE_AIR_TEMP_B1S2": 215,
                          "CHARGE_AIR_TEMP_B2S1": 0, "CHARGE_AIR_TEMP_B2S2": 30}),  # 40, 70
    (0x77, "0600FF2846", {"CHARGE_AIR_TEMP_B1S2": 215, "CHARGE_AIR_TEMP_B2S1": 0}),
    # 0x78/0x79 EGT sensors 1-4: A0-A3, (256X + Y)/10 - 40 degC
    (0x78, "0F0000FFFF0FA00191", {"EGT_BANK_1_S1": -40.0,     # 0/10 - 40
                                  "EGT_BANK_1_S2": 6513.5,    # 65535/10 - 40
                                  "EGT_BANK_1_S3": 360.0,     # 0x0FA0 = 4000, /10 - 40
                                  "EGT_BANK_1_S4": 0.1}),     # 0x0191 = 401, /10 - 40
    (0x78, "040000FFFF0FA00191", {"EGT_BANK_1_S3": 360.0}),
    (0x79, "010BB8FFFFFFFFFFFF", {"EGT_BANK_2_S1": 260.0}),   # 0x0BB8 = 3000, /10 - 40
    # 0x98/0x99 EGT sensors 5-8, same layout as 0x78/0x79
    (0x98, "0800000000000001F4", {"EGT_BANK_1_EXT_S8": 10.0}),   # 0x01F4 = 500, /10 - 40
    (0x99, "0F00000190000A0191", {"EGT_BANK_2_EXT_S5": -40.0,    # 0
                                  "EGT_BANK_2_EXT_S6": 0.0,      # 0x0190 = 400
                                  "EGT_BANK_2_EXT_S7": -39.0,    # 0x000A = 10
                                  "EGT_BANK_2_EXT_S8": 0.1}),    # 401
    # 0x7C DPF temperatures B1 in/out, B2 in/out: A0-A3, (256X + Y)/10 - 40 degC
    (0x7C, "0F1388119401900001", {"DPF_TEMP_B1_IN": 460.0,     # 0x1388 = 5000
                                     "DPF_TEMP_B1_OUT": 410.0,    # 0x1194 = 4500
                                     "DPF_TEMP_B2_IN": 0.0,       # 0x0190 = 400
                                     "DPF_TEMP_B2_OUT": -39.9}),  # 1/10 - 40
    (0x7C, "051388119401900001", {"DPF_TEMP_B1_IN": 460.0, "DPF_TEMP_B2_IN": 0.0}),
    (0x7C, "001388119401900001", {}),
    # 0x7F engine run time total/idle/PTO: A0-A2, 4-byte seconds
    (0x7F, "070001E24000000E10FFFFFFFF",
     {"ENGINE_RUN_TIME_TOTAL": 123456,        # 0x01E240 = 65536 + 0xE2*256 + 0x40
      "ENGINE_RUN_TIME_IDLE": 3600,           # 0x0E10
      "ENGINE_RUN_TIME_PTO": 4294967295}),    # 2^32 - 1
    (0x7F, "020001E24000000E10FFFFFFFF", {"ENGINE_RUN_TIME_IDLE": 3600}),
    # 0x83 NOx B1S1, B1S2, B2S1, B2S2: A0-A3, 256X + Y ppm
    (0x83, "0F0000012CFFFF03E8", {"NOX_SENSOR_B1S1": 0, "NOX_SENSOR_B1S2": 300,   # 0x012C
                                  "NOX_SENSOR_B2S1": 65535,
                                  "NOX_SENSOR_B2S2": 1000}),                      # 0x03E8
    (0x83, "090000012CFFFF03E8", {"NOX_SENSOR_B1S1": 0, "NOX_SENSOR_B2S2": 1000}),
    # 0x84 manifold surface temperature, A - 40
    (0x84, "00", {"MANIFOLD_SURFACE_TEMP": -40}),
    (0x84, "8C", {"MANIFOLD_SURFACE_TEMP": 100}),          # 140 - 40
    (0x84, "FF", {"MANIFOLD_SURFACE_TEMP": 215}),
    # 0x85 NOx reagent: A0-A3; rates (256X + Y)/200 L/h, level 100F/255 %, time G-J s
    (0x85, "0F012CFFFF8000000E10", {"NOX_REAGENT_RATE": 1.5,           # 300/200
                                    "NOX_REAGENT_DEMAND": 327.675,     # 65535/200
                                    "NOX_REAGENT_LEVEL": 50.2,         # 128*100/255
                                    "NOX_REAGENT_WARNING_TIME": 3600}),
    (0x85, "04012CFFFF8000000E10", {"NOX_REAGENT_LEVEL": 50.2}),
    # 0x86 PM B1S1/B2S1: A0/A1, (256X + Y)/80 mg/m3
    (0x86, "030050FFFF", {"PM_SENSOR_B1S1": 1.0,            # 80/80
                          "PM_SENSOR_B2S1": 819.1875}),     # 65535/80
    (0x86, "010050FFFF", {"PM_SENSOR_B1S1": 1.0}),
    # 0x87 MAP A/B: A0/A1, (256X + Y)/32 kPa
    (0x87, "030CA80001", {"MAP_SENSOR_A": 101.25,           # 0x0CA8 = 3240, /32
                          "MAP_SENSOR_B": 0.03125}),        # 1/32
    (0x87, "020CA80001", {"MAP_SENSOR_B": 0.03125}),
    # 0x8D throttle position G, 100A/255 %
    (0x8D, "00", {"THROTTLE_POS_G": 0.0}),
    (0x8D, "80", {"THROTTLE_POS_G": 50.2}),                 # 50.196
    (0x8D, "FF", {"THROTTLE_POS_G": 100.0}),
    # 0x8E friction torque, A - 125
    (0x8E, "00", {"ENGINE_FRICTION_TORQUE": -125}),
    (0x8E, "7D", {"ENGINE_FRICTION_TORQUE": 0}),
    (0x8E, "FF", {"ENGINE_FRICTION_TORQUE": 130}),
    # 0x9D engine/vehicle fuel rate, (256A + B)/50 and (256C + D)/50 g/s
    (0x9D, "01F4FFFF", {"FUEL_MASS_RATE_ENGINE": 10.0,      # 500/50
                        "FUEL_MASS_RATE_VEHICLE": 1310.7}),  # 65535/50
    (0x9D, "00000001", {"FUEL_MASS_RATE_ENGINE": 0.0, "FUEL_MASS_RATE_VEHICLE": 0.02}),
    # 0x9E exhaust flow, (256A + B)/5 kg/h
    (0x9E, "0001", {"EXHAUST_FLOW_RATE": 0.2}),
    (0x9E, "01F4", {"EXHAUST_FLOW_RATE": 100.0}),            # 500/5
    (0x9E, "FFFF", {"EXHAUST_FLOW_RATE": 13107.0}),
    # 0xA2 cylinder fuel rate, (256A + B)/32 mg/stroke
    (0xA2, "0000", {"CYLINDER_FUEL_RATE": 0.0}),
    (0xA2, "04D2", {"CYLINDER_FUEL_RATE": 38.5625}),         # 1234/32
    (0xA2, "FFFF", {"CYLINDER_FUEL_RATE": 2047.96875}),
    # 0xA4 gear ratio: A1 supported, (256C + D)/1000
    (0xA4, "02300DAC", {"TRANS_GEAR_RATIO": 3.5}),           # 0x0DAC = 3500
    (0xA4, "0200FFFF", {"TRANS_GEAR_RATIO": 65.535}),
    (0xA4, "01300DAC", {}),                                  # only bit 0
    # 0xA5 commanded DEF dosing: A0 supported, B/2 %
    (0xA5, "01FF0000", {"DEF_DOSING": 127.5}),               # 255/2
    (0xA5, "01330000", {"DEF_DOSING": 25.5}),                # 51/2
    (0xA5, "00FF0000", {}),
    # 0xA6 odometer, (A*2^24 + B*2^16 + C*2^8 + D)/10 km
    (0xA6, "0012D687", {"ODOMETER": 123456.7}),    # 18*65536 + 214*256 + 135 = 1234567
    (0xA6, "00000000", {"ODOMETER": 0.0}),
    (0xA6, "FFFFFFFF", {"ODOMETER": 429496729.5}),  # (2^32 - 1)/10
    # 0xA9 ABS disable switch: A0 supported, B0 1 = yes
    (0xA9, "01010000", {"ABS_DISABLE_SWITCH": 1}),
    (0xA9, "01FE0000", {"ABS_DISABLE_SWITCH": 0}),   # B0 clear
    (0xA9, "00010000", {}),
]


@pytest.mark.parametrize("pid,hexdata,expected", CASES,
                         ids=[f"{p:02X}-{h}" for p, h, _ in CASES])
def test_decodes_by_hand(pid, hexdata, expected):
    got = dec(pid, hexdata)
    assert got == expected
    for name, value in got.items():   # same numeric type as worked out (no 20 vs 20.0)
        assert type(value) is type(expected[name]), name


def test_every_pid_has_a_worked_example():
    assert {pid for pid, _, _ in CASES} == set(j1979.PIDS)


# The J1979 length of each PID's data (after the '41 pid' echo).
SIZES = {0x61: 1, 0x62: 1, 0x63: 2, 0x64: 5, 0x65: 2, 0x66: 5, 0x67: 3, 0x68: 7, 0x69: 7,
         0x6A: 5, 0x6C: 5, 0x6D: 11, 0x6E: 9, 0x72: 5, 0x73: 5, 0x75: 7, 0x76: 7, 0x77: 5,
         0x78: 9, 0x79: 9, 0x7C: 9, 0x7F: 13, 0x83: 9, 0x84: 1, 0x85: 10, 0x86: 5, 0x87: 5,
         0x8D: 1, 0x8E: 1, 0x98: 9, 0x99: 9, 0x9D: 4, 0x9E: 2, 0xA2: 2, 0xA4: 4, 0xA5: 4,
         0xA6: 4, 0xA9: 4}


def test_sizes_are_the_j1979_lengths():
    assert {pid: s.size for pid, s in j1979.PIDS.items()} == SIZES
    assert all(1 <= s.size <= 13 for s in j1979.PIDS.values())


@pytest.mark.parametrize("pid", sorted(j1979.PIDS), ids=lambda p: f"{p:02X}")
def test_wrong_length_is_refused(pid):
    s = j1979.PIDS[pid]
    for n in (0, s.size - 1, s.size + 1, s.size + 4):
        if n >= 0 and n != s.size:
            with pytest.raises(ValueError):
                s.decode(bytes(n))


def test_never_padded_or_cut():
    with pytest.raises(ValueError):
        dec(0xA6, "0012D6")          # a short odometer is not read as 0x0012D600
    with pytest.raises(ValueError):
        dec(0x67, "0300FF00")        # nor a long one cut


def test_pids_are_in_range_and_not_bitmaps():
    assert all(0x61 <= pid <= 0xC4 for pid in j1979.PIDS)
    assert not {0x60, 0x80, 0xA0, 0xC0} & set(j1979.PIDS)
    assert all(s.pid == pid for pid, s in j1979.PIDS.items())


def test_spec_lookup():
    assert j1979.spec(0xA6) is j1979.PIDS[0xA6]
    for pid in (0x0C, 0x5F, 0x60, 0x6B, 0x9A, 0xA0, 0xC0, 0xC4, 0x1FF):
        assert j1979.spec(pid) is None


def payloads(s):
    """All-zero, all-one and a mixed payload of the PID's length."""
    return [bytes(s.size), b"\xff" * s.size, bytes((i * 37 + 11) & 0xFF for i in range(s.size))]


@pytest.mark.parametrize("pid", sorted(j1979.PIDS), ids=lambda p: f"{p:02X}")
def test_keys_are_its_columns_and_values_plain(pid):
    s = j1979.PIDS[pid]
    names = [c.name for c in s.columns]
    for data in payloads(s):
        got = s.decode(data)
        assert set(got) <= set(names)
        for value in got.values():
            assert type(value) in (int, float)
            if type(value) is float:
                assert value == round(value, 5)     # no float noise
    # all support bits set: every column this PID declares is filled
    assert list(s.decode(b"\xff" * s.size)) == names


def test_columns_have_fixed_short_units():
    units = {"degC", "%", "Nm", "km", "g/s", "kPa", "L/h", "kg/h", "ppm", "mg/m3", "s",
             "ratio", "mg/stroke", ""}
    for s in j1979.PIDS.values():
        assert s.columns and all(isinstance(c, Column) for c in s.columns)
        assert {c.unit for c in s.columns} <= units, s.name


def test_names_follow_the_rules():
    for s in j1979.PIDS.values():
        assert re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*", s.name)
        if len(s.columns) == 1:
            assert s.columns[0].name == s.name
        else:
            assert all(c.name.startswith(s.name + "_") for c in s.columns)
        for c in s.columns:
            assert re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*", c.name)


def test_names_are_unique_and_not_python_obd_names():
    pid_names = [s.name for s in j1979.PIDS.values()]
    columns = [c.name for s in j1979.PIDS.values() for c in s.columns]
    assert len(set(pid_names)) == len(pid_names)
    assert len(set(columns)) == len(columns)
    mode1 = {c.name for c in obd.commands[1] if c}
    everywhere = {c.name for mode in obd.commands.modes for c in mode if c}
    assert mode1 and mode1 <= everywhere
    assert not (set(pid_names) | set(columns)) & everywhere
    # python-OBD indeed stops before these PIDs (why this module exists)
    assert max(c.pid for c in obd.commands[1] if c) < 0x61
