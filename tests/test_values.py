"""python-OBD values -> columns: fixed units, plain numbers, status PIDs split."""
from __future__ import annotations

import obd

from eccm.sources.obd import values


def test_units_are_fixed_per_command():
    assert values.unit_of(obd.commands.RPM) == "rpm"
    assert values.unit_of(obd.commands.SPEED) == "km/h"
    assert values.unit_of(obd.commands.COOLANT_TEMP) == "degC"
    assert values.unit_of(obd.commands.MAF) == "g/s"
    assert values.unit_of(obd.commands.FUEL_TYPE) is None


def test_decode_payload_uses_python_obd_decoders():
    rpm = values.decode_payload(obd.commands.RPM, bytes([0x41, 0x0C, 0x1A, 0xF8]))
    assert rpm.magnitude == 1726.0
    assert values.flatten(obd.commands.RPM, rpm) == {"RPM": 1726.0}


def test_status_pid_becomes_mil_and_count():
    status = values.decode_payload(obd.commands.STATUS, bytes([0x41, 0x01, 0x83, 0, 0, 0]))
    assert values.flatten(obd.commands.STATUS, status) == {"STATUS_MIL": 1,
                                                           "STATUS_DTC_COUNT": 3}
    names = [c.header for c in values.columns_for(obd.commands.STATUS)]
    assert names == ["STATUS_MIL", "STATUS_DTC_COUNT (count)"]


def test_bitmaps_are_not_engine_values():
    assert not values.is_recordable(obd.commands.PIDS_A)
    assert not values.is_recordable(obd.commands.O2_SENSORS)
    assert not values.is_recordable(obd.commands.GET_DTC)
    assert values.is_recordable(obd.commands.RPM)


def test_plain_values():
    assert values.plain(True) == 1
    assert values.plain(("Closed loop", "")) == "Closed loop"
    assert values.plain(b"VIN\x00") == "VIN\x00"
    assert values.flatten(obd.commands.RPM, None) == {}
