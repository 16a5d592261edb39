"""`syncctl safety check` as QA runs it: exit codes, one line per problem, the summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from syncctl.core.rules import RULES

ROOT = Path(__file__).resolve().parents[2]
BAD = "tests/data/bad_hazards"


def syncctl(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncctl", *args],
        capture_output=True, text=True, cwd=cwd, timeout=120, check=False,
    )


def test_the_shipped_log_passes() -> None:
    result = syncctl("safety", "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert not [ln for ln in lines if ln.startswith(("error:", "warning:"))]
    assert "safety_cases/hazards.yaml: chain complete" in lines
    assert f"  rules covered  {len(RULES)} of {len(RULES)}" in lines
    planned = [ln for ln in lines if ln.startswith("planned: safety_cases/hazards.yaml:")]
    assert planned, "the shipped log has planned controls: they must be listed"
    summary = next(ln for ln in lines if ln.startswith("  planned        "))
    assert "not counted as a pass" in summary
    assert all(ln.split(": ")[2].split()[1] in summary for ln in planned)


def test_the_documented_output_is_the_real_output() -> None:
    """docs/safety-cases.md shows `syncctl safety check` as it really prints."""
    docs = (ROOT / "docs" / "safety-cases.md").read_text(encoding="utf-8")
    block = docs.split("$ syncctl safety check\n", 1)[1].split("\n```", 1)[0]
    assert block.strip() == syncctl("safety", "check").stdout.strip()


@pytest.mark.parametrize(("name", "line"), [
    ("unknown_rule", "unknown_rule.yaml:12: HAZ-001 CTL-001: hazards[0].controls[0].rules[1]: "
                     "IL-099 is not a rule in syncctl.core.rules.RULES"),
    ("hazard_without_controls", "hazard_without_controls.yaml:36: HAZ-003: hazards[2].id: "
                                "'Hold that never ends' has no controls"),
    ("missing_test", "missing_test.yaml:27: HAZ-002 CTL-002: "
                     "hazards[1].controls[0].verification[0].test: test function "
                     "test_estop_closes_the_gate_in_no_time is not defined in "
                     "tests/unit/test_step.py"),
    ("missing_scenario", "missing_scenario.yaml:33: HAZ-002 CTL-003: "
                         "hazards[1].controls[1].verification[1].scenario: scenario "
                         "estop-during-treating: safety_cases/scenarios/"
                         "estop-during-treating.yaml does not exist"),
    ("control_without_verification", "control_without_verification.yaml:28: HAZ-002 CTL-003: "
                                     "hazards[1].controls[1].id: names no verification"),
])
def test_a_broken_chain_exits_1_with_one_line_per_problem(name: str, line: str) -> None:
    result = syncctl("safety", "check", "--hazards", f"{BAD}/{name}.yaml")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert any(ln.startswith(f"error: {BAD}/{line}") for ln in errors), result.stdout
    # The small logs do not name the code's other rules: those are reported too.
    unneeded = [ln for ln in errors if "no hazard's control names it" in ln]
    assert len(errors) == 1 + len(unneeded)
    assert f"{BAD}/{name}.yaml: chain BROKEN: {len(errors)} errors" in lines


def test_unreadable_logs_exit_2_naming_file_line_and_field() -> None:
    result = syncctl("safety", "check", "--hazards", f"{BAD}/schema_unknown_field.yaml")
    assert result.returncode == 2
    assert result.stdout == ""
    assert (f"error: {BAD}/schema_unknown_field.yaml:26: HAZ-002 CTL-002: "
            "hazards[1].controls[0].verfication: unknown field 'verfication'; did you mean "
            "'verification'?") in result.stderr
    assert "chain NOT checked" in result.stderr
    missing = syncctl("safety", "check", "--hazards", "no/such/hazards.yaml")
    assert missing.returncode == 2
    assert "error: no/such/hazards.yaml: file not found" in missing.stderr
    assert "Traceback" not in result.stderr + missing.stderr


def test_json_and_another_working_directory(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    result = syncctl("safety", "check", "--root", str(ROOT), "--json", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    assert data["ok"] is True and data["file"] == str(ROOT / "safety_cases" / "hazards.yaml")
    assert data["counts"]["rules_covered"] == data["counts"]["rules_total"] == len(RULES)
    assert data["counts"]["tests"] > 0 and data["counts"]["errors"] == 0
    assert [f["level"] for f in data["findings"]] == ["planned"] * data["counts"][
        "planned_controls"]
    # Run from elsewhere without --root, the relative test paths are not found: a broken
    # chain, not a crash.
    lost = syncctl("safety", "check", "--hazards", str(ROOT / "safety_cases" / "hazards.yaml"),
                   cwd=tmp_path)
    assert lost.returncode == 1 and "does not exist" in lost.stdout


def test_json_of_an_unreadable_log(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    result = syncctl("safety", "check", "--hazards", f"{BAD}/yaml_duplicate_key.yaml",
                     "--json", str(out))
    assert result.returncode == 2
    data = json.loads(out.read_text())
    assert data["ok"] is False and data["unreadable"] is True
    assert "duplicate key 'rules'" in data["issues"][0]


def test_usage_errors_exit_2() -> None:
    for args in (("safety",), ("safety", "check", "--no-such-option")):
        result = syncctl(*args)
        assert result.returncode == 2, args
        assert "Traceback" not in result.stderr
