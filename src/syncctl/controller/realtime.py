"""Real-time scheduling for the control thread.

The device watchdogs close the gate when the controller's heartbeat stops for
``device_watchdog_timeout_ms`` (200 ms in the simulated room), and an imaging reading older
than ``device_stale_ms`` (100 ms) trips the fraction. Under the ordinary Linux scheduler a
busy machine (a compiler, a browser, a test suite on the treatment-room PC) can hold the
control thread off the CPU for that long: measured on the two-core test machine with three
busy processes beside `syncctl demo`, the fraction tripped (IL-002, then IL-009) 4.5 s in,
with cycle p99 9 ms; with SCHED_FIFO it completed with cycle p99 0.8 ms (docs/controller.md).

So the control thread asks for SCHED_FIFO at a modest priority, as control software on a
general-purpose PC does. The request may be refused (no CAP_SYS_NICE, an RLIMIT_RTPRIO of 0,
a container without the capability): then the thread keeps the ordinary policy and the
caller says so, because the room still works, only with less margin under load.

``SCHED_RESET_ON_FORK`` is set with the policy: a process the controller starts (the
simulators, a helper tool) does not inherit real-time priority by accident; the simulators
ask for their own (``python -m firmware_sim --rt-priority``).

Linux applies the policy per thread: call this from the thread that runs the control loop
(``syncctl demo --console`` runs the room in a worker thread and the console keeps the
ordinary policy). Threads created afterwards by this thread inherit it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

DEFAULT_PRIORITY = 10
"""SCHED_FIFO priority of the controller (1..99): above every ordinary process, below the
kernel's own threaded interrupts (50) and the simulators standing in for firmware (20)."""

MAX_PRIORITY = 99


@dataclass(frozen=True)
class Scheduling:
    """What the thread runs under after a request."""

    realtime: bool
    priority: int
    note: str
    """Why not, when the request was refused or not made."""

    def describe(self) -> str:
        if self.realtime:
            return f"SCHED_FIFO priority {self.priority}"
        return f"ordinary scheduling ({self.note})"


def request_realtime(priority: int) -> Scheduling:
    """Ask for SCHED_FIFO at ``priority`` for the calling thread; ``0`` asks for nothing.

    Never raises for a refusal: the answer says what the thread runs under."""
    if not 0 <= priority <= MAX_PRIORITY:
        raise ValueError(f"real-time priority must be 0..{MAX_PRIORITY}, not {priority}")
    if priority == 0:
        return Scheduling(False, 0, "not requested")
    setter = getattr(os, "sched_setscheduler", None)
    if setter is None:
        return Scheduling(False, 0, "this platform has no SCHED_FIFO")
    policy = os.SCHED_FIFO | getattr(os, "SCHED_RESET_ON_FORK", 0)
    try:
        setter(0, policy, os.sched_param(priority))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return Scheduling(False, 0, f"SCHED_FIFO refused: {reason}")
    return Scheduling(True, priority, "")


def current() -> Scheduling:
    """What the calling thread runs under now."""
    getter = getattr(os, "sched_getscheduler", None)
    if getter is None:
        return Scheduling(False, 0, "this platform has no SCHED_FIFO")
    policy = getter(0) & ~getattr(os, "SCHED_RESET_ON_FORK", 0)
    if policy == os.SCHED_FIFO:
        return Scheduling(True, os.sched_getparam(0).sched_priority, "")
    return Scheduling(False, 0, "ordinary policy")


@contextmanager
def realtime(priority: int) -> Iterator[Scheduling]:
    """``request_realtime`` for the calling thread for the duration of the block, then the
    thread's previous policy again (a worker thread goes back to its pool as it came)."""
    getter = getattr(os, "sched_getscheduler", None)
    before = None if getter is None else (getter(0), os.sched_getparam(0))
    granted = request_realtime(priority)
    try:
        yield granted
    finally:
        if granted.realtime and before is not None:
            with suppress(OSError):  # lowering is always allowed; nothing else to do if not
                os.sched_setscheduler(0, before[0], before[1])
