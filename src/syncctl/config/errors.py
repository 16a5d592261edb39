"""Configuration errors: every problem found, each naming file, field path and line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in one file.

    Printed as ``<file>:<line>: <path>: <message>`` (the line and the path are left out when
    unknown or empty, e.g. a file that cannot be read at all).
    """

    file: Path
    path: str
    """Dotted field path, e.g. ``gating.window.radius_mm`` or ``plans[1].id``; empty for the
    whole file."""
    line: int | None
    """1-based line where the field (or the nearest enclosing field that exists) is written."""
    message: str
    """What was found and what is allowed."""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else f"{self.file}"
        field = f" {self.path}:" if self.path else ""
        return f"{where}:{field} {self.message}"


class ConfigError(Exception):
    """A configuration that must not be used. A local error: refuse to start, never a trip.

    ``issues`` holds every problem found, in file order within each check stage.
    """

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))
