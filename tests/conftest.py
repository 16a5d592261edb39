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

Derandomized runs draw no constants from loaded modules (:func:`pin_local_constants`): the
examples are a function of the test and the Hypothesis version, not of which tests ran before.
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

from syncctl.controller.loop import freeze_heap

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


def pin_local_constants() -> bool:
    """Stop Hypothesis from drawing constants out of whatever local modules are loaded.

    Since 6.131, about one draw in 20 may take a literal found in the source of a loaded
    module that is neither stdlib nor site-packages nor a test file: here every module of
    syncctl, firmware_sim and bench that some test imported, and the ``pytest`` script when
    run as ``.venv/bin/pytest``. That pool grows with each test that imports more of the
    project, so a derandomized test generated other examples after other tests: the main
    stateful test ran 471 fractions with 42 completions alone and 442 with 11 after
    tests/unit/test_config.py, which only imports syncctl.config (430 and 0 after the whole
    suite; docs/safety-invariants.md, "Reproducible runs"). With an empty pool a derandomized
    run depends only on the test and the Hypothesis version: the same in any selection or
    order of tests, and not shifted by an edit of an unrelated literal in src/.

    Hypothesis has no setting for this; its internal hook is replaced. Returns False on a
    Hypothesis without the feature; raises if the feature is there but the hook moved, so
    that an upgrade cannot silently bring the dependence back
    (tests/property/test_reproducible.py checks the effect itself)."""
    from hypothesis.internal.conjecture import providers

    hook = getattr(providers, "_get_local_constants", None)
    if hook is None:
        if hasattr(providers.HypothesisProvider, "_local_constants"):
            raise RuntimeError(
                "Hypothesis draws local constants but has no _get_local_constants hook any"
                " more: update pin_local_constants in tests/conftest.py")
        return False
    from hypothesis.internal.constants_ast import Constants

    none = Constants()
    providers._get_local_constants = lambda: none
    providers.CONSTANTS_CACHE.cache.clear()
    return True


LOCAL_CONSTANTS_PINNED = (
    settings.default.derandomize
    and os.environ.get("SYNCCTL_FUZZ_PROFILE", "ci") != "long"
    and pin_local_constants()
)
"""True in derandomized runs (``ci``, ``dev``). The randomized ones (``qa``, the fuzz ``long``
profile) keep Hypothesis's default: there, literals of the code are useful hints and the
examples differ from run to run anyway."""


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
def heap_frozen_for_control_loops(request: pytest.FixtureRequest) -> None:
    """Tests that run a controller inside this process (integration, console) start with the
    heap collected and frozen, as ``syncctl.controller.loop.run`` does in production: the
    test runner's own heap (every earlier test's leftovers) is not the control process's,
    and a full collection of it stalled the control cycle 50-122 ms (docs/controller.md)."""
    if request.node.path.parent.name in ("integration", "console"):
        freeze_heap()


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
