"""Real-time scheduling of the control thread (syncctl.controller.realtime). Every request is
made in a thread of its own, so the test process never runs under SCHED_FIFO."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from syncctl.controller.realtime import Scheduling, current, realtime, request_realtime

T = TypeVar("T")
SRC = os.pathsep.join([str(Path(__file__).resolve().parents[2] / "src"),
                       os.environ.get("PYTHONPATH", "")])


def in_thread(work: Callable[[], T]) -> T:
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:  # handed to the test thread
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    if failure:
        raise failure[0]
    return result[0]


def may_be_realtime() -> bool:
    """Whether this process may use SCHED_FIFO at all (root or an RLIMIT_RTPRIO above 0)."""
    def attempt() -> bool:
        return request_realtime(1).realtime
    return in_thread(attempt)


def test_zero_asks_for_nothing() -> None:
    got = in_thread(lambda: (request_realtime(0), current()))
    assert got[0] == Scheduling(False, 0, "not requested")
    assert "not requested" in got[0].describe()
    assert not got[1].realtime


@pytest.mark.parametrize("priority", [-1, 100])
def test_priority_out_of_range_is_refused(priority: int) -> None:
    with pytest.raises(ValueError, match=r"0\.\.99"):
        request_realtime(priority)


def test_a_granted_request_is_what_the_thread_runs_under_and_others_are_untouched() -> None:
    if not may_be_realtime():
        pytest.skip("this process may not use SCHED_FIFO here")

    def work() -> tuple[Scheduling, Scheduling]:
        return request_realtime(7), current()

    granted, now = in_thread(work)
    assert granted == Scheduling(True, 7, "") and now == granted
    assert granted.describe() == "SCHED_FIFO priority 7"
    assert not current().realtime  # this thread: unchanged
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_the_block_gives_the_thread_its_previous_scheduling_back() -> None:
    def work() -> tuple[Scheduling, Scheduling, Scheduling]:
        with realtime(5) as granted:
            inside = current()
        return granted, inside, current()

    granted, inside, after = in_thread(work)
    assert inside == granted
    assert not after.realtime
    if granted.realtime:
        assert inside.priority == 5
    else:  # refused: the thread never left ordinary scheduling, and the answer says why
        assert "refused" in granted.note


CHILD = """
import os, resource
from syncctl.controller.realtime import request_realtime  # before leaving root's files
resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))
if os.getuid() == 0:  # root keeps CAP_SYS_NICE whatever the limit: become nobody
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
got = request_realtime(10)
print(int(got.realtime), got.note, sep="|")
"""


def test_a_refusal_is_an_answer_not_an_error() -> None:
    """Without the right to SCHED_FIFO (RLIMIT_RTPRIO 0 and no CAP_SYS_NICE, as an ordinary
    user has) the request is refused and the thread goes on with ordinary scheduling."""
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=60, check=False, env={**os.environ, "PYTHONPATH": SRC})
    assert done.returncode == 0, done.stderr
    flag, note = done.stdout.strip().split("|", 1)
    assert flag == "0"
    assert note.startswith("SCHED_FIFO refused: ")
