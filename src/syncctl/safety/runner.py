"""Run one QA scenario against the simulators, over real transports, and judge it.

As ``syncctl demo`` does: the simulators run as their own process (the beam-gate controller on
Modbus TCP over loopback, the imaging controller on Modbus RTU over a pty), the controller
runs here with the real device clients, and faults go in through the simulators' backdoor. The
audit trail (one SQLite file per scenario) and the fraction recorder are attached.

The runner drives the operator commands that bring the room to the scenario's initial mode,
carries out its steps in order, lets the room run a short tail, stops, and judges:

- **reaction times** from the trigger (the backdoor fault as the simulator recorded it in its
  ground truth, or the moment the runner hung the loop, jumped the clock...) to the
  simulator's observed safe state: the gate really closed, the X-ray really stopped; and to
  the controller reading the gate back closed;
- the controller's reports: final mode, trips, the beam's denial, refused commands;
- the audit file: the records the scenario names must be in it.

Every check becomes a ``Check`` with a sentence that explains a failure; a scenario passes when
all of them pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymodbus.client import AsyncModbusTcpClient

from syncctl.analysis.truth import read_truth_rows
from syncctl.audit import AuditListener, AuditTrail, read_records
from syncctl.cli.faults import FAULTS, Fault, parse_fault
from syncctl.cli.simproc import SimulatorError, start_simulators
from syncctl.config import ConfigError, RoomConfig, config_hash, encode, load_room
from syncctl.config.backdoor import BackdoorLayout, load_backdoor_layout
from syncctl.controller import Controller, ControllerReport, step_interval_s
from syncctl.core import (
    RULES,
    TERMINATION_REFUSAL,
    Command,
    CommandKind,
    CommandResult,
    EventKind,
    Mode,
    Rule,
    XrayCommand,
)
from syncctl.devices import BeamGateClient, ImagingClient
from syncctl.recording import SUFFIX, FractionRecorder, header_for
from syncctl.safety.scenarios import RuleSet, Scenario, Step

OPERATOR = "qa-scenario"
TAIL_S = 0.3
"""Run on this long after the last step, so that a last command is answered and the ground
truth records the final state."""
RETRY_S = 0.1
MAX_DRIVE_COMMANDS = 60
MAX_SETUP_FAULTS = 2
"""Trips during set-up the runner acknowledges and resets before it gives up."""
SETUP_SETTLE_S = 0.3
"""Imaging time in SETUP before the runner arms (tracking settles, as positioning would)."""
POLL_S = 0.005
"""The period of the runner's waits (each bounded by its timeout)."""


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class Reaction:
    """One measured reaction time against its deadline."""

    what: str
    measured_ms: float | None
    """None: the safe state was never observed."""
    deadline_ms: float
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.measured_ms is not None and self.measured_ms <= self.deadline_ms

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "measured_ms": self.measured_ms,
                "deadline_ms": self.deadline_ms, "ok": self.ok, "note": self.note}


@dataclass
class ScenarioResult:
    scenario: Scenario
    file: Path
    checks: list[Check] = field(default_factory=list)
    reactions: list[Reaction] = field(default_factory=list)
    final_mode: str = ""
    trips: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[dict[str, str]] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    config_hash: str = ""
    audit_file: Path | None = None
    recording_file: Path | None = None
    safe_state_confirmed: bool | None = None
    rules_removed: list[str] = field(default_factory=list)
    error: str | None = None
    """The scenario could not be carried out (simulators did not start, a step timed out)."""
    reached_initial_mode: bool = False
    """The room got to the scenario's initial mode and the steps started."""
    max_cycle_gap_ms: float | None = None
    """The longest time between two control cycles of the run (a starved or hung process)."""
    earlier_attempts: list[str] = field(default_factory=list)
    """Why earlier attempts were not carried out (see ``syncctl.safety.suite``: an attempt
    that never reached the initial mode is repeated once)."""

    @property
    def passed(self) -> bool:
        return self.error is None and all(c.ok for c in self.checks) and bool(self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    @property
    def slowest(self) -> Reaction | None:
        """The longest measured reaction time."""
        timed = [r for r in self.reactions if r.measured_ms is not None]
        return max(timed, key=lambda r: r.measured_ms or 0.0, default=None)

    def to_json(self) -> dict[str, Any]:
        s = self.scenario
        return {
            "id": s.id, "title": s.title, "hazards": list(s.hazards), "file": str(self.file),
            "passed": self.passed, "error": self.error, "duration_s": round(self.duration_s, 3),
            "room": s.room, "plan": s.plan, "seed": s.seed, "config_hash": self.config_hash,
            "initial_mode": s.initial_mode, "final_mode": self.final_mode,
            "reactions": [r.to_json() for r in self.reactions],
            "checks": [c.to_json() for c in self.checks],
            "trips": self.trips, "refusals": self.refusals,
            "safe_state_confirmed": self.safe_state_confirmed,
            "rules_removed": self.rules_removed,
            "reached_initial_mode": self.reached_initial_mode,
            "max_cycle_gap_ms": self.max_cycle_gap_ms,
            "earlier_attempts": self.earlier_attempts,
            "audit_file": None if self.audit_file is None else str(self.audit_file),
            "recording_file": None if self.recording_file is None else str(self.recording_file),
            "timeline": self.timeline,
        }


class ScenarioAborted(Exception):
    """A step could not be carried out (a wait that timed out, the room never got ready)."""


# -- what the controller reports -----------------------------------------------------------------


@dataclass
class Observer:
    """A controller listener that keeps what the judgement needs, and can slow cycles down."""

    started: float = field(default_factory=time.monotonic)
    mode: Mode = Mode.OFFLINE
    in_steps: bool = False
    trips: list[tuple[float, tuple[str, ...], bool]] = field(default_factory=list)
    """(time, rule ids, during the steps) of every trip."""
    results: list[tuple[float, CommandResult, bool]] = field(default_factory=list)
    readback: list[tuple[float, bool | None]] = field(default_factory=list)
    """(time, gate read back open; None when the reading is not healthy), at each change."""
    last: ControllerReport | None = None
    dose_baseline_mu: float | None = None
    timeline: list[str] = field(default_factory=list)
    slow_remaining: int = 0
    slow_each_s: float = 0.0
    max_gap_s: float = 0.0
    """The longest time between two control cycles, hangs and slowed cycles included: a
    starved process shows here."""
    _key: tuple[Any, ...] | None = None
    _previous: float | None = None

    def readback_open(self) -> bool | None:
        return self.readback[-1][1] if self.readback else None

    def __call__(self, report: ControllerReport) -> None:
        now = time.monotonic()
        if self._previous is not None:
            self.max_gap_s = max(self.max_gap_s, now - self._previous)
        self._previous = now
        self.last = report
        self.mode = report.state.mode
        if report.state.plan is not None:
            self.dose_baseline_mu = report.state.plan.dose_baseline_mu
        bg = report.snapshot.beam_gate
        rb = bg.status.gate_open_readback if bg.healthy and bg.status is not None else None
        if not self.readback or self.readback[-1][1] != rb:
            self.readback.append((now, rb))
        trips: list[str] = []
        for event in report.outputs.events:
            if event.kind is EventKind.TRIP:
                self.trips.append((now, event.rule_ids, self.in_steps))
                trips += event.rule_ids
        result = report.outputs.command_result
        if result is not None:
            self.results.append((now, result, self.in_steps))
        key = (self.mode, report.outputs.beam_permit.denied_by, report.outputs.xray, rb)
        if (key != self._key or trips or result is not None) and len(self.timeline) < 200:
            self._key = key
            line = (f"{now - self.started:7.3f} s  {self.mode.name:<8} gate readback "
                    f"{'-' if rb is None else 'open' if rb else 'closed'}, x-ray "
                    f"{report.outputs.xray.value}, beam denied by "
                    f"{list(report.outputs.beam_permit.denied_by)}")
            if trips:
                line += f"; TRIP {trips}"
            if result is not None:
                line += (f"; {result.command.kind.value} "
                         f"{'accepted' if result.accepted else 'refused: ' + result.reason}")
            self.timeline.append(line)
        if self.slow_remaining > 0:
            self.slow_remaining -= 1
            time.sleep(self.slow_each_s)  # deliberately blocking: a starved control cycle


@dataclass
class Driver:
    """Brings the room to the scenario's initial mode through operator commands only, as a
    person at the console would; a refusal is retried a bounded number of times."""

    controller: Controller
    plan_id: str
    goal: Mode
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0
    gave_up: str = ""
    log: list[str] = field(default_factory=list)
    setup_faults: int = 0
    retry_s: float = RETRY_S
    """Least time between two commands (an answer comes within a cycle or two)."""
    settle_s: float = SETUP_SETTLE_S
    """Imaging time in SETUP before arming."""
    max_commands: int = MAX_DRIVE_COMMANDS
    _last_sent: float = -1e9
    _imaging_since: float | None = None
    _fault_since: float | None = None
    _last_kind: CommandKind | None = None
    _clearing: bool = False

    def _send(self, kind: CommandKind, now: float, plan_id: str | None = None) -> bool:
        if now - self._last_sent < self.retry_s:
            return False
        if self.sent >= self.max_commands:
            self.gave_up = f"{kind.value}: {self.max_commands} commands sent, goal not reached"
            return False
        self.sent += 1
        self._last_sent = now
        self._last_kind = kind
        self.controller.submit(Command(kind, OPERATOR, plan_id))
        return True

    def _set_up_fault(self, what: str) -> bool:
        """Count one trip or device fault on the way to the goal; False once too many."""
        self.setup_faults += 1
        self._imaging_since = None
        self.log.append(f"set-up trip {self.setup_faults}: {what}")
        if self.setup_faults > MAX_SETUP_FAULTS:
            self.gave_up = (f"the room tripped {self.setup_faults} times on the way to "
                            f"{self.goal.name}")
            return False
        return True

    def __call__(self, report: ControllerReport) -> None:
        if self.reached.is_set():
            return
        result = report.outputs.command_result
        if result is not None:
            self.log.append(f"{result.command.kind.value} "
                            f"{'accepted' if result.accepted else 'refused: ' + result.reason}")
        state, now = report.state, time.monotonic()
        mode = state.mode
        exposing = (report.outputs.xray is XrayCommand.EXPOSE
                    and report.snapshot.imaging.status is not None
                    and report.snapshot.imaging.status.exposing)
        if mode is self.goal and (mode is not Mode.SETUP or exposing):
            self.reached.set()
            return
        if (mode is Mode.SAFE and result is not None and not result.accepted
                and result.command.kind is CommandKind.SELECT_PLAN
                and result.reason.startswith(TERMINATION_REFUSAL)):
            # A device reports a fault in SAFE (its watchdog tripped, say, before the room
            # was in use): the plan is refused until it is reset. As an operator would:
            # acknowledge, reset, select again, a bounded number of times.
            self._clearing = self._set_up_fault(result.reason)
        if mode is Mode.SAFE and self._clearing:
            kind = (CommandKind.RESET if self._last_kind is CommandKind.ACKNOWLEDGE
                    else CommandKind.ACKNOWLEDGE)
            if self._send(kind, now) and kind is CommandKind.RESET:
                self._clearing = False
        elif mode is Mode.SAFE:
            self._send(CommandKind.SELECT_PLAN, now, self.plan_id)
        elif mode is Mode.SETUP:
            if not state.imaging_requested:
                self._send(CommandKind.START_IMAGING, now)
            elif exposing:
                if self._imaging_since is None:
                    self._imaging_since = now
                if now - self._imaging_since >= self.settle_s:
                    self._send(CommandKind.ARM, now)
        elif mode is Mode.READY:
            self._send(CommandKind.BEAM_ON, now)
        elif mode is Mode.FAULT:
            # A trip during set-up (the room is not what the scenario tests yet): as an
            # operator would, acknowledge, reset and start again, a bounded number of times.
            if self._fault_since is None:
                self._fault_since = now
                self._set_up_fault(', '.join(sorted(state.latched)) or 'cleared')
            if not self.gave_up:  # acknowledge, then reset, and again while a cause is present
                kind = (CommandKind.RESET if self._last_kind is CommandKind.ACKNOWLEDGE
                        else CommandKind.ACKNOWLEDGE)
                self._send(kind, now)
        elif mode is not Mode.OFFLINE:
            self.gave_up = f"the room went to {mode.name} on the way to {self.goal.name}"
        if mode is not Mode.FAULT:
            self._fault_since = None


# -- running ----------------------------------------------------------------------------------


@dataclass
class _Run:
    """What the steps leave behind for the judgement."""

    steps_started: float = 0.0
    reached: bool = False
    trigger_at: float | None = None
    """Monotonic time of the trigger as the runner saw it (before the backdoor write)."""
    trigger_fault: Fault | None = None
    offset_s: float = 0.0
    ended_at: float = 0.0
    """Monotonic time the tail ended, just before the controller's stop (and its safe
    shutdown, which must not be mistaken for the scenario's outcome)."""


class Backdoor:
    """The simulators' backdoor, connected before the steps: a fault is then one write on an
    open connection, so that injecting it does not take the controller's event loop away
    for a connection set-up at the very moment its reaction is measured (as
    ``syncctl.cli.faults.inject``, which connects for each write, would)."""

    def __init__(self, where: dict[str, Any], layout: BackdoorLayout | None = None) -> None:
        self.where = where
        self.layout = layout or load_backdoor_layout()
        self.clients: dict[str, AsyncModbusTcpClient] = {}

    async def open(self, timeout_s: float = 2.0) -> None:
        for slot, place in self.where.items():
            client = AsyncModbusTcpClient(place["host"], port=int(place["port"]),
                                          timeout=timeout_s, retries=1)
            self.clients[slot] = client
            if not await client.connect():
                raise ScenarioAborted(f"the backdoor of {slot} ({place['host']}:"
                                      f"{place['port']}) does not answer")

    async def write(self, fault: Fault) -> None:
        client = self.clients.get(fault.slot)
        if client is None:
            raise ScenarioAborted(f"no backdoor for {fault.slot}")
        reg = self.layout.register(fault.slot, fault.register)
        words = encode(reg, fault.value, self.layout.word_order)
        response = await client.write_registers(reg.address, words, device_id=self.layout.unit)
        if response.isError():
            raise ScenarioAborted(f"the backdoor refused {fault.slot}.{fault.register}="
                                  f"{fault.value:g}: {response}")

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


async def _wait_until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / POLL_S) + 2):
        if predicate():
            return True
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(POLL_S)
    return predicate()


async def _do_step(step: Step, index: int, scenario: Scenario, run: _Run, observer: Observer,
                   controller: Controller, backdoor: Backdoor, deadline: float) -> None:
    action = step.action
    is_trigger = index == scenario.trigger_index
    remaining = max(0.0, deadline - time.monotonic())
    if action == "wait_s":
        assert step.wait_s is not None
        await asyncio.sleep(min(step.wait_s, remaining))
    elif action == "wait_for_gate":
        want = step.wait_for_gate == "open"
        if not await _wait_until(lambda: observer.readback_open() is want,
                                 min(step.timeout_s, remaining)):
            raise ScenarioAborted(f"step {index + 1}: the gate was not read back "
                                  f"{step.wait_for_gate} within {step.timeout_s:g} s "
                                  f"(mode {observer.mode.name})")
    elif action == "wait_for_mode":
        want_mode = Mode[str(step.wait_for_mode)]
        if not await _wait_until(lambda: observer.mode is want_mode,
                                 min(step.timeout_s, remaining)):
            raise ScenarioAborted(f"step {index + 1}: mode {want_mode.name} not reached "
                                  f"within {step.timeout_s:g} s (mode {observer.mode.name})")
    elif action == "command":
        kind = CommandKind(str(step.command))
        plan = (step.plan or scenario.plan) if kind is CommandKind.SELECT_PLAN else None
        controller.submit(Command(kind, OPERATOR, plan))
    elif action in ("fault", "backdoor"):
        fault = FAULTS[str(step.fault)] if step.fault is not None else parse_fault(
            str(step.backdoor))
        if is_trigger:
            run.trigger_at, run.trigger_fault = time.monotonic(), fault
        await backdoor.write(fault)
    elif action == "clock_jump_s":
        assert step.clock_jump_s is not None
        if is_trigger:
            run.trigger_at = time.monotonic()
        run.offset_s += step.clock_jump_s
    elif action == "hang_s":
        assert step.hang_s is not None
        if is_trigger:
            run.trigger_at = time.monotonic()
        time.sleep(step.hang_s)  # deliberately blocking: the controller's loop hangs
    elif action == "slow_cycles":
        assert step.slow_cycles is not None
        if is_trigger:
            run.trigger_at = time.monotonic()
        observer.slow_each_s = step.slow_cycles.each_ms / 1000
        observer.slow_remaining = step.slow_cycles.count


def _sim_args(scenario: Scenario, workdir: Path) -> list[str]:
    args = ["--seed", str(scenario.seed), "--truth", str(workdir / "truth"),
            "--beam-gate-port", "0", "--imaging-link", str(workdir / "xic"),
            "--backdoor-port", "0"]
    sim = scenario.simulator
    for flag, value in (("--dose-rate", sim.dose_rate_mu_per_s),
                        ("--spill-on-s", sim.spill_on_s), ("--spill-off-s", sim.spill_off_s)):
        if value is not None:
            args += [flag, repr(value)]
    return args


def _fresh_workdir(workdir: Path) -> None:
    """The scenario's own directory, emptied of an earlier run (its audit trail would
    otherwise continue the old chain)."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)


async def run_scenario(scenario: Scenario, file: Path, out_dir: Path, root: Path = Path("."),
                       rules: Sequence[Rule] = RULES) -> ScenarioResult:
    """Run one scenario; its audit trail, recording, ground truth and simulator log go into
    ``out_dir/<id>/``. ``rules`` replaces the interlock rule table (QA's weakened-rule
    demonstration only). Never raises for a failing scenario: the result says why."""
    started = time.monotonic()
    result = ScenarioResult(scenario, file)
    result.rules_removed = sorted({r.rule_id for r in RULES} - {r.rule_id for r in rules})
    workdir = out_dir / scenario.id
    _fresh_workdir(workdir)
    try:
        config = load_room(root / scenario.room)
    except ConfigError as exc:
        _judge_config_refused(scenario, result, exc)
        result.duration_s = time.monotonic() - started
        return result
    result.config_hash = config_hash(config)
    if scenario.expect.config_refused is not None:
        result.checks.append(Check("config refused", False,
                                   f"{scenario.room} was accepted; expected it refused with "
                                   f"{scenario.expect.config_refused!r}"))
        result.duration_s = time.monotonic() - started
        return result
    if config.to_core_params().plan(scenario.plan) is None:
        result.error = f"plan {scenario.plan!r} is not in {scenario.room}"
        return result
    try:
        await _run_in_room(scenario, config, workdir, tuple(rules), result)
    except SimulatorError as exc:
        result.error = f"the simulators did not start: {exc}"
    result.duration_s = time.monotonic() - started
    return result


def _judge_config_refused(scenario: Scenario, result: ScenarioResult, exc: ConfigError) -> None:
    errors = [str(i) for i in exc.issues]
    want = scenario.expect.config_refused
    result.timeline = errors
    if want is None:
        result.error = f"{scenario.room} is not a valid room file: {errors[0]}"
        return
    hit = [e for e in errors if want in e]
    result.checks.append(Check(
        "config refused", bool(hit),
        f"refused with {hit[0]!r}" if hit else
        f"refused, but no error contains {want!r}: {errors}"))
    result.final_mode = "not started"


async def _run_in_room(scenario: Scenario, config: RoomConfig, workdir: Path,
                       rules: tuple[Rule, ...], result: ScenarioResult) -> None:
    deadline = time.monotonic() + scenario.timeout_s
    run = _Run()
    audit_path = workdir / "audit.sqlite"
    recording_path = workdir / f"recording{SUFFIX}"
    result.audit_file, result.recording_file = audit_path, recording_path
    with (workdir / "simulators.log").open("w", encoding="utf-8") as sim_log:
        sim = start_simulators(config.path, _sim_args(scenario, workdir), stderr=sim_log)
        beam_gate = imaging = None
        trail: AuditTrail | None = None
        recorder: FractionRecorder | None = None
        backdoor: Backdoor | None = None
        observer = Observer()
        try:
            trail = AuditTrail(audit_path, room=config.room.room.id)
            backdoor = Backdoor(sim.ready["backdoor"])
            runtime = config.with_endpoints(sim.ready["beam_gate"], sim.ready["imaging"])
            devices, limits = runtime.room.devices, runtime.room.limits

            def clock() -> float:
                """The process's clock, which a clock_jump_s step shifts (for the controller
                and the device clients alike, as a jump of the machine's clock would)."""
                return time.monotonic() + run.offset_s

            beam_gate = BeamGateClient(runtime, clock=clock)
            imaging = ImagingClient(runtime, clock=clock)
            params = config.to_core_params()
            controller = Controller(
                params, beam_gate, imaging,
                period_s=devices.beam_gate.poll_period_ms / 1000,
                imaging_period_s=devices.imaging.poll_period_ms / 1000,
                deadline_s=limits.cycle_deadline_ms / 1000,
                max_consecutive_overruns=limits.max_consecutive_overruns,
                clock=clock,
                rules=rules,
                max_step_interval_s=step_interval_s(params),  # test what ships
                frame_period_s=1.0 / devices.imaging.frame_rate_fps,
            )
            audit = AuditListener(trail, config.room.room.id)
            audit.record_config(config)
            recorder = FractionRecorder(recording_path, header_for(
                config, controller.state, source="safety-run", plan_id=scenario.plan,
                seed=scenario.seed))
            driver = Driver(controller, scenario.plan, Mode[scenario.initial_mode])
            controller.listeners += [recorder, audit, observer, driver]
            stop = asyncio.Event()
            task = asyncio.create_task(controller.run(stop), name=f"scenario-{scenario.id}")
            try:
                await backdoor.open()
                await _drive_and_step(scenario, run, observer, driver, controller,
                                      backdoor, deadline, task)
                await asyncio.sleep(TAIL_S)
            except ScenarioAborted as exc:
                result.error = str(exc)
            finally:
                run.ended_at = time.monotonic()
                stop.set()
                try:
                    result.safe_state_confirmed = await asyncio.wait_for(task, 15)
                except Exception as exc:  # a controller failure fails the scenario
                    result.error = f"the controller failed: {exc!r}" + (
                        f" ({result.error})" if result.error else "")
        finally:
            if backdoor is not None:
                backdoor.close()
            for client in (beam_gate, imaging):
                if client is not None:
                    await client.close()
            sim.stop()
            truth_rows = read_truth_rows(workdir / "truth")
            if recorder is not None:
                for device, rows in truth_rows.items():
                    for row in rows:
                        recorder.add({"type": "truth", "device": device, "row": row})
                recorder.close()
            if trail is not None:
                trail.close()
    result.timeline = observer.timeline
    result.reached_initial_mode = run.reached
    result.max_cycle_gap_ms = round(observer.max_gap_s * 1000, 1)
    _judge(scenario, result, run, observer, truth_rows, read_records(audit_path))


async def _drive_and_step(scenario: Scenario, run: _Run, observer: Observer, driver: Driver,
                          controller: Controller, backdoor: Backdoor, deadline: float,
                          task: asyncio.Task[bool]) -> None:
    def ready_or_stuck() -> bool:
        return driver.reached.is_set() or bool(driver.gave_up) or task.done()

    await _wait_until(ready_or_stuck, max(0.0, deadline - time.monotonic()))
    if task.done():  # its exception, if any, is reported when the run task is awaited
        raise ScenarioAborted("the controller stopped before the steps")
    if not driver.reached.is_set():
        raise ScenarioAborted(
            f"the room did not reach {scenario.initial_mode}: "
            f"{driver.gave_up or 'timed out'} (mode {observer.mode.name}; operator: "
            f"{'; '.join(driver.log[-5:])})")
    controller.listeners.remove(driver)
    run.reached = True
    run.steps_started = time.monotonic()
    observer.in_steps = True
    observer.timeline.append(f"{run.steps_started - observer.started:7.3f} s  "
                             f"{scenario.initial_mode} reached: steps start")
    for index, step in enumerate(scenario.steps):
        if time.monotonic() >= deadline:
            raise ScenarioAborted(f"scenario timeout ({scenario.timeout_s:g} s) at step "
                                  f"{index + 1}")
        observer.timeline.append(f"{time.monotonic() - observer.started:7.3f} s  step "
                                 f"{index + 1}: {step.describe()}")
        await _do_step(step, index, scenario, run, observer, controller, backdoor, deadline)


# -- judging ----------------------------------------------------------------------------------


def _truth_series(rows: dict[str, list[dict[str, Any]]], device: str, key: str
                  ) -> list[tuple[float, bool]]:
    return sorted((float(r["t"]), bool(r[key])) for r in rows.get(device, [])
                  if r.get("type") == "state" and key in r)


def _settled_after(series: Sequence[tuple[float, bool | None]], t0: float, value: bool
                   ) -> tuple[float | None, bool | None]:
    """(seconds from t0 until the series took ``value`` for good, i.e. the last change to
    ``value`` with no other value after it; the value at t0). None when it does not end on
    ``value``; 0 when it held ``value`` from t0 on."""
    before = [v for t, v in series if t <= t0]
    at_t0 = before[-1] if before else None
    after = [(t, v) for t, v in series if t > t0]
    if not (after or before) or (after[-1][1] if after else at_t0) is not value:
        return None, at_t0
    since = t0 if at_t0 is value else -1.0
    for t, v in after:
        if v is not value:
            since = -1.0
        elif since < 0:
            since = t
    if since < 0:  # unreachable: the series ends on value
        return None, at_t0
    return since - t0, at_t0


def _fault_time(rows: dict[str, list[dict[str, Any]]], fault: Fault, after: float
                ) -> float | None:
    device = "beam-gate" if fault.slot == "beam_gate" else "imaging"
    for row in rows.get(device, []):
        if (row.get("type") == "fault" and row.get("name") == fault.register
                and float(row["t"]) >= after - 0.001):
            return float(row["t"])
    return None


def _rule_check(name: str, want: RuleSet, got: set[str]) -> Check:
    shown = sorted(got)
    if want.exact is not None:
        ok = got == set(want.exact)
        return Check(name, ok, f"{shown}" + ("" if ok else f"; expected exactly "
                                                          f"{sorted(want.exact)}"))
    problems = []
    if want.include is not None and not set(want.include) <= got:
        problems.append(f"missing {sorted(set(want.include) - got)}")
    if want.include_any is not None and not set(want.include_any) & got:
        problems.append(f"none of {sorted(want.include_any)}")
    return Check(name, not problems, f"{shown}" + (f"; {', '.join(problems)}" if problems
                                                   else ""))


def _reaction(name: str, deadline_ms: float, seconds: float | None, at_t0: bool | None,
              what_safe: str) -> Reaction:
    note = ""
    if seconds == 0.0:
        note = f"already {what_safe} at the trigger, and from then on"
    measured = None if seconds is None else round(seconds * 1000, 1)
    return Reaction(name, measured, deadline_ms, note)


def _judge(scenario: Scenario, result: ScenarioResult, run: _Run, observer: Observer,
           truth: dict[str, list[dict[str, Any]]], audit: list[dict[str, Any]]) -> None:
    expect = scenario.expect
    checks = result.checks
    result.final_mode = observer.mode.name
    result.trips = [{"at_s": round(t - run.steps_started, 3) if run.steps_started else None,
                     "rule_ids": list(ids), "during_steps": in_steps}
                    for t, ids, in_steps in observer.trips]
    result.refusals = [{"command": r.command.kind.value, "reason": r.reason}
                       for _, r, in_steps in observer.results if in_steps and not r.accepted]
    if result.error is not None:
        return
    # The run's own outcome: up to the end of the tail, before the safe shutdown.
    gate = [(t, v) for t, v in _truth_series(truth, "beam-gate", "gate_open")
            if t <= run.ended_at]
    exposing = [(t, v) for t, v in _truth_series(truth, "imaging", "exposing")
                if t <= run.ended_at]
    trigger = run.trigger_at
    if run.trigger_fault is not None and trigger is not None:
        recorded = _fault_time(truth, run.trigger_fault, trigger)
        if recorded is None:
            checks.append(Check("fault recorded", False, "the simulator's ground truth has no "
                                f"row for {run.trigger_fault.slot}."
                                f"{run.trigger_fault.register}"))
        trigger = recorded
    if expect.final_mode is not None:
        checks.append(Check("final mode", observer.mode.name == expect.final_mode,
                            f"{observer.mode.name}" + ("" if observer.mode.name ==
                                                       expect.final_mode else
                                                       f"; expected {expect.final_mode}")))
    if expect.gate is not None:
        _judge_gate(expect.gate, result, run, observer, gate, trigger)
    if expect.xray is not None:
        _judge_xray(expect.xray, result, observer, exposing, trigger)
    if expect.trips is not None:
        got = {rid for _, ids, in_steps in observer.trips if in_steps for rid in ids}
        checks.append(_rule_check("trips", expect.trips, got))
    if expect.beam_denied_by is not None:
        denied = set(observer.last.outputs.beam_permit.denied_by) if observer.last else set()
        checks.append(_rule_check("beam denied by", expect.beam_denied_by, denied))
    _judge_refusals(scenario, result, observer)
    _judge_audit(scenario, result, audit)
    if expect.delivered_dose_mu is not None:
        want = expect.delivered_dose_mu
        if not gate or observer.dose_baseline_mu is None:
            checks.append(Check("delivered dose", False, "no plan baseline or no ground truth"))
        else:
            last = [float(r["dose_mu"]) for r in truth.get("beam-gate", [])
                    if r.get("type") == "state" and "dose_mu" in r
                    and float(r["t"]) <= run.ended_at][-1]
            dose = last - observer.dose_baseline_mu
            ok = want.min_mu <= dose <= want.max_mu
            checks.append(Check("delivered dose", ok,
                                f"{dose:.4f} MU (truth)" + ("" if ok else
                                f"; expected {want.min_mu:g}..{want.max_mu:g} MU")))


def _judge_gate(want: Any, result: ScenarioResult, run: _Run, observer: Observer,
                gate: list[tuple[float, bool]], trigger: float | None) -> None:
    checks = result.checks
    if not gate:
        checks.append(Check("gate", False, "no beam-gate ground truth"))
        return
    if want.closed_within_ms is not None and trigger is not None:
        seconds, at_t0 = _settled_after(gate, trigger, False)
        reaction = _reaction("gate closed (simulator)", want.closed_within_ms, seconds, at_t0,
                             "closed")
        result.reactions.append(reaction)
        checks.append(Check("gate closed (simulator)", reaction.ok, _reaction_text(reaction)))
    if want.readback_closed_within_ms is not None and trigger is not None:
        # An unhealthy reading says nothing about the gate: only real readbacks count.
        known = [(t, v) for t, v in observer.readback if v is not None]
        seconds, at_t0 = _settled_after(known, trigger, False)
        reaction = _reaction("gate read back closed", want.readback_closed_within_ms, seconds,
                             at_t0, "read back closed")
        result.reactions.append(reaction)
        checks.append(Check("gate read back closed", reaction.ok, _reaction_text(reaction)))
    after_start = [(t, v) for t, v in gate if t >= run.steps_started]
    if want.stays_open:
        since = trigger if trigger is not None else run.steps_started
        closed = [t for t, v in gate if t >= since and not v]
        checks.append(Check("gate stays open (simulator)", not closed,
                            "open to the end, as a stuck gate must be" if not closed else
                            f"closed {1000 * (closed[0] - since):.0f} ms after the trigger"))
    elif (want.closed_at_end or want.closed_within_ms is not None
          or want.readback_closed_within_ms is not None):
        end_open = gate[-1][1]
        checks.append(Check("gate closed at the end (simulator)", not end_open,
                            "closed" if not end_open else "OPEN at the end of the run"))
    if want.never_opens:
        opened = [t for t, v in after_start if v]
        checks.append(Check("gate never opens (simulator)", not opened,
                            "never opened" if not opened else
                            f"opened {opened[0] - run.steps_started:.3f} s into the steps"))


def _judge_xray(want: Any, result: ScenarioResult, observer: Observer,
                exposing: list[tuple[float, bool]], trigger: float | None) -> None:
    checks = result.checks
    if want.stopped_within_ms is not None and trigger is not None:
        seconds, at_t0 = _settled_after(exposing, trigger, False)
        reaction = _reaction("X-ray stopped (simulator)", want.stopped_within_ms, seconds,
                             at_t0, "stopped")
        result.reactions.append(reaction)
        checks.append(Check("X-ray stopped (simulator)", reaction.ok, _reaction_text(reaction)))
    if want.state is not None:
        wanted_exposing = want.state == "exposing"
        truth_end = exposing[-1][1] if exposing else None
        command = observer.last.outputs.xray if observer.last else None
        commanded = command is XrayCommand.EXPOSE
        ok = truth_end is wanted_exposing and commanded is wanted_exposing
        checks.append(Check("X-ray at the end", ok,
                            f"simulator {'exposing' if truth_end else 'stopped'}, controller "
                            f"commands {command.value if command else '-'}"
                            + ("" if ok else f"; expected {want.state}")))


def _reaction_text(r: Reaction) -> str:
    if r.measured_ms is None:
        return f"never observed (deadline {r.deadline_ms:g} ms)"
    text = f"{r.measured_ms:g} ms (deadline {r.deadline_ms:g} ms)"
    if r.note:
        text += f"; {r.note}"
    return text if r.ok else text + ": TOO SLOW"


def _judge_refusals(scenario: Scenario, result: ScenarioResult, observer: Observer) -> None:
    refused = [r for _, r, in_steps in observer.results if in_steps and not r.accepted]
    used: set[int] = set()
    for want in scenario.expect.refusals:
        match = next((i for i, r in enumerate(refused) if i not in used
                      and r.command.kind.value == want.command
                      and want.reason_contains in r.reason), None)
        name = f"{want.command} refused"
        if match is None:
            seen = [f"{r.command.kind.value}: {r.reason}" for r in refused]
            answered = [f"{r.command.kind.value} accepted" for _, r, s in observer.results
                        if s and r.accepted and r.command.kind.value == want.command]
            result.checks.append(Check(name, False, "not refused"
                                       + (f" ({', '.join(answered)})" if answered else "")
                                       + (f"; refusals seen: {seen}" if seen else "")
                                       + (f"; expected a reason containing "
                                          f"{want.reason_contains!r}"
                                          if want.reason_contains else "")))
        else:
            used.add(match)
            result.checks.append(Check(name, True, refused[match].reason))


def _payload(record: dict[str, Any]) -> dict[str, Any]:
    with contextlib.suppress(ValueError, TypeError):
        data = json.loads(str(record["payload"]))
        if isinstance(data, dict):
            return data
    return {}


def _judge_audit(scenario: Scenario, result: ScenarioResult,
                 records: list[dict[str, Any]]) -> None:
    decoded = [(str(r["kind"]), _payload(r)) for r in records]
    for want in scenario.expect.audit:
        def matches(kind: str, payload: dict[str, Any], want: Any = want) -> bool:
            if kind != want.kind:
                return False
            ids = set(payload.get("rule_ids") or []) | set(payload.get("denied_by") or [])
            if want.rule_ids is not None and not set(want.rule_ids) <= ids:
                return False
            if want.command is not None and payload.get("command") != want.command:
                return False
            if want.result is not None and payload.get("result") != want.result:
                return False
            return want.to is None or payload.get("to") == want.to

        found = [p for k, p in decoded if matches(k, p)]
        name = "audit " + " ".join(
            str(v) for v in (want.kind, want.command, want.result, want.to,
                             want.rule_ids and ",".join(want.rule_ids)) if v)
        same_kind = sum(1 for k, _ in decoded if k == want.kind)
        result.checks.append(Check(
            name, bool(found),
            f"{len(found)} record(s) in {len(records)}" if found else
            f"no such record among {len(records)} ({same_kind} of kind {want.kind})"))
