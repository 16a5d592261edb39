"""`syncctl demo` through the CLI, as a user runs it: a whole simulated fraction over real
Modbus TCP (loopback) and Modbus RTU (pty), judged from the simulators' ground truth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOSE_RESOLUTION_MU = 0.01
"""The beam-gate controller counts dose in 0.01 MU; its hardware limit stops at the preset."""
OUTSIDE_BOUND = 0.03
"""Dose delivered while the TRUE target was outside the window, as a share of the plan: the
tracked target lags the truth by up to a frame (33 ms) plus reading and gate delays."""


def demo(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    out = tmp_path / "summary.json"
    result = subprocess.run(
        [sys.executable, "-m", "syncctl", "demo", "--quiet", "--json", str(out), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=240, check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    summary = json.loads(out.read_text()) if out.exists() else {}
    return result.returncode, summary, result.stderr


def test_a_gated_fraction_completes(tmp_path: Path) -> None:
    code, s, err = demo(tmp_path, "--seed", "1")
    assert code == 0, (s, err)
    assert s["final_state"] == "COMPLETE"
    assert abs(s["delivered_dose_mu"] - s["planned_dose_mu"]) <= DOSE_RESOLUTION_MU
    assert s["dose_outside_window_mu"] < OUTSIDE_BOUND * s["planned_dose_mu"]
    assert s["dose_position_unknown_mu"] == 0
    assert s["gate_open_count"] >= 3
    assert 0.2 < s["duty_cycle"] < 0.9
    assert s["sync_latency_ms"]["count"] > 0
    assert s["safe_state_confirmed"] is True
    assert s["trips"] == []
    for key in ("treatment_time_s", "beam_on_time_s", "imaging_mas", "gating_latency_ms"):
        assert key in s


def test_an_injected_estop_ends_in_fault_with_its_rule(tmp_path: Path) -> None:
    code, s, _ = demo(tmp_path, "--seed", "2", "--inject", "estop@5")
    assert code == 3
    assert s["final_state"] == "FAULT"
    assert any("IL-005" in trip["rule_ids"] for trip in s["trips"])
    assert s["delivered_dose_mu"] < s["planned_dose_mu"]
    assert s["safe_state_confirmed"] is True


def test_bad_usage_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "syncctl", "demo", "--inject", "nonsense@3"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert "unknown fault" in result.stderr
