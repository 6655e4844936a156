"""Counts in user-facing messages."""
import pytest

from eccm.core.text import plural


@pytest.mark.parametrize("args,text", [
    ((0, "value"), "0 values"), ((1, "value"), "1 value"), ((3, "file"), "3 files"),
    ((1, "uploaded copy", "uploaded copies"), "1 uploaded copy"),
    ((2, "fix", "fixes"), "2 fixes"), ((1.0, "day"), "1 day"), ((2.5, "day"), "2.5 days")])
def test_plural(args, text):
    assert plural(*args) == text
