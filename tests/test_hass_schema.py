"""Tests of the independent HA MQTT discovery checker (tests/hass_schema.py)."""
import pytest

import hass_schema as hs


def sensor(**extra):
    cfg = {"name": "Coolant", "stat_t": "eccm/car/coolant", "uniq_id": "car_coolant",
           "dev_cla": "temperature", "unit_of_meas": "°C", "stat_cla": "measurement",
           "dev": {"ids": ["car1"], "name": "Car", "mf": "ECCM", "mdl": "OBD",
                   "sw": "1.0"},
           "o": {"name": "eccm", "sw": "0.1", "url": "https://example.org"}}
    cfg.update(extra)
    return cfg


def test_documented_sensor_passes_and_expands():
    doc = {"device_class": "temperature", "state_topic": "homeassistant/sensor/sensorBedroom/state",
           "unit_of_measurement": "°C", "value_template": "{{ value_json.temperature }}",
           "unique_id": "temp01ae", "device": {"identifiers": ["bedroom01ae"], "name": "Bedroom"}}
    assert hs.validate("sensor", doc)["unit_of_measurement"] == "°C"
    out = hs.validate("sensor", sensor())
    assert out["state_topic"] == "eccm/car/coolant"
    assert out["device"]["identifiers"] == ["car1"]
    assert out["device"]["manufacturer"] == "ECCM" and out["device"]["sw_version"] == "1.0"
    assert out["origin"] == {"name": "eccm", "sw_version": "0.1", "support_url": "https://example.org"}


def test_tilde_base_topic():
    cfg = {"~": "eccm/car", "stat_t": "~/speed", "json_attr_t": "state/~",
           "avty": [{"t": "~/avail"}], "name": "x"}
    out = hs.expand(cfg)
    assert out["state_topic"] == "eccm/car/speed"
    assert out["json_attributes_topic"] == "state/eccm/car"
    assert out["availability"] == [{"topic": "eccm/car/avail"}]
    assert "~" not in out and cfg["stat_t"] == "~/speed"  # input untouched


@pytest.mark.parametrize("bad, key", [
    (dict(unit_of_meas="km/h"), "unit_of_measurement"),
    (dict(bogus=1), "bogus"),
    (dict(stat_t="eccm/+/speed"), "state_topic"),
    (dict(stat_t="eccm/#"), "state_topic"),
    (dict(stat_t=""), "state_topic"),
    (dict(dev={"name": "Car"}), "device"),
    (dict(dev={"ids": [1]}), "device.identifiers"),
    (dict(avty=[{"t": "a/b"}], avty_t="a/c"), "availability"),
    (dict(avty_mode="some"), "availability_mode"),
    (dict(qos=3), "qos"),
    (dict(exp_aft=-1), "expire_after"),
    (dict(frc_upd="yes"), "force_update"),
    (dict(stat_cla="total_increasing"), "state_class"),
    (dict(stat_cla="sum"), "state_class"),
    (dict(dev_cla="speedo"), "device_class"),
    (dict(o={"sw": "1"}), "origin.name"),
    (dict(val_tpl=5), "value_template"),
    (dict(platform="zwave"), "platform"),
])
def test_sensor_failures(bad, key):
    with pytest.raises(ValueError, match="^" + key.replace("[", r"\[").replace(".", r"\.")):
        hs.validate("sensor", sensor(**bad))


def test_unique_id_required_with_device_and_state_topic_required():
    cfg = sensor()
    del cfg["uniq_id"]
    with pytest.raises(ValueError, match="^unique_id"):
        hs.validate("sensor", cfg)
    cfg = sensor()
    del cfg["stat_t"]
    with pytest.raises(ValueError, match="^state_topic"):
        hs.validate("sensor", cfg)


def test_unit_tables():
    ok = {"km/h": "speed", "kPa": "pressure", "V": "voltage", "km": "distance",
          "s": "duration", "min": "duration", "A": "current", "mA": "current",
          "%": "battery", "ppm": "carbon_dioxide", "L/h": "volume_flow_rate"}
    for unit, dc in ok.items():
        hs.validate("sensor", sensor(unit_of_meas=unit, dev_cla=dc, stat_cla="measurement"))
    hs.validate("sensor", sensor(unit_of_meas="km", dev_cla="distance", stat_cla="total_increasing"))
    hs.validate("sensor", sensor(unit_of_meas="rpm", dev_cla=None))  # no device class
    for unit in ("rpm", "g/s", "kg/h", "Nm", "deg", "mg/m³"):
        with pytest.raises(ValueError):
            hs.validate("sensor", sensor(unit_of_meas=unit, dev_cla="speed"))
    hs.validate("sensor", sensor(unit_of_meas="°", dev_cla="wind_direction",
                                 stat_cla="measurement_angle"))
    with pytest.raises(ValueError, match="^unit_of_measurement"):
        hs.validate("sensor", sensor(unit_of_meas="deg", dev_cla=None, stat_cla="measurement_angle"))


def test_binary_sensor_and_device_tracker():
    hs.validate("binary_sensor", {"name": "MIL", "stat_t": "car/mil", "pl_on": "ON",
                                  "pl_off": "OFF", "dev_cla": "problem"})
    with pytest.raises(ValueError, match="^device_class"):
        hs.validate("binary_sensor", {"stat_t": "car/mil", "dev_cla": "temperature"})
    with pytest.raises(ValueError, match="^payload_on"):
        hs.validate("binary_sensor", {"stat_t": "car/mil", "pl_on": True})
    hs.validate("device_tracker", {"json_attr_t": "car/gps", "src_type": "gps", "name": "Car"})
    with pytest.raises(ValueError, match="^state_topic"):
        hs.validate("device_tracker", {"name": "Car", "src_type": "gps"})
    with pytest.raises(ValueError, match="^source_type"):
        hs.validate("device_tracker", {"stat_t": "car/loc", "src_type": "satellite"})


@pytest.mark.parametrize("topic, expected", [
    ("homeassistant/sensor/eccm_car1/speed/config", ("sensor", "eccm_car1", "speed")),
    ("homeassistant/binary_sensor/mil/config", ("binary_sensor", None, "mil")),
])
def test_good_topics(topic, expected):
    assert hs.check_topic(topic) == expected


@pytest.mark.parametrize("topic", [
    "homeassistant/sensor/car.1/speed/config", "homeassistant/sensor/speed/state",
    "other/sensor/speed/config", "homeassistant/sensor/a/b/c/config",
    "homeassistant/sensor/+/config", "homeassistant/bogus/speed/config",
    "homeassistant/sensor/speed/config/x",
])
def test_bad_topics(topic):
    with pytest.raises(ValueError):
        hs.check_topic(topic)
