"""The asyncio controller against in-memory ports backed by the scripted room (no I/O)."""

from __future__ import annotations

import asyncio
import time

import pytest

from syncctl.controller import Controller, ControllerReport
from syncctl.core import (
    BeamGateReading,
    Command,
    CommandKind,
    GateCommand,
    ImagingReading,
    Mode,
    XrayCommand,
)
from syncctl.core.gating import inside_window
from syncctl.scripted import Breathing, ScriptedRoom
from tests.unit.harness import PARAMS, TARGET


class RoomPorts:
    """Both device ports over one scripted room, on the real monotonic clock."""

    def __init__(self) -> None:
        self.room = ScriptedRoom(Breathing(TARGET, seed=2), dose_rate_mu_per_s=10.0)
        self.t0 = time.monotonic()
        self.gate_writes: list[GateCommand] = []
        self.xray_writes: list[XrayCommand] = []
        self.fail_polls = False
        self.raise_in_poll = False
        self.beam_gate = _BeamGate(self)
        self.imaging = _Imaging(self)

    def advance(self) -> float:
        now = time.monotonic()
        t = now - self.t0
        self.room.advance(t, inside_window(self.room.truth, TARGET, PARAMS.window, 0.0))
        return now


class _BeamGate:
    def __init__(self, ports: RoomPorts) -> None:
        self.p = ports
        self._reading = BeamGateReading(None, None, False)

    @property
    def reading(self) -> BeamGateReading:
        return self._reading

    async def poll(self) -> BeamGateReading:
        if self.p.raise_in_poll:
            raise RuntimeError("a bug in the client")
        now = self.p.advance()
        if self.p.fail_polls:
            self._reading = BeamGateReading(self._reading.status, self._reading.read_at, False)
        else:
            snap = self.p.room.snapshot(now - self.p.t0)
            self._reading = BeamGateReading(snap.beam_gate.status, now, True)
        return self._reading

    async def write_gate(self, command: GateCommand) -> bool:
        self.p.gate_writes.append(command)
        room = self.p.room
        if command is not room._gate_cmd:
            room._gate_cmd = command
            room._gate_cmd_at = time.monotonic() - self.p.t0
        return True

    async def write_heartbeat(self, value: int) -> bool:
        self.p.room.heartbeat = value
        return True

    async def load_dose_preset(self, preset_mu: float) -> bool:
        self.p.room.dose_preset_mu = preset_mu
        return True

    async def reset_faults(self) -> bool:
        return True

    async def close(self) -> None:
        return None


class _Imaging:
    def __init__(self, ports: RoomPorts) -> None:
        self.p = ports
        self._reading = ImagingReading(None, None, False)

    @property
    def reading(self) -> ImagingReading:
        return self._reading

    async def poll(self) -> ImagingReading:
        now = self.p.advance()
        snap = self.p.room.snapshot(now - self.p.t0)
        self._reading = ImagingReading(snap.imaging.status, now, True)
        return self._reading

    async def write_xray(self, command: XrayCommand) -> bool:
        self.p.xray_writes.append(command)
        self.p.room.exposing = command is XrayCommand.EXPOSE
        return True

    async def write_heartbeat(self, value: int) -> bool:
        return True

    async def reset_faults(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def make(ports: RoomPorts) -> Controller:
    return Controller(PARAMS, ports.beam_gate, ports.imaging, period_s=0.001,
                      imaging_period_s=0.004)


async def drive(controller: Controller, stop: asyncio.Event, script: list[Command],
                until: Mode, timeout_s: float) -> list[ControllerReport]:
    reports: list[ControllerReport] = []

    def listen(report: ControllerReport) -> None:
        reports.append(report)
        result = report.outputs.command_result
        if result is not None and script and result.command is script[0] and result.accepted:
            script.pop(0)
        # In SAFE, (re)send the next command every 50 cycles until it is accepted, as an
        # operator would: on a loaded machine a passing condition may refuse the first try.
        if report.state.mode is Mode.SAFE and script and len(reports) % 50 == 1:
            controller.submit(script[0])
        if report.state.mode is until:
            stop.set()

    controller.listeners.append(listen)
    run = asyncio.create_task(controller.run(stop))
    try:
        await asyncio.wait_for(asyncio.shield(run), timeout_s)
    except TimeoutError:
        stop.set()
        await run
        raise
    return reports


@pytest.mark.asyncio
async def test_controller_runs_a_fraction_and_ends_safe() -> None:
    ports = RoomPorts()
    controller = make(ports)
    stop = asyncio.Event()
    script = [Command(CommandKind.SELECT_PLAN, "t", "lung-01")]
    reports: list[ControllerReport] = []

    def operator(report: ControllerReport) -> None:
        mode = report.state.mode
        if mode is Mode.SETUP and not report.state.imaging_requested:
            controller.submit(Command(CommandKind.START_IMAGING, "t"))
        elif mode is Mode.SETUP and report.outputs.xray is XrayCommand.EXPOSE:
            controller.submit(Command(CommandKind.ARM, "t"))
        elif mode is Mode.READY:
            controller.submit(Command(CommandKind.BEAM_ON, "t"))

    controller.listeners.append(operator)
    controller.listeners.append(reports.append)
    reports = await drive(controller, stop, script, Mode.COMPLETE, timeout_s=20)
    assert reports[-1].state.mode is Mode.COMPLETE
    assert GateCommand.OPEN in ports.gate_writes
    # Writes happen on change only, not every cycle.
    assert len(ports.gate_writes) < controller.stats.cycles / 5
    assert ports.gate_writes[-1] is GateCommand.CLOSE
    assert ports.xray_writes[-1] is XrayCommand.STOP
    assert controller.stats.imaging_polls > 10
    assert PARAMS.plans[0].planned_dose_mu - 0.011 <= ports.room.dose_mu


@pytest.mark.asyncio
async def test_lost_beam_gate_is_data_not_an_exception() -> None:
    ports = RoomPorts()
    controller = make(ports)
    stop = asyncio.Event()
    seen: list[ControllerReport] = []

    def listen(report: ControllerReport) -> None:
        seen.append(report)
        if report.state.mode is Mode.SAFE:
            ports.fail_polls = True
        if len(seen) > 50 and "IL-001" in report.outputs.beam_permit.denied_by:
            stop.set()

    controller.listeners.append(listen)
    safe = await asyncio.wait_for(controller.run(stop), 10)
    assert any("IL-001" in r.outputs.beam_permit.denied_by for r in seen)
    assert not safe  # the beam gate cannot confirm: the run says so


@pytest.mark.asyncio
async def test_an_exception_still_ends_with_the_safe_commands() -> None:
    ports = RoomPorts()
    controller = make(ports)
    stop = asyncio.Event()
    controller.listeners.append(
        lambda r: setattr(ports, "raise_in_poll", r.state.mode is Mode.SAFE)
    )
    with pytest.raises(RuntimeError, match="a bug in the client"):
        await asyncio.wait_for(controller.run(stop), 10)
    assert ports.gate_writes[-1] is GateCommand.CLOSE
    assert ports.xray_writes[-1] is XrayCommand.STOP


@pytest.mark.asyncio
async def test_no_task_is_left_behind() -> None:
    ports = RoomPorts()
    controller = make(ports)
    stop = asyncio.Event()
    controller.listeners.append(lambda r: stop.set() if controller.stats.cycles > 20 else None)
    await asyncio.wait_for(controller.run(stop), 10)
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert others == []


@pytest.mark.asyncio
async def test_a_clock_that_jumps_back_does_not_stall_the_cycle() -> None:
    """The cycle is scheduled on the controller's clock: a backward jump of that clock must
    not make it wait out the jump (the core trips on the jump; the cycle goes on)."""
    offset = [0.0]

    def clock() -> float:
        return time.monotonic() + offset[0]

    ports = RoomPorts()
    controller = Controller(PARAMS, ports.beam_gate, ports.imaging, period_s=0.001,
                            imaging_period_s=0.004, clock=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(controller.run(stop))
    try:
        for _ in range(200):
            if controller.stats.cycles >= 20:
                break
            await asyncio.sleep(0.005)
        offset[0] = -5.0  # five seconds back
        before = controller.stats.cycles
        await asyncio.sleep(0.3)
        assert controller.stats.cycles > before + 10, "the cycle stalled on the jump"
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
