"""Wording shared by user-facing messages (socket replies, command output, logs) and the
plain text of a value (record cells, socket replies, MQTT payloads)."""
from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Optional


def plural(count: float, singular: str, plural_form: Optional[str] = None) -> str:
    """'1 file', '3 files', '1 uploaded copy' / '2 uploaded copies'."""
    shown = f"{count:g}" if isinstance(count, float) else str(count)
    word = singular if count == 1 else (plural_form or singular + "s")
    return f"{shown} {word}"


def format_time(moment: datetime) -> str:
    """ISO 8601 UTC with milliseconds and Z: 2026-11-24T22:18:50.360Z."""
    utc = moment.astimezone(timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def format_cell(value: Any) -> str:
    """Plain text of a value: integers without '.0', at most 6 decimals, '' for none."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        text = f"{value:.6f}".rstrip("0").rstrip(".")
        return "0" if text == "-0" else text
    if isinstance(value, datetime):
        return format_time(value)
    # Text: one row is one line, whatever the ECU sends.
    return str(value).replace("\r", " ").replace("\n", " ")
