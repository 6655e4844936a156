"""A simulated serial device: a pseudo-terminal served by one thread (sim.car, sim.gnss)."""
from __future__ import annotations

import os
import pty
import threading
import tty


class PtyDevice:
    """`port` is the path a client opens, like /dev/ttyUSB0; _serve() runs in the thread
    and returns once `_stop` is set."""

    thread_name = "simdevice"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._master, self._slave = pty.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._thread = threading.Thread(target=self._serve, name=self.thread_name,
                                        daemon=True)

    def _serve(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass
