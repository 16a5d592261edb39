"""The controller dies or hangs while the gate is open (issue 6, "Crash" and "Hang").

`syncctl run` drives a fraction against the simulators (separate processes, real Modbus).
With the gate open, the controller is killed with SIGKILL, or frozen with SIGSTOP for longer
than the firmware watchdog. The beam-gate firmware must close the gate by itself within its
watchdog timeout, judged from the simulator's ground truth on the shared monotonic clock.
A restarted controller must come up in SAFE with the latched device fault visible, refuse a
new plan until the fault is acknowledged and reset, and the crashed run's recording must still
read (up to its last flush) and replay exactly. A frozen controller that resumes must not
carry on: it trips on the clock jump and the watchdog fault.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pymodbus.client import ModbusTcpClient

from syncctl.cli.simproc import SimProcess, start_simulators
from syncctl.config import load_room
from tests.lines import LineReader

ROOT = Path(__file__).resolve().parents[2]
ROOM = ROOT / "configs" / "room-sim.yaml"
GATE_READBACK = 2
"""Input register of the BGC's measured gate state (configs/registers/beam-gate.yaml)."""
WATCHDOG_S = load_room(ROOM).room.limits.device_watchdog_timeout_ms / 1000
MARGIN_S = 0.25
"""On top of the watchdog timeout: the simulator's 1 ms tick, its truth sampling (<= 10 ms),
and scheduling on a loaded 2-core CI machine. Generous on purpose: the figure itself is
measured and reported in docs/reliability.md, not asserted tightly here."""


@dataclass
class Controller:
    proc: subprocess.Popen[str]
    seen: list[str] = field(default_factory=list)
    reader: LineReader | None = None

    def send(self, *lines: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("".join(f"{line}\n" for line in lines))
        self.proc.stdin.flush()

    def wait_for(self, text: str, timeout_s: float = 15.0) -> str:
        return self.wait_for_any(text, timeout_s=timeout_s)

    def wait_for_any(self, *texts: str, timeout_s: float = 15.0) -> str:
        if self.reader is None:
            assert self.proc.stdout is not None
            self.reader = LineReader(self.proc.stdout.fileno())
        line = self.reader.wait_for(lambda text: any(t in text for t in texts), timeout_s)
        self.seen = self.reader.lines
        if line is None:
            pytest.fail(f"{texts!r} not seen within {timeout_s} s; output:\n"
                        f"{''.join(self.seen)}")
        return line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@dataclass
class Room:
    sim: SimProcess
    config: Path
    truth: Path
    tmp: Path
    controllers: list[Controller] = field(default_factory=list)

    def start_controller(self, record: Path) -> Controller:
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncctl", "run", "--config", str(self.config),
             "--record", str(record)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, cwd=self.tmp, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        controller = Controller(proc)
        self.controllers.append(controller)
        return controller

    def gate_open(self) -> bool:
        bg = self.sim.ready["beam_gate"]
        client = ModbusTcpClient(bg["host"], port=int(bg["port"]), timeout=1)
        try:
            client.connect()
            response = client.read_input_registers(GATE_READBACK, count=1, device_id=1)
            return not response.isError() and response.registers[0] == 1
        finally:
            client.close()

    def gate_rows(self) -> list[dict[str, object]]:
        rows = []
        for line in (self.truth / "beam-gate.jsonl").read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("type") == "state":
                rows.append(row)
        return rows

    def closed_after(self, t_event: float, timeout_s: float = 5.0) -> float:
        """Seconds from ``t_event`` to the first truth row with the gate closed (the truth is
        flushed every 0.25 s, so wait for it with a deadline)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = self.gate_rows()
            if not rows or float(rows[-1]["t"]) <= t_event:  # type: ignore[arg-type]
                time.sleep(0.1)  # not flushed that far yet
                continue
            before = [r for r in rows if float(r["t"]) <= t_event]  # type: ignore[arg-type]
            assert before and before[-1]["gate_open"], "the gate was not open at the event"
            for r in rows:
                if float(r["t"]) > t_event and not r["gate_open"]:  # type: ignore[arg-type]
                    return float(r["t"]) - t_event  # type: ignore[arg-type]
            time.sleep(0.1)
        pytest.fail("the gate did not close")


@pytest.fixture
def room(tmp_path: Path) -> Iterator[Room]:
    truth = tmp_path / "truth"
    with (tmp_path / "sim.log").open("w") as log:
        sim = start_simulators(ROOM, [
            "--beam-gate-port", "0", "--imaging-link", str(tmp_path / "xic"),
            "--backdoor-port", "0", "--truth", str(truth)], stderr=log)
    try:
        text = ROOM.read_text()
        text = text.replace("port: 15020", f"port: {sim.ready['beam_gate']['port']}")
        text = text.replace("/tmp/syncctl-sim-1-xic", sim.ready["imaging"]["port"])
        text = text.replace("registers/", str(ROOT / "configs" / "registers") + "/")
        config = tmp_path / "room.yaml"
        config.write_text(text)
        r = Room(sim, config, truth, tmp_path)
        yield r
    finally:
        for c in r.controllers:
            c.stop()
        assert sim.stop() == 0


def treat_until_gate_open(room: Room, controller: Controller) -> None:
    controller.wait_for("OFFLINE -> SAFE")
    controller.send("select lung-01", "imaging on")
    controller.wait_for("SAFE -> SETUP")
    for _ in range(40):  # arm as soon as the core allows it (imaging up, target confirmed)
        controller.send("arm")
        if "SETUP -> READY" in controller.wait_for_any("SETUP -> READY", "arm refused"):
            break
        time.sleep(0.25)
    else:
        pytest.fail("arm was refused for 10 s:\n" + "".join(controller.seen))
    controller.send("beam on")
    controller.wait_for("READY -> TREATING")
    # Treat for a while first, so that the recorder has flushed steps of TREATING (it
    # flushes every 0.5 s) before the crash.
    time.sleep(1.2)
    deadline = time.monotonic() + 15
    while not room.gate_open():
        assert time.monotonic() < deadline, "the gate never opened"
        time.sleep(0.005)


def test_sigkill_with_the_gate_open(room: Room) -> None:
    from syncctl.analysis.replay import replay
    from syncctl.recording import read_recording

    first = room.start_controller(room.tmp / "crashed.fraction.jsonl.gz")
    treat_until_gate_open(room, first)
    killed_at = time.monotonic()
    first.proc.kill()
    first.proc.wait(5)
    latency = room.closed_after(killed_at)
    print(f"gate closed by the firmware watchdog {latency * 1000:.0f} ms after SIGKILL "
          f"(watchdog {WATCHDOG_S * 1000:.0f} ms)")
    assert latency <= WATCHDOG_S + MARGIN_S

    # The crashed run's recording reads up to its last flush and replays exactly.
    crashed = read_recording(room.tmp / "crashed.fraction.jsonl.gz")
    assert not crashed.complete and crashed.steps
    assert any(s.out["mode"] == "TREATING" for s in crashed.steps)
    assert replay(crashed).identical

    # A restarted controller: SAFE, the latched watchdog fault visible, no new plan until the
    # fault is acknowledged and reset.
    second = room.start_controller(room.tmp / "restarted.fraction.jsonl.gz")
    second.wait_for("OFFLINE -> SAFE")
    second.send("status")
    alarms = second.wait_for("alarms ")
    assert "IL-008" in alarms or "IL-012" in alarms, alarms
    second.send("select lung-01")
    refused = second.wait_for("refused")
    assert "select_plan" in refused
    second.send("ack", "reset")
    for _ in range(20):  # the device resets take a few cycles; the operator tries again
        second.send("select lung-01")
        if "SAFE -> SETUP" in second.wait_for_any("SAFE -> SETUP", "select_plan refused"):
            break
        time.sleep(0.25)
    else:
        pytest.fail("select_plan still refused 5 s after ack and reset:\n"
                    + "".join(second.seen))


def test_a_frozen_controller_cannot_carry_on(room: Room) -> None:
    controller = room.start_controller(room.tmp / "frozen.fraction.jsonl.gz")
    treat_until_gate_open(room, controller)
    frozen_at = time.monotonic()
    controller.proc.send_signal(signal.SIGSTOP)
    try:
        latency = room.closed_after(frozen_at)
        print(f"gate closed by the firmware watchdog {latency * 1000:.0f} ms after SIGSTOP")
        assert latency <= WATCHDOG_S + MARGIN_S
        time.sleep(max(0.0, frozen_at + 1.0 - time.monotonic()))  # frozen for 1 s in all
    finally:
        controller.proc.send_signal(signal.SIGCONT)
    trip = controller.wait_for("TREATING -> FAULT")
    assert "IL-018" in trip or "IL-012" in trip or "IL-008" in trip, trip
    controller.send("beam on")
    controller.send("status")
    controller.wait_for("mode FAULT")
    assert not room.gate_open()
