"""The ``--rt-priority`` option of the commands that run a control loop (docs/controller.md)."""

from __future__ import annotations

import argparse
from contextlib import AbstractContextManager

from syncctl.controller.realtime import (
    DEFAULT_PRIORITY,
    MAX_PRIORITY,
    Scheduling,
    realtime,
    request_realtime,
)


def rt_priority(text: str) -> int:
    """argparse type: a SCHED_FIFO priority, 0 for ordinary scheduling."""
    value = int(text)
    if not 0 <= value <= MAX_PRIORITY:
        raise argparse.ArgumentTypeError(f"must be 0..{MAX_PRIORITY}")
    return value


def add_rt_priority_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rt-priority", type=rt_priority, default=DEFAULT_PRIORITY, metavar="N",
                   help=f"run the control loop under SCHED_FIFO at priority N (1..{MAX_PRIORITY}; "
                   f"default {DEFAULT_PRIORITY}; 0: ordinary scheduling); when the system "
                   "refuses, the loop runs with ordinary scheduling and says so")


def apply_rt_priority(args: argparse.Namespace) -> Scheduling:
    """Request the option's scheduling for the calling thread."""
    return request_realtime(getattr(args, "rt_priority", 0))


def rt_priority_block(args: argparse.Namespace) -> AbstractContextManager[Scheduling]:
    """The option's scheduling for the calling thread, for the duration of a block."""
    return realtime(getattr(args, "rt_priority", 0))


def console_thread_block(args: argparse.Namespace) -> AbstractContextManager[Scheduling]:
    """For ``demo --console``: the console thread shares the interpreter lock with the room's
    thread. If the console thread were preempted by other load while it holds the lock, the
    room's real-time thread would wait with it (a priority inversion: measured, both device
    watchdogs tripped before the first command). So the console thread runs real-time too,
    at half the room's priority: it lets go of the lock at the switch interval, and the room
    preempts it."""
    return realtime(getattr(args, "rt_priority", 0) // 2)
