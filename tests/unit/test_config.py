"""Room configuration: loading, strictness, error reporting, cross-field checks, conversion
to core parameters and the config hash. (Register maps: test_register_map.py.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from syncctl.config import ConfigError, ConfigIssue, RoomConfig, config_hash, load_room
from syncctl.config.yaml_source import load_yaml
from syncctl.core.types import CoreParams, Plan, Position, WindowBox, WindowSphere

ROOT = Path(__file__).resolve().parents[2]
ROOM_SIM = ROOT / "configs" / "room-sim.yaml"
BENCH = ROOT / "configs" / "bench-example.yaml"


@pytest.fixture
def room_dir(tmp_path: Path) -> Path:
    """A scratch copy of configs/ (room files and register maps)."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    return tmp_path / "configs"


def variant(room_dir: Path, *replacements: tuple[str, str], name: str = "room.yaml") -> Path:
    """room-sim.yaml with text replaced (each replacement must match exactly once)."""
    text = ROOM_SIM.read_text()
    for old, new in replacements:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = room_dir / name
    path.write_text(text)
    return path


def issues_of(path: Path) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load_room(path)
    return info.value.issues


def by_path(issues: list[ConfigIssue]) -> dict[str, ConfigIssue]:
    return {i.path: i for i in issues}


def line_with(path: Path, fragment: str) -> int:
    return next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if fragment in ln)


# --- valid rooms --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [ROOM_SIM, BENCH])
def test_shipped_rooms_load(path: Path) -> None:
    room = load_room(path)
    assert isinstance(room, RoomConfig)
    assert room.path == path
    assert room.beam_gate_map.device == "beam-gate"
    assert room.imaging_map.device == "xray-imaging"


def test_the_simulated_room_is_what_the_demo_expects() -> None:
    room = load_room(ROOM_SIM).room
    bgc, xic = room.devices.beam_gate, room.devices.imaging
    assert bgc.transport.describe() == "modbus-tcp 127.0.0.1:15020 unit 1"
    assert bgc.poll_period_ms == 1
    assert xic.transport.kind == "modbus-rtu"
    assert xic.frame_rate_fps == 30
    assert room.room.clinical_mode is False
    assert room.mqtt.enabled is False


def test_to_core_params_converts_every_field() -> None:
    params = load_room(ROOM_SIM).to_core_params()
    assert params == CoreParams(
        window=WindowBox(5.0, 5.0, 5.0),
        hysteresis_mm=1.0,
        max_frame_age_s=pytest.approx(0.070),  # type: ignore[arg-type]
        min_confidence=0.6,
        frames_required_inside=2,
        max_jump_mm=8.0,
        imaging_budget_mas=400.0,
        max_hold_s=120.0,
        gate_actuation_timeout_s=pytest.approx(0.020),  # type: ignore[arg-type]
        xray_actuation_timeout_s=pytest.approx(0.100),  # type: ignore[arg-type]
        heartbeat_period_s=pytest.approx(0.020),  # type: ignore[arg-type]
        device_watchdog_timeout_s=pytest.approx(0.200),  # type: ignore[arg-type]
        device_stale_s=pytest.approx(0.100),  # type: ignore[arg-type]
        max_time_step_s=pytest.approx(0.500),  # type: ignore[arg-type]
        dose_tolerance_mu=0.05,
        dose_preset_tolerance_mu=0.01,  # one count of the preset registers (scale 0.01)
        plans=(
            Plan("lung-01", 10.0, Position(0.0, 0.0, 0.0)),
            Plan("liver-02", 25.0, Position(12.5, -30.0, 40.0)),
        ),
    )
    assert params.plan("liver-02") is params.plans[1]


def test_the_preset_tolerance_is_one_count_of_the_coarser_preset_register(
        room_dir: Path) -> None:
    bgc = room_dir / "registers" / "beam-gate.yaml"
    bgc.write_text(bgc.read_text().replace(
        "dose_preset_readback: {address: 8, table: input, type: uint32, scale: 0.01,",
        "dose_preset_readback: {address: 8, table: input, type: uint32, scale: 0.02,"))
    assert load_room(variant(room_dir)).to_core_params().dose_preset_tolerance_mu == 0.02


def test_preset_registers_coarser_than_the_dose_tolerance_are_refused(room_dir: Path) -> None:
    """A preset that reads back only in 0.1 MU counts could sit beyond the overdose tolerance
    (0.05 MU) without the comparison (IL-032/IL-033) seeing it."""
    bgc = room_dir / "registers" / "beam-gate.yaml"
    text = bgc.read_text()
    assert text.count("scale: 0.01, unit: MU, access: rw") == 1
    bgc.write_text(text.replace("scale: 0.01, unit: MU, access: rw",
                                "scale: 0.1, unit: MU, access: rw"))
    found = by_path(issues_of(variant(room_dir)))
    issue = found["devices.beam_gate.register_map"]
    assert "coarser than limits.dose_tolerance_mu" in issue.message


@pytest.mark.parametrize("dose", ["10.005", "0.001", "25.0001"])
def test_a_plan_dose_that_is_not_whole_counts_is_refused(room_dir: Path, dose: str) -> None:
    """The hardware preset is rounded to a 0.01 MU count: 10.005 MU would stop the beam at
    10.00 or 10.01 MU, and a fraction that cannot reach its plan waits in TREATING for good."""
    found = by_path(issues_of(variant(room_dir, ("planned_dose_mu: 10,",
                                                 f"planned_dose_mu: {dose},"))))
    assert "not a whole number of the dose counter's counts (0.01 MU)" in found[
        "plans[0].planned_dose_mu"].message


@pytest.mark.parametrize("dose", ["10.01", "0.01", "124.7", "9999.99"])
def test_plan_doses_in_whole_counts_load(room_dir: Path, dose: str) -> None:
    config = load_room(variant(room_dir, ("planned_dose_mu: 10,", f"planned_dose_mu: {dose},")))
    assert config.room.plans[0].planned_dose_mu == float(dose)


def test_sphere_window_converts(room_dir: Path) -> None:
    path = variant(room_dir, ("{shape: box, half_size_mm: [5, 5, 5]}",
                              "{shape: sphere, radius_mm: 4.5}"))
    assert load_room(path).to_core_params().window == WindowSphere(4.5)


def test_asymmetric_box_keeps_axis_order(room_dir: Path) -> None:
    path = variant(room_dir, ("half_size_mm: [5, 5, 5]", "half_size_mm: [3, 4, 6]"))
    assert load_room(path).to_core_params().window == WindowBox(3.0, 4.0, 6.0)


def test_integers_are_accepted_where_numbers_are_expected(room_dir: Path) -> None:
    room = load_room(variant(room_dir)).room
    assert isinstance(room.gating.hysteresis_mm, float)


def test_a_device_may_state_its_watchdog_when_it_agrees(room_dir: Path) -> None:
    path = variant(room_dir, ("    poll_period_ms: 1          # about 1 kHz\n",
                              "    poll_period_ms: 1\n    watchdog_timeout_ms: 200\n"))
    assert load_room(path).room.devices.beam_gate.watchdog_timeout_ms == 200


def test_register_map_paths_are_relative_to_the_room_file(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "configs" / "registers", tmp_path / "maps")
    room = tmp_path / "rooms" / "a.yaml"
    room.parent.mkdir()
    room.write_text(ROOM_SIM.read_text().replace("registers/", "../maps/"))
    assert len(load_room(room).beam_gate_map.registers) == 13


# --- config hash ---------------------------------------------------------------------------------


def test_hash_is_stable_and_16_hex_digits() -> None:
    digest = config_hash(load_room(ROOM_SIM))
    assert digest == config_hash(load_room(ROOM_SIM))
    assert len(digest) == 16 and int(digest, 16) >= 0


def test_hash_ignores_comments_and_explicit_defaults(room_dir: Path) -> None:
    reference = config_hash(load_room(ROOM_SIM))
    path = variant(room_dir, ("mqtt:\n  enabled: false\n",
                              "# a comment\nmqtt:\n  enabled: false\n  port: 1883\n"))
    assert config_hash(load_room(path)) == reference


def test_hash_follows_room_values_and_register_maps(room_dir: Path) -> None:
    reference = config_hash(load_room(ROOM_SIM))
    changed = variant(room_dir, ("  min_confidence: 0.6", "  min_confidence: 0.7"))
    assert config_hash(load_room(changed)) != reference
    same = variant(room_dir, name="same.yaml")
    assert config_hash(load_room(same)) == reference
    bgc = room_dir / "registers" / "beam-gate.yaml"
    bgc.write_text(bgc.read_text().replace("firmware_version:  {address: 1,",
                                           "firmware_version:  {address: 10,"))
    assert config_hash(load_room(same)) != reference


# --- errors: every one, each with file, path and line --------------------------------------------


def test_every_schema_error_is_reported_with_its_line(room_dir: Path) -> None:
    path = variant(
        room_dir,
        ("  min_confidence: 0.6", "  min_confidence: 7"),
        ("  max_jump_mm: 8", "  max_jump_mm: -1\n  colour: red"),
        ("port: 15020", "port: 0"),
    )
    found = by_path(issues_of(path))
    assert {"gating.min_confidence", "gating.max_jump_mm", "gating.colour",
            "devices.beam_gate.transport.port"} <= set(found)
    assert found["gating.min_confidence"].line == line_with(path, "min_confidence")
    assert found["gating.colour"].line == line_with(path, "colour")
    assert found["devices.beam_gate.transport.port"].line == line_with(path, "port: 0")
    assert all(i.file == path for i in found.values())
    assert "(found 7)" in found["gating.min_confidence"].message
    assert "less than or equal to 1" in found["gating.min_confidence"].message


def test_schema_errors_and_register_map_errors_together(room_dir: Path) -> None:
    bgc = room_dir / "registers" / "beam-gate.yaml"
    bgc.write_text(bgc.read_text().replace("  heartbeat:         {address: 1,",
                                           "  heartbeat:         {address: 2,"))
    path = variant(room_dir, ("  min_confidence: 0.6", "  min_confidence: 7"))
    issues = issues_of(path)
    assert {i.file for i in issues} == {path, bgc}
    assert any("overlaps" in i.message for i in issues if i.file == bgc)


def test_cross_field_errors_are_all_reported(room_dir: Path) -> None:
    path = variant(
        room_dir,
        ("  hysteresis_mm: 1", "  hysteresis_mm: 6"),
        ("  heartbeat_period_ms: 20", "  heartbeat_period_ms: 100"),
        ("  - {id: liver-02,", "  - {id: lung-01,"),
    )
    found = by_path(issues_of(path))
    assert {"gating.hysteresis_mm", "limits.heartbeat_period_ms", "plans[1].id"} <= set(found)
    assert found["plans[1].id"].line == line_with(path, "id: lung-01, planned_dose_mu: 25")


CROSS_FIELD = [
    # (replacement, field path, phrase)
    (("  heartbeat_period_ms: 20", "  heartbeat_period_ms: 51"),
     "limits.heartbeat_period_ms", "at most a quarter"),
    (("  device_stale_ms: 100", "  device_stale_ms: 200"),
     "limits.device_stale_ms", "below the device watchdog"),
    (("    poll_period_ms: 4\n", "    poll_period_ms: 4\n    watchdog_timeout_ms: 250\n"),
     "devices.imaging.watchdog_timeout_ms", "disagrees with limits.device_watchdog_timeout_ms"),
    (("  max_frame_age_ms: 70 ", "  max_frame_age_ms: 33 "),
     "gating.max_frame_age_ms", "shorter than one frame period"),
    (("half_size_mm: [5, 5, 5]", "half_size_mm: [5, 1, 5]"),
     "gating.hysteresis_mm", "smaller than the window"),
    (("{shape: box, half_size_mm: [5, 5, 5]}", "{shape: sphere, radius_mm: 1}"),
     "gating.hysteresis_mm", "radius 1 mm"),
    (("    timeout_ms: 60\n", "    timeout_ms: 100\n"),
     "devices.imaging.timeout_ms", "below limits.device_stale_ms"),
    (("    poll_period_ms: 1 ", "    poll_period_ms: 100 "),
     "devices.beam_gate.poll_period_ms", "every reading would be stale"),
    (("  cycle_deadline_ms: 20", "  cycle_deadline_ms: 100"),
     "limits.cycle_deadline_ms", "below limits.device_stale_ms"),
    (("  xray_actuation_timeout_ms: 100", "  xray_actuation_timeout_ms: 4"),
     "limits.xray_actuation_timeout_ms", "imaging poll period"),
    (("    pulse_width_ms: 4\n", "    pulse_width_ms: 34\n"),
     "devices.imaging.pulse_width_ms", "one frame period"),
    (("    poll_period_ms: 4\n", "    poll_period_ms: 17\n"),
     "devices.imaging.poll_period_ms", "twice per frame period"),
    (("    frame_rate_fps: 30\n", "    frame_rate_fps: 10\n"),
     "gating.max_frame_age_ms", "100.0 ms at 10 fps"),
]


@pytest.mark.parametrize(("replacement", "field", "phrase"), CROSS_FIELD,
                         ids=[f"{c[1]}:{c[2]}" for c in CROSS_FIELD])
def test_each_cross_field_check(room_dir: Path, replacement: tuple[str, str], field: str,
                                phrase: str) -> None:
    path = variant(room_dir, replacement)
    found = by_path(issues_of(path))
    assert field in found, found
    assert phrase in found[field].message
    assert found[field].line is not None


STRICT = [
    (("  clinical_mode: false", "  clinical_mode: 'yes'"), "room.clinical_mode", "boolean"),
    (("  clinical_mode: false", "  clinical_mode: 1"), "room.clinical_mode", "boolean"),
    (("  hysteresis_mm: 1", "  hysteresis_mm: '1'"), "gating.hysteresis_mm", "number"),
    (("  hysteresis_mm: 1", "  hysteresis_mm: true"), "gating.hysteresis_mm", "number"),
    (("port: 15020", "port: '15020'"), "devices.beam_gate.transport.port", "integer"),
    (("unit: 1}", "unit: 1.5}"), "devices.beam_gate.transport.unit", "integer"),
    (("  dose_tolerance_mu: 0.05", "  dose_tolerance_mu: .inf"), "limits.dose_tolerance_mu",
     "finite"),
    (("  max_hold_s: 120", "  max_hold_s: .inf"), "limits.max_hold_s", "finite"),
    (("target_mm: [0, 0, 0]", "target_mm: [.nan, 0, 0]"), "plans[0].target_mm[0]", "finite"),
    (("half_size_mm: [5, 5, 5]", "half_size_mm: [5, 5]"), "gating.window.half_size_mm",
     "expected 3 values"),
    (("half_size_mm: [5, 5, 5]", "half_size_mm: [5, 5, 5, 5]"), "gating.window.half_size_mm",
     "at most 3"),
    (("parity: E,", "parity: X,"), "devices.imaging.transport.parity", "'N', 'E' or 'O'"),
    (("stopbits: 1,", "stopbits: 3,"), "devices.imaging.transport.stopbits", "1 or 2"),
    (("kind: modbus-tcp, ", ""), "devices.beam_gate.transport",
     "'kind' is missing: one of modbus-tcp, modbus-rtu, rtu-over-tcp"),
    (("kind: modbus-tcp", "kind: modbus-udp"), "devices.beam_gate.transport.kind",
     "'modbus-udp' is not allowed"),
    (("{shape: box,", "{shape: cube,"), "gating.window.shape", "'cube' is not allowed"),
    (("  - {id: lung-01,", "  - {id: lung 01,"), "plans[0].id", "pattern"),
    (("    frame_rate_fps: 30", "    frame_rate_fps: 60"), "devices.imaging.frame_rate_fps",
     "less than or equal to 30"),
    (("  frames_required_inside: 2", "  frames_required_inside: 0"),
     "gating.frames_required_inside", "greater than or equal to 1"),
    (("  gate_actuation_timeout_ms: 20", "  gate_actuation_timeout_ms: 0"),
     "limits.gate_actuation_timeout_ms", "greater than 0"),
    (("unit: 2}", "unit: 248}"), "devices.imaging.transport.unit", "247"),
    (("mqtt:\n  enabled: false\n", "mqtt:\n  enabled: false\n  port: 0\n"), "mqtt.port",
     "greater than or equal to 1"),
]


@pytest.mark.parametrize(("replacement", "field", "phrase"), STRICT,
                         ids=[f"{c[1]}:{c[2]}" for c in STRICT])
def test_schema_is_strict(room_dir: Path, replacement: tuple[str, str], field: str,
                          phrase: str) -> None:
    found = by_path(issues_of(variant(room_dir, replacement)))
    assert field in found, found
    assert phrase in found[field].message


def test_unknown_fields_name_the_allowed_ones(room_dir: Path) -> None:
    path = variant(room_dir, ("  hysteresis_mm: 1", "  hysterisis_mm: 1"))
    found = by_path(issues_of(path))
    message = found["gating.hysterisis_mm"].message
    assert "unknown field 'hysterisis_mm'; did you mean 'hysteresis_mm'?" in message
    assert "allowed here: window, hysteresis_mm," in message
    assert "required field is missing" in found["gating.hysteresis_mm"].message


def test_unknown_field_inside_a_transport_lists_that_transports_fields(room_dir: Path) -> None:
    path = variant(room_dir, ("baudrate: 115200,", "baud: 115200,"))
    message = by_path(issues_of(path))["devices.imaging.transport.baud"].message
    assert "did you mean 'baudrate'?" in message
    assert "parity" in message and "host" not in message


def test_placeholders_are_validated_too(room_dir: Path) -> None:
    path = variant(room_dir, ("mqtt:\n  enabled: false\n",
                              "mqtt:\n  enabled: false\n  password: x\n"
                              "roles: {operator: [beam_on]}\n"))
    assert set(by_path(issues_of(path))) == {"mqtt.password"}


# --- YAML-level problems ------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    issues = issues_of(tmp_path / "nope.yaml")
    assert issues == [ConfigIssue(tmp_path / "nope.yaml", "", None, "file not found")]
    assert str(issues[0]) == f"{tmp_path / 'nope.yaml'}: file not found"


def test_a_directory_is_not_a_room(tmp_path: Path) -> None:
    assert "is a directory" in issues_of(tmp_path)[0].message


@pytest.mark.parametrize(("text", "line", "phrase"), [
    ("room: {id: a\n", 2, "YAML syntax error"),
    ("room:\n  id: a\n\tname: b\n", 3, "YAML syntax error"),
    ("", None, "found an empty file"),
    ("- a\n- b\n", 1, "found a list"),
    ("a: 1\n---\nb: 2\n", 2, "YAML syntax error"),
    ("a: !!python/object:os.system {}\n", 1, "YAML syntax error"),
])
def test_yaml_problems_name_file_and_line(tmp_path: Path, text: str, line: int | None,
                                          phrase: str) -> None:
    path = tmp_path / "room.yaml"
    path.write_text(text)
    (issue,) = issues_of(path)
    assert issue.file == path
    assert issue.line == line
    assert phrase in issue.message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "room.yaml"
    path.write_bytes(b"room: \xff\xfe\n")
    assert "not UTF-8" in issues_of(path)[0].message


def test_duplicate_keys_are_refused(room_dir: Path) -> None:
    path = variant(room_dir, ("  max_jump_mm: 8\n", "  max_jump_mm: 8\n  hysteresis_mm: 4\n"))
    (issue,) = issues_of(path)
    assert issue.path == "gating.hysteresis_mm"
    assert issue.line == line_with(path, "hysteresis_mm: 4")
    assert f"first written at line {line_with(path, 'hysteresis_mm: 1')}" in issue.message


def test_keys_must_be_text(tmp_path: Path) -> None:
    path = tmp_path / "room.yaml"
    path.write_text("room: {id: a}\nroles:\n  yes: [beam_on]\n  3: []\n")
    messages = [i.message for i in issues_of(path)]
    assert any("'yes' is read as a boolean" in m for m in messages)
    assert any("'3' is read as a number" in m for m in messages)


def test_recursive_alias_is_refused_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "room.yaml"
    path.write_text("roles: &r {a: *r}\n")
    (issue,) = issues_of(path)
    assert "recursive alias" in issue.message and issue.path == "roles.a"


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = tmp_path / "room.yaml"
    path.write_text("\n".join(lines) + "\n")
    (issue,) = issues_of(path)
    assert "expands to more than" in issue.message


def test_deep_nesting_is_refused_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "room.yaml"
    path.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    (issue,) = issues_of(path)
    assert "nested too deeply" in issue.message or "expands" in issue.message


def test_merge_keys_are_allowed_and_indexed(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("base: &b {host: h, port: 1}\nuse:\n  <<: *b\n  port: 2\n")
    source = load_yaml(path)
    assert source.data["use"] == {"host": "h", "port": 2}
    assert source.line_of(("use", "port")) == 4


def test_line_index_of_nested_and_list_paths(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("a:\n  b:\n    - {c: 1}\n    - c: 2\n      d: 3\n")
    source = load_yaml(path)
    assert source.line_of(("a", "b", 0, "c")) == 3
    assert source.line_of(("a", "b", 1, "d")) == 5
    assert source.line_of(("a", "b", 1, "zz")) == 4  # nearest enclosing: the item
    assert source.issue(("a", "b", 1, "d"), "m").path == "a.b[1].d"
