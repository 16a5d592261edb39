from __future__ import annotations

import math
from dataclasses import replace

import pytest

from syncctl.core import ImagingStatus, Position, WindowBox, WindowSphere
from syncctl.core.gating import (
    GATING_RESET,
    GatingState,
    elapsed,
    frame_age_at_read_ms,
    inside_window,
    update_gating,
)
from tests.unit.harness import PARAMS

C = Position(0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("target", "margin", "expected"),
    [
        (Position(0, 0, 0), 0.0, True),
        (Position(5, 5, 5), 0.0, True),
        (Position(5.01, 0, 0), 0.0, False),
        (Position(4.5, 0, 0), 1.0, False),
        (Position(4.0, -4.0, 4.0), 1.0, True),
        (Position(math.nan, 0, 0), 0.0, False),
        (Position(0, math.inf, 0), 0.0, False),
    ],
)
def test_box_window(target: Position, margin: float, expected: bool) -> None:
    assert inside_window(target, C, WindowBox(5, 5, 5), margin) is expected


def test_sphere_window() -> None:
    w = WindowSphere(5.0)
    assert inside_window(Position(3, 4, 0), C, w, 0.0)
    assert not inside_window(Position(3, 4, 0.1), C, w, 0.0)
    assert not inside_window(Position(3, 4, 0), C, w, 0.5)


def test_frame_age_from_device_clock_wraps() -> None:
    s = status(counter=1, ts=(1 << 32) - 10, clock=20)
    assert frame_age_at_read_ms(s) == 30
    assert frame_age_at_read_ms(status(counter=1, ts=100, clock=40)) is None


def test_elapsed_is_infinite_when_unknown_or_in_the_future() -> None:
    assert elapsed(5.0, None) == math.inf
    assert elapsed(5.0, 6.0) == math.inf
    assert elapsed(5.0, math.nan) == math.inf
    assert elapsed(5.0, 4.5) == pytest.approx(0.5)


def status(counter: int, pos: Position = C, conf: float = 0.9, ts: int = 0, clock: int = 0,
           exposing: bool = True) -> ImagingStatus:
    return ImagingStatus(
        prepared=True, exposing=exposing, frame_counter=counter, frame_timestamp_ms=ts,
        device_clock_ms=clock, target=pos, tracking_confidence=conf, cumulative_mas=0.0,
        fault_code=0, heartbeat_echo=0,
    )


SEEN_0 = GatingState(last_counter=0)
"""A history in which frame 0 was seen: the frames fed after it are advances."""


def feed(frames: list[ImagingStatus], g: GatingState = SEEN_0) -> list[GatingState]:
    out = []
    for i, s in enumerate(frames):
        g = update_gating(g, s, 0.01 * i, C, PARAMS)
        out.append(g)
    return out


def test_opening_needs_n_new_frames_inside_the_inner_window() -> None:
    states = feed([status(1), status(1), status(1), status(2)])
    assert [g.target_confirmed for g in states] == [False, False, False, True]


def test_confirmed_target_stays_confirmed_in_the_hysteresis_band_only() -> None:
    band = Position(4.5, 0, 0)  # inside the window, outside the inner (window - 1 mm)
    out = Position(5.5, 0, 0)
    states = feed([status(1), status(2), status(3, band), status(4, band), status(5, out)])
    assert [g.target_confirmed for g in states] == [False, True, True, True, False]


def test_band_alone_never_confirms() -> None:
    band = Position(4.5, 0, 0)
    states = feed([status(i, band) for i in range(1, 6)])
    assert not any(g.target_confirmed for g in states)


def test_reentry_needs_n_frames_again() -> None:
    out = Position(6, 0, 0)  # outside, but a plausible move (no marker jump)
    states = feed([status(1), status(2), status(3, out), status(4), status(5)])
    assert [g.target_confirmed for g in states] == [False, True, False, False, True]


def test_marker_jump_withdraws_confirmation() -> None:
    jump = Position(0, 0, PARAMS.max_jump_mm + 0.5)
    states = feed([status(1), status(2), status(3, jump), status(4, jump), status(5, jump)])
    assert states[2].last_frame_jumped and not states[2].target_confirmed
    assert not states[3].last_frame_jumped  # the new position is consistent again
    # ... but it is outside the window, so still not confirmed.
    assert not states[4].target_confirmed


def test_low_confidence_withdraws_confirmation_even_on_a_reread() -> None:
    states = feed([status(1), status(2), status(2, conf=0.1)])
    assert [g.target_confirmed for g in states] == [False, True, False]


def test_no_imaging_resets_but_keeps_counter_history() -> None:
    g = feed([status(1), status(2)])[-1]
    assert g.target_confirmed
    g2 = update_gating(g, None, 0.05, C, PARAMS)
    assert not g2.target_confirmed and g2.last_counter == 2
    g3 = update_gating(g, status(2, exposing=False), 0.05, C, PARAMS)
    assert not g3.target_confirmed


def test_no_plan_confirms_nothing() -> None:
    g = GATING_RESET
    for i in range(1, 5):
        g = update_gating(g, status(i), 0.01 * i, None, PARAMS)
    assert not g.target_confirmed


def test_counter_change_time_is_the_read_time() -> None:
    g = update_gating(SEEN_0, status(1), 1.5, C, PARAMS)
    g = update_gating(g, status(1), 1.6, C, PARAMS)
    assert g.counter_changed_at == 1.5
    g = update_gating(replace(g), status(2), 1.7, C, PARAMS)
    assert g.counter_changed_at == 1.7


def test_a_counter_seen_for_the_first_time_has_not_advanced() -> None:
    g = update_gating(GATING_RESET, status(7), 1.0, C, PARAMS)
    assert g.counter_changed_at is None and g.last_counter == 7
    assert g.consecutive_inside == 0
    g = update_gating(g, status(8), 1.03, C, PARAMS)
    assert g.counter_changed_at == 1.03


def test_a_counter_going_backwards_or_flipping_never_advances() -> None:
    g = update_gating(SEEN_0, status(5), 1.0, C, PARAMS)
    for i, counter in enumerate([4, 5, 4, 5, 3]):
        g = update_gating(g, status(counter), 1.1 + i * 0.01, C, PARAMS)
    assert g.counter_changed_at == 1.0 and g.last_counter == 5
    g = update_gating(g, status(6), 1.2, C, PARAMS)
    assert g.counter_changed_at == 1.2


def test_counter_wrap_is_an_advance() -> None:
    g = GatingState(last_counter=(1 << 32) - 1)
    g = update_gating(g, status(0), 2.0, C, PARAMS)
    assert g.counter_changed_at == 2.0
