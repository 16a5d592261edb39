"""The interlock rules: one table of named pure predicates with stable ids.

A rule is *active* when its condition is present (the hazard is possible). Active rules deny
the permits they inhibit. Terminations end a fraction in progress and latch; interruptions
only hold the beam (or the X-ray) while they last.

When a device is lost or its data cannot be trusted, only the rule for that
(IL-001..IL-004) fires for it; rules that read the device's values stay quiet, so that the
reason shown is the real one. The lost/invalid rule denies both permits, so nothing that
depends on an unknown value can pass.

*Lost* (IL-001/IL-002, termination) means no status, no read time, or a last good read older
than ``device_stale_s``. A device whose last transaction failed (or whose session settings are
not verified yet) but whose last good read is still fresh is *degraded* (IL-030/IL-031,
interruption): the beam waits, the X-ray may go on, and the other rules keep reading the last
good status. A link that stays down goes stale and becomes lost.

Stuck gate (IL-010) and uncommanded X-ray (IL-011) are judged only from a reading *taken*
more than the actuation timeout after the command changed (``read_at - changed_at``), never
from the age of the command at ``now``: a degraded device hands the core readings up to
``device_stale_s`` old, and a reading taken before the actuator could have moved proves
nothing.

The hardware dose preset (IL-032/IL-033) is judged from its readback in the status block,
against the preset the core commanded at selection (``ActivePlan.dose_preset_mu``). The write
and its readback take a cycle or two, so a preset not confirmed yet only holds the beam
(IL-032, interruption; ARM and BEAM_ON wait for it); once it has been read back equal in
this fraction, a readback that differs is a termination (IL-033): the device was reset or
reprogrammed behind the core's back. See ``_preset_not_armed``.

Rule ids are stable: they appear in the audit trail, the safety cases and the operator's
screen. Never renumber a rule; retire it and take a new id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from syncctl.core.gating import elapsed, is_finite_number
from syncctl.core.state import CoreState, Observation
from syncctl.core.types import GateCommand, Inhibits, Mode, RuleClass, XrayCommand

BEAM = frozenset({Inhibits.BEAM})
XRAY = frozenset({Inhibits.XRAY})
BOTH = frozenset({Inhibits.BEAM, Inhibits.XRAY})

IMAGING_MODES = frozenset({Mode.SETUP, Mode.READY, Mode.TREATING, Mode.HOLD})
"""Modes in which the synchronizer may command X-ray exposure."""
FRACTION_MODES = frozenset({Mode.SETUP, Mode.READY, Mode.TREATING, Mode.HOLD, Mode.COMPLETE})
"""Modes with a plan selected: a termination here trips the fraction to FAULT."""
DELIVERY_MODES = frozenset({Mode.TREATING, Mode.HOLD})
ARMED_MODES = frozenset({Mode.SETUP, Mode.READY, Mode.TREATING, Mode.HOLD})

DOSE_EPSILON_MU = 1e-6
"""Doses are compared to within this much. The fraction dose is the difference of two
counter readings decoded to floats (0.01 MU counts): 134.7 - 124.7 is 9.999999999999986,
not 10, and a plan of 10 MU would never be reached while the firmware, at its preset,
holds the gate closed for good (the soak's stall, docs/reliability.md). 1e-6 MU is far
below any counter's resolution and far above that float error (about 1e-11 MU at 10^5 MU)."""


def dose_reached(fraction_dose_mu: float, planned_dose_mu: float) -> bool:
    """IL-014's comparison: the fraction dose is the plan's, to within ``DOSE_EPSILON_MU``."""
    return fraction_dose_mu >= planned_dose_mu - DOSE_EPSILON_MU
"""Modes in which the selected plan's hardware dose preset must be armed (IL-032/IL-033): a
plan is selected and the fraction can still go on to beam. Not COMPLETE: the fraction has
ended and only a new selection (with a new preset) leads to beam again."""


@dataclass(frozen=True, slots=True)
class Facts:
    """What a rule may look at: this step's observation and the core's state."""

    obs: Observation
    state: CoreState

    @property
    def now(self) -> float:
        return self.obs.now

    def fraction_dose_mu(self) -> float | None:
        plan = self.state.plan
        if plan is None or self.obs.beam_gate is None:
            return None
        return self.obs.beam_gate.dose_delivered_mu - plan.dose_baseline_mu

    def fraction_mas(self) -> float | None:
        plan = self.state.plan
        if plan is None or self.obs.imaging is None:
            return None
        return self.obs.imaging.cumulative_mas - plan.mas_baseline


@dataclass(frozen=True, slots=True)
class Rule:
    rule_id: str
    name: str
    description: str
    rule_class: RuleClass
    inhibits: frozenset[Inhibits]
    active: Callable[[Facts], bool]
    completes: bool = False
    """Reaching this termination during delivery ends the fraction normally (COMPLETE)."""

    @property
    def is_termination(self) -> bool:
        return self.rule_class is RuleClass.TERMINATION


# --- predicates -------------------------------------------------------------------------


def _bg_lost(f: Facts) -> bool:
    return f.obs.beam_gate_lost


def _xi_lost(f: Facts) -> bool:
    return f.obs.imaging_lost


def _bg_degraded(f: Facts) -> bool:
    return f.obs.beam_gate_degraded


def _xi_degraded(f: Facts) -> bool:
    return f.obs.imaging_degraded


def _taken_after(read_at: float | None, since: float, timeout_s: float) -> bool:
    """The reading was taken more than ``timeout_s`` after ``since`` (the command change).
    A plain subtraction on the reading's own time: a reading taken before the actuator could
    have moved proves nothing, however late it reaches the core."""
    if read_at is None or not is_finite_number(read_at):
        return False  # no reading to judge from (such a device is lost: IL-001/IL-002)
    if not is_finite_number(since):
        return True  # when the command changed is unknown: any reading may judge it
    return read_at - since > timeout_s


def _bg_invalid(f: Facts) -> bool:
    return bool(f.obs.beam_gate_invalid)


def _xi_invalid(f: Facts) -> bool:
    return bool(f.obs.imaging_invalid)


def _estop(f: Facts) -> bool:
    bg = f.obs.beam_gate
    return bg is not None and not bg.estop_released


def _door(f: Facts) -> bool:
    bg = f.obs.beam_gate
    return bg is not None and not bg.door_closed


def _chain(f: Facts) -> bool:
    bg = f.obs.beam_gate
    return bg is not None and not bg.chain_ok


def _bg_fault(f: Facts) -> bool:
    bg = f.obs.beam_gate
    return bg is not None and (bg.watchdog_tripped or bg.fault_code != 0)


def _xi_fault(f: Facts) -> bool:
    xi = f.obs.imaging
    return xi is not None and xi.fault_code != 0


def _stuck_gate(f: Facts) -> bool:
    bg = f.obs.beam_gate
    return (
        bg is not None
        and bg.gate_open_readback
        and f.state.gate is GateCommand.CLOSE
        and _taken_after(f.obs.beam_gate_read_at, f.state.gate_changed_at,
                         f.state.params.gate_actuation_timeout_s)
    )


def _uncommanded_xray(f: Facts) -> bool:
    xi = f.obs.imaging
    return (
        xi is not None
        and xi.exposing
        and f.state.xray is XrayCommand.STOP
        and _taken_after(f.obs.imaging_read_at, f.state.xray_changed_at,
                         f.state.params.xray_actuation_timeout_s)
    )


def _bg_heartbeat(f: Facts) -> bool:
    return f.obs.beam_gate is not None and (
        elapsed(f.now, f.state.beam_gate_echo_ok_at) > f.state.params.device_watchdog_timeout_s
    )


def _xi_heartbeat(f: Facts) -> bool:
    return f.obs.imaging is not None and (
        elapsed(f.now, f.state.imaging_echo_ok_at) > f.state.params.device_watchdog_timeout_s
    )


def _dose_reached(f: Facts) -> bool:
    dose = f.fraction_dose_mu()
    plan = f.state.plan
    return dose is not None and plan is not None and dose_reached(dose, plan.plan.planned_dose_mu)


def _overdose(f: Facts) -> bool:
    dose = f.fraction_dose_mu()
    plan = f.state.plan
    return (
        dose is not None
        and plan is not None
        and dose > plan.plan.planned_dose_mu + f.state.params.dose_tolerance_mu
    )


def _imaging_budget(f: Facts) -> bool:
    mas = f.fraction_mas()
    return mas is not None and mas >= f.state.params.imaging_budget_mas


def _interruption_too_long(f: Facts) -> bool:
    since = f.state.beam_denied_since
    return (
        f.state.mode in DELIVERY_MODES
        and since is not None
        and elapsed(f.now, since) > f.state.params.max_hold_s
    )


def _clock(f: Facts) -> bool:
    return f.obs.clock_fault


def _overrun(f: Facts) -> bool:
    return f.obs.cycle_overrun


def _beam_mode(f: Facts) -> bool:
    return f.state.mode is not Mode.TREATING


def _xray_mode(f: Facts) -> bool:
    return f.state.mode not in IMAGING_MODES


def _imaging_not_requested(f: Facts) -> bool:
    return not f.state.imaging_requested


def _not_exposing(f: Facts) -> bool:
    xi = f.obs.imaging
    return xi is not None and not (xi.prepared and xi.exposing)


def _frame_stale(f: Facts) -> bool:
    return f.obs.imaging is not None and f.obs.frame_age_s > f.state.params.max_frame_age_s


def _counter_frozen(f: Facts) -> bool:
    return f.obs.imaging is not None and (
        elapsed(f.now, f.state.gating.counter_changed_at) > f.state.params.max_frame_age_s
    )


def _low_confidence(f: Facts) -> bool:
    xi = f.obs.imaging
    return xi is not None and xi.tracking_confidence < f.state.params.min_confidence


def _marker_jump(f: Facts) -> bool:
    return f.state.gating.last_frame_jumped


def _outside_window(f: Facts) -> bool:
    return not f.state.gating.target_confirmed


def _bg_not_ready(f: Facts) -> bool:
    bg = f.obs.beam_gate
    return bg is not None and not bg.ready


def preset_matches(readback_mu: float, commanded_mu: float, tolerance_mu: float) -> bool:
    """The preset read back is the one commanded, within one count of its registers. A value
    that is not a finite number never matches (the validation makes it IL-003 first)."""
    if not (is_finite_number(readback_mu) and is_finite_number(commanded_mu)):
        return False
    return abs(readback_mu - commanded_mu) <= tolerance_mu


def _preset_differs(f: Facts) -> bool:
    """A plan is selected in a mode that can lead to beam (ARMED_MODES), the beam gate is
    usable, and the preset it reads back is not the one commanded for the plan."""
    bg, plan = f.obs.beam_gate, f.state.plan
    if bg is None or plan is None or f.state.mode not in ARMED_MODES:
        return False  # a lost or invalid beam gate is IL-001/IL-003's
    return not preset_matches(bg.dose_preset_mu, plan.dose_preset_mu,
                              f.state.params.dose_preset_tolerance_mu)


def _preset_not_armed(f: Facts) -> bool:
    """IL-032 (interruption). The preset commanded at selection has not been read back yet:
    the write and the poll that shows it take a cycle or two, so this only holds the beam
    (and ARM/BEAM_ON wait for it). It applies from SETUP on, so that no path to beam can skip
    it; READY, TREATING and HOLD are reached only through ARM, which it blocks. A preset that
    never arrives (the write failed, the device rebooted before confirming) keeps the beam
    off until the operator aborts and selects again, which commands the preset anew."""
    plan = f.state.plan
    return plan is not None and not plan.preset_armed and _preset_differs(f)


def _preset_lost(f: Facts) -> bool:
    """IL-033 (termination). The preset was read back armed in this fraction and now reads
    otherwise: the device rebooted (a power-up loads 0), or someone reprogrammed it. Its dose
    counter and the plan's baseline can no longer be trusted either, and with the preset gone
    the hardware backstop against overdose is gone (or, at 0, the gate never opens and the
    fraction would stall with the beam permitted). In SETUP too: the selection was made
    against a device that has since changed; a new selection reloads the preset."""
    plan = f.state.plan
    return plan is not None and plan.preset_armed and _preset_differs(f)


T = RuleClass.TERMINATION
I = RuleClass.INTERRUPTION  # noqa: E741 - reads as the IEC class letter in the table

RULES: tuple[Rule, ...] = (
    Rule("IL-001", "beam_gate_lost",
         "Beam-gate controller lost: never read, or last good read older than the stale limit",
         T, BOTH, _bg_lost),
    Rule("IL-002", "imaging_lost",
         "X-ray imaging controller lost: never read, or last good read older than the stale"
         " limit",
         T, BOTH, _xi_lost),
    Rule("IL-003", "beam_gate_data_invalid",
         "Beam-gate controller reported a malformed, out-of-range or contradictory value",
         T, BOTH, _bg_invalid),
    Rule("IL-004", "imaging_data_invalid",
         "Imaging controller reported a malformed, out-of-range or contradictory value",
         T, BOTH, _xi_invalid),
    Rule("IL-005", "emergency_stop", "Emergency stop pressed", T, BOTH, _estop),
    Rule("IL-006", "door_open", "Treatment room door open", T, BOTH, _door),
    Rule("IL-007", "interlock_chain_open", "Hard-wired beam interlock chain open",
         T, BEAM, _chain),
    Rule("IL-008", "beam_gate_fault",
         "Beam-gate controller reports a fault code or its watchdog tripped", T, BOTH, _bg_fault),
    Rule("IL-009", "imaging_fault",
         "Imaging controller reports a fault code (its watchdog included)", T, BOTH, _xi_fault),
    Rule("IL-010", "stuck_gate",
         "Gate commanded closed but read back open past the actuation timeout",
         T, BOTH, _stuck_gate),
    Rule("IL-011", "uncommanded_xray",
         "X-ray exposing although the synchronizer commanded it to stop",
         T, BOTH, _uncommanded_xray),
    Rule("IL-012", "beam_gate_heartbeat_lost",
         "Beam-gate controller has not echoed our heartbeat within its watchdog timeout",
         T, BOTH, _bg_heartbeat),
    Rule("IL-013", "imaging_heartbeat_lost",
         "Imaging controller has not echoed our heartbeat within its watchdog timeout",
         T, BOTH, _xi_heartbeat),
    Rule("IL-014", "planned_dose_reached", "Planned dose of the fraction delivered",
         T, BEAM, _dose_reached, completes=True),
    Rule("IL-015", "overdose", "Delivered dose exceeds the plan by more than the tolerance",
         T, BOTH, _overdose),
    Rule("IL-016", "imaging_budget_exhausted",
         "Imaging dose budget (mAs) of the fraction used up", T, XRAY, _imaging_budget),
    Rule("IL-017", "interruption_too_long",
         "Beam held (pause or gating) longer than the maximum hold duration",
         T, BEAM, _interruption_too_long),
    Rule("IL-018", "clock_fault",
         "Controller time went backwards, is not finite, or jumped beyond the step limit",
         T, BOTH, _clock),
    Rule("IL-019", "control_cycle_overrun",
         "Controller missed its cycle deadline repeatedly: its decisions are not timely",
         T, BOTH, _overrun),
    Rule("IL-020", "beam_mode", "Beam only in TREATING", I, BEAM, _beam_mode),
    Rule("IL-021", "xray_mode", "X-ray only in SETUP, READY, TREATING or HOLD",
         I, XRAY, _xray_mode),
    Rule("IL-022", "imaging_not_requested", "Imaging not requested by the operator",
         I, BEAM, _imaging_not_requested),
    Rule("IL-023", "imaging_not_exposing", "Imaging controller is not prepared and exposing",
         I, BEAM, _not_exposing),
    Rule("IL-024", "frame_stale", "Latest frame older than the frame-age limit",
         I, BEAM, _frame_stale),
    Rule("IL-025", "frame_counter_frozen",
         "Frame counter has not advanced within the frame-age limit", I, BEAM, _counter_frozen),
    Rule("IL-026", "low_confidence", "Tracking confidence below the minimum",
         I, BEAM, _low_confidence),
    Rule("IL-027", "marker_jump", "Target moved further between two frames than is plausible",
         I, BEAM, _marker_jump),
    Rule("IL-028", "target_not_confirmed",
         "Target not confirmed inside the gating window (with hysteresis and frame count)",
         I, BEAM, _outside_window),
    Rule("IL-029", "beam_gate_not_ready", "Beam-gate controller not ready",
         I, BEAM, _bg_not_ready),
    Rule("IL-030", "beam_gate_degraded",
         "Beam-gate controller degraded: last transaction failed or settings not verified"
         " (last good read still fresh)",
         I, BEAM, _bg_degraded),
    Rule("IL-031", "imaging_degraded",
         "Imaging controller degraded: last transaction failed or settings not verified"
         " (last good read still fresh)",
         I, BEAM, _xi_degraded),
    Rule("IL-032", "dose_preset_not_armed",
         "Hardware dose preset of the selected plan not yet read back from the beam-gate"
         " controller as commanded",
         I, BEAM, _preset_not_armed),
    Rule("IL-033", "dose_preset_lost",
         "Hardware dose preset read back armed, now differs from the one commanded (device"
         " rebooted or reprogrammed)",
         T, BOTH, _preset_lost),
)

RULES_BY_ID: dict[str, Rule] = {rule.rule_id: rule for rule in RULES}
MODE_RULE_IDS = frozenset({"IL-020", "IL-021"})
"""Rules that only say which modes allow a permit: shown in denials, never as alarms."""


def active_rules(facts: Facts, rules: tuple[Rule, ...] = RULES) -> tuple[Rule, ...]:
    """Every rule whose condition is present, in table order."""
    return tuple(rule for rule in rules if rule.active(facts))


def rule_table_markdown(rules: tuple[Rule, ...] = RULES) -> str:
    """The rule table as Markdown, for docs/interlock-rules.md (generated, never hand-edited)."""
    lines = [
        "| id | name | class | inhibits | description |",
        "|---|---|---|---|---|",
    ]
    for rule in rules:
        inhibits = " + ".join(sorted(i.value for i in rule.inhibits))
        klass = rule.rule_class.value + (" (completes the fraction)" if rule.completes else "")
        lines.append(
            f"| {rule.rule_id} | `{rule.name}` | {klass} | {inhibits} | {rule.description} |"
        )
    return "\n".join(lines) + "\n"
