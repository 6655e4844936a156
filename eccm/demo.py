"""Demo mode: the whole daemon against the built-in simulated car, no hardware needed."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

from .config import ConfigError, load
from .simcar import SimulatedAdapter
from .simgnss import SimulatedReceiver


def run_demo(config_path: Optional[Path], setup_logging: Callable[[str], None]) -> int:
    """Runs in the main thread until Ctrl-C / SIGTERM."""
    adapter = SimulatedAdapter().start()
    receiver = SimulatedReceiver(adapter.car.started).start()
    try:
        environ = dict(os.environ)
        environ.setdefault("ECCM_CAR_IDENTIFIER", "DEMO")
        environ.setdefault("ECCM_RECORD_DIRECTORY_LOCATION", str(Path.cwd() / "records"))
        environ["ECCM_OBD_INTERFACE"] = adapter.port
        environ["ECCM_GPS_POSITION_MONITORING"] = "yes"
        environ["ECCM_GNSS_PORT"] = receiver.port
        try:
            cfg, warnings = load(config_path, environ=environ)
        except ConfigError as exc:
            for problem in exc.problems:
                print(f"config error: {problem}")
            return 2
        setup_logging(cfg.LOG_LEVEL)
        folder = Path(cfg.RECORD_DIRECTORY_LOCATION)
        print(f"ECCM demo: simulated car on {adapter.port}, simulated GNSS receiver on "
              f"{receiver.port}", flush=True)
        print(f"Records are written to {folder} (finished files move to {folder / 'outbox'})",
              flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        for warning in warnings:
            print(f"config warning: {warning}")
        from .daemon import Daemon
        return Daemon(cfg).run()
    finally:
        receiver.stop()
        adapter.stop()
