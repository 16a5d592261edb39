"""The fault matrix: every backdoor fault, injected in every mode where it can occur (SAFE,
SETUP, READY, TREATING, and HOLD reached by the operator's pause), over real loopback TCP and
a real pty.

The simulators run as their own process (as in the demo), one process for the whole matrix:
before each case both devices get every backdoor fault cleared and are power-cycled through
the backdoor (``clear_faults``, ``reboot``), which also clears the watchdog faults the previous
case's controller left when it stopped. Each case then runs its own controller with the real
device clients and its own audit trail, brings the room to the mode with operator commands
only (``syncctl.safety.runner.Driver``, the QA runner's), injects one fault, waits until the
expected outcome shows (bounded), watches a short tail, and judges from the core's outputs,
the audit file and the simulators' ground truth (read as the simulator flushes it):

- the mode after: a termination in SETUP, READY, TREATING or HOLD trips to FAULT; an
  interruption holds the beam and the mode stays; in SAFE nothing latches, the condition
  blocks the plan selection, so a ``select_plan`` is sent and must be refused naming the rule;
- the rule ids; the X-ray command (stopped on a trip, going on under an interruption);
- the gate in the beam-gate simulator's ground truth: closed within the deadline in TREATING,
  never opened in the modes where it is closed; the X-ray in the imaging simulator's;
- the audit trail: every trip the controller reported after the injection is a ``trip``
  record with its rule ids (a refused selection a ``command`` record), and the chain verifies.

A fault that cuts a link (no answer, late answers, damaged answers, link down) first makes the
device *degraded* (IL-030/IL-031: its last transaction failed, its last good read still fresh):
the beam is denied at the first failed transaction, and the X-ray goes on where it runs. Only
once the last good read is older than `device_stale_ms` (100 ms in configs/room-sim.yaml) is
the device *lost* (IL-001/IL-002): a fraction trips, in SAFE the selection is refused.

The table of results in docs/reliability.md ("Fault matrix") is generated from a run:

    export SYNCCTL_FAULT_MATRIX_JSON=/tmp/matrix.jsonl
    pytest tests/integration/test_fault_matrix.py -p no:randomly
    python tests/integration/fault_matrix_table.py /tmp/matrix.jsonl --write docs/reliability.md
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from syncctl.analysis.truth import TRUTH_FILES
from syncctl.audit import AuditListener, AuditTrail, read_records, verify
from syncctl.cli.faults import FAULTS, Fault
from syncctl.cli.simproc import SimProcess, start_simulators
from syncctl.config import load_room
from syncctl.controller import Controller, ControllerReport, step_interval_s
from syncctl.core import (
    BeamGateReading,
    Command,
    CommandKind,
    EventKind,
    GateCommand,
    ImagingReading,
    Mode,
    XrayCommand,
)
from syncctl.devices import BeamGateClient, ImagingClient
from syncctl.safety.runner import Backdoor, Driver

ROOT = Path(__file__).resolve().parents[2]
ROOM = ROOT / "configs" / "room-sim.yaml"
PLAN = "lung-01"
OPERATOR = "fault-matrix"
RESULTS_ENV = "SYNCCTL_FAULT_MATRIX_JSON"

REACH_TIMEOUT_S = 25.0
"""Bringing the room to the mode: SETUP imaging, the READY settle, the gate's first opening in
TREATING (it waits for the breathing target to enter the window: up to one 4 s cycle)."""
GATE_OPEN_BEFORE_S = 0.3
"""TREATING: the gate has been commanded open this long before the injection (really open)."""
TAIL_S = 0.3
"""Watched after the expected outcome showed: the outcome must hold (no later change)."""
MIN_WATCH_S = 0.6
"""Every case is watched at least this long after the injection: longer than every gate and
X-ray deadline below, so that the ground truth covers them (the firmware watchdogs act at
200 ms)."""
XRAY_STOPS_WITHIN_S = 0.5
"""After a trip in an imaging mode, the imaging simulator must have stopped exposing by then:
the stop command (X-ray actuation timeout 100 ms), or, when the imaging link is cut, the
device's own watchdog (200 ms without a heartbeat)."""
SAFE_QUIET_S = 0.3
"""SAFE, a fault that leaves no condition: the selection is tried this long after it (longer
than a heartbeat period and a transaction timeout: any transient has shown by then)."""
STARVED_S = 0.1
"""A case that fails after a gap this long between two control cycles (device_stale_ms: a
starved test process makes a device read stale, IL-001/IL-002) is run once more; both runs
are reported."""
TRUTH_WAIT_S = 3.0
"""The simulators flush their ground truth every 0.25 s."""
POLL_S = 0.005


@dataclass(frozen=True)
class Expect:
    mode: Mode
    """The mode after the fault: FAULT (a trip), the same mode (an interruption), SAFE."""
    rules: frozenset[str]
    """At least one of these rule ids must trip (FAULT), deny the beam (an interruption), or be
    named by the refusal of ``select_plan`` (SAFE)."""
    xray: XrayCommand
    gate_closes_within_s: float | None = None
    """TREATING: deadline for the simulator's gate to be closed; None: it cannot close (stuck).
    In the other modes the gate is closed before the injection and must never open."""
    settle_s: float = 1.5
    """The longest wait for the outcome to show."""
    degraded_first: str | None = None
    """For a cut link: this degraded rule (IL-030/IL-031) holds the beam, without a trip and in
    the mode of the injection, from the first failed transaction; the lost rule trips (or
    blocks the selection) only on a stale read (see check_degraded_then_lost)."""


@dataclass(frozen=True)
class NotApplicable:
    why: str


T = frozenset
BG_CUT, XI_CUT = "IL-030", "IL-031"
IMAGING_MODES = (Mode.SETUP, Mode.READY, Mode.HOLD)

BG_REBOOT = T({"IL-033", "IL-003", "IL-012", "IL-001"})
"""A beam-gate reboot: its dose preset, read back armed, falls to 0 (IL-033), which shows even
before the dose counter has counted one 0.01 MU step (the case in SETUP and READY, where the
device powered up at the start of the case). With dose counted (TREATING, HOLD), the counter
going backwards makes the reading invalid (IL-003), which then names it alone. Until IL-033 a
reboot with the counter still at 0 went unseen (docs/reliability.md, the finding)."""
# -- TREATING (the gate open, imaging on): the measured deadlines of the first matrix ------------

TREATING: dict[str, Expect] = {
    "door": Expect(Mode.FAULT, T({"IL-006"}), XrayCommand.STOP, 0.1),
    "estop": Expect(Mode.FAULT, T({"IL-005"}), XrayCommand.STOP, 0.1),
    "chain": Expect(Mode.FAULT, T({"IL-007"}), XrayCommand.STOP, 0.1),
    # A stuck gate stays open whatever anyone says: the synchronizer must notice when it next
    # commands it closed (the target leaves the window), trip and stop imaging. Closing it is
    # up to the accelerator's own beam abort (a hardware assumption in the safety case).
    "stuck_gate": Expect(Mode.FAULT, T({"IL-010"}), XrayCommand.STOP, None, settle_s=8.0),
    "slow_gate": Expect(Mode.FAULT, T({"IL-010"}), XrayCommand.STOP, 8.0, settle_s=8.0),
    # Cut beam-gate links: the core commands the gate closed at the first failed transaction
    # the client reports (IL-030, some 52 ms after the last good read: the 50 ms transaction
    # timeout), and trips (IL-001) once that read is older than device_stale_ms (100 ms). The
    # close command cannot get through the cut link: the firmware's own watchdog (200 ms
    # without a heartbeat) closes the gate, measured 212-225 ms after the injection.
    "response_delay": Expect(Mode.FAULT, T({"IL-001"}), XrayCommand.STOP, 0.5,
                             degraded_first=BG_CUT),
    "dropped_responses": Expect(Mode.FAULT, T({"IL-001"}), XrayCommand.STOP, 0.5,
                                degraded_first=BG_CUT),
    "beam_gate_corrupt": Expect(Mode.FAULT, T({"IL-001", "IL-003"}), XrayCommand.STOP, 0.5,
                                degraded_first=BG_CUT),
    "beam_gate_disconnect": Expect(Mode.FAULT, T({"IL-001"}), XrayCommand.STOP, 0.5,
                                   degraded_first=BG_CUT),
    "beam_gate_reboot": Expect(Mode.FAULT, BG_REBOOT, XrayCommand.STOP, 0.5),
    "tracking_loss": Expect(Mode.TREATING, T({"IL-026"}), XrayCommand.EXPOSE, 0.2),
    "frozen_frames": Expect(Mode.TREATING, T({"IL-025", "IL-024"}), XrayCommand.EXPOSE, 0.3),
    "delayed_frames": Expect(Mode.TREATING, T({"IL-024"}), XrayCommand.EXPOSE, 0.3),
    "marker_jump": Expect(Mode.TREATING, T({"IL-027", "IL-028"}), XrayCommand.EXPOSE, 0.2),
    "baseline_shift": Expect(Mode.TREATING, T({"IL-028"}), XrayCommand.EXPOSE, 0.3),
    # Cut imaging links: IL-031 holds the beam when the first transaction fails (60 ms
    # timeout; seen 69-100 ms after the last good read), IL-024 as the frame ages past 70 ms;
    # the close goes out over the healthy beam-gate link (measured 70-71 ms). IL-002 trips
    # once the last good read is older than 100 ms.
    "imaging_corrupt": Expect(Mode.FAULT, T({"IL-002", "IL-004"}), XrayCommand.STOP, 0.3,
                              degraded_first=XI_CUT),
    "imaging_disconnect": Expect(Mode.FAULT, T({"IL-002"}), XrayCommand.STOP, 0.3,
                                 degraded_first=XI_CUT),
    "imaging_reboot": Expect(Mode.FAULT, T({"IL-004", "IL-009", "IL-013", "IL-002"}),
                             XrayCommand.STOP, 0.5),
}

GATE_FAULT_NA = NotApplicable("acts on an open gate; the gate is only open in TREATING")
FRAME_FAULT_NA = NotApplicable("acts on frames; no imaging in SAFE")


def _imaging_mode(mode: Mode) -> dict[str, Expect | NotApplicable]:
    """SETUP, READY and HOLD: imaging on, the gate closed (beam only in TREATING, IL-020). A
    termination trips to FAULT and stops the X-ray; an imaging fault that is an interruption
    stops nothing, the mode stays, and the beam is denied naming it."""
    trip, stop = Mode.FAULT, XrayCommand.STOP
    return {
        "door": Expect(trip, T({"IL-006"}), stop),
        "estop": Expect(trip, T({"IL-005"}), stop),
        "chain": Expect(trip, T({"IL-007"}), stop),
        "stuck_gate": GATE_FAULT_NA,
        "slow_gate": GATE_FAULT_NA,
        "response_delay": Expect(trip, T({"IL-001"}), stop, degraded_first=BG_CUT),
        "dropped_responses": Expect(trip, T({"IL-001"}), stop, degraded_first=BG_CUT),
        "beam_gate_corrupt": Expect(trip, T({"IL-001", "IL-003"}), stop, degraded_first=BG_CUT),
        "beam_gate_disconnect": Expect(trip, T({"IL-001"}), stop, degraded_first=BG_CUT),
        "beam_gate_reboot": Expect(trip, BG_REBOOT, stop),
        "tracking_loss": Expect(mode, T({"IL-026"}), XrayCommand.EXPOSE),
        "frozen_frames": Expect(mode, T({"IL-025", "IL-024"}), XrayCommand.EXPOSE),
        "delayed_frames": Expect(mode, T({"IL-024"}), XrayCommand.EXPOSE),
        "marker_jump": Expect(mode, T({"IL-027", "IL-028"}), XrayCommand.EXPOSE),
        "baseline_shift": Expect(mode, T({"IL-028"}), XrayCommand.EXPOSE),
        "imaging_corrupt": Expect(trip, T({"IL-002", "IL-004"}), stop, degraded_first=XI_CUT),
        "imaging_disconnect": Expect(trip, T({"IL-002"}), stop, degraded_first=XI_CUT),
        "imaging_reboot": Expect(trip, T({"IL-004", "IL-009", "IL-013", "IL-002"}), stop),
    }


# SAFE: no plan, no imaging, the gate closed. Nothing latches; a termination condition blocks
# the plan selection while it lasts (docs/core.md, "Why SAFE does not latch"). A reboot in SAFE
# (here straight after the power-up that starts every case, so with both counters at 0) leaves
# no condition behind: nothing was counted, no plan holds a baseline; the selection is
# accepted (the mode after: SETUP) and takes its baselines from the fresh devices.
_safe, _stop = Mode.SAFE, XrayCommand.STOP
SAFE: dict[str, Expect | NotApplicable] = {
    "door": Expect(_safe, T({"IL-006"}), _stop),
    "estop": Expect(_safe, T({"IL-005"}), _stop),
    "chain": Expect(_safe, T({"IL-007"}), _stop),
    "stuck_gate": GATE_FAULT_NA,
    "slow_gate": GATE_FAULT_NA,
    "response_delay": Expect(_safe, T({"IL-001"}), _stop, degraded_first=BG_CUT),
    "dropped_responses": Expect(_safe, T({"IL-001"}), _stop, degraded_first=BG_CUT),
    "beam_gate_corrupt": Expect(_safe, T({"IL-001", "IL-003"}), _stop, degraded_first=BG_CUT),
    "beam_gate_disconnect": Expect(_safe, T({"IL-001"}), _stop, degraded_first=BG_CUT),
    "beam_gate_reboot": Expect(Mode.SETUP, T(), _stop),
    "tracking_loss": FRAME_FAULT_NA,
    "frozen_frames": FRAME_FAULT_NA,
    "delayed_frames": FRAME_FAULT_NA,
    "marker_jump": FRAME_FAULT_NA,
    "baseline_shift": FRAME_FAULT_NA,
    "imaging_corrupt": Expect(_safe, T({"IL-002", "IL-004"}), _stop, degraded_first=XI_CUT),
    "imaging_disconnect": Expect(_safe, T({"IL-002"}), _stop, degraded_first=XI_CUT),
    "imaging_reboot": Expect(Mode.SETUP, T(), _stop),
}

MATRIX: dict[Mode, dict[str, Expect | NotApplicable]] = {
    Mode.SAFE: SAFE,
    Mode.SETUP: _imaging_mode(Mode.SETUP),
    Mode.READY: _imaging_mode(Mode.READY),
    Mode.TREATING: dict(TREATING),
    Mode.HOLD: _imaging_mode(Mode.HOLD),
}
CASES = [(mode, name) for mode, column in MATRIX.items() for name in FAULTS
         if isinstance(column[name], Expect)]


def test_every_named_fault_has_an_entry_in_every_mode() -> None:
    for mode, column in MATRIX.items():
        assert set(column) == set(FAULTS), mode
    assert all(isinstance(e, Expect) for e in MATRIX[Mode.TREATING].values())


# -- the simulators, shared by every case -------------------------------------------------------


class TruthTail:
    """The simulators' ground truth, read as it is flushed: only complete new lines, from
    where the last read stopped (the files grow through the whole matrix)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.offsets = dict.fromkeys(TRUTH_FILES, 0)
        self.partial = dict.fromkeys(TRUTH_FILES, "")
        self.rows: dict[str, list[dict[str, Any]]] = {device: [] for device in TRUTH_FILES}

    def read(self) -> None:
        for device, name in TRUTH_FILES.items():
            path = self.directory / name
            if not path.exists():
                continue
            with path.open("r", encoding="utf-8") as f:
                f.seek(self.offsets[device])
                text = f.read()
                self.offsets[device] = f.tell()
            lines = (self.partial[device] + text).split("\n")
            self.partial[device] = lines.pop()  # "" after a complete last line
            for line in lines:
                if line:
                    self.rows[device].append(json.loads(line))

    def forget_before(self, t: float) -> None:
        for device, rows in self.rows.items():
            self.rows[device] = [r for r in rows if float(r.get("t", r.get("t_available", 0)))
                                 >= t or r.get("type") == "header"]

    def series(self, device: str, key: str) -> list[tuple[float, bool]]:
        return [(float(r["t"]), bool(r[key])) for r in self.rows[device]
                if r.get("type") == "state" and key in r]

    def value_at(self, device: str, key: str, t: float) -> float | None:
        """The value of ``key`` in the last state row at or before ``t``."""
        rows = [r for r in self.rows[device]
                if r.get("type") == "state" and key in r and float(r["t"]) <= t]
        return float(rows[-1][key]) if rows else None

    def latest_t(self, device: str) -> float:
        states = self.series(device, "gate_open" if device == "beam-gate" else "exposing")
        return states[-1][0] if states else float("-inf")


@dataclass
class Room:
    sim: SimProcess
    truth: TruthTail
    results: Path | None
    started: float = field(default_factory=time.monotonic)


@pytest.fixture(scope="module")
def room(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Room]:
    workdir = tmp_path_factory.mktemp("fault-matrix")
    results = Path(os.environ[RESULTS_ENV]) if os.environ.get(RESULTS_ENV) else None
    if results is not None:
        lines = [{"type": "n/a", "mode": mode.name, "fault": name, "why": entry.why}
                 for mode, column in MATRIX.items() for name, entry in column.items()
                 if isinstance(entry, NotApplicable)]
        results.write_text("".join(json.dumps(line) + "\n" for line in lines),
                           encoding="utf-8")
    load = os.getloadavg()
    with (workdir / "sim.log").open("w") as log:
        process = start_simulators(ROOM, [
            "--seed", "4", "--truth", str(workdir / "truth"), "--beam-gate-port", "0",
            "--imaging-link", str(workdir / "xic"), "--backdoor-port", "0",
        ], stderr=log)
        shared = Room(process, TruthTail(workdir / "truth"), results)
        try:
            yield shared
        finally:
            code = process.stop()
            if results is not None:
                with results.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({
                        "type": "run", "duration_s": round(time.monotonic() - shared.started, 1),
                        "started_utc": datetime.now(UTC).strftime("%Y-%m-%d"),
                        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                        "load_start": f"{load[0]:.1f}", "python": platform.python_version(),
                        "faults": list(FAULTS),
                    }) + "\n")
            assert process.process.poll() is not None, "simulator still running"
            assert code == 0, f"simulator exited with {code}"


# -- one case -----------------------------------------------------------------------------------


async def wait_until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / POLL_S) + 2):  # bounded in count and in time
        if predicate():
            return True
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(POLL_S)
    return predicate()


async def clear_devices(backdoor: Backdoor, reboot: bool) -> None:
    """Every backdoor fault off in both devices, then (``reboot``) a power cycle of each."""
    for slot in ("beam_gate", "imaging"):
        await backdoor.write(Fault(slot, "clear_faults", 1, "clear"))
        if reboot:
            await backdoor.write(Fault(slot, "reboot", 1, "power cycle"))


@dataclass
class CaseRun:
    reports: list[ControllerReport] = field(default_factory=list)
    injected_at: float = 0.0
    outcome_at: float | None = None
    ended_at: float = 0.0
    select_result: str | None = None
    audit_path: Path = Path()


def trips_after(reports: list[ControllerReport]) -> list[tuple[str, ...]]:
    return [e.rule_ids for r in reports for e in r.outputs.events if e.kind is EventKind.TRIP]


def outcome_shown(expect: Expect, mode: Mode, after: list[ControllerReport]) -> bool:
    if not after:
        return False
    last = after[-1]
    if expect.mode is Mode.FAULT:
        tripped = {rid for ids in trips_after(after) for rid in ids}
        return last.state.mode is Mode.FAULT and bool(tripped & expect.rules)
    if mode is Mode.SAFE:
        return bool({a.rule_id for a in last.outputs.alarms} & expect.rules)
    return bool(set(last.outputs.beam_permit.denied_by) & expect.rules)


async def run_case(room: Room, mode: Mode, fault_name: str, expect: Expect,
                   workdir: Path) -> CaseRun:
    config = load_room(ROOM)
    runtime = config.with_endpoints(room.sim.ready["beam_gate"], room.sim.ready["imaging"])
    workdir.mkdir(parents=True, exist_ok=True)
    run = CaseRun(audit_path=workdir / "audit.sqlite")
    backdoor = Backdoor(room.sim.ready["backdoor"])
    trail = AuditTrail(run.audit_path, room=config.room.room.id)
    beam_gate, imaging = BeamGateClient(runtime), ImagingClient(runtime)
    stop = asyncio.Event()
    task: asyncio.Task[bool] | None = None
    try:
        await backdoor.open()
        await clear_devices(backdoor, reboot=True)
        room.truth.read()
        room.truth.forget_before(time.monotonic())
        params = config.to_core_params()
        controller = Controller(params, beam_gate, imaging,
                                deadline_s=0.05, max_consecutive_overruns=20,
                                max_step_interval_s=step_interval_s(params),
                                frame_period_s=1.0 / config.room.devices.imaging.frame_rate_fps)
        audit = AuditListener(trail, config.room.room.id)
        audit.record_config(config)
        driver = Driver(controller, PLAN, Mode.TREATING if mode is Mode.HOLD else mode)
        controller.listeners += [audit, run.reports.append, driver]
        task = asyncio.create_task(controller.run(stop), name=f"matrix-{mode.name}-{fault_name}")
        quiet = expect.rules if expect.mode is mode else frozenset()
        await bring_to(mode, run, driver, controller, task, quiet)
        run.injected_at = time.monotonic()
        await backdoor.write(FAULTS[fault_name])
        after: list[ControllerReport] = []

        def shown() -> bool:
            after[:] = [r for r in run.reports if r.now >= run.injected_at]
            return outcome_shown(expect, mode, after)

        if not expect.rules:  # nothing should show: wait, then try the selection
            await asyncio.sleep(SAFE_QUIET_S)
            run.outcome_at = time.monotonic()
            await try_selection(run, controller)
        elif await wait_until(shown, expect.settle_s):
            run.outcome_at = time.monotonic()
            if mode is Mode.SAFE:
                await try_selection(run, controller)
        watch_until = max((run.outcome_at or time.monotonic()) + TAIL_S,
                          run.injected_at + MIN_WATCH_S,
                          run.injected_at + (expect.gate_closes_within_s or 0.0))
        await asyncio.sleep(max(0.0, watch_until - time.monotonic()))
        run.ended_at = time.monotonic()
        if run.reports[-1].state.mode in (Mode.FAULT, Mode.SAFE):
            # Latched (or nothing to hold): the faults can go before the controller stops, so
            # that its safe shutdown is confirmed at once rather than timing out on a cut link.
            await clear_devices(backdoor, reboot=False)
    finally:
        stop.set()
        if task is not None:
            await asyncio.wait_for(task, 10)
        await beam_gate.close()
        await imaging.close()
        backdoor.close()
        trail.close()
    return run


async def bring_to(mode: Mode, run: CaseRun, driver: Driver, controller: Controller,
                   task: asyncio.Task[bool], quiet: frozenset[str]) -> None:
    """Operator commands only; TREATING waits until the gate has been open a while, HOLD is the
    operator's pause in TREATING, with the gate read back closed. For an interruption, the
    injection waits until none of its rules denies the beam (the target confirmed inside the
    window, frames fresh), so that the rule seen after it is the fault's doing."""
    reached = await wait_until(lambda: driver.reached.is_set() or bool(driver.gave_up)
                               or task.done(), REACH_TIMEOUT_S)
    assert reached and driver.reached.is_set(), (
        f"{mode.name} not reached: {driver.gave_up or 'timed out'}; {driver.log[-5:]}")
    controller.listeners.remove(driver)

    def last() -> ControllerReport:
        return run.reports[-1]

    if mode is not Mode.SAFE:
        # The selection's dose preset read back armed (a cycle or two after the selection;
        # ARM waits for it, SETUP does not), so that a fault that loses it is judged against
        # an armed preset (IL-033), not one still on its way (IL-032).
        def armed() -> bool:
            plan = last().state.plan
            return plan is not None and plan.preset_armed

        assert await wait_until(armed, 2.0), timeline(run.reports)

    if mode is Mode.TREATING:
        def gate_open() -> bool:
            bg = last().snapshot.beam_gate
            return last().state.mode is not Mode.TREATING or (
                last().outputs.gate is GateCommand.OPEN and bg.healthy is True
                and bg.status is not None and bg.status.gate_open_readback)

        assert await wait_until(gate_open, REACH_TIMEOUT_S), timeline(run.reports)
        await asyncio.sleep(GATE_OPEN_BEFORE_S)
        # Gating may have closed it since (the target left the window): inject while it is
        # open, as read back (within one breathing cycle).
        assert await wait_until(gate_open, REACH_TIMEOUT_S), timeline(run.reports)
        assert last().state.mode is Mode.TREATING, timeline(run.reports)
    elif mode is Mode.HOLD:
        controller.submit(Command(CommandKind.PAUSE, OPERATOR))

        def held_closed() -> bool:
            bg = last().snapshot.beam_gate
            return (last().state.mode is not Mode.TREATING and bg.healthy is True
                    and bg.status is not None and not bg.status.gate_open_readback)

        assert await wait_until(held_closed, 5.0), timeline(run.reports)
        await asyncio.sleep(0.05)  # readback 1 ms after the truth: let the truth agree
    if quiet:
        assert await wait_until(lambda: last().state.mode is not mode or not (
            set(last().outputs.beam_permit.denied_by) & quiet), REACH_TIMEOUT_S), (
            timeline(run.reports))
    assert last().state.mode is mode, f"{last().state.mode.name} before the injection"


async def try_selection(run: CaseRun, controller: Controller) -> None:
    """SAFE: the operator tries to select the plan (while the condition lasts)."""
    seen = len(run.reports)
    controller.submit(Command(CommandKind.SELECT_PLAN, OPERATOR, PLAN))

    def answered() -> bool:
        return any(r.outputs.command_result is not None for r in run.reports[seen:])

    if await wait_until(answered, 2.0):
        result = next(r.outputs.command_result for r in run.reports[seen:]
                      if r.outputs.command_result is not None)
        assert result is not None
        run.select_result = ("accepted" if result.accepted else f"refused: {result.reason}")


# -- judging ------------------------------------------------------------------------------------


def timeline(reports: list[ControllerReport], limit: int = 12) -> list[str]:
    """What changed, report by report (for failure messages): time, mode, denials, trips."""
    lines: list[str] = []
    last = None
    for r in reports:
        trips = [rid for e in r.outputs.events if e.kind is EventKind.TRIP for rid in e.rule_ids]
        key = (r.state.mode, r.outputs.beam_permit.denied_by, tuple(trips))
        if key != last:
            lines.append(f"{r.now - reports[0].now:+.3f} s {r.state.mode.name} beam denied by"
                         f" {list(r.outputs.beam_permit.denied_by)} trips {trips}"
                         f" bg healthy={r.snapshot.beam_gate.healthy}"
                         f" xi healthy={r.snapshot.imaging.healthy}")
            last = key
        if len(lines) >= limit:
            break
    return lines


def check_degraded_then_lost(after: list[ControllerReport], degraded: str, mode: Mode,
                             problems: list[str]) -> bool | None:
    """A cut link: at the first failed transaction the core sees (an unhealthy reading whose
    last good read is still fresh) the beam is held by the degraded rule, in the mode of the
    injection, with no trip and the X-ray going on where it runs; and the lost rule trips (or
    shows, in SAFE) only on a reading whose last good read is older than device_stale_s.

    The degraded window can be empty: a transaction already in flight (a heartbeat or gate
    write holds the client's lock, and a failed write does not mark the reading unhealthy)
    may delay the first failed poll until the last good read is already stale; then the
    device goes from healthy straight to lost, which is also correct. Returns whether the
    degraded window was seen (None: the link never failed a transaction)."""
    lost = "IL-001" if degraded == BG_CUT else "IL-002"

    def reading(r: ControllerReport) -> BeamGateReading | ImagingReading:
        return r.snapshot.beam_gate if lost == "IL-001" else r.snapshot.imaging

    stale_s = after[0].state.params.device_stale_s
    failed = [r for r in after if reading(r).healthy is not True]
    if not failed:
        problems.append(f"the link fault never failed a transaction: {timeline(after)}")
        return None
    first = failed[0]
    kept = reading(first)
    if kept.status is None or kept.read_at is None:
        problems.append("the client forgot the last good reading")
        return None
    seen = first.now - kept.read_at <= stale_s
    if seen:
        denied = first.outputs.beam_permit.denied_by
        xray = XrayCommand.EXPOSE if mode in (*IMAGING_MODES, Mode.TREATING) else (
            XrayCommand.STOP)
        if not (degraded in denied and lost not in denied):
            problems.append(f"degraded: beam denied by {list(denied)}")
        if first.state.mode is not mode:
            problems.append(f"degraded: mode {first.state.mode.name}")
        if trips_after(after[: after.index(first) + 1]):
            problems.append("degraded: a trip before the reading went stale")
        if first.outputs.gate is not GateCommand.CLOSE:
            problems.append("degraded: gate not commanded closed")
        if first.outputs.xray is not xray:
            problems.append(f"degraded: X-ray {first.outputs.xray.value}, expected "
                            f"{xray.value}")
    for report in after:
        ids = {rid for e in report.outputs.events if e.kind is EventKind.TRIP
               for rid in e.rule_ids}
        if lost not in ids:
            continue
        read_at = reading(report).read_at
        if read_at is None:
            problems.append("the client forgot the last good reading")
            continue
        age = report.now - read_at
        if age <= stale_s:
            problems.append(f"{lost} tripped on a reading {age:.3f} s old")
    return seen


def settled_after(series: list[tuple[float, bool]], t0: float, t1: float, value: bool
                  ) -> float | None:
    """Seconds from t0 until the series took ``value`` for good (up to t1); 0 when it held it
    from t0 on; None when it does not end on ``value``."""
    before = [v for t, v in series if t <= t0]
    window = [(t, v) for t, v in series if t0 < t <= t1]
    at_t0 = before[-1] if before else None
    end = window[-1][1] if window else at_t0
    if end is not value:
        return None
    since = t0 if at_t0 is value else None
    for t, v in window:
        if v is not value:
            since = None
        elif since is None:
            since = t
    return None if since is None else since - t0


async def read_truth_until(room: Room, t: float) -> bool:
    """Wait until both ground-truth files hold a state row at or after ``t``."""
    def covered() -> bool:
        room.truth.read()
        return min(room.truth.latest_t(d) for d in TRUTH_FILES) >= t

    deadline = time.monotonic() + TRUTH_WAIT_S
    for _ in range(int(TRUTH_WAIT_S / 0.05) + 2):
        if covered():
            return True
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.05)
    return covered()


def judge(mode: Mode, fault_name: str, expect: Expect, run: CaseRun, room: Room,
          truth_ok: bool) -> dict[str, Any]:
    """The outcome as a JSON-ready dict, with ``problems``: what disagrees with ``expect``."""
    problems: list[str] = []
    after = [r for r in run.reports if run.injected_at <= r.now <= run.ended_at]
    out: dict[str, Any] = {"type": "case", "mode": mode.name, "fault": fault_name,
                           "expected_mode": expect.mode.name,
                           "expected_rules": sorted(expect.rules)}
    if not after:
        problems.append("no cycle after the injection")
        out.update(ok=False, problems=problems, failure=problems[0])
        return out
    watched = [r.now for r in run.reports if run.injected_at - 0.05 <= r.now <= run.ended_at]
    gap = max((b - a for a, b in pairwise(watched)), default=0.0)
    final = after[-1]
    trips = trips_after(after)
    tripped = {rid for ids in trips for rid in ids}
    denied = set(final.outputs.beam_permit.denied_by)
    detected = next((r.now - run.injected_at for r in after if expect.rules & (
        {rid for e in r.outputs.events if e.kind is EventKind.TRIP for rid in e.rule_ids}
        if expect.mode is Mode.FAULT else {a.rule_id for a in r.outputs.alarms}
        if mode is Mode.SAFE else set(r.outputs.beam_permit.denied_by))), None)
    out.update(final_mode=final.state.mode.name, trips=[list(t) for t in trips],
               denied_by=sorted(denied), xray=final.outputs.xray.value,
               outcome_ms=None if run.outcome_at is None
               else round((run.outcome_at - run.injected_at) * 1000, 1),
               detected_ms=None if detected is None else round(detected * 1000, 1),
               degraded_first=expect.degraded_first, max_cycle_gap_ms=round(gap * 1000, 1))
    if not truth_ok:
        problems.append("the ground truth did not reach the end of the case")
    if fault_name == "beam_gate_reboot":
        out["dose_at_injection_mu"] = room.truth.value_at("beam-gate", "dose_mu",
                                                          run.injected_at)
    if final.state.mode is not expect.mode:
        problems.append(f"mode {final.state.mode.name}, expected {expect.mode.name}: "
                        f"{timeline(after)}")
    if expect.mode is Mode.FAULT:
        out.update(kind="trip", rules_seen=sorted(tripped))
        if not tripped & expect.rules:
            problems.append(f"tripped {sorted(tripped)}, expected one of "
                            f"{sorted(expect.rules)}")
    elif mode is Mode.SAFE:
        answer = run.select_result or "not answered"
        named = sorted(rid for rid in expect.rules if rid in answer)
        out.update(select=answer, rules_seen=named)
        if not expect.rules:
            out["kind"] = "accepts"
            if answer != "accepted":
                problems.append(f"select_plan {answer}; expected accepted (nothing to block)")
        else:
            out["kind"] = "blocks"
            if not answer.startswith("refused") or not named:
                problems.append(f"select_plan {answer}; expected refused naming one of "
                                f"{sorted(expect.rules)}")
        if trips:
            problems.append(f"a trip in SAFE: {trips}")
    else:
        out.update(kind="holds", rules_seen=sorted(denied & expect.rules))
        if not denied & expect.rules:
            problems.append(f"beam denied by {sorted(denied)}, expected one of "
                            f"{sorted(expect.rules)}")
        if trips:
            problems.append(f"tripped {trips} under an interruption")
    if final.outputs.gate is not GateCommand.CLOSE:
        problems.append("gate commanded open at the end")
    if final.outputs.xray is not expect.xray:
        problems.append(f"X-ray {final.outputs.xray.value}, expected {expect.xray.value}")
    if expect.degraded_first is not None:
        out["degraded_seen"] = check_degraded_then_lost(after, expect.degraded_first, mode,
                                                        problems)

    judge_audit(run, trips, expect, mode, out, problems)
    trip_at = next((r.now for r in after for e in r.outputs.events
                    if e.kind is EventKind.TRIP), None)
    if truth_ok:
        judge_truth(mode, expect, run, room, out, problems, trip_at)
    out.update(ok=not problems, problems=problems, failure="; ".join(problems)[:300],
               duration_s=round(run.ended_at - run.injected_at, 3))
    return out


def judge_audit(run: CaseRun, trips: list[tuple[str, ...]], expect: Expect, mode: Mode,
                out: dict[str, Any], problems: list[str]) -> None:
    result = verify(run.audit_path)
    if not result.ok:
        problems.append(f"audit trail does not verify: {result.detail}")
    records = read_records(run.audit_path)
    start = run.injected_at
    recorded_trips = [tuple(json.loads(str(r["payload"]))["rule_ids"]) for r in records
                      if r["kind"] == "trip" and float(r["mono"]) >= start]
    out.update(audit_ok=result.ok, audit_records=len(records),
               audit_trips=len(recorded_trips))
    for ids in trips:
        if ids not in recorded_trips:
            problems.append(f"the audit trail lacks the trip {list(ids)} "
                            f"(has {recorded_trips})")
    if expect.mode is Mode.FAULT and not any(set(ids) & expect.rules
                                             for ids in recorded_trips):
        problems.append(f"no trip record naming {sorted(expect.rules)} in the audit trail")
    if mode is Mode.SAFE:
        commands = [json.loads(str(r["payload"])) for r in records if r["kind"] == "command"
                    and float(r["mono"]) >= start]
        wanted = "refused" if expect.rules else "accepted"
        if not any(p.get("command") == "select_plan" and p.get("result") == wanted
                   and (not expect.rules or any(rid in str(p.get("reason"))
                                                for rid in expect.rules))
                   for p in commands):
            problems.append(f"no {wanted} select_plan (naming the rule) in the audit trail")


def judge_truth(mode: Mode, expect: Expect, run: CaseRun, room: Room, out: dict[str, Any],
                problems: list[str], trip_at: float | None) -> None:
    t0, t1 = run.injected_at, run.ended_at
    gate = room.truth.series("beam-gate", "gate_open")
    exposing = room.truth.series("imaging", "exposing")
    if not [t for t, _ in gate if t > t0] or not [t for t, _ in exposing if t > t0]:
        problems.append("no ground truth after the injection")
        return
    at_t0 = [v for t, v in gate if t <= t0]
    if mode is Mode.TREATING:
        out["gate_open_at_injection"] = bool(at_t0) and at_t0[-1]
        if not out["gate_open_at_injection"]:
            problems.append("the gate was not open at the injection (simulator)")
        if expect.gate_closes_within_s is None:
            still_open = [v for t, v in gate if t0 < t <= t1]
            out["gate_stuck_open"] = bool(still_open) and all(still_open)
            if not out["gate_stuck_open"]:
                problems.append("a stuck gate cannot close: the simulator says it did")
        else:
            closed = settled_after(gate, t0, t1, False)
            out["gate_closed_ms"] = None if closed is None else round(closed * 1000, 1)
            out["gate_deadline_ms"] = round(expect.gate_closes_within_s * 1000)
            if closed is None:
                problems.append("the gate was not closed at the end (simulator)")
            elif closed > expect.gate_closes_within_s:
                problems.append(f"gate closed {closed * 1000:.0f} ms after the injection, "
                                f"deadline {expect.gate_closes_within_s * 1000:.0f} ms")
    else:
        opened = [t - t0 for t, v in gate if t0 < t <= t1 and v]
        out["gate_never_opened"] = not opened and not (at_t0 and at_t0[-1])
        if not out["gate_never_opened"]:
            problems.append("the gate was open after the injection (simulator)")
    if expect.xray is XrayCommand.STOP and mode is not Mode.SAFE:
        since = t0 if trip_at is None else trip_at
        stopped = settled_after(exposing, since, t1, False)
        out["xray_stopped_ms"] = None if stopped is None else round(stopped * 1000, 1)
        if stopped is None or stopped > XRAY_STOPS_WITHIN_S:
            problems.append(f"X-ray stopped (simulator) {out['xray_stopped_ms']} ms after "
                            f"the trip, deadline {XRAY_STOPS_WITHIN_S * 1000:.0f} ms")
    elif expect.xray is XrayCommand.EXPOSE:
        on = [v for t, v in exposing if t <= t1]
        out["xray_on_at_end"] = bool(on) and on[-1]
        if not on or not on[-1]:
            problems.append("the X-ray was not exposing at the end (simulator)")
    else:
        never = not any(v for t, v in exposing if t0 - 0.05 <= t <= t1)
        out["xray_never_on"] = never
        if not never:
            problems.append("the X-ray exposed in SAFE (simulator)")


@pytest.mark.asyncio
@pytest.mark.parametrize(("mode", "fault_name"), CASES,
                         ids=[f"{mode.name}-{name}" for mode, name in CASES])
async def test_fault_in_every_mode(room: Room, tmp_path: Path, mode: Mode,
                                   fault_name: str) -> None:
    expect = MATRIX[mode][fault_name]
    assert isinstance(expect, Expect)
    earlier: list[str] = []
    for attempt in (1, 2):
        try:
            run = await run_case(room, mode, fault_name, expect, tmp_path / f"run{attempt}")
        except AssertionError as exc:  # the room did not get to the mode: still a result
            if room.results is not None:
                with room.results.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"type": "case", "mode": mode.name, "fault": fault_name,
                                        "ok": False, "failure": str(exc)[:300]}) + "\n")
            raise
        truth_ok = await read_truth_until(room, run.ended_at)
        outcome = judge(mode, fault_name, expect, run, room, truth_ok)
        starved = outcome.get("max_cycle_gap_ms", 0.0) > STARVED_S * 1000
        if outcome["ok"] or not starved or attempt == 2:
            break
        earlier.append(f"starved ({outcome['max_cycle_gap_ms']:.0f} ms between two cycles): "
                       f"{outcome['failure']}")
    outcome["earlier_attempts"] = earlier
    if room.results is not None:
        with room.results.open("a", encoding="utf-8") as f:
            f.write(json.dumps(outcome) + "\n")
    assert not outcome["problems"], f"{mode.name}-{fault_name}: {outcome['problems']}"


def test_the_table_replaces_only_its_own_section(tmp_path: Path) -> None:
    """The renderer (no simulator): a row per fault, a column per mode, a failed case shown
    as such, and the page's other sections kept."""
    from tests.integration.fault_matrix_table import read_results, render, replace_section

    results = tmp_path / "matrix.jsonl"
    rows: list[dict[str, Any]] = [
        {"type": "n/a", "mode": mode.name, "fault": name, "why": entry.why}
        for mode, column in MATRIX.items() for name, entry in column.items()
        if isinstance(entry, NotApplicable)]
    rows.append({"type": "case", "mode": "SETUP", "fault": "door", "kind": "trip",
                 "final_mode": "FAULT", "rules_seen": ["IL-006"], "detected_ms": 7.0,
                 "xray_stopped_ms": 3.0, "ok": False, "failure": "audit trail lacks"})
    rows.append({"type": "run", "duration_s": 1.0, "faults": list(FAULTS)})
    results.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    section = render(*read_results(results))
    table = [line for line in section.splitlines() if line.startswith("| `")]
    assert [line.split("`")[1] for line in table] == list(FAULTS)
    assert all(line.count(" | ") == 5 for line in table)
    door = next(line for line in table if line.startswith("| `door`"))
    assert "**FAIL**: FAULT IL-006 at 7 ms" in door and "not run" in door
    assert "Failed cases: SETUP-door." in section
    page = "# Reliability\n\nintro\n\n## Fault matrix\n\nold table\n\n## Later\n\nkept\n"
    new = replace_section(page, section)
    assert "old table" not in new and new.startswith("# Reliability\n\nintro\n\n## Fault")
    assert new.endswith("## Later\n\nkept\n")
    assert replace_section("# Page\n", section) == "# Page\n\n" + section
