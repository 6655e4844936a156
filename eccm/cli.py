"""Command line: subcommands, logging set-up, exit codes (0 ok, 1 failure, 2 config/usage)."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

from eccm import __version__
from eccm.config import Config, ConfigError, load
from eccm.core.text import plural

log = logging.getLogger("eccm")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2

# Third-party modules ECCM imports (lazily, where they are used) -> the package providing
# them. A Python without them gets one line saying what to run instead of a traceback.
REQUIRED_MODULES = {"obd": "obd", "serial": "pyserial", "pynmea2": "pynmea2",
                    "boto3": "boto3", "botocore": "boto3", "dotenv": "python-dotenv"}
VIEW_MODULES = {"matplotlib": "matplotlib", "gpxpy": "gpxpy"}  # the [view] extra
FLEET_MODULES = {"duckdb": "duckdb"}  # the [fleet] extra


def setup_logging(level: str) -> None:
    """Log to stderr; no timestamps under systemd, where journald adds its own."""
    under_journald = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = "%(levelname)s %(name)s: %(message)s" if under_journald else \
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level, logging.INFO))
    # pint (under python-OBD) warns about its own unit table at import; not ours to fix.
    logging.getLogger("pint").setLevel(logging.ERROR)


def _load_or_report(path: Optional[Path], environ=None, require_file: bool = True
                    ) -> Optional[Config]:
    try:
        cfg, warnings = load(path, environ=environ, require_file=require_file)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        for warning in exc.warnings:  # a misspelt key often explains the error
            print(f"config warning: {warning}", file=sys.stderr)
        return None
    for warning in warnings:
        print(f"config warning: {warning}", file=sys.stderr)
    return cfg


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load_or_report(Path(args.config))
    if cfg is None:
        return EXIT_CONFIG
    print(f"Configuration from {args.config} is valid. Effective values:")
    rows = cfg.describe()
    width = max(len(key) for key, _, _ in rows)
    for key, shown, source in rows:
        print(f"  {key:<{width}} = {shown}   [{source}]")
    if cfg.S3_SERVER_ENDPOINT:
        from eccm.sinks.upload import scheme_note
        print(scheme_note(cfg.S3_SERVER_ENDPOINT))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    if args.demo:
        if args.config:
            # The demo's records are a simulated car's: with a real car's configuration
            # they would join its record folder and its uploads.
            print("run: --demo does not take --config: the simulated car must not write "
                  "into a real car's record folder or upload to its bucket. Run "
                  "`eccm run --demo` alone (ECCM_* variables still change its settings), "
                  "or `eccm run --config FILE` for the car", file=sys.stderr)
            return EXIT_CONFIG
        from eccm.sim.demo import run_demo
        return run_demo(setup_logging, upload=args.upload)
    if args.upload:
        print("run: --upload goes with --demo (a real car uploads whenever S3 is "
              "configured)", file=sys.stderr)
        return EXIT_CONFIG
    cfg = _load_or_report(Path(args.config or "config.ini"))
    if cfg is None:
        return EXIT_CONFIG
    setup_logging(cfg.LOG_LEVEL)
    from eccm.core.daemon import Daemon
    return Daemon(cfg).run()


def cmd_gnss_parse(args: argparse.Namespace) -> int:
    """Feed a raw receiver capture through the live parser; one JSON object per fix."""
    import json

    from eccm.sources.gnss.nmea import NmeaParser
    parser = NmeaParser()
    out = sys.stdout
    with open(args.file, "rb") as fh:
        while True:
            chunk = fh.read(65536)
            fixes = parser.feed(chunk) if chunk else parser.finish()
            for fix in fixes:
                out.write(json.dumps(fix.as_dict()) + "\n")
            if not chunk:
                break
    c = parser.counters
    print(f"{plural(c.fixes, 'fix', 'fixes')} from {plural(c.sentences, 'sentence')}; "
          f"skipped: {plural(c.bad_checksum, 'bad checksum')}, {c.torn} torn or binary, "
          f"{c.unparsed} unreadable, {plural(c.garbage_bytes, 'stray byte')}, "
          f"{c.out_of_range} out of range, {c.late} late, {c.stale} stale",
          file=sys.stderr)
    return EXIT_OK


def cmd_upload(args: argparse.Namespace) -> int:
    """Push the backlog now, with progress; 0 only if the outbox is empty afterwards."""
    import time

    cfg = _load_or_report(Path(args.config))
    if cfg is None:
        return EXIT_CONFIG
    if not cfg.s3_enabled:
        print("config error: S3 upload is not configured: set S3_SERVER_ENDPOINT, "
              "S3_SERVER_AK, S3_SERVER_SK and S3_SERVER_BUCKET", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging("WARNING")
    # boto3 is imported only when a file goes up: a Python without it is told what to run
    # before anything is counted or tidied.
    importlib.import_module("boto3")
    from eccm.sinks.layout import UPLOADED
    from eccm.sinks.records import tidy_orphan_manifests
    from eccm.sinks.upload import (FileHeld, S3Store, UploadError, pending_files,
                                   unmanifested_files)
    store = S3Store.from_config(cfg)
    tidy_orphan_manifests(store.outbox, store.outbox.parent / UPLOADED)
    files = pending_files(store.outbox)
    bare = unmanifested_files(store.outbox)
    if bare:
        print(f"{plural(len(bare), 'file')} in {store.outbox} without a manifest, not "
              "uploaded (records of an older ECCM or an unclean stop get one when the "
              "daemon starts; anything else is not a record)", file=sys.stderr)
    total = sum(p.stat().st_size for p in files)
    print(f"{plural(len(files), 'file')}, {total / 1e6:.1f} MB to upload to "
          f"s3://{cfg.S3_SERVER_BUCKET}/{cfg.S3_KEY_PREFIX}")
    started, done_bytes, held = time.monotonic(), 0, 0
    for number, path in enumerate(files, 1):
        size = path.stat().st_size
        shown = None
        key = None
        for attempt in range(3):
            try:
                key = store.upload(path)
                break
            except FileHeld as exc:
                print(f"  {exc}", file=sys.stderr)
                held += 1
                break
            except UploadError as exc:
                if str(exc) != shown:  # the same cause once, not once per attempt
                    print(f"  {path.name}: {exc}", file=sys.stderr)
                    shown = str(exc)
                if exc.permanent or attempt == 2:
                    kept = len(pending_files(store.outbox))
                    print(f"stopped after {plural(attempt + 1, 'attempt')}; "
                          f"{plural(kept, 'file')} kept in {store.outbox}", file=sys.stderr)
                    return EXIT_FAILURE
                time.sleep(2 ** attempt)
        if key is None:
            continue
        done_bytes += size
        rate = done_bytes / max(1e-6, time.monotonic() - started) / 1e6
        print(f"[{number}/{len(files)}] {path.name} {size / 1e6:.1f} MB -> {key} "
              f"({done_bytes / 1e6:.1f}/{total / 1e6:.1f} MB, {rate:.1f} MB/s)", flush=True)
    left = pending_files(store.outbox)
    print(f"done: {len(files) - len(left)} uploaded, {len(left)} left"
          + (f" ({held} held back, see above)" if held else ""))
    return EXIT_OK if not left else EXIT_FAILURE


def cmd_install_service(args: argparse.Namespace) -> int:
    """Render the systemd unit of this installation; print it, or install it (root)."""
    cfg = _load_or_report(Path(args.config))
    if cfg is None:
        return EXIT_CONFIG
    from eccm.tools.service import detect, install, render_unit
    installation = detect(Path(args.config), cfg.RECORD_DIRECTORY_LOCATION)
    if not os.access(installation.executable, os.X_OK):
        # A Python outside ECCM's venv: the unit would start a program that is not there.
        print(f"install-service: no eccm program at {installation.executable}; run this "
              "command as .venv/bin/eccm install-service from the ECCM folder",
              file=sys.stderr)
        return EXIT_CONFIG
    unit = render_unit(installation)
    if args.print:
        sys.stdout.write(unit)
        return EXIT_OK
    if os.geteuid() != 0:
        print("install-service: run it as root (sudo), or use --print to see the unit",
              file=sys.stderr)
        return EXIT_FAILURE
    Path(cfg.RECORD_DIRECTORY_LOCATION).mkdir(parents=True, exist_ok=True)
    import subprocess
    try:
        for step in install(unit):
            print(step)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"install-service: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print("ECCM runs as a service now: journalctl -u eccm -f")
    return EXIT_OK


def cmd_udev_rules(args: argparse.Namespace) -> int:
    """List USB serial devices; print (or install) udev rules giving them stable names."""
    from eccm.tools.udev import RULES_PATH, parse_names, render_rules, scan, suggest_names
    try:
        chosen = parse_names(args.name)
    except ValueError as exc:
        print(f"udev-rules: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    devices = scan()
    if not devices:
        print("udev-rules: no USB serial device found (plug the adapter and the receiver in)",
              file=sys.stderr)
        return EXIT_FAILURE
    names = {**suggest_names(devices), **chosen}
    for dev in devices:
        print(f"# found /dev/{dev.tty}: {dev.label} (vendor {dev.vendor}, product "
              f"{dev.product}, serial {dev.serial or '-'}, USB port {dev.port})",
              file=sys.stderr)
    rules = render_rules(devices, names)
    if not args.install:
        sys.stdout.write(rules)
        return EXIT_OK
    if os.geteuid() != 0:
        print("udev-rules: --install needs root (sudo)", file=sys.stderr)
        return EXIT_FAILURE
    import subprocess
    RULES_PATH.write_text(rules)
    try:
        subprocess.run(["udevadm", "control", "--reload-rules"], check=True, timeout=30)
        subprocess.run(["udevadm", "trigger"], check=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"udev-rules: wrote {RULES_PATH} but could not reload udev: {exc}",
              file=sys.stderr)
        return EXIT_FAILURE
    print(f"wrote {RULES_PATH}; the names appear at the next plug-in")
    return EXIT_OK


def cmd_summary(args: argparse.Namespace) -> int:
    """Per record file: times, distances, speeds, idle, RPM/coolant max, fuel, codes."""
    import json

    from eccm.tools.trip import TripError, format_summary, load, summarize
    summaries, failed = [], False
    for path in args.files:
        try:
            summaries.append(summarize(load(Path(path))))
        except TripError as exc:
            print(f"summary: {exc}", file=sys.stderr)
            failed = True
    if args.json:
        print(json.dumps(summaries, indent=1))
    else:
        print("\n\n".join(format_summary(s) for s in summaries))
    return EXIT_CONFIG if failed else EXIT_OK


def beside_input(source: Path, extension: str) -> Path:
    """Where an export or plot of `source` goes without -o: next to it, unless it lies in
    ECCM's outbox/ or uploaded/ folders, which hold records only (the current folder then)."""
    from eccm.sinks.layout import OUTBOX, UPLOADED
    name = source.with_suffix("." + extension).name
    if source.resolve().parent.name in (OUTBOX, UPLOADED):
        if Path.cwd().resolve().name in (OUTBOX, UPLOADED):
            raise ValueError(f"{source.parent} holds ECCM's records only, and so does the "
                             "current folder: run this from another folder, or give -o")
        out = Path.cwd() / name
        print(f"{source.parent} holds ECCM's records only: writing to {out}",
              file=sys.stderr)
        return out
    return source.with_suffix("." + extension)


def cmd_export(args: argparse.Namespace) -> int:
    from eccm.tools.trip import EXPORTERS, TripError, load
    try:
        text = EXPORTERS[args.format](load(Path(args.file)))
    except TripError as exc:
        print(f"export: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        out = Path(args.output) if args.output else beside_input(Path(args.file), args.format)
    except ValueError as exc:
        print(f"export: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    return EXIT_OK


def cmd_plot(args: argparse.Namespace) -> int:
    from eccm.tools.trip import TripError, load
    try:
        trip = load(Path(args.file))
    except TripError as exc:
        print(f"plot: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    from eccm.tools.plot import plot  # matplotlib itself is imported by plot(): see main()
    try:
        out = Path(args.output) if args.output else beside_input(Path(args.file), "png")
    except ValueError as exc:
        print(f"plot: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    plot(trip, out)
    print(f"wrote {out}")
    return EXIT_OK


def cmd_profile_check(args: argparse.Namespace) -> int:
    """Load vehicle profiles (OBDb signal sets) as the daemon would: a summary of each, or
    the first problem as one line naming the file and the field."""
    from eccm.sources.obd.profile import ProfileError, check_names, load
    try:
        profiles = load(*args.files)  # together: a signal id is one column across files
        try:
            from eccm.config import reserved_value_names
            reserved = reserved_value_names()
        except ImportError:  # a laptop without python-OBD: the daemon checks at start
            reserved = []
        check_names(profiles, reserved)
    except ProfileError as exc:
        print(f"eccm: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    def can_id(value: int) -> str:
        return f"{value:03X}" if value <= 0x7FF else f"{value:08X}"

    for profile in profiles:
        ecus: dict = {}
        for command in profile.commands:
            ecus.setdefault((command.header, command.receive), []).append(command)
        print(f"{profile.path}: {plural(len(profile.commands), 'command')}, "
              f"{plural(len(profile.signals), 'signal')}, {plural(len(ecus), 'ECU')}")
        for (header, receive), commands in ecus.items():
            periods = sorted({c.period for c in commands})
            every = f"{periods[0]:g} s" if len(periods) == 1 else \
                f"{periods[0]:g}..{periods[-1]:g} s"
            print(f"  {can_id(header)} -> {can_id(receive)}: "
                  f"{plural(len(commands), 'request')} every {every}, "
                  f"{plural(sum(len(c.signals) for c in commands), 'signal')}")
            if args.verbose:
                for command in commands:
                    shown = ", ".join(f"{s.id} ({s.unit})" if s.unit else s.id
                                      for s in command.signals)
                    print(f"    {command.request} every {command.period:g} s: {shown}")
        for line in profile.skipped:
            print(f"  {line}")
        if not profile.commands:
            print(f"eccm: warning: {profile.path} has no request ECCM can send: nothing of "
                  "it would be recorded", file=sys.stderr)
    return EXIT_OK


def _fleet_config(args: argparse.Namespace) -> Optional[Config]:
    """The bucket, from --config (or ./config.ini when there is one) and ECCM_* variables.
    A fleet machine has no car of its own: CAR_IDENTIFIER, which only a car uses, need
    not be set there."""
    environ = dict(os.environ)
    environ.setdefault("ECCM_CAR_IDENTIFIER", "FLEET")
    cfg = _load_or_report(Path(args.config or "config.ini"), environ=environ,
                          require_file=args.config is not None)
    if cfg is None:
        return None
    if not cfg.s3_enabled:
        print("config error: no bucket: set S3_SERVER_ENDPOINT, S3_SERVER_AK, S3_SERVER_SK "
              "and S3_SERVER_BUCKET (in --config or as ECCM_* variables)", file=sys.stderr)
        return None
    return cfg


def cmd_fleet_compact(args: argparse.Namespace) -> int:
    """Records not in the Parquet lake yet -> Parquet; 0 only if none was refused or
    missing. --forget KEY first tells compact to stop taking a record."""
    cfg = _fleet_config(args)
    if cfg is None:
        return EXIT_CONFIG
    importlib.import_module("duckdb")  # a missing extra is said before the bucket is read
    from eccm.sinks.upload import S3Settings
    from eccm.tools.fleet import BadKey, FleetError, compact, forget
    settings = S3Settings.from_config(cfg)

    def say(line: str) -> None:
        print(line, flush=True)
    try:
        if args.forget:
            try:
                problems = forget(settings, args.forget, say=say)
            except BadKey as exc:
                print(f"eccm fleet compact --forget: {exc}", file=sys.stderr)
                return EXIT_CONFIG
            if problems:
                for problem in problems:
                    print(f"eccm fleet compact --forget: {problem}", file=sys.stderr)
                return EXIT_FAILURE
        report = compact(settings, since=args.since or "", scan=args.scan, say=say)
    except FleetError as exc:
        print(f"eccm fleet compact: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    for problem in report.refused:
        print(f"  not compacted: {problem}", file=sys.stderr)
    for problem in report.missing:
        print(f"  missing: {problem}", file=sys.stderr)
    return EXIT_FAILURE if report.refused or report.missing else EXIT_OK


def cmd_fleet_query(args: argparse.Namespace) -> int:
    cfg = _fleet_config(args)
    if cfg is None:
        return EXIT_CONFIG
    importlib.import_module("duckdb")
    from eccm.sinks.upload import S3Settings
    from eccm.tools.fleet import FleetError, query, render
    try:
        columns, rows = query(S3Settings.from_config(cfg), args.sql)
    except FleetError as exc:
        print(f"eccm fleet query: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    sys.stdout.write(render(columns, rows, args.format))
    return EXIT_OK


def cmd_fleet_ddl(args: argparse.Namespace) -> int:
    from eccm.tools.lake import TABLE_NAME
    if not TABLE_NAME.fullmatch(args.table):
        print(f"eccm fleet ddl: --table {args.table!r}: expected a name such as fleet or "
              "db.fleet (letters, digits, '_')", file=sys.stderr)
        return EXIT_CONFIG
    cfg = _fleet_config(args)
    if cfg is None:
        return EXIT_CONFIG
    from eccm.sinks.upload import S3Settings
    from eccm.tools.fleet import FleetError, table_ddl
    try:
        sys.stdout.write(table_ddl(S3Settings.from_config(cfg), args.engine, args.table,
                                   args.location or ""))
    except FleetError as exc:
        print(f"eccm fleet ddl: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _day(text: str) -> str:
    from datetime import date
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day (YYYY-MM-DD)") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eccm", description="ECCM: Electronic Centralized Car Monitoring daemon")
    parser.add_argument("--version", action="version", version=f"eccm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", metavar="PATH", default=None,
                     help="configuration file (default: ./config.ini)")
    run.add_argument("--demo", action="store_true",
                     help="run against ECCM's built-in simulated car (no hardware needed; "
                          "car DEMO, records in ./demo-records; not with --config)")
    run.add_argument("--upload", action="store_true",
                     help="with --demo: upload the demo's drives too, under car=DEMO, when "
                          "ECCM_S3_* variables configure S3 (off by default)")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate the configuration and print it")
    check.add_argument("--config", metavar="PATH", default="config.ini")
    check.set_defaults(func=cmd_check_config)

    upload = sub.add_parser("upload", help="upload the finished record files now")
    upload.add_argument("--config", metavar="PATH", default="config.ini")
    upload.set_defaults(func=cmd_upload)

    service = sub.add_parser("install-service",
                             help="install (or --print) the systemd unit of this installation")
    service.add_argument("--config", metavar="PATH", default="config.ini")
    service.add_argument("--print", action="store_true", help="print the unit only")
    service.set_defaults(func=cmd_install_service)

    udev = sub.add_parser("udev-rules", help="stable /dev names for the USB adapters")
    udev.add_argument("--name", action="append", metavar="TTY=NAME",
                      help="name a device yourself, e.g. --name ttyUSB1=gnss (repeatable)")
    udev.add_argument("--install", action="store_true",
                      help="write /etc/udev/rules.d/99-eccm.rules and reload udev (root)")
    udev.set_defaults(func=cmd_udev_rules)

    summary = sub.add_parser("summary", help="trip summary of record files")
    summary.add_argument("files", metavar="FILE", nargs="+")
    summary.add_argument("--json", action="store_true", help="JSON for machines")
    summary.set_defaults(func=cmd_summary)

    export = sub.add_parser("export", help="the track as GPX, GeoJSON or KML")
    export.add_argument("file", metavar="FILE")
    export.add_argument("--format", choices=("gpx", "geojson", "kml"), required=True)
    export.add_argument("-o", "--output", metavar="OUT")
    export.set_defaults(func=cmd_export)

    plot = sub.add_parser("plot", help="a PNG of the drive")
    plot.add_argument("file", metavar="FILE")
    plot.add_argument("-o", "--output", metavar="OUT", help="default: FILE with .png")
    plot.set_defaults(func=cmd_plot)

    gnss = sub.add_parser("gnss-parse", help="print the fixes in a raw GNSS capture as JSON")
    gnss.add_argument("file", metavar="FILE", help="raw NMEA capture (any bytes)")
    gnss.set_defaults(func=cmd_gnss_parse)

    profile = sub.add_parser("profile", help="vehicle profiles (OBDb signal sets)")
    profile_sub = profile.add_subparsers(dest="action", metavar="ACTION")
    profile_sub.required = True
    profile_check = profile_sub.add_parser(
        "check", help="load profile files or folders and summarize them")
    profile_check.add_argument("files", metavar="FILE", nargs="+",
                               help="a signal-set .json file, or a folder of them")
    profile_check.add_argument("-v", "--verbose", action="store_true",
                               help="list every request with its signals")
    profile_check.set_defaults(func=cmd_profile_check)

    fleet = sub.add_parser("fleet", help="the fleet's records in the bucket: Parquet, SQL, "
                                         "table definitions (needs the [fleet] extra)")
    fleet_sub = fleet.add_subparsers(dest="action", metavar="ACTION")
    fleet_sub.required = True
    config_help = ("configuration with the S3 keys (default: ./config.ini if there is one; "
                   "ECCM_S3_* variables work too)")
    compact = fleet_sub.add_parser("compact", help="convert new records into the Parquet lake")
    compact.add_argument("--config", metavar="PATH", help=config_help)
    compact.add_argument("--since", metavar="DAY", type=_day,
                         help="only records that started on this UTC day (YYYY-MM-DD) or "
                              "later (a run without it is cheap too: done records are "
                              "skipped)")
    compact.add_argument("--scan", action="store_true",
                         help="also list the records' tree, for records uploaded by an ECCM "
                              "older than the index")
    compact.add_argument("--forget", metavar="KEY", action="append", default=[],
                         help="stop taking this record (a key the run said is missing or "
                              "refused; again for each record), then compact")
    compact.set_defaults(func=cmd_fleet_compact)
    fleet_query = fleet_sub.add_parser(
        "query", help="SQL over the whole fleet: views fleet (Parquet), fleet_csv (the "
                      "records), drives (the index)")
    fleet_query.add_argument("sql", metavar="SQL")
    fleet_query.add_argument("--config", metavar="PATH", help=config_help)
    fleet_query.add_argument("--format", choices=("table", "csv", "json"), default="table")
    fleet_query.set_defaults(func=cmd_fleet_query)
    fleet_ddl = fleet_sub.add_parser("ddl", help="print the lake's table definition for an "
                                                 "engine, partitions projected")
    fleet_ddl.add_argument("--engine", choices=("athena", "trino", "spark"), required=True)
    fleet_ddl.add_argument("--table", default="fleet", help="table name (default: fleet)")
    fleet_ddl.add_argument("--location", metavar="URL",
                           help="where the engine reads the lake (default: s3://BUCKET/"
                                "PREFIX-parquet/, s3a:// for Spark)")
    fleet_ddl.add_argument("--config", metavar="PATH", help=config_help)
    fleet_ddl.set_defaults(func=cmd_fleet_ddl)
    return parser


def missing_module_message(exc: ModuleNotFoundError, command: str) -> Optional[str]:
    """One line saying what to install or run when a dependency is missing; None when the
    module is not one of ECCM's dependencies (a bug: the traceback is wanted then)."""
    module = (exc.name or "").split(".")[0]
    if module in FLEET_MODULES:
        return (f"eccm {command}: needs {FLEET_MODULES[module]}, from ECCM's [fleet] extra: "
                "in the ECCM folder, .venv/bin/pip install -e '.[fleet]'")
    if module in VIEW_MODULES:
        return (f"eccm {command}: needs {VIEW_MODULES[module]}, from ECCM's [view] extra: "
                "in the ECCM folder, .venv/bin/pip install -e '.[view]'")
    if module in REQUIRED_MODULES:
        return (f"eccm: {sys.executable} does not have ECCM's dependencies (no module "
                f"{module!r}, from {REQUIRED_MODULES[module]}): run ECCM with ./start.sh "
                "or .venv/bin/eccm from its folder, or install it with pip")
    return None


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ModuleNotFoundError as exc:
        message = missing_module_message(exc, args.command)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # `eccm gnss-parse FILE | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:
        print(f"eccm: {exc}", file=sys.stderr)
        return EXIT_FAILURE
