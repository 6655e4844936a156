"""The daemon: builds the workers from the config, starts them, supervises, shuts down.

One threading.Event stops everything. SIGTERM/SIGINT set it; shutdown joins the workers
in reverse start order within a bounded time, so the recorder (started first, stopped
last) closes the current file and queues it after the sources have stopped.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from datetime import datetime, timezone
from typing import Dict, List, Optional

from eccm.core.clock import RELEASED, RecordClock
from eccm.config import Config
from eccm.sinks.disk import DiskBudget
from eccm.sources.gnss.reader import GnssReader
from eccm.core.health import status_line
from eccm.core.notify import Notifier
from eccm.sources.obd.link import PortInUse
from eccm.sources.obd.poller import ObdPoller
from eccm.sinks.mqtt import MqttPublisher
from eccm.sinks.records import Recorder
from eccm.server.tcp import SocketServer
from eccm.sinks.upload import Uploader
from eccm.core.state import SharedState

log = logging.getLogger(__name__)

STOP_BUDGET = 4.0  # seconds for all joins together; the process must be gone within 5 s
SUPERVISE_EVERY = 1.0
DISK_CHECK_EVERY = 60.0
RESTART_DELAY_CAP = 30.0
HEARTBEAT_LIMIT = 60.0  # a worker silent this long is stuck: withhold the watchdog
STATUS_EVERY = 10.0


class Daemon:
    def __init__(self, cfg: Config, notifier: Optional[Notifier] = None,
                 heartbeat_limit: float = HEARTBEAT_LIMIT):
        self.cfg = cfg
        self.notifier = notifier or Notifier()
        self.heartbeat_limit = heartbeat_limit
        self._stuck: List[str] = []
        self._last_watchdog = 0.0
        self._last_status = ("", 0.0)
        self._logged_status = ""
        self.stop_event = threading.Event()
        self.state = SharedState()
        self.started = time.monotonic()
        self._restart_at: Dict[str, float] = {}
        self._restart_delay: Dict[str, float] = {}
        self.clock = RecordClock()

        # Each component builds itself from the config, or says it is off (None).
        self.recorder = Recorder.from_config(self.stop_event, self.state, cfg,
                                             clock=self.clock.now,
                                             clock_source=self._clock_source)
        self.poller = ObdPoller.from_config(self.stop_event, self.state, cfg)
        self.gnss = GnssReader.from_config(self.stop_event, self.state, cfg,
                                           on_fix=self._on_fix)
        self.server = SocketServer.from_config(self.stop_event, self.state, self.poller, cfg)
        self.uploader = Uploader.from_config(self.stop_event, self.state, cfg)
        self.mqtt = MqttPublisher.from_config(self.stop_event, self.state, cfg,
                                              clock=self.clock.now)
        # Started in this order, stopped in reverse: the recorder closes its file last.
        self.workers = [w for w in (self.recorder, self.poller, self.gnss, self.server,
                                    self.uploader, self.mqtt) if w is not None]
        self.disk = DiskBudget.from_config(cfg)
        self._next_disk_check = 0.0

    def _clock_source(self) -> str:
        """Recorder thread: how the time of the row being written was obtained."""
        if self.clock.corrected:
            return "gnss"
        return "unverified" if datetime.now(timezone.utc) < RELEASED else "system"

    def _on_fix(self, fix) -> None:
        """GNSS thread: a fix with a position carries a UTC time worth trusting."""
        if fix.mode >= 2 and fix.utc is not None and fix.mono is not None:
            self.clock.observe(fix.utc, fix.mono)

    def start(self) -> None:
        if self.recorder is not None:
            self.recorder.prepare()
        if self.server is not None:
            self.server.prepare()
        for worker in self.workers:
            worker.start()
        log.info("ECCM started: car %s, %s", self.cfg.CAR_IDENTIFIER,
                 ", ".join(w.name for w in self.workers))
        self.notifier.send("READY=1", f"STATUS={self.status_line()}")

    def install_signal_handlers(self) -> None:
        """Main thread only: SIGTERM/SIGINT ask for a clean stop."""
        def on_signal(signum: int, _frame: object) -> None:
            log.info("%s received, stopping", signal.Signals(signum).name)
            self.stop_event.set()
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def run(self) -> int:
        """Start, supervise until stopped, shut down. Runs in the main thread."""
        try:  # two ECCMs on one adapter would each read the other's replies
            self.poller.check_port_free()
        except PortInUse as exc:
            log.error("%s: is ECCM already running (systemctl status eccm)?", exc)
            return 2
        self.install_signal_handlers()
        self.start()
        every = SUPERVISE_EVERY
        if self.notifier.enabled and self.notifier.watchdog_interval:
            # systemd wants a ping every third of WatchdogSec or so (keepalive): wake as often
            every = min(every, self.notifier.watchdog_interval / 3)
        try:
            while not self.stop_event.wait(every):
                self.supervise()
                self.keepalive()
                self.log_status()
        finally:
            self.shutdown()
        return 0

    def check_disk(self) -> None:
        """Main thread, once a minute: the record folder's budget."""
        self.disk.check(self.state)

    def supervise(self) -> None:
        """Restart a worker whose thread died, with a growing delay if it keeps dying."""
        now = time.monotonic()
        if now >= self._next_disk_check:
            self._next_disk_check = now + DISK_CHECK_EVERY
            self.check_disk()
        for worker in self.workers:
            if worker.is_alive() or self.stop_event.is_set():
                continue
            due = self._restart_at.get(worker.name)
            if due is None:
                delay = self._restart_delay.get(worker.name, 0.5)
                self._restart_at[worker.name] = now + delay
                self._restart_delay[worker.name] = min(delay * 2, RESTART_DELAY_CAP)
                log.error("%s thread is not running; restarting it in %.1f s",
                          worker.name, delay)
            elif now >= due:
                del self._restart_at[worker.name]
                worker.restarts += 1
                self.state.count(f"restarts_{worker.name}")
                worker.start()

    def status_line(self) -> str:
        """One line of health for systemctl status."""
        snap = self.state.snapshot()
        return status_line(snap.health, snap.links, tuple(snap.columns))

    def log_status(self) -> None:
        """Main thread: the log says what the health model says, when it changes (the
        line systemd's status shows, made by core.health.status_line from the same Health
        that STATUS reads)."""
        line = self.status_line()
        if line != self._logged_status:
            log.info("status: %s", line)
            self._logged_status = line

    def keepalive(self) -> None:
        """Main thread: WATCHDOG=1 only while the loop and every worker make progress;
        a missing adapter is progress (its thread keeps retrying), a hung thread is not."""
        if not self.notifier.enabled:
            return
        now = time.monotonic()
        stuck = [w.name for w in self.workers
                 if w.beats and w.is_alive() and now - w.beat > self.heartbeat_limit]
        if stuck != self._stuck:
            if stuck:
                log.error("%s thread stuck for over %.0f s: withholding the watchdog so "
                          "systemd restarts ECCM", ", ".join(stuck), self.heartbeat_limit)
            self._stuck = stuck
        interval = self.notifier.watchdog_interval
        if not stuck and interval and now - self._last_watchdog >= min(1.0, interval / 3):
            self.notifier.send("WATCHDOG=1")
            self._last_watchdog = now
        line = self.status_line()
        if line != self._last_status[0] or now - self._last_status[1] > STATUS_EVERY:
            self.notifier.send(f"STATUS={line}")
            self._last_status = (line, now)

    def shutdown(self) -> None:
        self.notifier.send("STOPPING=1")
        self.stop_event.set()
        deadline = time.monotonic() + STOP_BUDGET
        for worker in reversed(self.workers):
            worker.join(max(0.1, deadline - time.monotonic()))
        log.info("ECCM stopped")
