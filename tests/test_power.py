"""Power awareness: ignition off/on (real ELM327-emulator) and a low battery (simulated)."""
from __future__ import annotations

from eccm.sim.car import SimulatedAdapter, SimulatedCar

from conftest import outbox_files, part_files, read_records, wait_for, write_config


def test_ignition_off_closes_the_drive_and_on_resumes(tmp_path, emulator_factory,
                                                      daemon_factory):
    emu = emulator_factory()
    records = tmp_path / "records"
    daemon = daemon_factory(write_config(tmp_path, OBD_INTERFACE=emu.port,
                                         OBD_SESSION_TIMEOUT=2, RECONNECT_MAX_DELAY=2))
    wait_for(lambda: part_files(records), 40, what="the first drive's file")
    emu.command("engineoff")  # the ECUs stop answering
    wait_for(lambda: not part_files(records) and len(outbox_files(records)) == 1, 30,
             what="the drive's file to be closed and queued")
    wait_for(lambda: "ignition off" in daemon.log, 30, what="the reason in the log")
    wait_for(lambda: "the car does not" in daemon.log, 30,
             what="an attempt to reconnect with the engine off")
    assert not part_files(records), "no file while the engine is off"
    emu.command("scenario car")  # ignition on again
    wait_for(lambda: part_files(records), 60, what="a new drive's file")
    assert daemon.proc.poll() is None
    daemon.stop()
    files = outbox_files(records)
    assert len(files) == 2
    header = read_records(files[0])[0]
    assert "BATTERY_VOLTAGE (V)" in header
    volts = [r[header.index("BATTERY_VOLTAGE (V)")] for r in read_records(files[0])[1:]]
    assert any(v and 6 < float(v) < 20 for v in volts)


def test_low_battery_lets_the_ecus_sleep(tmp_path, daemon_factory):
    car = SimulatedCar()
    adapter = SimulatedAdapter(car, latency=0.002).start()
    probes = []  # at each voltage reading (ATRV) the adapter answers: OBD requests so far
    real_at = adapter.responder._at

    def at(command: str):
        if command == "RV":
            probes.append(adapter.responder.obd_requests)
        return real_at(command)
    adapter.responder._at = at
    try:
        records = tmp_path / "records"
        daemon = daemon_factory(write_config(tmp_path, OBD_INTERFACE=adapter.port,
                                             OBD_SESSION_TIMEOUT=2,
                                             OBD_SLEEP_BELOW_VOLTAGE=13.0))
        wait_for(lambda: part_files(records), 40, what="recording")
        car.battery = 12.4  # engine stopped: not charging
        wait_for(lambda: not part_files(records) and outbox_files(records), 30,
                 what="the file to be queued")
        wait_for(lambda: "letting the ECUs sleep" in daemon.log, 10, what="the reason")
        asleep = len(probes)
        wait_for(lambda: len(probes) > asleep, 10, what="the first voltage probe asleep")
        requests = adapter.responder.obd_requests
        woken = len(probes)
        car.battery = None  # engine started again: the next probe (10 s later) sees it
        wait_for(lambda: part_files(records), 60, what="recording again")
        # Up to that probe, the adapter alone was asked (its voltage), never the car.
        assert probes[woken] == requests, "the car's bus must stay quiet"
        assert daemon.proc.poll() is None
        daemon.stop()
    finally:
        adapter.stop()
    assert len(outbox_files(records)) == 2
