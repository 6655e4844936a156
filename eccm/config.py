"""Configuration: config.ini + .env + ECCM_* environment, validated into one Config.

Defaults live only in config.ini.template (shipped inside the package); this module
knows each key's type and bounds. Every problem is collected and reported at once,
each naming the key, the value (never for secrets) and what was expected.
"""
from __future__ import annotations

import configparser
import difflib
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

TEMPLATE_PATH = Path(__file__).with_name("config.ini.template")
ENV_PREFIX = "ECCM_"
SECTION = "DEFAULT"


class ConfigError(Exception):
    """One or more configuration problems; each entry is a full sentence for the user."""

    def __init__(self, problems: List[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


# --- value parsers: raw string -> value, or ValueError("expected ...") ------------------

def _boolean(raw: str) -> bool:
    low = raw.lower()
    if low in ("yes", "true", "on", "1"):
        return True
    if low in ("no", "false", "off", "0"):
        return False
    raise ValueError("expected yes/no, true/false, on/off or 1/0")


def _number(lo: float, hi: float, integer: bool = False, optional: bool = False
            ) -> Callable[[str], Any]:
    kind = "a whole number" if integer else "a number"

    def parse(raw: str) -> Any:
        if raw == "" and optional:
            return None
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            raise ValueError(f"expected {kind} from {lo:g} to {hi:g}") from None
        if not lo <= value <= hi:  # also rejects nan
            raise ValueError(f"expected {kind} from {lo:g} to {hi:g}")
        return value
    return parse


def _text(pattern: Optional[str] = None, expected: str = "", optional: bool = True
          ) -> Callable[[str], Optional[str]]:
    regex = re.compile(pattern) if pattern else None

    def parse(raw: str) -> Optional[str]:
        if raw == "":
            if optional:
                return None
            raise ValueError(f"a value is required: {expected}")
        if regex is not None and not regex.fullmatch(raw):
            raise ValueError(f"expected {expected}")
        return raw
    return parse


def _choice(*options: str, optional: bool = False) -> Callable[[str], Optional[str]]:
    def parse(raw: str) -> Optional[str]:
        if raw == "" and optional:
            return None
        if raw.upper() in options:
            return raw.upper()
        listed = ", ".join(options)
        raise ValueError(f"expected one of {listed}" + (" or nothing" if optional else ""))
    return parse


def _separator(raw: str) -> Optional[str]:
    if raw == "":
        return None  # decided by the extension
    value = {"\\t": "\t", "tab": "\t", "TAB": "\t", "\\s": " ", "space": " "}.get(raw, raw)
    if len(value) != 1 or value in "\"\r\n" or value.isalnum():
        raise ValueError("expected one character that is not a letter, digit, quote or "
                         "line break (write a tab as \\t)")
    return value


def _extension(raw: str) -> str:
    value = raw if raw.startswith(".") else "." + raw
    if not re.fullmatch(r"\.[A-Za-z0-9]{1,10}", value):
        raise ValueError("expected a file extension such as .csv or .tsv")
    return value


def _names(raw: str) -> Optional[Tuple[str, ...]]:
    """'RPM, speed' -> ('RPM', 'SPEED'); each must be a python-OBD mode-01 value."""
    if raw == "":
        return None
    import obd  # only when the key is set: check-config stays light otherwise
    names = tuple(n.strip().upper() for n in raw.split(",") if n.strip())
    bad = [n for n in names if not obd.commands.has_name(n) or obd.commands[n].mode != 1]
    if bad:
        raise ValueError(f"expected python-OBD mode-01 value names such as RPM, SPEED; "
                         f"unknown: {', '.join(bad[:5])}")
    return names


def _bind_address(raw: str) -> str:
    if raw == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        raise ValueError("expected an IP address such as 127.0.0.1 or 0.0.0.0") from None


def _endpoint(raw: str) -> Optional[str]:
    if raw == "":
        return None
    url = raw if "://" in raw else "http://" + raw
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("expected host:port, http://host:port or https://host") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected host:port, http://host:port or https://host")
    return raw


@dataclass(frozen=True)
class _Key:
    parse: Callable[[str], Any]
    secret: bool = False


_LOOPBACK = ("127.0.0.1", "::1")

SCHEMA: Dict[str, _Key] = {
    "CAR_IDENTIFIER": _Key(_text(r"[A-Za-z0-9._-]{1,64}",
                                 "1 to 64 letters, digits, '.', '_' or '-'", optional=False)),
    "OBD_INTERFACE": _Key(_text()),
    "OBD_BAUDRATE": _Key(_number(300, 4_000_000, integer=True, optional=True)),
    "OBD_PROTOCOL": _Key(_choice("1", "2", "3", "4", "5", "6", "7", "8", "9", "A",
                                 optional=True)),
    "OBD_TIMEOUT": _Key(_number(0.05, 30)),
    "OBD_FAST_BAUDRATE": _Key(_number(0, 4_000_000, integer=True)),
    "OBD_FAST_PIDS": _Key(_names),
    "OBD_SLOW_EVERY": _Key(_number(1, 1000, integer=True)),
    "OBD_SLEEP_BELOW_VOLTAGE": _Key(_number(0, 30)),
    "OBD_SESSION_TIMEOUT": _Key(_number(1, 600)),
    "RECONNECT_MAX_DELAY": _Key(_number(1, 30)),
    "GPS_POSITION_MONITORING": _Key(_boolean),
    "GNSS_PORT": _Key(_text()),
    "GNSS_BAUDRATE": _Key(_number(300, 4_000_000, integer=True)),
    "FILE_RECORDING": _Key(_boolean),
    "MONITORING_FILE_EXTENSION": _Key(_extension),
    "MONITORING_FILE_SEPARATION_CHARACTER": _Key(_separator),
    "RECORD_DIRECTORY_LOCATION": _Key(_text(optional=False, expected="a folder")),
    "RECORD_INTERVAL": _Key(_number(0.05, 3600)),
    "FSYNC_INTERVAL": _Key(_number(0, 3600)),
    "RECORD_ROTATE_MINUTES": _Key(_number(1, 10080)),
    "RECORD_ROTATE_SIZE_MB": _Key(_number(1, 4096)),
    "VALUE_MAX_AGE": _Key(_number(0.1, 3600)),
    "RECORD_DIRECTORY_MAX_MB": _Key(_number(0, 10_000_000)),
    "RECORD_DROP_OLDEST_WHEN_FULL": _Key(_boolean),
    "S3_SERVER_ENDPOINT": _Key(_endpoint),
    "S3_SERVER_AK": _Key(_text(), secret=True),
    "S3_SERVER_SK": _Key(_text(), secret=True),
    "S3_SERVER_BUCKET": _Key(_text(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]",
                                   "an S3 bucket name: 3 to 63 lower-case letters, digits, "
                                   "'.' or '-'")),
    "S3_SERVER_REGION": _Key(_text(r"[a-z0-9-]{1,32}", "a region name such as us-east-1")),
    "S3_KEY_PREFIX": _Key(_text(r"[A-Za-z0-9._/=-]{0,200}",
                                "letters, digits and . _ / = - (up to 200)")),
    "S3_VERIFY_TLS": _Key(_boolean),
    "S3_KEEP_UPLOADED": _Key(_boolean),
    "S3_KEEP_UPLOADED_DAYS": _Key(_number(0, 36500)),
    "ENABLE_SOCKET_SERVER": _Key(_boolean),
    "SOCKET_SERVER_BIND": _Key(_bind_address),
    "SOCKET_SERVER_PORT": _Key(_number(1, 65535, integer=True)),
    "SOCKET_SERVER_SECRET": _Key(_text(), secret=True),
    "LOG_LEVEL": _Key(_choice("DEBUG", "INFO", "WARNING", "ERROR")),
}


class Config:
    """Validated configuration; keys are attributes (cfg.RECORD_INTERVAL)."""

    def __init__(self, values: Mapping[str, Any], sources: Mapping[str, str],
                 path: Optional[Path]):
        self._values = dict(values)
        self._sources = dict(sources)
        self.path = path

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def replace(self, **changes: Any) -> "Config":
        """A copy with some values changed (demo mode, tests)."""
        unknown = set(changes) - set(self._values)
        if unknown:
            raise KeyError(", ".join(sorted(unknown)))
        values = {**self._values, **changes}
        sources = {**self._sources, **{k: "override" for k in changes}}
        return Config(values, sources, self.path)

    @property
    def s3_enabled(self) -> bool:
        return self.S3_SERVER_ENDPOINT is not None

    def describe(self) -> List[Tuple[str, str, str]]:
        """(key, shown value, source) for every key, secrets masked."""
        rows = []
        for key in SCHEMA:
            value = self._values[key]
            if SCHEMA[key].secret:
                shown = "(set, hidden)" if value else "(empty)"
            elif value is None:
                shown = "(empty)"
            elif isinstance(value, bool):
                shown = "yes" if value else "no"
            else:
                shown = repr(value)[1:-1] if isinstance(value, str) else str(value)
            rows.append((key, shown, self._sources[key]))
        return rows


def _template_defaults() -> Dict[str, str]:
    parser = _new_parser()
    parser.read_string(TEMPLATE_PATH.read_text(encoding="utf-8"), source=str(TEMPLATE_PATH))
    return dict(parser.defaults())


def template_keys() -> List[str]:
    return list(_template_defaults())


def _new_parser() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True,
                                       default_section=SECTION)
    parser.optionxform = str.upper  # type: ignore[assignment]  # keys are case-insensitive
    return parser


def _read_ini(path: Path, problems: List[str], warnings: List[str]) -> Dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        problems.append(f"{path}: no such file. Create it from the template: "
                        f"cp config.ini.template {path}")
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: cannot be read ({exc.__class__.__name__}: {exc})")
        return {}
    offset = 0
    first = next((ln.strip() for ln in text.splitlines()
                  if ln.strip() and not ln.lstrip().startswith(("#", ";"))), "")
    if not first.startswith("["):
        text = f"[{SECTION}]\n" + text  # accept a plain KEY=value file
        offset = 1
    parser = _new_parser()
    try:
        parser.read_string(text, source=str(path))
    except configparser.DuplicateOptionError as exc:
        problems.append(f"{path} line {exc.lineno - offset}: key {exc.option} "
                        "is set twice; keep one")
        return {}
    except configparser.Error as exc:
        msg = str(exc).replace("\n", " ")
        problems.append(f"{path}: not a valid INI file ({msg})")
        return {}
    for section in parser.sections():
        warnings.append(f"{path}: section [{section}] ignored; ECCM reads [{SECTION}] only")
    return dict(parser.defaults())


def _read_dotenv(path: Path) -> Dict[str, str]:
    if not path.is_file():
        return {}
    from dotenv import dotenv_values
    out = {}
    for name, value in dotenv_values(path).items():
        key = name.upper()
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX):] in SCHEMA:
            key = key[len(ENV_PREFIX):]
        if key in SCHEMA:
            out[key] = value if value is not None else ""
    return out


def _unknown(key: str, where: str) -> str:
    close = difflib.get_close_matches(key, list(SCHEMA), n=1, cutoff=0.75)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{where}: unknown key {key} ignored{hint}"


def load(path: Optional[Path], environ: Optional[Mapping[str, str]] = None,
         require_file: bool = True) -> Tuple[Config, List[str]]:
    """Read and validate; return (config, warnings) or raise ConfigError.

    Layers, later wins: template defaults, config file, .env beside it, ECCM_* environment.
    """
    environ = os.environ if environ is None else environ
    problems: List[str] = []
    warnings: List[str] = []
    defaults = _template_defaults()
    raw: Dict[str, str] = dict(defaults)
    sources = {key: "default" for key in raw}
    base = Path.cwd()

    layers: List[Tuple[str, Dict[str, str]]] = []
    if path is not None:
        path = Path(path)
        base = path.resolve().parent
        if path.exists() or require_file:
            file_values = _read_ini(path, problems, warnings)
            for key in list(file_values):
                if key not in SCHEMA:
                    warnings.append(_unknown(key, str(path)))
                    del file_values[key]
            layers.append((path.name, file_values))
        layers.append((".env", _read_dotenv(base / ".env")))
    env_values = {}
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX):
            key = name[len(ENV_PREFIX):]
            if key in SCHEMA:
                env_values[key] = value
            else:
                warnings.append(_unknown(key, f"environment {name}"))
    layers.append(("environment", env_values))

    for source, values in layers:
        for key, value in values.items():
            raw[key] = value
            sources[key] = source

    if problems:  # the file itself is unusable: its keys cannot be judged
        raise ConfigError(problems)
    values: Dict[str, Any] = {}
    for key, spec in SCHEMA.items():
        text = raw.get(key, "").strip()
        if text == "" and defaults.get(key, "").strip():
            text = defaults[key].strip()  # empty means "the default"
        try:
            values[key] = spec.parse(text)
        except ValueError as exc:
            shown = "" if spec.secret or not text else f" = {text!r}"
            problems.append(f"{key}{shown} (from {sources[key]}): {exc}")

    _check_together(values, problems)
    if not problems:
        _derive(values, base)
    if problems:
        raise ConfigError(problems)
    return Config(values, sources, path), warnings


def _check_together(values: Dict[str, Any], problems: List[str]) -> None:
    """Rules between keys, judged only on keys that parsed."""
    s3 = ["S3_SERVER_ENDPOINT", "S3_SERVER_AK", "S3_SERVER_SK", "S3_SERVER_BUCKET"]
    missing = [key for key in s3 if not values.get(key)]
    if all(key in values for key in s3) and 0 < len(missing) < len(s3):
        problems.append(f"{', '.join(missing)}: required when any of {', '.join(s3)} is set "
                        "(leave all four empty to disable the upload)")
    if (values.get("ENABLE_SOCKET_SERVER") and not values.get("SOCKET_SERVER_SECRET")
            and values.get("SOCKET_SERVER_BIND", "127.0.0.1") not in _LOOPBACK):
        problems.append(f"SOCKET_SERVER_SECRET: required when the socket server listens on "
                        f"{values['SOCKET_SERVER_BIND']} (only a 127.0.0.1 server may run "
                        "without a secret)")


def default_separator(extension: str) -> str:
    """The original ECCM's rule: ',' for .csv, tab for .tsv, '|' otherwise."""
    return {".csv": ",", ".tsv": "\t"}.get(extension.lower(), "|")


def _derive(values: Dict[str, Any], base: Path) -> None:
    if values["MONITORING_FILE_SEPARATION_CHARACTER"] is None:
        values["MONITORING_FILE_SEPARATION_CHARACTER"] = default_separator(
            values["MONITORING_FILE_EXTENSION"])
    folder = Path(os.path.expanduser(values["RECORD_DIRECTORY_LOCATION"]))
    values["RECORD_DIRECTORY_LOCATION"] = str(folder if folder.is_absolute() else base / folder)
