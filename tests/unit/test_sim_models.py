"""The simulator models alone: physics on an injected clock, no transport."""

from __future__ import annotations

import pytest

from firmware_sim.beam_gate import BeamGateFault, BeamGateModel
from firmware_sim.imaging import ImagingFault, ImagingModel
from firmware_sim.motion import BreathingMotion

DT = 0.001


def run(model: BeamGateModel | ImagingModel, seconds: float, heartbeat: bool = True) -> None:
    for i in range(round(seconds / DT)):
        if heartbeat:
            model.write_heartbeat((i // 10) % 65536 + 1)
        model.process(DT)


def armed_gate(**kw: float) -> BeamGateModel:
    m = BeamGateModel(**kw)
    m.load_dose_preset(100.0)
    return m


def test_gate_follows_command_after_the_actuation_delay() -> None:
    m = armed_gate(gate_delay_s=0.005)
    m.command_gate(True)
    run(m, 0.003)
    assert not m.gate_open
    run(m, 0.004)
    assert m.gate_open


def test_dose_only_while_open_during_spill() -> None:
    m = armed_gate(spill_on_s=2.0, spill_off_s=1.0, dose_rate_mu_per_s=1.0)
    m.command_gate(True)
    run(m, 3.0)
    assert m.dose_mu == pytest.approx(2.0, abs=0.01)  # the 1 s gap delivers nothing


def test_hardware_dose_limit_closes_the_gate_without_a_fault() -> None:
    m = BeamGateModel(dose_rate_mu_per_s=10.0)
    m.load_dose_preset(0.5)
    m.command_gate(True)
    run(m, 1.0)
    assert m.dose_mu == pytest.approx(0.5)
    assert not m.gate_open and m.fault == BeamGateFault.NONE


def test_watchdog_arms_on_first_heartbeat_then_latches() -> None:
    m = armed_gate(watchdog_timeout_s=0.1)
    run(m, 0.5, heartbeat=False)
    assert not m.watchdog_tripped  # never armed
    m.command_gate(True)
    run(m, 0.05)
    assert m.gate_open
    run(m, 0.2, heartbeat=False)
    assert m.watchdog_tripped and not m.gate_open
    run(m, 0.1)  # heartbeats again do not clear the latch
    assert m.watchdog_tripped
    m.reset_faults()
    assert not m.watchdog_tripped


def test_estop_forces_the_gate_closed_at_once_and_latches() -> None:
    m = armed_gate()
    m.command_gate(True)
    run(m, 0.05)
    m.faults.estop_pressed = True
    m.process(DT)
    assert not m.gate_open and m.fault & BeamGateFault.EMERGENCY_STOP
    m.reset_faults()
    assert m.fault & BeamGateFault.EMERGENCY_STOP  # cause still present
    m.faults.estop_pressed = False
    m.reset_faults()
    assert m.fault == BeamGateFault.NONE


def test_stuck_gate_keeps_delivering() -> None:
    m = armed_gate(spill_off_s=0.0001)
    m.command_gate(True)
    run(m, 0.05)
    m.faults.stuck_gate = True
    m.command_gate(False)
    run(m, 0.5)
    assert m.gate_open and m.dose_mu > 0.4


def imaging(**kw: float) -> ImagingModel:
    m = ImagingModel(motion=BreathingMotion(seed=2), **kw)
    m.command_prepare(True)
    m.command_expose(True)
    return m


def test_frames_at_the_frame_rate_with_mas() -> None:
    m = imaging(frame_rate_fps=30.0, ma=50.0, pulse_width_ms=4.0, prepare_time_s=0.2)
    run(m, 0.2)
    assert not m.exposing or m.frame.counter <= 1
    run(m, 1.0)
    assert m.frame.counter in (30, 31)
    assert m.cumulative_mas == pytest.approx(m.frame.counter * 0.2, rel=0.01)
    assert m.frame.confidence > 0.9


def test_frozen_frames_stop_the_counter_but_not_the_clock() -> None:
    m = imaging()
    run(m, 0.5)
    m.faults.frozen_frames = True
    counter, clock = m.frame.counter, m.device_clock_ms
    run(m, 0.5)
    assert m.frame.counter == counter and m.device_clock_ms > clock + 400


def test_delayed_frames_show_in_their_timestamp() -> None:
    m = imaging()
    m.faults.frame_delay_s = 0.15
    run(m, 1.0)
    assert m.device_clock_ms - m.frame.timestamp_ms >= 150


def test_imaging_watchdog_stops_exposure() -> None:
    m = imaging(watchdog_timeout_s=0.1)
    run(m, 0.5)
    assert m.exposing
    run(m, 0.2, heartbeat=False)
    assert not m.exposing and m.fault & ImagingFault.WATCHDOG


def test_breathing_is_seeded_and_bounded() -> None:
    a, b = BreathingMotion(seed=4), BreathingMotion(seed=4)
    pa = [a.true_position(i * 0.01) for i in range(2000)]
    pb = [b.true_position(i * 0.01) for i in range(2000)]
    assert pa == pb
    zs = [p[2] for p in pa]
    assert max(zs) - min(zs) > 6.0 and max(abs(z) for z in zs) < 8 * 1.2
