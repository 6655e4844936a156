"""Conformance: ECCM's OBD driver against an independent fake adapter (tests/fake_elm.py,
written from the ELM327 datasheet and SAE J1979, not from ECCM or its simulator).

For every case: every value ECCM decodes equals a value the engine ECU really sent for
that PID (the fake's oracle; other ECUs' values come from disjoint ranges and a cut or
padded reply decodes to a value no ECU sent), or is empty; every supported PID is filled
in most rounds; every DTC read returns exactly the true codes.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List

import obd
import pytest

from eccm.sources.obd.adapter import ElmConnection, EngineChanged, ReadError
from eccm.sources.obd.j1979 import PIDS, PidSpec
from eccm.sources.obd.link import PortInUse

from conftest import (REPO, outbox_files, part_files, query_values, read_records,
                      stop_process, wait_for, write_config)
from fake_elm import Ecu, FakeElm

# Cases: (name, protocol, ECUs, quirks). Each ECU answers from its own value range.
CASES = [
    ("can11 engine alone", 6, [Ecu.engine()], {}),
    ("can11 engine + gearbox", 6, [Ecu.engine(), Ecu.transmission()], {}),
    ("can11 gearbox answers first", 6,
     [Ecu.engine(latency=0.015), Ecu.transmission(latency=0.002)], {}),
    ("can11 three ECUs", 6, [Ecu.engine(), Ecu.transmission(), Ecu.hybrid()], {}),
    ("can29 500k two ECUs", 7, [Ecu.engine(), Ecu.transmission()], {}),
    ("can11 250k", 8, [Ecu.engine(), Ecu.transmission()], {}),
    ("can29 250k", 9, [Ecu.engine(), Ecu.transmission()], {}),
    ("J1850 PWM two ECUs", 1, [Ecu.engine(), Ecu.transmission()], {}),
    ("J1850 VPW gearbox first", 2,
     [Ecu.engine(latency=0.015), Ecu.transmission(latency=0.002)], {}),
    ("ISO 9141-2 two ECUs", 3, [Ecu.engine(), Ecu.transmission()], {}),
    ("KWP 5-baud", 4, [Ecu.engine(), Ecu.transmission()], {}),
    ("KWP fast", 5, [Ecu.engine()], {}),
    ("gearbox wakes after connect", 6,
     [Ecu.engine(latency=0.012), Ecu.transmission(latency=0.002, wake_after=1.0)], {}),
    ("legacy gearbox wakes late", 3,
     [Ecu.engine(latency=0.012), Ecu.transmission(latency=0.002, wake_after=1.0)], {}),
    ("clone: multi-PID NO DATA", 6, [Ecu.engine()], {"clone_no_multi_pid": "NO DATA"}),
    ("clone: multi-PID ?", 6, [Ecu.engine(), Ecu.transmission()], {"clone_no_multi_pid": "?"}),
    ("partial packed replies", 6, [Ecu.engine()], {"partial_multi_pid": True}),
    ("first PID only", 6, [Ecu.engine(), Ecu.transmission()], {"first_pid_only": True}),
    ("count digit refused", 6, [Ecu.engine()], {"ignores_count_digit": "?"}),
    ("count digit ignored", 6, [Ecu.engine(), Ecu.transmission()],
     {"ignores_count_digit": "ignore"}),
    ("sticky echo", 6, [Ecu.engine()], {"sticky_echo": True}),
    ("no ATST/ATAT", 3, [Ecu.engine()], {"no_atst_atat": True}),
    ("v1.0 without ATWS", 6, [Ecu.engine()], {"v10_no_atws": True}),
    ("BUFFER FULL", 6, [Ecu.engine(), Ecu.transmission()], {"buffer_full_after": 60}),
    ("stalls past the timeout", 6, [Ecu.engine(), Ecu.transmission()], {"stall": (0.8, 11)}),
    ("legacy stalls", 2, [Ecu.engine(), Ecu.transmission()], {"stall": (0.8, 23)}),
    ("truncated: last byte lost", 6, [Ecu.engine()], {"truncate": ("byte", 3)}),
    ("truncated: half lost", 6, [Ecu.engine(), Ecu.transmission()], {"truncate": ("half", 4)}),
    ("legacy truncated", 1, [Ecu.engine()], {"truncate": ("byte", 3)}),
    ("K-line re-init mid-drive", 3, [Ecu.engine()], {"kline_reinit": (2.0, 70)}),
    ("response pending", 6, [Ecu.engine(), Ecu.transmission()], {"response_pending": (2, 5)}),
    ("CAN ERROR", 6, [Ecu.engine()], {"can_error": 6}),
]

TIMEOUT = 0.5
ROUNDS = 12


def python_obd_value(cmd: Any, value: Any) -> Any:
    """A decoded value in the fake oracle's terms."""
    if isinstance(cmd, PidSpec) and len(cmd.columns) == 1:
        return float(value[cmd.columns[0].name])  # ECCM's own decoders: {column: value}
    if cmd.name == "STATUS":
        return {"mil": bool(value.MIL), "dtc_count": int(value.DTC_count)}
    return float(value.magnitude)


def truth(fake: FakeElm, pid: int) -> List[Any]:
    return [v if isinstance(v, dict) else float(v)
            for _, v in fake.true_values("engine", pid)]


def fault_fired(fake: FakeElm, quirks: Dict[str, Any], conn: Any = None) -> bool:
    """The case's fault really happened during the run (a test of a fault that never
    fired would prove nothing), seen on the wire or in what the driver learnt."""
    out = b"".join(data for _, way, _, data in list(fake.wire) if way == "out")
    kinds = {kind for _, kind, _ in list(fake.events)}
    anomalies = conn.anomalies if conn is not None else {}
    checks = {"stall": "stall" in kinds, "response_pending": "pending" in kinds,
              "kline_reinit": out.count(b"BUS INIT") > 1, "can_error": b"CAN ERROR" in out,
              "buffer_full_after": b"BUFFER FULL" in out,
              "truncate": any(r.delivered == "partial" for r in fake.replies_for()),
              "clone_no_multi_pid": conn is not None and not conn.can_pack,
              "partial_multi_pid": anomalies.get("partial_packed", 0) > 0,
              "first_pid_only": anomalies.get("partial_packed", 0) > 0,
              "sticky_echo": out.count(b"0100") >= 1,
              "no_atst_atat": b"?" in out, "v10_no_atws": b"?" in out,
              "ignores_count_digit": b"?" in out or quirks.get("ignores_count_digit") ==
              "ignore"}
    return all(checks[q] for q in quirks if q in checks)


def connect(fake: FakeElm, **kw: Any) -> ElmConnection:
    deadline = time.monotonic() + 10
    while True:  # the K-line init or a stall may fail the first attempt
        try:
            return ElmConnection(fake.port, timeout=TIMEOUT, **kw)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.parametrize("name,protocol,ecus,quirks", CASES, ids=[c[0] for c in CASES])
def test_every_value_is_the_engines_or_empty(name, protocol, ecus, quirks):
    with FakeElm(protocol=protocol, ecus=ecus, quirks=quirks) as fake:
        conn = connect(fake)
        try:
            engine_pids = set(fake.ecu("engine").data_pids())
            assert engine_pids <= conn.supported  # every range, the odometer's (A6) too
            commands = sorted((c for c in conn.supported_commands
                               if c.mode == 1 and c.pid in engine_pids), key=lambda c: c.pid)
            assert {c.pid for c in commands} == {p for p in engine_pids
                                                 if obd.commands.has_pid(1, p) or p in PIDS}
            seen: Dict[Any, List[Any]] = {c: [] for c in commands}
            for _ in range(ROUNDS):
                for cmd, value in query_values(conn, commands).items():
                    if value is not None:
                        seen[cmd].append(python_obd_value(cmd, value))
            for cmd, values in seen.items():
                sent = truth(fake, cmd.pid)
                for value in values:
                    assert any(value == pytest.approx(s) if not isinstance(s, dict)
                               else value == s for s in sent), \
                        f"{cmd.name} = {value}: the engine never sent it ({name})"
                assert len(values) >= ROUNDS // 2, \
                    f"{cmd.name} filled in {len(values)} of {ROUNDS} rounds ({name})"
            assert not fake.errors
            assert fault_fired(fake, quirks, conn), f"the fault of {name} never happened"
        finally:
            conn.close()


DTC_PROTOCOLS = [6, 7, 1, 3, 4]


@pytest.mark.parametrize("protocol", DTC_PROTOCOLS)
def test_dtc_lists_are_exactly_the_true_codes(protocol):
    engine = Ecu.engine(stored_dtcs=["P0133", "P0301", "P0420", "P0A80"],
                        pending_dtcs=["P0171"])
    gearbox = Ecu.transmission(stored_dtcs=["P0700"])
    with FakeElm(protocol=protocol, ecus=[engine, gearbox]) as fake:
        conn = connect(fake)
        try:
            assert conn.read_dtcs(3) == ["P0133", "P0301", "P0420", "P0A80", "P0700"]
            assert conn.read_dtcs(7) == ["P0171"]
            # the list grows during the session: read again, no count digit learnt
            fake.set_dtcs("engine", stored=["P0133", "P0301", "P0420", "P0A80", "C0123",
                                            "B1100", "U0100"])
            assert conn.read_dtcs(3) == ["P0133", "P0301", "P0420", "P0A80", "C0123",
                                         "B1100", "U0100", "P0700"]
            fake.set_dtcs("engine", stored=["P0420"])
            assert conn.read_dtcs(3) == ["P0420", "P0700"]
            assert conn.clear_dtcs() == 0
            assert conn.read_dtcs(3) == [] and conn.read_dtcs(7) == []
            assert conn.read_vin() == engine.vin
        finally:
            conn.close()


def test_a_cut_dtc_list_is_an_error_not_a_short_list():
    engine = Ecu.engine(stored_dtcs=[f"P0{n:03d}" for n in range(100, 130)])
    with FakeElm(protocol=6, ecus=[engine], quirks={"buffer_full_after": 60}) as fake:
        conn = connect(fake)
        try:
            with pytest.raises(ReadError):
                conn.read_dtcs(3)
        finally:
            conn.close()


def test_a_vin_cut_by_buffer_full_is_refused():
    with FakeElm(protocol=6, ecus=[Ecu.engine()], quirks={"buffer_full_after": 30}) as fake:
        conn = connect(fake, protocol="6")  # no SEARCHING... line: 0100 fits the buffer
        try:
            assert conn.read_vin() is None
        finally:
            conn.close()


def test_a_failed_pending_read_is_an_error_not_zero_codes():
    with FakeElm(protocol=6, ecus=[Ecu.engine(pending_dtcs=["P0171"])]) as fake:
        conn = connect(fake)
        try:
            assert conn.read_dtcs(7) == ["P0171"]
            fake.quirks.can_error = 1  # the bus fails now
            with pytest.raises(ReadError):
                conn.read_dtcs(7)
        finally:
            conn.close()


@pytest.mark.parametrize("protocol", [6, 2])
def test_a_silent_ecu_makes_the_dtc_read_an_error_not_a_short_list(protocol):
    ecus = [Ecu.engine(stored_dtcs=["P0133"]), Ecu.transmission(stored_dtcs=["P0700"])]
    with FakeElm(protocol=protocol, ecus=ecus) as fake:
        conn = connect(fake)
        try:
            assert conn.read_dtcs(3) == ["P0133", "P0700"]
            fake.set_silent("transmission", True)
            with pytest.raises(ReadError, match="did not answer"):
                conn.read_dtcs(3)
        finally:
            conn.close()


@pytest.mark.parametrize("protocol", [6, 3])
def test_an_engine_that_wakes_after_the_gearbox_is_never_confused_with_it(protocol):
    """At connect only the gearbox answers; when the engine wakes, ECCM starts again
    (EngineChanged, an AdapterError: the poller reconnects) rather than record the
    gearbox as the engine."""
    ecus = [Ecu.engine(wake_after=1.0), Ecu.transmission(latency=0.002)]
    with FakeElm(protocol=protocol, ecus=ecus) as fake:
        conn = connect(fake)
        engine_pids = set(fake.ecu("engine").data_pids())
        gearbox_rpm = set()
        try:
            with pytest.raises(EngineChanged):
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    value = query_values(conn, [obd.commands.RPM])[obd.commands.RPM]
                    if value is not None:
                        gearbox_rpm.add(float(value.magnitude))
        finally:
            conn.close()
        assert gearbox_rpm <= set(truth(fake, 0x0C)) | {v for _, v in fake.true_values(
            "transmission", 0x0C)}
        conn = connect(fake)
        try:
            assert conn.engine == (0x7E8 if protocol == 6 else 0x10)
            assert engine_pids <= conn.supported
            value = query_values(conn, [obd.commands.RPM])[obd.commands.RPM]
            assert float(value.magnitude) in truth(fake, 0x0C)
        finally:
            conn.close()


def test_a_slow_engine_behind_a_fast_gearbox_is_heard_at_connect():
    """30 ms is within the 50 ms SAE J1979 allows; adaptive timing must not stop the
    adapter listening after the gearbox's 2 ms answer during discovery."""
    ecus = [Ecu.engine(latency=0.03), Ecu.transmission(latency=0.002)]
    with FakeElm(protocol=6, ecus=ecus, st_unit=0.004) as fake:
        conn = connect(fake)
        try:
            assert conn.engine == 0x7E8 and conn.ecus == {0x7E8, 0x7E9}
        finally:
            conn.close()


def test_an_undecodable_value_is_an_empty_cell_not_a_dead_thread():
    """python-OBD's AIR_STATUS decoder raises IndexError on a reserved bit (41 12 10)."""
    engine = Ecu.engine(generators={0x12: lambda t: b"\x10"})
    with FakeElm(protocol=6, ecus=[engine]) as fake:
        conn = connect(fake)
        try:
            values = query_values(conn, [obd.commands.AIR_STATUS, obd.commands.RPM])
            assert values[obd.commands.AIR_STATUS] is None
            assert values[obd.commands.RPM] is not None
            assert conn.anomalies["undecodable"] == 1
        finally:
            conn.close()


def test_a_silent_car_while_cranking_does_not_turn_packing_off():
    with FakeElm(protocol=6, ecus=[Ecu.engine()]) as fake:
        conn = connect(fake)
        try:
            commands = sorted((c for c in conn.supported_commands if c.mode == 1),
                              key=lambda c: c.pid)
            fake.set_silent("engine", True)
            for _ in range(4):
                query_values(conn, commands)
            fake.set_silent("engine", False)
            values = query_values(conn, commands)
            assert conn.can_pack and all(v is not None for v in values.values())
        finally:
            conn.close()


def test_sixteen_frames_never_become_a_two_digit_count():
    """A one-hex-digit response count: 16 frames or more get none ('...10' would be read
    by the adapter as one more PID)."""
    ecus = [Ecu(name=f"ecu{i}", can_id=0x7E8 + i, address=0x10 + i, latency=0.002 + i * 0.001,
                slot=i % 3) for i in range(6)]
    ecus[0] = Ecu.engine()
    with FakeElm(protocol=6, ecus=ecus) as fake:
        conn = connect(fake)
        try:
            commands = sorted((c for c in conn.supported_commands if c.mode == 1),
                              key=lambda c: c.pid)[:6]
            for _ in range(3):
                values = query_values(conn, commands)
            assert not conn.single_pids and conn.can_pack and conn._digit
            assert all(v is not None for v in values.values())
            sent = [cmd for _, _, cmd in fake.requests]
            assert not any(len(cmd.replace(" ", "")) > 15 for cmd in sent if cmd.startswith("01"))
        finally:
            conn.close()


def test_second_open_of_the_adapter_is_refused_naming_the_holder():
    with FakeElm(protocol=6, ecus=[Ecu.engine()]) as fake:
        conn = connect(fake)
        try:
            with pytest.raises(PortInUse, match="in use"):
                ElmConnection(fake.port, timeout=TIMEOUT)
        finally:
            conn.close()


@pytest.mark.parametrize("protocol,first_says", [
    (6, "OBD adapter connected"),   # the car on: the first one is polling
    (None, "car does not"),         # the car off: the first one holds the port between tries
])
def test_a_second_eccm_on_the_same_adapter_exits_2_naming_the_first(
        tmp_path, daemon_factory, protocol, first_says):
    """The service and a manual ./start.sh never take turns on one adapter."""
    with FakeElm(protocol=protocol, ecus=[Ecu.engine()]) as fake:
        configs = []
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            configs.append(write_config(tmp_path / name, OBD_INTERFACE=fake.port))
        first = daemon_factory(configs[0])
        wait_for(lambda: first_says in first.log, 30, what=f"the first ECCM: {first_says}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ECCM_")}
        env["PYTHONPATH"] = str(REPO)
        for attempt in range(2):  # at any moment of the first one's work or retries
            if attempt:
                time.sleep(1.3)  # another moment of it (the second attempt's subject)
            second = subprocess.run([sys.executable, "-m", "eccm", "run", "--config",
                                     str(configs[1])], env=env, capture_output=True,
                                    text=True, timeout=60, cwd=tmp_path)
            assert second.returncode == 2, second.stderr
            assert f"{fake.port} is in use by PID {first.proc.pid}" in second.stderr
            assert first.proc.poll() is None  # the first one goes on
        first.stop()


def test_wifi_adapter_over_tcp_records_and_reconnects(tmp_path):
    engine = Ecu.engine()
    fake = FakeElm(protocol=6, ecus=[engine], use_pty=False, tcp=True).start()
    port = fake.tcp_port
    records = tmp_path / "records"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECCM_")}
    env["PYTHONPATH"] = str(REPO)
    cfg = write_config(tmp_path, OBD_INTERFACE=f"socket://127.0.0.1:{port}",
                       RECONNECT_MAX_DELAY=1, OBD_SESSION_TIMEOUT=1)
    log = open(tmp_path / "daemon.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "eccm", "run", "--config", str(cfg)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        def connections() -> int:
            return (tmp_path / "daemon.log").read_bytes().count(b"OBD adapter connected")
        wait_for(lambda: connections() >= 1, 30, what="a connection over TCP")
        sent = {v for _, v in fake.true_values("engine", 0x0C)}
        problems = (tmp_path / "daemon.log").read_bytes().count(b"OBD adapter: ")
        fake.stop()  # the Wi-Fi adapter loses power
        wait_for(lambda: (tmp_path / "daemon.log").read_bytes().count(b"OBD adapter: ")
                 > problems, 30, what="the loss of the adapter noticed")
        fake = FakeElm(protocol=6, ecus=[engine], use_pty=False, tcp=True,
                       tcp_port=port).start()
        wait_for(lambda: connections() >= 2, 30, what="a reconnection over TCP")
        reconnected = time.monotonic()
        wait_for(lambda: any(t > reconnected for t, _ in fake.true_values("engine", 0x0C)),
                 10, what="RPM asked after the reconnection")
        wait_for(lambda: recorded(records, "RPM") & {v for _, v in
                                                     fake.true_values("engine", 0x0C)},
                 10, what="an RPM of the adapter back on recorded")
    finally:
        stop_process(proc, signal.SIGTERM)
        log.close()
        sent |= {v for _, v in fake.true_values("engine", 0x0C)}
        fake.stop()
    assert proc.returncode == 0
    cells = []
    for path in outbox_files(records):
        rows = read_records(path)
        column = [h.split(" (")[0] for h in rows[0]].index("RPM")
        cells += [float(r[column]) for r in rows[1:] if r[column]]
    assert cells and set(cells) <= sent
    assert set(cells) & {v for _, v in fake.true_values("engine", 0x0C)}  # after, too


def recorded(records, column: str) -> set:
    """The values of a column in the record files so far, open or finished (an open
    file's last line may be half written: not read)."""
    values = set()
    for path in part_files(records) + outbox_files(records):
        rows = read_records(path)
        if not rows:
            continue
        names = [h.split(" (")[0] for h in rows[0]]
        if column not in names:
            continue
        whole = rows[1:-1] if path.name.endswith(".part") else rows[1:]
        values |= {float(r[names.index(column)]) for r in whole
                   if len(r) == len(names) and r[names.index(column)]}
    return values


# PIDs of the fake engine that python-OBD decodes, by record column.
COLUMNS = {"ENGINE_LOAD": 0x04, "COOLANT_TEMP": 0x05, "INTAKE_PRESSURE": 0x0B, "RPM": 0x0C,
           "SPEED": 0x0D, "INTAKE_TEMP": 0x0F, "MAF": 0x10, "THROTTLE_POS": 0x11,
           "RUN_TIME": 0x1F, "FUEL_LEVEL": 0x2F, "BAROMETRIC_PRESSURE": 0x33,
           "CONTROL_MODULE_VOLTAGE": 0x42, "AMBIANT_AIR_TEMP": 0x46, "OIL_TEMP": 0x5C,
           "FUEL_RATE": 0x5E}


@pytest.mark.parametrize("protocol,quirks", [
    (6, {"truncate": ("byte", 5), "stall": (0.8, 17)}),
    (2, {"truncate": ("half", 7)}),
])
def test_eccm_run_records_only_true_cells(tmp_path, protocol, quirks):
    """The daemon end to end (`eccm run`), a gearbox answering first, cut and late
    replies: every cell of the record file is a value the engine sent, or empty."""
    ecus = [Ecu.engine(latency=0.012), Ecu.transmission(latency=0.002)]
    with FakeElm(protocol=protocol, ecus=ecus, quirks=quirks) as fake:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ECCM_")}
        env["PYTHONPATH"] = str(REPO)
        cfg = write_config(tmp_path, OBD_INTERFACE=fake.port, OBD_TIMEOUT=TIMEOUT,
                           RECORD_INTERVAL=0.1, OBD_SLOW_EVERY=2)
        log = open(tmp_path / "daemon.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "eccm", "run", "--config", str(cfg)],
                                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            wait_for(lambda: b"recording to" in (tmp_path / "daemon.log").read_bytes(), 30,
                     what="recording")
            # Until the faults have fired, a reply was dropped and every column has a value.
            wait_for(lambda: fault_fired(fake, quirks) and b"OBD reply not used" in
                     (tmp_path / "daemon.log").read_bytes() and
                     all(recorded(tmp_path / "records", name) for name in COLUMNS), 30,
                     what="the faults, a dropped reply and every column recorded")
        finally:
            stop_process(proc)
            log.close()
        sent = {name: {float(v) for _, v in fake.true_values("engine", pid)}
                for name, pid in COLUMNS.items()}
        assert fault_fired(fake, quirks)
    assert proc.returncode == 0
    (path,) = outbox_files(tmp_path / "records")
    rows = read_records(path)
    names = [h.split(" (")[0] for h in rows[0]]
    filled = 0
    for name, values in sent.items():
        column = names.index(name)
        cells = [float(r[column]) for r in rows[1:] if r[column]]
        filled += bool(cells)
        wrong = [c for c in cells if not any(c == pytest.approx(v) for v in values)]
        assert not wrong, f"{name}: {wrong[:5]} never sent by the engine"
    assert filled == len(COLUMNS)
    assert "OBD reply not used" in (tmp_path / "daemon.log").read_text()
