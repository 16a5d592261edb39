"""Bite tests: every invariant is shown to fail against a deliberately broken core.

An invariant that passes against the real core proves something only if it *can* fail. Each
mutation below breaks the core in one way (a rule removed from the table, or a wrapper that
tampers with the step's inputs, state or outputs) and runs the same stateful machine
(test_stateful.CoreMachine) checking only the invariant it targets; Hypothesis must find a
counterexample within a bounded, derandomized search. A second test removes each termination
rule (IL-001..IL-019, IL-033) in turn and checks that *some* invariant notices.

These runs use their own settings (not the profile's): generation only, no shrinking, no
database, derandomized, so that they are bounded and reproducible in every profile.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from functools import partial

import pytest
from hypothesis import Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from syncctl.core import (
    RULES,
    Command,
    CommandKind,
    CoreState,
    EventKind,
    GateCommand,
    Mode,
    Outputs,
    Permit,
    RuleClass,
    Snapshot,
    XrayCommand,
    step,
)
from tests.property.invariants import INVARIANTS, InvariantViolation, StepFn
from tests.property.strategies import WORLD_FAULTS
from tests.property.test_stateful import CoreMachine, Tally

BITE_EXAMPLES = 2000
"""Upper bound per bite run; the run stops at the first counterexample (usually within
200). Generous because the seed of a dynamically built machine may differ per process."""


def bite_settings(max_examples: int = BITE_EXAMPLES) -> settings:
    return settings(
        max_examples=max_examples,
        stateful_step_count=60,
        derandomize=True,
        database=None,
        deadline=None,
        phases=(Phase.generate,),
        print_blob=False,
        # A run that fails is reported at its first failure; nothing is slow or filtered.
        suppress_health_check=(),
    )


def without(*rule_ids: str) -> StepFn:
    """The real step with these rules removed from the table."""
    return partial(step, rules=tuple(r for r in RULES if r.rule_id not in rule_ids))


# --- mutations that tamper with a step ----------------------------------------------------------


def gate_open_whenever_treating(s: CoreState, snap: Snapshot, c: Command | None,
                                now: float) -> tuple[CoreState, Outputs]:
    new, out = step(s, snap, c, now)
    if new.mode is Mode.TREATING:
        new = replace(new, gate=GateCommand.OPEN)
        out = replace(out, gate=GateCommand.OPEN, beam_permit=Permit(True, ()))
    return new, out


def xray_ignores_request(s: CoreState, snap: Snapshot, c: Command | None,
                         now: float) -> tuple[CoreState, Outputs]:
    """X-ray exposes whenever its permit is granted, requested or not."""
    new, out = step(s, snap, c, now)
    if out.xray_permit.granted:
        out = replace(out, xray=XrayCommand.EXPOSE)
        new = replace(new, xray=XrayCommand.EXPOSE)
    return new, out


def reset_without_acknowledge(s: CoreState, snap: Snapshot, c: Command | None,
                              now: float) -> tuple[CoreState, Outputs]:
    """RESET in FAULT accepted as if everything had been acknowledged."""
    if c is not None and c.kind is CommandKind.RESET and s.mode is Mode.FAULT:
        s = replace(s, acknowledged=frozenset(r.rule_id for r in RULES))
    return step(s, snap, c, now)


def reset_to_setup(s: CoreState, snap: Snapshot, c: Command | None,
                   now: float) -> tuple[CoreState, Outputs]:
    """RESET from FAULT lands in SETUP (an undeclared edge), event and all."""
    new, out = step(s, snap, c, now)
    if s.mode is Mode.FAULT and new.mode is Mode.SAFE:
        new = replace(new, mode=Mode.SETUP)
        out = replace(out, events=tuple(
            replace(e, mode_to=Mode.SETUP) if e.kind is EventKind.MODE_CHANGED else e
            for e in out.events
        ))
    return new, out


def trips_without_ids(s: CoreState, snap: Snapshot, c: Command | None,
                      now: float) -> tuple[CoreState, Outputs]:
    new, out = step(s, snap, c, now)
    out = replace(out, events=tuple(
        replace(e, rule_ids=()) if e.kind is EventKind.TRIP else e for e in out.events
    ))
    return new, out


def clock_sanitized(s: CoreState, snap: Snapshot, c: Command | None,
                    now: float) -> tuple[CoreState, Outputs]:
    """A shell that 'repairs' bad times before the core sees them: the core never sees a
    clock fault."""
    last = s.last_now
    if last is not None and (
        not math.isfinite(now) or now < last or now - last > s.params.max_time_step_s
    ):
        now = last + 0.001
    elif not math.isfinite(now):
        now = 0.0
    return step(s, snap, c, now)


def denials_without_ids(s: CoreState, snap: Snapshot, c: Command | None,
                        now: float) -> tuple[CoreState, Outputs]:
    new, out = step(s, snap, c, now)
    if not out.beam_permit.granted:
        out = replace(out, beam_permit=Permit(False, ()))
    return new, out


def raises_on_unknown_plan(s: CoreState, snap: Snapshot, c: Command | None,
                           now: float) -> tuple[CoreState, Outputs]:
    if c is not None and c.kind is CommandKind.SELECT_PLAN and s.mode is Mode.SAFE:
        known = {p.plan_id: p for p in s.params.plans}
        _ = known[c.plan_id or ""]  # KeyError for an unknown plan: the mutation
    return step(s, snap, c, now)


_CALLS = itertools.count()


def impure(s: CoreState, snap: Snapshot, c: Command | None,
           now: float) -> tuple[CoreState, Outputs]:
    """Hidden state between calls (a sequence number in the heartbeat)."""
    new, out = step(s, snap, c, now)
    if out.heartbeat is not None:
        out = replace(out, heartbeat=next(_CALLS) % 65536)
    return new, out


def abort_to_hold(s: CoreState, snap: Snapshot, c: Command | None,
                  now: float) -> tuple[CoreState, Outputs]:
    """ABORT during TREATING only pauses (keeps the plan), so RESUME brings the beam back.
    The mode change it reports, TREATING -> HOLD, is itself a legal edge."""
    if c is not None and c.kind is CommandKind.ABORT and s.mode is Mode.TREATING:
        new, out = step(s, snap, Command(CommandKind.PAUSE, c.operator), now)
        if out.command_result is not None:
            out = replace(out, command_result=replace(out.command_result, command=c))
        return new, out
    return step(s, snap, c, now)


def jump_ignored(s: CoreState, snap: Snapshot, c: Command | None,
                 now: float) -> tuple[CoreState, Outputs]:
    """Marker-jump detection switched off (no IL-027, no jump limit in gating)."""
    loose = replace(s, params=replace(s.params, max_jump_mm=math.inf))
    new, out = without("IL-027")(loose, snap, c, now)
    return replace(new, params=s.params), out


def not_ready_trips() -> StepFn:
    """IL-029 (beam gate not ready, an interruption) misclassified as a termination."""
    rules = tuple(
        replace(r, rule_class=RuleClass.TERMINATION) if r.rule_id == "IL-029" else r
        for r in RULES
    )
    return partial(step, rules=rules)


NONE: frozenset[str] = frozenset()
LOSS = frozenset({"drop", "no_status", "no_read_at", "stale", "future"})
"""Perturbations that make a device lost (never read, no read time, stale or future)."""
DEGRADE = frozenset({"unhealthy"})
"""A failed transaction: the last good status and read time kept, unhealthy."""


@dataclass(frozen=True)
class Mutation:
    name: str
    catches: str
    """The invariant that must notice."""
    step_fn: StepFn
    description: str
    faults: tuple[str, ...] = WORLD_FAULTS
    """The world faults the search may inject (focused on the hazard, for speed)."""
    kinds: frozenset[str] | None = None
    """The one-step perturbations it may apply (None: all)."""


MUTATIONS: tuple[Mutation, ...] = (
    Mutation("gate-open-whenever-treating", "INV-01", gate_open_whenever_treating,
             "gate commanded OPEN in every TREATING step, whatever the permit"),
    Mutation("no-IL-029", "INV-01", without("IL-029"), "beam-gate 'not ready' ignored",
             ("bg_not_ready",), NONE),
    Mutation("no-IL-030", "INV-01", without("IL-030"),
             "degraded beam gate ignored (beam on a failed transaction)",
             ("bg_disconnect",), DEGRADE),
    Mutation("no-IL-031", "INV-01", without("IL-031"),
             "degraded imaging ignored (beam on a failed transaction)",
             ("xi_disconnect",), DEGRADE),
    Mutation("xray-ignores-request", "INV-02", xray_ignores_request,
             "X-ray exposes without the operator's START_IMAGING"),
    Mutation("no-IL-006", "INV-02", without("IL-006"), "door-open rule removed",
             ("door",), NONE),
    Mutation("no-IL-028", "INV-03", without("IL-028"), "target confirmation ignored",
             ("target_outside",), frozenset({"target_shift"})),
    Mutation("reset-without-ack", "INV-04", reset_without_acknowledge,
             "RESET accepted before ACKNOWLEDGE", ("estop", "door"), NONE),
    Mutation("no-IL-014", "INV-05", without("IL-014"), "planned-dose rule removed",
             (), NONE),
    Mutation("no-IL-024", "INV-06", without("IL-024"), "frame-age rule removed",
             (), frozenset({"frame_old"})),
    Mutation("no-IL-025", "INV-06", without("IL-025"), "frozen-counter rule removed",
             ("counter_stuck",), NONE),
    Mutation("no-IL-001", "INV-07", without("IL-001"), "beam-gate-lost rule removed",
             ("bg_disconnect", "bg_slow_reads"), LOSS),
    Mutation("no-IL-002", "INV-07", without("IL-002"), "imaging-lost rule removed",
             ("xi_disconnect",), LOSS),
    Mutation("no-IL-016", "INV-08", without("IL-016"), "imaging-budget rule removed",
             (), frozenset({"mas_jump"})),
    Mutation("no-IL-017", "INV-09", without("IL-017"), "maximum-hold rule removed",
             ("target_outside", "low_confidence"), NONE),
    Mutation("reset-to-setup", "INV-10", reset_to_setup, "FAULT --reset--> SETUP",
             ("estop",), NONE),
    Mutation("trips-without-ids", "INV-10", trips_without_ids, "TRIP events name no rule"),
    Mutation("clock-sanitized", "INV-11", clock_sanitized,
             "bad times rewritten before the core sees them", (), NONE),
    Mutation("no-IL-018", "INV-11", without("IL-018"), "clock-fault rule removed", (), NONE),
    Mutation("denials-without-ids", "INV-12", denials_without_ids,
             "beam denials name no rule"),
    Mutation("no-IL-003-IL-004", "INV-13", without("IL-003", "IL-004"),
             "invalid-data rules removed", (), frozenset({"value"})),
    Mutation("raises-on-unknown-plan", "INV-14", raises_on_unknown_plan,
             "KeyError on SELECT_PLAN with an unknown plan id"),
    Mutation("impure", "INV-15", impure, "hidden state between calls"),
    Mutation("abort-to-hold", "INV-16", abort_to_hold,
             "ABORT during TREATING keeps the plan, RESUME restarts the beam", (), NONE),
    Mutation("jump-ignored", "INV-17", jump_ignored, "marker-jump detection switched off",
             ("marker_jump",), frozenset({"target_shift"})),
    Mutation("no-IL-005", "INV-18", without("IL-005"), "emergency-stop rule removed",
             ("estop",), NONE),
    Mutation("no-IL-007", "INV-19", without("IL-007"),
             "interlock-chain rule removed (SELECT_PLAN no longer blocked)", ("chain",), NONE),
    Mutation("not-ready-trips", "INV-20", not_ready_trips(),
             "an interruption (IL-029) misclassified as a termination", ("bg_not_ready",), NONE),
    Mutation("no-IL-032", "INV-21", without("IL-032"),
             "the dose preset readback ignored until armed (beam on a preset never loaded)",
             ("bg_preset_ignored",), NONE),
    Mutation("no-IL-032-IL-033", "INV-21", without("IL-032", "IL-033"),
             "the dose preset readback ignored altogether (beam after a reboot lost it)",
             (), frozenset({"preset_wrong", "bg_reboot"})),
)

# The hazard each termination rule guards, as world faults and perturbations that provoke it.
TERMINATION_FOCUS: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {
    "IL-001": (("bg_disconnect", "bg_slow_reads"), LOSS),
    "IL-002": (("xi_disconnect",), LOSS),
    "IL-003": ((), frozenset({"value", "missing", "dose_back"})),
    "IL-004": ((), frozenset({"value", "missing", "exposing_not_prepared", "frame_future",
                              "mas_back"})),
    "IL-005": (("estop",), NONE),
    "IL-006": (("door",), NONE),
    "IL-007": (("chain",), NONE),
    "IL-008": (("bg_fault_code", "bg_watchdog"), NONE),
    "IL-009": (("xi_fault_code",), NONE),
    "IL-010": (("stuck_gate",), frozenset({"readback_open"})),
    "IL-011": (("xray_stuck_on",), NONE),
    "IL-012": (("bg_echo_stuck",), NONE),
    "IL-013": (("xi_echo_stuck",), NONE),
    "IL-014": ((), NONE),
    "IL-015": (("beam_leak",), frozenset({"dose_jump"})),
    "IL-016": ((), frozenset({"mas_jump"})),
    "IL-017": (("target_outside", "low_confidence"), NONE),
    "IL-018": ((), NONE),
    "IL-019": (("cycle_overrun",), frozenset({"overrun"})),
    "IL-033": ((), frozenset({"preset_wrong", "bg_reboot"})),
}


def _machine(step_fn: StepFn, only: frozenset[str] | None, name: str,
             faults: tuple[str, ...] = WORLD_FAULTS,
             kinds: frozenset[str] | None = None) -> type[CoreMachine]:
    return type(name, (CoreMachine,), {
        "step_fn": staticmethod(step_fn), "only": only, "fault_pool": faults,
        "perturbation_kinds": kinds, "tally": Tally(),
    })


def _run_expecting_violation(machine: type[CoreMachine]) -> InvariantViolation:
    with pytest.raises(InvariantViolation) as caught:
        run_state_machine_as_test(machine, settings=bite_settings())
    tally = machine.tally
    assert tally is not None
    print(f"found after {tally.runs + 1} runs: {str(caught.value)[:200]}")
    return caught.value


def test_every_invariant_has_a_bite() -> None:
    bitten = {m.catches for m in MUTATIONS}
    assert bitten == {inv.inv_id for inv in INVARIANTS}


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: f"{m.catches}-{m.name}")
def test_invariant_bites_a_broken_core(mutation: Mutation) -> None:
    machine = _machine(mutation.step_fn, frozenset({mutation.catches}), "Mutant",
                       mutation.faults, mutation.kinds)
    violation = _run_expecting_violation(machine)
    assert str(violation).startswith(mutation.catches), violation


TERMINATION_IDS = tuple(r.rule_id for r in RULES if r.rule_class is RuleClass.TERMINATION)


def test_termination_ids_are_il001_to_il019_and_il033() -> None:
    """The brief named IL-001..IL-018; IL-019 (control-cycle overrun) came with the
    controller, IL-033 (dose preset lost) with the preset readback. A new termination must get
    a focus below, and so a removal test."""
    assert (*(f"IL-{i:03d}" for i in range(1, 20)), "IL-033") == TERMINATION_IDS
    assert set(TERMINATION_FOCUS) == set(TERMINATION_IDS)


@pytest.mark.parametrize("rule_id", TERMINATION_IDS)
def test_removing_a_termination_rule_is_noticed(rule_id: str) -> None:
    """With every invariant checked, a core that lacks this termination rule fails."""
    faults, kinds = TERMINATION_FOCUS[rule_id]
    machine = _machine(without(rule_id), None, f"Without{rule_id.replace('-', '')}",
                       faults, kinds)
    _run_expecting_violation(machine)


def test_the_real_core_passes_the_bite_settings() -> None:
    """The same bounded search against the real core finds nothing: the bites above are the
    mutations', not the harness's."""
    run_state_machine_as_test(_machine(step, None, "Real"), settings=bite_settings(100))

