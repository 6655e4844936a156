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
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from eccm.sinks.layout import DEMO_CAR, OUTBOX, UPLOADED

TEMPLATE_PATH = Path(__file__).with_name("config.ini.template")
ENV_PREFIX = "ECCM_"
SECTION = "DEFAULT"


class ConfigError(Exception):
    """One or more configuration problems; each entry is a full sentence for the user.

    `warnings` holds the warnings found on the way (unknown keys, ignored sections): show
    them with the problems, a misspelt key often explains a missing one.
    """

    def __init__(self, problems: List[str], warnings: Optional[List[str]] = None):
        super().__init__("\n".join(problems))
        self.problems = problems
        self.warnings = list(warnings or [])


# Value parsers: raw string -> value, or ValueError("expected ...").
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
    # Only when the key is set: check-config stays light otherwise.
    from eccm.sources.obd.values import unknown_mode01
    names = tuple(n.strip().upper() for n in raw.split(",") if n.strip())
    bad = unknown_mode01(names)
    if bad:
        raise ValueError(f"expected python-OBD mode-01 value names such as RPM, SPEED; "
                         f"unknown: {', '.join(bad[:5])}")
    return names


def _secret(raw: str) -> Optional[str]:
    """The socket secret: one that `AUTH <secret>` can give (a '>>' makes the line a legacy
    command; 'HMAC <x>' is the challenge answer)."""
    if ">>" in raw or raw.upper().startswith("HMAC ") or raw.upper().startswith("HMAC\t"):
        raise ValueError("expected a secret without '>>' and not starting with 'HMAC ' "
                         f"(AUTH could not give it); generate one with: {SECRET_RECIPE}")
    return raw or None


def _bind_address(raw: str) -> str:
    if raw == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        raise ValueError("expected an IP address such as 127.0.0.1 or 0.0.0.0") from None


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _mask_credentials(raw: str) -> str:
    """'http://user:pw@host:9000' -> 'http://***@host:9000': everything before the last
    '@' is hidden, whatever characters the password holds."""
    cut = min((raw.find(c) for c in "?#" if c in raw), default=-1)
    if cut >= 0:  # a query or fragment may carry a signed credential: never shown
        raw = raw[:cut] + raw[cut] + "***"
    if "@" not in raw:
        return raw
    scheme = _SCHEME.match(raw)
    head = scheme.group(0) if scheme else ""
    return f"{head}***@{raw.rpartition('@')[2]}"


def _endpoint(raw: str) -> Optional[str]:
    if raw == "":
        return None
    if "@" in raw:  # no host name holds '@': this is user[:password]@ (boto3 ignores it)
        raise ValueError("expected no user name or password in the endpoint (the part "
                         "before '@', hidden here): write http://host:port and put the "
                         "access key in S3_SERVER_AK and the secret key in S3_SERVER_SK")
    if "?" in raw or "#" in raw:  # an S3 endpoint has none; one may hold a credential
        raise ValueError("expected no query (?...) or fragment (#...) in the endpoint "
                         "(hidden here): write http://host:port or https://host")
    url = raw if "://" in raw else "http://" + raw
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("expected host:port, http://host:port or https://host") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected host:port, http://host:port or https://host")
    return raw


def split_broker(raw: str, tls: bool = False) -> Tuple[str, int]:
    """'host:port', 'host' or '[v6]:port' -> (host, port); the port defaults to MQTT's
    1883, or 8883 with TLS. ValueError says what was expected."""
    expected = "expected host:port or host (e.g. 192.168.1.10:1883), no scheme or user"
    if not raw or "@" in raw or "/" in raw or any(c.isspace() for c in raw):
        raise ValueError(expected)
    port_text = ""
    if raw.startswith("["):
        host, bracket, rest = raw[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(expected)
        port_text = rest[1:] if rest else ""
        if rest and not port_text:
            raise ValueError(expected)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(expected) from None
    elif raw.count(":") > 1:
        host = raw  # a bare IPv6 address, nothing else
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(expected) from None
    else:
        host, colon, port_text = raw.partition(":")
        if colon and not port_text:
            raise ValueError(expected)
    if not host or host.isdigit():  # '1883' alone is a port without its host
        raise ValueError(expected)
    if port_text == "":
        return host, 8883 if tls else 1883
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise ValueError("expected a port from 1 to 65535 after the ':'")
    return host, int(port_text)


def _mask_login(raw: str) -> str:
    """'user:pw@host' -> '***@host': a broker address holds no login, but one typed there
    by mistake is never shown."""
    return f"***@{raw.rpartition('@')[2]}" if "@" in raw else raw


def _broker(raw: str) -> Optional[str]:
    if raw == "":
        return None
    split_broker(raw)
    return raw


def _topic(optional: bool) -> Callable[[str], Optional[str]]:
    """An MQTT topic prefix ECCM publishes under: levels without wildcards, not $SYS."""
    def parse(raw: str) -> Optional[str]:
        if raw == "" and optional:
            return None
        value = raw.strip("/")
        if (not value or any(c in value for c in "+#") or value.startswith("$")
                or any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value)
                or "//" in value or len(value.encode()) > 200):
            raise ValueError("expected a topic prefix such as eccm/my-car: levels separated "
                             "by '/', no '+', '#', control character or empty level, not "
                             "starting with '$', up to 200 bytes")
        return value
    return parse


@dataclass(frozen=True)
class _Key:
    parse: Callable[[str], Any]
    secret: bool = False  # the value is never shown
    show: Callable[[str], str] = str  # how a value is shown (check-config, errors)

    def shown(self, text: str) -> str:
        """' = VALUE' for an error message; nothing for a secret or an empty value."""
        return "" if self.secret or not text else f" = {self.show(text)!r}"


_LOOPBACK = ("127.0.0.1", "::1")
MIN_SECRET_BEYOND_LOOPBACK = 16  # characters of SOCKET_SERVER_SECRET off 127.0.0.1
SECRET_RECIPE = "python -c 'import secrets; print(secrets.token_urlsafe(24))'"
CERT_RECIPE = ("openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=eccm "
               "-keyout eccm-key.pem -out eccm-cert.pem")

SCHEMA: Dict[str, _Key] = {
    # Part of file names and S3 keys: no '.', '..', hidden (.x) or option-like (-x) names.
    "CAR_IDENTIFIER": _Key(_text(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?",
                                 "1 to 64 letters, digits, '.', '_' or '-' that start and end "
                                 "with a letter or digit", optional=False)),
    "OBD_INTERFACE": _Key(_text()),
    "OBD_BAUDRATE": _Key(_number(300, 4_000_000, integer=True, optional=True)),
    "OBD_PROTOCOL": _Key(_choice("1", "2", "3", "4", "5", "6", "7", "8", "9", "A",
                                 optional=True)),
    "OBD_TIMEOUT": _Key(_number(0.05, 30)),
    "OBD_FAST_BAUDRATE": _Key(_number(0, 4_000_000, integer=True)),
    "OBD_FAST_PIDS": _Key(_names),
    "OBD_SLOW_EVERY": _Key(_number(1, 1000, integer=True)),
    "OBD_PROFILE": _Key(_text()),
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
    "S3_SERVER_ENDPOINT": _Key(_endpoint, show=_mask_credentials),
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
    "SOCKET_SERVER_SECRET": _Key(_secret, secret=True),
    "SOCKET_SERVER_TLS_CERT": _Key(_text()),
    "SOCKET_SERVER_TLS_KEY": _Key(_text()),
    "MQTT_BROKER": _Key(_broker, show=_mask_login),
    "MQTT_USER": _Key(_text()),
    "MQTT_PASSWORD": _Key(_text(), secret=True),
    "MQTT_TLS": _Key(_boolean),
    "MQTT_TLS_CA": _Key(_text()),
    "MQTT_TOPIC_PREFIX": _Key(_topic(optional=True)),
    "MQTT_INTERVAL": _Key(_number(0.1, 3600)),
    "MQTT_DISCOVERY": _Key(_boolean),
    "MQTT_DISCOVERY_PREFIX": _Key(_topic(optional=False)),
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

    @property
    def mqtt_enabled(self) -> bool:
        return self.MQTT_BROKER is not None

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
            elif isinstance(value, str):
                shown = repr(SCHEMA[key].show(value))[1:-1]
            else:
                shown = str(value)
            rows.append((key, shown, self._sources[key]))
        return rows


def _template_defaults() -> Dict[str, str]:
    parser = _new_parser()
    parser.read_string(TEMPLATE_PATH.read_text(encoding="utf-8"), source=str(TEMPLATE_PATH))
    return dict(parser.defaults())


def _new_parser() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True,
                                       default_section=SECTION)
    parser.optionxform = str.upper  # type: ignore[assignment]  # keys are case-insensitive
    return parser


# An inline comment: ';' or '#' after a blank ("KEY=abc ; note"), or a whole value that is
# one ("KEY= ; note"). A ';' or '#' inside a value ("ab;c#d") or alone (";") is a value.
_INLINE_COMMENT = re.compile(r"\s[;#]|^[;#]\s")
_OPTION = re.compile(r"(?P<key>.*?)\s*[=:]")  # configparser's OPTCRE, key part
_HEADER = re.compile(r"\[(?P<name>.+)\]")       # configparser's SECTCRE


def _decode(data: bytes) -> str:
    """UTF-8 with or without a BOM (Windows Notepad writes one); ValueError if not UTF-8."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ValueError("is UTF-16 text (Notepad's 'Unicode'); save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ValueError(f"is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
                         "save it as UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _key_lines(text: str) -> Dict[str, int]:
    """KEY -> the line it is set on in the [DEFAULT] part (or the headerless top) of an INI
    text, following configparser's reading: indented lines under a key continue it."""
    found: Dict[str, int] = {}
    section: Optional[str] = SECTION
    indent: Optional[int] = None  # of the last key line, while its value may continue
    for number, line in enumerate(text.split("\n"), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        level = len(line) - len(line.lstrip())
        if indent is not None and level > indent:
            continue
        header = _HEADER.match(stripped)
        if header:
            section, indent = header.group("name"), None
            continue
        option = _OPTION.match(stripped)
        if option:
            indent = level
            if section == SECTION:
                found.setdefault(option.group("key").strip().upper(), number)
    return found


def _read_ini(path: Path, problems: List[str], warnings: List[str]
              ) -> Tuple[Dict[str, str], Dict[str, int]]:
    """(KEY -> value, KEY -> line number) of the file's [DEFAULT] part; the line numbers
    are the editor's: the [DEFAULT] header added to a plain KEY=value file is not counted."""
    try:
        text = _decode(path.read_bytes())
    except FileNotFoundError:
        problems.append(f"{path}: no such file. Create it from the template: "
                        f"cp config.ini.template {path}")
        return {}, {}
    except OSError as exc:
        problems.append(f"{path}: cannot be read ({exc.__class__.__name__}: {exc})")
        return {}, {}
    except ValueError as exc:
        problems.append(f"{path}: {exc}")
        return {}, {}
    offset = 0
    first = next((ln.strip() for ln in text.split("\n")
                  if ln.strip() and not ln.lstrip().startswith(("#", ";"))), "")
    parsed = text
    if not first.startswith("["):
        parsed = f"[{SECTION}]\n" + text  # accept a plain KEY=value file
        offset = 1
    parser = _new_parser()
    try:
        parser.read_string(parsed, source=str(path))
    except configparser.DuplicateOptionError as exc:
        problems.append(f"{path} line {exc.lineno - offset}: key {exc.option} "
                        "is set twice; keep one")
        return {}, {}
    except configparser.DuplicateSectionError as exc:
        problems.append(f"{path} line {exc.lineno - offset}: section [{exc.section}] "
                        "appears twice; keep one")
        return {}, {}
    except configparser.MissingSectionHeaderError as exc:
        problems.append(f"{path} line {exc.lineno - offset}: not a valid INI file: expected "
                        "a [DEFAULT] header or KEY=value")
        return {}, {}
    except configparser.ParsingError as exc:
        numbers = [str(number - offset) for number, _ in exc.errors]
        where = ("line " if len(numbers) == 1 else "lines ") + ", ".join(numbers)
        # The line itself is not repeated: it may be a secret pasted without its KEY=.
        problems.append(f"{path} {where}: not a valid INI file: expected KEY=value, a "
                        "[section] header, or a comment line starting with # or ;")
        return {}, {}
    except configparser.Error as exc:  # nothing else is known to be raised; stay readable
        problems.append(f"{path}: not a valid INI file ({exc.__class__.__name__})")
        return {}, {}
    for section in parser.sections():
        warnings.append(f"{path}: section [{section}] ignored; ECCM reads [{SECTION}] only")
    return dict(parser.defaults()), _key_lines(text)


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


_DOTENV_LINE = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=[ \t]*(.*)")


def _dotenv_comments(path: Path) -> Dict[str, int]:
    """Keys of .env whose unquoted value has a comment after it (key -> line number):
    refused like config.ini's, rather than cut (' #') or kept (' ;') by python-dotenv."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return {}
    found: Dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = _DOTENV_LINE.fullmatch(line)
        if not match or match[2][:1] in ("'", '"'):
            continue
        key = match[1].upper()
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX):] in SCHEMA:
            key = key[len(ENV_PREFIX):]
        if key in SCHEMA and _INLINE_COMMENT.search(match[2].strip()):
            found[key] = number
    return found


def _unknown(key: str, where: str) -> str:
    close = difflib.get_close_matches(key, list(SCHEMA), n=1, cutoff=0.75)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{where}: unknown key {key} ignored{hint}"


def load(path: Optional[Path], environ: Optional[Mapping[str, str]] = None,
         require_file: bool = True, demo: bool = False) -> Tuple[Config, List[str]]:
    """Read and validate; return (config, warnings) or raise ConfigError (which carries
    the warnings too). Only the demo (`demo`) may use the simulated car's identifier.

    Layers, later wins: template defaults, config file, .env beside it, ECCM_* environment.
    The record folder is judged as the daemon will use it, without creating anything.
    """
    environ = os.environ if environ is None else environ
    problems: List[str] = []
    warnings: List[str] = []
    defaults = _template_defaults()
    raw: Dict[str, str] = dict(defaults)
    sources = {key: "default" for key in raw}
    base = Path.cwd()

    layers: List[Tuple[str, Dict[str, str]]] = []
    file_name = ""
    file_values: Dict[str, str] = {}
    file_lines: Dict[str, int] = {}
    # key -> (file, line) of values with a comment after them, in config.ini or .env
    commented: Dict[str, Tuple[str, int]] = {}
    if path is not None:
        path = Path(path)
        base = path.resolve().parent
        if path.exists() or require_file:
            file_values, file_lines = _read_ini(path, problems, warnings)
            file_name = path.name
            for key in list(file_values):
                if key not in SCHEMA:
                    warnings.append(_unknown(key, str(path)))
                    del file_values[key]
                elif _INLINE_COMMENT.search(file_values[key].strip()):
                    commented[key] = (path.name, file_lines.get(key, 0))
            layers.append((path.name, file_values))
        layers.append((".env", _read_dotenv(base / ".env")))
        for key, line in _dotenv_comments(base / ".env").items():
            commented.setdefault(key, (".env", line))
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

    def where(key: str) -> str:
        line = file_lines.get(key) if sources[key] == file_name else None
        return f"{sources[key]} line {line}" if line else sources[key]

    if problems:  # the file itself is unusable: its keys cannot be judged
        raise ConfigError(problems, warnings)
    values: Dict[str, Any] = {}
    texts: Dict[str, str] = {}
    for key, spec in SCHEMA.items():
        if key in commented and commented[key][0] == sources[key]:
            # Refused, not stripped: a secret may hold ' #', and cutting it would leave a
            # shorter secret than the user wrote, silently (python-dotenv cuts ' #').
            source, number = commented[key]
            line = f" line {number}" if number else ""
            value = "" if source != file_name else spec.shown(file_values[key].strip())
            problems.append(
                f"{key}{value} (from {source}{line}): expected no comment after the "
                "value (';' or '#' after a space starts one): put the comment on its own "
                "line; a value that really holds ' ;' or ' #' goes in .env, in quotes, or "
                f"in the environment variable {ENV_PREFIX}{key}")
            continue
        text = raw.get(key, "").strip()
        if text == "" and defaults.get(key, "").strip():
            text = defaults[key].strip()  # empty means "the default"
        texts[key] = text
        try:
            values[key] = spec.parse(text)
        except ValueError as exc:
            problems.append(f"{key}{spec.shown(text)} (from {where(key)}): {exc}")

    _check_together(values, problems)
    car = values.get("CAR_IDENTIFIER") or ""
    if car.upper() == DEMO_CAR and not demo:
        problems.append(f"CAR_IDENTIFIER = {car!r} (from {where('CAR_IDENTIFIER')}): "
                        f"{DEMO_CAR} is the simulated car's (eccm run --demo), whose drives "
                        "are never uploaded with a real car's settings: choose another")
    _derive(values, base)
    if values.get("ENABLE_SOCKET_SERVER"):
        problems.extend(_tls_problems(
            values, lambda key: f"{key}{SCHEMA[key].shown(texts[key])} (from {where(key)})"))
    if values.get("MQTT_BROKER") and values.get("MQTT_TLS_CA"):
        trouble = _ca_problem(values["MQTT_TLS_CA"])
        if trouble:
            problems.append(f"MQTT_TLS_CA{SCHEMA['MQTT_TLS_CA'].shown(texts['MQTT_TLS_CA'])} "
                            f"(from {where('MQTT_TLS_CA')}): {trouble}; expected the PEM "
                            "file of the certificate authority that signed the broker's")
    if values.get("OBD_PROFILE"):
        problem = _profile_problem(values["OBD_PROFILE"])
        if problem:
            problems.append(f"OBD_PROFILE{SCHEMA['OBD_PROFILE'].shown(texts['OBD_PROFILE'])} "
                            f"(from {where('OBD_PROFILE')}): {problem}")
    key = "RECORD_DIRECTORY_LOCATION"
    if key in values and (values.get("FILE_RECORDING") is not False
                          or values.get("S3_SERVER_ENDPOINT")):
        # The recorder writes there; the uploader takes outbox/ from there.
        trouble = folder_problem(Path(values[key]))
        if trouble:
            problems.append(f"{key}{SCHEMA[key].shown(texts[key])} (from {where(key)}): "
                            f"{trouble}; expected a folder ECCM can create or write in")
    if problems:
        raise ConfigError(problems, warnings)
    return Config(values, sources, path), warnings


def _ca_problem(path: str) -> Optional[str]:
    """Why a certificate authority file cannot be used by TLS; None if it loads."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc.__class__.__name__})"
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, ValueError):
        return "holds no PEM certificate"
    return None


def _check_together(values: Dict[str, Any], problems: List[str]) -> None:
    """Rules between keys, judged only on keys that parsed."""
    s3 = ["S3_SERVER_ENDPOINT", "S3_SERVER_AK", "S3_SERVER_SK", "S3_SERVER_BUCKET"]
    missing = [key for key in s3 if not values.get(key)]
    if all(key in values for key in s3) and 0 < len(missing) < len(s3):
        problems.append(f"{', '.join(missing)}: required when any of {', '.join(s3)} is set "
                        "(leave all four empty to disable the upload)")
    if values.get("MQTT_PASSWORD") and "MQTT_USER" in values and not values["MQTT_USER"]:
        problems.append("MQTT_USER: required when MQTT_PASSWORD is set (the broker takes "
                        "a password only with a user name)")
    if values.get("MQTT_TLS_CA") and values.get("MQTT_TLS") is False:
        problems.append("MQTT_TLS_CA: set while MQTT_TLS is no; set MQTT_TLS=yes to use "
                        "it, or empty it")
    bind = values.get("SOCKET_SERVER_BIND", "127.0.0.1")
    secret = values.get("SOCKET_SERVER_SECRET")
    if values.get("ENABLE_SOCKET_SERVER") and bind not in _LOOPBACK:
        if not secret and "SOCKET_SERVER_SECRET" in values:
            problems.append(f"SOCKET_SERVER_SECRET: required when the socket server listens "
                            f"on {bind} (only a 127.0.0.1 server may run without a secret); "
                            f"generate one with: {SECRET_RECIPE}")
        elif secret and len(secret) < MIN_SECRET_BEYOND_LOOPBACK:
            # Neither the secret nor its length is shown.
            problems.append(f"SOCKET_SERVER_SECRET: too short for a socket server listening "
                            f"on {bind}: expected at least {MIN_SECRET_BEYOND_LOOPBACK} "
                            f"characters (any length is accepted on 127.0.0.1); generate "
                            f"one with: {SECRET_RECIPE}")


def reserved_value_names() -> List[str]:
    """The names ECCM's own values take (every OBD value, the adapter's voltage, the GNSS
    fields, the time): a vehicle profile's signal must be named apart."""
    from eccm.sinks.rows import TIME_COLUMN
    from eccm.sources.gnss.columns import NAMES
    from eccm.sources.obd.values import reserved_names  # without python-OBD too
    return [*reserved_names(), *NAMES, TIME_COLUMN.name]


def _profile_problem(path: str) -> Optional[str]:
    """Why the vehicle profile file or folder cannot be used; None if it loads."""
    from eccm.sources.obd.profile import ProfileError, check_names, load  # only when set
    if not os.path.exists(path):
        return "no such file or folder"
    try:
        check_names(load(path), reserved_value_names())
    except ProfileError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    return None


def default_separator(extension: str) -> str:
    """The original ECCM's rule: ',' for .csv, tab for .tsv, '|' otherwise."""
    return {".csv": ",", ".tsv": "\t"}.get(extension.lower(), "|")


def _derive(values: Dict[str, Any], base: Path) -> None:
    """Values that follow from others; each only when the keys it needs parsed."""
    if (values.get("MONITORING_FILE_SEPARATION_CHARACTER", "") is None
            and "MONITORING_FILE_EXTENSION" in values):
        values["MONITORING_FILE_SEPARATION_CHARACTER"] = default_separator(
            values["MONITORING_FILE_EXTENSION"])
    for key in ("RECORD_DIRECTORY_LOCATION", "SOCKET_SERVER_TLS_CERT",
                "SOCKET_SERVER_TLS_KEY", "OBD_PROFILE", "MQTT_TLS_CA"):
        if values.get(key):
            path = Path(os.path.expanduser(values[key]))
            values[key] = str(path if path.is_absolute() else base / path)


def _tls_problems(values: Dict[str, Any], label: Callable[[str], str]) -> List[str]:
    """What is wrong with the socket server's TLS files: both or neither, each a file ECCM
    can read, a PEM certificate and its PEM key without a passphrase. label(key) names a
    key that is set (its value and where it comes from). Nothing read from the files is
    ever quoted."""
    cert_key, key_key = "SOCKET_SERVER_TLS_CERT", "SOCKET_SERVER_TLS_KEY"
    if cert_key not in values or key_key not in values:
        return []  # one did not parse: reported already
    cert, key = values[cert_key], values[key_key]
    if not cert and not key:
        return []
    if not cert or not key:
        missing, given = (cert_key, key_key) if not cert else (key_key, cert_key)
        return [f"{missing}: required when {given} is set (set both for TLS, or neither "
                f"for plain text); make a pair with: {CERT_RECIPE}"]
    found = []
    for name, path, kind in ((cert_key, cert, "a PEM certificate"),
                             (key_key, key, "a PEM private key")):
        try:
            with open(path, "rb"):
                pass
        except FileNotFoundError:
            found.append(f"{label(name)}: no such file; expected {kind} file (make a pair "
                         f"with: {CERT_RECIPE})")
        except IsADirectoryError:
            found.append(f"{label(name)}: is a folder; expected {kind} file")
        except OSError as exc:
            found.append(f"{label(name)}: cannot be read "
                         f"({exc.strerror or exc.__class__.__name__}); expected {kind} file "
                         "ECCM can read")
    if found:
        return found
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
    except (ssl.SSLError, ValueError):
        return [f"{label(cert_key)}: not a PEM certificate (expected a file that starts "
                "with -----BEGIN CERTIFICATE-----)"]
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key, password=lambda: b"")
    except (ssl.SSLError, ValueError):
        return [f"{label(key_key)}: cannot be used with {cert_key}: expected the "
                "certificate's own private key, in PEM, without a passphrase"]
    return []


# Subfolders the daemon makes and writes in (recorder's outbox/, uploader's uploaded/).
RECORD_SUBFOLDERS = (OUTBOX, UPLOADED)


def folder_problem(folder: Path) -> Optional[str]:
    """Why ECCM could not use folder as its record folder (a phrase), or None if it can.

    Creates nothing: a missing folder is judged by its nearest existing ancestor, which
    must be a folder ECCM may write in. os.access is the kernel's own answer for this
    user, read-only file systems included (root passes permission bits, not those).
    """
    problem = _folder_state(folder)
    if problem == "":
        for name in RECORD_SUBFOLDERS:
            sub = _folder_state(folder / name)
            if sub:
                return f"{sub} (ECCM keeps files in {name}/ there)"
        return None
    if problem is not None:
        return problem
    ancestor = folder.parent
    while True:
        problem = _folder_state(ancestor)
        if problem == "":
            return None
        if problem is not None:
            return f"{folder} cannot be created: {problem}"
        if ancestor == ancestor.parent:
            return f"{folder} cannot be created: no folder of its path exists"
        ancestor = ancestor.parent


def _folder_state(folder: Path) -> Optional[str]:
    """None if nothing is at folder; '' if it is a folder ECCM can write in; else what is
    wrong with it."""
    try:
        info = os.stat(folder)
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(folder):
            return (f"{folder} is a symbolic link to {os.readlink(folder)}, which does not "
                    "exist")
        return None
    except OSError as exc:
        return f"{folder} cannot be reached ({exc.strerror})"
    if stat.S_ISREG(info.st_mode):
        return f"{folder} is a file, not a folder"
    if not stat.S_ISDIR(info.st_mode):
        return f"{folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"ECCM cannot write in {folder} ({_why_not_writable(folder)})"
    return ""


def _why_not_writable(folder: Path) -> str:
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        pass
    try:
        import pwd
        user = pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError, AttributeError):
        user = str(os.getuid()) if hasattr(os, "getuid") else "this user"
    return f"not writable for user {user}"
