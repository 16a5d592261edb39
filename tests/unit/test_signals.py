"""Typed signals: read/write planning, decoding of status blocks, the session rules (on an
in-memory backend; the same rules over real Modbus are in tests/integration/test_devices.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from syncctl.config import RegisterMapFile, RoomConfig, encode, load_room
from syncctl.core.types import GateCommand, ImagingStatus, Position, XrayCommand
from syncctl.devices import (
    BeamGateClient,
    DeviceDataError,
    ImagingClient,
    LinkError,
    ReadBlock,
    SignalMap,
    beam_gate_status,
    imaging_status,
    plan_reads,
    plan_writes,
)
from syncctl.devices import beam_gate as beam_gate_module
from syncctl.devices import imaging as imaging_module
from syncctl.devices.signals import Table

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def room() -> RoomConfig:
    return load_room(ROOT / "configs" / "room-sim.yaml")


def regmap(registers: dict[str, dict[str, Any]], word_order: str = "big") -> RegisterMapFile:
    return RegisterMapFile.model_validate(
        {"device": "beam-gate", "word_order": word_order, "registers": registers})


def u16(address: int, table: str = "input", **extra: Any) -> dict[str, Any]:
    return {"address": address, "table": table, "type": "uint16", **extra}


# --- read planning --------------------------------------------------------------------------


def test_shipped_maps_read_their_status_block_in_one_transaction(room: RoomConfig) -> None:
    bgc = SignalMap(room.beam_gate_map).plan_reads(beam_gate_module.STATUS_SIGNALS)
    assert bgc.blocks == (ReadBlock("input", 2, 8, (
        "gate_readback", "status", "dose_delivered", "fault_code", "heartbeat_echo",
        "dose_preset_readback")),)
    xic = SignalMap(room.imaging_map).plan_reads(imaging_module.STATUS_SIGNALS)
    assert len(xic.blocks) == 1
    assert (xic.blocks[0].table, xic.blocks[0].address, xic.blocks[0].count) == ("input", 2, 18)


def test_contiguous_signals_share_a_block_and_a_gap_splits_it() -> None:
    signals = SignalMap(regmap({"a": u16(0), "b": u16(1), "c": u16(2), "d": u16(5)}))
    plan = signals.plan_reads(["d", "b", "a", "c"])
    assert plan.blocks == (ReadBlock("input", 0, 3, ("a", "b", "c")),
                           ReadBlock("input", 5, 1, ("d",)))


def test_only_requested_signals_are_read() -> None:
    # b sits between a and c but is not asked for: reading it could hit a register the
    # device rejects, so a and c go in separate reads.
    signals = SignalMap(regmap({"a": u16(0), "b": u16(1), "c": u16(2)}))
    assert [(b.address, b.count) for b in signals.plan_reads(["a", "c"]).blocks] == [(0, 1),
                                                                                     (2, 1)]


def test_32_bit_values_count_two_registers_and_are_never_split() -> None:
    registers = {f"r{i}": u16(i) for i in range(124)}
    registers["wide"] = {"address": 124, "table": "input", "type": "uint32"}  # 124..125
    registers["after"] = u16(126)
    signals = SignalMap(regmap(registers))
    blocks = signals.plan_reads(registers).blocks
    assert [(b.address, b.count) for b in blocks] == [(0, 124), (124, 3)]
    assert blocks[1].signals == ("wide", "after")


def test_tables_are_planned_separately() -> None:
    signals = SignalMap(regmap({"in0": u16(0), "in1": u16(1), "h0": u16(0, "holding"),
                                "h1": u16(1, "holding")}))
    blocks = signals.plan_reads(["h1", "in0", "h0", "in1"]).blocks
    assert [(b.table, b.address, b.count) for b in blocks] == [("input", 0, 2),
                                                               ("holding", 0, 2)]


def test_at_most_125_registers_per_read() -> None:
    registers = {f"r{i:03}": u16(i) for i in range(300)}
    blocks = SignalMap(regmap(registers)).plan_reads(registers).blocks
    assert [(b.address, b.count) for b in blocks] == [(0, 125), (125, 125), (250, 50)]
    assert plan_reads(SignalMap(regmap(registers))[n] for n in registers) == blocks


def test_bit_tables_allow_2000_per_read() -> None:
    registers = {f"c{i:04}": {"address": i, "table": "coil", "type": "bool"}
                 for i in range(2100)}
    blocks = SignalMap(regmap(registers)).plan_reads(registers).blocks
    assert [(b.table, b.address, b.count) for b in blocks] == [("coil", 0, 2000),
                                                               ("coil", 2000, 100)]


def test_a_signal_asked_twice_is_read_once() -> None:
    signals = SignalMap(regmap({"a": u16(0)}))
    assert signals.plan_reads(["a", "a"]).blocks == (ReadBlock("input", 0, 1, ("a",)),)


def test_unknown_signal_is_a_local_error() -> None:
    with pytest.raises(ValueError, match="no signal 'nope'"):
        SignalMap(regmap({"a": u16(0)})).plan_reads(["nope"])


# --- write planning -------------------------------------------------------------------------


def test_settings_writes_group_contiguous_registers(room: RoomConfig) -> None:
    signals = SignalMap(room.imaging_map)
    items = [(signals[n], signals[n].encode(v)) for n, v in {
        "frame_rate_fps": 30, "kv": 90, "ma": 50, "pulse_width_ms": 4,
        "watchdog_timeout_ms": 200}.items()]
    blocks = plan_writes(items)
    # fault_reset (7) sits between pulse_width_ms (6) and watchdog_timeout_ms (8): never
    # written as a side effect of the settings.
    assert [(b.address, b.words) for b in blocks] == [(3, (30, 90, 500, 40)), (8, (200,))]


def test_input_registers_are_not_writable(room: RoomConfig) -> None:
    signals = SignalMap(room.beam_gate_map)
    with pytest.raises(ValueError, match="read-only"):
        signals["heartbeat_echo"].encode(1)
    with pytest.raises(ValueError, match="not writable"):
        plan_writes([(signals["heartbeat_echo"], [1])])


def test_a_value_the_register_cannot_carry_is_a_local_error(room: RoomConfig) -> None:
    preset = SignalMap(room.beam_gate_map)["dose_preset"]
    assert preset.encode(25.5) == [0, 2550]
    with pytest.raises(ValueError):
        preset.encode(-1)
    with pytest.raises(ValueError):
        preset.encode(float("nan"))


# --- decoding status blocks -----------------------------------------------------------------


def bgc_words(room: RoomConfig, **values: float) -> list[int]:
    """Input registers 2..9 of the shipped BGC map."""
    defaults: dict[str, float] = {"gate_readback": 1, "status": 0b011101, "dose_delivered": 12.34,
                                  "fault_code": 0, "heartbeat_echo": 77,
                                  "dose_preset_readback": 15.34}
    defaults.update(values)
    words = [0] * 10
    for name, value in defaults.items():
        reg = room.beam_gate_map.registers[name]
        words[reg.address:reg.last_address + 1] = encode(reg, value, "big")
    return words[2:]


def decode_bgc(room: RoomConfig, words: Sequence[int]) -> Any:
    plan = SignalMap(room.beam_gate_map).plan_reads(beam_gate_module.STATUS_SIGNALS)
    return beam_gate_status(plan.values([list(words)]))


def test_beam_gate_status_from_words(room: RoomConfig) -> None:
    status = decode_bgc(room, bgc_words(room))
    assert status.gate_open_readback is True
    assert (status.ready, status.spill_active, status.chain_ok, status.door_closed,
            status.estop_released, status.watchdog_tripped) == (True, False, True, True, True,
                                                                False)
    assert status.dose_delivered_mu == pytest.approx(12.34)
    assert status.dose_preset_mu == pytest.approx(15.34)
    assert (status.fault_code, status.heartbeat_echo) == (0, 77)


def test_the_dose_preset_is_read_back_in_the_same_transaction(room: RoomConfig) -> None:
    """The preset the firmware holds comes with every poll, in the one read of the status
    block (IL-032/IL-033 compare it with the commanded one); 0 after a power-up."""
    plan = SignalMap(room.beam_gate_map).plan_reads(beam_gate_module.STATUS_SIGNALS)
    assert [(b.table, b.address, b.count) for b in plan.blocks] == [("input", 2, 8)]
    assert decode_bgc(room, bgc_words(room, dose_preset_readback=0)).dose_preset_mu == 0.0
    big = decode_bgc(room, bgc_words(room, dose_preset_readback=655.36))
    assert big.dose_preset_mu == pytest.approx(655.36)  # both words of the uint32


def test_unnamed_bits_of_a_bitfield_are_ignored(room: RoomConfig) -> None:
    status = decode_bgc(room, bgc_words(room, status=0xFFC0 | 0b100000))
    assert status.watchdog_tripped is True
    assert status.ready is False


def test_a_flag_other_than_0_or_1_is_malformed(room: RoomConfig) -> None:
    with pytest.raises(DeviceDataError, match="gate_readback: a flag holds 0 or 1, got 7"):
        decode_bgc(room, bgc_words(room, gate_readback=7))


def test_a_bool_register_other_than_0_or_1_is_malformed() -> None:
    signals = SignalMap(regmap({"flag": {"address": 0, "table": "input", "type": "bool"}}))
    values = signals.plan_reads(["flag"]).values([[7]])
    with pytest.raises(DeviceDataError, match="bool register holds 0 or 1"):
        values.flag("flag")


def test_a_wrong_word_count_is_malformed(room: RoomConfig) -> None:
    with pytest.raises(DeviceDataError, match="expected 8 value"):
        decode_bgc(room, bgc_words(room)[:-1])


def test_a_word_outside_16_bits_is_malformed(room: RoomConfig) -> None:
    words = bgc_words(room)
    words[room.beam_gate_map.registers["heartbeat_echo"].address - 2] = 0x1_0000
    with pytest.raises(DeviceDataError, match="heartbeat_echo"):
        decode_bgc(room, words)


def test_a_count_with_a_fractional_scale_must_be_whole() -> None:
    signals = SignalMap(regmap({"n": u16(0, scale=0.5)}))
    values = signals.plan_reads(["n"]).values([[3]])
    assert values.number("n") == 1.5
    with pytest.raises(DeviceDataError, match="not a whole number"):
        values.integer("n")


def xic_words(room: RoomConfig, **values: float) -> list[int]:
    """Input registers 2..19 of the shipped XIC map."""
    defaults: dict[str, float] = {
        "status": 0b11, "frame_counter": 70_000, "frame_timestamp_ms": 4_000_000_000,
        "device_clock_ms": 4_000_000_010, "target_x": -12.5, "target_y": 3.25, "target_z": 0,
        "tracking_confidence": 0.875, "cumulative_mas": 123.45, "fault_code": 2,
        "heartbeat_echo": 65535,
    }
    defaults.update(values)
    words = [0] * 20
    for name, value in defaults.items():
        reg = room.imaging_map.registers[name]
        words[reg.address:reg.last_address + 1] = encode(reg, value, "big")
    return words[2:]


def decode_xic(room: RoomConfig, words: Sequence[int]) -> ImagingStatus:
    plan = SignalMap(room.imaging_map).plan_reads(imaging_module.STATUS_SIGNALS)
    return imaging_status(plan.values([list(words)]))


def test_imaging_status_from_words(room: RoomConfig) -> None:
    status = decode_xic(room, xic_words(room))
    assert (status.prepared, status.exposing) == (True, True)
    assert (status.frame_counter, status.frame_timestamp_ms, status.device_clock_ms) == (
        70_000, 4_000_000_000, 4_000_000_010)
    assert status.target == Position(pytest.approx(-12.5), pytest.approx(3.25), 0.0)
    assert status.tracking_confidence == pytest.approx(0.875)
    assert status.cumulative_mas == pytest.approx(123.45)
    assert (status.fault_code, status.heartbeat_echo) == (2, 65535)


def test_a_confidence_above_one_decodes_and_is_left_to_the_core(room: RoomConfig) -> None:
    words = xic_words(room)
    words[15 - 2] = 5000
    assert decode_xic(room, words).tracking_confidence == pytest.approx(5.0)


def test_little_word_order() -> None:
    signals = SignalMap(regmap({"w": {"address": 0, "table": "input", "type": "int32"}},
                               word_order="little"))
    assert signals.plan_reads(["w"]).values([[0xFFFE, 0xFFFF]]).integer("w") == -2


# --- the session rules on an in-memory backend ------------------------------------------------


class MemoryBackend:
    """A RegisterBackend over two lists, with switches for the failures a link can have."""

    def __init__(self, input_words: list[int], holding_words: list[int]) -> None:
        self.tables: dict[str, list[int]] = {"input": input_words, "holding": holding_words}
        self.stats: dict[str, int] = {"transactions": 0, "failures": 0}
        self.up = True
        self._connected = False
        self._session = 0
        self.clamp: dict[int, int] = {}
        """holding address -> the value the device keeps whatever is written."""
        self.log: list[tuple[str, str, int, int]] = []
        self.write_error: LinkError | None = None
        """Raised by every write while set (the link stays up)."""

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def session(self) -> int:
        return self._session

    @property
    def last_error(self) -> str:
        return "" if self.up else "down"

    def describe(self) -> str:
        return "memory"

    async def connect(self) -> bool:
        if not self.up:
            return False
        if not self._connected:
            self._connected, self._session = True, self._session + 1
        return True

    def mark_good(self) -> None:
        pass

    def drop(self, reason: str) -> None:
        self._connected = False

    async def read(self, table: Table, address: int, count: int) -> list[int]:
        self._check()
        self.log.append(("read", table, address, count))
        return list(self.tables[table][address:address + count])

    async def write(self, table: Table, address: int, words: Sequence[int]) -> None:
        self._check()
        if self.write_error is not None:
            self.stats["failures"] += 1
            raise self.write_error
        self.log.append(("write", table, address, len(words)))
        for i, w in enumerate(words):
            self.tables[table][address + i] = self.clamp.get(address + i, w)

    async def close(self) -> None:
        self._connected = False

    def _check(self) -> None:
        self.stats["transactions"] += 1
        if not (self.up and self._connected):
            self.stats["failures"] += 1
            self._connected = False
            raise LinkError("disconnected", "down")


def bgc_on_memory(room: RoomConfig) -> tuple[BeamGateClient, MemoryBackend]:
    backend = MemoryBackend([0x4247, 101, *bgc_words(room)], [0] * 6)
    times = iter(float(i) for i in range(1, 10_000))
    return BeamGateClient(room, clock=lambda: next(times), backend=backend), backend


@pytest.mark.asyncio
async def test_a_session_is_healthy_only_after_settings_read_back_equal(room: RoomConfig) -> None:
    client, backend = bgc_on_memory(room)
    assert client.reading.healthy is False and client.reading.status is None
    reading = await client.poll()
    assert reading.healthy and reading.status is not None and reading.read_at is not None
    assert backend.tables["holding"][5] == 200  # watchdog_timeout_ms
    assert client.identity == 0x4247 and client.firmware_version == 101
    assert backend.log == [("read", "input", 0, 2), ("write", "holding", 5, 1),
                           ("read", "holding", 5, 1), ("read", "input", 2, 8)]
    backend.log.clear()
    await client.poll()
    assert backend.log == [("read", "input", 2, 8)]  # one transaction per poll


@pytest.mark.asyncio
async def test_a_setting_that_does_not_read_back_keeps_the_device_unhealthy(
    room: RoomConfig,
) -> None:
    client, backend = bgc_on_memory(room)
    backend.clamp[5] = 1000
    reading = await client.poll()
    assert reading.healthy is False and reading.status is None
    assert "watchdog_timeout_ms reads back [1000], wrote [200]" in client.last_error
    assert not backend.connected  # dropped: the next attempt goes through the backoff
    assert await client.write_gate(GateCommand.OPEN) is False


@pytest.mark.asyncio
async def test_a_malformed_value_keeps_the_last_good_status_unhealthy(room: RoomConfig) -> None:
    client, backend = bgc_on_memory(room)
    good = await client.poll()
    backend.tables["input"][2] = 7  # gate_readback
    bad = await client.poll()
    assert bad.healthy is False
    assert (bad.status, bad.read_at) == (good.status, good.read_at)
    assert "gate_readback" in client.last_error
    backend.tables["input"][2] = 0
    assert (await client.poll()).healthy


@pytest.mark.asyncio
async def test_an_unchanged_status_block_is_not_decoded_again_and_any_change_is(
    room: RoomConfig,
) -> None:
    client, backend = bgc_on_memory(room)
    first = await client.poll()
    again = await client.poll()
    assert again.status is first.status  # the same words: the same decoded status
    assert again.read_at is not None and first.read_at is not None
    assert again.read_at > first.read_at and again.healthy
    assert client.stats["unchanged"] == 1
    for address in range(2, 10):  # every word of the status block, changed alone
        saved = backend.tables["input"][address]
        backend.tables["input"][address] = saved ^ 1
        changed = await client.poll()
        assert changed.status is not first.status or not changed.healthy, address
        backend.tables["input"][address] = saved
        back = await client.poll()
        assert back.healthy and back.status == first.status, address
    backend.tables["input"][2] = 7  # a malformed gate_readback is refused every time
    for _ in range(2):
        bad = await client.poll()
        assert not bad.healthy and "gate_readback" in client.last_error


@pytest.mark.asyncio
async def test_writes_toward_the_safe_state_need_only_a_connection(room: RoomConfig) -> None:
    client, backend = bgc_on_memory(room)
    assert await client.write_gate(GateCommand.CLOSE) is False  # not connected at all
    await backend.connect()  # connected, settings not yet verified
    assert await client.write_gate(GateCommand.CLOSE) is True
    assert await client.write_gate(GateCommand.OPEN) is False
    assert await client.write_heartbeat(1) is False
    assert "settings not verified" in client.last_error
    await client.poll()
    assert await client.write_gate(GateCommand.OPEN) is True
    assert backend.tables["holding"][0] == 1


@pytest.mark.asyncio
async def test_link_loss_is_data_not_an_exception(room: RoomConfig) -> None:
    client, backend = bgc_on_memory(room)
    assert (await client.poll()).healthy
    backend.up = False
    reading = await client.poll()
    assert reading.healthy is False and reading.status is not None
    assert await client.write_heartbeat(5) is False
    assert await client.load_dose_preset(10) is False
    backend.up = True
    assert (await client.poll()).healthy
    assert backend.session == 2


@pytest.mark.asyncio
async def test_out_of_range_argument_is_refused_locally(room: RoomConfig) -> None:
    client, _ = bgc_on_memory(room)
    await client.poll()
    assert await client.write_heartbeat(70_000) is False
    assert "does not fit" in client.last_error
    assert client.reading.healthy  # our bad value says nothing about the device


@pytest.mark.asyncio
async def test_imaging_settings_and_xray_commands_on_memory(room: RoomConfig) -> None:
    backend = MemoryBackend([0x5849, 100, *xic_words(room, status=0)], [0] * 9)
    client = ImagingClient(room, backend=backend)
    assert (await client.poll()).healthy
    assert backend.tables["holding"][3:9] == [30, 90, 500, 40, 0, 200]
    assert await client.write_xray(XrayCommand.EXPOSE) is True
    assert backend.tables["holding"][:2] == [1, 1]
    assert await client.write_xray(XrayCommand.STOP) is True
    assert backend.tables["holding"][:2] == [1, 0]  # stays prepared


def test_a_setting_the_register_cannot_carry_refuses_to_start(room: RoomConfig) -> None:
    limits = room.room.limits.model_copy(update={"device_watchdog_timeout_ms": 70_000})
    bad = dataclasses.replace(room, room=room.room.model_copy(update={"limits": limits}))
    with pytest.raises(ValueError, match="does not fit"):
        BeamGateClient(bad, backend=MemoryBackend([0] * 8, [0] * 6))


@pytest.mark.asyncio
async def test_transactions_per_operation_match_docs_devices_md(room: RoomConfig) -> None:
    """The numbers in docs/devices.md ("Transaction plan"), pinned."""
    client, backend = bgc_on_memory(room)
    await client.poll()
    backend.log.clear()
    calls = {
        "write_gate": lambda: client.write_gate(GateCommand.OPEN),
        "load_dose_preset": lambda: client.load_dose_preset(12.5),
        "write_heartbeat": lambda: client.write_heartbeat(3),
        "reset_faults": client.reset_faults,
    }
    seen = {}
    for name, call in calls.items():
        assert await call(), client.last_error
        seen[name], backend.log = backend.log, []
    assert seen == {
        "write_gate": [("write", "holding", 0, 1), ("read", "holding", 0, 1)],
        "load_dose_preset": [("write", "holding", 2, 2), ("read", "holding", 2, 2)],
        "write_heartbeat": [("write", "holding", 1, 1)],
        "reset_faults": [("write", "holding", 4, 1)],
    }

    xic_backend = MemoryBackend([0x5849, 100, *xic_words(room)], [0] * 9)
    xic = ImagingClient(room, backend=xic_backend)
    await xic.poll()
    assert xic_backend.log == [
        ("read", "input", 0, 2),
        ("write", "holding", 3, 4), ("write", "holding", 8, 1),
        ("read", "holding", 3, 4), ("read", "holding", 8, 1),
        ("read", "input", 2, 18),
    ]
    xic_backend.log.clear()
    await xic.write_xray(XrayCommand.EXPOSE)
    assert xic_backend.log == [("write", "holding", 0, 2), ("read", "holding", 0, 2)]
    xic_backend.log.clear()
    await xic.write_xray(XrayCommand.STOP)
    assert xic_backend.log == [("write", "holding", 1, 1), ("read", "holding", 1, 1)]


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["timeout", "malformed", "disconnected"])
async def test_a_failed_write_makes_the_reading_degraded_at_once(room: RoomConfig,
                                                                kind: str) -> None:
    """A write that times out (or gets a damaged answer) says the link is in trouble now: the
    reading turns unhealthy (degraded, IL-030) without waiting for the next poll to fail,
    keeping its last good status; the next good poll makes it healthy again."""
    client, backend = bgc_on_memory(room)
    assert (await client.poll()).healthy
    backend.write_error = LinkError(kind, f"write: {kind}")
    assert await client.write_heartbeat(7) is False
    reading = client.reading
    assert not reading.healthy and reading.status is not None and reading.read_at is not None
    assert kind in client.last_error
    backend.write_error = None
    assert (await client.poll()).healthy


@pytest.mark.asyncio
async def test_a_refused_write_leaves_the_reading_healthy(room: RoomConfig) -> None:
    """A device that answers with another value than the one written refused it over a sound
    link: that is the command's failure, not the link's."""
    client, backend = bgc_on_memory(room)
    assert (await client.poll()).healthy
    backend.write_error = LinkError("refused", "write: device acknowledged [0]")
    assert await client.write_gate(GateCommand.OPEN) is False
    assert client.reading.healthy
