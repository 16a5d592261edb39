"""Markdown tables of the hazard log, for docs/safety-cases.md (generated, never hand-edited)."""

from __future__ import annotations

from collections.abc import Sequence

from syncctl.core.rules import RULES, Rule
from syncctl.safety.check import CheckResult
from syncctl.safety.hazards import Control, HazardLog


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _evidence(control: Control) -> str:
    tests = sum(1 for v in control.verification if v.kind == "test")
    scenarios = sum(1 for v in control.verification if v.kind == "scenario")
    parts = []
    if tests:
        parts.append(f"{tests} test{'s' * (tests != 1)}")
    if scenarios:
        parts.append(f"{scenarios} scenario{'s' * (scenarios != 1)}")
    return ", ".join(parts) or "none"


def _anchors(control: Control) -> str:
    parts = [f"`{ref}`" for ref in control.code]
    if control.hardware_assumption is not None:
        parts.append("hardware assumption")
    return ", ".join(parts) or "-"


def hazard_table_markdown(log: HazardLog) -> str:
    """One row per control: hazard, severity, control, status, rules, other anchors,
    evidence."""
    lines = [
        "| hazard | severity | control | status | rules | also anchored in | verification |",
        "|---|---|---|---|---|---|---|",
    ]
    for hazard in log.hazards:
        first = True
        rows: list[Control | None] = [*hazard.controls] or [None]
        for control in rows:
            head = (f"**{hazard.id}** {_cell(hazard.title)} | {hazard.severity}" if first
                    else " | ")
            first = False
            if control is None:
                lines.append(f"| {head} | (none) | | | | |")
                continue
            status = "**planned**" if control.status == "planned" else "implemented"
            rules = ", ".join(control.rules) or "-"
            lines.append(f"| {head} | {control.id}: {_cell(control.description)} | {status} "
                         f"| {rules} | {_anchors(control)} | {_evidence(control)} |")
    return "\n".join(lines) + "\n"


def rule_coverage_markdown(result: CheckResult, rules: Sequence[Rule] = RULES) -> str:
    """Every rule of the code's table and the hazards whose controls need it."""
    lines = ["| rule | name | class | needed by |", "|---|---|---|---|"]
    for rule in rules:
        hazards = result.coverage.get(rule.rule_id, ())
        needed = ", ".join(hazards) if hazards else "**no hazard** (the check fails)"
        lines.append(f"| {rule.rule_id} | `{rule.name}` | {rule.rule_class.value} | {needed} |")
    return "\n".join(lines) + "\n"
