"""Demo mode: the whole daemon against the built-in simulated car, no hardware needed.

The demo's records are a simulated car's, so they are kept apart from any real car's: the
car is always DEMO, the default folder is ./demo-records (not ./records, which is where a
config.ini beside it keeps the real car's records), and a folder that already holds
another car's records is refused.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Iterable, List

from eccm.config import Config, ConfigError, load
from eccm.sinks.layout import DEMO_CAR, OUTBOX, UPLOADED
from eccm.sinks.rows import PART_SUFFIX, parse_file_name

DEMO_FOLDER = "demo-records"
# The simulated car's battery ECU answers mode 22 as this profile describes.
DEMO_PROFILE = Path(__file__).resolve().parent.parent / "profiles" / "demo-ev.json"


def other_cars(folder: Path) -> List[str]:
    """Cars other than DEMO whose record files are in folder (or its outbox/uploaded)."""
    names: List[str] = []
    for sub in (folder, *(folder / name for name in (OUTBOX, UPLOADED))):
        if sub.is_dir():
            names += [p.name[:-len(PART_SUFFIX)] if p.name.endswith(PART_SUFFIX) else p.name
                      for p in sub.iterdir() if p.is_file()]
    cars = {parsed[0] for parsed in map(parse_file_name, names) if parsed is not None}
    return sorted(cars - {DEMO_CAR})


def _describe(cfg: Config, car_from_environment: str) -> Iterable[str]:
    folder = Path(cfg.RECORD_DIRECTORY_LOCATION)
    yield (f"Records of car {DEMO_CAR} are written to {folder} (finished files move to "
           f"{folder / OUTBOX})"
           + (f"; ECCM_CAR_IDENTIFIER={car_from_environment} is not used by the demo"
              if car_from_environment not in ("", DEMO_CAR) else ""))
    if cfg.OBD_PROFILE:
        yield (f"The car's engine, gearbox and battery ECU are polled; the battery's mode-22 "
               f"values as the profile {cfg.OBD_PROFILE} describes")
    if cfg.s3_enabled:
        prefix = cfg.S3_KEY_PREFIX.strip("/") if cfg.S3_KEY_PREFIX else ""
        yield (f"Finished files are uploaded to s3://{cfg.S3_SERVER_BUCKET}/"
               f"{prefix + '/' if prefix else ''}car={DEMO_CAR}/")


def run_demo(setup_logging: Callable[[str], None], upload: bool = False) -> int:
    """Runs in the main thread until Ctrl-C / SIGTERM."""
    from eccm.core.daemon import Daemon  # first: a Python without ECCM's dependencies stops here
    from eccm.sim.car import SimulatedAdapter
    from eccm.sim.gnss import SimulatedReceiver

    environ = dict(os.environ)
    car_from_environment = environ.get("ECCM_CAR_IDENTIFIER", "")
    environ["ECCM_CAR_IDENTIFIER"] = DEMO_CAR
    environ.setdefault("ECCM_RECORD_DIRECTORY_LOCATION", str(Path.cwd() / DEMO_FOLDER))
    environ["ECCM_GPS_POSITION_MONITORING"] = "yes"
    environ.setdefault("ECCM_OBD_PROFILE", str(DEMO_PROFILE))
    try:
        cfg, warnings = load(None, environ=environ, demo=True)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        for warning in exc.warnings:  # a misspelt key often explains the error
            print(f"config warning: {warning}", file=sys.stderr)
        return 2
    if cfg.s3_enabled and not upload:
        # S3 settings in the environment are most likely a real car's: a simulated drive
        # goes to the bucket only when asked for.
        cfg = cfg.replace(S3_SERVER_ENDPOINT=None)
        warnings.append("the demo does not upload (ECCM_S3_* are set): add --upload to "
                        f"send its drives to the bucket under car={DEMO_CAR}")
    folder = Path(cfg.RECORD_DIRECTORY_LOCATION)
    cars = other_cars(folder)
    if cars:
        print(f"demo: {folder} holds records of car {', '.join(cars[:3])}; the simulated "
              "car does not write into a real car's record folder. Set "
              "ECCM_RECORD_DIRECTORY_LOCATION to another folder (or leave it unset for "
              f"./{DEMO_FOLDER})", file=sys.stderr)
        return 2
    adapter = SimulatedAdapter().start()
    receiver = SimulatedReceiver(adapter.car.started).start()
    try:
        cfg = cfg.replace(OBD_INTERFACE=adapter.port, GNSS_PORT=receiver.port)
        setup_logging(cfg.LOG_LEVEL)
        print(f"ECCM demo: simulated car on {adapter.port}, simulated GNSS receiver on "
              f"{receiver.port}", flush=True)
        for line in _describe(cfg, car_from_environment):
            print(line, flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        for warning in warnings:
            print(f"config warning: {warning}", file=sys.stderr)
        return Daemon(cfg).run()
    finally:
        receiver.stop()
        adapter.stop()
