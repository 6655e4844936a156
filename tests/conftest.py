"""Shared fixtures: real adapters on pseudo-terminals and the daemon as a child process.

Every process a test starts is stopped by the test through its own process id.
"""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def wait_for(predicate: Callable[[], object], timeout: float, step: float = 0.1,
             what: str = "condition") -> object:
    """Poll predicate until it returns something truthy; fail the test after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def venv_tool(name: str) -> str:
    """Path of a tool the `[test]` extra installs: in the venv this Python runs in, never
    whatever PATH happens to hold (a globally installed copy hid a missing install step)."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        pytest.fail(f"{name} is not in {path.parent}: install the test extra there "
                    f"({sys.executable} -m pip install -e '.[test]', or ./start.sh --test)")
    return str(path)


# The Debian package of each system tool the tests drive (.ci/run installs them).
PACKAGES = {"nc": "netcat-openbsd", "systemd-analyze": "systemd", "rfcomm": "bluez",
            "ncat": "ncat", "openssl": "openssl", "java": "default-jre-headless",
            "mosquitto": "mosquitto", "mosquitto_passwd": "mosquitto",
            "mosquitto_sub": "mosquitto-clients"}


def require_tool(name: str) -> str:
    """Path of a system (Debian) tool the tests drive, in the system's own directories;
    .ci/run installs them all, so in CI a missing one is a failure, on a developer's machine
    a skip that says what to install."""
    path = shutil.which(name, path="/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
    if path is None:
        message = (f"{name} is not installed (apt-get install {PACKAGES.get(name, name)}, "
                   "or run bash .ci/run as root)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def query_values(conn, commands) -> dict:
    """Every command's value through the connection, in the packed groups the poller uses."""
    out: dict = {}
    for group in conn.groups(commands):
        out.update(conn.query_group(group))
    return out


def parse_all(data: bytes) -> list:
    """Every fix in a whole receiver capture, as one parser reads it."""
    from eccm.sources.gnss.nmea import NmeaParser
    parser = NmeaParser()
    return parser.feed(data) + parser.finish()


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pty_from_batch_output(text: str) -> Optional[str]:
    """The pty the emulator printed in batch mode. It is not always the first line: when
    the kernel reuses a pty number, a daemon retrying that path talks to the emulator
    before it prints the name, and the emulator's log lines come first."""
    for line in text.splitlines():
        if line.startswith("/dev/"):
            return line.strip()
    return None


class Emulator:
    """The third-party ELM327-emulator (`elm`) on its own pty, as a child process."""

    def __init__(self, workdir: Path, scenario: str = "car"):
        exe = venv_tool("elm")
        self.batch = workdir / f"elm-{time.monotonic_ns()}.out"
        self.proc = subprocess.Popen([exe, "-s", scenario, "-b", str(self.batch)],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, cwd=workdir)
        self.port = str(wait_for(self._read_port, 15, what="the emulator's pty"))

    def _read_port(self) -> Optional[str]:
        try:
            text = self.batch.read_text()
        except OSError:
            return None
        port = pty_from_batch_output(text)
        return port if port and os.path.exists(port) else None

    def command(self, line: str) -> None:
        """A command of the emulator's own prompt (batch mode reads them from stdin)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def emulator_factory(tmp_path):
    started: List[Emulator] = []

    def start(scenario: str = "car") -> Emulator:
        emu = Emulator(tmp_path, scenario)
        started.append(emu)
        return emu
    yield start
    for emu in started:
        emu.stop()


@pytest.fixture
def sim_adapter():
    from eccm.sim.car import SimulatedAdapter
    adapter = SimulatedAdapter(latency=0.002).start()
    yield adapter
    adapter.stop()


def write_config(folder: Path, **keys: object) -> Path:
    values: Dict[str, object] = {"CAR_IDENTIFIER": "TEST-CAR",
                                 "RECORD_DIRECTORY_LOCATION": str(folder / "records"),
                                 "RECORD_INTERVAL": 0.2, "RECONNECT_MAX_DELAY": 2}
    values.update(keys)
    path = folder / "config.ini"
    path.write_text("[DEFAULT]\n" + "".join(f"{k}={v}\n" for k, v in values.items()))
    return path


class DaemonProcess:
    """`python -m eccm run` as a child process with its stderr collected to a file."""

    def __init__(self, config: Path, extra_args: Optional[List[str]] = None):
        self.config = config
        self.log_path = config.parent / f"daemon-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ECCM_")}
        env["PYTHONPATH"] = str(REPO)  # the code under test, installed or not
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eccm", "run", "--config", str(config),
             *(extra_args or [])],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            cwd=config.parent, env=env)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        stop_process(self.proc, sig, timeout)
        self._log.close()


@pytest.fixture
def daemon_factory():
    started: List[DaemonProcess] = []

    def start(config: Path, extra_args: Optional[List[str]] = None) -> DaemonProcess:
        daemon = DaemonProcess(config, extra_args)
        started.append(daemon)
        return daemon
    yield start
    for daemon in started:
        daemon.stop(signal.SIGKILL)


def read_records(path: Path, separator: str = ",") -> List[List[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh, delimiter=separator))


def part_files(records: Path) -> List[Path]:
    return sorted(records.glob("*.part"))


def outbox_files(records: Path) -> List[Path]:
    """The record files in the outbox (their manifests: outbox_manifests)."""
    return [p for p in sorted((records / "outbox").glob("*"))
            if not p.name.endswith(".manifest.json")] if (records / "outbox").is_dir() else []


def outbox_manifests(records: Path) -> List[Path]:
    return sorted((records / "outbox").glob("*.manifest.json"))
