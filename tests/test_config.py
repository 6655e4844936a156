"""Configuration: template == schema, layers, and one clear error per bad key (exit 2)."""
from __future__ import annotations

import configparser

import re
import subprocess
import sys
from pathlib import Path

import pytest

from eccm import config as cfgmod
from eccm.config import ConfigError, load

from conftest import REPO

SEED_KEYS = {
    "CAR_IDENTIFIER", "FILE_RECORDING", "GPS_POSITION_MONITORING", "OBD_INTERFACE",
    "MONITORING_FILE_EXTENSION", "MONITORING_FILE_SEPARATION_CHARACTER",
    "RECORD_DIRECTORY_LOCATION", "S3_SERVER_ENDPOINT", "S3_SERVER_AK", "S3_SERVER_SK",
    "S3_SERVER_BUCKET", "S3_SERVER_REGION", "ENABLE_SOCKET_SERVER", "SOCKET_SERVER_PORT",
    "SOCKET_SERVER_SECRET",
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.ini"
    path.write_text(text)
    return path


def test_template_keys_are_exactly_the_keys_the_code_reads():
    template = configparser.ConfigParser(interpolation=None)
    template.read_string(cfgmod.TEMPLATE_PATH.read_text(encoding="utf-8"))
    assert {k.upper() for k in template.defaults()} == set(cfgmod.SCHEMA)
    assert SEED_KEYS <= set(cfgmod.SCHEMA)


def test_top_level_template_is_the_packaged_one():
    top = Path(__file__).resolve().parents[1] / "config.ini.template"
    assert top.read_text() == cfgmod.TEMPLATE_PATH.read_text()


def test_every_template_key_is_documented_by_a_comment():
    lines = cfgmod.TEMPLATE_PATH.read_text().splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^([A-Z0-9_]+)=", line)
        if match:
            above = [ln for ln in lines[max(0, i - 3):i] if ln.startswith("#")]
            assert above, f"{match[1]} has no comment above it in the template"


def test_minimal_config_takes_template_defaults(tmp_path):
    cfg, warnings = load(write(tmp_path, "[DEFAULT]\nCAR_IDENTIFIER=AB-123-CD\n"), environ={})
    assert warnings == []
    assert cfg.CAR_IDENTIFIER == "AB-123-CD"
    assert cfg.FILE_RECORDING is True
    assert cfg.RECORD_INTERVAL == 0.5
    assert cfg.FSYNC_INTERVAL == 1.0
    assert cfg.OBD_INTERFACE is None  # python-OBD auto-selection
    assert cfg.MONITORING_FILE_SEPARATION_CHARACTER == ","
    assert cfg.RECORD_DIRECTORY_LOCATION == str(tmp_path / "records")
    assert cfg.s3_enabled is False


@pytest.mark.parametrize("word,expected", [
    ("yes", True), ("No", False), ("TRUE", True), ("false", False), ("on", True),
    ("off", False), ("1", True), ("0", False)])
def test_boolean_spellings(tmp_path, word, expected):
    cfg, _ = load(write(tmp_path, f"CAR_IDENTIFIER=X\nFILE_RECORDING={word}\n"), environ={})
    assert cfg.FILE_RECORDING is expected


@pytest.mark.parametrize("extension,given,expected", [
    (".csv", "", ","), (".tsv", "", "\t"), (".log", "", "|"), ("txt", "", "|"),
    (".csv", ";", ";"), (".csv", "\\t", "\t"), (".tsv", "|", "|")])
def test_separator_rules(tmp_path, extension, given, expected):
    cfg, _ = load(write(tmp_path, f"CAR_IDENTIFIER=X\nMONITORING_FILE_EXTENSION={extension}\n"
                                  f"MONITORING_FILE_SEPARATION_CHARACTER={given}\n"),
                  environ={})
    assert cfg.MONITORING_FILE_SEPARATION_CHARACTER == expected
    assert cfg.MONITORING_FILE_EXTENSION.startswith(".")


def test_layers_environment_beats_dotenv_beats_file(tmp_path):
    path = write(tmp_path, "CAR_IDENTIFIER=FILE\nRECORD_INTERVAL=2\nLOG_LEVEL=ERROR\n")
    (tmp_path / ".env").write_text("ECCM_RECORD_INTERVAL=3\nLOG_LEVEL=WARNING\n"
                                   "CAR_IDENTIFIER=DOTENV\nUNRELATED=1\n")
    cfg, warnings = load(path, environ={"ECCM_CAR_IDENTIFIER": "ENV", "PATH": "/bin"})
    assert warnings == []
    assert cfg.CAR_IDENTIFIER == "ENV"
    assert cfg.RECORD_INTERVAL == 3.0
    assert cfg.LOG_LEVEL == "WARNING"
    sources = {key: source for key, _, source in cfg.describe()}
    assert sources["CAR_IDENTIFIER"] == "environment"
    assert sources["RECORD_INTERVAL"] == ".env"
    assert sources["FILE_RECORDING"] == "default"


def test_lower_case_keys_and_no_section_header_are_accepted(tmp_path):
    cfg, _ = load(write(tmp_path, "# my car\ncar_identifier = X1\nrecord_interval=1\n"),
                  environ={})
    assert cfg.CAR_IDENTIFIER == "X1" and cfg.RECORD_INTERVAL == 1.0


def test_unknown_keys_warn_with_a_suggestion(tmp_path):
    _, warnings = load(write(tmp_path, "CAR_IDENTIFIER=X\nFILE_RECORDNG=yes\nFOO=1\n"),
                       environ={"ECCM_RECORD_INTERVALL": "1"})
    text = "\n".join(warnings)
    assert "FILE_RECORDNG" in text and "did you mean FILE_RECORDING?" in text
    assert "FOO" in text
    assert "did you mean RECORD_INTERVAL?" in text


def test_all_problems_are_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, "RECORD_INTERVAL=x\nSOCKET_SERVER_PORT=0\n"), environ={})
    keys = " ".join(err.value.problems)
    assert "CAR_IDENTIFIER" in keys and "RECORD_INTERVAL" in keys
    assert "SOCKET_SERVER_PORT" in keys
    assert len(err.value.problems) == 3


def run_check(path: Path, env_extra=None):
    env = {"PATH": "/usr/bin:/bin", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "eccm", "check-config", "--config", str(path)],
                          capture_output=True, text=True, timeout=60, env=env,
                          cwd=Path(__file__).resolve().parents[1])


BAD_CASES = [
    ("", "CAR_IDENTIFIER"),
    ("CAR_IDENTIFIER=my car\n", "CAR_IDENTIFIER"),
    ("CAR_IDENTIFIER=X\nFILE_RECORDING=maybe\n", "FILE_RECORDING"),
    ("CAR_IDENTIFIER=X\nGPS_POSITION_MONITORING=2\n", "GPS_POSITION_MONITORING"),
    ("CAR_IDENTIFIER=X\nRECORD_INTERVAL=fast\n", "RECORD_INTERVAL"),
    ("CAR_IDENTIFIER=X\nRECORD_INTERVAL=0\n", "RECORD_INTERVAL"),
    ("CAR_IDENTIFIER=X\nRECORD_INTERVAL=nan\n", "RECORD_INTERVAL"),
    ("CAR_IDENTIFIER=X\nFSYNC_INTERVAL=-1\n", "FSYNC_INTERVAL"),
    ("CAR_IDENTIFIER=X\nSOCKET_SERVER_PORT=70000\n", "SOCKET_SERVER_PORT"),
    ("CAR_IDENTIFIER=X\nSOCKET_SERVER_PORT=12.5\n", "SOCKET_SERVER_PORT"),
    ("CAR_IDENTIFIER=X\nOBD_BAUDRATE=abc\n", "OBD_BAUDRATE"),
    ("CAR_IDENTIFIER=X\nOBD_PROTOCOL=Z\n", "OBD_PROTOCOL"),
    ("CAR_IDENTIFIER=X\nMONITORING_FILE_EXTENSION=.c s v\n", "MONITORING_FILE_EXTENSION"),
    ("CAR_IDENTIFIER=X\nMONITORING_FILE_SEPARATION_CHARACTER=;;\n",
     "MONITORING_FILE_SEPARATION_CHARACTER"),
    ("CAR_IDENTIFIER=X\nMONITORING_FILE_SEPARATION_CHARACTER=\"\n",
     "MONITORING_FILE_SEPARATION_CHARACTER"),
    ("CAR_IDENTIFIER=X\nS3_SERVER_ENDPOINT=ftp://files\nS3_SERVER_AK=a\nS3_SERVER_SK=b\n"
     "S3_SERVER_BUCKET=bucket\n", "S3_SERVER_ENDPOINT"),
    ("CAR_IDENTIFIER=X\nS3_SERVER_ENDPOINT=localhost:8333\n", "S3_SERVER_AK"),
    ("CAR_IDENTIFIER=X\nS3_SERVER_BUCKET=Bad_Bucket\n", "S3_SERVER_BUCKET"),
    ("CAR_IDENTIFIER=X\nS3_SERVER_REGION=US EAST\n", "S3_SERVER_REGION"),
    ("CAR_IDENTIFIER=X\nENABLE_SOCKET_SERVER=yes\nSOCKET_SERVER_BIND=0.0.0.0\n",
     "SOCKET_SERVER_SECRET"),
    ("CAR_IDENTIFIER=X\nSOCKET_SERVER_BIND=not-an-address\n", "SOCKET_SERVER_BIND"),
    ("CAR_IDENTIFIER=X\nLOG_LEVEL=LOUD\n", "LOG_LEVEL"),
    ("CAR_IDENTIFIER=X\nGNSS_BAUDRATE=fast\n", "GNSS_BAUDRATE"),
    ("CAR_IDENTIFIER=X\nRECORD_ROTATE_SIZE_MB=lots\n", "RECORD_ROTATE_SIZE_MB"),
    ("CAR_IDENTIFIER=X\nRECORD_ROTATE_MINUTES=0\n", "RECORD_ROTATE_MINUTES"),
    ("CAR_IDENTIFIER=X\nVALUE_MAX_AGE=inf\n", "VALUE_MAX_AGE"),
    ("CAR_IDENTIFIER=X\nOBD_TIMEOUT=100\n", "OBD_TIMEOUT"),
    ("CAR_IDENTIFIER=X\nRECORD_INTERVAL=1\nRECORD_INTERVAL=2\n", "RECORD_INTERVAL"),
    ("CAR_IDENTIFIER=X\nRECONNECT_MAX_DELAY=600\n", "RECONNECT_MAX_DELAY"),
]


@pytest.mark.parametrize("text,key", BAD_CASES, ids=[f"{i}-{k}" for i, (_, k) in
                                                      enumerate(BAD_CASES)])
def test_bad_config_exits_2_naming_the_key(tmp_path, text, key):
    result = run_check(write(tmp_path, text))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("config error:")]
    assert len(errors) == 1, result.stderr
    assert key in errors[0]


@pytest.mark.parametrize("profile,why", [
    (None, "no such file or folder"),
    ('{"commands": [{"hdr": "7E4", "cmd": {"22": "01"}, "signals": []}]}', "commands[0]"),
    ("not json", "line 1"),
    ('{"commands": [{"hdr": "7E4", "cmd": {"22": "0101"}, "freq": 1, "signals": [{"id": '
     '"SPEED", "name": "s", "fmt": {"len": 8, "max": 250, "unit": "kilometersPerHour"}}]}]}',
     "signal SPEED: its id is the name of a standard value"),
])
def test_a_vehicle_profile_that_cannot_be_used_exits_2_naming_key_and_file(tmp_path, profile,
                                                                         why):
    if profile is not None:
        (tmp_path / "car.json").write_text(profile)
    result = run_check(write(tmp_path, "CAR_IDENTIFIER=X\nOBD_PROFILE=car.json\n"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("config error:")]
    assert len(errors) == 1 and "OBD_PROFILE" in errors[0] and why in errors[0], errors


def test_a_vehicle_profile_beside_the_config_is_found(tmp_path):
    import shutil
    shutil.copy(REPO / "eccm" / "profiles" / "demo-ev.json", tmp_path / "car.json")
    result = run_check(write(tmp_path, "CAR_IDENTIFIER=X\nOBD_PROFILE=car.json\n"))
    assert result.returncode == 0, result.stderr


def test_bad_value_from_environment_names_key_and_source(tmp_path):
    result = run_check(write(tmp_path, "CAR_IDENTIFIER=X\n"), {"ECCM_RECORD_INTERVAL": "soon"})
    assert result.returncode == 2
    assert "RECORD_INTERVAL = 'soon' (from environment)" in result.stderr


@pytest.mark.parametrize("text", ["[[[not ini\n", "CAR_IDENTIFIER=X\nno equals sign here\n"])
def test_unparsable_file_is_one_clear_error(tmp_path, text):
    result = run_check(write(tmp_path, text))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "not a valid INI file" in result.stderr


def test_missing_file_tells_how_to_create_it(tmp_path):
    result = run_check(tmp_path / "config.ini")
    assert result.returncode == 2
    assert "cp config.ini.template" in result.stderr


def test_check_config_masks_secrets(tmp_path):
    secret = "s3cr3t-Value-42"
    path = write(tmp_path, f"CAR_IDENTIFIER=X\nSOCKET_SERVER_SECRET={secret}\n"
                           f"S3_SERVER_ENDPOINT=localhost:8333\nS3_SERVER_AK=AKIDEXAMPLE\n"
                           f"S3_SERVER_SK={secret}\nS3_SERVER_BUCKET=logs\n")
    result = run_check(path)
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout + result.stderr
    assert "AKIDEXAMPLE" not in result.stdout
    assert re.search(r"SOCKET_SERVER_SECRET\s+= \(set, hidden\)", result.stdout)
    assert re.search(r"RECORD_INTERVAL\s+= 0.5\s+\[default\]", result.stdout)


def test_secret_never_in_errors(tmp_path):
    secret = "p@ss%word with spaces"
    result = run_check(write(tmp_path, f"SOCKET_SERVER_SECRET={secret}\nS3_SERVER_SK={secret}\n"))
    assert result.returncode == 2
    assert "p@ss" not in result.stderr
    assert "S3_SERVER_ENDPOINT, S3_SERVER_AK, S3_SERVER_BUCKET" in result.stderr


def test_readme_documents_every_key_with_its_default():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    defaults = cfgmod._template_defaults()
    for key in cfgmod.SCHEMA:
        row = next((ln for ln in readme.splitlines() if ln.startswith(f"| `{key}` |")), None)
        assert row is not None, f"{key} missing from the README configuration table"
        if defaults[key]:
            assert f"`{defaults[key]}`" in row, f"{key}: README default differs from template"


@pytest.mark.parametrize("endpoint,resolved,hint", [
    ("minio.example.net:9000", "https://minio.example.net:9000", True),
    ("http://127.0.0.1:8333", "http://127.0.0.1:8333", False),
    ("https://s3.eu-west-3.amazonaws.com", "https://s3.eu-west-3.amazonaws.com", False),
])
def test_check_config_says_which_scheme_the_s3_endpoint_means(tmp_path, endpoint, resolved,
                                                               hint):
    """A bare host:port means https: check-config says so, and how to write plain http."""
    secret = "s3cr3t-Value-42"
    path = write(tmp_path, f"CAR_IDENTIFIER=X\nS3_SERVER_ENDPOINT={endpoint}\n"
                           f"S3_SERVER_AK=AKIDEXAMPLE\nS3_SERVER_SK={secret}\n"
                           "S3_SERVER_BUCKET=logs\n")
    result = run_check(path)
    assert result.returncode == 0, result.stderr
    assert f"S3 uploads go to {resolved}" in result.stdout
    fix = f"S3_SERVER_ENDPOINT=http://{endpoint}"
    assert (fix in result.stdout) == hint
    assert secret not in result.stdout + result.stderr


# The socket server's secret, off loopback.

SECRET_RECIPE = "python -c 'import secrets; print(secrets.token_urlsafe(24))'"


@pytest.mark.parametrize("bind", ["0.0.0.0", "192.168.1.20", "::"])
def test_a_short_secret_is_refused_when_the_server_listens_beyond_loopback(tmp_path, bind):
    secret = "abc-15-chars-xx"  # 15 characters
    result = run_check(write(tmp_path, f"CAR_IDENTIFIER=X\nENABLE_SOCKET_SERVER=yes\n"
                                       f"SOCKET_SERVER_BIND={bind}\n"
                                       f"SOCKET_SERVER_SECRET={secret}\n"))
    assert result.returncode == 2, result.stdout + result.stderr
    (error,) = [ln for ln in result.stderr.splitlines() if ln.startswith("config error:")]
    assert error.startswith("config error: SOCKET_SERVER_SECRET: too short for a socket "
                            f"server listening on {bind}: expected at least 16 characters")
    assert SECRET_RECIPE in error
    assert secret not in result.stdout + result.stderr and "15" not in error


def test_the_issues_three_letter_secret_from_the_environment_on_all_addresses(tmp_path):
    result = run_check(write(tmp_path, "CAR_IDENTIFIER=X\nENABLE_SOCKET_SERVER=yes\n"
                                       "SOCKET_SERVER_BIND=0.0.0.0\n"),
                       {"ECCM_SOCKET_SERVER_SECRET": "abc"})
    assert result.returncode == 2
    assert "SOCKET_SERVER_SECRET: too short" in result.stderr
    assert "abc" not in result.stdout + result.stderr


@pytest.mark.parametrize("bind,secret,enabled", [
    ("0.0.0.0", "x" * 16, "yes"),      # long enough
    ("127.0.0.1", "abc", "yes"),       # loopback: any secret
    ("::1", "abc", "yes"),
    ("0.0.0.0", "abc", "no"),          # no server
])
def test_secret_length_rule_leaves_the_rest_alone(tmp_path, bind, secret, enabled):
    cfg, _ = load(write(tmp_path, f"CAR_IDENTIFIER=X\nENABLE_SOCKET_SERVER={enabled}\n"
                                  f"SOCKET_SERVER_BIND={bind}\nSOCKET_SERVER_SECRET={secret}\n"),
                  environ={})
    assert cfg.SOCKET_SERVER_SECRET == secret


def test_a_missing_secret_off_loopback_says_how_to_make_one(tmp_path):
    result = run_check(write(tmp_path, "CAR_IDENTIFIER=X\nENABLE_SOCKET_SERVER=yes\n"
                                       "SOCKET_SERVER_BIND=0.0.0.0\n"))
    assert result.returncode == 2
    assert "SOCKET_SERVER_SECRET: required" in result.stderr and SECRET_RECIPE in result.stderr
