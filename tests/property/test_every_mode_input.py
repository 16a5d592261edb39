"""Exhaustive small cases (h2-style): every (mode x command kind) pair, and every rule of the
table enabled and disabled, each driven through the same machine and invariants as the
stateful test, deterministically.

- For each of the 8 modes and 10 command kinds, the core is brought to the mode through a
  plausible world and the command is given: whether it is accepted and where the mode ends
  must match the specification written below (from DESIGN.md section 3 and the project's
  decisions), and every invariant holds on every step on the way.
- For each rule of the table (33), a scenario that provokes the rule's condition is run twice:
  with the full table (no invariant may fail, and the rule must show up in a denial or a
  trip) and with that rule removed (some invariant must notice, except for the rules listed
  in MASKED, whose removal other rules hide; that list is a finding, reported in
  docs/safety-invariants.md).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest

from syncctl.core import (
    RULES,
    TRANSITIONS,
    Command,
    CommandKind,
    EventKind,
    GateCommand,
    Mode,
    Outputs,
    Plan,
    WindowBox,
    step,
)
from syncctl.core.types import CoreParams
from tests.property.invariants import ALLOWED_EDGES, InvariantViolation, StepFn
from tests.property.strategies import CENTRE, Perturbation, TimeStep, WorldConfig
from tests.property.test_stateful import CoreMachine

PARAMS = CoreParams(
    window=WindowBox(5.0, 5.0, 5.0),
    hysteresis_mm=1.0,
    max_frame_age_s=0.07,
    min_confidence=0.6,
    frames_required_inside=2,
    max_jump_mm=4.0,
    imaging_budget_mas=5.0,
    max_hold_s=0.3,
    gate_actuation_timeout_s=0.02,
    xray_actuation_timeout_s=0.1,
    heartbeat_period_s=0.02,
    device_watchdog_timeout_s=0.2,
    device_stale_s=0.1,
    max_time_step_s=0.5,
    dose_tolerance_mu=0.05,
    plans=(Plan("long", 100.0, CENTRE), Plan("short", 0.05, CENTRE)),
)
WORLD = WorldConfig(breathing_amplitude_mm=0.0, dose_rate_mu_per_s=2.0, confidence=0.95,
                    jump_mm=4.5)


def machine(step_fn: StepFn = step) -> CoreMachine:
    cls = type("Scenario", (CoreMachine,), {"step_fn": staticmethod(step_fn)})
    m = cls()
    m.start(PARAMS, WORLD, 0.0, False)
    return m


def tick(m: CoreMachine, n: int = 1, dt: float = 0.01, command: Command | None = None,
         p: Perturbation | None = None) -> None:
    for i in range(n):
        m._step(TimeStep(dt), command if i == 0 else None, p)


def cmd(kind: CommandKind, plan_id: str | None = None) -> Command:
    return Command(kind, "tester", plan_id)


def reach(m: CoreMachine, mode: Mode, plan_id: str = "long") -> None:
    """Bring the core to ``mode`` the way an operator would, in a healthy world (COMPLETE
    with the short plan)."""
    if mode is Mode.COMPLETE:
        plan_id = "short"
    if mode is Mode.OFFLINE:
        return
    tick(m, 2)
    if mode is Mode.SAFE:
        return
    tick(m, command=cmd(CommandKind.SELECT_PLAN, plan_id))
    tick(m, 12, command=cmd(CommandKind.START_IMAGING))
    if mode is Mode.SETUP:
        return
    tick(m, 2, command=cmd(CommandKind.ARM))
    if mode is Mode.READY:
        return
    tick(m, command=cmd(CommandKind.BEAM_ON))
    if mode is Mode.COMPLETE:
        for _ in range(200):
            if m.state.mode is Mode.COMPLETE:
                break
            tick(m)
    tick(m, 5)
    if mode is Mode.TREATING:
        assert m.state.gate is GateCommand.OPEN
    if mode is Mode.HOLD:
        tick(m, command=cmd(CommandKind.PAUSE))
    elif mode is Mode.FAULT:
        m.world.inject("estop", 3)
        tick(m, 3)
    assert m.state.mode is mode, (m.state.mode, mode)


# --- the specification: what each command does in each mode, in a healthy world ----------

K = CommandKind
ACCEPTED: dict[tuple[Mode, CommandKind], Mode] = {
    (Mode.SAFE, K.SELECT_PLAN): Mode.SETUP,
    (Mode.SETUP, K.START_IMAGING): Mode.SETUP,
    (Mode.SETUP, K.STOP_IMAGING): Mode.SETUP,
    (Mode.SETUP, K.ARM): Mode.READY,
    (Mode.SETUP, K.ABORT): Mode.SAFE,
    (Mode.READY, K.BEAM_ON): Mode.TREATING,
    (Mode.READY, K.ABORT): Mode.SAFE,
    (Mode.TREATING, K.PAUSE): Mode.HOLD,
    (Mode.TREATING, K.ABORT): Mode.SAFE,
    (Mode.HOLD, K.RESUME): Mode.TREATING,
    (Mode.HOLD, K.ABORT): Mode.SAFE,
    (Mode.COMPLETE, K.ACKNOWLEDGE): Mode.SAFE,
    (Mode.FAULT, K.ACKNOWLEDGE): Mode.FAULT,
}
"""Accepted commands and the resulting mode. Everything else is refused and the mode stays;
in particular ACKNOWLEDGE/RESET in SAFE with nothing to acknowledge, and RESET in FAULT
before ACKNOWLEDGE, are refused by their guards."""
GUARDED: frozenset[tuple[Mode, CommandKind]] = frozenset({
    (Mode.SAFE, K.ACKNOWLEDGE), (Mode.SAFE, K.RESET), (Mode.FAULT, K.RESET),
})
"""Listed in the table, refused here by their guard (nothing to acknowledge; not acknowledged)."""


def test_the_specification_matches_the_table() -> None:
    """The hand-written expectations above and the core's declared table agree: every command
    the table lists for a mode is accepted here or refused by a named guard, and nothing else
    is accepted."""
    listed = {
        (s, CommandKind(t.trigger.value))
        for t in TRANSITIONS
        for s in t.sources
        if t.trigger.value in {k.value for k in CommandKind}
    }
    assert listed == set(ACCEPTED) | GUARDED


def test_the_invariants_mode_graph_matches_the_table() -> None:
    """INV-10's hand-written edge set equals the table's mode-changing edges."""
    table = {(s, t.dest) for t in TRANSITIONS for s in t.sources
             if t.dest is not None and t.dest is not s}
    assert table == ALLOWED_EDGES


@pytest.mark.parametrize("kind", list(CommandKind), ids=lambda k: k.name)
@pytest.mark.parametrize("mode", list(Mode), ids=lambda m: m.name)
def test_every_command_in_every_mode(mode: Mode, kind: CommandKind) -> None:
    m = machine()
    reach(m, mode)
    command = cmd(kind, "long" if kind is CommandKind.SELECT_PLAN else None)
    # In OFFLINE a reading must stay unusable, or the core comes online before the command.
    p = Perturbation("drop", "imaging") if mode is Mode.OFFLINE else None
    tick(m, command=command, p=p)
    result = m.last_result
    assert result is not None and result.command == command
    expected = ACCEPTED.get((mode, kind))
    if expected is None:
        assert not result.accepted, result
        assert result.reason, "a refusal must say why"
        assert m.state.mode is mode
    else:
        assert result.accepted, result
        assert m.state.mode is expected


def test_fault_leaves_by_acknowledge_then_reset_then_needs_a_new_selection() -> None:
    m = machine()
    reach(m, Mode.FAULT)
    tick(m, command=cmd(K.RESET))
    assert m.last_result is not None and not m.last_result.accepted
    tick(m, command=cmd(K.ACKNOWLEDGE))
    tick(m, command=cmd(K.RESET))
    assert m.state.mode is Mode.SAFE and m.state.plan is None
    tick(m, 5)
    for kind in (K.ARM, K.BEAM_ON, K.RESUME, K.START_IMAGING):
        tick(m, command=cmd(kind))
        assert m.last_result is not None and not m.last_result.accepted
    assert m.state.mode is Mode.SAFE


# --- every rule, enabled and disabled ---------------------------------------------------------

Scenario = Callable[[CoreMachine], None]


def _world_fault(name: str, steps: int, n: int, dt: float = 0.01) -> Scenario:
    def run(m: CoreMachine) -> None:
        m.world.inject(name, steps)
        tick(m, n, dt)
    return run


def _perturb(p: Perturbation, n: int = 3) -> Scenario:
    def run(m: CoreMachine) -> None:
        tick(m, p=p)
        tick(m, n)
    return run


def _in_mode(mode: Mode, scenario: Scenario, plan_id: str = "long") -> Callable[[CoreMachine],
                                                                                  None]:
    def run(m: CoreMachine) -> None:
        reach(m, mode, plan_id)
        scenario(m)
    return run


def _stuck_gate(m: CoreMachine) -> None:
    reach(m, Mode.TREATING)
    m.world.inject("stuck_gate", 40)
    tick(m, command=cmd(K.PAUSE))
    tick(m, 10)


def _uncommanded_xray(m: CoreMachine) -> None:
    reach(m, Mode.SETUP)
    m.world.inject("xray_stuck_on", 40)
    tick(m, 20, command=cmd(K.STOP_IMAGING))


def _hold(m: CoreMachine) -> None:
    reach(m, Mode.TREATING)
    tick(m, 50, command=cmd(K.PAUSE))


def _dose_jump(m: CoreMachine) -> None:
    reach(m, Mode.TREATING)
    m.world.dose_mu += 150.0
    tick(m, 3)


def _mas_jump(m: CoreMachine) -> None:
    reach(m, Mode.TREATING)
    m.world.mas += 10.0
    tick(m, 3)


def _backwards(m: CoreMachine) -> None:
    reach(m, Mode.TREATING)
    m._step(TimeStep(-0.05), None, None)
    tick(m, 3)


def _complete_and_wait(m: CoreMachine) -> None:
    reach(m, Mode.COMPLETE)
    tick(m, 20)


def _wait_treating(m: CoreMachine) -> None:
    reach(m, Mode.TREATING)
    tick(m, 20)


def _ready_and_wait(m: CoreMachine) -> None:
    reach(m, Mode.READY)
    tick(m, 10)


def _preset_never_arrives(m: CoreMachine) -> None:
    """The beam gate ignores the preset write: ARM and BEAM_ON must not get through."""
    m.world.inject("bg_preset_ignored", 1000)
    reach(m, Mode.SETUP)
    tick(m, 2, command=cmd(K.ARM))
    tick(m, 2, command=cmd(K.BEAM_ON))
    tick(m, 20)


def _reboot_before_dose(m: CoreMachine) -> None:
    """The beam gate reboots in READY, before its counter has counted anything: only the
    preset readback (back to 0) shows it. The operator presses beam on."""
    reach(m, Mode.READY)
    assert m.world.dose_mu == 0.0
    tick(m, p=Perturbation("bg_reboot", "beam_gate"))
    tick(m, command=cmd(K.BEAM_ON))
    tick(m, 20)


PROVOKE: dict[str, Scenario] = {
    # A link down is degraded (IL-030/IL-031) until its last good read is older than
    # device_stale_s (100 ms): lost (IL-001/IL-002) needs a longer outage.
    "IL-001": _in_mode(Mode.TREATING, _world_fault("bg_disconnect", 20, 15)),
    "IL-002": _in_mode(Mode.TREATING, _world_fault("xi_disconnect", 20, 15)),
    "IL-003": _in_mode(Mode.TREATING, _perturb(
        Perturbation("value", "beam_gate", "dose_delivered_mu", float("nan")))),
    "IL-004": _in_mode(Mode.TREATING, _perturb(
        Perturbation("value", "imaging", "tracking_confidence", float("nan")))),
    "IL-005": _in_mode(Mode.TREATING, _world_fault("estop", 5, 5)),
    "IL-006": _in_mode(Mode.TREATING, _world_fault("door", 5, 5)),
    "IL-007": _in_mode(Mode.TREATING, _world_fault("chain", 5, 5)),
    "IL-008": _in_mode(Mode.TREATING, _world_fault("bg_fault_code", 5, 5)),
    "IL-009": _in_mode(Mode.TREATING, _world_fault("xi_fault_code", 5, 5)),
    "IL-010": _stuck_gate,
    "IL-011": _uncommanded_xray,
    "IL-012": _in_mode(Mode.TREATING, _world_fault("bg_echo_stuck", 40, 30, 0.02)),
    "IL-013": _in_mode(Mode.TREATING, _world_fault("xi_echo_stuck", 40, 30, 0.02)),
    "IL-014": _complete_and_wait,
    "IL-015": _dose_jump,
    "IL-016": _mas_jump,
    "IL-017": _hold,
    "IL-018": _backwards,
    "IL-019": _in_mode(Mode.TREATING, _world_fault("cycle_overrun", 3, 3)),
    "IL-020": _ready_and_wait,
    "IL-021": _complete_and_wait,
    "IL-022": _wait_treating,
    "IL-023": _in_mode(Mode.TREATING, _world_fault("xray_wont_expose", 10, 10)),
    "IL-024": _in_mode(Mode.TREATING, _perturb(Perturbation("frame_old", amount=500.0))),
    "IL-025": _in_mode(Mode.TREATING, _world_fault("counter_stuck", 20, 15)),
    "IL-026": _in_mode(Mode.TREATING, _world_fault("low_confidence", 10, 10)),
    "IL-027": _in_mode(Mode.TREATING, _world_fault("marker_jump", 10, 10)),
    "IL-028": _in_mode(Mode.TREATING, _world_fault("target_outside", 10, 10)),
    "IL-029": _in_mode(Mode.TREATING, _world_fault("bg_not_ready", 10, 10)),
    "IL-030": _in_mode(Mode.TREATING, _world_fault("bg_disconnect", 5, 8)),
    "IL-031": _in_mode(Mode.TREATING, _world_fault("xi_disconnect", 5, 8)),
    "IL-032": _preset_never_arrives,
    "IL-033": _reboot_before_dose,
}

MASKED: dict[str, str] = {
    "IL-021": "X-ray only exposes when imaging is requested, and the request is cleared on"
              " every way out of SETUP..HOLD (trip, complete, abort, reset)",
    "IL-022": "imaging is requested throughout TREATING (it can only be withdrawn in SETUP),"
              " and X-ray STOP then makes IL-023/IL-028 deny",
    "IL-023": "gating drops the target confirmation when imaging is not exposing (IL-028)",
    "IL-026": "gating requires the confidence for confirmation (IL-028)",
    "IL-027": "gating withdraws confirmation on a jump (IL-028)",
}
"""Rules whose removal alone no invariant notices, because another rule denies the same
thing (defence in depth). Not a hazard today; recorded so a change that makes one of them the
only guard is noticed."""


def test_every_rule_has_a_provocation() -> None:
    assert set(PROVOKE) == {r.rule_id for r in RULES}


def _run(rule_id: str, step_fn: StepFn) -> tuple[InvariantViolation | None, set[str]]:
    """Run the provocation; return the violation (if any) and every rule id that denied a
    permit or tripped on the way."""
    m = machine(step_fn)
    seen: set[str] = set()
    original = m._count

    def count(out: Outputs) -> None:
        original(out)
        seen.update(out.beam_permit.denied_by, out.xray_permit.denied_by)
        seen.update(rid for e in out.events if e.kind is EventKind.TRIP for rid in e.rule_ids)

    m._count = count  # type: ignore[method-assign]
    try:
        PROVOKE[rule_id](m)
    except InvariantViolation as violation:
        return violation, seen
    return None, seen


@pytest.mark.parametrize("rule_id", [r.rule_id for r in RULES])
def test_rule_enabled_fires_and_every_invariant_holds(rule_id: str) -> None:
    violation, seen = _run(rule_id, step)
    assert violation is None, violation
    assert rule_id in seen, f"the scenario never provoked {rule_id}: saw {sorted(seen)}"


@pytest.mark.parametrize("rule_id", [r.rule_id for r in RULES])
def test_rule_disabled_is_noticed_unless_masked(rule_id: str) -> None:
    rules = tuple(r for r in RULES if r.rule_id != rule_id)
    violation, _ = _run(rule_id, partial(step, rules=rules))
    if rule_id in MASKED:
        assert violation is None, (
            f"{rule_id} is no longer masked ({violation}): remove it from MASKED and from "
            "docs/safety-invariants.md"
        )
    else:
        assert violation is not None, f"removing {rule_id} went unnoticed"

