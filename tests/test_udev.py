"""udev rules from fake sysfs device descriptions: found, named, and valid rule syntax."""
from __future__ import annotations

import os
import re

import pytest

from eccm.tools.udev import UsbSerial, parse_names, render_rules, scan, suggest_names

# A udev rule: comma-separated KEY[{attr}] OP "value" pairs (udev(7)).
PAIR = re.compile(r'^[A-Z_]+(\{[A-Za-z0-9_]+\})?(==|!=|\+=|:=|=)"[^"\\\\]*"$')


def assert_valid_udev(text: str) -> None:
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        pairs = [p.strip() for p in line.split(", ")]
        assert all(PAIR.match(p) for p in pairs), line
        assert any(p.startswith('SYMLINK+="') for p in pairs), line
        assert any('=="' in p for p in pairs), "a rule must match something"


def fake_device(sys_root, tty, vendor, product, serial, port, manufacturer, product_name):
    usb = sys_root / "devices" / "platform" / "usb1" / port
    iface = usb / f"{port}:1.0"
    node = iface / tty
    node.mkdir(parents=True)
    for attr, value in (("idVendor", vendor), ("idProduct", product),
                        ("manufacturer", manufacturer), ("product", product_name)):
        (usb / attr).write_text(value + "\n")
    if serial:
        (usb / "serial").write_text(serial + "\n")
    cls = sys_root / "class" / "tty" / tty
    cls.mkdir(parents=True)
    os.symlink(node, cls / "device")


def test_scan_name_and_render(tmp_path):
    fake_device(tmp_path, "ttyUSB0", "0403", "6001", "A50285BI", "1-1.2", "FTDI",
                "FT232R USB UART")
    fake_device(tmp_path, "ttyACM0", "1546", "01a8", "", "1-1.3", "u-blox AG",
                "u-blox GNSS receiver")
    fake_device(tmp_path, "ttyUSB1", "1a86", "7523", "", "1-1.4", "", "USB Serial")
    fake_device(tmp_path, "ttyUSB2", "1a86", "7523", "", "1-1.5", "", "USB Serial")
    (tmp_path / "class" / "tty" / "tty0").mkdir()  # a console, not USB
    devices = scan(tmp_path)
    assert [d.tty for d in devices] == ["ttyACM0", "ttyUSB0", "ttyUSB1", "ttyUSB2"]
    names = suggest_names(devices)
    assert names["ttyACM0"] == "gnss" and names["ttyUSB0"] == "obd"
    names.update(parse_names(["ttyUSB2=elm"]))
    rules = render_rules(devices, names)
    assert_valid_udev(rules)
    assert ('SUBSYSTEM=="tty", ATTRS{idVendor}=="0403", ATTRS{idProduct}=="6001", '
            'ATTRS{serial}=="A50285BI", SYMLINK+="obd", GROUP="dialout", MODE="0660"'
            ) in rules
    assert 'KERNELS=="1-1.5", SYMLINK+="elm"' in rules  # serial-less twins: by USB port
    assert 'ATTRS{idVendor}=="1546", ATTRS{idProduct}=="01a8", SYMLINK+="gnss"' in rules


def test_odd_strings_cannot_break_the_rule_syntax():
    dev = UsbSerial("ttyUSB0", "0403", "6001", 'A5"0\\2,8', "1-1", 'Evil "Inc"', "x\ny")
    assert_valid_udev(render_rules([dev], {"ttyUSB0": "obd"}))


@pytest.mark.parametrize("bad", ["obd", "ttyUSB0=", "ttyUSB0=Bad Name", "../x=obd"])
def test_bad_name_pairs_are_refused(bad):
    with pytest.raises(ValueError):
        parse_names([bad])
