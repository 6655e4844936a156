"""Real MQTT parts for the tests: Debian's Mosquitto broker and mosquitto_sub on 127.0.0.1,
started by the test and stopped by their own process ids; and a "broker" that accepts
connections and never answers (a hung server, or a firewall that lets SYN through)."""
from __future__ import annotations

import getpass
import json
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

from conftest import free_port, require_tool, stop_process, wait_for


class Mosquitto:
    """One broker process on 127.0.0.1:port; restart() brings it back on the same port."""

    def __init__(self, folder: Path, port: Optional[int] = None,
                 users: Optional[Dict[str, str]] = None, tls: bool = False):
        self.exe = require_tool("mosquitto")
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = folder / "mosquitto.conf"
        # Run as us (as root, mosquitto would drop to its own user, who cannot read the
        # test's files); a non-root mosquitto ignores the line.
        lines = [f"listener {self.port} 127.0.0.1", "persistence false",
                 f"user {getpass.getuser()}",
                 f"allow_anonymous {'false' if users else 'true'}"]
        if users:
            passwd = folder / "passwd"
            tool = require_tool("mosquitto_passwd")
            for i, (user, password) in enumerate(users.items()):
                subprocess.run([tool, "-b", *(["-c"] if i == 0 else []), str(passwd), user,
                                password], check=True, capture_output=True)
            lines.append(f"password_file {passwd}")
        self.cert: Optional[Path] = None
        if tls:  # a self-signed certificate for 127.0.0.1: clients trust it as their CA
            self.cert, key = folder / "cert.pem", folder / "key.pem"
            subprocess.run([require_tool("openssl"), "req", "-x509", "-newkey", "rsa:2048",
                            "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
                            "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                            str(self.cert)], check=True, capture_output=True)
            lines += [f"certfile {self.cert}", f"keyfile {key}"]
        self.conf.write_text("\n".join(lines) + "\n")
        self.log_path = folder / "mosquitto.log"
        self.proc: Optional[subprocess.Popen] = None
        self.start()

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf), "-v"], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        wait_for(self._listening, 10, what="mosquitto to listen")

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"mosquitto exited: {self.log}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: the broker vanishes as in a crash or a power cut."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Subscriber:
    """mosquitto_sub on every topic under `topic`, one JSON line per message (-F %j)."""

    def __init__(self, folder: Path, port: int, topic: str = "#",
                 user: Optional[str] = None, password: Optional[str] = None,
                 cafile: Optional[Path] = None):
        exe = require_tool("mosquitto_sub")
        self.out = folder / f"sub-{time.monotonic_ns()}.jsonl"
        args = [exe, "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-F", "%j", "-q", "1"]
        if user:
            args += ["-u", user, "-P", password or ""]
        if cafile:
            args += ["--cafile", str(cafile)]
        self._fh = open(self.out, "wb")
        self.proc = subprocess.Popen(args, stdout=self._fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def messages(self, topic: Optional[str] = None) -> List[dict]:
        found = []
        for line in self.out.read_text(errors="replace").splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict) and (topic is None or msg.get("topic") == topic):
                found.append(msg)
        return found

    def payloads(self, topic: str) -> List[str]:
        return [m["payload"] for m in self.messages(topic)]

    def stop(self) -> None:
        stop_process(self.proc)
        self._fh.close()


class SilentBroker:
    """Accepts TCP connections on 127.0.0.1 and never sends a byte (nor closes them)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted: List[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.greet(conn)
            self.accepted.append(conn)

    def greet(self, conn: socket.socket) -> None:
        """What the broker says to a new client: nothing."""

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for conn in self.accepted:
            conn.close()
        self.sock.close()
