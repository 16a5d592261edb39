from __future__ import annotations

import re
from pathlib import Path

import pytest

from syncctl.cli.docs_cmd import generated_docs
from syncctl.core import (
    RULES,
    RULES_BY_ID,
    TRANSITIONS,
    Inhibits,
    Mode,
    RuleClass,
    Trigger,
    next_mode,
)
from syncctl.core.modes import NOT_ALLOWED, allowed_triggers, mermaid_state_diagram

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_rule_ids_are_stable_format_and_unique() -> None:
    ids = [r.rule_id for r in RULES]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"IL-\d{3}", i) for i in ids)
    names = [r.name for r in RULES]
    assert len(names) == len(set(names))
    assert all(r.description and r.inhibits for r in RULES)


def test_termination_rules_match_the_issue_list() -> None:
    terminations = {r.name for r in RULES if r.rule_class is RuleClass.TERMINATION}
    for needed in ("emergency_stop", "door_open", "interlock_chain_open", "beam_gate_fault",
                   "beam_gate_lost", "imaging_lost", "stuck_gate", "planned_dose_reached",
                   "imaging_budget_exhausted", "interruption_too_long",
                   "beam_gate_data_invalid", "imaging_data_invalid"):
        assert needed in terminations
    interruptions = {r.name for r in RULES if r.rule_class is RuleClass.INTERRUPTION}
    for needed in ("target_not_confirmed", "frame_stale", "low_confidence"):
        assert needed in interruptions


def test_rule_ids_are_appended_never_renumbered() -> None:
    """IL-001..IL-031 in table order: a new rule takes the next id at the end."""
    assert [r.rule_id for r in RULES] == [f"IL-{i:03d}" for i in range(1, 32)]


def test_degraded_devices_hold_the_beam_only_and_lost_ones_terminate() -> None:
    for rule_id, name in (("IL-030", "beam_gate_degraded"), ("IL-031", "imaging_degraded")):
        rule = RULES_BY_ID[rule_id]
        assert rule.name == name
        assert rule.rule_class is RuleClass.INTERRUPTION
        assert rule.inhibits == frozenset({Inhibits.BEAM})
    for rule_id in ("IL-001", "IL-002"):
        rule = RULES_BY_ID[rule_id]
        assert rule.rule_class is RuleClass.TERMINATION
        assert rule.inhibits == frozenset({Inhibits.BEAM, Inhibits.XRAY})
        assert "unhealthy" not in rule.description


def test_guards_name_the_degraded_condition() -> None:
    guards = {t.trigger: t.guard for t in TRANSITIONS}
    assert "not degraded" in guards[Trigger.DEVICES_ONLINE]
    for trigger in (Trigger.ARM, Trigger.BEAM_ON, Trigger.RESUME):
        assert "neither device degraded" in guards[trigger]


def table_pairs() -> dict[tuple[Mode, Trigger], Mode]:
    pairs: dict[tuple[Mode, Trigger], Mode] = {}
    for t in TRANSITIONS:
        for s in t.sources:
            assert (s, t.trigger) not in pairs, f"ambiguous: {s} {t.trigger}"
            pairs[(s, t.trigger)] = t.dest if t.dest is not None else s
    return pairs


@pytest.mark.parametrize("mode", list(Mode), ids=lambda m: m.name)
@pytest.mark.parametrize("trigger", list(Trigger), ids=lambda t: t.value)
def test_next_mode_follows_the_table_for_every_pair(mode: Mode, trigger: Trigger) -> None:
    expected = table_pairs().get((mode, trigger), NOT_ALLOWED)
    assert next_mode(mode, trigger) == expected


def test_fault_leaves_only_by_reset_and_nothing_restarts_by_itself() -> None:
    assert set(allowed_triggers(Mode.FAULT)) == {Trigger.ACKNOWLEDGE, Trigger.RESET}
    assert next_mode(Mode.FAULT, Trigger.RESET) is Mode.SAFE
    # The only way to TREATING is BEAM_ON from READY, or RESUME from HOLD.
    into_treating = {(s, t.trigger) for t in TRANSITIONS for s in t.sources
                     if t.dest is Mode.TREATING}
    assert into_treating == {(Mode.READY, Trigger.BEAM_ON), (Mode.HOLD, Trigger.RESUME)}


def test_mermaid_lists_every_transition() -> None:
    text = mermaid_state_diagram()
    for (source, trigger), dest in table_pairs().items():
        assert f"{source.name} --> {dest.name}: {trigger.value}" in text


@pytest.mark.parametrize("name", sorted(generated_docs()))
def test_generated_docs_are_fresh(name: str) -> None:
    path = DOCS / name
    assert path.exists(), f"{path} missing: run `syncctl docs generate`"
    assert path.read_text(encoding="utf-8") == generated_docs()[name], (
        f"{path} is stale: run `syncctl docs generate`"
    )


def test_rules_by_id_is_complete() -> None:
    assert set(RULES_BY_ID) == {r.rule_id for r in RULES}
