"""Room configuration and register maps: loading, conversion, hash, codec."""

from __future__ import annotations

import shutil
from itertools import pairwise
from pathlib import Path

import pytest

from syncctl.config import (
    CodecError,
    ConfigError,
    config_hash,
    decode,
    decode_bits,
    encode,
    encode_bits,
    load_register_map,
    load_room,
)
from syncctl.core import WindowBox

ROOT = Path(__file__).resolve().parents[2]
ROOM_SIM = ROOT / "configs" / "room-sim.yaml"


def test_the_simulated_room_loads_and_converts() -> None:
    room = load_room(ROOM_SIM)
    params = room.to_core_params()
    assert params.window == WindowBox(5.0, 5.0, 5.0)
    assert params.max_frame_age_s == pytest.approx(0.070)
    assert params.heartbeat_period_s == pytest.approx(0.020)
    assert params.device_watchdog_timeout_s == pytest.approx(0.200)
    assert params.frames_required_inside == 2
    assert [p.plan_id for p in params.plans] == ["lung-01", "liver-02"]
    assert params.plans[1].target.z_mm == 40.0
    assert room.beam_gate_map.device == "beam-gate"
    assert "heartbeat" in room.imaging_map.registers


def test_hash_is_stable_and_follows_the_maps(tmp_path: Path) -> None:
    assert config_hash(load_room(ROOM_SIM)) == config_hash(load_room(ROOM_SIM))
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    copy = tmp_path / "configs" / "room-sim.yaml"
    # Comments and formatting do not change it...
    copy.write_text("# a new comment\n" + copy.read_text())
    assert config_hash(load_room(copy)) == config_hash(load_room(ROOM_SIM))
    # ... a register map's content does.
    bgc = tmp_path / "configs" / "registers" / "beam-gate.yaml"
    bgc.write_text(bgc.read_text().replace("firmware_version:  {address: 1,",
                                           "firmware_version:  {address: 8,"))
    assert config_hash(load_room(copy)) != config_hash(load_room(ROOM_SIM))


def test_every_error_is_reported_not_just_the_first(tmp_path: Path) -> None:
    text = ROOM_SIM.read_text()
    text = text.replace("  min_confidence: 0.6", "  min_confidence: 7")
    text = text.replace("  max_jump_mm: 8", "  max_jump_mm: -1\n  colour: red")
    text = text.replace("port: 15020", "port: 0")
    bad = tmp_path / "room.yaml"
    bad.write_text(text)
    shutil.copytree(ROOT / "configs" / "registers", tmp_path / "registers")
    with pytest.raises(ConfigError) as info:
        load_room(bad)
    paths = {i.path for i in info.value.issues}
    assert {"gating.min_confidence", "gating.max_jump_mm", "gating.colour",
            "devices.beam_gate.transport.port"} <= paths
    assert all(i.line is not None for i in info.value.issues)


def test_cross_field_errors_are_all_reported(tmp_path: Path) -> None:
    text = ROOM_SIM.read_text()
    text = text.replace("  hysteresis_mm: 1", "  hysteresis_mm: 6")
    text = text.replace("  heartbeat_period_ms: 20", "  heartbeat_period_ms: 100")
    bad = tmp_path / "room.yaml"
    bad.write_text(text)
    shutil.copytree(ROOT / "configs" / "registers", tmp_path / "registers")
    with pytest.raises(ConfigError) as info:
        load_room(bad)
    paths = {i.path for i in info.value.issues}
    assert {"gating.hysteresis_mm", "limits.heartbeat_period_ms"} <= paths


@pytest.mark.parametrize("name", ["beam-gate.yaml", "xray-imaging.yaml"])
def test_shipped_maps_are_valid(name: str) -> None:
    regmap = load_register_map(ROOT / "configs" / "registers" / name)
    assert regmap.word_order == "big"


def test_status_blocks_are_contiguous() -> None:
    """One read covers each device's status: the input table has no holes."""
    for name in ("beam-gate.yaml", "xray-imaging.yaml"):
        regmap = load_register_map(ROOT / "configs" / "registers" / name)
        inputs = sorted((r.address, r.last_address) for r in regmap.registers.values()
                        if r.table == "input")
        assert inputs[0][0] == 0
        for (_, last), (first, _) in pairwise(inputs):
            assert first == last + 1, name


def _reg(name: str, device: str = "xray-imaging.yaml"):  # type: ignore[no-untyped-def]
    return load_register_map(ROOT / "configs" / "registers" / device).registers[name]


def test_codec_round_trips_signed_32_bit_scaled_values() -> None:
    reg = _reg("target_x")
    for value in (0.0, 12.34, -12.34, -20000.0, 21474836.47):
        words = encode(reg, value, "big")
        assert len(words) == 2
        assert decode(reg, words, "big") == pytest.approx(value)
    assert encode(reg, -1.0, "big") == [0xFFFF, 0xFF9C]
    assert encode(reg, -1.0, "little") == [0xFF9C, 0xFFFF]


def test_codec_refuses_what_does_not_fit() -> None:
    conf = _reg("tracking_confidence")
    with pytest.raises(CodecError):
        encode(conf, 70.0, "big")  # 70000 > 65535
    with pytest.raises(CodecError):
        encode(conf, -0.1, "big")
    with pytest.raises(CodecError):
        encode(conf, float("nan"), "big")
    with pytest.raises(CodecError):
        decode(conf, [1, 2], "big")
    with pytest.raises(CodecError):
        decode(conf, [70000], "big")


def test_bitfields() -> None:
    status = _reg("status", "beam-gate.yaml")
    words = encode_bits(status, {"ready": True, "door_closed": True})
    assert words == [0b1001]
    bits = decode_bits(status, words)
    assert bits["ready"] and bits["door_closed"] and not bits["estop_released"]
    with pytest.raises(CodecError):
        encode_bits(status, {"no_such_bit": True})
