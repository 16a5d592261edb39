"""Commissioning: bring up a room's devices and record that they behave as the configuration
says (`syncctl commission`). See docs/commissioning.md.

- ``checks``: the pure rules (range checks, the watchdog rule, summaries, frame analysis);
- ``prompts``: confirmations and timed person steps over stdin/stdout;
- ``session``: the steps, over the real device clients;
- ``report``: the HTML and JSON report.
"""

from syncctl.commission.checks import Check, Status, StepResult, run_passed
from syncctl.commission.report import build_report, write_report
from syncctl.commission.session import STEP_NAMES, STEPS, Commissioning, Options, Rehearsal

__all__ = [
    "STEPS",
    "STEP_NAMES",
    "Check",
    "Commissioning",
    "Options",
    "Rehearsal",
    "Status",
    "StepResult",
    "build_report",
    "run_passed",
    "write_report",
]
