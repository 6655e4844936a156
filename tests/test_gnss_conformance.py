"""Conformance with gpsd on real receiver captures, measured through `eccm gnss-parse`.

For each capture in ../shared/testdata/gpsd, every gpsd TPV whose time of day matches an
NMEA position sentence (GGA, RMC, GNS, GLL) of the capture must be reproduced: a fix with
the same time of day and lat/lon within 1e-6 degrees. The figure is printed.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

from conftest import REPO, SHARED

DATA = SHARED / "testdata" / "gpsd"
POSITION = re.compile(r"\$[A-Z]{2}(GGA|RMC|GNS|GLL),([^*\r\n]*)")
pytestmark = pytest.mark.skipif(not DATA.is_dir(),
                                reason=f"gpsd captures not found in {DATA}")


def clock(value: str) -> str:
    """'171926.5' -> '17:19:26.500', the key both sides are compared on."""
    match = re.fullmatch(r"(\d\d)(\d\d)(\d\d)(?:\.(\d+))?", value)
    if not match:
        return ""
    return f"{match[1]}:{match[2]}:{match[3]}.{(match[4] or '').ljust(3, '0')[:3]}"


def position_times(capture: bytes) -> Set[str]:
    times = set()
    for match in POSITION.finditer(capture.decode("latin-1")):
        fields = match[2].split(",")
        value = fields[4] if match[1] == "GLL" and len(fields) > 4 else fields[0]
        if clock(value):
            times.add(clock(value))
    return times


def expected_tpvs(log: Path) -> List[dict]:
    times = position_times(log.read_bytes())
    out = []
    for line in Path(str(log) + ".chk").read_text(errors="replace").splitlines():
        if not line.startswith('{"class":"TPV"'):
            continue
        try:
            tpv = json.loads(line)
        except ValueError:
            continue
        if "time" in tpv and "lat" in tpv and "lon" in tpv and tpv["time"][11:23] in times:
            out.append(tpv)
    return out


def gnss_parse(log: Path) -> Tuple[int, Dict[str, List[dict]]]:
    result = subprocess.run([sys.executable, "-m", "eccm", "gnss-parse", str(log)],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    fixes: Dict[str, List[dict]] = {}
    for line in result.stdout.splitlines():
        fix = json.loads(line)
        key = fix["time"][-13:-1]  # the time of day, with or without a date
        fixes.setdefault(key, []).append(fix)
    return result.returncode, fixes


def test_reproduces_gpsd_fixes_on_real_receivers():
    logs = sorted(DATA.glob("*.log"))
    assert logs
    total = matched = 0
    report = []
    for log in logs:
        code, fixes = gnss_parse(log)
        assert code == 0, f"gnss-parse failed on {log.name}"
        tpvs = expected_tpvs(log)
        hits = sum(1 for tpv in tpvs if any(
            fix["lat"] is not None and abs(fix["lat"] - tpv["lat"]) <= 1e-6
            and abs(fix["lon"] - tpv["lon"]) <= 1e-6
            for fix in fixes.get(tpv["time"][11:23], [])))
        total += len(tpvs)
        matched += hits
        report.append(f"  {log.name:38s} {hits:4d}/{len(tpvs)}")
    ratio = matched / total
    print(f"\ngpsd conformance: {matched}/{total} NMEA position fixes reproduced "
          f"({ratio:.2%}) over {len(logs)} captures")
    print("\n".join(report))
    assert ratio >= 0.995
