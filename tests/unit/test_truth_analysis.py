"""Ground-truth analysis on synthetic traces whose answers are known."""

from __future__ import annotations

import math

import pytest

from syncctl.analysis.truth import (
    GateSample,
    TargetSample,
    TargetTrack,
    beam_on_time,
    dose_outside_window,
    gating_latencies,
    percentiles,
    sync_latencies,
)
from syncctl.core import Position, WindowBox

W = WindowBox(5, 5, 5)
C = Position(0, 0, 0)


def track_moving_in_z(speed_mm_s: float, until: float, dt: float = 0.001) -> TargetTrack:
    return TargetTrack([TargetSample(i * dt, Position(0, 0, speed_mm_s * i * dt))
                        for i in range(round(until / dt) + 1)])


def test_interpolation_and_range() -> None:
    track = track_moving_in_z(10.0, 1.0)
    p = track.at(0.5005)
    assert p is not None and p.z_mm == pytest.approx(5.005)
    assert track.at(-0.1) is None and track.at(2.0) is None


def test_dose_outside_window_is_attributed_to_the_true_position() -> None:
    track = track_moving_in_z(10.0, 1.0)  # leaves the 5 mm window at t = 0.5 s
    gate = [GateSample(i * 0.01, True, True, i * 0.01) for i in range(101)]  # 1 MU/s
    outside, unknown = dose_outside_window(gate, track, W, C)
    assert outside == pytest.approx(0.5, abs=0.011)
    assert unknown == 0.0


def test_dose_without_truth_is_unknown_not_inside() -> None:
    track = track_moving_in_z(0.0, 0.5)
    gate = [GateSample(0.4, True, True, 0.0), GateSample(0.6, True, True, 0.2),
            GateSample(0.8, True, True, 0.4)]
    outside, unknown = dose_outside_window(gate, track, W, C)
    assert outside == 0.0 and unknown == pytest.approx(0.2)


def test_gating_latency_from_true_exit_to_actual_close() -> None:
    track = track_moving_in_z(10.0, 1.0)  # exit at 0.5 s
    gate = [GateSample(i * 0.001, i * 0.001 < 0.537, True, 0.0) for i in range(1001)]
    lat = gating_latencies(gate, track, W, C, 0.0, 1.0)
    assert len(lat) == 1 and lat[0] == pytest.approx(0.037, abs=0.0015)


def test_no_latency_when_the_gate_was_already_closed() -> None:
    track = track_moving_in_z(10.0, 1.0)
    gate = [GateSample(i * 0.001, False, True, 0.0) for i in range(1001)]
    assert gating_latencies(gate, track, W, C, 0.0, 1.0) == []


def test_sync_latency_pairs_each_command_with_the_latest_frame() -> None:
    frames = [i / 30 for i in range(30)]
    commands = [frames[5] + 0.002, frames[9] + 0.0035, 5.0]
    lat = sync_latencies(frames, commands, 0.0, 10.0, max_age_s=0.07)
    assert lat == pytest.approx([0.002, 0.0035])


def test_beam_on_time_counts_open_during_spill_only() -> None:
    gate = [GateSample(0.0, True, True, 0), GateSample(1.0, True, False, 0),
            GateSample(2.0, False, False, 0), GateSample(3.0, True, True, 0),
            GateSample(3.5, True, True, 0)]
    on, openings = beam_on_time(gate)
    assert on == pytest.approx(1.5) and openings == 1


def test_percentiles_nearest_rank() -> None:
    p = percentiles([float(i) for i in range(1, 101)])
    assert (p.p50, p.p95, p.p99, p.max, p.count) == (50.0, 95.0, 99.0, 100.0, 100)
    assert math.isnan(percentiles([]).p50)
