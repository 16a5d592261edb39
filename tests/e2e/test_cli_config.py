"""`syncctl config check` as a user runs it: exit codes and messages, no tracebacks."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from syncctl.config import config_hash, load_room

ROOT = Path(__file__).resolve().parents[2]
BAD = ROOT / "tests" / "data" / "bad_configs"

# file -> (the file the error must name: None = the room file itself, else a register map
# under bad_configs/maps; the field path; the line, or None when not pinned; a phrase).
EXPECTED: dict[str, tuple[str | None, str, int | None, str]] = {
    # schema
    "unknown_top_level_key": (None, "beam_speed", 54, "unknown field"),
    "unknown_nested_key": (None, "gating.hysterisis_mm", 31, "did you mean 'hysteresis_mm'?"),
    "wrong_type": (None, "gating.min_confidence", 32, "valid number"),
    "missing_required_field": (None, "limits.max_hold_s", 36, "required field is missing"),
    "bad_transport_kind": (None, "devices.beam_gate.transport.kind", 11, "'modbus-udp'"),
    "missing_transport_kind": (None, "devices.beam_gate.transport", 11, "'kind' is missing"),
    "port_out_of_range": (None, "devices.beam_gate.transport.port", 11, "65535"),
    "bad_parity": (None, "devices.imaging.transport.parity", 20, "'N', 'E' or 'O'"),
    "negative_dose": (None, "plans[0].planned_dose_mu", 48, "greater than 0"),
    "sphere_without_radius": (None, "gating.window.radius_mm", 29, "required field is missing"),
    "quoted_boolean": (None, "room.clinical_mode", 7, "valid boolean (found 'yes')"),
    "infinite_dose_tolerance": (None, "limits.dose_tolerance_mu", 47, "finite number"),
    # YAML
    "yaml_syntax_error": (None, "", 31, "YAML syntax error"),
    "top_level_not_a_mapping": (None, "", 2, "expected a mapping"),
    "duplicate_key": (None, "gating.hysteresis_mm", 37, "duplicate key 'hysteresis_mm'"),
    # cross-field
    "hysteresis_not_below_window": (None, "gating.hysteresis_mm", 30, "smaller than the window"),
    "heartbeat_too_slow_for_watchdog": (None, "limits.heartbeat_period_ms", 41, "well below"),
    "stale_limit_not_below_watchdog": (None, "limits.device_stale_ms", 43,
                                       "below the device watchdog"),
    "device_watchdog_disagrees": (None, "devices.beam_gate.watchdog_timeout_ms", 16,
                                  "disagrees with limits.device_watchdog_timeout_ms"),
    "frame_age_below_frame_period": (None, "gating.max_frame_age_ms", 31, "one frame period"),
    "pulse_longer_than_frame": (None, "devices.imaging.pulse_width_ms", 28, "frame period"),
    "imaging_poll_too_slow": (None, "devices.imaging.poll_period_ms", 24,
                              "twice per frame period"),
    "gate_timeout_not_above_poll": (None, "limits.gate_actuation_timeout_ms", 41,
                                    "stuck gate"),
    "same_endpoint_twice": (None, "devices.imaging.transport", 20, "its own address"),
    "duplicate_plan_ids": (None, "plans[1].id", 49, "duplicate plan id"),
    # register maps
    "missing_register_map": (None, "devices.beam_gate.register_map", 12, "not found"),
    "map_of_the_wrong_device": (None, "devices.beam_gate.register_map", 12,
                                "needs a 'beam-gate' map"),
    "map_missing_required_signal": ("bgc-missing-heartbeat", "registers", 8,
                                    "missing required signal 'heartbeat'"),
    "map_overlapping_registers": ("bgc-overlap", "registers.fault_code.address", 19,
                                  "overlaps dose_delivered"),
    "map_bit_index_out_of_range": ("xic-bad-bit", "registers.status.bits.exposing", 14,
                                   "outside 0..15"),
    "map_duplicate_bit_index": ("xic-duplicate-bit", "registers.status.bits.exposing", 14,
                                "already used by 'prepared'"),
    "map_coil_not_bool": ("bgc-coil-uint16", "registers.gate_command.type", 22,
                          "type must be bool; found uint16"),
    "map_rw_in_input_table": ("bgc-writable-input", "registers.heartbeat.access", 23,
                              "read-only"),
    "map_unknown_key": ("xic-unknown-key", "registers.kv.adress", 30,
                        "did you mean 'address'?"),
}


def syncctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncctl", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )


def test_every_broken_config_file_has_an_expectation() -> None:
    assert {p.stem for p in BAD.glob("*.yaml")} == set(EXPECTED)
    assert len(EXPECTED) >= 12


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_config_exits_2_naming_file_field_and_line(name: str) -> None:
    map_name, field, line, phrase = EXPECTED[name]
    room = f"tests/data/bad_configs/{name}.yaml"
    result = syncctl("config", "check", room)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert errors, result.stderr
    hit = [ln for ln in errors if phrase in ln and (not field or f" {field}:" in ln)]
    assert hit, f"no error naming {field!r} with {phrase!r}:\n{result.stderr}"
    # The error names the file the mistake is in: the room, or the register map it uses.
    file = room if map_name is None else f"tests/data/bad_configs/maps/{map_name}.yaml"
    where = f"error: {file}:{line}:" if line is not None else f"error: {file}:"
    assert hit[0].startswith(where), hit[0]
    count = len(errors)
    assert result.stderr.splitlines()[-1] == (
        f"{room}: {count} error{'s' if count != 1 else ''}; configuration NOT valid")


def test_all_errors_of_one_file_are_printed_then_counted(tmp_path: Path) -> None:
    text = (ROOT / "configs" / "room-sim.yaml").read_text()
    text = text.replace("register_map: registers/", f"register_map: {ROOT}/configs/registers/")
    text = text.replace("  min_confidence: 0.6", "  min_confidence: 7")
    text = text.replace("port: 15020", "port: 0").replace("  max_jump_mm: 8", "  max_jump: 8")
    bad = tmp_path / "room.yaml"
    bad.write_text(text)
    result = syncctl("config", "check", str(bad))
    assert result.returncode == 2
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 4, result.stderr  # min_confidence, port, max_jump, max_jump_mm
    assert all(re.match(rf"error: {re.escape(str(bad))}:\d+: \S+: ", ln) for ln in errors)
    assert result.stderr.splitlines()[-1].endswith("4 errors; configuration NOT valid")


@pytest.mark.parametrize("path", ["configs/room-sim.yaml", "configs/bench-example.yaml"])
def test_shipped_configs_are_valid(path: str) -> None:
    result = syncctl("config", "check", path)
    assert result.returncode == 0, result.stderr
    assert f"{path}: valid" in result.stdout
    assert re.search(r"config hash [0-9a-f]{16}$", result.stdout.strip())
    assert "modbus-tcp 127.0.0.1" in result.stdout
    assert "modbus-rtu" in result.stdout
    assert result.stderr == ""
    digest = config_hash(load_room(ROOT / path))
    assert result.stdout.strip().endswith(f"config hash {digest}")


def test_summary_of_the_simulated_room() -> None:
    result = syncctl("config", "check", "configs/room-sim.yaml")
    lines = result.stdout.splitlines()
    for expected in (
        "room        sim-1  Simulated carbon-ion room",
        "beam gate   modbus-tcp 127.0.0.1:15020 unit 1",
        "            poll 1 ms, timeout 50 ms, 0 retries",
        "            map registers/beam-gate.yaml (13 registers, word order big)",
        "imaging     modbus-rtu /tmp/syncctl-sim-1-xic 115200 8E1 unit 2",
        "            30 fps, 90 kV, 50 mA, 4 ms pulse",
        "            map registers/xray-imaging.yaml (22 registers, word order big)",
        "window      box, half-size 5 x 5 x 5 mm, hysteresis 1 mm",
        "gating      frame age <= 70 ms, confidence >= 0.6, 2 frame(s) inside to open,"
        " jump > 8 mm",
        "            heartbeat 20 ms, device watchdog 200 ms, stale after 100 ms",
        "plans       lung-01   10 MU, target [0, 0, 0] mm",
        "            liver-02  25 MU, target [12.5, -30, 40] mm",
    ):
        assert expected in lines, f"{expected!r} not in:\n{result.stdout}"


def test_missing_file_is_a_clear_error() -> None:
    result = syncctl("config", "check", "no/such/room.yaml")
    assert result.returncode == 2
    assert "no/such/room.yaml: file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_errors_exit_2() -> None:
    result = syncctl("config")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_the_documented_output_is_the_real_output() -> None:
    """docs/configuration.md shows `config check configs/room-sim.yaml` as it really prints."""
    docs = (ROOT / "docs" / "configuration.md").read_text()
    block = docs.split("$ syncctl config check configs/room-sim.yaml\n", 1)[1].split("\n$ ", 1)[0]
    result = syncctl("config", "check", "configs/room-sim.yaml")
    assert block.strip() == result.stdout.strip()
