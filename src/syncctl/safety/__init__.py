"""Safety cases: the hazard log (``safety_cases/hazards.yaml``) and the check of its chain
hazard -> control -> interlock rule -> verification (``syncctl safety check``)."""

from syncctl.safety.check import CheckResult, Counts, Finding, check_file, check_log
from syncctl.safety.hazards import (
    Control,
    Hazard,
    HazardLog,
    HazardLogError,
    LoadedLog,
    LogIssue,
    Verification,
    load_hazard_log,
)

__all__ = [
    "CheckResult",
    "Control",
    "Counts",
    "Finding",
    "Hazard",
    "HazardLog",
    "HazardLogError",
    "LoadedLog",
    "LogIssue",
    "Verification",
    "check_file",
    "check_log",
    "load_hazard_log",
]
