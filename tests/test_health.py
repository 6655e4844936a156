"""One health model: workers report typed parts; STATUS and the systemd line read them."""
from __future__ import annotations

import threading
from dataclasses import dataclass, fields

import pytest

from eccm.config import load
from eccm.core.daemon import Daemon
from eccm.core.health import (DISABLED, LOST, DiskHealth, Health, ObdHealth, RateMeter,
                              RecordHealth, UploadHealth, status_items, status_line)
from eccm.core.state import Column, EngineRun, SharedState
from eccm.server.tcp import SocketServer
from eccm.sources.obd.poller import ObdPoller

from conftest import wait_for, write_config


def test_rate_meter_counts_events_over_its_window():
    meter = RateMeter(window=5.0)
    assert meter.rate(0.0) == 0.0
    for second in range(11):  # 100 events a second for 10 s
        meter.add(100, float(second))
    assert meter.rate(10.0) == pytest.approx(100.0)
    meter.add(0, 20.0)  # then nothing for 10 s: the window forgets the old events
    meter.add(0, 26.0)
    assert meter.rate(26.0) == 0.0


def test_a_part_reported_once_is_what_status_and_the_systemd_line_both_show():
    state = SharedState()
    state.set_link("obd", LOST, "unplugged")
    state.set_link("s3", DISABLED)
    state.report(RecordHealth(file="/r/CAR.csv.part", problem="disk full: rows not recorded"))
    state.report(UploadHealth(backlog=2, held=1, last=None))
    state.report(DiskHealth(used=90_000_000, limit=100_000_000, full=True))
    state.report(ObdHealth(protocol="ISO 15765-4 (CAN 11/500)", vin="VF1X", pids=12,
                           samples_per_s=42.04))
    snap = state.snapshot()
    line = status_line(snap.health, snap.links)
    assert line == ("obd lost, NOT RECORDING: disk full: rows not recorded, 2 files to "
                    "upload, 1 file held back from upload (see the log), DISK FULL")
    items = dict(status_items(snap.health, snap.links, snap.counters, None,
                              version="1", car="CAR", uptime=3.4))
    assert items["recording"] == "disk full: rows not recorded"
    assert items["record_file"] == "/r/CAR.csv.part"
    assert items["obd"] == "lost unplugged"
    assert (items["obd_protocol"], items["vin"], items["pids_polled"],
            items["samples_per_s"]) == ("ISO 15765-4 (CAN 11/500)", "VF1X", 12, 42.0)
    assert items["upload"] == "off (S3 not configured)" and "upload_backlog" not in items
    assert snap.health.disk.text() == "90.0 of 100.0 MB FULL"


def test_a_part_of_the_wrong_type_is_refused():
    with pytest.raises(TypeError):
        Health().with_part("disk full")


def test_two_status_requests_in_a_row_report_the_same_sample_rate(sim_adapter):
    """The rate was once computed per STATUS call and shared by all clients: a second
    STATUS within 0.5 s (another client, or a script) reported 0 samples/s."""
    state = SharedState()
    stop = threading.Event()
    poller = ObdPoller(stop, state, port=sim_adapter.port, timeout=1.0, session_timeout=1.5,
                       max_delay=1.0)
    server = SocketServer(stop, state, poller, bind="127.0.0.1", port=0, secret=None,
                          car="CAR")  # not started: STATUS reads the shared state only
    poller.start()
    try:
        wait_for(lambda: state.snapshot().health.obd.samples_per_s > 0, 30,
                 what="a sample rate")
        first = dict(server.status())["samples_per_s"]
        second = dict(server.status())["samples_per_s"]
        assert first > 0 and second > 0
    finally:
        stop.set()
        assert poller.join(10)
    obd = state.snapshot().health.obd  # the run ended: nothing stale but why it dropped
    assert (obd.protocol, obd.vin, obd.pids, obd.samples_per_s) == ("", None, 0, 0.0)


def test_a_new_sources_link_shows_in_status_and_the_systemd_line_in_creation_order():
    state = SharedState()
    state.declare("obd", ())
    state.declare("can", ())
    state.set_link("s3", LOST, "refused")  # not a source: after the sources
    state.set_link("can", LOST, "no such interface can0")
    state.set_link("obd", LOST, "unplugged")
    snap = state.snapshot()
    assert status_line(snap.health, snap.links, tuple(snap.columns)) == \
        "obd lost, can lost, s3 lost"
    items = status_items(snap.health, snap.links, snap.counters, None, version="1",
                         car="CAR", uptime=0, sources=tuple(snap.columns))
    assert ("can", "lost no such interface can0") in items
    assert [k for k, _ in items][-2:] == ["can", "errors"]


def test_each_health_part_has_its_own_type():
    """with_part finds the field by the part's type: two fields of one type would collide."""
    kinds = [type(getattr(Health(), f.name)) for f in fields(Health)]
    assert len(set(kinds)) == len(kinds)


def test_a_value_under_another_sources_name_is_dropped_and_counted():
    state = SharedState()
    state.declare("obd", (Column("SPEED", "km/h"),))
    state.update_values({"SPEED": (50, "km/h")}, origin="obd")
    state.update_values({"SPEED": (999, "km/h"), "CAN.SPEED": (51, "km/h")}, origin="can")
    snap = state.snapshot()
    assert snap.values["SPEED"].value == 50 and snap.values["CAN.SPEED"].value == 51
    assert snap.counters["values_refused"] == 1


def test_a_source_must_say_who_it_is_when_it_publishes():
    """No default source: a new source that forgot it would have its values refused as
    the OBD side's, silently."""
    state = SharedState()
    with pytest.raises(TypeError):
        state.update_values({"CAN.SPEED": (51, "km/h")})
    with pytest.raises(TypeError):
        state.start_engine_run(EngineRun(1, (Column("RPM", "rpm"),)))
    with pytest.raises(TypeError):
        state.update_values({"CAN.SPEED": (51, "km/h")}, None, None, "can")  # by keyword
    assert state.snapshot().values == {} and state.snapshot().engine_run is None


def test_the_gnss_fix_in_the_state_is_a_core_position():
    """Core and the server read the fix through core.state.Position, not the NMEA
    parser's class; the parser's Fix is one."""
    from datetime import date, time as clock
    from eccm.core.state import Position
    from eccm.sources.gnss.nmea import Fix
    fix = Fix(clock(12, 35, 19), date(2026, 3, 1), lat=48.1173, lon=11.5167, mode=3)
    assert isinstance(fix, Position)
    state = SharedState()
    state.set_gnss(fix)
    assert state.snapshot().gnss is fix
    with pytest.raises(TypeError, match="Position"):
        state.set_gnss({"lat": 48.1, "lon": 11.5})
    state.set_gnss(None)
    assert state.snapshot().gnss is None


def test_the_disk_budget_is_in_status_too():
    state = SharedState()
    items = dict(status_items(state.snapshot().health, {}, {}, None, version="1", car="C",
                              uptime=0))
    assert items["disk"] == "not checked"
    state.report(DiskHealth(used=600_000_000, limit=500_000_000, full=True))
    items = dict(status_items(state.snapshot().health, {}, {}, None, version="1", car="C",
                              uptime=0))
    assert items["disk"] == "600.0 of 500.0 MB FULL"


def test_recording_off_is_not_reported_as_ok(tmp_path):
    cfg, _ = load(write_config(tmp_path, FILE_RECORDING="no", OBD_INTERFACE=""), environ={})
    daemon = Daemon(cfg)
    snap = daemon.state.snapshot()
    items = dict(status_items(snap.health, snap.links, snap.counters, None, version="1",
                              car="C", uptime=0))
    assert items["recording"] == "off (FILE_RECORDING=no)"
    assert "recording" not in daemon.status_line()


def test_the_recorder_wakes_on_the_cars_values_not_on_a_gnss_fix():
    """A file starts at the car's first values: a fix arriving first must not make a row
    of empty engine cells (seen once in ./start.sh --demo)."""
    state = SharedState()
    state.start_engine_run(EngineRun(1, (Column("RPM", "rpm"),)), source="obd")
    threading.Timer(0.05, state.update_values, ({"LATITUDE": (45.0, "deg")},),
                    {"origin": "gnss"}).start()
    assert state.wait_for_run_values(0.5) is False
    threading.Timer(0.05, state.update_values, ({"RPM": (800, "rpm")},),
                    {"origin": "obd"}).start()
    assert state.wait_for_run_values(5) is True


def test_every_counter_is_in_status():
    """A counter a worker keeps is shown (under errors or counts), never written unread."""
    counters = {"values_refused": 3, "upload_retries": 2, "files_recovered": 1,
                "rows_recorded": 40, "record_errors": 1, "obd_samples": 7}
    items = dict(status_items(Health(), {}, counters, None, version="1", car="C", uptime=0))
    assert items["counts"] == "files_recovered=1 rows_recorded=40 upload_retries=2 " \
                              "values_refused=3"
    assert items["errors"] == "record_errors=1" and items["obd_samples"] == 7


@dataclass(frozen=True)
class CanHealth:
    """A part from outside core, as a new source or sink would bring (core.health.Part)."""
    frames: int = 0
    name: str = "can"

    def status_items(self, link):
        return [("can", link.text() if link else "starting"), ("can_frames", self.frames)]

    def status_line(self, link):
        return "CAN BUS-OFF" if self.frames < 0 else None


def test_a_part_from_outside_core_is_in_status_without_a_change_to_health():
    state = SharedState()
    state.set_link("can", LOST, "no such interface can0")
    state.report(CanHealth(frames=12))
    snap = state.snapshot()
    items = status_items(snap.health, snap.links, snap.counters, None, version="1",
                         car="C", uptime=0)
    assert ("can", "lost no such interface can0") in items and ("can_frames", 12) in items
    assert [k for k, _ in items].count("can") == 1  # its link is shown by the part only
    state.report(CanHealth(frames=-1))
    snap = state.snapshot()
    assert status_line(snap.health, snap.links).endswith("CAN BUS-OFF")


def test_a_rate_needs_half_a_second_of_events_to_be_told():
    """Two readings a few milliseconds apart would make a wild rate: under 0.5 s of marks
    the meter says 0, from then on events over the time they took."""
    meter = RateMeter(window=5.0)
    meter.add(10, 100.0)
    meter.add(10, 100.01)
    assert meter.rate(100.01) == 0.0
    meter.add(10, 100.6)
    assert meter.rate(100.6) == pytest.approx(20 / 0.6)
