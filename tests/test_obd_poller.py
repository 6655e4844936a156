"""OBD poller against the built-in simulated adapter on a pty (python-OBD end to end)."""
from __future__ import annotations

import threading

import pytest

from eccm.sources.obd.poller import NotConnected, ObdPoller
from eccm.core.state import CONNECTED, LOST, SharedState

from conftest import wait_for


@pytest.fixture
def poller_factory():
    made = []

    def make(port, start=True, **kw):
        state = SharedState()
        stop = threading.Event()
        args = dict(timeout=1.0, session_timeout=1.5, max_delay=1.0)
        args.update(kw)
        poller = ObdPoller(stop, state, port=port, **args)
        if start:
            poller.start()
        made.append((stop, poller))
        return state, poller
    yield make
    for stop, poller in made:
        stop.set()
        assert poller.join(10)


def session_of(state):
    return state.snapshot().engine_run


def test_discovers_polls_and_reads_vin(sim_adapter, poller_factory):
    state, poller = poller_factory(sim_adapter.port)
    session = wait_for(lambda: session_of(state), 20, what="an OBD session")
    names = [c.name for c in session.columns]
    for name in ("RPM", "SPEED", "COOLANT_TEMP", "FUEL_RATE", "STATUS_MIL"):
        assert name in names
    assert "PIDS_A" not in names
    assert session.vin == "VF1SMULATED000042"  # all 17 characters, trailing '2' kept
    wait_for(lambda: {"RPM", "SPEED", "COOLANT_TEMP"} <= set(state.snapshot().values), 10,
             what="values")
    snap = state.snapshot()
    assert snap.values["RPM"].unit == "rpm"
    assert 700 < snap.values["RPM"].value < 5000
    assert snap.links["obd"].state == CONNECTED


def test_requests_run_on_the_poller_thread(sim_adapter, poller_factory):
    sim_adapter.car.stored_dtcs = ["P0301"]
    state, poller = poller_factory(sim_adapter.port)
    wait_for(lambda: session_of(state), 20, what="an OBD session")
    threads = []

    def read(conn):
        threads.append(threading.current_thread().name)
        return conn.read_dtcs(3)
    assert poller.submit(read, timeout=5) == ["P0301"]
    assert threads == ["obd"]


def test_the_server_asks_one_value_and_the_trouble_codes_by_name(sim_adapter, poller_factory):
    sim_adapter.car.stored_dtcs = ["P0301"]
    state, poller = poller_factory(sim_adapter.port)
    wait_for(lambda: session_of(state), 20, what="an OBD session")
    rpm = poller.query("RPM", timeout=5)
    number, unit = rpm.split(" ", 1)
    assert unit == "revolutions_per_minute" and 700 < float(number) < 5000  # python-OBD's text
    assert poller.query("NO_SUCH_VALUE", timeout=5) is None
    stored, _pending = poller.read_dtcs(timeout=5)
    assert stored == [("P0301", "Cylinder 1 Misfire Detected")]


def test_request_without_car_fails_fast_with_reason(tmp_path, poller_factory):
    state, poller = poller_factory(str(tmp_path / "no-such-adapter"))
    wait_for(lambda: state.snapshot().links.get("obd") and
             state.snapshot().links["obd"].state == LOST, 5, what="link lost")
    # NotConnected, not TimeoutError: answered by the idle poller, not left to time out
    # (how fast: tests/bench/bench_latency.py).
    with pytest.raises(NotConnected, match="does not exist"):
        poller.submit(lambda conn: None, timeout=5)


def test_ignition_off_ends_session_and_on_resumes(sim_adapter, poller_factory):
    state, poller = poller_factory(sim_adapter.port)
    first = wait_for(lambda: session_of(state), 20, what="an OBD session")
    sim_adapter.car.ignition = False
    wait_for(lambda: session_of(state) is None, 10, what="the session to end")
    assert "ignition off" in state.snapshot().links["obd"].reason
    assert poller.is_alive()
    sim_adapter.car.ignition = True
    second = wait_for(lambda: session_of(state), 30, what="a new session")
    assert second.number > first.number


def test_reconnect_request_opens_a_new_session(sim_adapter, poller_factory):
    state, poller = poller_factory(sim_adapter.port)
    first = wait_for(lambda: session_of(state), 20, what="an OBD session")
    poller.request_reconnect()
    second = wait_for(lambda: (s := session_of(state)) and s.number != first.number and s,
                      30, what="a new session")
    assert second.number == first.number + 1


def test_adapter_lost_during_the_vin_read_is_a_lost_link_not_a_dead_thread(
        sim_adapter, poller_factory, monkeypatch):
    from eccm.sources.obd.adapter import AdapterError, ElmConnection

    def unplugged(self):
        raise AdapterError("adapter disconnected: unplugged during 0902")
    monkeypatch.setattr(ElmConnection, "read_vin", unplugged)
    state, poller = poller_factory(sim_adapter.port)
    wait_for(lambda: state.snapshot().links.get("obd") and "0902" in
             state.snapshot().links["obd"].reason, 20, what="the loss reported")
    assert state.snapshot().links["obd"].state == LOST
    assert poller.is_alive() and not poller.crashed


def test_the_anomalies_of_the_cycle_that_ended_a_run_stay_in_status(sim_adapter,
                                                                    poller_factory,
                                                                    monkeypatch):
    """Fault injection: a torn reply counted, then the adapter drops, in one request."""
    from eccm.sources.obd.adapter import AdapterError, ElmConnection
    real = ElmConnection.query_group_all
    asked = []

    def query_group_all(conn, group):
        asked.append(group)
        if len(asked) == 50:
            conn._anomaly("torn_reply", "injected by the test")
            raise AdapterError("adapter disconnected: injected by the test")
        return real(conn, group)
    monkeypatch.setattr(ElmConnection, "query_group_all", query_group_all)
    state, poller = poller_factory(sim_adapter.port, start=False)
    between_runs = []  # what STATUS shows from the end of a run to the start of the next
    report = state.report
    monkeypatch.setattr(state, "report", lambda part: (
        between_runs.append(part) if getattr(part, "pids", None) == 0 else None,
        report(part)))
    poller.start()
    wait_for(lambda: len(asked) > 50 and between_runs, 20, what="the run to end")
    assert dict(between_runs[0].anomalies).get("torn_reply") == 1


def test_a_source_holding_one_of_the_cars_names_stops_the_run_with_a_reason(
        sim_adapter, poller_factory):
    """Two sources cannot share a value name: the second to declare it is refused; the
    poller says why as its link state and keeps going (no dead thread)."""
    from eccm.core.state import Column
    state, poller = poller_factory(sim_adapter.port, start=False)
    state.declare("can", (Column("SPEED", "km/h"),))
    poller.start()
    wait_for(lambda: "already a column of can" in getattr(
        state.snapshot().links.get("obd"), "reason", ""), 20, what="the refusal")
    assert state.snapshot().links["obd"].state == LOST
    assert session_of(state) is None and poller.is_alive() and not poller.crashed
