"""The QA safety suite against the simulators: this IS the CI run of `syncctl safety run`.

Every shipped scenario runs once (a module fixture: real simulator processes, loopback TCP, a
real pty) and must pass; the three reports are checked for form and content. A deliberately
weakened rule table makes its scenario fail with a finding that says why, and a deadline that
cannot be met fails as too slow: the suite can fail.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from syncctl.core import RULES, Rule
from syncctl.safety.hazards import load_hazard_log
from syncctl.safety.report import write_reports
from syncctl.safety.runner import ScenarioResult
from syncctl.safety.scenarios import GateExpect, Step, load_scenario, scenario_files
from syncctl.safety.suite import SuiteResult, run_scenario_once_more_if_not_started, run_suite

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "safety_cases" / "scenarios"
SUITE_BUDGET_S = 180.0
"""The whole suite must fit in CI (2 cores): measured about 60 s."""


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[SuiteResult, Path]:
    out = tmp_path_factory.mktemp("safety-report")
    result = run_suite(ROOT, scenario_files(SCENARIOS), out)
    write_reports(result, out)
    return result, out


def explain(result: ScenarioResult) -> str:
    lines = [f"{result.scenario.id}: error {result.error}"]
    lines += [f"  {c.name}: {c.detail}" for c in result.failures]
    lines += result.timeline[-30:]
    return "\n".join(lines)


@pytest.mark.timeout(400)
def test_every_shipped_scenario_passes(suite: tuple[SuiteResult, Path]) -> None:
    result, _ = suite
    assert result.check is not None, result.check_error
    assert result.check.ok, "\n".join(str(f) for f in result.check.errors)
    assert not result.load_failures
    assert len(result.results) == len(scenario_files(SCENARIOS))
    failed = [explain(r) for r in result.results if not r.passed]
    assert not failed, "\n\n".join(failed)
    assert result.hazards_without_scenario == []
    assert result.link_problems == {}
    assert result.passed
    assert result.duration_s < SUITE_BUDGET_S


def test_each_scenario_leaves_its_audit_trail_and_recording(
        suite: tuple[SuiteResult, Path]) -> None:
    result, out = suite
    for r in result.results:
        if r.scenario.expect.config_refused is not None:
            assert r.audit_file is None and r.final_mode == "not started"
            continue
        assert r.audit_file == out / r.scenario.id / "audit.sqlite"
        assert r.audit_file.is_file() and r.recording_file is not None
        assert r.recording_file.is_file()
        assert r.config_hash and r.safe_state_confirmed is not None


def test_reaction_times_are_measured_from_the_simulators_fault_row(
        suite: tuple[SuiteResult, Path]) -> None:
    result, _ = suite
    by_id = {r.scenario.id: r for r in result.results}
    estop = {x.what: x for x in by_id["estop-pressed-during-treatment"].reactions}
    assert set(estop) == {"gate closed (simulator)", "gate read back closed",
                          "X-ray stopped (simulator)"}
    assert all(x.measured_ms is not None and x.ok for x in estop.values())
    # A cut beam-gate link: the close command cannot get through; the device's own watchdog
    # (200 ms without a heartbeat) closes the gate, so it cannot be faster than the heartbeat
    # period after the fault.
    cut = {x.what: x for x in by_id["beam-gate-link-cut"].reactions}
    measured = cut["gate closed (simulator)"].measured_ms
    assert measured is not None and 100 < measured <= 400
    assert not any(x.what == "gate read back closed" for x in by_id["beam-gate-link-cut"]
                   .reactions)


def test_the_reports_are_well_formed_and_complete(suite: tuple[SuiteResult, Path]) -> None:
    result, out = suite
    ids = {r.scenario.id for r in result.results}
    junit = ET.parse(out / "junit.xml").getroot()
    assert junit.tag == "testsuites" and junit.get("failures") == "0"
    cases = junit.findall("./testsuite/testcase")
    by_name = {c.get("name"): c for c in cases}
    assert ids <= set(by_name)
    assert by_name["estop-pressed-during-treatment"].get("classname") == "HAZ-015"
    assert by_name["hazard log chain"].get("classname") == "safety-check"
    assert all(c.find("failure") is None and c.find("error") is None for c in cases)

    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert data["passed"] is True and data["software_version"]
    assert {s["id"] for s in data["scenarios"]} == ids
    assert data["safety_check"]["ok"] is True
    for figure in ("slowest_reaction", "tightest_reaction"):
        assert data[figure]["measured_ms"] <= data[figure]["deadline_ms"]
    slowest = max(x["measured_ms"] for s in data["scenarios"] for x in s["reactions"])
    assert data["slowest_reaction"]["measured_ms"] == slowest
    for item in data["scenarios"]:
        assert item["passed"] and item["failure"] is None
        if item["audit_file"] is not None:
            assert (out / item["audit_file"]).is_file()

    page = (out / "report.html").read_text(encoding="utf-8")
    hazards = load_hazard_log(ROOT / "safety_cases" / "hazards.yaml").log.hazards
    for hazard in hazards:
        assert hazard.id in page and hazard.title.replace("'", "&#x27;") in page
    for scenario_id in ids:
        assert f'id="{scenario_id}"' in page
    for digest in result.config_hashes:
        assert digest in page
    assert "syncctl " + result.software_version in page


def run_one(name: str, out: Path, rules: tuple[Rule, ...]) -> ScenarioResult:
    file = SCENARIOS / f"{name}.yaml"
    return run_scenario_once_more_if_not_started(load_scenario(file).scenario, file, out, ROOT,
                                                 rules)


def test_without_il_005_the_estop_scenario_fails_naming_the_rule(tmp_path: Path) -> None:
    weakened = tuple(r for r in RULES if r.rule_id != "IL-005")
    result = run_one("estop-pressed-during-treatment", tmp_path, weakened)
    assert result.rules_removed == ["IL-005"]
    assert not result.passed and result.error is None
    failed = {c.name: c.detail for c in result.failures}
    assert "missing ['IL-005']" in failed["trips"]
    assert "no such record" in failed["audit trip IL-005"]


def test_without_il_028_the_beam_stays_on_outside_the_window_and_the_scenario_fails(
        tmp_path: Path) -> None:
    weakened = tuple(r for r in RULES if r.rule_id != "IL-028")
    result = run_one("target-leaves-window", tmp_path, weakened)
    assert not result.passed and result.error is None
    failed = {c.name: c.detail for c in result.failures}
    # The ground truth shows the gate open with the target outside the window.
    assert failed["gate closed at the end (simulator)"] == "OPEN at the end of the run"
    assert "missing ['IL-028']" in failed["beam denied by"]


def test_a_deadline_that_cannot_be_met_fails_as_too_slow(tmp_path: Path) -> None:
    file = SCENARIOS / "estop-pressed-during-treatment.yaml"
    scenario = load_scenario(file).scenario
    expect = scenario.expect.model_copy(update={"gate": GateExpect(
        readback_closed_within_ms=0.001)})
    result = run_scenario_once_more_if_not_started(
        scenario.model_copy(update={"expect": expect}), file, tmp_path, ROOT)
    assert not result.passed
    failed = {c.name: c.detail for c in result.failures}
    assert failed["gate read back closed"].endswith("TOO SLOW")


def test_a_step_that_times_out_leaves_the_scenario_not_carried_out(tmp_path: Path) -> None:
    file = SCENARIOS / "operator-errors.yaml"
    scenario = load_scenario(file).scenario
    waiting = Step.model_validate({"wait_for_mode": "TREATING", "timeout_s": 0.5})
    result = run_scenario_once_more_if_not_started(
        scenario.model_copy(update={"steps": [*scenario.steps, waiting]}), file, tmp_path, ROOT)
    assert result.reached_initial_mode
    assert not result.passed
    assert result.error == (f"step {len(scenario.steps) + 1}: mode TREATING not reached within "
                            "0.5 s (mode SETUP)")
