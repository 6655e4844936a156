"""Wording shared by user-facing messages (socket replies, command output, logs)."""
from __future__ import annotations

from typing import Optional


def plural(count: float, singular: str, plural_form: Optional[str] = None) -> str:
    """'1 file', '3 files', '1 uploaded copy' / '2 uploaded copies'."""
    shown = f"{count:g}" if isinstance(count, float) else str(count)
    word = singular if count == 1 else (plural_form or singular + "s")
    return f"{shown} {word}"
