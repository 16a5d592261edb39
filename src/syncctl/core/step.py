"""The one pure step: ``step(state, snapshot, command, now) -> (state, outputs)``.

Order inside a step, and why:

1. Check the clock. Time is an argument; a value that is not finite, goes backwards, or jumps
   further than ``max_time_step_s`` is a clock fault (IL-018), and every age is then computed
   so that it reads as too old.
2. Observe: decide for each device whether its reading is usable (read, fresh, valid) and
   whether it is degraded (usable, but its last transaction failed: the beam waits);
   update the frame history and gating; note heartbeat echoes and counters, and whether the
   selected plan's hardware dose preset has been read back armed (IL-032/IL-033).
3. Evaluate every rule. Terminations pre-empt everything: a fraction in progress trips to
   FAULT (or COMPLETE when the only one is the planned dose) *before* the command is looked at,
   so a command can never race a trip.
4. Apply the operator command through the transition table and its guards; a refusal is an
   answer with a reason, never an exception.
5. Evaluate the rules again against the resulting mode and plan and derive both permits. The
   beam permit includes every X-ray denial: no beam without the imaging that confirms the
   target. The gate is commanded open only when the beam permit is granted in this very step.
"""

from __future__ import annotations

import math
from dataclasses import replace

from syncctl.core.gating import GATING_RESET, elapsed, is_finite_number, update_gating
from syncctl.core.modes import NOT_ALLOWED, Trigger, next_mode, trigger_for
from syncctl.core.rules import (
    DELIVERY_MODES,
    FRACTION_MODES,
    MODE_RULE_IDS,
    RULES,
    RULES_BY_ID,
    Facts,
    Rule,
    active_rules,
    preset_matches,
)
from syncctl.core.state import ActivePlan, CoreState, Observation, observe
from syncctl.core.types import (
    Alarm,
    Command,
    CommandKind,
    CommandResult,
    DeviceAction,
    Event,
    EventKind,
    GateCommand,
    Inhibits,
    Mode,
    Outputs,
    Permit,
    Snapshot,
    XrayCommand,
)

UINT16 = 1 << 16

TERMINATION_REFUSAL = "termination conditions present"
"""How a refusal begins when a termination condition blocks the command (a device reports a
fault, the e-stop is pressed ...): it must be acknowledged and reset first."""


def step(
    state: CoreState,
    snapshot: Snapshot,
    command: Command | None,
    now: float,
    rules: tuple[Rule, ...] = RULES,
) -> tuple[CoreState, Outputs]:
    """Advance the core by one control step. Pure: same inputs, same outputs.

    ``rules`` exists for the bite tests, which disable one rule at a time to show that an
    invariant test then fails; production code always uses the full table.
    """
    clock_fault, now_eff = _check_clock(state, now)
    events: list[Event] = []

    # -- 2. observe -----------------------------------------------------------------------
    obs = observe(
        state, snapshot.beam_gate, snapshot.imaging, now_eff, clock_fault, snapshot.cycle_overrun
    )
    state = _absorb_observation(state, obs)

    # -- 3. terminations pre-empt -----------------------------------------------------------
    observed = state
    active = active_rules(Facts(obs, state), rules)
    terminations = [r for r in active if r.is_termination]
    state = _apply_terminations(state, terminations, now_eff, events)
    state = _maybe_come_online(state, obs, now_eff, events)

    # -- 4. the operator command --------------------------------------------------------------
    result: CommandResult | None = None
    actions: tuple[DeviceAction, ...] = ()
    dose_preset: float | None = None
    if command is not None:
        state, result, actions, dose_preset = _apply_command(
            state, obs, command, now_eff, rules, events
        )

    # -- 5. permits and commands ------------------------------------------------------------
    if state is not observed:  # a trip, a mode change or a command changed what rules see
        active = active_rules(Facts(obs, state), rules)
    xray_denied = _denials(active, state, Inhibits.XRAY)
    beam_denied = sorted(set(_denials(active, state, Inhibits.BEAM)) | set(xray_denied))
    xray_permit = Permit(granted=not xray_denied, denied_by=tuple(xray_denied))
    beam_permit = Permit(granted=not beam_denied, denied_by=tuple(beam_denied))

    gate = GateCommand.OPEN if beam_permit.granted else GateCommand.CLOSE
    xray = (
        XrayCommand.EXPOSE
        if xray_permit.granted and state.imaging_requested
        else XrayCommand.STOP
    )
    state = _record_commands(state, gate, xray, beam_permit, now_eff)
    state, heartbeat = _heartbeat(state, now_eff)

    outputs = Outputs(
        gate=gate,
        xray=xray,
        beam_permit=beam_permit,
        xray_permit=xray_permit,
        heartbeat=heartbeat,
        device_actions=actions,
        dose_preset_mu=dose_preset,
        events=tuple(events),
        alarms=_alarms(active, state),
        command_result=result,
    )
    return state, outputs


# --- 1. clock ---------------------------------------------------------------------------------


def _check_clock(state: CoreState, now: float) -> tuple[bool, float]:
    """(clock fault?, the time to compute with). A non-finite time computes as +inf, which
    makes every age infinite and so every freshness check fail."""
    if not is_finite_number(now):
        return True, math.inf
    last = state.last_now
    if last is None:
        return False, float(now)
    fault = now < last or now - last > state.params.max_time_step_s
    return fault, float(now)


# --- 2. observation -----------------------------------------------------------------------------


HEARTBEAT_HISTORY = 64
"""Heartbeat values remembered for matching echoes: 1.28 s at a 20 ms period. An echo of an
older value is not recognised, which can only make IL-012/IL-013 trip earlier (safe)."""


def _echo_sent_at(echo: int, sent: tuple[tuple[int, float], ...]) -> float | None:
    """When the heartbeat value the device echoes was decided, or None if it is not one of
    the recent values. The device may lag a few heartbeats behind (its link is polled at its
    own period, a transaction may be retried): any recent value proves it was fed then."""
    for value, at in reversed(sent):
        if value == echo:
            return at
    return None


def _later(at: float | None, before: float | None) -> float | None:
    if at is None:
        return before
    return at if before is None or at > before else before


def _absorb_observation(state: CoreState, obs: Observation) -> CoreState:
    plan = state.plan
    centre = plan.plan.target if plan is not None else None
    gating = state.gating
    if obs.clock_fault:
        gating = GATING_RESET
    else:
        gating = update_gating(gating, obs.imaging, obs.imaging_read_at, centre, state.params)

    bg_echo_ok_at = state.beam_gate_echo_ok_at
    last_dose = state.last_dose_mu
    if obs.beam_gate is not None:
        last_dose = obs.beam_gate.dose_delivered_mu
        bg_echo_ok_at = _later(
            _echo_sent_at(obs.beam_gate.heartbeat_echo, state.heartbeats_sent), bg_echo_ok_at)
    xi_echo_ok_at = state.imaging_echo_ok_at
    last_mas = state.last_mas
    if obs.imaging is not None:
        last_mas = obs.imaging.cumulative_mas
        xi_echo_ok_at = _later(
            _echo_sent_at(obs.imaging.heartbeat_echo, state.heartbeats_sent), xi_echo_ok_at)

    if (plan is not None and not plan.preset_armed and obs.beam_gate is not None
            and preset_matches(obs.beam_gate.dose_preset_mu, plan.dose_preset_mu,
                               state.params.dose_preset_tolerance_mu)):
        # The first reading since the selection that holds the commanded preset: armed for
        # the rest of the fraction (a later difference is IL-033).
        plan = replace(plan, preset_armed=True)

    last_now = state.last_now if not is_finite_number(obs.now) else obs.now
    return replace(
        state,
        plan=plan,
        gating=gating,
        beam_gate_echo_ok_at=bg_echo_ok_at,
        imaging_echo_ok_at=xi_echo_ok_at,
        last_dose_mu=last_dose,
        last_mas=last_mas,
        last_now=last_now,
    )


# --- 3. terminations ---------------------------------------------------------------------------


def _change_mode(
    state: CoreState, trigger: Trigger, now: float, events: list[Event], rule_ids: tuple[str, ...]
) -> CoreState:
    dest = next_mode(state.mode, trigger)
    if dest is NOT_ALLOWED or dest is state.mode:
        return state
    events.append(
        Event(
            kind=EventKind.MODE_CHANGED,
            at=now,
            message=f"{state.mode.name} -> {dest.name} ({trigger.value})",
            rule_ids=rule_ids,
            mode_from=state.mode,
            mode_to=dest,
        )
    )
    return replace(state, mode=dest, mode_since=now)


def _apply_terminations(
    state: CoreState, terminations: list[Rule], now: float, events: list[Event]
) -> CoreState:
    if not terminations:
        return state
    if state.mode is Mode.FAULT:
        # Still latching: a new cause after acknowledgement needs acknowledging too.
        new = frozenset(r.rule_id for r in terminations) - state.latched
        if new:
            ids = tuple(sorted(new))
            events.append(Event(EventKind.TRIP, now, _describe(ids), rule_ids=ids))
            state = replace(state, latched=state.latched | new)
        return state
    if state.mode not in FRACTION_MODES:
        # SAFE/OFFLINE: nothing is in progress to terminate; the conditions block plan
        # selection instead (see _termination_blockers) and show as alarms.
        return state

    in_delivery = state.mode in DELIVERY_MODES
    tripping = [r for r in terminations if not (r.completes and in_delivery)]
    if state.mode is Mode.COMPLETE:
        tripping = [r for r in terminations if not r.completes]
    if tripping:
        ids = tuple(r.rule_id for r in tripping)
        events.append(Event(EventKind.TRIP, now, _describe(ids), rule_ids=ids))
        state = _change_mode(state, Trigger.TRIP, now, events, ids)
        return replace(
            state,
            latched=frozenset(ids),
            acknowledged=frozenset(),
            plan=None,
            imaging_requested=False,
        )
    if in_delivery:
        ids = tuple(r.rule_id for r in terminations)
        state = _change_mode(state, Trigger.COMPLETE, now, events, ids)
        events.append(Event(EventKind.FRACTION_COMPLETE, now, "planned dose delivered", ids))
        return replace(state, imaging_requested=False)
    return state


def _maybe_come_online(
    state: CoreState, obs: Observation, now: float, events: list[Event]
) -> CoreState:
    if state.mode is not Mode.OFFLINE:
        return state
    if obs.beam_gate is None or obs.imaging is None or obs.clock_fault:
        return state
    if obs.beam_gate_degraded or obs.imaging_degraded:
        return state
    # Online also means listening: each device has echoed a heartbeat within its watchdog
    # timeout. Without this, SAFE would be announced while IL-012/IL-013 still block a plan.
    timeout = state.params.device_watchdog_timeout_s
    if (elapsed(now, state.beam_gate_echo_ok_at) > timeout
            or elapsed(now, state.imaging_echo_ok_at) > timeout):
        return state
    return _change_mode(state, Trigger.DEVICES_ONLINE, now, events, ())


# --- 4. commands ------------------------------------------------------------------------------


DEGRADED_RULE_IDS = frozenset({"IL-030", "IL-031"})
"""A device whose last transaction failed: ARM, BEAM_ON and RESUME wait for it."""


def _termination_blockers(obs: Observation, state: CoreState, rules: tuple[Rule, ...]) -> list[str]:
    active = active_rules(Facts(obs, state), rules)
    return [r.rule_id for r in active if r.is_termination]


def _resume_blockers(obs: Observation, state: CoreState, rules: tuple[Rule, ...]) -> list[str]:
    """Terminations, and a degraded device: the beam does not resume on a failing link."""
    active = active_rules(Facts(obs, state), rules)
    return [r.rule_id for r in active if r.is_termination or r.rule_id in DEGRADED_RULE_IDS]


def _readiness_blockers(obs: Observation, state: CoreState, rules: tuple[Rule, ...]) -> list[str]:
    """What keeps imaging from confirming a target, or the gate from being usable (the
    hardware dose preset not armed yet, IL-032, among them)."""
    wanted = ({"IL-022", "IL-023", "IL-024", "IL-025", "IL-026", "IL-029", "IL-032"}
              | DEGRADED_RULE_IDS)
    active = active_rules(Facts(obs, state), rules)
    return [r.rule_id for r in active if r.rule_id in wanted or r.is_termination]


def _describe(rule_ids: tuple[str, ...] | list[str]) -> str:
    return "; ".join(
        f"{rid} {RULES_BY_ID[rid].description}" if rid in RULES_BY_ID else rid for rid in rule_ids
    )


def _apply_command(
    state: CoreState,
    obs: Observation,
    command: Command,
    now: float,
    rules: tuple[Rule, ...],
    events: list[Event],
) -> tuple[CoreState, CommandResult, tuple[DeviceAction, ...], float | None]:
    kind = command.kind
    trigger = trigger_for(kind)
    dest = next_mode(state.mode, trigger)
    actions: tuple[DeviceAction, ...] = ()
    preset: float | None = None

    def refuse(reason: str) -> tuple[CoreState, CommandResult, tuple[DeviceAction, ...], None]:
        events.append(
            Event(EventKind.COMMAND_REFUSED, now, f"{kind.value} refused: {reason}")
        )
        return state, CommandResult(command, accepted=False, reason=reason), (), None

    if dest is NOT_ALLOWED:
        return refuse(f"{kind.value} is not allowed in {state.mode.name}")

    new = state
    if kind is CommandKind.SELECT_PLAN:
        plan = state.params.plan(command.plan_id) if command.plan_id else None
        if plan is None:
            return refuse(f"unknown plan {command.plan_id!r}")
        blockers = _termination_blockers(obs, state, rules)
        if blockers:
            return refuse(f"{TERMINATION_REFUSAL}: " + _describe(blockers))
        if obs.beam_gate is None or obs.imaging is None:
            return refuse("device readings are not usable")
        baseline = obs.beam_gate.dose_delivered_mu
        preset = baseline + plan.planned_dose_mu
        new = replace(
            state,
            # Not armed yet, even if this step's reading happens to hold the same value: only
            # a reading taken after the selection confirms the preset (IL-032 until then).
            plan=ActivePlan(plan, baseline, obs.imaging.cumulative_mas, preset),
            imaging_requested=False,
            gating=replace(GATING_RESET, last_counter=state.gating.last_counter,
                           counter_changed_at=state.gating.counter_changed_at),
        )
        actions = (DeviceAction.LOAD_DOSE_PRESET,)
    elif kind is CommandKind.START_IMAGING:
        new = replace(state, imaging_requested=True)
    elif kind is CommandKind.STOP_IMAGING:
        new = replace(state, imaging_requested=False)
    elif kind in (CommandKind.ARM, CommandKind.BEAM_ON):
        blockers = _readiness_blockers(obs, state, rules)
        if blockers:
            return refuse("not ready: " + _describe(blockers))
    elif kind is CommandKind.RESUME:
        blockers = _resume_blockers(obs, state, rules)
        if blockers:
            what = "device degraded" if set(blockers) <= DEGRADED_RULE_IDS else (
                TERMINATION_REFUSAL)
            return refuse(f"{what}: " + _describe(blockers))
    elif kind is CommandKind.ABORT:
        new = replace(state, plan=None, imaging_requested=False)
    elif kind is CommandKind.ACKNOWLEDGE:
        present = state.latched | frozenset(_termination_blockers(obs, state, rules))
        if state.mode is Mode.SAFE and not present:
            return refuse("nothing to acknowledge")
        new = replace(state, acknowledged=present)
        if state.mode is Mode.COMPLETE:
            new = replace(new, plan=None)
    elif kind is CommandKind.RESET:
        present = state.latched | frozenset(_termination_blockers(obs, state, rules))
        if state.mode is Mode.SAFE and not present:
            return refuse("nothing to reset")
        unacknowledged = sorted(present - state.acknowledged)
        if unacknowledged:
            return refuse("acknowledge first: " + ", ".join(unacknowledged))
        new = replace(
            state,
            latched=frozenset(),
            acknowledged=frozenset(),
            gating=GATING_RESET,
            last_dose_mu=None,
            last_mas=None,
            plan=None,
            imaging_requested=False,
        )
        actions = (DeviceAction.RESET_BEAM_GATE_FAULTS, DeviceAction.RESET_IMAGING_FAULTS)
        if state.latched:
            events.append(
                Event(EventKind.TRIP_CLEARED, now, "reset after acknowledgement",
                      tuple(sorted(state.latched)))
            )

    events.append(Event(EventKind.COMMAND_ACCEPTED, now, f"{kind.value} accepted"))
    new = _change_mode(new, trigger, now, events, ())
    return new, CommandResult(command, accepted=True, reason=""), actions, preset


# --- 5. permits -----------------------------------------------------------------------------------


def _denials(active: tuple[Rule, ...], state: CoreState, which: Inhibits) -> list[str]:
    ids = {r.rule_id for r in active if which in r.inhibits}
    ids |= state.latched
    return sorted(ids)


def _record_commands(
    state: CoreState, gate: GateCommand, xray: XrayCommand, beam: Permit, now: float
) -> CoreState:
    gate_changed_at = now if gate is not state.gate else state.gate_changed_at
    xray_changed_at = now if xray is not state.xray else state.xray_changed_at
    beam_denied_since: float | None = None
    if state.mode in DELIVERY_MODES and not beam.granted:
        beam_denied_since = state.beam_denied_since if state.beam_denied_since is not None else now
    return replace(
        state,
        gate=gate,
        gate_changed_at=gate_changed_at,
        xray=xray,
        xray_changed_at=xray_changed_at,
        beam_denied_since=beam_denied_since,
    )


def _heartbeat(state: CoreState, now: float) -> tuple[CoreState, int | None]:
    if elapsed(now, state.heartbeat_sent_at) < state.params.heartbeat_period_s:
        return state, None
    # 1..65535: never 0, the echo register's power-up value, so that a device that restarted
    # never seems to echo a heartbeat it did not receive.
    value = state.heartbeat % (UINT16 - 1) + 1
    sent = state.heartbeats_sent
    if is_finite_number(now):
        sent = (*sent[-(HEARTBEAT_HISTORY - 1):], (value, now))
    return replace(state, heartbeat=value, heartbeat_sent_at=now, heartbeats_sent=sent), value


def _alarms(active: tuple[Rule, ...], state: CoreState) -> tuple[Alarm, ...]:
    alarms: dict[str, Alarm] = {}
    for rule in active:
        # Mode rules are permits, not alarms; interruptions matter only during delivery.
        if rule.rule_id in MODE_RULE_IDS:
            continue
        if rule.is_termination or state.mode in DELIVERY_MODES:
            alarms[rule.rule_id] = Alarm(
                rule.rule_id, rule.rule_class, rule.description,
                latched=rule.rule_id in state.latched,
            )
    for rid in sorted(state.latched - alarms.keys()):
        known = RULES_BY_ID.get(rid)
        if known is not None:
            alarms[rid] = Alarm(rid, known.rule_class, known.description, latched=True)
    return tuple(alarms[k] for k in sorted(alarms))
