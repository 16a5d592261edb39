"""Hypothesis profiles for the whole suite, selected by SYNCCTL_HYPOTHESIS_PROFILE.

- ``ci`` (default): reproducible and bounded. Derandomized (the same examples on every run
  and every machine) and database-less (no state carried between runs), with the failing
  example printed as a reproduction blob. Sized so that ``tests/property`` stays within about
  three minutes on a two-core CI machine (figures in docs/safety-invariants.md).
- ``dev``: a quick look while editing, ~20 examples.
- ``qa``: deep, randomized search (5000 examples of 200 steps); run it before a release and
  after any change to the core. Failures are saved in the local example database.

No deadline in any profile: a per-example deadline turns a slow, shared CI machine into
nondeterministic failures that a derandomized run cannot reproduce; the time budget of the
suite is measured as a whole instead. No health check is suppressed here; a test that needs
it says why where it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from pytest_asyncio import is_async_test

settings.register_profile(
    "ci",
    max_examples=400,
    stateful_step_count=100,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
)
settings.register_profile(
    "dev",
    max_examples=20,
    stateful_step_count=40,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
)
settings.register_profile(
    "qa",
    max_examples=5000,
    stateful_step_count=200,
    derandomize=False,
    deadline=None,
    print_blob=True,
)
settings.load_profile(os.environ.get("SYNCCTL_HYPOTHESIS_PROFILE", "ci"))


# --- leaks: every test stops what it started ---------------------------------------------------

LEFTOVER_GRACE_S = 2.0
"""A child a test stopped may take a moment to be gone from /proc; a leak stays."""


def _running_children() -> dict[int, str]:
    """Live (not zombie) child processes of this test process: pid -> command name."""
    me = os.getpid()
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.find("(") + 1:stat.rfind(")")]
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == me and state != "Z":
            found[int(entry)] = name
    return found


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Fail any test that leaves a child process running (and kill what it left)."""
    before = set(_running_children())
    yield
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    left = {pid: name for pid, name in _running_children().items() if pid not in before}
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = {pid: name for pid, name in _running_children().items() if pid not in before}
    if left:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        pytest.fail(f"the test left processes running: {left}")


@pytest.fixture(autouse=True)
def no_leftover_tasks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail any asyncio test that leaves tasks pending once its fixtures are torn down.

    Requesting the test's event-loop runner here makes this fixture's teardown run after the
    test's own async fixtures and before pytest-asyncio closes the loop (which would cancel
    the leftovers silently)."""
    if not is_async_test(request.node):
        yield
        return
    runner = request.getfixturevalue("_function_scoped_runner")
    yield
    loop = runner.get_loop()
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if pending:
        names = sorted(t.get_name() for t in pending)
        pytest.fail(f"the test left asyncio tasks pending: {names}")
