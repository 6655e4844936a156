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


def test_the_reserved_names_have_one_home_and_are_known_without_python_obd():
    """The OBD source's standard names (the adapter's voltage too) come from values alone:
    config (a profile's signal must be named apart) and the lake read them there."""
    import subprocess
    import sys
    from conftest import REPO
    from eccm.config import reserved_value_names
    from eccm.sources.obd.poller import VOLTAGE_COLUMN as polled
    assert polled is values.VOLTAGE_COLUMN
    assert values.standard_units()[values.VOLTAGE_COLUMN.name] == "V"
    assert set(values.reserved_names()) == set(values.standard_units())
    assert {"RPM", "BATTERY_VOLTAGE", "LATITUDE", "TIME"} <= set(reserved_value_names())
    code = ("import sys; sys.modules['obd'] = None\n"
            "from eccm.config import reserved_value_names\n"
            "names = reserved_value_names()\n"
            "assert 'obd' not in [m for m in sys.modules if sys.modules[m]]\n"
            "print(' '.join(n for n in names if n in ('BATTERY_VOLTAGE', 'ACTUAL_ENGINE_TORQUE',"
            " 'LATITUDE', 'RPM')))")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, cwd=REPO).stdout.split()
    assert shown == ["ACTUAL_ENGINE_TORQUE", "BATTERY_VOLTAGE", "LATITUDE"]  # RPM: python-OBD's
