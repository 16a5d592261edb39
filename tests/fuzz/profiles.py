"""Hypothesis settings for the fuzz targets, selected by ``SYNCCTL_FUZZ_PROFILE``.

- ``ci`` (default): part of the normal suite. Derandomized and database-less like the suite's
  ``ci`` profile (tests/conftest.py), with example counts per target sized so that every
  module of tests/fuzz together stays under about a minute on two shared cores.
- ``long``: the documented long run (docs/fuzzing.md): randomized, more than 10^5 cases over
  all targets. Run it with ``SYNCCTL_FUZZ_PROFILE=long pytest tests/fuzz -p no:randomly
  --hypothesis-show-statistics``.

The suite-wide ``SYNCCTL_HYPOTHESIS_PROFILE`` does not fit here: it sets one example count
for every test, while a fuzz target over a real pty costs a hundred times more per case than
one over a pure decoder. So each target asks for its own settings by name (``fuzz("serial")``).
No deadline (a shared machine makes per-example deadlines flaky); hangs are bounded by each
test's own time checks and by pytest-timeout.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE = os.environ.get("SYNCCTL_FUZZ_PROFILE", "ci")
if PROFILE not in ("ci", "long"):
    raise ValueError(f"SYNCCTL_FUZZ_PROFILE={PROFILE!r}: use ci or long")

EXAMPLES: dict[str, tuple[int, int]] = {
    # target: (ci, long)
    "codec": (300, 20_000),
    "decode_status": (300, 20_000),
    "link_pdu": (200, 15_000),
    "framer": (300, 15_000),
    "core_e2e": (60, 6_000),
    "serial": (25, 2_000),
    "config_text": (100, 8_000),
    "config_mutation": (100, 8_000),
    "regmap_mutation": (100, 8_000),
    "bus": (200, 10_000),
    "bus_service": (40, 4_000),
}
"""Examples per target (per test function using it). Over every fuzz test, the long column
adds up to more than 10^5 cases (docs/fuzzing.md has the count of the recorded run)."""


def fuzz(target: str, *, slow: bool = False) -> settings:
    """The settings for one fuzz target under the selected profile. ``slow``: the target does
    real I/O per example (a pty, a file), so Hypothesis's too_slow health check, which judges
    the generation of data, would fire on the test's own I/O time instead."""
    ci, long = EXAMPLES[target]
    suppressed = [HealthCheck.too_slow] if slow else []
    return settings(
        max_examples=long if PROFILE == "long" else ci,
        derandomize=PROFILE != "long",
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=suppressed,
    )
