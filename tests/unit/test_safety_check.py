"""The hazard log and its check: each kind of broken chain, the schema, the shipped log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from syncctl.cli.docs_cmd import generated_sections, replace_sections
from syncctl.cli.safety_cmd import check as cli_check
from syncctl.core.rules import RULES, RULES_BY_ID, Rule
from syncctl.core.types import RuleClass
from syncctl.safety import HazardLogError, check_file, load_hazard_log
from syncctl.safety.check import KINDS, CheckResult, ParsedFiles, node_id_problem, report_lines

ROOT = Path(__file__).resolve().parents[2]
BAD = ROOT / "tests" / "data" / "bad_hazards"
SHIPPED = ROOT / "safety_cases" / "hazards.yaml"

MINI_RULES: tuple[Rule, ...] = tuple(RULES_BY_ID[i] for i in ("IL-005", "IL-006", "IL-028"))
"""The rule table the small logs in bad_hazards/ are checked against, so that they stay small
and do not depend on rules added to the code later."""


def mini(name: str) -> CheckResult:
    return check_file(BAD / f"{name}.yaml", ROOT, MINI_RULES)


# file -> (kind, hazard id, control id, line, phrase): the one error the file must produce.
BROKEN: dict[str, tuple[str, str | None, str | None, int, str]] = {
    "hazard_without_controls": ("hazard-without-controls", "HAZ-003", None, 36, "no controls"),
    "hazard_only_planned_controls": ("hazard-only-planned-controls", "HAZ-003", None, 41,
                                     "only planned controls"),
    "control_without_anchor": ("control-without-anchor", "HAZ-002", "CTL-003", 28,
                               "no interlock rule, no code and no hardware assumption"),
    "unknown_rule": ("unknown-rule", "HAZ-001", "CTL-001", 12, "IL-099 is not a rule"),
    "unneeded_rule": ("unneeded-rule", None, None, 3, "rule IL-006 is in"),
    "unknown_code": ("unknown-code", "HAZ-002", "CTL-002", 25, "has no 'no_such_function'"),
    "control_without_verification": ("control-without-verification", "HAZ-002", "CTL-003", 28,
                                     "names no verification"),
    "missing_test_file": ("missing-test-file", "HAZ-002", "CTL-003", 32,
                          "tests/unit/test_no_such_file.py does not exist"),
    "not_a_test_file": ("not-a-test-file", "HAZ-002", "CTL-003", 32,
                        "tests/unit/harness.py is not a test file"),
    "missing_test": ("missing-test", "HAZ-002", "CTL-002", 27,
                     "test_estop_closes_the_gate_in_no_time is not defined"),
    "missing_test_method": ("missing-test", "HAZ-002", "CTL-002", 27,
                            "class TestEstop (Test...) is not defined"),
    "not_parametrized": ("not-parametrized", "HAZ-002", "CTL-002", 27,
                         "no @pytest.mark.parametrize, so the id [fast] cannot exist"),
    "missing_scenario": ("missing-scenario", "HAZ-002", "CTL-003", 33,
                         "safety_cases/scenarios/estop-during-treating.yaml does not exist"),
    "duplicate_hazard_id": ("duplicate-hazard-id", "HAZ-001", None, 16,
                            "HAZ-001 is used twice (first at line 4)"),
    "duplicate_control_id": ("duplicate-control-id", "HAZ-002", "CTL-002", 28,
                             "CTL-002 is used twice"),
}

# file -> (line, hazard id, control id, field, phrase): the schema or YAML error it must give.
UNREADABLE: dict[str, tuple[int, str | None, str | None, str, str]] = {
    "schema_unknown_field": (26, "HAZ-002", "CTL-002", "hazards[1].controls[0].verfication",
                             "did you mean 'verification'?"),
    "schema_bad_rule_id": (24, "HAZ-002", "CTL-002", "hazards[1].controls[0].rules[1]",
                           "(found 'IL-6')"),
    "schema_bad_severity": (20, "HAZ-002", None, "hazards[1].severity",
                            "'catastrophic', 'critical', 'serious' or 'minor' (found 'fatal')"),
    "schema_test_and_scenario": (32, "HAZ-002", "CTL-003", "hazards[1].controls[1].verification[0]",
                                 "give exactly one of 'test'"),
    "yaml_duplicate_key": (13, None, None, "hazards[0].controls[0].rules",
                           "duplicate key 'rules'"),
}


def test_every_bad_hazard_file_has_an_expectation() -> None:
    names = {p.stem for p in BAD.glob("*.yaml")}
    expected = (set(BROKEN) | set(UNREADABLE)
                | {"minimal_complete", "duplicate_rule_and_verification"})
    assert names == expected


def test_every_kind_of_broken_chain_has_a_file() -> None:
    errors = {kind for kind, level in KINDS.items() if level == "error"}
    # A test file that does not parse would break pytest's own collection if kept under
    # tests/: that kind is made in tmp_path below.
    assert errors - {b[0] for b in BROKEN.values()} == {"unparsable-test-file"}


def test_the_minimal_log_is_complete_and_its_planned_control_is_not_a_pass() -> None:
    result = mini("minimal_complete")
    assert result.ok and not result.errors and not result.warnings
    assert [(f.kind, f.issue.control_id) for f in result.planned] == [
        ("planned-control", "CTL-004")]
    c = result.counts
    assert (c.hazards, c.controls, c.implemented_controls, c.planned_controls) == (2, 4, 3, 1)
    assert (c.rules_covered, c.rules_total, c.tests, c.scenarios) == (3, 3, 4, 0)
    assert (c.hardware_assumptions, c.code_refs) == (1, 1)
    assert result.planned_control_ids == ("CTL-004",)
    assert result.coverage == {"IL-005": ("HAZ-002",), "IL-006": ("HAZ-002",),
                               "IL-028": ("HAZ-001",)}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_each_broken_chain_is_reported_where_it_is(name: str) -> None:
    kind, hazard_id, control_id, line, phrase = BROKEN[name]
    result = mini(name)
    assert not result.ok
    assert [f.kind for f in result.errors] == [kind], [str(f) for f in result.errors]
    issue = result.errors[0].issue
    assert (issue.hazard_id, issue.control_id, issue.line) == (hazard_id, control_id, line)
    assert issue.file == BAD / f"{name}.yaml"
    assert phrase in issue.message, issue.message
    text = str(result.errors[0])
    assert text.startswith(f"error: {BAD / name}.yaml:{line}: ")
    assert " ".join(i for i in (hazard_id, control_id) if i) in text


def test_an_unneeded_rule_is_named_in_the_summary() -> None:
    result = mini("unneeded_rule")
    assert result.rules_uncovered == ("IL-006",)
    assert result.counts.rules_covered == 2
    assert "  rules covered  2 of 3 (not covered: IL-006)" in report_lines(result)


def test_duplicates_inside_a_control_are_warnings_only() -> None:
    result = mini("duplicate_rule_and_verification")
    assert result.ok
    assert [(f.kind, f.issue.field) for f in result.warnings] == [
        ("duplicate-rule", "hazards[1].controls[0].rules[2]"),
        ("duplicate-verification", "hazards[1].controls[0].verification[1].test"),
    ]


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_a_log_that_does_not_fit_the_schema_is_refused_naming_where(name: str) -> None:
    line, hazard_id, control_id, field, phrase = UNREADABLE[name]
    with pytest.raises(HazardLogError) as caught:
        load_hazard_log(BAD / f"{name}.yaml")
    issues = caught.value.issues
    assert len(issues) == 1, [str(i) for i in issues]
    issue = issues[0]
    assert (issue.line, issue.hazard_id, issue.control_id, issue.field) == (
        line, hazard_id, control_id, field)
    assert phrase in issue.message, issue.message
    assert str(issue).startswith(f"{BAD / name}.yaml:{line}: ")


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(HazardLogError, match="file not found"):
        check_file(tmp_path / "hazards.yaml", ROOT)


def test_a_test_file_that_does_not_parse_is_reported(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_broken.py").write_text("def test_x(:\n    pass\n")
    problem = node_id_problem("tests/test_broken.py::test_x", ParsedFiles(tmp_path))
    assert problem is not None
    assert problem[0] == "unparsable-test-file"
    assert "does not parse (line 1)" in problem[1]


def test_node_ids_of_classes_methods_and_cases(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_shapes.py").write_text(
        "import pytest\n\n"
        "class TestGate:\n"
        "    def test_closes(self) -> None: ...\n\n"
        "    @pytest.mark.parametrize('n', [1, 2])\n"
        "    async def test_cases(self, n: int) -> None: ...\n\n"
        "@pytest.mark.parametrize('n', [1])\n"
        "class TestAll:\n"
        "    def test_each(self, n: int) -> None: ...\n\n"
        "def helper() -> None: ...\n")
    files = ParsedFiles(tmp_path)
    ok = ["tests/test_shapes.py::TestGate", "tests/test_shapes.py::TestGate::test_closes",
          "tests/test_shapes.py::TestGate::test_cases[1]",
          "tests/test_shapes.py::TestAll::test_each[1]"]
    for node_id in ok:
        assert node_id_problem(node_id, files) is None, node_id
    bad = {
        "tests/test_shapes.py::helper": "missing-test",
        "tests/test_shapes.py::TestGate::test_opens": "missing-test",
        "tests/test_shapes.py::TestGate::test_closes[1]": "not-parametrized",
        "tests/test_shapes.py::TestGate[1]": "missing-test",
        "/abs/tests/test_shapes.py::TestGate": "missing-test-file",
        "tests/../tests/test_shapes.py::TestGate": "missing-test-file",
    }
    for node_id, kind in bad.items():
        problem = node_id_problem(node_id, files)
        assert problem is not None and problem[0] == kind, (node_id, problem)


def test_rules_are_read_from_the_code_s_table() -> None:
    """A rule added to the table and named by no hazard breaks the shipped log's chain."""
    extra = Rule("IL-999", "test_only", "A rule no hazard needs", RuleClass.INTERRUPTION,
                 frozenset(), lambda f: False)
    result = check_file(SHIPPED, ROOT, (*RULES, extra))
    assert [(f.kind, f.issue.message.split()[1]) for f in result.errors] == [
        ("unneeded-rule", "IL-999")]
    assert check_file(SHIPPED, ROOT, RULES[1:]).errors[0].kind == "unknown-rule"


# --- the shipped log -----------------------------------------------------------------------


def test_the_shipped_log_is_complete() -> None:
    result = check_file(SHIPPED, ROOT)
    assert result.ok, "\n".join(str(f) for f in result.errors)
    assert not result.warnings, "\n".join(str(f) for f in result.warnings)
    assert result.counts.rules_covered == len(RULES) and not result.rules_uncovered
    assert all(result.coverage[r.rule_id] for r in RULES)


ISSUE_HAZARDS = [
    "target is outside the gating window", "stale or frozen image", "misidentified target",
    "x-ray exposure outside the synchronizer's control", "stuck-open gate",
    "communication loss with either device", "controller crash or hang", "overdose",
    "excess imaging dose", "unintended restart after a fault",
    "operator error (wrong plan, wrong room, unauthorised command)", "clock jumps",
    "hold that never ends", "configuration error (wrong register map or limits)",
]


def test_the_shipped_log_covers_the_hazards_the_issue_lists() -> None:
    titles = [h.title.lower() for h in load_hazard_log(SHIPPED).log.hazards]
    for wanted in ISSUE_HAZARDS:
        assert any(wanted in t for t in titles), wanted


def test_the_shipped_log_reports_its_planned_controls_as_planned() -> None:
    log = load_hazard_log(SHIPPED).log
    planned = [c.id for h in log.hazards for c in h.controls if c.status == "planned"]
    result = check_file(SHIPPED, ROOT)
    assert planned and list(result.planned_control_ids) == planned
    assert [f.issue.control_id for f in result.planned] == planned
    # Every hazard has at least one control that exists today.
    for hazard in log.hazards:
        assert any(c.status == "implemented" for c in hazard.controls), hazard.id


def test_every_test_the_shipped_log_names_is_collected_by_pytest() -> None:
    """The check parses test files and cannot see parametrised cases; pytest can. Collection
    only: nothing is run."""
    log = load_hazard_log(SHIPPED).log
    node_ids = sorted({v.test for h in log.hazards for c in h.controls
                       for v in c.verification if v.test is not None})
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *node_ids],
        capture_output=True, text=True, cwd=ROOT, timeout=240, check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    collected = {line.split("[", 1)[0] for line in result.stdout.splitlines() if "::" in line}
    assert {n.split("[", 1)[0] for n in node_ids} <= collected


def test_json_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "check.json"
    assert cli_check(BAD / "unknown_rule.yaml", ROOT, out) == 1
    capsys.readouterr()
    data = json.loads(out.read_text())
    assert data["ok"] is False
    assert data["counts"]["hazards"] == 2 and data["counts"]["planned_controls"] == 1
    unknown = [f for f in data["findings"] if f["kind"] == "unknown-rule"]
    assert unknown == [{
        "level": "error", "kind": "unknown-rule", "file": str(BAD / "unknown_rule.yaml"),
        "line": 12, "hazard": "HAZ-001", "control": "CTL-001",
        "field": "hazards[0].controls[0].rules[1]",
        "message": "IL-099 is not a rule in syncctl.core.rules.RULES"}]
    assert "syncctl_version" in data


def test_the_generated_sections_of_the_doc_are_fresh() -> None:
    doc = ROOT / "docs" / "safety-cases.md"
    current = doc.read_text(encoding="utf-8")
    sections = generated_sections(ROOT)["safety-cases.md"]
    assert replace_sections(current, sections) == current, (
        f"{doc} is stale: run `syncctl docs generate`")
    for log_hazard in load_hazard_log(SHIPPED).log.hazards:
        assert f"**{log_hazard.id}** {log_hazard.title}" in current


def test_replace_sections_needs_both_markers() -> None:
    with pytest.raises(ValueError, match="markers of section 'x' not found"):
        replace_sections("no markers here\n", {"x": "body\n"})
