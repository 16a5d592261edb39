"""Configuration errors: every problem found, each naming file, field path and line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    file: Path
    path: str
    """Dotted field path, e.g. ``gating.window.radius_mm``; empty for the whole file."""
    message: str
    """What was found and what is allowed."""
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else f"{self.file}"
        field = f" {self.path}:" if self.path else ""
        return f"{where}:{field} {self.message}"


class ConfigError(Exception):
    """A configuration that must not be used. A local error: refuse to start."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))
