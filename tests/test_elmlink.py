"""The byte link alone, against the independent fake adapter: a reply that misses its
deadline is never read as the answer to the next request."""
from __future__ import annotations

import pytest

from eccm.sources.obd.link import AdapterError, ElmLink

from conftest import wait_for
from fake_elm import Ecu, FakeElm


def setup(link: ElmLink) -> None:
    for command in ("ATE0", "ATS0", "ATH1", "ATSP6"):
        assert link.command(command).complete


@pytest.mark.parametrize("transport", ["pty", "tcp"])
@pytest.mark.parametrize("interruptible", [False, True])
def test_a_late_reply_is_dropped_not_shifted(interruptible, transport):
    """On a serial port and over TCP (a Wi-Fi adapter: pyserial's socket in_waiting
    says at most 1, so stale bytes are drained in a loop)."""
    quirks = {"stall": (0.6, 2), "stall_interruptible": interruptible}
    tcp = transport == "tcp"
    with FakeElm(protocol=6, ecus=[Ecu.engine()], quirks=quirks, use_pty=not tcp,
                 tcp=tcp) as fake:
        link = ElmLink(f"socket://127.0.0.1:{fake.tcp_port}" if tcp else fake.port, 38400,
                       timeout=0.2)
        try:
            setup(link)
            assert link.command("010C").complete                # request 1
            late = link.command("010D")                          # request 2 stalls
            assert not late.complete and not link.synced
            after = link.command("0105")                         # resync first
            assert after.complete and link.synced
            data = [ln for ln in after.lines if ln.startswith("7E8")]
            assert data and all(ln[5:9] == "4105" for ln in data), after.lines
            assert link.missed_prompts == 1 and link.stale_bytes > 0
        finally:
            link.close()


def test_a_searching_adapter_gets_more_time():
    with FakeElm(protocol=6, ecus=[Ecu.engine()], search_time=0.5) as fake:
        link = ElmLink(fake.port, 38400, timeout=0.2)
        try:
            for command in ("ATE0", "ATS0", "ATH1", "ATSP0"):
                link.command(command)
            first = link.command("0100")  # SEARCHING... for longer than the timeout
            assert first.complete and any(ln.startswith("7E8") for ln in first.lines)
        finally:
            link.close()


def test_an_adapter_that_never_prompts_again_is_an_error():
    with FakeElm(protocol=6, ecus=[Ecu.engine()], quirks={"stall": (30, 1)}) as fake:
        link = ElmLink(fake.port, 38400, timeout=0.1)
        try:
            setup(link)
            assert not link.command("010C").complete
            with pytest.raises(AdapterError, match="no prompt"):
                link.command("010D")
        finally:
            link.close()


def test_stale_bytes_on_a_socket_are_all_drained_before_the_next_command():
    """pyserial's socket in_waiting reports at most one byte: draining once would leave
    a late reply in place, to be read as the next request's answer."""
    import socket
    import threading
    import time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    late_sent = threading.Event()

    def adapter():
        conn, _ = server.accept()
        with conn:
            buffer = b""
            while True:
                data = conn.recv(100)
                if not data:
                    return
                buffer += data
                while b"\r" in buffer:
                    line, buffer = buffer.split(b"\r", 1)
                    if line == b"010C":  # answered, then a late duplicate arrives
                        conn.sendall(b"7E804410C1AF8\r\r>")
                        time.sleep(0.05)
                        conn.sendall(b"7E804410C0BB8\r\r>")
                        late_sent.set()
                    elif line == b"010D":
                        conn.sendall(b"7E803410D32\r\r>")
    thread = threading.Thread(target=adapter, daemon=True)
    thread.start()
    link = ElmLink(f"socket://127.0.0.1:{port}", 38400, timeout=0.5)
    try:
        assert link.command("010C").lines == ["7E804410C1AF8"]
        wait_for(lambda: late_sent.is_set() and link.ser.in_waiting, 5, step=0.01,
                 what="the duplicate waiting in the socket")
        assert link.command("010D").lines == ["7E803410D32"]
        assert link.stale_bytes >= 15
    finally:
        link.close()
        server.close()
        thread.join(2)
