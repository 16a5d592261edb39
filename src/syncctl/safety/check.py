"""`syncctl safety check`: is the chain hazard -> control -> rule -> verification complete?

The check reads the interlock rules from the code (``syncctl.core.rules.RULES``) and looks for
each piece of evidence without running it: a test node id is found by parsing the test file
with ``ast`` (the function, or the class and its method, must be defined there, and a
parametrised id needs a ``parametrize`` decorator); a scenario id needs its file
``safety_cases/scenarios/<id>.yaml``; a code reference must import.

Findings have three levels:

- ``error``: the chain is broken (exit 1): a hazard without an implemented control, a control
  anchored in nothing, a rule id that does not exist, a rule no hazard needs, evidence that does
  not exist, an implemented control without verification, a duplicate id;
- ``warning``: worth a look, the chain holds (a rule or a verification listed twice);
- ``planned``: a control that is not implemented yet. Reported as such, never counted as a
  pass: a hazard needs at least one implemented control.

``CheckResult`` keeps the findings and the counts so that ``safety run`` can reuse it.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from syncctl.core.rules import RULES, Rule
from syncctl.safety.hazards import (
    SEVERITIES,
    Control,
    Hazard,
    LoadedLog,
    LogIssue,
    Verification,
    load_hazard_log,
)

Level = Literal["error", "warning", "planned"]

SCENARIO_DIR = PurePosixPath("safety_cases/scenarios")
"""Where scenario ``<id>`` lives, relative to the project root: ``<dir>/<id>.yaml``."""


@dataclass(frozen=True)
class Finding:
    level: Level
    kind: str
    """A stable name for the kind of finding, e.g. ``unknown-rule`` (see KINDS)."""
    issue: LogIssue

    def __str__(self) -> str:
        return f"{self.level}: {self.issue}"

    def to_json(self) -> dict[str, Any]:
        i = self.issue
        return {"level": self.level, "kind": self.kind, "file": str(i.file), "line": i.line,
                "hazard": i.hazard_id, "control": i.control_id, "field": i.field,
                "message": i.message}


KINDS: dict[str, Level] = {
    "duplicate-hazard-id": "error",
    "duplicate-control-id": "error",
    "hazard-without-controls": "error",
    "hazard-only-planned-controls": "error",
    "control-without-anchor": "error",
    "unknown-rule": "error",
    "unneeded-rule": "error",
    "unknown-code": "error",
    "control-without-verification": "error",
    "missing-test-file": "error",
    "not-a-test-file": "error",
    "unparsable-test-file": "error",
    "missing-test": "error",
    "not-parametrized": "error",
    "missing-scenario": "error",
    "duplicate-rule": "warning",
    "duplicate-verification": "warning",
    "planned-control": "planned",
}
"""Every kind of finding and its level."""


@dataclass(frozen=True)
class Counts:
    hazards: int
    hazards_by_severity: dict[str, int]
    controls: int
    implemented_controls: int
    planned_controls: int
    rules_total: int
    rules_covered: int
    tests: int
    scenarios: int
    hardware_assumptions: int
    code_refs: int

    @property
    def verifications(self) -> int:
        return self.tests + self.scenarios


@dataclass(frozen=True)
class CheckResult:
    file: Path
    findings: tuple[Finding, ...]
    counts: Counts
    rules_uncovered: tuple[str, ...]
    planned_control_ids: tuple[str, ...]
    coverage: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Rule id -> the hazard ids whose controls name it (every rule of the table)."""

    def at_level(self, level: Level) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.level == level)

    @property
    def errors(self) -> tuple[Finding, ...]:
        return self.at_level("error")

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return self.at_level("warning")

    @property
    def planned(self) -> tuple[Finding, ...]:
        return self.at_level("planned")

    @property
    def ok(self) -> bool:
        """The chain is complete: no error (warnings and planned controls are reported)."""
        return not self.errors

    def kinds(self) -> Counter[str]:
        return Counter(f.kind for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        c = self.counts
        return {
            "file": str(self.file),
            "ok": self.ok,
            "counts": {
                "hazards": c.hazards, "hazards_by_severity": c.hazards_by_severity,
                "controls": c.controls, "implemented_controls": c.implemented_controls,
                "planned_controls": c.planned_controls, "rules_total": c.rules_total,
                "rules_covered": c.rules_covered, "verifications": c.verifications,
                "tests": c.tests, "scenarios": c.scenarios,
                "hardware_assumptions": c.hardware_assumptions, "code_refs": c.code_refs,
                "errors": len(self.errors), "warnings": len(self.warnings),
            },
            "rules_uncovered": list(self.rules_uncovered),
            "planned_controls": list(self.planned_control_ids),
            "coverage": {rule: list(hazards) for rule, hazards in self.coverage.items()},
            "findings": [f.to_json() for f in self.findings],
        }


# --- evidence ------------------------------------------------------------------------------

_PARAM = re.compile(r"^(?P<name>[^\[]+)(?P<param>\[.*\])?$")


class ParsedFiles:
    """Parsed test files, each parsed once per check."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._trees: dict[str, ast.Module | str] = {}

    def tree(self, rel: str) -> ast.Module | str:
        """The module's AST, or a message saying why there is none."""
        if rel not in self._trees:
            path = self.root / rel
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                self._trees[rel] = "missing"
            except (OSError, UnicodeDecodeError) as exc:
                self._trees[rel] = f"cannot read: {exc}"
            else:
                try:
                    self._trees[rel] = ast.parse(text, filename=str(path))
                except SyntaxError as exc:
                    self._trees[rel] = f"does not parse (line {exc.lineno}): {exc.msg}"
        return self._trees[rel]


def _is_parametrized(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> bool:
    for decorator in node.decorator_list:
        for sub in ast.walk(decorator):
            if isinstance(sub, ast.Attribute) and sub.attr == "parametrize":
                return True
    return False


def _functions(body: list[ast.stmt]) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    return {n.name: n for n in body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def _classes(body: list[ast.stmt]) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in body if isinstance(n, ast.ClassDef)}


def node_id_problem(node_id: str, files: ParsedFiles) -> tuple[str, str] | None:
    """(kind, message) when the pytest node id names nothing pytest would collect."""
    rel, *names = node_id.split("::")
    parts = PurePosixPath(rel).parts
    if PurePosixPath(rel).is_absolute() or ".." in parts or "\\" in rel:
        return "missing-test-file", f"{rel}: give a path relative to the project root"
    filename = parts[-1]
    if not (filename.startswith("test_") or filename.endswith("_test.py")):
        return "not-a-test-file", (f"{rel} is not a test file pytest collects "
                                   "(test_*.py or *_test.py)")
    tree = files.tree(rel)
    if tree == "missing":
        return "missing-test-file", f"test file {rel} does not exist"
    if isinstance(tree, str):
        return "unparsable-test-file", f"test file {rel} {tree}"
    match = _PARAM.match(names[-1])
    assert match is not None  # the schema's pattern guarantees a name
    last, param = match.group("name"), match.group("param")
    body = tree.body
    if len(names) == 2:
        cls = _classes(body).get(names[0])
        if cls is None or not names[0].startswith("Test"):
            return "missing-test", f"class {names[0]} (Test...) is not defined in {rel}"
        func = _functions(cls.body).get(last)
        if func is None or not last.startswith("test"):
            return "missing-test", f"test method {names[0]}.{last} is not defined in {rel}"
        parametrized = _is_parametrized(func) or _is_parametrized(cls)
    else:
        func = _functions(body).get(last)
        cls = _classes(body).get(last)
        if func is not None and last.startswith("test"):
            parametrized = _is_parametrized(func)
        elif cls is not None and last.startswith("Test") and param is None:
            return None
        else:
            return "missing-test", f"test function {last} is not defined in {rel}"
    if param is not None and not parametrized:
        return "not-parametrized", (f"{node_id}: {last} has no @pytest.mark.parametrize, so "
                                    f"the id {param} cannot exist; name the function alone")
    return None


def code_problem(ref: str) -> str | None:
    """A message when the dotted name does not resolve to a module or an attribute of one."""
    parts = ref.split(".")
    for end in range(len(parts), 0, -1):
        module_name = ".".join(parts[:end])
        try:
            obj: object = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and not module_name.startswith(exc.name):
                return f"{ref}: importing {module_name} fails: {exc}"
            continue
        except ImportError as exc:
            return f"{ref}: importing {module_name} fails: {exc}"
        for attr in parts[end:]:
            if not hasattr(obj, attr):
                return f"{ref}: {'.'.join(parts[:end])} has no {attr!r}"
            obj = getattr(obj, attr)
        return None
    return f"{ref}: no such module"


# --- the check -----------------------------------------------------------------------------


class _Checker:
    def __init__(self, loaded: LoadedLog, root: Path, rules: Sequence[Rule]) -> None:
        self.loaded = loaded
        self.root = root
        self.rule_ids = [r.rule_id for r in rules]
        self.findings: list[Finding] = []
        self.files = ParsedFiles(root)
        self.code_checked: dict[str, str | None] = {}

    def add(self, kind: str, path: tuple[str | int, ...], message: str,
            hazard: Hazard | None = None, control: Control | None = None) -> None:
        level = KINDS[kind]
        issue = LogIssue(
            file=self.loaded.file,
            line=self.loaded.line_of(*path),
            hazard_id=hazard.id if hazard is not None else None,
            control_id=control.id if control is not None else None,
            field=_dotted(path),
            message=message,
        )
        self.findings.append(Finding(level, kind, issue))

    def run(self) -> CheckResult:
        log = self.loaded.log
        self._duplicates()
        covered: dict[str, list[str]] = {rule_id: [] for rule_id in self.rule_ids}
        tests = scenarios = hardware = code = 0
        planned_ids: list[str] = []
        for h, hazard in enumerate(log.hazards):
            hpath: tuple[str | int, ...] = ("hazards", h)
            if not hazard.controls:
                self.add("hazard-without-controls", (*hpath, "id"),
                         f"{hazard.title!r} has no controls", hazard)
            elif all(c.status == "planned" for c in hazard.controls):
                self.add("hazard-only-planned-controls", (*hpath, "controls"),
                         f"{hazard.title!r} has only planned controls: nothing controls it "
                         "today", hazard)
            for c, control in enumerate(hazard.controls):
                cpath = (*hpath, "controls", c)
                self._control(hazard, control, cpath)
                for rule_id in dict.fromkeys(control.rules):
                    if rule_id in covered and hazard.id not in covered[rule_id]:
                        covered[rule_id].append(hazard.id)
                tests += sum(1 for v in control.verification if v.kind == "test")
                scenarios += sum(1 for v in control.verification if v.kind == "scenario")
                hardware += control.hardware_assumption is not None
                code += len(control.code)
                if control.status == "planned":
                    planned_ids.append(control.id)
        uncovered = [rule_id for rule_id, hazards in covered.items() if not hazards]
        for rule_id in uncovered:
            self.add("unneeded-rule", ("hazards",),
                     f"rule {rule_id} is in syncctl.core.rules.RULES but no hazard's control "
                     "names it: which hazard does it control?")
        controls = [c for hz in log.hazards for c in hz.controls]
        by_severity = Counter(hz.severity for hz in log.hazards)
        counts = Counts(
            hazards=len(log.hazards),
            hazards_by_severity={s: by_severity[s] for s in SEVERITIES},
            controls=len(controls),
            implemented_controls=sum(1 for c in controls if c.status == "implemented"),
            planned_controls=len(planned_ids),
            rules_total=len(self.rule_ids),
            rules_covered=len(self.rule_ids) - len(uncovered),
            tests=tests,
            scenarios=scenarios,
            hardware_assumptions=hardware,
            code_refs=code,
        )
        return CheckResult(
            file=self.loaded.file,
            findings=tuple(self.findings),
            counts=counts,
            rules_uncovered=tuple(uncovered),
            planned_control_ids=tuple(planned_ids),
            coverage={rule_id: tuple(hazards) for rule_id, hazards in covered.items()},
        )

    def _duplicates(self) -> None:
        seen_h: dict[str, int] = {}
        seen_c: dict[str, str] = {}
        for h, hazard in enumerate(self.loaded.log.hazards):
            if hazard.id in seen_h:
                first = self.loaded.line_of("hazards", seen_h[hazard.id], "id")
                self.add("duplicate-hazard-id", ("hazards", h, "id"),
                         f"hazard id {hazard.id} is used twice (first at line {first})", hazard)
            else:
                seen_h[hazard.id] = h
            for c, control in enumerate(hazard.controls):
                if control.id in seen_c:
                    self.add("duplicate-control-id", ("hazards", h, "controls", c, "id"),
                             f"control id {control.id} is used twice (first under "
                             f"{seen_c[control.id]})", hazard, control)
                else:
                    seen_c[control.id] = hazard.id

    def _control(self, hazard: Hazard, control: Control, path: tuple[str | int, ...]) -> None:
        planned = control.status == "planned"
        if planned:
            self.add("planned-control", (*path, "status"),
                     f"planned, not implemented: {control.description.strip()}",
                     hazard, control)
        elif not (control.rules or control.code or control.hardware_assumption):
            self.add("control-without-anchor", (*path, "id"),
                     "names no interlock rule, no code and no hardware assumption: what "
                     "implements it?", hazard, control)
        known = set(self.rule_ids)
        seen: set[str] = set()
        for r, rule_id in enumerate(control.rules):
            if rule_id in seen:
                self.add("duplicate-rule", (*path, "rules", r), f"{rule_id} is listed twice",
                         hazard, control)
            seen.add(rule_id)
            if rule_id not in known:
                self.add("unknown-rule", (*path, "rules", r),
                         f"{rule_id} is not a rule in syncctl.core.rules.RULES", hazard, control)
        for k, ref in enumerate(control.code):
            if ref not in self.code_checked:
                self.code_checked[ref] = code_problem(ref)
            problem = self.code_checked[ref]
            if problem is not None:
                self.add("unknown-code", (*path, "code", k), problem, hazard, control)
        if not control.verification and not planned:
            self.add("control-without-verification", (*path, "id"),
                     "names no verification (test node id or scenario id)", hazard, control)
        seen_v: set[str] = set()
        for v, evidence in enumerate(control.verification):
            vpath = (*path, "verification", v, evidence.kind)
            key = f"{evidence.kind}:{evidence.ref}"
            if key in seen_v:
                self.add("duplicate-verification", vpath, f"{evidence.ref} is listed twice",
                         hazard, control)
            seen_v.add(key)
            self._evidence(hazard, control, evidence, vpath)

    def _evidence(self, hazard: Hazard, control: Control, evidence: Verification,
                  path: tuple[str | int, ...]) -> None:
        if evidence.test is not None:
            problem = node_id_problem(evidence.test, self.files)
            if problem is not None:
                self.add(problem[0], path, problem[1], hazard, control)
        elif evidence.scenario is not None:
            rel = SCENARIO_DIR / f"{evidence.scenario}.yaml"
            if not (self.root / rel).is_file():
                self.add("missing-scenario", path,
                         f"scenario {evidence.scenario}: {rel} does not exist", hazard, control)


def _dotted(path: tuple[str | int, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def check_log(loaded: LoadedLog, root: Path, rules: Sequence[Rule] = RULES) -> CheckResult:
    """Check a loaded hazard log. ``root`` is the project root: test paths and the scenario
    directory are relative to it. ``rules`` defaults to the code's rule table."""
    return _Checker(loaded, root, rules).run()


def check_file(path: Path | str, root: Path | str = ".",
               rules: Sequence[Rule] = RULES) -> CheckResult:
    """Load and check. Raises ``HazardLogError`` when the file cannot be read or does not fit
    the schema."""
    return check_log(load_hazard_log(path), Path(root), rules)


# --- output for people ---------------------------------------------------------------------


def summary_lines(result: CheckResult) -> list[str]:
    """The summary printed after the findings."""
    c = result.counts
    severities = ", ".join(f"{n} {s}" for s, n in c.hazards_by_severity.items() if n)
    planned = ", ".join(result.planned_control_ids) or "none"
    verdict = ("chain complete" if result.ok
               else f"chain BROKEN: {len(result.errors)} error{'s' * (len(result.errors) != 1)}")
    lines = [
        f"{result.file}: {verdict}",
        f"  hazards        {c.hazards} ({severities})",
        f"  controls       {c.controls} ({c.implemented_controls} implemented, "
        f"{c.planned_controls} planned)",
        f"  rules covered  {c.rules_covered} of {c.rules_total}"
        + (f" (not covered: {', '.join(result.rules_uncovered)})" if result.rules_uncovered
           else ""),
        f"  verifications  {c.verifications} ({c.tests} tests, {c.scenarios} scenarios)",
        f"  anchors        {c.hardware_assumptions} hardware assumptions, "
        f"{c.code_refs} code references",
        f"  planned        {planned} (not implemented; not counted as a pass)",
    ]
    if result.warnings:
        lines.append(f"  warnings       {len(result.warnings)}")
    return lines


def report_lines(result: CheckResult) -> list[str]:
    """One line per finding (errors, warnings, then planned controls), then the summary."""
    order: dict[str, int] = {"error": 0, "warning": 1, "planned": 2}
    findings = sorted(result.findings, key=lambda f: order[f.level])
    return [str(f) for f in findings] + summary_lines(result)
