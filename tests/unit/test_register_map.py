"""Register maps as data: schema, layout checks, required signals, and the word codec."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from syncctl.config import (
    REQUIRED_SIGNALS,
    CodecError,
    ConfigError,
    RegisterDef,
    RegisterMapFile,
    decode,
    decode_bits,
    decode_raw,
    encode,
    encode_bits,
    load_register_map,
)
from syncctl.config.registers import check_register_map

ROOT = Path(__file__).resolve().parents[2]
MAPS = ROOT / "configs" / "registers"
SHIPPED = {"beam-gate": MAPS / "beam-gate.yaml", "xray-imaging": MAPS / "xray-imaging.yaml"}

MODBUS_MAX_READ = 125
"""Registers one read (function 03/04) may return."""


def shipped(device: str) -> RegisterMapFile:
    return load_register_map(SHIPPED[device])


def problems_of(device: str, **changes: dict[str, Any] | None) -> list[tuple[Any, str]]:
    """Problems of the shipped map with some registers replaced (None removes one)."""
    data = shipped(device).model_dump(mode="json")
    for name, value in changes.items():
        if value is None:
            del data["registers"][name]
        else:
            data["registers"][name] = value
    return check_register_map(RegisterMapFile.model_validate(data))


def paths(problems: list[tuple[Any, str]]) -> set[str]:
    return {".".join(str(p) for p in path) for path, _ in problems}


# --- the shipped maps --------------------------------------------------------------------------


@pytest.mark.parametrize("device", sorted(SHIPPED))
def test_shipped_maps_are_valid_and_big_endian(device: str) -> None:
    regmap = shipped(device)
    assert regmap.device == device
    assert regmap.word_order == "big"
    assert check_register_map(regmap) == []


@pytest.mark.parametrize("device", sorted(SHIPPED))
def test_status_block_is_contiguous_and_one_read(device: str) -> None:
    """The read-only status block (the input table) has no holes and fits one read."""
    regmap = shipped(device)
    inputs = sorted((r.address, r.last_address) for r in regmap.registers.values()
                    if r.table == "input")
    assert inputs[0][0] == 0
    for (_, last), (first, _) in pairwise(inputs):
        assert first == last + 1, device
    assert inputs[-1][1] + 1 <= MODBUS_MAX_READ


def test_required_signals_are_the_ones_the_controller_uses() -> None:
    assert set(REQUIRED_SIGNALS) == {"beam-gate", "xray-imaging"}
    assert set(REQUIRED_SIGNALS["beam-gate"]) == {
        "identity", "firmware_version", "gate_command", "gate_readback", "status",
        "dose_delivered", "dose_preset", "dose_preset_readback", "fault_code", "fault_reset",
        "heartbeat", "heartbeat_echo", "watchdog_timeout_ms",
    }
    assert set(REQUIRED_SIGNALS["beam-gate"]["status"].bits) == {
        "ready", "spill_active", "chain_ok", "door_closed", "estop_released", "watchdog_tripped",
    }
    assert set(REQUIRED_SIGNALS["xray-imaging"]) == {
        "identity", "firmware_version", "expose_command", "prepare_command", "status",
        "frame_rate_fps", "kv", "ma", "pulse_width_ms", "frame_counter", "frame_timestamp_ms",
        "device_clock_ms", "target_x", "target_y", "target_z", "tracking_confidence",
        "cumulative_mas", "fault_code", "fault_reset", "heartbeat", "heartbeat_echo",
        "watchdog_timeout_ms",
    }
    assert set(REQUIRED_SIGNALS["xray-imaging"]["status"].bits) == {"prepared", "exposing"}


def test_shipped_scales_and_units() -> None:
    bgc, xic = shipped("beam-gate").registers, shipped("xray-imaging").registers
    assert (bgc["dose_delivered"].type, bgc["dose_delivered"].scale) == ("uint32", 0.01)
    assert bgc["dose_delivered"].unit == "MU"
    assert (bgc["dose_preset"].access, bgc["dose_preset"].scale) == ("rw", 0.01)
    # The preset as the firmware holds it, read back in the status block (IL-032/IL-033).
    readback = bgc["dose_preset_readback"]
    assert (readback.table, readback.type, readback.scale, readback.unit) == (
        "input", "uint32", 0.01, "MU")
    for axis in "xyz":
        reg = xic[f"target_{axis}"]
        assert (reg.type, reg.scale, reg.unit) == ("int32", 0.01, "mm")
    assert xic["tracking_confidence"].scale == 0.001
    assert (xic["cumulative_mas"].type, xic["cumulative_mas"].scale) == ("uint32", 0.01)


# --- layout checks ------------------------------------------------------------------------------


def test_a_register_inside_a_32_bit_value_overlaps() -> None:
    found = problems_of("beam-gate", fault_code={"address": 5, "table": "input",
                                                 "type": "uint16"})
    assert paths(found) == {"registers.fault_code.address"}
    assert "address 5 overlaps dose_delivered (input 4..5)" in found[0][1]


def test_the_same_address_in_two_tables_is_not_an_overlap() -> None:
    # identity is input 0 and gate_command holding 0 in the shipped map.
    regs = shipped("beam-gate").registers
    assert regs["identity"].address == regs["gate_command"].address == 0
    assert problems_of("beam-gate") == []


def test_bit_indexes_in_range_and_unique() -> None:
    bits = {"ready": 0, "spill_active": 1, "chain_ok": 2, "door_closed": 3,
            "estop_released": 16, "watchdog_tripped": 0}
    found = problems_of("beam-gate", status={"address": 3, "table": "input",
                                             "type": "bitfield", "bits": bits})
    messages = {".".join(map(str, p)): m for p, m in found}
    assert "outside 0..15" in messages["registers.status.bits.estop_released"]
    assert "already used by 'ready'" in messages["registers.status.bits.watchdog_tripped"]


def test_bits_only_on_bitfields_and_bitfields_need_bits() -> None:
    found = problems_of(
        "beam-gate",
        fault_code={"address": 6, "table": "input", "type": "uint16", "bits": {"a": 0}},
        status={"address": 3, "table": "input", "type": "bitfield"},
    )
    assert {"registers.fault_code.bits", "registers.status.bits"} <= paths(found)


def test_coils_and_discrete_inputs_hold_bool() -> None:
    found = problems_of(
        "beam-gate",
        gate_command={"address": 0, "table": "coil", "type": "uint16", "access": "rw"},
        gate_readback={"address": 0, "table": "discrete", "type": "bool"},
    )
    assert paths(found) == {"registers.gate_command.type"}
    # A coil of type bool is a valid gate command (FLAG signals accept bool).
    assert problems_of("beam-gate", gate_command={
        "address": 0, "table": "coil", "type": "bool", "access": "rw"}) == []


def test_read_only_tables_refuse_rw() -> None:
    found = problems_of("beam-gate", identity={"address": 0, "table": "input",
                                               "type": "uint16", "access": "rw"})
    assert paths(found) == {"registers.identity.access"}


def test_a_32_bit_value_must_fit_the_address_space() -> None:
    found = problems_of("beam-gate", spare={"address": 65535, "table": "holding",
                                            "type": "uint32", "access": "rw"})
    assert paths(found) == {"registers.spare.address"}


def test_every_required_signal_with_its_type_access_and_bits() -> None:
    found = problems_of(
        "beam-gate",
        heartbeat=None,
        dose_delivered={"address": 4, "table": "input", "type": "uint16"},
        gate_command={"address": 0, "table": "holding", "type": "uint16", "access": "ro"},
        status={"address": 3, "table": "input", "type": "bitfield", "bits": {"ready": 0}},
    )
    messages = {".".join(map(str, p)): m for p, m in found}
    assert "missing required signal 'heartbeat'" in messages["registers"]
    assert "found uint16" in messages["registers.dose_delivered.type"]
    assert "access must be rw" in messages["registers.gate_command.access"]
    assert "spill_active" in messages["registers.status.bits"]


def test_schema_refuses_unknown_keys_and_bad_values() -> None:
    from pydantic import ValidationError

    base = {"address": 1, "table": "holding", "type": "uint16"}
    for bad in ({**base, "colour": "red"}, {**base, "table": "register"},
                {**base, "type": "float32"}, {**base, "access": "wo"},
                {**base, "scale": 0}, {**base, "scale": float("inf")},
                {**base, "address": -1}, {**base, "address": "1"}):
        with pytest.raises(ValidationError):
            RegisterDef.model_validate(bad)
    with pytest.raises(ValidationError):
        RegisterMapFile.model_validate({"device": "beam-gate", "word_order": "middle",
                                        "registers": {}})


def test_errors_of_a_map_name_the_map_file_and_line(tmp_path: Path) -> None:
    text = SHIPPED["xray-imaging"].read_text().replace(
        "frame_rate_fps:      {address: 3,", "frame_rate_fps:      {adress: 3,")
    bad = tmp_path / "xic.yaml"
    bad.write_text(text)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "adress" in ln)
    with pytest.raises(ConfigError) as info:
        load_register_map(bad)
    issue = next(i for i in info.value.issues if i.path.endswith("adress"))
    assert issue.file == bad
    assert issue.line == line
    assert issue.path == "registers.frame_rate_fps.adress"
    assert "did you mean 'address'?" in issue.message


# --- codec --------------------------------------------------------------------------------------


def _reg(name: str, device: str = "xray-imaging") -> RegisterDef:
    return shipped(device).registers[name]


def test_codec_round_trips_signed_32_bit_scaled_values() -> None:
    reg = _reg("target_x")
    for value in (0.0, 12.34, -12.34, -20000.0, 21474836.47):
        words = encode(reg, value, "big")
        assert len(words) == 2
        assert decode(reg, words, "big") == pytest.approx(value)
    assert encode(reg, -1.0, "big") == [0xFFFF, 0xFF9C]
    assert encode(reg, -1.0, "little") == [0xFF9C, 0xFFFF]


def test_word_order_big_puts_the_high_word_first() -> None:
    reg = _reg("frame_counter")
    assert decode_raw(reg, [0x0001, 0x0002], "big") == 0x0001_0002
    assert decode_raw(reg, [0x0001, 0x0002], "little") == 0x0002_0001


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
    status = _reg("status", "beam-gate")
    words = encode_bits(status, {"ready": True, "door_closed": True})
    assert words == [0b1001]
    bits = decode_bits(status, words)
    assert bits["ready"] and bits["door_closed"] and not bits["estop_released"]
    with pytest.raises(CodecError):
        encode_bits(status, {"no_such_bit": True})
