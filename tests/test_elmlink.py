"""The byte link alone, against the independent fake adapter: a reply that misses its
deadline is never read as the answer to the next request."""
from __future__ import annotations

import pytest

from eccm.elmlink import AdapterError, ElmLink

from fake_elm import Ecu, FakeElm


def setup(link: ElmLink) -> None:
    for command in ("ATE0", "ATS0", "ATH1", "ATSP6"):
        assert link.command(command).complete


@pytest.mark.parametrize("interruptible", [False, True])
def test_a_late_reply_is_dropped_not_shifted(interruptible):
    quirks = {"stall": (0.6, 2), "stall_interruptible": interruptible}
    with FakeElm(protocol=6, ecus=[Ecu.engine()], quirks=quirks) as fake:
        link = ElmLink(fake.port, 38400, timeout=0.2)
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
