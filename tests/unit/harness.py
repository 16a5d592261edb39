"""Drive the pure core against the scripted room, step by step, for scenario tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from syncctl.core import (
    Command,
    CommandKind,
    CommandResult,
    CoreParams,
    Mode,
    Outputs,
    Plan,
    Position,
    Snapshot,
    WindowBox,
    initial_state,
    step,
)
from syncctl.core.gating import inside_window
from syncctl.scripted import Breathing, ScriptedRoom

TARGET = Position(10.0, -20.0, 30.0)

PARAMS = CoreParams(
    window=WindowBox(5.0, 5.0, 5.0),
    hysteresis_mm=1.0,
    max_frame_age_s=0.07,
    min_confidence=0.6,
    frames_required_inside=2,
    max_jump_mm=8.0,
    imaging_budget_mas=400.0,
    max_hold_s=120.0,
    gate_actuation_timeout_s=0.02,
    xray_actuation_timeout_s=0.1,
    heartbeat_period_s=0.02,
    device_watchdog_timeout_s=0.2,
    device_stale_s=0.1,
    max_time_step_s=0.5,
    dose_tolerance_mu=0.05,
    plans=(Plan("lung-01", 3.0, TARGET), Plan("liver-02", 5.0, TARGET)),
)

Tamper = Callable[[Snapshot], Snapshot]


class Harness:
    def __init__(self, params: CoreParams = PARAMS, seed: int = 1) -> None:
        self.params = params
        self.room = ScriptedRoom(Breathing(TARGET, seed=seed))
        self.state = initial_state(params, 0.0)
        self.t = 0.0
        self.outputs: list[Outputs] = []
        self.tamper: Tamper | None = None

    @property
    def mode(self) -> Mode:
        return self.state.mode

    @property
    def last(self) -> Outputs:
        return self.outputs[-1]

    def tick(self, command: Command | None = None, dt: float = 0.002) -> Outputs:
        self.t = round(self.t + dt, 6)
        inside = inside_window(self.room.truth, TARGET, self.params.window, 0.0)
        self.room.advance(self.t, inside)
        snap = self.room.snapshot(self.t)
        if self.tamper is not None:
            snap = self.tamper(snap)
        self.state, out = step(self.state, snap, command, self.t)
        self.room.apply(out, self.t)
        self.outputs.append(out)
        return out

    def run(self, seconds: float, dt: float = 0.002) -> None:
        for _ in range(round(seconds / dt)):
            self.tick(dt=dt)

    def command(self, kind: CommandKind, plan_id: str | None = None) -> CommandResult:
        out = self.tick(Command(kind, "tester", plan_id))
        assert out.command_result is not None
        return out.command_result

    def until(self, predicate: Callable[[Harness], bool], max_s: float) -> bool:
        for _ in range(round(max_s / 0.002)):
            if predicate(self):
                return True
            self.tick()
        return predicate(self)

    def to_setup(self, plan_id: str = "lung-01") -> None:
        self.run(0.05)
        assert self.mode is Mode.SAFE, self.mode
        assert self.command(CommandKind.SELECT_PLAN, plan_id).accepted
        assert self.command(CommandKind.START_IMAGING).accepted

    def to_treating(self, plan_id: str = "lung-01") -> None:
        self.to_setup(plan_id)
        self.run(0.3)
        result = self.command(CommandKind.ARM)
        assert result.accepted, result.reason
        result = self.command(CommandKind.BEAM_ON)
        assert result.accepted, result.reason
        assert self.mode is Mode.TREATING


def with_beam_gate(**changes: object) -> Tamper:
    def tamper(snap: Snapshot) -> Snapshot:
        status = snap.beam_gate.status
        assert status is not None
        return replace(snap, beam_gate=replace(snap.beam_gate, status=replace(status, **changes)))

    return tamper


def with_imaging(**changes: object) -> Tamper:
    def tamper(snap: Snapshot) -> Snapshot:
        status = snap.imaging.status
        assert status is not None
        return replace(snap, imaging=replace(snap.imaging, status=replace(status, **changes)))

    return tamper


def unhealthy(device: str) -> Tamper:
    """The device's reading as a client reports it after a failed transaction (or before the
    session's settings are verified): the status and read time kept, ``healthy`` False."""

    def tamper(snap: Snapshot) -> Snapshot:
        if device == "beam_gate":
            return replace(snap, beam_gate=replace(snap.beam_gate, healthy=False))
        return replace(snap, imaging=replace(snap.imaging, healthy=False))

    return tamper
