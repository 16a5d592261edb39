"""Replay a recorded fraction through the pure core and compare its decisions.

With the recording's own parameters the core must decide exactly what it decided then: every
output of every step, compared in its recorded (JSON) form. With other parameters (another
room configuration: a tighter window, a different threshold), the replay reports every step
where the beam permit or the X-ray permit would have differed, and what that would have meant.

The recorded snapshots are what the devices did in answer to the decisions actually taken. In
a counterfactual replay the gate readback and the X-ray "exposing" flag would contradict the
replayed commands (the real gate followed the real command), and the stuck-gate and
uncommanded-X-ray rules (IL-010, IL-011) would trip on the first difference. So a
counterfactual replay models *ideal actuators*: wherever the recorded readback cannot answer
the replayed core's command, the gate readback and the exposing flag are set to what the
replayed core commanded; where the two cores' commands agree, the recorded readback (with its
real actuation delays) is kept. Everything else (target, frames, spill, dose counter,
interlock chain) stays as recorded: where the replayed core would have closed the gate
earlier, the recorded dose counter still rose, and where it would have opened it, no dose was
really delivered. The dose figures of a counterfactual replay are therefore estimates (see
``estimate_dose``), and everything after the first mode difference says what the core would
have *permitted* on that input, not what would have
happened. The hardware dose preset is modelled the same way: where the replayed core commanded
another preset than the recorded one (another planned dose) and the recorded readback shows the
recorded one, the readback is set to the replayed core's preset. A replay with the recorded
parameters uses the snapshots untouched.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from syncctl.analysis.truth import Truth, beam_on_time, truth_from_rows
from syncctl.core import (
    RULES,
    CoreParams,
    CoreState,
    GateCommand,
    Plan,
    Position,
    Rule,
    Snapshot,
    XrayCommand,
    initial_state,
    step,
)
from syncctl.core.gating import inside_window
from syncctl.core.rules import preset_matches
from syncctl.core.types import Window
from syncctl.recording import Recording
from syncctl.recording.codec import encode_outputs


@dataclass(frozen=True)
class PermitDifference:
    """One step where a permit would have differed."""

    index: int
    t: float
    """Seconds since the first recorded step."""
    permit: str
    """"beam" or "xray"."""
    recorded: bool
    replayed: bool
    recorded_denied_by: tuple[str, ...]
    replayed_denied_by: tuple[str, ...]


@dataclass(frozen=True)
class Interval:
    """A run of consecutive steps with the same permit difference."""

    permit: str
    start_s: float
    end_s: float
    steps: int
    recorded: bool
    replayed: bool
    recorded_denied_by: tuple[str, ...]
    replayed_denied_by: tuple[str, ...]


@dataclass
class ReplayResult:
    steps: int
    identical: bool
    """Every output of every step equals the recorded one."""
    first_mismatch: int | None = None
    first_mismatch_fields: tuple[str, ...] = ()
    first_mode_difference: tuple[int, str, str] | None = None
    """(step, recorded mode, replayed mode) of the first step whose mode differs."""
    differences: list[PermitDifference] = field(default_factory=list)
    beam_permit_s: tuple[float, float] = (0.0, 0.0)
    """(recorded, replayed) seconds with the beam permit granted."""
    xray_permit_s: tuple[float, float] = (0.0, 0.0)
    dose_estimate: dict[str, Any] | None = None

    def intervals(self) -> list[Interval]:
        return group_intervals(self.differences)


def replay(rec: Recording, params: CoreParams | None = None,
           rules: tuple[Rule, ...] = RULES) -> ReplayResult:
    """Feed the recorded snapshots and commands through ``step`` and compare. With ``params``
    other than the recorded ones, actuators are modelled as ideal (module docstring)."""
    counterfactual = params is not None and params != rec.params
    params = params if params is not None else rec.params
    state = initial_state(params, rec.initial_now)
    result = ReplayResult(steps=len(rec.steps), identical=not rec.dropped)
    t0 = rec.steps[0].now if rec.steps else 0.0
    beam_rec = beam_rep = xray_rec = xray_rep = 0.0
    commanded = _RecordedCommands()
    for k, s in enumerate(rec.steps):
        snapshot = s.snapshot
        if counterfactual:
            snapshot = _ideal_actuators(snapshot, state, commanded)
        state, out = step(state, snapshot, s.command, s.now, rules)
        mine = encode_outputs(out, state.mode)
        commanded.update(s.out, s.now)
        if mine != s.out:
            if result.first_mismatch is None:
                result.first_mismatch = s.index
                result.first_mismatch_fields = tuple(
                    sorted(key for key in mine if mine[key] != s.out.get(key)))
            result.identical = False
        if result.first_mode_difference is None and mine["mode"] != s.out["mode"]:
            result.first_mode_difference = (s.index, s.out["mode"], mine["mode"])
        dt = rec.steps[k + 1].now - s.now if k + 1 < len(rec.steps) else 0.0
        for permit, key in (("beam", "beam"), ("xray", "xray_permit")):
            was, was_by = s.out[key][0], tuple(s.out[key][1])
            now_, now_by = mine[key][0], tuple(mine[key][1])
            if permit == "beam":
                beam_rec += dt * was
                beam_rep += dt * now_
            else:
                xray_rec += dt * was
                xray_rep += dt * now_
            if was != now_:
                result.differences.append(PermitDifference(
                    s.index, s.now - t0, permit, was, now_, was_by, now_by))
    result.beam_permit_s = (beam_rec, beam_rep)
    result.xray_permit_s = (xray_rec, xray_rep)
    result.dose_estimate = estimate_dose(rec, params, result)
    return result


@dataclass
class _RecordedCommands:
    """The recorded core's last gate and X-ray commands and when each last changed."""

    gate: str = GateCommand.CLOSE.value
    gate_since: float = float("-inf")
    xray: str = XrayCommand.STOP.value
    xray_since: float = float("-inf")
    preset: float | None = None
    """The last dose preset the recorded core commanded (LOAD_DOSE_PRESET)."""

    def update(self, out: dict[str, Any], now: float) -> None:
        if out["gate"] != self.gate:
            self.gate, self.gate_since = out["gate"], now
        if out["xray"] != self.xray:
            self.xray, self.xray_since = out["xray"], now
        if "load_dose_preset" in out["actions"] and out["dose_preset_mu"] is not None:
            self.preset = float(out["dose_preset_mu"])


def _ideal_actuators(snap: Snapshot, state: CoreState, recorded: _RecordedCommands) -> Snapshot:
    """The snapshot as ideal actuators would have made it wherever the recorded readback
    does not answer the replayed core's command: the commands differ, or the recorded one
    changed after the replayed one (the real gate was still moving to where the replayed core
    had sent it long before). Elsewhere the recorded readback, with its real actuation delays,
    is kept."""
    bg, xi = snap.beam_gate, snap.imaging
    if bg.status is not None and (state.gate.value != recorded.gate
                                  or recorded.gate_since > state.gate_changed_at):
        bg = replace(bg, status=replace(bg.status,
                                        gate_open_readback=state.gate is GateCommand.OPEN))
    if xi.status is not None and (state.xray.value != recorded.xray
                                  or recorded.xray_since > state.xray_changed_at):
        exposing = state.xray is XrayCommand.EXPOSE
        xi = replace(xi, status=replace(xi.status, exposing=exposing,
                                        prepared=xi.status.prepared or exposing))
    plan, tolerance = state.plan, state.params.dose_preset_tolerance_mu
    if (bg.status is not None and plan is not None and recorded.preset is not None
            and not preset_matches(plan.dose_preset_mu, recorded.preset, tolerance)
            and preset_matches(bg.status.dose_preset_mu, recorded.preset, tolerance)):
        # The recorded device holds the recorded core's preset; an ideal one would hold ours.
        bg = replace(bg, status=replace(bg.status, dose_preset_mu=plan.dose_preset_mu))
    return replace(snap, beam_gate=bg, imaging=xi)


def group_intervals(diffs: Sequence[PermitDifference]) -> list[Interval]:
    """Consecutive steps with the same difference of the same permit, as one interval."""
    out: list[Interval] = []
    open_at: dict[str, tuple[int, int]] = {}  # permit -> (last step index, position in out)
    for d in diffs:
        key = (d.recorded, d.replayed, d.recorded_denied_by, d.replayed_denied_by)
        prev = open_at.get(d.permit)
        if prev is not None and prev[0] == d.index - 1:
            iv = out[prev[1]]
            if key == (iv.recorded, iv.replayed, iv.recorded_denied_by, iv.replayed_denied_by):
                out[prev[1]] = Interval(d.permit, iv.start_s, d.t, iv.steps + 1, *key)
                open_at[d.permit] = (d.index, prev[1])
                continue
        out.append(Interval(d.permit, d.t, d.t, 1, *key))
        open_at[d.permit] = (d.index, len(out) - 1)
    return out


def _plan(rec: Recording, params: CoreParams) -> Plan | None:
    plan_id = rec.header.get("plan_id")
    return params.plan(plan_id) if isinstance(plan_id, str) else None


def estimate_dose(rec: Recording, params: CoreParams,
                  result: ReplayResult) -> dict[str, Any] | None:
    """What the beam permits of each side would have delivered, by the ground truth.

    Needs the simulators' truth in the recording. The dose rate is the one measured while the
    gate was really open during a spill; a step is counted as delivering when its beam permit
    is granted and the true spill is on. The window that judges *outside* is the recorded
    (clinical) configuration's, so both sides are judged against the same target volume.
    Gate latency is ignored on both sides, so compare the two estimates with each other.
    """
    if not rec.truth or not rec.steps:
        return None
    truth = truth_from_rows(rec.truth)
    plan = _plan(rec, rec.params)
    if plan is None or not truth.gate:
        return None
    on_s, _ = beam_on_time(truth.gate)
    delivered = truth.gate[-1].dose_mu - truth.gate[0].dose_mu
    rate = delivered / on_s if on_s > 0 else 0.0
    recorded_side = _side_estimate(rec, truth, rec.params.window, plan.target, rate,
                                   [bool(s.out["beam"][0]) for s in rec.steps])
    replayed_side = _replayed_permits(rec, result)
    replay_side = _side_estimate(rec, truth, rec.params.window, plan.target, rate,
                                 replayed_side)
    return {"dose_rate_mu_per_s": round(rate, 4), "recorded": recorded_side,
            "replayed": replay_side}


def _replayed_permits(rec: Recording, result: ReplayResult) -> list[bool]:
    flips = {d.index: d.replayed for d in result.differences if d.permit == "beam"}
    return [flips.get(s.index, bool(s.out["beam"][0])) for s in rec.steps]


def _side_estimate(rec: Recording, truth: Truth, window: Window, centre: Position, rate: float,
                   permits: list[bool]) -> dict[str, float]:
    spill_t = [g.t for g in truth.gate]
    total = outside = 0.0
    for k, s in enumerate(rec.steps[:-1]):
        if not permits[k]:
            continue
        i = bisect_right(spill_t, s.now) - 1
        if i < 0 or not truth.gate[i].spill_active:
            continue
        dose = rate * (rec.steps[k + 1].now - s.now)
        total += dose
        where = truth.target.at(s.now)
        if where is None or not inside_window(where, centre, window, 0.0):
            outside += dose
    return {"dose_mu": round(total, 3), "dose_outside_window_mu": round(outside, 4)}
