"""`syncctl safety run` as QA runs it: progress lines, the summary, the three reports, the
audit trail and recording of each scenario, the reviews, and the exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def syncctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncctl", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=240, check=False,
    )


def test_two_scenarios_pass_and_write_the_report(tmp_path: Path) -> None:
    report = tmp_path / "report"
    result = syncctl("safety", "run", "--report", str(report), "--reviews",
                     "--scenario", "estop-pressed-during-treatment",
                     "--scenario", "operator-errors")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("syncctl safety run: syncctl ")
    assert "[ 1/2] run  estop-pressed-during-treatment (HAZ-015, HAZ-004) ..." in lines
    assert any(ln.startswith("[ 1/2] PASS estop-pressed-during-treatment ") and " ms of " in ln
               for ln in lines), lines
    assert any(ln.startswith("[ 2/2] PASS operator-errors ") for ln in lines), lines
    assert "safety_cases/hazards.yaml: chain complete" in lines
    assert any(ln.startswith("scenarios      2 run, 2 passed, 0 failed") for ln in lines)
    for label in ("slowest        ", "closest        "):
        assert any(ln.startswith(label) and "(estop-pressed-during-treatment)" in ln
                   for ln in lines), lines
    assert lines[-1] == "result         PASS"

    for name in ("report.html", "junit.xml", "report.json", "run.log"):
        assert (report / name).is_file(), name
    cases = ET.parse(report / "junit.xml").getroot().findall("./testsuite/testcase")
    assert {c.get("name") for c in cases} == {"hazard log chain",
                                             "estop-pressed-during-treatment",
                                             "operator-errors"}
    data = json.loads((report / "report.json").read_text(encoding="utf-8"))
    assert data["passed"] is True
    for item in data["scenarios"]:
        assert (report / item["audit_file"]).is_file()
        assert (report / item["recording_file"]).is_file()
        assert item["review"] is not None and (report / item["review"]).is_file()
    page = (report / "report.html").read_text(encoding="utf-8")
    assert 'href="estop-pressed-during-treatment/review/index.html"' in page

    audit = syncctl("audit", "verify",
                    str(report / "estop-pressed-during-treatment" / "audit.sqlite"))
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_an_unknown_scenario_is_a_usage_error(tmp_path: Path) -> None:
    result = syncctl("safety", "run", "--report", str(tmp_path), "--scenario", "no-such-thing")
    assert result.returncode == 2
    assert "error: no scenario 'no-such-thing'" in result.stderr
    assert not (tmp_path / "report.html").exists()


def test_a_broken_hazard_log_fails_the_run_and_the_report_says_why(tmp_path: Path) -> None:
    result = syncctl("safety", "run", "--report", str(tmp_path),
                     "--hazards", "tests/data/bad_hazards/unknown_rule.yaml",
                     "--scenario", "config-stale-limit-above-watchdog")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "[ 1/1] PASS config-stale-limit-above-watchdog" in result.stdout
    assert "chain BROKEN" in result.stdout
    assert result.stdout.splitlines()[-1] == "result         FAIL"
    junit = ET.parse(tmp_path / "junit.xml").getroot()
    check = next(c for c in junit.iter("testcase") if c.get("classname") == "safety-check")
    failure = check.find("failure")
    assert failure is not None and "IL-099" in (failure.text or "")
    assert json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))["passed"] is False
