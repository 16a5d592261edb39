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

import os

from hypothesis import settings

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
