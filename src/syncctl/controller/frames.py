"""When to poll the imaging controller: at its poll period, and closely around the moment the
next frame is due.

The imaging controller takes a frame every 1/frame_rate seconds. Polling it at a fixed period
(4 ms in the simulated room) makes a new frame wait, on average, half that period before the
synchronizer sees it, and up to the whole period. ``FramePoller`` learns when frames arrive
from the polls themselves and adds polls where the next frame is due:

- every poll reports the frame counter it saw (``observe``). When the counter changed, the
  frame arrived between the previous poll and this one: the middle of that interval is the
  estimate of its arrival, and the next frame is expected one frame period later;
- ``next_poll`` is the poll period after the last poll, but no later than ``step_s`` before
  the expected arrival; from then on every ``step_s`` until the frame is seen. Each frame
  thus narrows its own arrival to ``step_s``, and the next estimate is that good;
- a frame that does not come within one poll period after it was due (X-ray off, frozen
  frames, a reboot), or a poll that saw no frame counter (no reading), drops the estimate: the
  polls fall back to the poll period until a frame is seen arriving again.

The poll period stays the longest gap between two polls, so freshness is never worse than
without this. Pure: times are passed in, nothing is read from a clock.
"""

from __future__ import annotations

from dataclasses import dataclass

FRAME_POLL_STEP_S = 0.0005
"""The poll step around an expected frame (``FramePoller.step_s``)."""


@dataclass
class FramePoller:
    period_s: float
    """The poll period: the longest gap between two polls."""
    frame_period_s: float
    """1 / frame rate; 0 turns frame-locked polling off (``next_poll`` is every period)."""
    step_s: float = FRAME_POLL_STEP_S
    """The poll step while a frame is due."""

    counter: int | None = None
    """The frame counter of the last poll that saw one."""
    last_poll_at: float | None = None
    expected_at: float | None = None
    """When the next frame is expected (None: not known)."""

    def __post_init__(self) -> None:
        if not self.period_s > 0 or not self.step_s > 0 or not self.frame_period_s >= 0:
            raise ValueError("period_s > 0, step_s > 0 and frame_period_s >= 0 are required")

    def observe(self, polled_at: float, counter: int | None) -> bool:
        """A poll at ``polled_at`` saw frame ``counter`` (None: no frame counter, e.g. no good
        reading). Returns whether it saw a new frame."""
        previous, self.last_poll_at = self.last_poll_at, polled_at
        if counter is None:
            self.counter = self.expected_at = None
            return False
        if self.counter is None or counter == self.counter:
            self.counter = counter
            return False
        self.counter = counter
        if self.frame_period_s > 0 and previous is not None and previous <= polled_at:
            self.expected_at = (previous + polled_at) / 2 + self.frame_period_s
        else:
            self.expected_at = None
        return True

    def next_poll(self, now: float) -> float:
        """When to poll next, given that it is ``now`` and the last poll was observed. Always
        within ``[now, now + period_s]``, whatever the times (a clock that went backwards
        cannot postpone a poll)."""
        last = self.last_poll_at if self.last_poll_at is not None else now
        at = last + self.period_s
        due = self.expected_at
        if due is not None:
            if now > due + self.period_s:  # it did not come: stop waiting for it
                self.expected_at = None
            elif now >= due - self.step_s:
                at = min(at, last + self.step_s)
            else:
                at = min(at, due - self.step_s)
        return min(max(at, now), now + self.period_s)
