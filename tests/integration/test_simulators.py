"""The device simulators over real transports: Modbus TCP on loopback, Modbus RTU on ptys.

Most tests share one simulator process per module (reset through the backdoor before each
test); the truth and shutdown tests start their own.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pymodbus.exceptions import ModbusException

from firmware_sim.backdoor import FAULTS, BackdoorLayout
from firmware_sim.beam_gate import BeamGateModel
from firmware_sim.imaging import ImagingModel
from firmware_sim.registers import (
    BeamGateInterface,
    IllegalAddress,
    IllegalValue,
    ImagingInterface,
)
from syncctl.config import config_hash, load_room
from tests.integration.conftest import (
    FAST_SPILLS,
    RELAXED_WATCHDOG_MS,
    ROOM,
    ROOM_WATCHDOG_MS,
    Clients,
    Device,
    ModbusError,
    Sim,
    heartbeats,
    open_clients,
    start_sim,
    wait_for,
)

ILLEGAL_ADDRESS, ILLEGAL_VALUE = 2, 3
# A hung transport must fail its test soon, with a stack dump, not stall the suite.
pytestmark = pytest.mark.timeout(60)


# -- the register interface in-process, on a fake clock ------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_reads_advance_the_model_on_the_injected_clock() -> None:
    clock = FakeClock()
    room = load_room(ROOM)
    bgc = BeamGateInterface(BeamGateModel(watchdog_timeout_s=0.2), room.beam_gate_map, clock)
    bgc.write("holding", 1, [5])  # heartbeat: arms the watchdog
    clock.now += 0.1
    assert bgc.read("input", 3, 1)[0] >> 5 & 1 == 0  # bit 5: watchdog_tripped
    clock.now += 0.15  # no tick ran: the read itself brings the model to now
    words = bgc.read("input", 3, 1)
    assert words[0] >> 5 & 1 == 1
    assert bgc.model.t == pytest.approx(0.25)


def test_partial_write_of_a_32_bit_register_merges_and_bad_values_change_nothing() -> None:
    clock = FakeClock()
    room = load_room(ROOM)
    bgc = BeamGateInterface(BeamGateModel(), room.beam_gate_map, clock)
    bgc.write("holding", 2, [0x0001, 0x0000])  # dose_preset = 65536 x 0.01 MU
    assert bgc.model.dose_preset_mu == pytest.approx(655.36)
    bgc.write("holding", 3, [100])  # low word only
    assert bgc.model.dose_preset_mu == pytest.approx(656.36)
    with pytest.raises(IllegalValue):
        bgc.write("holding", 4, [2])  # fault_reset takes 0 or 1
    with pytest.raises(IllegalValue):
        bgc.write("holding", 0, [7, 3])  # gate_command 7: the heartbeat (3) is not applied
    assert bgc.model.heartbeat == 0
    with pytest.raises(IllegalAddress):
        bgc.write("holding", 6, [1])
    with pytest.raises(IllegalAddress):
        bgc.write("input", 0, [1])


def test_the_dose_preset_is_read_back_in_the_status_block_and_lost_by_a_reboot() -> None:
    """Input 8..9 (``dose_preset_readback``) holds what holding 2..3 was loaded with, so one
    read of the status block shows it; a power cycle loads 0 (the gate then never opens)."""
    room = load_room(ROOM)
    bgc = BeamGateInterface(BeamGateModel(), room.beam_gate_map, FakeClock())
    assert bgc.read("input", 8, 2) == [0, 0]
    bgc.write("holding", 2, [0x0001, 0x0002])  # 65538 x 0.01 MU
    assert bgc.read("input", 8, 2) == [0x0001, 0x0002]
    assert len(bgc.read("input", 0, 10)) == 10  # the whole status block, one read
    bgc.reboot()
    assert bgc.model.dose_preset_mu == 0.0 and bgc.read("input", 8, 2) == [0, 0]


def test_imaging_settings_are_range_checked() -> None:
    room = load_room(ROOM)
    xic = ImagingInterface(ImagingModel(), room.imaging_map, FakeClock())
    for raw in (0, 31):
        with pytest.raises(IllegalValue):
            xic.write("holding", 3, [raw])
    xic.write("holding", 3, [15])
    assert xic.model.frame_rate_fps == 15
    with pytest.raises(IllegalValue):
        xic.write("holding", 4, [39])  # kV below 40


# -- the process: ready line and register blocks ----------------------------------------------


def test_ready_line_names_every_server(sim: Sim) -> None:
    r = sim.ready
    assert r["ready"] is True and r["pid"] == sim.process.pid
    assert r["beam_gate"]["kind"] == "modbus-tcp" and r["beam_gate"]["port"] > 0
    assert r["beam_gate"]["unit"] == 1
    assert r["imaging"] == {**r["imaging"], "kind": "modbus-rtu", "port": str(sim.link),
                            "unit": 2}
    assert os.path.realpath(sim.link).startswith("/dev/pts/")
    for slot, block in (("beam_gate", [0, 15]), ("imaging", [100, 115])):
        door = r["backdoor"][slot]
        assert door["host"] == "127.0.0.1" and door["unit"] == 100 and door["port"] > 0
        assert door["block"] == block
    assert "mbpoll -m tcp -a 100" in sim.stderr()


@pytest.mark.asyncio
async def test_bgc_status_block_decodes(devices: Clients) -> None:
    block = await devices.bgc.block()
    assert block["identity"] == 0x4247
    assert block["firmware_version"] == 102
    assert block["gate_readback"] == 0
    status = block["status"]
    assert status["ready"] and status["chain_ok"] and status["door_closed"]
    assert status["estop_released"] and not status["watchdog_tripped"]
    assert block["fault_code"] == 0 and block["dose_delivered"] == 0
    assert await devices.bgc.get("watchdog_timeout_ms") == RELAXED_WATCHDOG_MS  # as set


@pytest.mark.asyncio
async def test_xic_status_block_decodes_over_rtu(devices: Clients) -> None:
    block = await devices.xic.block()
    assert block["identity"] == 0x5849
    assert block["firmware_version"] == 102
    assert block["status"] == {"prepared": False, "exposing": False}
    assert block["frame_counter"] == 0 and block["fault_code"] == 0
    clock_a = block["device_clock_ms"]
    later = await devices.xic.block()
    assert later["device_clock_ms"] >= clock_a  # the device clock runs
    xic = devices.xic
    assert await xic.get("frame_rate_fps") == 30
    assert await xic.get("kv") == 90
    assert await xic.get("ma") == pytest.approx(50)
    assert await xic.get("pulse_width_ms") == pytest.approx(4)


@pytest.mark.asyncio
@pytest.mark.parametrize("device", ["bgc", "xic"])
async def test_heartbeat_is_echoed(devices: Clients, device: str) -> None:
    dev: Device = getattr(devices, device)
    for value in (1, 40000, 65535):
        await dev.set("heartbeat", value)
        assert await dev.get("heartbeat_echo") == value
        assert await dev.get("heartbeat") == value


@pytest.mark.asyncio
@pytest.mark.parametrize("device", ["bgc", "xic"])
async def test_unmapped_addresses_are_illegal(devices: Clients, device: str) -> None:
    dev: Device = getattr(devices, device)
    holding = max(r.last_address for r in dev.regmap.registers.values()
                  if r.table == "holding")
    inputs = max(r.last_address for r in dev.regmap.registers.values() if r.table == "input")
    response = await dev.client.write_register(holding + 1, 1, device_id=dev.unit)
    assert response.isError() and response.exception_code == ILLEGAL_ADDRESS
    response = await dev.client.read_input_registers(inputs, count=2, device_id=dev.unit)
    assert response.isError() and response.exception_code == ILLEGAL_ADDRESS
    response = await dev.client.read_coils(0, count=1, device_id=dev.unit)
    assert response.isError()


@pytest.mark.asyncio
async def test_out_of_range_settings_are_illegal_values(devices: Clients) -> None:
    xic, bgc = devices.xic, devices.bgc
    for fps in (0, 31):
        with pytest.raises(ModbusError) as err:
            await xic.set("frame_rate_fps", fps)
        assert err.value.exception_code == ILLEGAL_VALUE
    assert await xic.get("frame_rate_fps") == 30  # unchanged
    await xic.set("frame_rate_fps", 15)
    assert await xic.get("frame_rate_fps") == 15
    with pytest.raises(ModbusError) as err:
        await bgc.set("gate_command", 2)
    assert err.value.exception_code == ILLEGAL_VALUE
    with pytest.raises(ModbusError) as err:
        await bgc.set("watchdog_timeout_ms", 0)
    assert err.value.exception_code == ILLEGAL_VALUE


# -- beam gate behaviour ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_gate_opens_after_its_delay_only_with_a_preset(devices: Clients) -> None:
    bgc = devices.bgc
    await bgc.set("gate_command", 1)  # no preset loaded: the hardware does not open
    await asyncio.sleep(0.03)
    assert await bgc.get("gate_readback") == 0
    await bgc.set("gate_command", 0)
    await bgc.set("dose_preset", 100)
    assert await bgc.get("dose_preset") == 100
    start = time.monotonic()
    await bgc.set("gate_command", 1)
    elapsed = await wait_for(lambda: _is(bgc, "gate_readback", 1), timeout_s=1.0)
    assert elapsed < 0.5  # 3 ms in the model; the rest is polling on a loaded machine
    await bgc.set("gate_command", 0)
    await wait_for(lambda: _is(bgc, "gate_readback", 0), timeout_s=1.0)
    assert time.monotonic() - start < 1.0


@pytest.mark.asyncio
async def test_dose_rises_only_during_spill(devices: Clients) -> None:
    bgc = devices.bgc
    await bgc.set("dose_preset", 1000)
    await bgc.set("gate_command", 1)
    samples: list[tuple[bool, float]] = []
    deadline = time.monotonic() + 1.6  # two cycles of 0.4 s on + 0.3 s off
    while time.monotonic() < deadline:
        block = await bgc.block()
        samples.append((block["status"]["spill_active"], block["dose_delivered"]))
        await asyncio.sleep(0.02)
    await bgc.set("gate_command", 0)
    off_steps = [b[1] - a[1] for a, b in itertools.pairwise(samples)
                 if not a[0] and not b[0]]
    on_steps = [b[1] - a[1] for a, b in itertools.pairwise(samples)
                if a[0] and b[0]]
    assert off_steps and on_steps
    assert all(step == pytest.approx(0, abs=1e-9) for step in off_steps)
    assert sum(on_steps) > 3  # 10 MU/s over most of 0.8 s of spill
    assert samples[-1][1] > samples[0][1]


@pytest.mark.asyncio
async def test_bgc_watchdog_trips_when_heartbeats_stop_and_fault_reset_clears(
        devices: Clients) -> None:
    bgc = devices.bgc
    await bgc.set("watchdog_timeout_ms", ROOM_WATCHDOG_MS)
    await bgc.set("dose_preset", 1000)
    async with heartbeats(bgc):
        await bgc.set("gate_command", 1)
        await wait_for(lambda: _is(bgc, "gate_readback", 1), timeout_s=1.0)
        await asyncio.sleep(0.3)  # heartbeats keep it open past the 200 ms timeout
        assert await bgc.get("gate_readback") == 1
    stopped = time.monotonic()
    await wait_for(lambda: _bit(bgc, "watchdog_tripped"), timeout_s=1.0)
    assert time.monotonic() - stopped > 0.15
    assert await bgc.get("gate_readback") == 0
    assert int(await bgc.get("fault_code")) & 1
    await bgc.set("gate_command", 0)
    await bgc.set("fault_reset", 1)
    # A command register: it holds the value last written (each write of 1 acts), so that a
    # write is echoed as written, as Modbus function 06 requires.
    assert await bgc.get("fault_reset") == 1
    assert await bgc.get("fault_code") == 0
    assert (await bgc.bits("status"))["ready"]


@pytest.mark.asyncio
async def test_xic_exposes_frames_and_its_watchdog_stops_exposure(devices: Clients) -> None:
    xic = devices.xic
    await xic.set("watchdog_timeout_ms", ROOM_WATCHDOG_MS)
    async with heartbeats(xic):
        await xic.set("prepare_command", 1)
        await xic.set("expose_command", 1)
        await wait_for(lambda: _bit(xic, "exposing"), timeout_s=1.0)
        first = await xic.block()
        await asyncio.sleep(0.2)
        second = await xic.block()
    frames = second["frame_counter"] - first["frame_counter"]
    expected = (second["device_clock_ms"] - first["device_clock_ms"]) / 1000 * 30
    assert frames >= 3 and abs(frames - expected) <= 2  # 30 fps on the device clock
    assert second["frame_timestamp_ms"] <= second["device_clock_ms"]
    assert second["device_clock_ms"] - second["frame_timestamp_ms"] < 100
    assert abs(second["target_x"]) < 5 and abs(second["target_z"]) < 12  # about plan 0,0,0
    assert second["tracking_confidence"] == pytest.approx(0.95)
    assert second["cumulative_mas"] > first["cumulative_mas"]
    await wait_for(lambda: _not_bit(xic, "exposing"), timeout_s=1.0)
    assert int(await xic.get("fault_code")) & 1


# -- every backdoor fault has its documented effect ---------------------------------------


async def _is(dev: Device, name: str, value: float) -> bool:
    return await dev.get(name) == value


async def _bit(dev: Device, bit: str) -> bool:
    return (await dev.bits("status"))[bit]


async def _not_bit(dev: Device, bit: str) -> bool:
    return not (await dev.bits("status"))[bit]


async def _open_gate(bgc: Device) -> None:
    await bgc.set("dose_preset", 1000)
    await bgc.set("gate_command", 1)
    await wait_for(lambda: _is(bgc, "gate_readback", 1), timeout_s=1.0)


async def _expose(xic: Device) -> None:
    await xic.set("prepare_command", 1)
    await xic.set("expose_command", 1)
    await wait_for(lambda: _bit(xic, "exposing"), timeout_s=1.0)


async def _new_frame(xic: Device) -> dict[str, Any]:
    counter = await xic.get("frame_counter")
    await wait_for(lambda: _changed(xic, "frame_counter", counter), timeout_s=1.0)
    return await xic.block()


async def _changed(dev: Device, name: str, old: float) -> bool:
    return await dev.get(name) != old


async def fault_door_open(c: Clients) -> None:
    await _open_gate(c.bgc)
    await c.backdoor.set("beam_gate", "door_open", 1)
    block = await c.bgc.block()
    assert block["gate_readback"] == 0
    assert not block["status"]["door_closed"] and not block["status"]["chain_ok"]
    assert not block["status"]["ready"]
    await c.backdoor.set("beam_gate", "door_open", 0)
    assert (await c.bgc.bits("status"))["ready"]  # not latching


async def fault_estop_pressed(c: Clients) -> None:
    await _open_gate(c.bgc)
    await c.backdoor.set("beam_gate", "estop_pressed", 1)
    block = await c.bgc.block()
    assert block["gate_readback"] == 0 and not block["status"]["estop_released"]
    assert int(block["fault_code"]) & 2
    await c.backdoor.set("beam_gate", "estop_pressed", 0)
    assert int(await c.bgc.get("fault_code")) & 2  # latched until a fault reset
    await c.bgc.set("fault_reset", 1)
    assert await c.bgc.get("fault_code") == 0


async def fault_chain_broken(c: Clients) -> None:
    await _open_gate(c.bgc)
    await c.backdoor.set("beam_gate", "chain_broken", 1)
    block = await c.bgc.block()
    assert block["gate_readback"] == 0
    assert not block["status"]["chain_ok"] and block["status"]["door_closed"]


async def fault_stuck_gate(c: Clients) -> None:
    await _open_gate(c.bgc)
    await c.backdoor.set("beam_gate", "stuck_gate", 1)
    await c.bgc.set("gate_command", 0)
    await asyncio.sleep(0.05)
    assert await c.bgc.get("gate_readback") == 1


async def fault_slow_gate_factor(c: Clients) -> None:
    await c.backdoor.set("beam_gate", "slow_gate_factor", 100)  # 3 ms -> 300 ms
    await c.bgc.set("dose_preset", 1000)
    await c.bgc.set("gate_command", 1)
    elapsed = await wait_for(lambda: _is(c.bgc, "gate_readback", 1), timeout_s=2.0)
    assert elapsed > 0.2


async def fault_tracking_loss(c: Clients) -> None:
    async with heartbeats(c.xic):
        await _expose(c.xic)
        await c.backdoor.set("imaging", "tracking_loss", 1)
        await _new_frame(c.xic)
        frame = await _new_frame(c.xic)
    assert frame["tracking_confidence"] == 0


async def fault_frozen_frames(c: Clients) -> None:
    async with heartbeats(c.xic):
        await _expose(c.xic)
        await c.backdoor.set("imaging", "frozen_frames", 1)
        first = await c.xic.block()
        await asyncio.sleep(0.15)
        second = await c.xic.block()
    assert second["frame_counter"] == first["frame_counter"]
    assert second["device_clock_ms"] - first["device_clock_ms"] >= 100


async def fault_frame_delay_ms(c: Clients) -> None:
    async with heartbeats(c.xic):
        await _expose(c.xic)
        await c.backdoor.set("imaging", "frame_delay_ms", 150)
        await asyncio.sleep(0.2)
        frame = await _new_frame(c.xic)
    assert frame["device_clock_ms"] - frame["frame_timestamp_ms"] >= 150


async def fault_marker_jump(c: Clients) -> None:
    async with heartbeats(c.xic):
        await _expose(c.xic)
        await c.backdoor.set("imaging", "marker_jump_z", 50)
        await c.backdoor.set("imaging", "marker_jump_x", -30)
        await _new_frame(c.xic)
        frame = await _new_frame(c.xic)
    assert frame["target_z"] > 40 and frame["target_x"] < -25
    assert frame["tracking_confidence"] > 0.5  # a wrong marker, confidently tracked


async def fault_baseline_shift(c: Clients) -> None:
    async with heartbeats(c.xic):
        await _expose(c.xic)
        await c.backdoor.set("imaging", "baseline_shift_x", 30)
        await c.backdoor.set("imaging", "baseline_shift_y", -20.5)
        await _new_frame(c.xic)
        frame = await _new_frame(c.xic)
    assert frame["target_x"] > 25 and frame["target_y"] < -15
    assert await c.backdoor.get("imaging", "baseline_shift_y") == pytest.approx(-20.5)


DEVICE_FAULTS = {
    "door_open": fault_door_open,
    "estop_pressed": fault_estop_pressed,
    "chain_broken": fault_chain_broken,
    "stuck_gate": fault_stuck_gate,
    "slow_gate_factor": fault_slow_gate_factor,
    "tracking_loss": fault_tracking_loss,
    "frozen_frames": fault_frozen_frames,
    "frame_delay_ms": fault_frame_delay_ms,
    "marker_jump": fault_marker_jump,
    "baseline_shift": fault_baseline_shift,
}


@pytest.mark.asyncio
@pytest.mark.parametrize("fault", list(DEVICE_FAULTS))
async def test_device_fault(devices: Clients, fault: str) -> None:
    await DEVICE_FAULTS[fault](devices)


def test_every_documented_fault_is_tested() -> None:
    """Each register of the backdoor layout has a test here (device or link fault)."""
    layout = BackdoorLayout.load()
    tested = set(DEVICE_FAULTS) | {"response_delay_ms", "drop_percent", "corrupt_percent",
                                   "disconnect", "reboot", "clear_faults"}
    for slot, block in layout.devices.items():
        assert set(block.registers) == set(FAULTS[slot])
        for name in block.registers:
            assert name in tested or name.rsplit("_", 1)[0] in tested, name
    docs = (Path(__file__).resolve().parents[2] / "docs" / "simulators.md").read_text()
    for block in layout.devices.values():
        for name in block.registers:
            assert f"`{name}`" in docs, f"{name} is not in docs/simulators.md"


@pytest.mark.asyncio
async def test_backdoor_reads_show_the_faults_and_refuse_bad_values(devices: Clients) -> None:
    door = devices.backdoor
    await door.set("beam_gate", "response_delay_ms", 25)
    await door.set("imaging", "marker_jump_z", -12.3)
    assert await door.get("beam_gate", "response_delay_ms") == 25
    assert await door.get("imaging", "marker_jump_z") == pytest.approx(-12.3)
    assert await door.get("beam_gate", "reboot") == 0
    with pytest.raises(ModbusError) as err:
        await door.set("beam_gate", "drop_percent", 101)
    assert err.value.exception_code == ILLEGAL_VALUE
    response = await door.client.write_register(5, 1, device_id=100)  # reserved
    assert response.isError() and response.exception_code == ILLEGAL_ADDRESS
    response = await door.client.read_holding_registers(0, count=16, device_id=100)
    assert not response.isError() and len(response.registers) == 16


# -- link faults, on the TCP device and on the RTU device -------------------------------------


LINKS = ["beam_gate", "imaging"]


async def _client(c: Clients, slot: str, timeout: float) -> Device:
    return await (c.bgc_client(timeout) if slot == "beam_gate" else c.xic_client(timeout))


async def _answers(dev: Device) -> bool:
    try:
        await dev.get("identity")
    except (ModbusException, ModbusError):
        return False
    return True


@pytest.mark.asyncio
@pytest.mark.parametrize("slot", LINKS)
async def test_response_delay_is_seen_by_the_client(devices: Clients, slot: str) -> None:
    dev = await _client(devices, slot, timeout=1.0)
    start = time.monotonic()
    await dev.get("identity")
    baseline = time.monotonic() - start
    await devices.backdoor.set(slot, "response_delay_ms", 150)
    start = time.monotonic()
    assert await dev.get("identity") in (0x4247, 0x5849)
    delayed = time.monotonic() - start
    assert 0.145 <= delayed < 1.0 and delayed - baseline > 0.1


@pytest.mark.asyncio
@pytest.mark.parametrize("slot", LINKS)
async def test_dropped_responses_time_out(devices: Clients, slot: str) -> None:
    dev = await _client(devices, slot, timeout=0.15)
    await devices.backdoor.set(slot, "drop_percent", 100)
    assert not await _answers(dev)
    await devices.backdoor.set(slot, "drop_percent", 50)
    results = [await _answers(await _client(devices, slot, 0.1)) for _ in range(12)]
    assert any(results) and not all(results)
    await devices.backdoor.set(slot, "drop_percent", 0)
    assert await _answers(await _client(devices, slot, 1.0))


@pytest.mark.asyncio
@pytest.mark.parametrize("slot", LINKS)
async def test_corrupted_responses_are_rejected(devices: Clients, slot: str) -> None:
    dev = await _client(devices, slot, timeout=0.15)
    await devices.backdoor.set(slot, "corrupt_percent", 100)
    assert not await _answers(dev)
    await devices.backdoor.set(slot, "corrupt_percent", 0)
    assert await _answers(await _client(devices, slot, 1.0))


@pytest.mark.asyncio
@pytest.mark.parametrize("slot", LINKS)
async def test_disconnect_and_recover(devices: Clients, slot: str) -> None:
    dev = await _client(devices, slot, timeout=0.15)
    assert await _answers(dev)
    await devices.backdoor.set(slot, "disconnect", 1)
    assert not await _answers(dev)
    if slot == "beam_gate":  # TCP: a new connection is refused
        info = devices.sim.ready["beam_gate"]
        with pytest.raises(ConnectionRefusedError):
            _, writer = await asyncio.open_connection(info["host"], info["port"])
            writer.close()
    assert await devices.backdoor.get(slot, "disconnect") == 1
    await devices.backdoor.set(slot, "disconnect", 0)
    assert await _answers(await _client(devices, slot, 1.0))


@pytest.mark.asyncio
async def test_reboot_resets_counters(devices: Clients) -> None:
    bgc, xic = devices.bgc, devices.xic
    await bgc.set("dose_preset", 1000)
    await bgc.set("gate_command", 1)
    async with heartbeats(xic):
        await _expose(xic)
        await _new_frame(xic)
        await wait_for(lambda: _dose_above(bgc, 0.05), timeout_s=1.5)
    await bgc.set("heartbeat", 77)
    assert await xic.get("frame_counter") > 0
    await devices.backdoor.set("beam_gate", "reboot", 1)
    await devices.backdoor.set("imaging", "reboot", 1)
    block = await bgc.block()
    assert block["dose_delivered"] == 0 and block["heartbeat_echo"] == 0
    assert block["gate_readback"] == 0
    assert await bgc.get("dose_preset") == 0 and await bgc.get("gate_command") == 0
    xblock = await xic.block()
    assert xblock["frame_counter"] == 0 and xblock["cumulative_mas"] == 0
    assert xblock["status"] == {"prepared": False, "exposing": False}
    assert await devices.backdoor.get("beam_gate", "reboot") == 0


async def _dose_above(bgc: Device, mu: float) -> bool:
    return await bgc.get("dose_delivered") > mu


# -- ground truth and shutdown (their own processes) ------------------------------------------


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.asyncio
async def test_truth_files_record_what_happened(tmp_path: Path) -> None:
    stale = tmp_path / "xic"
    stale.symlink_to("/nonexistent/old-pty")  # left by a killed run: replaced
    sim = start_sim(tmp_path, *FAST_SPILLS, truth=True)
    try:
        assert sim.link.resolve() != Path("/nonexistent/old-pty")
        t_start = time.monotonic()
        clients = await open_clients(sim)
        try:
            bgc, xic = clients.bgc, clients.xic
            await bgc.set("dose_preset", 1000)
            for value in (1, 0, 1):
                await bgc.set("gate_command", value)
                await asyncio.sleep(0.05)
            async with heartbeats(xic):
                await _expose(xic)
                await _new_frame(xic)
                await _new_frame(xic)
            await clients.backdoor.set("beam_gate", "door_open", 1)
        finally:
            for client in clients.opened:
                client.close()
        t_end = time.monotonic()
    finally:
        sim.stop()

    assert sim.truth is not None
    room = load_room(ROOM)
    gate = _rows(sim.truth / "beam-gate.jsonl")
    header = gate[0]
    assert header["type"] == "header" and header["device"] == "beam-gate"
    assert header["config_hash"] == config_hash(room) and header["seed"] == 1
    assert header["clock"] == "time.monotonic"
    states = [r for r in gate if r["type"] == "state"]
    assert {"t", "gate_command", "gate_open", "spill_active", "dose_mu"} <= set(states[0])
    times = [r["t"] for r in states]
    assert times == sorted(times)
    assert t_start - 5 < times[0] and times[-1] < t_end + 1  # the same monotonic clock
    gaps = sorted(b - a for a, b in itertools.pairwise(times))
    assert gaps[len(gaps) // 2] <= 0.0125  # ~10 ms apart (a busy machine stretches the tick)
    assert gaps[-1] < 0.25  # (a loaded machine may stall the process now and then)
    commands = [r for r in gate if r["type"] == "gate_command"]
    assert [c["value"] for c in commands] == [1, 0, 1]
    assert all(t_start <= c["t_received"] <= t_end for c in commands)
    assert any(r["gate_open"] for r in states) and states[-1]["gate_open"] is False
    assert any(r["type"] == "fault" and r["name"] == "door_open" for r in gate)

    imaging = _rows(sim.truth / "imaging.jsonl")
    assert imaging[0]["type"] == "header" and imaging[0]["device"] == "imaging"
    xstates = [r for r in imaging if r["type"] == "state"]
    assert {"t", "x", "y", "z", "exposing"} <= set(xstates[0])
    assert any(r["exposing"] for r in xstates)
    frames = [r for r in imaging if r["type"] == "frame"]
    assert len(frames) >= 2
    counters = [f["counter"] for f in frames]
    assert counters == sorted(counters) and counters[0] >= 1
    assert {"t_available", "x", "y", "z", "confidence"} <= set(frames[0])


@pytest.mark.asyncio
async def test_sigint_stops_cleanly_and_removes_the_link(tmp_path: Path) -> None:
    sim = start_sim(tmp_path, "--devices", "imaging")
    assert "beam_gate" not in sim.ready and set(sim.ready["backdoor"]) == {"imaging"}
    assert sim.link.is_symlink()
    assert sim.stop(signal.SIGINT) == 0  # stop() also checks the link is gone


def test_a_port_override_on_a_serial_device_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "firmware_sim", "--config", str(ROOM), "--imaging-port", "0",
         "--beam-gate-port", "0"],
        capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert "--imaging-link" in done.stderr and done.stdout == ""
