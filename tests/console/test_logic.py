"""The console's pure parts: which action is available and why not, the gating trace, and
the banner's words for telemetry gaps."""

from __future__ import annotations

import json
from typing import Any

import pytest

from syncctl.bus import RoomState, Telemetry, TelemetryGap, TelemetryGaps
from syncctl.console.logic import ACTIONS, Trace, telemetry_gap_text, why_not


def state(mode: str, **over: Any) -> RoomState:
    permit = {"granted": False, "denied_by": []}
    fields: dict[str, Any] = {
        "room": "r", "utc": "2026-01-01T00:00:00.000+00:00", "mode": mode,
        "beam_permit": permit, "xray_permit": permit, "gate": "close", "xray": "stop",
        "imaging_requested": False, "plan_id": None, "planned_dose_mu": None,
        "delivered_dose_mu": None, "imaging_mas": None, "imaging_budget_mas": 400.0,
        "controller_online": True}
    fields.update(over)
    return RoomState.model_validate(fields)


def test_availability_follows_the_mode_table_and_the_roles() -> None:
    safe, setup = state("SAFE"), state("SETUP", imaging_requested=True)
    assert why_not("select_plan", "operator", safe, "r") == ""
    assert why_not("arm", "operator", safe, "r") == "not allowed in SAFE (only in SETUP)"
    assert why_not("beam_on", "operator", setup, "r") == "not allowed in SETUP (only in READY)"
    assert why_not("arm", "operator", setup, "r") == ""
    assert why_not("start_imaging", "operator", setup, "r") == "imaging is already on"
    assert why_not("stop_imaging", "operator", setup, "r") == ""
    assert why_not("reset", "operator", state("FAULT"), "r") == ""
    assert why_not("shelve", "operator", safe, "r") == "role 'operator' may not shelve"
    assert why_not("shelve", "physicist", safe, "r") == ""
    assert why_not("arm", "operator", setup, "r", online=False) == "the controller is offline"
    assert why_not("arm", "operator", None, "r") == "no room state yet"
    for a in ACTIONS:
        assert why_not(a.command, "viewer", safe, "r") == f"role 'viewer' may not {a.command}"
        assert why_not(a.command, "engineer", safe, "r").startswith("role 'engineer' may not")


@pytest.mark.parametrize("offset_mm, row", [(0.0, 4), (10.0, 1), (-13.0, 8), (40.0, 0)])
def test_the_trace_draws_the_target_against_the_window(offset_mm: float, row: int) -> None:
    trace = Trace(span_s=10.0, axis=2)
    for i in range(101):
        trace.add(Telemetry.model_validate_json(json.dumps({
            "room": "r", "t_s": i * 0.1, "utc": "", "target_mm": [1.0, 2.0, 30.0 + offset_mm],
            "tracking_confidence": 0.9, "window_centre_mm": [1.0, 2.0, 30.0],
            "window_shape": "box", "window_size_mm": [5.0, 5.0, 5.0], "inside": True,
            "gate_command": "open", "gate_readback_open": i >= 50, "spill_active": i < 50,
            "delivered_dose_mu": 0.0, "frame_age_ms": 10.0, "stream": "s", "seq": i + 1,
            "dropped_total": 0})))
    lines = trace.render(width=40, rows=9, range_mm=13.5)
    assert len(lines) == 9 + 3
    plots = [line.split("│", 1)[1] for line in lines[:9]]
    assert [i for i, p in enumerate(plots) if "●" in p] == [row]
    # the window (half-size 5 mm) is shaded on the rows whose centre lies within it
    assert [i for i, p in enumerate(plots) if "░" in p] == [i for i in (3, 4, 5) if i != row]
    gate = lines[9].split("│", 1)[1]
    spill = lines[10].split("│", 1)[1]
    assert gate.startswith("·") and gate.endswith("█")  # closed in the older half, then open
    assert spill.startswith("▀") and spill.endswith(" ")
    assert lines[0].startswith(" +12.0mm") and lines[4].startswith("  +0.0mm")


def test_the_banner_names_telemetry_gaps_only_when_there_are_some() -> None:
    gaps = TelemetryGaps()
    assert telemetry_gap_text(gaps) == ""
    gaps.missing, gaps.gaps, gaps.largest_gap = 1, 1, 1
    assert telemetry_gap_text(gaps) == "telemetry gap: 1 sample missed in 1 gap (largest 1)"
    gaps.missing, gaps.gaps, gaps.largest_gap, gaps.publisher_dropped_total = 70, 2, 66, 66
    gaps.last_gap = TelemetryGap("s", 10, 77, 66, "2026-12-02T10:18:08.210+00:00")
    assert telemetry_gap_text(gaps) == (
        "telemetry gap: 70 samples missed in 2 gaps (largest 66, last at 10:18:08 UTC); "
        "the controller could not send 66 telemetry samples in this run")
