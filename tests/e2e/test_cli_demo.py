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


RECORDING = "fraction.fraction.jsonl.gz"


def syncctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "syncctl", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout, check=False)


def demo(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run the demo as a user would, recording the fraction and writing its review."""
    out = tmp_path / "summary.json"
    result = subprocess.run(
        [sys.executable, "-m", "syncctl", "demo", "--quiet", "--json", str(out),
         "--record", str(tmp_path / RECORDING), "--review", str(tmp_path / "review"), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=240, check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    summary = json.loads(out.read_text()) if out.exists() else {}
    return result.returncode, summary, result.stderr


def test_a_gated_fraction_completes(tmp_path: Path) -> None:
    code, s, err = demo(tmp_path, "--seed", "1")
    assert code == 0, ({k: s.get(k) for k in ("final_state", "trips", "setup_faults_reset",
                                              "controller", "scheduling")}, err)
    # as shipped: the control loop asks for real-time scheduling, and says what it got
    assert s["scheduling"].startswith(("SCHED_FIFO priority 10", "ordinary scheduling ("))
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
    assert s["recording_dropped_steps"] == 0
    check_review(tmp_path, s)

    # Replay with the recorded configuration: the core decides exactly what it decided.
    same = syncctl("replay", s["recording"])
    assert same.returncode == 0, same.stdout + same.stderr
    assert "IDENTICAL: every output of all" in same.stdout

    # Replay with a tighter window: the beam would have been denied where it was granted.
    tight = tmp_path / "tight.yaml"
    text = (ROOT / "configs" / "room-sim.yaml").read_text()
    assert "half_size_mm: [5, 5, 5]" in text
    tight.write_text(text.replace("half_size_mm: [5, 5, 5]", "half_size_mm: [5, 5, 3]")
                     .replace("registers/", str(ROOT / "configs" / "registers") + "/"))
    what_if = syncctl("replay", s["recording"], "--config", str(tight), "--json",
                      str(tmp_path / "what-if.json"))
    assert what_if.returncode == 1, what_if.stdout + what_if.stderr
    assert "Beam permit differs in" in what_if.stdout
    report = json.loads((tmp_path / "what-if.json").read_text())
    lost = [iv for iv in report["intervals"] if iv["permit"] == "beam"]
    assert lost and all(iv["recorded"] and not iv["replayed"] for iv in lost)
    assert all(iv["replayed_denied_by"] == ["IL-028"] for iv in lost)
    assert report["first_mode_difference"] is None
    assert report["beam_permit_s"]["replayed"] < report["beam_permit_s"]["recorded"]
    est = report["dose_estimate"]
    assert est["replayed"]["dose_outside_window_mu"] <= est["recorded"]["dose_outside_window_mu"]


def check_review(tmp_path: Path, s: dict[str, Any]) -> None:
    page = tmp_path / "review" / "index.html"
    assert s["review"] == str(page)
    html = page.read_text()
    for name in ("motion.png", "timing.png", "dose.png", "latency.png"):
        png = tmp_path / "review" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert png.stat().st_size > 10_000, name  # a drawn plot, not an empty canvas
        assert f'src="{name}"' in html
    assert f"Fraction review: {s['final_state']}" in html
    for key in ("delivered_dose_mu", "dose_outside_window_mu", "gating_latency_ms"):
        assert f"<th>{key}</th>" in html


def test_an_injected_estop_ends_in_fault_with_its_rule(tmp_path: Path) -> None:
    code, s, _ = demo(tmp_path, "--seed", "2", "--inject", "estop@5")
    assert code == 3
    assert s["final_state"] == "FAULT"
    assert any("IL-005" in trip["rule_ids"] for trip in s["trips"])
    assert s["delivered_dose_mu"] < s["planned_dose_mu"]
    assert s["safe_state_confirmed"] is True
    check_review(tmp_path, s)
    assert "<tr class='trip'>" in (tmp_path / "review" / "index.html").read_text()


def test_bad_usage_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "syncctl", "demo", "--inject", "nonsense@3"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert "unknown fault" in result.stderr
