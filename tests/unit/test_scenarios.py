"""The QA scenario schema (syncctl.safety.scenarios): the shipped scenarios load, every hazard
has one and the hazard log agrees, and broken scenario files are refused naming file, line and
field (the small files of tests/data/bad_scenarios/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncctl.safety.hazards import load_hazard_log
from syncctl.safety.scenarios import (
    STEP_ACTIONS,
    ScenarioError,
    Step,
    load_scenario,
    scenario_files,
)
from syncctl.safety.suite import link_problems

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "safety_cases" / "scenarios"
BAD = ROOT / "tests" / "data" / "bad_scenarios"


def test_every_shipped_scenario_loads_and_its_room_and_plan_exist() -> None:
    files = scenario_files(SHIPPED)
    assert len(files) >= 16
    for file in files:
        scenario = load_scenario(file).scenario
        assert scenario.id == file.stem
        assert (ROOT / scenario.room).is_file(), f"{file.name}: no room {scenario.room}"


def test_every_hazard_has_a_scenario_and_the_log_agrees_with_each_scenario() -> None:
    hazards = load_hazard_log(ROOT / "safety_cases" / "hazards.yaml").log.hazards
    scenarios = [load_scenario(f).scenario for f in scenario_files(SHIPPED)]
    covered = {h for s in scenarios for h in s.hazards}
    assert {h.id for h in hazards} <= covered, "hazards without a QA scenario"
    assert link_problems(hazards, scenarios) == {}


def test_link_problems_name_both_directions() -> None:
    hazards = load_hazard_log(ROOT / "safety_cases" / "hazards.yaml").log.hazards
    estop = load_scenario(SHIPPED / "estop-pressed-during-treatment.yaml").scenario
    wrong = estop.model_copy(update={"hazards": ["HAZ-015", "HAZ-001", "HAZ-999"]})
    problems = link_problems(hazards, [wrong])[estop.id]
    assert "HAZ-999 is not in the hazard log" in problems
    assert f"names HAZ-001, but no control of HAZ-001 lists scenario {estop.id}" in problems
    assert "a control of HAZ-004 lists it, but it does not name HAZ-004" in problems


BROKEN = [
    ("unknown_field", "unknown_field.yaml:8: expect.deadline_ms: unknown field 'deadline_ms'"),
    ("two_actions", "two_actions.yaml:6: steps[1]: a step holds exactly one of"),
    ("unknown_fault", "unknown_fault.yaml:5: steps[0].fault: unknown fault 'meteor_strike'"),
    ("bad_backdoor", "bad_backdoor.yaml:5: steps[0].backdoor: no backdoor register "
                     "'imaging.baseline_shift_w'"),
    ("bad_backdoor", "bad_backdoor.yaml:6: steps[1].backdoor: 20000 is outside 0..10000"),
    ("wrong_id", "wrong_id.yaml:1: id: 'another-name' is not the file name 'wrong_id'"),
    ("deadline_without_trigger", "deadline_without_trigger.yaml:6: expect: a deadline needs a "
                                 "step to measure it from"),
    ("bad_values", "bad_values.yaml:3: hazards[0]: String should match pattern"),
    ("bad_values", "bad_values.yaml:4: initial_mode: Input should be 'SAFE', 'SETUP', 'READY' "
                   "or 'TREATING' (found 'HOLD')"),
    ("bad_values", "bad_values.yaml:6: steps[0].wait_s: Input should be a valid number"),
    ("bad_values", "bad_values.yaml:7: steps[1].command: Input should be"),
    ("bad_values", "bad_values.yaml:9: expect.trips.exact[0]: String should match pattern"),
    ("config_refused_with_more", "config_refused_with_more.yaml:4: expect: 'config_refused' "
                                 "stands alone"),
    ("duplicate_key", "duplicate_key.yaml:8: expect.final_mode: duplicate key 'final_mode'"),
    ("no_expect", "no_expect.yaml:1: expect: required field is missing"),
]


@pytest.mark.parametrize(("name", "line"), BROKEN, ids=[f"{n}-{i}" for i, (n, _) in
                                                        enumerate(BROKEN)])
def test_a_broken_scenario_is_refused_naming_file_line_and_field(name: str, line: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        load_scenario(BAD / f"{name}.yaml")
    issues = [str(i) for i in caught.value.issues]
    assert any(i.startswith(f"{BAD / line}") for i in issues), issues


def test_every_bad_file_is_exercised() -> None:
    assert {p.stem for p in BAD.glob("*.yaml")} == {name for name, _ in BROKEN}


def test_a_missing_file_is_a_scenario_error() -> None:
    with pytest.raises(ScenarioError) as caught:
        load_scenario(BAD / "does-not-exist.yaml")
    assert "does-not-exist.yaml" in str(caught.value)


@pytest.mark.parametrize("action", STEP_ACTIONS)
def test_each_step_action_alone_is_a_step(action: str) -> None:
    values: dict[str, object] = {
        "wait_s": 0.5, "wait_for_gate": "open", "wait_for_mode": "FAULT",
        "command": "pause", "fault": "estop", "backdoor": "imaging.tracking_loss=1",
        "clock_jump_s": 1.0, "hang_s": 0.3, "slow_cycles": {"count": 5, "each_ms": 30},
    }
    step = Step.model_validate({action: values[action]})
    assert step.action == action
    with pytest.raises(ValueError, match="exactly one"):
        Step.model_validate({})


def test_the_trigger_is_the_first_fault_unless_one_is_marked() -> None:
    scenario = load_scenario(SHIPPED / "no-restart-after-estop.yaml").scenario
    assert scenario.steps[scenario.trigger_index or 0].fault == "estop"
    marked = scenario.model_copy(update={"steps": [
        *scenario.steps[:3], scenario.steps[3].model_copy(update={"trigger": True}),
        *scenario.steps[4:]]})
    assert marked.trigger_index == 3
    with pytest.raises(ValueError, match="'trigger' marks one of"):
        Step.model_validate({"command": "pause", "trigger": True})
