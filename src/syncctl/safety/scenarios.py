"""QA scenarios as data: pydantic v2 models of ``safety_cases/scenarios/<id>.yaml`` and loading.

A scenario names the hazards it verifies, the room and plan, the mode to reach before its
steps (the runner drives the operator commands to get there), a list of steps carried out in
order (operator commands, backdoor faults, motion changes, waits, a controller hang or a clock
jump) and the outcomes it expects. ``syncctl.safety.runner`` runs one against the simulators;
``docs/qa.md`` describes every field for QA.

A file that cannot be read, is not YAML, has a duplicate key or does not fit the schema raises
``ScenarioError``; each issue names the file, the line and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from syncctl.cli.faults import FAULTS
from syncctl.config.backdoor import BackdoorLayout, load_backdoor_layout
from syncctl.config.errors import ConfigError, ConfigIssue
from syncctl.config.loader import pydantic_issues
from syncctl.config.yaml_source import YamlSource, load_yaml
from syncctl.safety.hazards import HAZARD_ID, RULE_ID, SCENARIO_ID

ModeName = Literal["OFFLINE", "SAFE", "SETUP", "READY", "TREATING", "HOLD", "COMPLETE", "FAULT"]
InitialMode = Literal["SAFE", "SETUP", "READY", "TREATING"]
"""The modes the runner can drive the room to before the steps."""
CommandName = Literal["select_plan", "start_imaging", "stop_imaging", "arm", "beam_on", "pause",
                      "resume", "abort", "acknowledge", "reset"]
"""The operator commands (``syncctl.core.CommandKind`` values)."""
RuleId = Annotated[str, Field(pattern=RULE_ID)]
HazardId = Annotated[str, Field(pattern=HAZARD_ID)]
Seconds = Annotated[float, Field(gt=0, le=60)]
Millis = Annotated[float, Field(gt=0, le=60_000)]

STEP_ACTIONS = ("wait_s", "wait_for_gate", "wait_for_mode", "command", "fault", "backdoor",
                "clock_jump_s", "hang_s", "slow_cycles")
"""The keys of which a step holds exactly one."""
TRIGGER_ACTIONS = ("fault", "backdoor", "clock_jump_s", "hang_s", "slow_cycles")
"""Steps a reaction time can be measured from."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SlowCycles(_Strict):
    """Make this many control cycles in a row each take ``each_ms`` longer (a starved loop)."""

    count: int = Field(ge=1, le=1000)
    each_ms: Millis


class Step(_Strict):
    """One step: exactly one action, carried out after the previous step finished."""

    wait_s: Seconds | None = None
    wait_for_gate: Literal["open", "closed"] | None = None
    """Wait until the controller reads the gate back open (closed); fails after timeout_s."""
    wait_for_mode: ModeName | None = None
    """Wait until the controller is in this mode; fails after timeout_s."""
    command: CommandName | None = None
    plan: str | None = Field(default=None, min_length=1)
    """With ``command: select_plan``: the plan id to select (default: the scenario's plan)."""
    fault: str | None = None
    """A named fault of ``syncctl.cli.faults.FAULTS`` (estop, door, stuck_gate...)."""
    backdoor: str | None = Field(default=None, pattern=r"^[a-z_]+\.[a-z_]+=-?[0-9.]+$")
    """Any backdoor register: ``slot.register=value`` (configs/registers/backdoor.yaml);
    motion changes are ``imaging.baseline_shift_z=8`` and the like."""
    clock_jump_s: float | None = Field(default=None, ge=-3600, le=3600)
    """Shift the controller's clock by this much (negative: backwards)."""
    hang_s: Seconds | None = None
    """Block the controller's event loop this long (a hung process: no cycle, no heartbeat)."""
    slow_cycles: SlowCycles | None = None
    timeout_s: Seconds = 10.0
    """For wait_for_gate and wait_for_mode."""
    trigger: bool = False
    """Measure the reaction times from this step (default: the first fault, backdoor write,
    clock jump, hang or slow-cycles step)."""
    note: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        given = [name for name in STEP_ACTIONS if getattr(self, name) is not None]
        if len(given) != 1:
            found = f"; found {', '.join(given)}" if given else ""
            raise ValueError(f"a step holds exactly one of {', '.join(STEP_ACTIONS)}{found}")
        if self.plan is not None and self.command != "select_plan":
            raise ValueError("'plan' belongs to a 'command: select_plan' step only")
        if self.trigger and given[0] not in TRIGGER_ACTIONS:
            raise ValueError(f"'trigger' marks one of {', '.join(TRIGGER_ACTIONS)}, "
                             f"not {given[0]}")
        return self

    @property
    def action(self) -> str:
        return next(name for name in STEP_ACTIONS if getattr(self, name) is not None)

    def describe(self) -> str:
        action = self.action
        value = getattr(self, action)
        if action == "command" and self.plan is not None:
            return f"command {value} {self.plan}"
        if isinstance(value, SlowCycles):
            return f"slow_cycles {value.count} x {value.each_ms:g} ms"
        return f"{action} {value}"


class Simulator(_Strict):
    """Options of the beam-gate simulator (faster spills and dose make a fraction short)."""

    dose_rate_mu_per_s: float | None = Field(default=None, gt=0, le=1000)
    spill_on_s: float | None = Field(default=None, gt=0, le=60)
    spill_off_s: float | None = Field(default=None, gt=0, le=60)


class GateExpect(_Strict):
    closed_within_ms: Millis | None = None
    """The simulator's gate (ground truth) is closed for good this soon after the trigger:
    closed from then on to the end of the run (a gate that reopens and closes again is
    measured to its last closing; one open at the end never closed)."""
    readback_closed_within_ms: Millis | None = None
    """The controller reads the gate back closed for good this soon after the trigger."""
    stays_open: bool = False
    """The gate cannot close (a stuck gate): the ground truth shows it open to the end."""
    never_opens: bool = False
    """The gate never opens, in the ground truth, once the steps start."""
    closed_at_end: bool = False
    """The simulator's gate is closed at the end of the run."""

    @model_validator(mode="after")
    def _consistent(self) -> GateExpect:
        if self.stays_open and (self.closed_within_ms or self.readback_closed_within_ms
                                or self.never_opens or self.closed_at_end):
            raise ValueError("'stays_open' contradicts a closing deadline, 'never_opens' and "
                             "'closed_at_end'")
        if not self.model_dump(exclude_defaults=True):
            raise ValueError("expect something of the gate")
        return self


class XrayExpect(_Strict):
    state: Literal["stopped", "exposing"] | None = None
    """At the end: the simulator exposing or not (and the controller's command agrees)."""
    stopped_within_ms: Millis | None = None
    """The simulator stops exposing for good this soon after the trigger (ground truth)."""


class RuleSet(_Strict):
    exact: list[RuleId] | None = None
    include: list[RuleId] | None = None
    """Every one of these."""
    include_any: list[RuleId] | None = None
    """At least one of these."""

    @model_validator(mode="after")
    def _something(self) -> RuleSet:
        if self.exact is None and self.include is None and self.include_any is None:
            raise ValueError("give 'exact', 'include' and/or 'include_any'")
        if self.exact is not None and (self.include is not None
                                       or self.include_any is not None):
            raise ValueError("'exact' stands alone")
        return self


class RefusalExpect(_Strict):
    command: CommandName
    reason_contains: str = ""


class AuditExpect(_Strict):
    """A record that must be in the audit trail: its kind and what its payload holds."""

    kind: str = Field(min_length=1)
    rule_ids: list[RuleId] | None = None
    """Every one of these in the record's rule_ids (trips) or denied_by (permit changes)."""
    command: CommandName | None = None
    result: Literal["accepted", "refused"] | None = None
    to: ModeName | None = None
    """For mode_changed: the mode entered."""


class DoseExpect(_Strict):
    min_mu: float = Field(ge=0)
    max_mu: float = Field(ge=0)
    """The fraction's dose in the ground truth (device counter minus the baseline at plan
    selection), inclusive bounds."""


class Expect(_Strict):
    final_mode: ModeName | None = None
    gate: GateExpect | None = None
    xray: XrayExpect | None = None
    trips: RuleSet | None = None
    """Rule ids of every trip during the run."""
    beam_denied_by: RuleSet | None = None
    """Rule ids denying the beam at the end."""
    refusals: list[RefusalExpect] = Field(default_factory=list)
    audit: list[AuditExpect] = Field(default_factory=list)
    delivered_dose_mu: DoseExpect | None = None
    config_refused: str | None = Field(default=None, min_length=1)
    """The room file must be refused when loaded, with an error containing this text; nothing
    is started."""

    @model_validator(mode="after")
    def _not_empty(self) -> Expect:
        if self.config_refused is not None:
            others = self.model_dump(exclude={"config_refused", "refusals", "audit"},
                                     exclude_none=True)
            if others or self.refusals or self.audit:
                raise ValueError("'config_refused' stands alone: nothing runs")
        elif not self.model_dump(exclude_none=True, exclude_defaults=True):
            raise ValueError("expect at least one outcome")
        return self


class Scenario(_Strict):
    id: str = Field(pattern=SCENARIO_ID)
    title: str = Field(min_length=1)
    description: str | None = Field(default=None, min_length=1)
    hazards: list[HazardId] = Field(min_length=1)
    """The hazards it verifies; the first names its class in the JUnit report."""
    room: str = "configs/room-sim.yaml"
    """The room file, relative to the project root."""
    plan: str = Field(default="lung-01", min_length=1)
    seed: int = Field(default=1, ge=0, le=2**31 - 1)
    simulator: Simulator = Field(default_factory=Simulator)
    initial_mode: InitialMode = "TREATING"
    steps: list[Step] = Field(default_factory=list)
    expect: Expect
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 60.0
    """The whole run, set-up included, is stopped (and failed) after this long."""

    @property
    def steps_hang(self) -> bool:
        """Whether a step stalls the controller on purpose (hang_s, slow_cycles)."""
        return any(s.hang_s is not None or s.slow_cycles is not None for s in self.steps)

    @property
    def trigger_index(self) -> int | None:
        marked = [i for i, s in enumerate(self.steps) if s.trigger]
        if marked:
            return marked[0]
        return next((i for i, s in enumerate(self.steps) if s.action in TRIGGER_ACTIONS), None)


class ScenarioError(Exception):
    """A scenario file that cannot be run: unreadable, not YAML, or not of the schema."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


@dataclass(frozen=True)
class LoadedScenario:
    file: Path
    scenario: Scenario
    source: YamlSource


def _cross_checks(source: YamlSource, scenario: Scenario, file: Path,
                  layout: BackdoorLayout) -> list[ConfigIssue]:
    """What the schema alone cannot say: the id is the file name, faults and backdoor
    registers exist, a reaction deadline has a step to be measured from."""
    issues: list[ConfigIssue] = []
    if scenario.id != file.stem:
        issues.append(source.issue(("id",), f"{scenario.id!r} is not the file name "
                                            f"{file.stem!r}"))
    for i, step in enumerate(scenario.steps):
        if step.fault is not None and step.fault not in FAULTS:
            issues.append(source.issue(("steps", i, "fault"),
                                       f"unknown fault {step.fault!r}; known: "
                                       f"{', '.join(FAULTS)}"))
        if step.backdoor is not None:
            target, _, value = step.backdoor.partition("=")
            slot, _, register = target.partition(".")
            device = next((b for k, b in layout.devices.items() if k == slot), None)
            if device is None or register not in device.registers:
                issues.append(source.issue(("steps", i, "backdoor"),
                                           f"no backdoor register {target!r} "
                                           "(configs/registers/backdoor.yaml)"))
            else:
                low, high = device.ranges.get(register, (0.0, 1.0))
                if not low <= float(value) <= high:
                    issues.append(source.issue(("steps", i, "backdoor"),
                                               f"{value} is outside {low:g}..{high:g}"))
    expect = scenario.expect
    timed = [expect.gate and (expect.gate.closed_within_ms or
                              expect.gate.readback_closed_within_ms),
             expect.xray and expect.xray.stopped_within_ms]
    if any(timed) and scenario.trigger_index is None:
        issues.append(source.issue(("expect",), "a deadline needs a step to measure it from "
                                                f"(one of {', '.join(TRIGGER_ACTIONS)})"))
    return issues


def load_scenario(path: Path | str, layout: BackdoorLayout | None = None) -> LoadedScenario:
    """Read and validate one scenario file."""
    file = Path(path)
    try:
        source = load_yaml(file)
    except ConfigError as exc:
        raise ScenarioError(exc.issues) from None
    try:
        scenario = Scenario.model_validate(source.data)
    except ValidationError as exc:
        issues = [ConfigIssue(i.file, i.path, i.line, i.message.removeprefix("Value error, "))
                  for i in pydantic_issues(source, exc, Scenario)]
        raise ScenarioError(issues) from None
    problems = _cross_checks(source, scenario, file, layout or load_backdoor_layout())
    if problems:
        raise ScenarioError(problems)
    return LoadedScenario(file, scenario, source)


def scenario_files(directory: Path) -> list[Path]:
    """The scenario files of a directory (``*.yaml``, not its sub-directories), by name."""
    return sorted(p for p in directory.glob("*.yaml") if p.is_file())
