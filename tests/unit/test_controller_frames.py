"""The controller runs a cycle as soon as the imaging task reads a new frame (frame_period_s),
instead of leaving the frame to the cycle's next turn."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import replace

import pytest

from syncctl.controller import Controller, ControllerReport
from syncctl.core import ImagingReading
from tests.unit.harness import PARAMS
from tests.unit.test_controller import RoomPorts, _Imaging

FRAME_S = 1 / 30
SLOW_CYCLE_S = 0.05
"""A cycle much slower than the frames, so that a frame judged at the cycle's next turn waits
25 ms on average, and one judged at once waits a few."""


class FramedImaging(_Imaging):
    """The scripted room's imaging, with a frame counter that advances every FRAME_S of wall
    time, whether or not the X-ray is on (this test is about timing, not about the core)."""

    def __init__(self, ports: RoomPorts) -> None:
        super().__init__(ports)
        self.t0 = time.monotonic()

    def arrival(self, counter: int) -> float:
        return self.t0 + counter * FRAME_S

    async def poll(self) -> ImagingReading:
        reading = await super().poll()
        assert reading.status is not None
        counter = int((time.monotonic() - self.t0) / FRAME_S)
        self._reading = replace(reading, status=replace(reading.status, frame_counter=counter))
        return self._reading


async def frame_delays(frame_period_s: float) -> tuple[list[float], Controller]:
    ports = RoomPorts()
    imaging = FramedImaging(ports)
    controller = Controller(PARAMS, ports.beam_gate, imaging, period_s=SLOW_CYCLE_S,
                            imaging_period_s=0.004, deadline_s=0.5,
                            frame_period_s=frame_period_s)
    first_seen: dict[int, float] = {}

    def listen(report: ControllerReport) -> None:
        status = report.snapshot.imaging.status
        if status is not None:
            first_seen.setdefault(status.frame_counter, time.monotonic())

    controller.listeners.append(listen)
    stop = asyncio.Event()
    task = asyncio.create_task(controller.run(stop))
    await asyncio.sleep(1.2)
    stop.set()
    await asyncio.wait_for(task, 5)
    counters = sorted(first_seen)[2:]  # the first frames are seen before the lock
    return [first_seen[c] - imaging.arrival(c) for c in counters], controller


@pytest.mark.asyncio
async def test_a_new_frame_is_judged_at_once_not_at_the_next_cycle() -> None:
    delays, controller = await frame_delays(FRAME_S)
    assert len(delays) >= 20
    assert controller.stats.frame_wakes >= 15
    # At the cycle's next turn the median would be about 25 ms (half of SLOW_CYCLE_S); judged
    # at once it is the imaging poll's lag, well under a millisecond here.
    assert statistics.median(delays) < 0.015, delays


@pytest.mark.asyncio
async def test_without_a_frame_period_frames_wait_for_the_cycle() -> None:
    delays, controller = await frame_delays(0.0)
    assert controller.stats.frame_wakes == 0
    assert statistics.median(delays) > 0.010, delays  # about 25 ms: the test above can fail
