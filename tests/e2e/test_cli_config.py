"""`syncctl config check` as a user runs it: exit codes and messages, no tracebacks."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BAD = ROOT / "tests" / "data" / "bad_configs"

# file -> (field path the message must name, the line it must give or None, a phrase)
EXPECTED: dict[str, tuple[str, int | None, str]] = {
    "unknown_top_level_key": ("beam_speed", 54, "unknown field"),
    "unknown_nested_key": ("gating.hysterisis_mm", 31, "unknown field"),
    "wrong_type": ("gating.min_confidence", 32, "valid number"),
    "missing_required_field": ("limits.max_hold_s", None, "required field is missing"),
    "hysteresis_not_below_window": ("gating.hysteresis_mm", 30, "smaller than the window"),
    "heartbeat_too_slow_for_watchdog": ("limits.heartbeat_period_ms", 41, "well below"),
    "frame_age_below_frame_period": ("gating.max_frame_age_ms", 31, "one frame period"),
    "duplicate_plan_ids": ("plans[1].id", 49, "duplicate plan id"),
    "bad_transport_kind": ("devices.beam_gate.transport", 11, "modbus-udp"),
    "port_out_of_range": ("devices.beam_gate.transport.port", 11, "65535"),
    "yaml_syntax_error": ("", 31, "YAML syntax error"),
    "missing_register_map": ("devices.beam_gate.register_map", 12, "not found"),
    "map_missing_required_signal": ("registers", None, "missing required signal 'heartbeat'"),
    "map_overlapping_registers": ("registers.fault_code.address", 19, "overlaps dose_delivered"),
    "map_bit_index_out_of_range": ("registers.status.bits.exposing", None, "outside 0..15"),
    "map_of_the_wrong_device": ("devices.beam_gate.register_map", 12, "needs a 'beam-gate' map"),
    "stale_limit_not_below_watchdog": ("limits.device_stale_ms", 43, "below the device watchdog"),
    "negative_dose": ("plans[0].planned_dose_mu", 48, "greater than 0"),
    "sphere_without_radius": ("gating.window.radius_mm", 29, "required field is missing"),
    "top_level_not_a_mapping": ("", None, "expected a mapping"),
}


def syncctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncctl", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )


def test_every_broken_config_file_has_an_expectation() -> None:
    assert {p.stem for p in BAD.glob("*.yaml")} == set(EXPECTED)
    assert len(EXPECTED) >= 10


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_config_exits_2_naming_file_field_and_line(name: str) -> None:
    field, line, phrase = EXPECTED[name]
    result = syncctl("config", "check", f"tests/data/bad_configs/{name}.yaml")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert errors, result.stderr
    hit = [ln for ln in errors if phrase in ln and (not field or f" {field}:" in ln)]
    assert hit, f"no error naming {field!r} with {phrase!r}:\n{result.stderr}"
    # Each error names a YAML file (the room or the register map it uses).
    assert re.match(r"error: \S+\.yaml(:\d+)?:", hit[0]), hit[0]
    if line is not None:
        assert f".yaml:{line}:" in hit[0], hit[0]
    assert "configuration NOT valid" in result.stderr


@pytest.mark.parametrize("path", ["configs/room-sim.yaml", "configs/bench-example.yaml"])
def test_shipped_configs_are_valid(path: str) -> None:
    result = syncctl("config", "check", path)
    assert result.returncode == 0, result.stderr
    assert f"{path}: valid" in result.stdout
    assert re.search(r"config hash [0-9a-f]{16}$", result.stdout.strip())
    assert "modbus-tcp 127.0.0.1" in result.stdout
    assert "modbus-rtu" in result.stdout


def test_missing_file_is_a_clear_error() -> None:
    result = syncctl("config", "check", "no/such/room.yaml")
    assert result.returncode == 2
    assert "no/such/room.yaml: file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_errors_exit_2() -> None:
    result = syncctl("config")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
