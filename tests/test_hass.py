"""The MQTT sink's pure part (eccm/sinks/hass.py): documents and discovery configs, checked
against Home Assistant's rules (tests/hass_schema.py, written from Home Assistant's source)
and against the record's own text of each value."""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest
from hypothesis import given, strategies as st

import hass_schema
from eccm.core.state import Column, EngineRun, SharedState, Unavailable
from eccm.sinks.hass import (Topics, discovery, dtc_document, json_value, object_id,
                             position_document, state_document)
from eccm.sinks.rows import format_cell, format_time
from eccm.sources.gnss.columns import COLUMNS as GNSS_COLUMNS
from eccm.sources.obd.profile import load
from eccm.sources.obd.values import standard_units

from conftest import REPO

TOPICS = Topics("eccm/CAR")


def every_column():
    """Every column ECCM can record: the standard OBD values, the GNSS fields and the
    example profiles' signals."""
    columns = [Column(name, unit) for name, unit in standard_units().items()]
    columns += list(GNSS_COLUMNS)
    for profile in load(REPO / "eccm" / "profiles"):
        columns += [Column(s.name, s.unit) for s in profile.signals]
    return list({c.name: c for c in columns}.values())  # a name is one column


def test_every_discovery_config_is_one_home_assistant_accepts():
    columns = every_column()
    assert len(columns) > 200
    configs = discovery("MY-CAR", "1G1JC5444R7252367", columns, TOPICS, "homeassistant",
                        5, "0.1.0")
    seen = set()
    for topic, payload in configs:
        component, node, oid = hass_schema.check_topic(topic)
        assert (component, oid) not in seen  # no two entities on one config topic
        seen.add((component, oid))
        config = hass_schema.validate(component, json.loads(json.dumps(payload)))
        assert config["unique_id"] == f"{node}_{oid}"
        assert config["availability_topic"] == "eccm/CAR/availability"
    assert len(seen) == len(columns) + 4  # a sensor each, MIL, connected, DTCs, tracker


def test_names_that_differ_only_in_unsafe_characters_stay_two_entities():
    assert object_id("RPM") == "rpm"
    assert object_id("TCM.SPEED") != object_id("TCM_SPEED")
    assert hass_schema.check_topic(f"homeassistant/sensor/x/{object_id('BECM.CELL T/1')}"
                                   "/config")


@given(st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=False,
                                                         allow_infinity=False, width=32),
                 st.booleans(), st.text(max_size=20), st.none()))
def test_a_value_in_a_document_is_the_records_text_of_it(value):
    shown = json_value(value)
    assert format_cell(shown) == format_cell(value)
    assert json.loads(json.dumps(shown)) == shown


def test_the_document_holds_the_record_row_and_nothing_stale():
    state = SharedState()
    state.start_engine_run(EngineRun(1, (Column("RPM", "rpm"), Column("SPEED", "km/h"))),
                           source="obd")
    state.update_values({"RPM": (812.25, "rpm")}, origin="obd",
                        mono=time.monotonic() - 10)  # too old to be shown
    state.update_values({"SPEED": (42.0, "km/h")}, origin="obd")
    moment = datetime(2026, 12, 3, 10, 0, 0, 123000, tzinfo=timezone.utc)
    doc = state_document(state.snapshot(), moment, max_age=2)
    assert doc == {"time": "2026-12-03T10:00:00.123Z", "obd": "unknown",
                   "values": {"RPM": None, "SPEED": 42}}
    state.end_engine_run()
    assert state_document(state.snapshot(), moment, 2)["values"] == {}


def test_a_position_only_when_a_fresh_one_from_the_receiver_is_known():
    state = SharedState()
    state.declare("gnss", GNSS_COLUMNS)
    assert position_document(state.snapshot(), 2) is None
    state.update_values({"LATITUDE": (48.1, "deg"), "LONGITUDE": (11.5, "deg"),
                         "ALTITUDE": (520.0, "m")}, origin="gnss")
    assert position_document(state.snapshot(), 2) == {"latitude": 48.1, "longitude": 11.5,
                                                      "altitude": 520}
    state.update_values({"LATITUDE": (48.1, "deg"), "LONGITUDE": (11.5, "deg")},
                        origin="gnss", mono=time.monotonic() - 10)
    assert position_document(state.snapshot(), 2) is None


@pytest.mark.parametrize("dtcs,count", [
    ({"stored": ["P0133", "P0420"], "pending": [], "permanent": None,
      "permanent_unread": "no answer"}, 2),
    ({"stored": None, "stored_unread": "ECU 7E9 did not answer"}, None),
])
def test_trouble_codes_unread_are_null_with_why_never_an_empty_list(dtcs, count):
    run = EngineRun(1, (), facts={"dtcs": dtcs})
    doc = dtc_document(run)
    assert doc["count"] == count
    for kind in ("stored", "pending", "permanent"):
        assert doc[kind] == dtcs.get(kind)
        if dtcs.get(f"{kind}_unread"):
            assert doc[f"{kind}_unread"] == dtcs[f"{kind}_unread"]
    assert dtc_document(None) is None


def test_codes_cleared_through_the_socket_are_what_the_dtc_document_says(tmp_path):
    """CLEAR_DTC (or DTC) during a run: the trouble-code document follows what the car
    said last, stamped with when, not the list read when the run began."""
    import threading
    from eccm.sources.obd.adapter import ReadError
    from eccm.sources.obd.poller import ObdPoller

    state = SharedState()
    state.start_engine_run(EngineRun(7, (), facts={"dtcs": {
        "stored": ["P0420"], "pending": ["P0171"], "permanent": ["P0420"]}}), source="obd")
    poller = ObdPoller(threading.Event(), state, port=str(tmp_path / "none"))

    class Conn:
        def clear_and_reread(self):
            return self.read_dtcs(3), self.read_dtcs(7)

        def read_dtcs(self, mode):
            return {3: ["P0300"], 7: []}[mode]

    done = threading.Event()

    def serve():
        while not done.is_set():
            poller._serve_requests(Conn())
            done.wait(0.01)

    helper = threading.Thread(target=serve)
    helper.start()
    try:
        assert poller.clear_dtcs(5) == 1  # one code left
        doc = dtc_document(state.snapshot().engine_run)
        # A fault still present sets its code again; permanent codes outlive a clear.
        assert (doc["count"], doc["stored"], doc["pending"], doc["permanent"]) == \
            (1, ["P0300"], [], ["P0420"])
        assert doc["read_at"] >= format_time(state.snapshot().engine_run.started)
        Conn.clear_and_reread = lambda self: (_ for _ in ()).throw(
            ReadError("ECU 7E9 did not answer the trouble code request"))
        with pytest.raises(Unavailable):
            poller.clear_dtcs(5)
        doc = dtc_document(state.snapshot().engine_run)
        assert (doc["count"], doc["stored"], doc["pending"]) == (None, None, None)
        assert doc["stored_unread"].startswith("unknown after a clear request: ECU 7E9")
    finally:
        done.set()
        helper.join(5)
    # The run's facts (the record's manifest) keep what the car said when it began.
    assert state.snapshot().engine_run.facts["dtcs"]["stored"] == ["P0420"]
    assert state.snapshot().engine_run.number == 7
