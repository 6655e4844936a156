"""Stable names for USB serial adapters: list them from sysfs, render udev rules.

The kernel numbers ttyUSB0, ttyUSB1... in plug-in order, so the OBD adapter and the GNSS
receiver may swap after a reboot. A rule matching the device's vendor, product and serial
number (or, for twins without a serial, the USB port it is plugged in) gives it a fixed
name such as /dev/obd or /dev/gnss.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

RULES_PATH = Path("/etc/udev/rules.d/99-eccm.rules")
# Vendors that make GNSS receivers, not OBD adapters (u-blox, Garmin, GlobalSat/SiRF).
GNSS_VENDORS = {"1546", "091e"}
_SAFE = re.compile(r"[^A-Za-z0-9._:+ -]")


@dataclass(frozen=True)
class UsbSerial:
    tty: str              # ttyUSB0
    vendor: str           # idVendor, 4 hex digits
    product: str          # idProduct
    serial: str = ""      # iSerial ('' when the chip has none)
    port: str = ""        # USB port path (KERNELS), e.g. 1-1.2
    manufacturer: str = ""
    name: str = ""        # product string

    @property
    def label(self) -> str:
        text = " ".join(p for p in (self.manufacturer, self.name) if p)
        return text or f"{self.vendor}:{self.product}"


def _read(folder: Path, attr: str) -> str:
    try:
        return (folder / attr).read_text(errors="replace").strip()
    except OSError:
        return ""


def scan(sys_root: Path = Path("/sys")) -> List[UsbSerial]:
    """USB serial devices (ttyUSB*, ttyACM*) as sysfs describes them."""
    found = []
    classes = sys_root / "class" / "tty"
    if not classes.is_dir():
        return found
    for entry in sorted(classes.iterdir()):
        if not re.fullmatch(r"tty(USB|ACM)\d+", entry.name):
            continue
        node = (entry / "device").resolve()
        while node != node.parent and not (node / "idVendor").exists():
            node = node.parent
        if not (node / "idVendor").exists():
            continue
        found.append(UsbSerial(entry.name, _read(node, "idVendor"), _read(node, "idProduct"),
                               _read(node, "serial"), node.name,
                               _read(node, "manufacturer"), _read(node, "product")))
    return found


def suggest_names(devices: Sequence[UsbSerial]) -> Dict[str, str]:
    """tty -> symlink: receivers of GNSS vendors 'gnss', the others 'obd' (then obd1...)."""
    names: Dict[str, str] = {}
    used: Dict[str, int] = {}
    for dev in devices:
        base = "gnss" if dev.vendor in GNSS_VENDORS or "gps" in dev.label.lower() \
            or "gnss" in dev.label.lower() else "obd"
        count = used.get(base, 0)
        names[dev.tty] = base if count == 0 else f"{base}{count}"
        used[base] = count + 1
    return names


def _quote(value: str) -> str:
    return _SAFE.sub("", value)


def render_rules(devices: Sequence[UsbSerial], names: Dict[str, str]) -> str:
    """udev rules giving each named device its symlink, readable by the dialout group."""
    lines = ["# ECCM: stable names for the OBD adapter and the GNSS receiver.",
             "# Install as /etc/udev/rules.d/99-eccm.rules, then:",
             "#   sudo udevadm control --reload-rules && sudo udevadm trigger"]
    twins = {(d.vendor, d.product) for d in devices
             if sum(1 for e in devices if (e.vendor, e.product) == (d.vendor, d.product)) > 1}
    for dev in devices:
        link = names.get(dev.tty)
        if not link:
            continue
        match = ['SUBSYSTEM=="tty"', f'ATTRS{{idVendor}}=="{_quote(dev.vendor)}"',
                 f'ATTRS{{idProduct}}=="{_quote(dev.product)}"']
        if dev.serial:
            match.append(f'ATTRS{{serial}}=="{_quote(dev.serial)}"')
        elif (dev.vendor, dev.product) in twins and dev.port:
            lines.append(f"# {dev.tty} has no serial number: matched by its USB port; "
                         "keep it plugged in the same socket")
            match.append(f'KERNELS=="{_quote(dev.port)}"')
        lines.append(f"# {dev.tty}: {_quote(dev.label)} -> /dev/{link}")
        lines.append(", ".join(match + [f'SYMLINK+="{_quote(link)}"', 'GROUP="dialout"',
                                        'MODE="0660"']))
    return "\n".join(lines) + "\n"


def parse_names(pairs: Optional[Sequence[str]]) -> Dict[str, str]:
    """['ttyUSB0=obd'] -> {'ttyUSB0': 'obd'}; ValueError on a malformed pair."""
    out = {}
    for pair in pairs or ():
        tty, sep, link = pair.partition("=")
        tty = tty.strip().replace("/dev/", "")
        if not sep or not re.fullmatch(r"tty\w+", tty) or not re.fullmatch(r"[a-z0-9_-]+",
                                                                            link.strip()):
            raise ValueError(f"--name expects TTY=NAME such as ttyUSB0=obd, not {pair!r}")
        out[tty] = link.strip()
    return out
