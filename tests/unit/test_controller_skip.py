"""The controller steps the core only when something changed, and at least every
``max_step_interval_s`` (docs/controller.md, *Stepping only on change*).

Most tests drive ``Controller.cycle()`` by hand on a fake clock, 1 ms per cycle, against
in-memory devices whose readings change only when the test says so; the test plays the
imaging task (an imaging poll every 4 ms). Two run the real loop briefly.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from syncctl.controller import Controller, ControllerReport, step_interval_s
from syncctl.core import (
    BeamGateReading,
    BeamGateStatus,
    Command,
    CommandKind,
    GateCommand,
    ImagingReading,
    ImagingStatus,
    Mode,
    Outputs,
    XrayCommand,
)
from tests.unit.harness import PARAMS, TARGET

INTERVAL = 0.005
FRAME_MS = 33


class FakeRoom:
    """Both devices, changing only when told. The gate's readback follows a successful write
    at once; frames come every 33 ms while exposing; echoes follow the heartbeats written."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.gate_ok = True
        self.gate_attempts: list[GateCommand] = []
        self.gate_open = False
        self.preset = 0.0
        self.estop = False
        self.bg_echo = 0
        self.xi_echo = 0
        self.echo_frozen = False
        self.bg_failing = False
        self.exposing = False
        self.frames = 0
        self.frame_ms = 0
        self.mas = 0.0
        self.beam_gate = FakeBeamGate(self)
        self.imaging = FakeImaging(self)

    def bg_status(self) -> BeamGateStatus:
        return BeamGateStatus(
            gate_open_readback=self.gate_open, ready=True, spill_active=True, chain_ok=True,
            door_closed=True, estop_released=not self.estop, watchdog_tripped=False,
            dose_delivered_mu=0.0, dose_preset_mu=self.preset, fault_code=0,
            heartbeat_echo=self.bg_echo)

    def xi_status(self, now_ms: int) -> ImagingStatus:
        if self.exposing and now_ms - self.frame_ms >= FRAME_MS:
            self.frames, self.frame_ms = self.frames + 1, now_ms
            self.mas += 0.05
        return ImagingStatus(
            prepared=self.exposing, exposing=self.exposing, frame_counter=self.frames,
            frame_timestamp_ms=self.frame_ms, device_clock_ms=now_ms, target=TARGET,
            tracking_confidence=0.95, cumulative_mas=round(self.mas, 2), fault_code=0,
            heartbeat_echo=self.xi_echo)


class FakeBeamGate:
    def __init__(self, room: FakeRoom) -> None:
        self.room = room
        self.reading = BeamGateReading(None, None, False)
        self.stats: dict[str, int] = {"sessions_verified": 1}

    async def poll(self) -> BeamGateReading:
        if self.room.bg_failing:
            self.reading = replace(self.reading, healthy=False)
        else:
            self.reading = BeamGateReading(self.room.bg_status(), self.room.clock(), True)
        return self.reading

    async def write_gate(self, command: GateCommand) -> bool:
        self.room.gate_attempts.append(command)
        if self.room.gate_ok:
            self.room.gate_open = command is GateCommand.OPEN
        return self.room.gate_ok

    async def write_heartbeat(self, value: int) -> bool:
        if not self.room.echo_frozen:
            self.room.bg_echo = value
        return True

    async def load_dose_preset(self, preset_mu: float) -> bool:
        self.room.preset = round(preset_mu, 2)
        return True

    async def reset_faults(self) -> bool:
        return True

    async def close(self) -> None:
        return None


class FakeImaging:
    def __init__(self, room: FakeRoom) -> None:
        self.room = room
        self.reading = ImagingReading(None, None, False)

    async def poll(self) -> ImagingReading:
        now = self.room.clock()
        status = self.room.xi_status(round(now * 1000))
        self.reading = ImagingReading(status, now, True)
        return self.reading

    async def write_xray(self, command: XrayCommand) -> bool:
        self.room.exposing = command is XrayCommand.EXPOSE
        return True

    async def write_heartbeat(self, value: int) -> bool:
        if not self.room.echo_frozen:
            self.room.xi_echo = value
        return True

    async def reset_faults(self) -> bool:
        return True

    async def close(self) -> None:
        return None


class Rig:
    """A controller on a fake clock; ``cycle()`` is one 1 ms cycle, the test plays the
    imaging task (X-ray command, heartbeat, poll every 4 ms)."""

    def __init__(self, interval: float = INTERVAL) -> None:
        self.k = 0
        self.t = 0.0
        self.room = FakeRoom(lambda: self.t)
        self.controller = Controller(PARAMS, self.room.beam_gate, self.room.imaging,
                                     period_s=0.001, imaging_period_s=0.004,
                                     clock=lambda: self.t, max_step_interval_s=interval)
        self.reports: list[ControllerReport] = []
        self.controller.listeners.append(self.reports.append)
        self.cycles = 0
        self.last: Outputs | None = None
        self._heartbeat: int | None = None

    @property
    def steps(self) -> int:
        return self.controller.stats.steps

    async def cycle(self) -> Outputs:
        self.k += 1
        self.t = self.k / 1000
        if self.k % 4 == 0:
            await self._imaging()
        out = await self.controller.cycle()
        self.cycles += 1
        if out.heartbeat is not None:
            self._heartbeat = out.heartbeat
        self.last = out
        return out

    async def _imaging(self) -> None:
        im = self.room.imaging
        if self.last is not None:
            await im.write_xray(self.last.xray)
        if self._heartbeat is not None:
            await im.write_heartbeat(self._heartbeat)
            self._heartbeat = None
        await im.poll()

    async def until(self, predicate: Callable[[], bool], max_cycles: int) -> None:
        for _ in range(max_cycles):
            if predicate():
                return
            await self.cycle()
        assert predicate(), f"not reached in {max_cycles} cycles (mode {self.mode})"

    @property
    def mode(self) -> Mode:
        return self.controller.state.mode

    async def command(self, kind: CommandKind, plan_id: str | None = None,
                      tries: int = 20) -> None:
        """Submit until accepted (an operator retrying), at most ``tries`` times 50 cycles
        apart."""
        reason = ""
        for _ in range(tries):
            self.controller.submit(Command(kind, "t", plan_id))
            out = await self.cycle()
            result = out.command_result
            assert result is not None, "a command is answered in the cycle after submit"
            if result.accepted:
                return
            reason = result.reason
            for _ in range(50):
                await self.cycle()
        raise AssertionError(f"{kind.value} never accepted: {reason}")

    async def to_safe(self) -> None:
        await self.until(lambda: self.mode is Mode.SAFE, 300)

    async def to_treating(self) -> None:
        await self.to_safe()
        await self.command(CommandKind.SELECT_PLAN, "lung-01")
        await self.command(CommandKind.START_IMAGING)
        await self.command(CommandKind.ARM)
        await self.command(CommandKind.BEAM_ON)
        await self.until(lambda: self.room.gate_open, 300)
        assert self.mode is Mode.TREATING

    async def settle_after_a_step(self, max_cycles: int = 50) -> None:
        """Run until a cycle in which the core stepped, so that the next one is not due for
        the interval."""
        before = self.steps
        await self.until(lambda: self.steps > before, max_cycles)


async def skipped_next(rig: Rig) -> bool:
    """Run one cycle; whether it was skipped."""
    before = rig.steps
    await rig.cycle()
    return rig.steps == before


# --- construction ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-0.001, 0.0501, math.nan, math.inf])
def test_the_interval_is_checked(bad: float) -> None:
    room = FakeRoom(time.monotonic)
    with pytest.raises(ValueError, match="max_step_interval_s"):
        Controller(PARAMS, room.beam_gate, room.imaging,
                   max_step_interval_s=bad)


def test_the_interval_of_a_room() -> None:
    assert step_interval_s(PARAMS) == pytest.approx(0.005)  # capped: 20 ms / 4 = 5 ms
    assert step_interval_s(replace(PARAMS, gate_actuation_timeout_s=0.008)) == pytest.approx(
        0.002)
    assert step_interval_s(replace(PARAMS, max_frame_age_s=0.012)) == pytest.approx(0.003)
    # Two steps further apart than max_time_step_s are a clock fault (IL-018).
    assert step_interval_s(replace(PARAMS, max_time_step_s=0.004)) == pytest.approx(0.001)
    long = replace(PARAMS, gate_actuation_timeout_s=1.0, heartbeat_period_s=1.0,
                   device_stale_s=1.0, xray_actuation_timeout_s=1.0, max_frame_age_s=1.0,
                   max_time_step_s=1.0)
    assert step_interval_s(long) == pytest.approx(0.005)


def test_the_shipped_room_interval() -> None:
    from pathlib import Path

    from syncctl.config import load_room

    root = Path(__file__).resolve().parents[2]
    params = load_room(root / "configs" / "room-sim.yaml").to_core_params()
    assert step_interval_s(params) == pytest.approx(0.005)


# --- what is stepped -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_with_nothing_changing_the_core_steps_at_least_every_interval() -> None:
    rig = Rig()
    await rig.to_safe()
    await rig.settle_after_a_step()
    step_times: list[float] = []
    rig.controller.listeners.append(lambda r: step_times.append(r.now))
    start_cycles, start_steps = rig.cycles, rig.steps
    for _ in range(1000):  # one second of cycles
        await rig.cycle()
    steps, cycles = rig.steps - start_steps, rig.cycles - start_cycles
    assert len(step_times) == steps  # a report for every step, none for a skipped cycle
    gaps = [b - a for a, b in itertools.pairwise(step_times)]
    assert max(gaps) <= INTERVAL + 0.001 + 1e-9, max(gaps)
    # The interval (5 ms) and the heartbeat echoes (two every 20 ms) set the steps (250 of
    # 1000 when written).
    assert steps <= cycles / 3, (steps, cycles)


@pytest.mark.asyncio
async def test_with_interval_zero_every_cycle_steps() -> None:
    rig = Rig(interval=0.0)
    await rig.to_safe()
    before = rig.steps, rig.cycles, len(rig.reports)
    for _ in range(200):
        await rig.cycle()
    assert rig.steps - before[0] == rig.cycles - before[1] == 200
    assert len(rig.reports) - before[2] == 200


@pytest.mark.asyncio
async def test_an_estop_is_stepped_in_the_cycle_it_is_read() -> None:
    rig = Rig()
    await rig.to_treating()
    await rig.settle_after_a_step()
    assert await skipped_next(rig), "the regime under test: cycles are being skipped"
    await rig.settle_after_a_step()
    attempts = len(rig.room.gate_attempts)
    rig.room.estop = True
    steps = rig.steps
    out = await rig.cycle()  # 1 ms after a step: only the e-stop can make this one step
    assert rig.steps == steps + 1
    assert out.gate is GateCommand.CLOSE
    assert "IL-005" in out.beam_permit.denied_by
    assert rig.room.gate_attempts[attempts:] == [GateCommand.CLOSE]  # written in that cycle
    assert rig.reports[-1].state.mode is Mode.FAULT
    assert rig.reports[-1].now == rig.t


@pytest.mark.asyncio
async def test_a_command_is_answered_in_the_cycle_after_submit() -> None:
    rig = Rig()
    await rig.to_safe()
    for kind in (CommandKind.SELECT_PLAN, CommandKind.START_IMAGING, CommandKind.STOP_IMAGING):
        await rig.settle_after_a_step()
        assert await skipped_next(rig)
        rig.controller.submit(Command(kind, "t", "lung-01"))
        out = await rig.cycle()
        assert out.command_result is not None and out.command_result.command.kind is kind
        assert out.command_result.accepted, out.command_result.reason
        assert rig.reports[-1].outputs is out


@pytest.mark.asyncio
async def test_a_skipped_cycle_returns_the_last_decision_without_its_one_shot_parts() -> None:
    rig = Rig()
    await rig.to_safe()
    await rig.command(CommandKind.SELECT_PLAN, "lung-01")
    for attempt in range(10):  # until the cycle after the answer is a skipped one
        await rig.settle_after_a_step()
        kind = CommandKind.START_IMAGING if attempt % 2 == 0 else CommandKind.STOP_IMAGING
        rig.controller.submit(Command(kind, "t"))
        decided = await rig.cycle()
        assert decided.command_result is not None and decided.events
        assert rig.controller.last_outputs is decided
        if await skipped_next(rig):
            break
    else:
        raise AssertionError("no skipped cycle after a command in 10 tries")
    held = rig.last
    assert held is not None and held is not decided
    assert rig.controller.last_outputs is decided
    assert (held.gate, held.xray, held.beam_permit, held.xray_permit, held.alarms) == (
        decided.gate, decided.xray, decided.beam_permit, decided.xray_permit, decided.alarms)
    assert (held.heartbeat, held.device_actions, held.events, held.command_result) == (
        None, (), (), None)


@pytest.mark.asyncio
async def test_a_stale_reading_is_still_detected_on_time() -> None:
    """A beam gate that stops answering: the failed read (healthy False) is a change, then
    nothing moves but time; IL-001 must come within device_stale + interval (+ a margin)."""
    rig = Rig()
    await rig.to_safe()
    await rig.settle_after_a_step()
    rig.room.bg_failing = True
    rig.room.echo_frozen = True  # nothing else changes: only the interval can step the core
    last_good = rig.room.beam_gate.reading.read_at
    assert last_good is not None
    out = await rig.cycle()
    assert "IL-030" in out.beam_permit.denied_by  # degraded, in the cycle it was read
    seen_at: float | None = None
    for _ in range(300):
        out = await rig.cycle()
        if "IL-001" in out.beam_permit.denied_by:
            seen_at = rig.t
            break
    assert seen_at is not None, "the lost beam gate was never seen"
    late = seen_at - last_good
    assert PARAMS.device_stale_s < late <= PARAMS.device_stale_s + INTERVAL + 0.003, late


@pytest.mark.asyncio
async def test_a_failed_gate_write_is_retried_on_skipped_cycles() -> None:
    rig = Rig()
    await rig.to_safe()
    await rig.settle_after_a_step()
    rig.room.gate_ok = False
    # A new session (reconnect): the gate command must be written again.
    rig.room.beam_gate.stats["sessions_verified"] += 1
    failed = rig.controller.stats.failed_writes
    attempts = len(rig.room.gate_attempts)
    skipped = [await skipped_next(rig) for _ in range(3)]
    assert skipped == [True, True, True]
    assert rig.room.gate_attempts[attempts:] == [GateCommand.CLOSE] * 3
    assert rig.controller.stats.failed_writes == failed + 3
    rig.room.gate_ok = True
    writes = rig.controller.stats.gate_writes
    assert await skipped_next(rig)
    assert rig.controller.stats.gate_writes == writes + 1
    assert rig.room.gate_attempts[attempts:] == [GateCommand.CLOSE] * 4
    assert await skipped_next(rig)
    assert len(rig.room.gate_attempts) == attempts + 4  # written once it succeeded


@pytest.mark.asyncio
async def test_a_treatment_skipping_cycles_stays_treating() -> None:
    """Half a second of treatment with cycles skipped: no trip, the gate stays open."""
    rig = Rig()
    await rig.to_treating()
    start_cycles, start_steps = rig.cycles, rig.steps
    for _ in range(500):
        await rig.cycle()
    assert rig.mode is Mode.TREATING, rig.reports[-1].outputs.alarms
    assert rig.room.gate_open
    assert rig.steps - start_steps < (rig.cycles - start_cycles) / 2


# --- the real loop -------------------------------------------------------------------------


async def _run_for(controller: Controller, cycles: int, timeout_s: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(controller.run(stop))
    try:
        for _ in range(int(timeout_s / 0.005)):
            if controller.stats.cycles >= cycles or task.done():
                break
            await asyncio.sleep(0.005)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


@pytest.mark.asyncio
@pytest.mark.parametrize("interval", [0.0, INTERVAL])
async def test_steps_never_exceed_cycles_in_the_real_loop(interval: float) -> None:
    room = FakeRoom(time.monotonic)
    controller = Controller(PARAMS, room.beam_gate, room.imaging,
                            period_s=0.001, imaging_period_s=0.004,
                            max_step_interval_s=interval)
    seen: list[Any] = []
    controller.listeners.append(seen.append)
    await _run_for(controller, 300, timeout_s=10)
    stats = controller.stats
    assert stats.cycles >= 300
    assert 0 < stats.steps <= stats.cycles
    assert len(seen) == stats.steps
    if interval == 0.0:
        assert stats.steps == stats.cycles
    else:
        assert stats.steps < stats.cycles
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert others == []
