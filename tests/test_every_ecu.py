"""Every ECU's mode-01 values, each the answer of the ECU it is filed under, on the team's
independent fake adapter (tests/fake_elm.py: written from the ELM327 datasheet and SAE
J1979, not from ECCM)."""
from __future__ import annotations

import time
from typing import Any, Dict, List, Tuple

import obd
import pytest

from eccm.sources.obd.adapter import ElmConnection
from eccm.sources.obd.j1979 import PidSpec

from fake_elm import Ecu, FakeElm

ROUNDS = 10


def connect(fake: FakeElm) -> ElmConnection:
    deadline = time.monotonic() + 10
    while True:  # a K-line init may fail the first attempt
        try:
            return ElmConnection(fake.port, timeout=0.5)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def oracle_value(cmd: Any, value: Any) -> Any:
    """A decoded value in the fake oracle's terms (its own J1979 decoder)."""
    if isinstance(cmd, PidSpec):
        return float(value[cmd.columns[0].name])
    if cmd.name == "STATUS":
        return {"mil": bool(value.MIL), "dtc_count": int(value.DTC_count)}
    return float(value.magnitude)


def sent_by(fake: FakeElm, ecu: str, pid: int) -> List[Any]:
    return [v if isinstance(v, dict) else float(v) for _, v in fake.true_values(ecu, pid)]


def address_of(ecu: Ecu, protocol: int) -> int:
    return ecu.can_id if protocol in (6, 8) else ecu.address


CARS = [
    ("can11", 6, [Ecu.engine(), Ecu.transmission(), Ecu.hybrid()]),
    ("can29", 7, [Ecu.engine(), Ecu.transmission(), Ecu.hybrid()]),
    ("J1850 VPW", 2, [Ecu.engine(), Ecu.transmission()]),
    ("ISO 9141-2", 3, [Ecu.engine(), Ecu.transmission()]),
    ("can11 gearbox answers first", 6,
     [Ecu.engine(latency=0.015), Ecu.transmission(latency=0.002)]),
]


@pytest.mark.parametrize("name,protocol,ecus", CARS, ids=[c[0] for c in CARS])
def test_each_ecus_values_are_its_own(name, protocol, ecus):
    """The same PID (RPM, speed, voltage) has a different value on each ECU of the fake:
    a value filed under the wrong ECU, shifted or padded would be one it never sent."""
    with FakeElm(protocol=protocol, ecus=ecus) as fake:
        conn = connect(fake)
        try:
            by_address = {address_of(e, protocol): e for e in ecus}
            assert set(conn.supported_by) == set(by_address)
            for address, ecu in by_address.items():
                assert conn.supported_by[address] >= set(ecu.data_pids())
            commands = sorted({c for a in by_address for c in conn.commands_of(a)},
                              key=lambda c: c.pid)
            seen: Dict[Tuple[int, Any], List[Any]] = {}
            for _ in range(ROUNDS):
                for group in conn.groups(commands):
                    for address, values in conn.query_group_all(group).items():
                        for cmd, value in values.items():
                            assert cmd.pid in conn.supported_by[address]
                            seen.setdefault((address, cmd), [])
                            if value is not None:
                                seen[address, cmd].append(oracle_value(cmd, value))
            for address, ecu in by_address.items():
                for cmd in conn.commands_of(address):
                    values = seen.get((address, cmd), [])
                    sent = sent_by(fake, ecu.name, cmd.pid)
                    for value in values:
                        assert any(value == s if isinstance(s, dict) else
                                   value == pytest.approx(s) for s in sent), \
                            f"{ecu.name} {cmd.name} = {value}: never sent by it ({name})"
                    assert len(values) >= ROUNDS // 2, \
                        f"{ecu.name} {cmd.name} filled {len(values)} of {ROUNDS} ({name})"
            assert not fake.errors
        finally:
            conn.close()


def test_a_pid_only_the_gearbox_has_is_read_from_the_gearbox():
    """SPEED and the gear ratio on the gearbox alone: asked of every ECU, answered by it."""
    gearbox = Ecu.transmission(pids=(0x01, 0x0D, 0x42))
    with FakeElm(protocol=6, ecus=[Ecu.engine(pids=(0x01, 0x0C, 0x05)), gearbox]) as fake:
        conn = connect(fake)
        try:
            speed = obd.commands.SPEED
            assert speed not in conn.supported_commands
            got = conn.query_group_all([speed, obd.commands.RPM])
            assert set(got) == {0x7E8, 0x7E9}
            assert got[0x7E8] == {obd.commands.RPM: got[0x7E8][obd.commands.RPM]}
            assert float(got[0x7E9][speed].magnitude) in sent_by(fake, "transmission", 0x0D)
        finally:
            conn.close()
