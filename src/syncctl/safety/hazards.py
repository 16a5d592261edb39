"""The hazard log as data: pydantic v2 models of ``safety_cases/hazards.yaml`` and loading.

The schema only says what a well-formed log looks like (ids, fields, types). Whether the chain
hazard -> control -> rule -> verification is complete is the job of ``syncctl.safety.check``,
which reports every gap by hazard and control id rather than refusing the file, so that one
run lists all of them.

A file that cannot be read, is not YAML, has a duplicate key or does not fit the schema raises
``HazardLogError``; each issue names the file, the line, the hazard and control ids (when the
problem lies inside one) and the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from syncctl.config.errors import ConfigError
from syncctl.config.loader import pydantic_issues
from syncctl.config.yaml_source import YamlSource, load_yaml

HAZARD_ID = r"^HAZ-\d{3}$"
CONTROL_ID = r"^CTL-\d{3}$"
RULE_ID = r"^IL-\d{3}$"
TEST_NODE_ID = r"^[^\s:\[\]]+\.py(::[A-Za-z_][A-Za-z0-9_]*){1,2}(\[.+\])?$"
"""``tests/x.py::test_y``, ``tests/x.py::TestClass::test_y``, optionally ``[param-id]``."""
SCENARIO_ID = r"^[a-z0-9][a-z0-9_-]{0,63}$"
"""The name of ``safety_cases/scenarios/<id>.yaml`` (no path separators)."""
CODE_REF = r"^syncctl(\.[A-Za-z_][A-Za-z0-9_]*)+$"
"""A dotted name in syncctl: a module, or a module's function, class or class attribute."""

RuleId = Annotated[str, Field(pattern=RULE_ID)]
CodeRef = Annotated[str, Field(pattern=CODE_REF)]

Severity = Literal["catastrophic", "critical", "serious", "minor"]
SEVERITIES: tuple[Severity, ...] = ("catastrophic", "critical", "serious", "minor")
"""Worst first. The scale is defined in the header of hazards.yaml and in
docs/safety-cases.md."""

Status = Literal["implemented", "planned"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Verification(_Strict):
    """One piece of evidence: a pytest node id, or a QA scenario id (exactly one)."""

    test: str | None = Field(default=None, pattern=TEST_NODE_ID)
    scenario: str | None = Field(default=None, pattern=SCENARIO_ID)

    @model_validator(mode="after")
    def _exactly_one(self) -> Verification:
        if (self.test is None) == (self.scenario is None):
            raise ValueError("give exactly one of 'test' (a pytest node id) or 'scenario' "
                             "(a scenario id)")
        return self

    @property
    def kind(self) -> Literal["test", "scenario"]:
        return "test" if self.test is not None else "scenario"

    @property
    def ref(self) -> str:
        ref = self.test if self.test is not None else self.scenario
        assert ref is not None  # the validator guarantees one of them
        return ref


class Control(_Strict):
    """A measure that keeps a hazard from causing harm.

    It is anchored in the code's interlock rules (``rules``), in other named code (``code``:
    a validation at load time, the mode table, the controller's safe shutdown) and/or in a
    property of the hardware the synchronizer relies on (``hardware_assumption``, stated as
    such). ``status: planned`` marks a control that is not implemented yet: the check reports
    it as planned, never as a pass.
    """

    id: str = Field(pattern=CONTROL_ID)
    description: str = Field(min_length=1)
    status: Status = "implemented"
    rules: list[RuleId] = Field(default_factory=list)
    code: list[CodeRef] = Field(default_factory=list)
    hardware_assumption: str | None = Field(default=None, min_length=1)
    verification: list[Verification] = Field(default_factory=list)
    note: str | None = Field(default=None, min_length=1)


class Hazard(_Strict):
    id: str = Field(pattern=HAZARD_ID)
    title: str = Field(min_length=1)
    description: str = Field(min_length=1)
    causes: list[str] = Field(min_length=1)
    severity: Severity
    controls: list[Control] = Field(default_factory=list)
    """May be empty in the file: the check reports a hazard without controls."""
    note: str | None = Field(default=None, min_length=1)


class HazardLog(_Strict):
    version: Literal[1]
    """The schema version of the file."""
    hazards: list[Hazard] = Field(min_length=1)


@dataclass(frozen=True)
class LogIssue:
    """One problem in a hazard log, where it is: file, line, hazard and control, field."""

    file: Path
    line: int | None
    hazard_id: str | None
    control_id: str | None
    field: str
    """Dotted path inside the file, e.g. ``hazards[2].controls[0].rules[1]``; empty for the
    whole file."""
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else str(self.file)
        ids = " ".join(i for i in (self.hazard_id, self.control_id) if i)
        parts = [where, ids, self.field]
        return ": ".join(p for p in parts if p) + f": {self.message}"


class HazardLogError(Exception):
    """A hazard log that cannot be checked: unreadable, not YAML, or not of the schema."""

    def __init__(self, issues: list[LogIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


@dataclass(frozen=True)
class LoadedLog:
    """A hazard log that fits the schema, with the source that knows each field's line."""

    file: Path
    log: HazardLog
    source: YamlSource

    def line_of(self, *path: str | int) -> int | None:
        return self.source.line_of(tuple(path))


_INDEX = re.compile(r"^hazards\[(\d+)\](?:\.controls\[(\d+)\])?")


def ids_at(data: object, field: str) -> tuple[str | None, str | None]:
    """The hazard and control ids written in the raw data at a dotted field path, if any."""
    match = _INDEX.match(field)
    if match is None or not isinstance(data, dict):
        return None, None
    hazards = data.get("hazards")
    h = int(match.group(1))
    if not isinstance(hazards, list) or h >= len(hazards) or not isinstance(hazards[h], dict):
        return None, None
    hazard = hazards[h]
    hazard_id = hazard.get("id") if isinstance(hazard.get("id"), str) else None
    if match.group(2) is None:
        return hazard_id, None
    controls = hazard.get("controls")
    c = int(match.group(2))
    if not isinstance(controls, list) or c >= len(controls) or not isinstance(controls[c], dict):
        return hazard_id, None
    control_id = controls[c].get("id")
    return hazard_id, control_id if isinstance(control_id, str) else None


def load_hazard_log(path: Path | str) -> LoadedLog:
    """Read and validate a hazard log against the schema (not the chain: see ``check``)."""
    file = Path(path)
    try:
        source = load_yaml(file)
    except ConfigError as exc:
        raise HazardLogError([
            LogIssue(i.file, i.line, None, None, i.path, i.message) for i in exc.issues
        ]) from None
    try:
        log = HazardLog.model_validate(source.data)
    except ValidationError as exc:
        issues = []
        for issue in pydantic_issues(source, exc, HazardLog):
            hazard_id, control_id = ids_at(source.data, issue.path)
            message = issue.message.removeprefix("Value error, ")  # our validators' own
            issues.append(LogIssue(file, issue.line, hazard_id, control_id, issue.path, message))
        raise HazardLogError(issues) from None
    return LoadedLog(file, log, source)
