"""systemd notifications through a fake NOTIFY_SOCKET (a unix datagram socket)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from eccm.config import load
from eccm.core.daemon import Daemon
from eccm.core.notify import Notifier

from conftest import REPO, stop_process, wait_for, write_config


class NotifySocket:
    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages = []
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while self.running:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.messages += [(time.monotonic(), ln) for ln in data.decode().splitlines()]

    def count(self, line, since=0.0):
        with self.lock:
            return sum(1 for t, m in self.messages if m == line and t >= since)

    def times(self, line, since=0.0):
        with self.lock:
            return [t for t, m in self.messages if m == line and t >= since]

    def seen(self, prefix):
        with self.lock:
            return [m for _, m in self.messages if m.startswith(prefix)]

    def close(self):
        self.running = False
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path):
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def test_no_socket_no_op(tmp_path):
    quiet = Notifier({})
    assert not quiet.enabled and quiet.watchdog_interval is None
    quiet.send("READY=1")  # outside systemd: nothing happens, nothing raised
    broken = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    broken.send("READY=1")  # a vanished socket is logged once, never raised
    assert broken.enabled and broken._failed


def test_ready_watchdog_hang_and_stopping(tmp_path, notify_socket):
    """The daemon with no adapter: READY, then WATCHDOG keeps coming; a frozen process
    sends none; SIGTERM sends STOPPING. WatchdogSec is 2 s (the daemon pings every
    third of it): the same checks as with systemd's usual tens of seconds, in seconds."""
    watchdog = 2.0
    config = write_config(tmp_path, OBD_INTERFACE=tmp_path / "no-adapter")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECCM_")}
    env.update(PYTHONPATH=str(REPO), NOTIFY_SOCKET=notify_socket.path,
               WATCHDOG_USEC=str(int(watchdog * 1e6)))
    proc = subprocess.Popen([sys.executable, "-m", "eccm", "run", "--config", str(config)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: notify_socket.count("READY=1"), 20, what="READY=1")
        start = time.monotonic()
        wait_for(lambda: notify_socket.count("WATCHDOG=1", since=start) >= 3, 4 * watchdog,
                 what="WATCHDOG=1 three times")
        pings = [start] + notify_socket.times("WATCHDOG=1", since=start)[:3]
        assert pings[3] - start <= 4 / 3 * watchdog, "watchdog not kept alive"
        assert max(b - a for a, b in zip(pings, pings[1:])) < watchdog, pings
        wait_for(lambda: any("obd lost" in s for s in notify_socket.seen("STATUS=")), 10,
                 what="STATUS to say obd lost")
        proc.send_signal(signal.SIGSTOP)  # the main loop hangs
        time.sleep(0.3)  # pings sent before the stop still on their way
        frozen = time.monotonic()
        time.sleep(watchdog)  # a whole WatchdogSec without a ping: systemd would act
        assert notify_socket.count("WATCHDOG=1", since=frozen) == 0
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        assert notify_socket.count("STOPPING=1") == 1
    finally:
        stop_process(proc, signal.SIGKILL)


def test_stuck_worker_withholds_watchdog(tmp_path, notify_socket):
    cfg, _ = load(write_config(tmp_path, OBD_INTERFACE=tmp_path / "no-adapter"), environ={})
    daemon = Daemon(cfg, Notifier({"NOTIFY_SOCKET": notify_socket.path,
                                   "WATCHDOG_USEC": "2000000"}), heartbeat_limit=1.0)
    release = threading.Event()
    original = daemon.recorder.tick
    hang = threading.Event()

    def tick():
        if hang.is_set():
            release.wait(30)  # stuck in I/O, say
        original()
    daemon.recorder.tick = tick
    daemon.start()

    def pings(at_least: int, since: float = 0.0) -> bool:
        daemon.keepalive()  # the main loop's call, as often as wait_for polls
        return notify_socket.count("WATCHDOG=1", since=since) >= at_least
    try:
        wait_for(lambda: pings(2), 5, what="WATCHDOG=1 twice while every worker beats")
        hang.set()
        wait_for(lambda: time.monotonic() - daemon.recorder.beat > daemon.heartbeat_limit,
                 10, what="the recorder to be silent longer than the heartbeat limit")
        stuck_since = time.monotonic()
        for _ in range(4):
            daemon.keepalive()
            time.sleep(0.4)
        time.sleep(0.3)
        assert notify_socket.count("WATCHDOG=1", since=stuck_since) == 0
        release.set()
        hang.clear()
        wait_for(lambda: pings(1, since=stuck_since), 5,
                 what="WATCHDOG=1 again once the recorder beats")
    finally:
        release.set()
        daemon.shutdown()
