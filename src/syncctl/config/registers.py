"""Register maps as data: one YAML per device, read by the controller and the simulators.

A map names every signal of a device: where it lives (table and address), how its 16-bit
words encode it (type, scale, word order), its unit and whether we may write it. The
controller needs a fixed set of signals per device kind (``REQUIRED_SIGNALS``); which address
holds them is the map's business, so a commissioning engineer can point syncctl at hardware
with another layout without touching code.

Conventions (docs/configuration.md):

- ``address`` is the 0-based protocol address within its ``table`` (holding: functions
  03/06/16, input: 04, coil: 01/05/15, discrete: 02).
- 32-bit types (``uint32``, ``int32``) take two consecutive registers; the map's
  ``word_order`` says which comes first: ``big`` (default) puts the high word at the lower
  address, ``little`` the low word. Within a word, Modbus is always big-endian.
- Coils and discrete inputs are single bits: their type must be ``bool``. ``bool`` may also be
  a 16-bit register that holds only 0 or 1. ``bitfield`` is a 16-bit register whose named bits
  (index 0 = least significant) are each a flag.
- Engineering value = raw integer x ``scale``.
- Input and discrete tables are read-only; ``access: rw`` there is an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from syncctl.config.yaml_source import PathKey

Table = Literal["holding", "input", "coil", "discrete"]
RegisterType = Literal["uint16", "int16", "uint32", "int32", "bitfield", "bool"]
DeviceKind = Literal["beam-gate", "xray-imaging"]

WIDTH = {"uint16": 1, "int16": 1, "uint32": 2, "int32": 2, "bitfield": 1, "bool": 1}
RAW_RANGE = {
    "uint16": (0, 0xFFFF),
    "int16": (-0x8000, 0x7FFF),
    "uint32": (0, 0xFFFF_FFFF),
    "int32": (-0x8000_0000, 0x7FFF_FFFF),
    "bitfield": (0, 0xFFFF),
    "bool": (0, 1),
}


class RegisterDef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    address: int = Field(ge=0, le=0xFFFF)
    table: Table
    type: RegisterType
    bits: dict[str, int] | None = None
    scale: float = Field(default=1.0, gt=0)
    unit: str = ""
    access: Literal["ro", "rw"] = "ro"
    description: str = ""

    @property
    def width(self) -> int:
        return WIDTH[self.type]

    @property
    def last_address(self) -> int:
        return self.address + self.width - 1


class RegisterMapFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    device: DeviceKind
    word_order: Literal["big", "little"] = "big"
    """32-bit values: ``big`` puts the high word at the lower address."""
    registers: dict[str, RegisterDef]


@dataclass(frozen=True)
class Need:
    """What the controller needs of a signal: a type family, access, and named bits."""

    types: tuple[str, ...]
    access: Literal["ro", "rw"] = "ro"
    bits: tuple[str, ...] = ()


NUMBER16 = ("uint16", "int16")
NUMBER = ("uint16", "int16", "uint32", "int32")
U32 = ("uint32",)
FLAG = ("uint16", "bool")

REQUIRED_SIGNALS: dict[str, dict[str, Need]] = {
    "beam-gate": {
        "identity": Need(NUMBER16),
        "firmware_version": Need(NUMBER16),
        "gate_command": Need(FLAG, "rw"),
        "gate_readback": Need(FLAG),
        "status": Need(("bitfield",), bits=(
            "ready", "spill_active", "chain_ok", "door_closed", "estop_released",
            "watchdog_tripped",
        )),
        "dose_delivered": Need(U32),
        "dose_preset": Need(U32, "rw"),
        "dose_preset_readback": Need(U32),
        "fault_code": Need(NUMBER16),
        "fault_reset": Need(FLAG, "rw"),
        "heartbeat": Need(("uint16",), "rw"),
        "heartbeat_echo": Need(("uint16",)),
        "watchdog_timeout_ms": Need(NUMBER16, "rw"),
    },
    "xray-imaging": {
        "identity": Need(NUMBER16),
        "firmware_version": Need(NUMBER16),
        "prepare_command": Need(FLAG, "rw"),
        "expose_command": Need(FLAG, "rw"),
        "status": Need(("bitfield",), bits=("prepared", "exposing")),
        "frame_rate_fps": Need(NUMBER16, "rw"),
        "kv": Need(NUMBER16, "rw"),
        "ma": Need(NUMBER, "rw"),
        "pulse_width_ms": Need(NUMBER16, "rw"),
        "frame_counter": Need(U32),
        "frame_timestamp_ms": Need(U32),
        "device_clock_ms": Need(U32),
        "target_x": Need(("int32",)),
        "target_y": Need(("int32",)),
        "target_z": Need(("int32",)),
        "tracking_confidence": Need(NUMBER16),
        "cumulative_mas": Need(U32),
        "fault_code": Need(NUMBER16),
        "fault_reset": Need(FLAG, "rw"),
        "heartbeat": Need(("uint16",), "rw"),
        "heartbeat_echo": Need(("uint16",)),
        "watchdog_timeout_ms": Need(NUMBER16, "rw"),
    },
}


def check_register_map(m: RegisterMapFile) -> list[tuple[PathKey, str]]:
    """Problems of a syntactically valid map, as (path, message) pairs."""
    problems: list[tuple[PathKey, str]] = []
    for name, reg in m.registers.items():
        where: PathKey = ("registers", name)
        if reg.type == "bitfield":
            if not reg.bits:
                problems.append(((*where, "bits"),
                                 "a bitfield needs named bits ({name: index 0..15})"))
            else:
                for bit_name, index in reg.bits.items():
                    if not 0 <= index <= 15:
                        problems.append(((*where, "bits", bit_name),
                                         f"bit index {index} outside 0..15 (a register has "
                                         "16 bits)"))
                owner: dict[int, str] = {}
                for bit_name, index in reg.bits.items():
                    if index in owner:
                        problems.append(((*where, "bits", bit_name),
                                         f"bit index {index} is already used by "
                                         f"{owner[index]!r}: each bit needs its own index"))
                    owner.setdefault(index, bit_name)
        elif reg.bits is not None:
            problems.append(((*where, "bits"), f"bits are only for type bitfield, not {reg.type}"))
        if reg.table in ("coil", "discrete") and reg.type != "bool":
            problems.append(((*where, "type"),
                             f"table {reg.table} holds single bits: type must be bool; "
                             f"found {reg.type}"))
        if reg.table in ("input", "discrete") and reg.access == "rw":
            problems.append(((*where, "access"), f"table {reg.table} is read-only; found rw"))
        if reg.last_address > 0xFFFF:
            problems.append(((*where, "address"), "a 32-bit value needs two addresses <= 65535"))

    by_table: dict[str, list[tuple[str, RegisterDef]]] = {}
    for name, reg in m.registers.items():
        by_table.setdefault(reg.table, []).append((name, reg))
    for entries in by_table.values():
        entries.sort(key=lambda e: e[1].address)
        for (name_a, a), (name_b, b) in pairwise(entries):
            if b.address <= a.last_address:
                problems.append(((("registers", name_b, "address")),
                                 f"address {b.address} overlaps {name_a} "
                                 f"({a.table} {a.address}..{a.last_address})"))

    for signal, need in REQUIRED_SIGNALS[m.device].items():
        found = m.registers.get(signal)
        if found is None:
            problems.append((("registers",),
                             f"missing required signal {signal!r} for a {m.device} device "
                             f"(type {' or '.join(need.types)}, access {need.access})"))
            continue
        reg = found
        where = ("registers", signal)
        if reg.type not in need.types:
            problems.append(((*where, "type"),
                             f"{signal} must be one of {', '.join(need.types)}; found {reg.type}"))
        if need.access == "rw" and reg.access != "rw":
            problems.append(((*where, "access"), f"{signal} is written by the controller: "
                                                 "access must be rw"))
        missing_bits = [b for b in need.bits if b not in (reg.bits or {})]
        if missing_bits:
            problems.append(((*where, "bits"),
                             f"{signal} lacks required bits {', '.join(missing_bits)}"))
    return problems


# --- codec: words <-> values ----------------------------------------------------------------


class CodecError(ValueError):
    """A value that the register cannot carry, or words that do not decode."""


def decode_raw(reg: RegisterDef, words: list[int], word_order: str) -> int:
    """The register's integer value from its 16-bit words (sign applied)."""
    if len(words) != reg.width or any(not 0 <= w <= 0xFFFF for w in words):
        raise CodecError(f"expected {reg.width} word(s) of 16 bits, got {words!r}")
    if reg.width == 2:
        hi, lo = (words[0], words[1]) if word_order == "big" else (words[1], words[0])
        raw = (hi << 16) | lo
        if reg.type == "int32" and raw >= 0x8000_0000:
            raw -= 1 << 32
        return raw
    raw = words[0]
    if reg.type == "int16" and raw >= 0x8000:
        raw -= 1 << 16
    if reg.type == "bool" and raw not in (0, 1):
        raise CodecError(f"a bool register holds 0 or 1, got {raw}")
    return raw


def decode(reg: RegisterDef, words: list[int], word_order: str) -> float:
    """Engineering value: raw x scale."""
    return decode_raw(reg, words, word_order) * reg.scale


def decode_bits(reg: RegisterDef, words: list[int]) -> dict[str, bool]:
    raw = decode_raw(reg, words, "big")
    return {name: bool(raw >> index & 1) for name, index in (reg.bits or {}).items()}


def encode_raw(reg: RegisterDef, raw: int, word_order: str) -> list[int]:
    low, high = RAW_RANGE[reg.type]
    if not low <= raw <= high:
        raise CodecError(f"{raw} does not fit a {reg.type} ({low}..{high})")
    if reg.width == 2:
        unsigned = raw & 0xFFFF_FFFF
        hi, lo = unsigned >> 16, unsigned & 0xFFFF
        return [hi, lo] if word_order == "big" else [lo, hi]
    return [raw & 0xFFFF]


def encode(reg: RegisterDef, value: float, word_order: str) -> list[int]:
    """Words for an engineering value, rounded to the register's resolution."""
    if not math.isfinite(value):
        raise CodecError(f"{value!r} cannot be written")
    scaled = value / reg.scale
    if not math.isfinite(scaled):  # a huge value over a tiny scale: no integer, no register
        raise CodecError(f"{value!r} at scale {reg.scale!r} does not fit a {reg.type}")
    return encode_raw(reg, round(scaled), word_order)


def encode_bits(reg: RegisterDef, flags: dict[str, bool]) -> list[int]:
    bits = reg.bits or {}
    unknown = set(flags) - set(bits)
    if unknown:
        raise CodecError(f"unknown bits {sorted(unknown)}")
    raw = 0
    for name, on in flags.items():
        if on:
            raw |= 1 << bits[name]
    return [raw]
