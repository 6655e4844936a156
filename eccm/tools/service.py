"""systemd unit for this installation: rendering (pure) and installing (root)."""
from __future__ import annotations

import getpass
import grp
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

UNIT_NAME = "eccm.service"
UNIT_DIR = Path("/etc/systemd/system")


@dataclass(frozen=True)
class Installation:
    executable: str       # the venv's eccm
    config: str           # absolute config path
    workdir: str          # folder of the config
    records: str          # RECORD_DIRECTORY_LOCATION (written)
    user: str
    group: str
    docs: Optional[Path] = None  # ECCM's README, where this installation has one


def documentation_line(readme: Optional[Path]) -> str:
    """Documentation= pointing at ECCM's own README as a file: URL ('%' doubled: systemd
    reads it as a specifier); nothing when the install has no README (a wheel ships none)."""
    if readme is None:
        return ""
    return "Documentation=" + readme.resolve().as_uri().replace("%", "%%") + "\n"


def render_unit(inst: Installation) -> str:
    """The unit: Type=notify + watchdog, restart forever, hardened without losing serial
    ports (USB, UART, Bluetooth RFCOMM) or the network (S3, socket server)."""
    return f"""[Unit]
Description=ECCM car monitoring daemon (OBD-II, GNSS, S3 upload)
{documentation_line(inst.docs)}After=network-online.target bluetooth.target
Wants=network-online.target
StartLimitIntervalSec=0

[Service]
Type=notify
NotifyAccess=main
ExecStart={inst.executable} run --config {inst.config}
WorkingDirectory={inst.workdir}
User={inst.user}
Group={inst.group}
SupplementaryGroups=dialout
Restart=on-failure
RestartSec=5
WatchdogSec=30
TimeoutStopSec=15
UMask=0027

# Serial adapters only: USB serial, UART, Bluetooth RFCOMM, pseudo-terminals (tests).
DevicePolicy=closed
DeviceAllow=char-ttyUSB rw
DeviceAllow=char-ttyACM rw
DeviceAllow=char-ttyS rw
DeviceAllow=char-ttyAMA rw
DeviceAllow=char-rfcomm rw
DeviceAllow=char-pts rw

# Hardening: read-only system, writable records only, no privileges.
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={inst.records}
ProtectHome=read-only
PrivateTmp=yes
PrivateMounts=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
PrivateUsers=no
CapabilityBoundingSet=
AmbientCapabilities=
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6

[Install]
WantedBy=multi-user.target
"""


def detect(config: Path, records: str) -> Installation:
    """This installation: the running eccm (in its venv), the config, the calling user."""
    sibling = Path(sys.executable).with_name("eccm")  # the venv this eccm runs from
    executable = str(sibling) if sibling.exists() else (shutil.which("eccm") or str(sibling))
    user = os.environ.get("SUDO_USER") or getpass.getuser()
    try:
        group = grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    except KeyError:
        group = user
    config = config.resolve()
    return Installation(executable=str(Path(executable).resolve()), config=str(config),
                        workdir=str(config.parent), records=records, user=user, group=group,
                        docs=find_readme())


def find_readme() -> Optional[Path]:
    """README.md of the checkout this package runs from (pip install -e, ./start.sh)."""
    readme = Path(__file__).resolve().parents[2] / "README.md"
    try:
        head = readme.read_text(encoding="utf-8")[:200]
    except (OSError, UnicodeDecodeError):
        return None
    return readme if "ECCM" in head else None


def install(unit: str) -> List[str]:
    """Write the unit, reload, enable and (re)start it, so that after an upgrade the new
    version runs with the new unit; what was done (root only)."""
    path = UNIT_DIR / UNIT_NAME
    path.write_text(unit)
    done = [f"wrote {path}"]
    for args in (["daemon-reload"], ["enable", UNIT_NAME], ["restart", UNIT_NAME]):
        subprocess.run(["systemctl", *args], check=True, timeout=60)
        done.append("systemctl " + " ".join(args))
    return done
