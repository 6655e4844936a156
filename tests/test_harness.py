"""The test harness's own parsing of the ELM327-emulator's batch output."""
from conftest import pty_from_batch_output


def test_pty_found_when_a_log_line_comes_first():
    # Captured: the second emulator got the pty number of the first, and the daemon
    # (retrying that path) spoke to it before the emulator printed the name.
    text = ("2026-11-25 00:22:17,215 - root - INFO - Unknown ELM command: 'STBR115200'\n"
            "/dev/pts/1\n"
            "Emulator scenario switched to 'car'\n")
    assert pty_from_batch_output(text) == "/dev/pts/1"


def test_no_pty_yet():
    assert pty_from_batch_output("") is None
    assert pty_from_batch_output("2026-11-25 00:22:17,215 - root - INFO - x\n") is None
