"""Independent checker for Home Assistant MQTT discovery configs (sensor,
binary_sensor, device_tracker), written from HA's source and docs.

Facts were read from home-assistant/core (paths / commits as stored in the
reference index; "id" = index file id where the commit was not reported):
  homeassistant/components/sensor/const.py @ 3fd1a330015df2a3af1aeba46d208060a5295664
      SensorDeviceClass, SensorStateClass (incl. measurement_angle),
      DEVICE_CLASS_UNITS, DEVICE_CLASS_STATE_CLASSES, STATE_CLASS_UNITS
      (also compared with @ 00eb6680fbf6bdf7af2499095f2e74fca980a148)
  homeassistant/components/mqtt/sensor.py   (index id 26510822, 2024-era) and
      validate_sensor_state_and_device_class_config (index id 52114422055,
      newest: unit/device-class and unit/state-class checks)
  homeassistant/components/mqtt/binary_sensor.py (index id 68344342880, 2025-era)
  homeassistant/components/mqtt/device_tracker.py (index id 773295626)
  homeassistant/components/mqtt/schemas.py @ c6ca7f5f416326437e8e652a5623aa5eff7b3d00
      MQTT_AVAILABILITY_*, MQTT_ENTITY_DEVICE_INFO_SCHEMA, MQTT_ORIGIN_INFO_SCHEMA,
      MQTT_ENTITY_COMMON_SCHEMA
  homeassistant/components/mqtt/config.py @ a5c8209270205b905bb35a9082c39708b0d5f52f
      (MQTT_BASE_SCHEMA qos/encoding, MQTT_RO_SCHEMA: state_topic Required)
  homeassistant/components/mqtt/util.py (index id 1082109671): valid_topic,
      valid_publish_topic, valid_qos_schema
  homeassistant/components/mqtt/discovery.py @ bdc5ec6042ca8092f29b687456a50a159dbce8a7
      (TOPIC_MATCHER) and newer _replace_all_abbreviations/_replace_topic_base
      (index id 16799241)
  homeassistant/components/mqtt/abbreviations.py @ 911803bfd294b1ba1f541af01f6d37666ae4e384
      (plus newer device keys mdl_id/sn and "def_ent_id" seen in index id 41331339637)
  homeassistant/components/binary_sensor/__init__.py @ 027590d94dd8effd8b68fef1d7ac9d8d10027eb6
  homeassistant/const.py (index ids 34735807, 83494258): UnitOf* string values
Docs: https://www.home-assistant.io/integrations/mqtt/ (discovery topic
<prefix>/<component>/[<node_id>/]<object_id>/config, abbreviations, origin),
https://www.home-assistant.io/integrations/sensor.mqtt/ ,
https://www.home-assistant.io/integrations/binary_sensor.mqtt/ ,
https://www.home-assistant.io/integrations/device_tracker.mqtt/

Unknown keys: HA builds every discovery schema as
``PLATFORM_SCHEMA_MODERN.extend({}, extra=vol.REMOVE_EXTRA)``, i.e. it
SILENTLY DROPS unknown keys.  This checker REFUSES them on purpose: an unknown
key in our own config means we misnamed a field and HA would ignore it.

Where this checker is stricter than HA (all documented in ``validate``):
strings must be ``str`` (HA coerces numbers), booleans must be ``bool``,
topics must be publishable (HA allows subscribe wildcards in state topics,
but we publish to them), ``unique_id`` is required with ``device`` (HA only
ignores the device block without it), state_class must fit the device class
(HA only logs a warning), empty units and ``cmps`` (device discovery) are
refused, and ``AMBIGUOUS_UNITS`` spellings are not normalised.

``validate`` raises ``ValueError("<key>: <reason>")`` on the FIRST problem.
"""
from __future__ import annotations

import copy
import re

ABBREVIATIONS = {
    "avty": "availability", "avty_mode": "availability_mode",
    "avty_t": "availability_topic", "avty_tpl": "availability_template",
    "cmps": "components", "def_ent_id": "default_entity_id", "dev": "device",
    "dev_cla": "device_class", "e": "encoding", "en": "enabled_by_default",
    "ent_cat": "entity_category", "ent_pic": "entity_picture",
    "exp_aft": "expire_after", "frc_upd": "force_update", "ic": "icon",
    "json_attr_t": "json_attributes_topic",
    "json_attr_tpl": "json_attributes_template",
    "lrst_val_tpl": "last_reset_value_template", "o": "origin",
    "obj_id": "object_id", "off_dly": "off_delay", "ops": "options",
    "p": "platform", "pl_avail": "payload_available",
    "pl_home": "payload_home", "pl_not_avail": "payload_not_available",
    "pl_not_home": "payload_not_home", "pl_off": "payload_off",
    "pl_on": "payload_on", "pl_rst": "payload_reset", "qos": "qos",
    "src_type": "source_type", "stat_cla": "state_class",
    "stat_t": "state_topic", "sug_dsp_prc": "suggested_display_precision",
    "t": "topic", "uniq_id": "unique_id", "unit_of_meas": "unit_of_measurement",
    "val_tpl": "value_template",
}
DEVICE_ABBREVIATIONS = {
    "cns": "connections", "cu": "configuration_url", "hw": "hw_version",
    "ids": "identifiers", "mdl": "model", "mdl_id": "model_id",
    "mf": "manufacturer", "sa": "suggested_area", "sn": "serial_number",
    "sw": "sw_version",
}
ORIGIN_ABBREVIATIONS = {"sw": "sw_version", "url": "support_url"}
TOPIC_BASE = "~"

BINARY_SENSOR_DEVICE_CLASSES = frozenset({
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity",
    "door", "garage_door", "gas", "heat", "light", "lock", "moisture", "motion",
    "moving", "occupancy", "opening", "plug", "power", "presence", "problem",
    "running", "safety", "smoke", "sound", "tamper", "update", "vibration",
    "window",
})
STATE_CLASSES = frozenset({"measurement", "measurement_angle", "total",
                           "total_increasing"})
STATE_CLASS_UNITS = {"measurement_angle": frozenset({"°"})}
SOURCE_TYPES = frozenset({"gps", "router", "bluetooth", "bluetooth_le"})
AVAILABILITY_MODES = frozenset({"all", "any", "latest"})
ENTITY_CATEGORIES = frozenset({"config", "diagnostic"})
NON_NUMERIC_SENSOR_CLASSES = frozenset({"date", "enum", "timestamp"})

# unit string sets (homeassistant/const.py UnitOf* values)
_PRESSURE = {"Pa", "hPa", "kPa", "bar", "cbar", "mbar", "mmHg", "inHg", "psi"}
_ENERGY = {"J", "kJ", "MJ", "GJ", "mWh", "Wh", "kWh", "MWh", "GWh", "TWh",
           "cal", "kcal", "Mcal", "Gcal"}
_LENGTH = {"mm", "cm", "m", "km", "in", "ft", "yd", "mi"}
_VOLUME = {"ft³", "CCF", "m³", "L", "mL", "gal", "fl. oz."}
_SPEED = {"Beaufort", "ft/s", "in/s", "m/s", "km/h", "kn", "mph", "mm/s"}
_FLUX = {"in/d", "in/h", "mm/d", "mm/h"}
_DATA = {"bit", "kbit", "Mbit", "Gbit", "B", "kB", "MB", "GB", "TB", "PB",
         "EB", "ZB", "YB", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB",
         "YiB"}
_UGM3 = {"µg/m³"}

# SensorDeviceClass -> allowed units (None = no unit); classes absent from this
# table (date, enum, timestamp, monetary) have no unit table in HA.
SENSOR_DEVICE_CLASS_UNITS = {
    "apparent_power": {"VA"}, "aqi": {None},
    "area": {"m²", "cm²", "km²", "mm²", "in²", "ft²", "yd²", "mi²", "ac", "ha"},
    "atmospheric_pressure": _PRESSURE, "battery": {"%"},
    "blood_glucose_concentration": {"mg/dL", "mmol/L"},
    "carbon_monoxide": {"ppm"}, "carbon_dioxide": {"ppm"},
    "conductivity": {"S/cm", "mS/cm", "µS/cm"}, "current": {"A", "mA"},
    "data_rate": {"bit/s", "kbit/s", "Mbit/s", "Gbit/s", "B/s", "kB/s",
                  "MB/s", "GB/s", "KiB/s", "MiB/s", "GiB/s"},
    "data_size": _DATA, "distance": _LENGTH,
    "duration": {"d", "h", "min", "s", "ms", "μs"},
    "energy": _ENERGY, "energy_distance": {"kWh/100km", "mi/kWh", "km/kWh"},
    "energy_storage": _ENERGY, "frequency": {"Hz", "kHz", "MHz", "GHz"},
    "gas": {"CCF", "ft³", "m³", "L"}, "humidity": {"%"}, "illuminance": {"lx"},
    "irradiance": {"W/m²", "BTU/(h⋅ft²)"}, "moisture": {"%"},
    "nitrogen_dioxide": _UGM3, "nitrogen_monoxide": _UGM3,
    "nitrous_oxide": _UGM3, "ozone": _UGM3, "ph": {None}, "pm1": _UGM3,
    "pm10": _UGM3, "pm25": _UGM3, "power_factor": {"%", None},
    "power": {"mW", "W", "kW", "MW", "GW", "TW"},
    "precipitation": {"in", "mm", "cm"}, "precipitation_intensity": _FLUX,
    "pressure": _PRESSURE, "reactive_power": {"var", "kvar"},
    "signal_strength": {"dB", "dBm"}, "sound_pressure": {"dB", "dBA"},
    "speed": _SPEED | _FLUX, "sulphur_dioxide": _UGM3,
    "temperature": {"°C", "°F", "K"},
    "volatile_organic_compounds": _UGM3,
    "volatile_organic_compounds_parts": {"ppm", "ppb"},
    "voltage": {"µV", "mV", "V", "kV", "MV"}, "volume": _VOLUME,
    "volume_flow_rate": {"m³/h", "m³/s", "ft³/min", "L/h", "L/min", "L/s",
                         "gal/min", "mL/s"},
    "volume_storage": _VOLUME, "water": {"CCF", "ft³", "m³", "gal", "L"},
    "weight": {"µg", "mg", "g", "kg", "oz", "lb", "st"},
    "wind_direction": {"°"}, "wind_speed": _SPEED,
}
SENSOR_DEVICE_CLASSES = frozenset(SENSOR_DEVICE_CLASS_UNITS) | {
    "date", "enum", "timestamp", "monetary"}

_M, _T, _TI = "measurement", "total", "total_increasing"
_ALL_SC = frozenset({_M, "measurement_angle", _T, _TI})
# SensorDeviceClass -> allowed state classes (DEVICE_CLASS_STATE_CLASSES)
SENSOR_DEVICE_CLASS_STATE_CLASSES = {dc: frozenset({_M}) for dc in (
    "apparent_power", "aqi", "atmospheric_pressure", "battery",
    "blood_glucose_concentration", "carbon_monoxide", "carbon_dioxide",
    "conductivity", "current", "data_rate", "energy_distance",
    "energy_storage", "frequency", "humidity", "illuminance", "irradiance",
    "moisture", "nitrogen_dioxide", "nitrogen_monoxide", "nitrous_oxide",
    "ozone", "ph", "pm1", "pm10", "pm25", "power_factor", "power",
    "precipitation_intensity", "pressure", "reactive_power",
    "signal_strength", "sound_pressure", "speed", "sulphur_dioxide",
    "temperature", "volatile_organic_compounds",
    "volatile_organic_compounds_parts", "voltage", "volume_storage",
    "volume_flow_rate", "wind_speed")}
SENSOR_DEVICE_CLASS_STATE_CLASSES.update({
    "area": _ALL_SC, "data_size": _ALL_SC, "distance": _ALL_SC,
    "duration": _ALL_SC, "precipitation": _ALL_SC,
    "energy": frozenset({_T, _TI}), "gas": frozenset({_T, _TI}),
    "volume": frozenset({_T, _TI}), "water": frozenset({_T, _TI}),
    "monetary": frozenset({_T}), "weight": frozenset({_M, _T, _TI}),
    "wind_direction": frozenset({"measurement_angle"}),
    "date": frozenset(), "enum": frozenset(), "timestamp": frozenset(),
})

COMMON_KEYS = frozenset({
    "availability", "availability_mode", "availability_template",
    "availability_topic", "default_entity_id", "device", "enabled_by_default",
    "encoding", "entity_category", "entity_picture", "icon",
    "json_attributes_template", "json_attributes_topic", "name", "object_id",
    "origin", "payload_available", "payload_not_available", "platform", "qos",
    "unique_id",
})
COMPONENT_KEYS = {
    "sensor": COMMON_KEYS | {
        "state_topic", "value_template", "device_class", "expire_after",
        "force_update", "last_reset_value_template", "options",
        "suggested_display_precision", "state_class", "unit_of_measurement"},
    "binary_sensor": COMMON_KEYS | {
        "state_topic", "value_template", "device_class", "expire_after",
        "force_update", "off_delay", "payload_off", "payload_on"},
    "device_tracker": COMMON_KEYS | {
        "state_topic", "value_template", "payload_home", "payload_not_home",
        "payload_reset", "source_type"},
}
DEVICE_KEYS = frozenset({
    "identifiers", "connections", "manufacturer", "model", "model_id", "name",
    "hw_version", "serial_number", "sw_version", "via_device",
    "suggested_area", "configuration_url"})
ORIGIN_KEYS = frozenset({"name", "sw_version", "support_url"})
AVAILABILITY_ITEM_KEYS = frozenset({"topic", "payload_available",
                                    "payload_not_available", "value_template"})
_STR_KEYS = frozenset({
    "availability_template", "default_entity_id", "encoding",
    "entity_picture", "json_attributes_template", "object_id", "unique_id",
    "value_template", "last_reset_value_template", "payload_on",
    "payload_off", "payload_home", "payload_not_home", "payload_reset",
    "payload_available", "payload_not_available"})
_BOOL_KEYS = frozenset({"enabled_by_default", "force_update"})
_UINT_KEYS = frozenset({"expire_after", "off_delay",
                        "suggested_display_precision"})

DISCOVERY_COMPONENTS = frozenset({
    "alarm_control_panel", "binary_sensor", "button", "camera", "climate",
    "cover", "device", "device_automation", "device_tracker", "event", "fan",
    "humidifier", "image", "lawn_mower", "light", "lock", "notify", "number",
    "scene", "select", "sensor", "siren", "switch", "tag", "text", "update",
    "vacuum", "valve", "water_heater"})
_TOPIC_RE = re.compile(r"(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?"
                       r"(?P<object_id>[a-zA-Z0-9_-]+)/config")


def _rename(block, table):
    if isinstance(block, dict):
        for short in [k for k in block if k in table]:
            block[table[short]] = block.pop(short)


def _rebase(value, base):
    if value.startswith(TOPIC_BASE):
        value = base + value[1:]
    if value.endswith(TOPIC_BASE):
        value = value[:-1] + base
    return value


def expand(config: dict) -> dict:
    """Return a deep copy of ``config`` with HA's abbreviations expanded
    (top level, ``device``, ``origin`` and each ``availability`` entry) and the
    ``~`` base substituted into every key ending in ``topic`` (and into
    ``availability[].topic``) whose value starts or ends with ``~``."""
    if not isinstance(config, dict):
        raise ValueError("config: must be a JSON object (dict)")
    out = copy.deepcopy(config)
    _rename(out, ABBREVIATIONS)
    _rename(out.get("device"), DEVICE_ABBREVIATIONS)
    _rename(out.get("origin"), ORIGIN_ABBREVIATIONS)
    avty = out.get("availability")
    for item in (avty if isinstance(avty, list) else [avty]):
        _rename(item, ABBREVIATIONS)
    if TOPIC_BASE in out:
        base = out.pop(TOPIC_BASE)
        for key, value in list(out.items()):
            if key.endswith("topic") and isinstance(value, str) and value:
                out[key] = _rebase(value, base)
        for item in (avty if isinstance(avty, list) else [avty]):
            if isinstance(item, dict) and isinstance(item.get("topic"), str) \
                    and item["topic"]:
                item["topic"] = _rebase(item["topic"], base)
    return out


def _fail(key, reason):
    raise ValueError(f"{key}: {reason}")


def check_publish_topic(key: str, topic) -> str:
    """HA's valid_topic rules plus 'no wildcards' (valid_publish_topic)."""
    if not isinstance(topic, str):
        _fail(key, "topic must be a string")
    try:
        raw = topic.encode("utf-8")
    except UnicodeError:
        _fail(key, "topic must be valid UTF-8")
    if not raw:
        _fail(key, "topic must not be empty")
    if len(raw) > 65535:
        _fail(key, "topic longer than 65535 encoded bytes")
    for ch in topic:
        if ch <= "\u001f" or "\u007f" <= ch <= "\u009f":
            _fail(key, "topic contains a control/null character")
        if "\ufdd0" <= ch <= "\ufdef" or (ord(ch) & 0xFFFF) in (0xFFFE, 0xFFFF):
            _fail(key, "topic contains a Unicode non-character")
    if "+" in topic or "#" in topic:
        _fail(key, "wildcards '+'/'#' are not allowed in a topic we publish to")
    return topic


def check_topic(topic: str, prefix: str = "homeassistant") -> tuple:
    """Check a discovery *config* topic; return (component, node_id, object_id).
    node_id is None when absent.  Raises ValueError otherwise."""
    check_publish_topic("topic", topic)
    head = prefix + "/"
    if not topic.startswith(head):
        _fail("topic", f"must start with discovery prefix {head!r}")
    match = _TOPIC_RE.fullmatch(topic[len(head):])
    if not match:
        _fail("topic", "must be <prefix>/<component>/[<node_id>/]<object_id>"
              "/config with ids of [a-zA-Z0-9_-]")
    if match["component"] not in DISCOVERY_COMPONENTS:
        _fail("topic", f"unknown discovery component {match['component']!r}")
    return match["component"], match["node_id"], match["object_id"]


def _check_keys(where, block, allowed):
    if not isinstance(block, dict):
        _fail(where, "must be an object")
    for key in block:
        if key not in allowed:
            _fail(f"{where}.{key}" if where else key,
                  "unknown key (HA would silently drop it; probably misnamed)")


def _check_str(key, value, allow_none=False):
    if value is None and allow_none:
        return
    if not isinstance(value, str):
        _fail(key, "must be a string")


def _check_device(dev):
    _check_keys("device", dev, DEVICE_KEYS)
    ids = dev.get("identifiers")
    if isinstance(ids, str):
        ids = [ids]
    if ids is not None and not (isinstance(ids, list)
                                and all(isinstance(i, str) for i in ids)):
        _fail("device.identifiers", "must be a string or a list of strings")
    cns = dev.get("connections")
    if cns is not None and not (isinstance(cns, list) and all(
            isinstance(c, list) and len(c) == 2
            and all(isinstance(x, str) for x in c) for c in cns)):
        _fail("device.connections", "must be a list of [type, value] pairs")
    if not ids and not cns:
        _fail("device", "needs at least one of identifiers/connections")
    for key in DEVICE_KEYS - {"identifiers", "connections"}:
        if key in dev:
            _check_str(f"device.{key}", dev[key])


def _check_origin(origin):
    _check_keys("origin", origin, ORIGIN_KEYS)
    if "name" not in origin:
        _fail("origin.name", "required")
    for key in origin:
        _check_str(f"origin.{key}", origin[key])


def _check_availability(cfg):
    if "availability" in cfg and "availability_topic" in cfg:
        _fail("availability", "mutually exclusive with availability_topic")
    if "availability_topic" in cfg:
        check_publish_topic("availability_topic", cfg["availability_topic"])
    if "availability_mode" in cfg and \
            cfg["availability_mode"] not in AVAILABILITY_MODES:
        _fail("availability_mode", f"must be one of {sorted(AVAILABILITY_MODES)}")
    if "availability" in cfg:
        items = cfg["availability"]
        items = [items] if isinstance(items, dict) else items
        if not isinstance(items, list) or not items:
            _fail("availability", "must be a non-empty list of objects")
        for n, item in enumerate(items):
            where = f"availability[{n}]"
            _check_keys(where, item, AVAILABILITY_ITEM_KEYS)
            if "topic" not in item:
                _fail(f"{where}.topic", "required")
            check_publish_topic(f"{where}.topic", item["topic"])
            for key in AVAILABILITY_ITEM_KEYS - {"topic"}:
                if key in item:
                    _check_str(f"{where}.{key}", item[key])


def _check_sensor(cfg):
    dc, sc = cfg.get("device_class"), cfg.get("state_class")
    unit = cfg.get("unit_of_measurement")
    if dc is not None and dc not in SENSOR_DEVICE_CLASSES:
        _fail("device_class", f"{dc!r} is not a sensor device class")
    if sc is not None and sc not in STATE_CLASSES:
        _fail("state_class", f"{sc!r} is not one of {sorted(STATE_CLASSES)}")
    _check_str("unit_of_measurement", unit, allow_none=True)
    if unit is not None and not unit.strip():
        _fail("unit_of_measurement", "empty unit (HA drops it; omit the key)")
    if "last_reset_value_template" in cfg and sc != "total":
        _fail("last_reset_value_template", "needs state_class 'total'")
    if "options" in cfg:
        opts = cfg["options"]
        if not isinstance(opts, list) or not opts:
            _fail("options", "must be a non-empty list")
        if sc or unit:
            _fail("options", "not allowed with state_class/unit_of_measurement")
        if dc != "enum":
            _fail("options", "requires device_class 'enum'")
    if sc in STATE_CLASS_UNITS and unit not in STATE_CLASS_UNITS[sc]:
        _fail("unit_of_measurement", f"{unit!r} not valid with state class {sc!r}")
    if dc is None:
        return
    if dc in NON_NUMERIC_SENSOR_CLASSES and (unit is not None or sc is not None):
        _fail("device_class", f"{dc!r} is non-numeric: no unit/state_class")
    if unit is not None and dc in SENSOR_DEVICE_CLASS_UNITS \
            and unit not in SENSOR_DEVICE_CLASS_UNITS[dc]:
        _fail("unit_of_measurement",
              f"{unit!r} not valid with device class {dc!r}")
    if sc is not None and sc not in SENSOR_DEVICE_CLASS_STATE_CLASSES.get(dc, _ALL_SC):
        _fail("state_class", f"{sc!r} not valid with device class {dc!r}")


def validate(component: str, config: dict) -> dict:
    """Validate an (abbreviated or expanded) discovery payload for
    ``component`` in {sensor, binary_sensor, device_tracker}; return the
    expanded config.  Raises ValueError("<key>: <reason>") at the first problem.

    Mirrors HA's voluptuous discovery schemas, except where stricter on purpose
    (see module docstring): unknown keys refused; exact JSON types; topics are
    publish topics; unique_id required with device; state_class checked against
    DEVICE_CLASS_STATE_CLASSES.  Integers (expire_after, off_delay,
    suggested_display_precision) follow HA's cv.positive_int, i.e. >= 0."""
    if component not in COMPONENT_KEYS:
        _fail("component", f"unsupported component {component!r}")
    cfg = expand(config)
    if "components" in cfg:
        _fail("components", "device-based discovery is not supported here")
    _check_keys("", cfg, COMPONENT_KEYS[component])
    if cfg.get("platform", "mqtt") != "mqtt":
        _fail("platform", "must be 'mqtt'")
    if "object_id" in cfg:
        # Deprecated in HA 2025.10 (a repair notice per entity; announced to stop working
        # in 2026.4): default_entity_id replaces it.
        _fail("object_id", "deprecated: use default_entity_id")
    if "default_entity_id" in cfg and not re.fullmatch(
            rf"{component}\.[a-z0-9_]+", str(cfg["default_entity_id"])):
        _fail("default_entity_id", f"expected {component}.<lower-case id>")
    for key in cfg:
        if key.endswith("topic"):
            check_publish_topic(key, cfg[key])
    if component == "device_tracker":
        if "state_topic" not in cfg and "json_attributes_topic" not in cfg:
            _fail("state_topic", "required (or json_attributes_topic)")
    elif "state_topic" not in cfg:
        _fail("state_topic", "required")
    for key in _STR_KEYS & cfg.keys():
        _check_str(key, cfg[key])
    _check_str("name", cfg.get("name"), allow_none=True)
    for key in _BOOL_KEYS & cfg.keys():
        if not isinstance(cfg[key], bool):
            _fail(key, "must be a JSON boolean")
    for key in _UINT_KEYS & cfg.keys():
        val = cfg[key]
        if isinstance(val, bool) or not isinstance(val, int) or val < 0:
            _fail(key, "must be a non-negative integer")
    if "qos" in cfg and (isinstance(cfg["qos"], bool)
                         or cfg["qos"] not in (0, 1, 2)):
        _fail("qos", "must be 0, 1 or 2")
    if "icon" in cfg and not (isinstance(cfg["icon"], str) and ":" in cfg["icon"]):
        _fail("icon", "must look like 'mdi:name'")
    if "entity_category" in cfg:
        allowed = ENTITY_CATEGORIES if component == "device_tracker" \
            else {"diagnostic"}
        if cfg["entity_category"] not in allowed:
            _fail("entity_category", f"must be one of {sorted(allowed)}")
    _check_availability(cfg)
    if "device" in cfg:
        _check_device(cfg["device"])
        if "unique_id" not in cfg:
            _fail("unique_id", "required when a device block is given")
    if "origin" in cfg:
        _check_origin(cfg["origin"])
    if component == "sensor":
        _check_sensor(cfg)
    elif component == "binary_sensor":
        dc = cfg.get("device_class")
        if dc is not None and dc not in BINARY_SENSOR_DEVICE_CLASSES:
            _fail("device_class", f"{dc!r} is not a binary_sensor device class")
    elif "source_type" in cfg and cfg["source_type"] not in SOURCE_TYPES:
        _fail("source_type", f"must be one of {sorted(SOURCE_TYPES)}")
    return cfg
