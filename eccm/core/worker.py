"""Thread lifecycle shared by every worker: named thread, shared stop event, joined stop.

Also what every reconnect loop uses: Backoff (the growing delay) and LinkLog (the link
state in the shared state, each distinct failure logged once).
"""
from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Optional

from eccm.core.state import CONNECTED, LOST

log = logging.getLogger(__name__)


class Backoff:
    """Delays 0.5, 1, 2, 4 ... seconds up to `cap`, with +-20 % jitter; reset on success."""

    def __init__(self, cap: float, first: float = 0.5, jitter: float = 0.2):
        self.cap = cap
        self.first = first
        self.jitter = jitter
        self._next = first

    def reset(self) -> None:
        self._next = self.first

    def next(self) -> float:
        delay = min(self._next, self.cap)
        self._next = min(self._next * 2, self.cap)
        return delay * random.uniform(1 - self.jitter, 1 + self.jitter) if self.jitter else delay


class LinkLog:
    """Publishes a source's link state; logs a failure once per distinct cause."""

    def __init__(self, state: Any, source: str, label: str):
        self.state = state
        self.source = source
        self.label = label
        self._last_failure: Optional[str] = None

    def __call__(self, link_state: str, reason: str = "") -> None:
        self.state.set_link(self.source, link_state, reason)
        if link_state == LOST:
            if reason != self._last_failure:
                log.warning("%s: %s", self.label, reason)
                self._last_failure = reason
        elif link_state == CONNECTED:
            log.info("%s connected: %s", self.label, reason)
            self._last_failure = None
        else:
            log.debug("%s %s %s", self.label, link_state, reason)


class Worker:
    """Base of the daemon's threads.

    A subclass implements run(), a loop that returns once `self.stop_event` is set and
    waits with `self.stop_event.wait(t)`. An exception escaping run() is logged and
    leaves the thread dead; the daemon's supervisor sees `crashed` and starts it again.
    """

    name = "worker"
    beats = True  # its loop calls heartbeat(); the systemd watchdog checks it

    def __init__(self, stop_event: threading.Event):
        self.stop_event = stop_event
        self._thread: Optional[threading.Thread] = None
        self.crashed = False
        self.restarts = 0
        self.beat = time.monotonic()

    def heartbeat(self) -> None:
        """Called from the worker's loop: it is making progress."""
        self.beat = time.monotonic()

    def run(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _main(self) -> None:
        """Runs in the worker's own thread."""
        try:
            self.run()
        except Exception:
            self.crashed = True
            log.exception("%s thread died", self.name)
        finally:
            self.on_exit()

    def on_exit(self) -> None:
        """Cleanup after run() ends for any reason; runs in the worker's thread."""

    def start(self) -> None:
        self.crashed = False
        self.beat = time.monotonic()
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float) -> bool:
        """Wait for the thread to end (the stop event must be set); True if it did."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("%s thread did not stop within %.1f s", self.name, timeout)
            return False
        return True
