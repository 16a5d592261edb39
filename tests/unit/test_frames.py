"""FramePoller: imaging polls at the poll period, and closely around the next frame."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncctl.controller import FramePoller

PERIOD, FRAME, STEP = 0.004, 1 / 30, 0.0005


def simulate(poller: FramePoller, arrivals: list[float], until: float,
             rtt: float = 0.0002) -> tuple[list[float], list[float]]:
    """Poll a device whose frames arrive at ``arrivals`` (sorted) as the poller says, until
    ``until``. A poll started at t sees the frames that arrived by t + rtt/2. Returns the
    poll times and, per frame, the delay from its arrival to the poll that first saw it."""
    polls: list[float] = []
    seen_delay: list[float] = []
    now, counter = 0.0, 0
    for _ in range(100_000):  # bounded
        if now >= until:
            break
        polls.append(now)
        visible = sum(1 for a in arrivals if a <= now + rtt / 2)
        if visible > counter:
            seen_delay.append(now - arrivals[visible - 1])
            counter = visible
        poller.observe(now, counter)
        after = now + rtt
        nxt = poller.next_poll(after)
        assert after <= nxt <= after + poller.period_s + 1e-12
        now = nxt
    return polls, seen_delay


def test_without_a_frame_period_it_polls_at_the_period() -> None:
    poller = FramePoller(PERIOD, 0.0)
    arrivals = [0.01 + k * FRAME for k in range(30)]
    polls, _ = simulate(poller, arrivals, 1.0, rtt=0.0)
    gaps = [b - a for a, b in pairwise(polls)]
    assert all(math.isclose(g, PERIOD) for g in gaps)
    assert poller.expected_at is None


def test_it_locks_on_to_the_frames_and_sees_each_within_a_step() -> None:
    poller = FramePoller(PERIOD, FRAME)
    arrivals = [0.0123 + k * FRAME for k in range(60)]
    polls, delays = simulate(poller, arrivals, 2.0)
    assert len(delays) == 60
    # The first frames are seen at the period (it has to learn); then within a step.
    assert max(delays[:3]) <= PERIOD + 1e-9
    assert max(delays[5:]) <= STEP + 0.0002 + 1e-9, delays
    # Against polling at the period alone: at most three extra polls per frame.
    assert len(polls) <= 2.0 / PERIOD + 3 * 60
    gaps = [b - a for a, b in pairwise(polls)]
    assert max(gaps) <= PERIOD + 0.0002 + 1e-9


def test_frames_a_little_slower_or_faster_than_configured_are_still_followed() -> None:
    for real_frame in (FRAME * 1.002, FRAME * 0.998):
        poller = FramePoller(PERIOD, FRAME)
        arrivals = [0.005 + k * real_frame for k in range(60)]
        _, delays = simulate(poller, arrivals, 2.0)
        assert max(delays[5:]) <= STEP + 0.0002 + 1e-9


def test_when_frames_stop_it_falls_back_to_the_period() -> None:
    poller = FramePoller(PERIOD, FRAME)
    arrivals = [0.003 + k * FRAME for k in range(10)]  # then nothing (X-ray off)
    polls, delays = simulate(poller, arrivals, 1.0)
    assert len(delays) == 10
    after = [t for t in polls if t > arrivals[-1] + FRAME + PERIOD + STEP]
    gaps = [b - a for a, b in pairwise(after)]
    assert gaps and min(gaps) >= PERIOD - 1e-9
    assert poller.expected_at is None


def test_a_poll_without_a_frame_counter_drops_the_estimate() -> None:
    poller = FramePoller(PERIOD, FRAME)
    poller.observe(0.000, 1)
    assert poller.observe(0.001, 2)  # a new frame: arrival about 0.5 ms
    assert poller.expected_at == pytest.approx(0.0005 + FRAME)
    assert not poller.observe(0.005, None)
    assert poller.expected_at is None and poller.counter is None
    assert not poller.observe(0.009, 7)  # the first counter after that is not a new frame


def test_a_clock_that_went_backwards_postpones_no_poll() -> None:
    poller = FramePoller(PERIOD, FRAME)
    poller.observe(100.0, 1)
    poller.observe(100.001, 2)
    assert 50.0 <= poller.next_poll(50.0) <= 50.0 + PERIOD
    assert not poller.observe(50.0, 3) or poller.expected_at is None


def test_parameters_are_checked() -> None:
    for bad in ((0.0, FRAME), (PERIOD, -1.0), (math.nan, FRAME)):
        with pytest.raises(ValueError):
            FramePoller(*bad)
    with pytest.raises(ValueError):
        FramePoller(PERIOD, FRAME, step_s=0.0)


@settings(max_examples=200, deadline=None)
@given(
    first=st.floats(0.0, 0.05),
    frame=st.floats(0.02, 0.1),
    jitter=st.lists(st.floats(-0.002, 0.002), min_size=1, max_size=40),
    dropped=st.sets(st.integers(0, 39), max_size=10),
    rtt=st.floats(0.0, 0.002),
)
def test_property_never_a_gap_longer_than_the_period_and_every_frame_seen(
        first: float, frame: float, jitter: list[float], dropped: set[int], rtt: float) -> None:
    arrivals = sorted(first + k * frame + j for k, j in enumerate(jitter) if k not in dropped)
    arrivals = [a for a in arrivals if a >= 0]
    poller = FramePoller(PERIOD, 1 / 30)
    until = (arrivals[-1] if arrivals else 0.0) + 0.2
    polls, delays = simulate(poller, arrivals, until, rtt=rtt)
    gaps = [b - a for a, b in pairwise(polls)]
    assert not gaps or max(gaps) <= PERIOD + rtt + 1e-9
    # Every frame (or a later one) is seen no later than a period after it arrived.
    assert all(d <= PERIOD + rtt + 1e-9 for d in delays)
