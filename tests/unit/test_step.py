"""Scenario tests of the pure step against the scripted room."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import pytest

from syncctl.core import (
    NOT_READ,
    BeamGateReading,
    Command,
    CommandKind,
    DeviceAction,
    EventKind,
    GateCommand,
    ImagingReading,
    Mode,
    Position,
    Snapshot,
    XrayCommand,
    initial_state,
    step,
)
from tests.unit.harness import PARAMS, Harness, unhealthy, with_beam_gate, with_imaging


def trip_ids(h: Harness) -> list[str]:
    return [rid for out in h.outputs for e in out.events if e.kind is EventKind.TRIP
            for rid in e.rule_ids]


def test_a_whole_fraction_completes_with_the_planned_dose() -> None:
    h = Harness()
    h.to_treating()
    assert h.until(lambda x: x.mode is Mode.COMPLETE, max_s=60)
    planned = PARAMS.plans[0].planned_dose_mu
    resolution_mu = 0.01  # the dose counter's count
    assert planned - resolution_mu <= h.room.dose_mu <= planned + PARAMS.dose_tolerance_mu
    assert h.last.gate is GateCommand.CLOSE
    assert h.last.xray is XrayCommand.STOP
    opened = [o for o in h.outputs if o.gate is GateCommand.OPEN]
    assert opened, "the gate never opened"
    # The gate opened more than once: gating followed the breathing target.
    changes = sum(1 for a, b in zip(h.outputs, h.outputs[1:], strict=False) if a.gate != b.gate)
    assert changes >= 3


def test_offline_until_both_devices_are_read() -> None:
    state = initial_state(PARAMS, 0.0)
    state, out = step(state, NOT_READ, None, 0.001)
    assert state.mode is Mode.OFFLINE
    assert out.gate is GateCommand.CLOSE and out.xray is XrayCommand.STOP
    assert {"IL-001", "IL-002"} <= set(out.beam_permit.denied_by)
    assert {"IL-001", "IL-002"} <= set(out.xray_permit.denied_by)


def test_select_plan_loads_the_hardware_dose_preset() -> None:
    h = Harness()
    h.run(0.05)
    h.room.dose_mu = 12.5  # a device that has delivered earlier fractions since power-up
    h.run(0.01)
    out = h.tick(Command(CommandKind.SELECT_PLAN, "op", "lung-01"))
    assert out.command_result is not None and out.command_result.accepted
    assert out.device_actions == (DeviceAction.LOAD_DOSE_PRESET,)
    assert out.dose_preset_mu == pytest.approx(12.5 + 3.0)


@pytest.mark.parametrize(
    ("kind", "mode_word"),
    [(CommandKind.BEAM_ON, "SAFE"), (CommandKind.ARM, "SAFE"), (CommandKind.RESUME, "SAFE"),
     (CommandKind.PAUSE, "SAFE"), (CommandKind.ABORT, "SAFE")],
)
def test_commands_outside_the_table_are_refused_with_a_reason(
    kind: CommandKind, mode_word: str
) -> None:
    h = Harness()
    h.run(0.05)
    result = h.command(kind)
    assert not result.accepted
    assert mode_word in result.reason and kind.value in result.reason
    assert h.mode is Mode.SAFE


def test_unknown_plan_is_refused() -> None:
    h = Harness()
    h.run(0.05)
    result = h.command(CommandKind.SELECT_PLAN, "no-such-plan")
    assert not result.accepted and "unknown plan" in result.reason
    result = h.command(CommandKind.SELECT_PLAN, None)
    assert not result.accepted


def test_arm_is_refused_until_imaging_tracks() -> None:
    h = Harness()
    h.run(0.05)
    assert h.command(CommandKind.SELECT_PLAN, "lung-01").accepted
    result = h.command(CommandKind.ARM)
    assert not result.accepted
    assert "IL-022" in result.reason  # imaging not requested
    assert h.mode is Mode.SETUP


FAULT_CASES = [
    # (id, how, expected rule)
    ("estop", lambda h: h.room.faults.add("estop"), "IL-005"),
    ("door", lambda h: h.room.faults.add("door"), "IL-006"),
    ("chain", lambda h: h.room.faults.add("chain"), "IL-007"),
    ("beam-gate-lost", lambda h: h.room.faults.add("beam_gate_disconnect"), "IL-001"),
    ("imaging-lost", lambda h: h.room.faults.add("imaging_disconnect"), "IL-002"),
    ("dose-backwards", lambda h: setattr(h.room, "dose_mu", 0.0), "IL-003"),
    ("confidence-nan", lambda h: setattr(h, "tamper", with_imaging(tracking_confidence=math.nan)),
     "IL-004"),
    ("bgc-watchdog", lambda h: setattr(h, "tamper", with_beam_gate(watchdog_tripped=True)),
     "IL-008"),
    ("xic-fault", lambda h: setattr(h, "tamper", with_imaging(fault_code=7)), "IL-009"),
    ("bgc-heartbeat", lambda h: setattr(h, "tamper", with_beam_gate(heartbeat_echo=4321)),
     "IL-012"),
    ("xic-heartbeat", lambda h: setattr(h, "tamper", with_imaging(heartbeat_echo=4321)), "IL-013"),
    ("preset-lost", lambda h: setattr(h.room, "dose_preset_mu", 0.0), "IL-033"),
    ("preset-reprogrammed", lambda h: setattr(h.room, "dose_preset_mu", 99.0), "IL-033"),
    ("preset-nan", lambda h: setattr(h, "tamper", with_beam_gate(dose_preset_mu=math.nan)),
     "IL-003"),
]


@pytest.mark.parametrize(("how", "rule_id"), [c[1:] for c in FAULT_CASES],
                         ids=[c[0] for c in FAULT_CASES])
def test_a_fault_in_treating_trips_with_its_rule(how, rule_id: str) -> None:  # type: ignore[no-untyped-def]
    h = Harness()
    h.to_treating()
    h.run(0.5)
    how(h)
    assert h.until(lambda x: x.mode is Mode.FAULT, max_s=1.0), f"no trip for {rule_id}"
    assert rule_id in trip_ids(h)
    assert h.last.gate is GateCommand.CLOSE and h.last.xray is XrayCommand.STOP
    assert rule_id in h.last.beam_permit.denied_by
    assert any(a.rule_id == rule_id and a.latched for a in h.last.alarms)


DISCONNECTS = [("beam_gate_disconnect", "IL-030", "IL-001"),
               ("imaging_disconnect", "IL-031", "IL-002")]


@pytest.mark.parametrize(("fault", "degraded", "lost"), DISCONNECTS,
                         ids=["beam-gate", "imaging"])
def test_a_link_down_is_degraded_at_once_and_lost_only_when_stale(
    fault: str, degraded: str, lost: str
) -> None:
    h = Harness()
    h.to_treating()
    assert h.until(lambda x: x.last.gate is GateCommand.OPEN, max_s=10)
    h.room.faults.add(fault)
    out = h.tick()
    last_good = round(h.t - 0.002, 6)  # the read before the link went down
    # The beam waits in the very step of the first failed transaction; the X-ray goes on.
    assert out.gate is GateCommand.CLOSE
    assert degraded in out.beam_permit.denied_by
    assert degraded not in out.xray_permit.denied_by and out.xray_permit.granted
    assert out.xray is XrayCommand.EXPOSE
    # Degraded, not lost, while the last good read is no older than device_stale_s.
    for _ in range(round(PARAMS.device_stale_s / 0.002) - 2):
        out = h.tick()
        assert h.t - last_good <= PARAMS.device_stale_s
        assert h.mode is Mode.TREATING, (h.t, out.events)
        assert degraded in out.beam_permit.denied_by
        assert lost not in out.beam_permit.denied_by
        assert out.gate is GateCommand.CLOSE and out.xray is XrayCommand.EXPOSE
    assert not trip_ids(h)
    # Then lost: a termination.
    assert h.until(lambda x: x.mode is Mode.FAULT, max_s=0.05)
    assert trip_ids(h) == [lost]
    assert PARAMS.device_stale_s < h.t - last_good <= PARAMS.device_stale_s + 0.004
    assert h.last.xray is XrayCommand.STOP and h.last.gate is GateCommand.CLOSE


@pytest.mark.parametrize(("fault", "degraded", "lost"), DISCONNECTS,
                         ids=["beam-gate", "imaging"])
def test_a_short_link_failure_holds_the_beam_and_gating_resumes_by_itself(
    fault: str, degraded: str, lost: str
) -> None:
    h = Harness()
    h.to_treating()
    assert h.until(lambda x: x.last.gate is GateCommand.OPEN, max_s=10)
    h.room.faults.add(fault)
    h.run(0.06)
    assert h.mode is Mode.TREATING and h.last.gate is GateCommand.CLOSE
    assert degraded in h.last.beam_permit.denied_by
    h.room.faults.discard(fault)
    out = h.tick()
    assert degraded not in out.beam_permit.denied_by
    assert h.until(lambda x: x.last.gate is GateCommand.OPEN, max_s=10)
    assert h.mode is Mode.TREATING
    assert not trip_ids(h)
    assert all(lost not in o.beam_permit.denied_by for o in h.outputs)


@pytest.mark.parametrize(("device", "rule_id"), [("beam_gate", "IL-030"), ("imaging", "IL-031")])
def test_offline_does_not_come_online_while_a_device_is_degraded(
    device: str, rule_id: str
) -> None:
    h = Harness()
    h.tamper = unhealthy(device)  # read, fresh and valid, but the session is not verified
    h.run(0.3)
    assert h.mode is Mode.OFFLINE
    denied = set(h.last.beam_permit.denied_by)
    assert rule_id in denied and not denied & {"IL-001", "IL-002", "IL-003", "IL-004"}
    h.tamper = None
    h.tick()
    assert h.mode is Mode.SAFE


@pytest.mark.parametrize(("device", "rule_id"), [("beam_gate", "IL-030"), ("imaging", "IL-031")])
def test_arm_beam_on_and_resume_are_refused_while_a_device_is_degraded(
    device: str, rule_id: str
) -> None:
    h = Harness()
    h.to_setup()
    h.run(0.3)
    h.tamper = unhealthy(device)
    result = h.command(CommandKind.ARM)
    assert not result.accepted and rule_id in result.reason, result
    assert h.mode is Mode.SETUP
    h.tamper = None
    assert h.command(CommandKind.ARM).accepted
    h.tamper = unhealthy(device)
    result = h.command(CommandKind.BEAM_ON)
    assert not result.accepted and rule_id in result.reason, result
    assert h.mode is Mode.READY
    h.tamper = None
    assert h.command(CommandKind.BEAM_ON).accepted
    assert h.command(CommandKind.PAUSE).accepted
    h.tamper = unhealthy(device)
    result = h.command(CommandKind.RESUME)
    assert not result.accepted and rule_id in result.reason, result
    assert "degraded" in result.reason
    assert h.mode is Mode.HOLD
    h.tamper = None
    assert h.command(CommandKind.RESUME).accepted
    assert h.mode is Mode.TREATING
    assert not trip_ids(h)


def test_stuck_gate_is_not_judged_from_a_reading_taken_before_the_close_command() -> None:
    """The beam gate's link fails while the gate is open: IL-030 commands it closed at once,
    and for up to device_stale_s the core still sees the last good reading, taken before that
    command, saying "open". That proves nothing about the gate: no IL-010, only IL-001 once
    the reading is stale."""
    h = Harness()
    h.to_treating()
    assert h.until(lambda x: x.last.gate is GateCommand.OPEN and x.room.gate_open, max_s=10)
    h.room.faults.add("beam_gate_disconnect")
    out = h.tick()
    assert out.gate is GateCommand.CLOSE
    closed_at = h.t
    kept = h.room.snapshot(h.t).beam_gate
    assert kept.status is not None and kept.status.gate_open_readback
    assert kept.read_at is not None and kept.read_at < closed_at
    assert h.until(lambda x: x.mode is Mode.FAULT, max_s=0.5)
    # Well past the actuation timeout with an "open" readback in hand, and yet:
    assert h.t - closed_at > 4 * PARAMS.gate_actuation_timeout_s
    assert trip_ids(h) == ["IL-001"]


def test_stuck_gate_is_judged_from_the_first_reading_taken_after_the_actuation_window() -> None:
    h = Harness()
    h.to_treating()
    assert h.until(lambda x: x.last.gate is GateCommand.OPEN and x.room.gate_open, max_s=10)
    h.room.faults.update({"beam_gate_disconnect", "stuck_gate"})
    assert h.tick().gate is GateCommand.CLOSE
    h.run(0.03)  # longer than the actuation timeout, shorter than device_stale_s
    assert h.mode is Mode.TREATING and not trip_ids(h)
    h.room.faults.discard("beam_gate_disconnect")
    h.tick()  # a fresh reading, taken 32 ms after the close command: still open
    assert h.mode is Mode.FAULT
    assert trip_ids(h) == ["IL-010"]


def test_uncommanded_xray_is_not_judged_from_a_reading_taken_before_the_stop() -> None:
    params = replace(PARAMS, xray_actuation_timeout_s=0.03)
    h = Harness(params)
    h.to_setup()
    assert h.until(lambda x: x.room.exposing, max_s=1)
    h.tick()
    h.room.faults.add("imaging_disconnect")
    assert h.command(CommandKind.STOP_IMAGING).accepted
    assert h.last.xray is XrayCommand.STOP
    stopped_at = h.t
    assert h.until(lambda x: x.mode is Mode.FAULT, max_s=0.5)
    assert h.t - stopped_at > 2 * params.xray_actuation_timeout_s
    assert trip_ids(h) == ["IL-002"]


def test_estop_closes_the_gate_in_the_same_step() -> None:
    h = Harness()
    h.to_treating()
    assert h.until(lambda x: x.last.gate is GateCommand.OPEN, max_s=10)
    h.room.faults.add("estop")
    out = h.tick()
    assert out.gate is GateCommand.CLOSE and h.mode is Mode.FAULT


def test_stuck_gate_trips_after_the_actuation_timeout() -> None:
    h = Harness()
    h.to_treating()
    assert h.until(lambda x: x.last.gate is GateCommand.OPEN and x.room.gate_open, max_s=10)
    h.room.faults.add("stuck_gate")
    assert h.until(lambda x: x.mode is Mode.FAULT, max_s=10)
    assert "IL-010" in trip_ids(h)


def test_uncommanded_xray_trips() -> None:
    h = Harness()
    h.run(0.05)
    assert h.command(CommandKind.SELECT_PLAN, "lung-01").accepted
    h.tamper = with_imaging(prepared=True, exposing=True)
    assert h.until(lambda x: x.mode is Mode.FAULT, max_s=1)
    assert "IL-011" in trip_ids(h)


def test_gating_interruption_holds_then_resumes_without_operator() -> None:
    h = Harness()
    h.to_treating()
    assert h.until(lambda x: x.last.gate is GateCommand.OPEN, max_s=10)
    h.room.faults.add("tracking_loss")
    h.run(0.1)
    assert h.last.gate is GateCommand.CLOSE and h.mode is Mode.TREATING
    assert "IL-026" in h.last.beam_permit.denied_by
    h.room.faults.discard("tracking_loss")
    assert h.until(lambda x: x.last.gate is GateCommand.OPEN, max_s=10)
    assert h.mode is Mode.TREATING


def test_frozen_frames_close_the_gate_then_hold_too_long_terminates() -> None:
    params = replace(PARAMS, max_hold_s=2.0)
    h = Harness(params)
    h.to_treating()
    assert h.until(lambda x: x.last.gate is GateCommand.OPEN, max_s=10)
    h.room.faults.add("frozen_frames")
    h.run(0.12)
    assert h.last.gate is GateCommand.CLOSE
    assert "IL-025" in h.last.beam_permit.denied_by
    assert h.until(lambda x: x.mode is Mode.FAULT, max_s=3)
    assert "IL-017" in trip_ids(h)


def test_pause_and_resume() -> None:
    h = Harness()
    h.to_treating()
    assert h.command(CommandKind.PAUSE).accepted
    assert h.mode is Mode.HOLD and h.last.gate is GateCommand.CLOSE
    h.run(0.2)
    assert h.last.xray is XrayCommand.EXPOSE, "imaging keeps tracking during a hold"
    assert h.command(CommandKind.RESUME).accepted
    assert h.mode is Mode.TREATING


def test_imaging_budget_exhausted_stops_xray_and_beam() -> None:
    params = replace(PARAMS, imaging_budget_mas=2.0)
    h = Harness(params)
    h.to_treating()
    assert h.until(lambda x: x.mode is Mode.FAULT, max_s=5)
    assert "IL-016" in trip_ids(h)
    assert h.last.xray is XrayCommand.STOP and h.last.gate is GateCommand.CLOSE


def test_overdose_trips_to_fault_not_complete() -> None:
    h = Harness()
    h.to_treating()
    h.room.dose_mu += 3.2  # a jump past plan + tolerance
    h.tick()
    assert h.mode is Mode.FAULT
    assert "IL-015" in trip_ids(h)


def test_after_a_trip_only_ack_reset_select_arm_beam_on_reopen() -> None:
    h = Harness()
    h.to_treating()
    h.room.faults.add("door")
    h.tick()
    assert h.mode is Mode.FAULT
    h.room.faults.discard("door")
    h.run(0.1)
    assert h.last.gate is GateCommand.CLOSE
    refused = h.command(CommandKind.RESET)
    assert not refused.accepted and "acknowledge first" in refused.reason
    assert not h.command(CommandKind.BEAM_ON).accepted
    assert not h.command(CommandKind.RESUME).accepted
    assert h.command(CommandKind.ACKNOWLEDGE).accepted
    assert h.mode is Mode.FAULT
    reset = h.tick(Command(CommandKind.RESET, "op"))
    assert reset.command_result is not None and reset.command_result.accepted
    assert DeviceAction.RESET_BEAM_GATE_FAULTS in reset.device_actions
    assert h.mode is Mode.SAFE
    h.run(0.5)
    assert all(o.gate is GateCommand.CLOSE for o in h.outputs[-250:])
    assert not h.command(CommandKind.ARM).accepted  # the plan must be selected again
    h.to_treating()
    assert h.until(lambda x: x.last.gate is GateCommand.OPEN, max_s=10)


def test_a_new_cause_after_acknowledge_needs_its_own_acknowledge() -> None:
    h = Harness()
    h.to_treating()
    h.room.faults.add("door")
    h.tick()
    assert h.command(CommandKind.ACKNOWLEDGE).accepted
    h.room.faults.add("estop")
    h.tick()
    result = h.command(CommandKind.RESET)
    assert not result.accepted and "IL-005" in result.reason


def test_in_safe_a_termination_blocks_selection_without_latching() -> None:
    h = Harness()
    h.run(0.05)
    h.room.faults.add("door")
    h.tick()
    result = h.command(CommandKind.SELECT_PLAN, "lung-01")
    assert not result.accepted and "IL-006" in result.reason
    assert h.mode is Mode.SAFE
    h.room.faults.discard("door")
    h.tick()
    assert h.command(CommandKind.SELECT_PLAN, "lung-01").accepted


def test_latched_device_fault_in_safe_needs_ack_then_reset() -> None:
    h = Harness()
    h.tamper = with_beam_gate(watchdog_tripped=True)
    h.run(0.05)
    assert h.mode is Mode.SAFE
    assert any(a.rule_id == "IL-008" for a in h.last.alarms)
    assert not h.command(CommandKind.RESET).accepted
    assert h.command(CommandKind.ACKNOWLEDGE).accepted
    out = h.tick(Command(CommandKind.RESET, "op"))
    assert out.command_result is not None and out.command_result.accepted
    assert DeviceAction.RESET_BEAM_GATE_FAULTS in out.device_actions


def test_completion_is_acknowledged_back_to_safe() -> None:
    h = Harness()
    h.to_treating()
    assert h.until(lambda x: x.mode is Mode.COMPLETE, max_s=60)
    assert h.command(CommandKind.ACKNOWLEDGE).accepted
    assert h.mode is Mode.SAFE
    assert h.state.plan is None


@pytest.mark.parametrize("bad_now", [-1.0, math.nan, math.inf, 1e9])
def test_time_going_backwards_or_jumping_trips_and_never_opens(bad_now: float) -> None:
    h = Harness()
    h.to_treating()
    assert h.until(lambda x: x.last.gate is GateCommand.OPEN, max_s=10)
    snap = h.room.snapshot(h.t)
    h.state, out = step(h.state, snap, None, bad_now)
    assert out.gate is GateCommand.CLOSE and out.xray is XrayCommand.STOP
    assert h.state.mode is Mode.FAULT
    assert "IL-018" in out.beam_permit.denied_by


def test_step_is_deterministic() -> None:
    a, b = Harness(seed=5), Harness(seed=5)
    a.to_treating()
    b.to_treating()
    a.run(2.0)
    b.run(2.0)
    assert a.outputs == b.outputs and a.state == b.state


def test_garbage_never_raises() -> None:
    state = initial_state(PARAMS, 0.0)
    weird = Snapshot(
        beam_gate=BeamGateReading(status=None, read_at=5.0, healthy=True),
        imaging=ImagingReading(status=None, read_at=None, healthy=True),
    )
    for kind in CommandKind:
        state, out = step(state, weird, Command(kind, "", "x"), 0.01)
        assert out.gate is GateCommand.CLOSE
        assert out.command_result is not None and not out.command_result.accepted


def test_target_far_outside_the_window_keeps_the_gate_closed() -> None:
    h = Harness()
    h.to_treating()
    h.tamper = with_imaging(target=Position(100.0, 100.0, 100.0))
    h.run(1.0)
    assert all(o.gate is GateCommand.CLOSE for o in h.outputs[-400:])
    assert "IL-028" in h.last.beam_permit.denied_by


def test_repeated_cycle_overruns_reported_by_the_controller_trip() -> None:
    h = Harness()
    h.to_treating()
    h.tamper = lambda snap: replace(snap, cycle_overrun=True)
    h.tick()
    assert h.mode is Mode.FAULT
    assert "IL-019" in trip_ids(h)


def _lagging_echo(h: Harness, behind: int) -> Callable[[Snapshot], Snapshot]:
    """The imaging controller echoing the heartbeat ``behind`` values late."""

    def tamper(snap: Snapshot) -> Snapshot:
        sent = [o.heartbeat for o in h.outputs if o.heartbeat is not None]
        echo = sent[-1 - behind] if len(sent) > behind else 0
        return with_imaging(heartbeat_echo=echo)(snap)

    return tamper


def test_an_imaging_echo_lagging_a_few_heartbeats_is_no_trip() -> None:
    """A device polled at its own period echoes a value or three behind (60 ms at a 20 ms
    heartbeat): it was fed when that value was sent, well within its 200 ms watchdog."""
    h = Harness()
    h.to_treating()
    h.tamper = _lagging_echo(h, behind=3)
    h.run(1.0)
    assert h.mode is Mode.TREATING
    assert all("IL-013" not in o.xray_permit.denied_by for o in h.outputs[-400:])


def test_an_imaging_echo_too_far_behind_trips_il_013() -> None:
    """Once the newest value the device echoes was sent longer ago than its watchdog timeout,
    the device's own watchdog may have fired: termination."""
    h = Harness()
    h.to_treating()
    h.tamper = _lagging_echo(h, behind=12)  # 240 ms at 20 ms > 200 ms
    assert h.until(lambda x: x.mode is Mode.FAULT, max_s=1.0)
    assert "IL-013" in h.state.latched


def test_a_power_up_echo_of_zero_never_counts_as_fed() -> None:
    """Heartbeats run 1..65535, never 0: a restarted device's echo register (0) can never be
    taken for a heartbeat it received."""
    h = Harness()
    h.to_treating()
    sent = {o.heartbeat for o in h.outputs if o.heartbeat is not None}
    assert 0 not in sent
    h.tamper = with_imaging(heartbeat_echo=0)
    assert h.until(lambda x: x.mode is Mode.FAULT, max_s=1.0)
    assert "IL-013" in h.state.latched


# --- the hardware dose preset, read back (IL-032, IL-033) -------------------------------------


def preset_held_at(value: float) -> Callable[[Snapshot], Snapshot]:
    """A beam gate that ignores the preset write: its readback stays at ``value``."""
    return with_beam_gate(dose_preset_mu=value)


def test_the_preset_is_armed_by_the_first_reading_after_the_selection() -> None:
    h = Harness()
    h.run(0.05)
    out = h.tick(Command(CommandKind.SELECT_PLAN, "op", "lung-01"))
    assert h.state.plan is not None and not h.state.plan.preset_armed
    assert h.state.plan.dose_preset_mu == pytest.approx(out.dose_preset_mu or -1)
    assert "IL-032" in out.beam_permit.denied_by  # commanded in this very step
    out = h.tick()  # the scripted device shows the preset at its next read
    assert h.state.plan.preset_armed
    assert "IL-032" not in out.beam_permit.denied_by
    assert not trip_ids(h)


def test_arm_and_beam_waits_until_the_preset_is_read_back() -> None:
    """A preset that does not arrive (the write failed, the firmware refused it) never trips:
    it holds the beam (IL-032) and ARM is refused naming it, for as long as it lasts."""
    h = Harness()
    h.tamper = preset_held_at(0.0)
    h.to_setup()
    h.run(0.3)
    result = h.command(CommandKind.ARM)
    assert not result.accepted and "IL-032" in result.reason, result
    assert h.mode is Mode.SETUP and not trip_ids(h)
    assert "IL-032" in h.last.beam_permit.denied_by
    h.tamper = None
    h.tick()
    assert h.command(CommandKind.ARM).accepted
    assert h.command(CommandKind.BEAM_ON).accepted
    assert h.until(lambda x: x.last.gate is GateCommand.OPEN, max_s=10)
    assert not trip_ids(h)


def test_a_readback_one_count_off_is_armed_two_counts_off_is_not() -> None:
    h = Harness()
    h.run(0.05)
    h.tamper = preset_held_at(3.0 + 0.01)
    assert h.command(CommandKind.SELECT_PLAN, "lung-01").accepted  # preset 0 + 3.0
    h.tick()
    assert h.state.plan is not None and h.state.plan.preset_armed
    h2 = Harness()
    h2.run(0.05)
    h2.tamper = preset_held_at(3.0 + 0.02)
    assert h2.command(CommandKind.SELECT_PLAN, "lung-01").accepted
    h2.run(0.1)
    assert h2.state.plan is not None and not h2.state.plan.preset_armed
    assert "IL-032" in h2.last.beam_permit.denied_by


def lose_the_preset_in(h: Harness, mode: Mode) -> None:
    if mode is Mode.SETUP:
        h.to_setup()
        h.run(0.1)
    elif mode is Mode.READY:
        h.to_setup()
        h.run(0.3)
        assert h.command(CommandKind.ARM).accepted
    else:
        h.to_treating()
        if mode is Mode.HOLD:
            assert h.command(CommandKind.PAUSE).accepted
    assert h.mode is mode and h.state.plan is not None and h.state.plan.preset_armed
    assert h.room.dose_mu < 0.01, "the device has counted nothing: its counter reads 0"
    h.room.reboot_beam_gate()


@pytest.mark.parametrize("mode", [Mode.SETUP, Mode.READY, Mode.TREATING, Mode.HOLD],
                         ids=lambda m: m.name)
def test_a_reboot_before_any_dose_is_counted_trips_il_033(mode: Mode) -> None:
    """The gap the fault matrix found: a beam-gate reboot with its dose counter still at 0
    changes nothing but the preset (back to 0): no counter goes backwards (IL-003), the echo
    comes back at the next heartbeat. The preset read back in the status block shows it."""
    h = Harness()
    lose_the_preset_in(h, mode)
    assert h.until(lambda x: x.mode is Mode.FAULT, max_s=0.01)
    assert trip_ids(h) == ["IL-033"]
    assert h.last.gate is GateCommand.CLOSE and h.last.xray is XrayCommand.STOP
    assert any(a.rule_id == "IL-033" and a.latched for a in h.last.alarms)
    assert h.state.plan is None  # a new selection, with a new preset, is needed


def test_a_reboot_after_dose_was_counted_is_invalid_data_first() -> None:
    """With dose counted, the reboot makes the counter go backwards: the reading is invalid
    (IL-003) and, as for any invalid reading, the rules that read its values (IL-033 among
    them) stay quiet so that the real reason is shown."""
    h = Harness()
    h.to_treating()
    assert h.until(lambda x: x.room.dose_mu >= 0.05, max_s=10)
    h.room.reboot_beam_gate()
    assert h.until(lambda x: x.mode is Mode.FAULT, max_s=0.01)
    assert trip_ids(h) == ["IL-003"]


def test_after_il_033_a_new_selection_arms_a_new_preset() -> None:
    h = Harness()
    lose_the_preset_in(h, Mode.TREATING)
    assert h.until(lambda x: x.mode is Mode.FAULT, max_s=0.01)
    assert h.command(CommandKind.ACKNOWLEDGE).accepted
    assert h.command(CommandKind.RESET).accepted
    h.run(0.3)  # the device echoes heartbeats again after its reboot
    h.to_treating()
    assert h.room.dose_preset_mu == pytest.approx(3.0)  # reloaded from the new baseline (0)
    assert h.until(lambda x: x.last.gate is GateCommand.OPEN, max_s=10)


def test_a_preset_change_after_completion_is_no_trip() -> None:
    """COMPLETE is not among the armed modes: the fraction has ended, and only a new
    selection (with its own preset) leads to beam again."""
    h = Harness()
    h.to_treating()
    assert h.until(lambda x: x.mode is Mode.COMPLETE, max_s=60)
    h.room.dose_preset_mu = 0.0
    h.run(0.1)
    assert h.mode is Mode.COMPLETE and "IL-033" not in trip_ids(h)


def test_abort_and_reselect_must_arm_the_preset_again() -> None:
    h = Harness()
    h.to_setup()
    h.run(0.1)
    assert h.state.plan is not None and h.state.plan.preset_armed
    assert h.command(CommandKind.ABORT).accepted
    h.tamper = preset_held_at(0.0)  # the next write does not arrive
    assert h.command(CommandKind.SELECT_PLAN, "liver-02").accepted
    h.run(0.1)
    assert h.state.plan is not None and not h.state.plan.preset_armed
    assert "IL-032" in h.last.beam_permit.denied_by and h.mode is Mode.SETUP
