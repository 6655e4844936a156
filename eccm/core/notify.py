"""systemd notifications (sd_notify protocol) with the standard library only.

A no-op outside systemd (no NOTIFY_SOCKET). The watchdog interval comes from
WATCHDOG_USEC, which systemd sets from the unit's WatchdogSec=.
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Mapping, Optional

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: Optional[Mapping[str, str]] = None):
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_interval: Optional[float] = int(usec) / 1e6 if usec.isdigit() else None
        self._sock: Optional[socket.socket] = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> None:
        """Send 'KEY=value' lines in one datagram; failures are logged once, never raised."""
        if self.address is None:
            return
        address = self.address
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract socket namespace
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.sendto("\n".join(lines).encode("utf-8", "replace"), address)
        except OSError as exc:
            if not self._failed:
                log.warning("cannot notify systemd: %s", exc)
                self._failed = True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
