"""Counts in command output read as English: '1 file', '1 fix', never '1 files'."""
from __future__ import annotations

import os
import subprocess
import sys
from functools import reduce

from conftest import REPO


def sentence(body: str) -> bytes:
    checksum = reduce(lambda acc, char: acc ^ ord(char), body, 0)
    return f"${body}*{checksum:02X}\r\n".encode()


def test_gnss_parse_counts_one_in_the_singular(tmp_path):
    capture = tmp_path / "one-fix.nmea"
    capture.write_bytes(
        sentence("GPRMC,080000.00,A,4546.0000,N,00450.0000,E,10.0,90.0,010526,,,A")
        + sentence("GPGGA,080000.00,4546.0000,N,00450.0000,E,1,09,0.8,200.0,M,47.0,M,,")
        + b"\xff" + sentence("GPGGA,080001.00,4546.0000,N,00450.0000,E,1,09,0.8,200.0,M,"
                             "47.0,M,,")[:-6] + b"*00\r\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECCM_")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run([sys.executable, "-m", "eccm", "gnss-parse", str(capture)],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("1 fix from 2 sentences; skipped: 1 bad checksum, "), \
        result.stderr
    assert "1 stray byte" in result.stderr and "bytes" not in result.stderr
