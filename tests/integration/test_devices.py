"""Device clients against real Modbus peers: pymodbus servers on 127.0.0.1 (TCP and RTU over
TCP) and on a pty pair joined by a relay (RTU), each built here from the shipped register map
with ``pymodbus.simulator.SimDevice``. Every test ends with no task and no connection left.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import time
import tty
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from syncctl.config import RegisterMapFile, RoomConfig, decode, encode, load_room
from syncctl.config.room import ModbusRtu, ModbusTcp, RtuOverTcp
from syncctl.core.types import GateCommand, XrayCommand
from syncctl.devices import BeamGateClient, ImagingClient, ModbusLink

ROOT = Path(__file__).resolve().parents[2]
BASE = load_room(ROOT / "configs" / "room-sim.yaml")
BGC_ID, XIC_ID = 0x4247, 0x5849
PTY_PARITY = "N"
"""Linux refuses PARENB on a pty (tcsetattr EINVAL): the server end opens it with parity N;
the client is configured with the room's parity E and must cope (it opens ptys with N)."""


# --- a device model over the register map, served by pymodbus's SimDevice ------------------


class MapDevice:
    """Register contents kept here, by map signal name; the SimDevice's action copies them into
    each answer and records each write, so a test can change a value between two reads.

    Failure switches: ``exception_on_read`` (answer reads with DEVICE_FAILURE),
    ``short_reads`` (answer reads with one word missing), ``clamp`` (holding address -> value
    the device keeps whatever is written)."""

    def __init__(self, regmap: RegisterMapFile, unit: int, identity: int) -> None:
        self.regmap = regmap
        self.unit = unit
        self.input = [0] * self._size("input")
        self.holding = [0] * self._size("holding")
        self.exception_on_read = False
        self.short_reads = False
        self.clamp: dict[int, int] = {}
        self.set("identity", identity)
        self.set("firmware_version", 101)

    def _size(self, table: str) -> int:
        return 1 + max(r.last_address for r in self.regmap.registers.values()
                       if r.table == table)

    def _table(self, name: str) -> list[int]:
        return self.input if self.regmap.registers[name].table == "input" else self.holding

    def set(self, name: str, value: float) -> None:
        reg = self.regmap.registers[name]
        self._table(name)[reg.address:reg.last_address + 1] = encode(
            reg, value, self.regmap.word_order)

    def set_raw(self, name: str, word: int) -> None:
        self._table(name)[self.regmap.registers[name].address] = word

    def get(self, name: str) -> float:
        reg = self.regmap.registers[name]
        return decode(reg, self._table(name)[reg.address:reg.last_address + 1],
                      self.regmap.word_order)

    def power_cycle(self) -> None:
        """Settings and commands lost, as after a device reboot."""
        self.holding[:] = [0] * len(self.holding)

    async def action(self, function_code: int, start: int, address: int, count: int,
                     registers: list[int], values: Any) -> ExcCodes | None:
        table = self.input if function_code == 4 else self.holding
        if values is None:
            if self.exception_on_read:
                return ExcCodes.DEVICE_FAILURE
            registers[address - start:address - start + count] = table[address:address + count]
            return None
        for i, value in enumerate(values):
            # Acknowledged as asked (the echo matches); what is kept is another matter.
            table[address + i] = self.clamp.get(address + i, int(value))
        if self.regmap.device == "beam-gate" and "gate_command" in self.regmap.registers:
            self.set("gate_readback", self.get("gate_command"))  # an ideal gate
        return None

    def trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if sending and self.short_reads and pdu.function_code in (3, 4):
            pdu.registers = pdu.registers[:-1]
        return pdu

    def sim_device(self) -> SimDevice:
        bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
        return SimDevice(self.unit, simdata=(
            bits, list(bits),
            [SimData(0, count=len(self.holding), values=0, datatype=DataType.REGISTERS)],
            [SimData(0, count=len(self.input), values=0, datatype=DataType.REGISTERS)],
        ), action=self.action)


def bgc_device(regmap: RegisterMapFile | None = None) -> MapDevice:
    device = MapDevice(regmap or BASE.beam_gate_map, 1, BGC_ID)
    device.set("status", 0b011101)
    device.set("dose_delivered", 12.34)
    device.set("heartbeat_echo", 42)
    return device


def xic_device() -> MapDevice:
    device = MapDevice(BASE.imaging_map, 2, XIC_ID)
    for name, value in {"status": 0b01, "frame_counter": 1234, "frame_timestamp_ms": 99_000,
                        "device_clock_ms": 99_010, "target_x": -1.5, "target_y": 2.25,
                        "target_z": 30.0, "tracking_confidence": 0.9,
                        "cumulative_mas": 3.5}.items():
        device.set(name, value)
    return device


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class TcpPeer:
    """A pymodbus TCP server (MBAP, or RTU framing for rtu-over-tcp) that can stop and come
    back on the same port."""

    def __init__(self, device: MapDevice, framer: FramerType = FramerType.SOCKET) -> None:
        self.device, self.framer, self.port = device, framer, free_port()
        self.server: ModbusTcpServer | None = None

    async def start(self) -> None:
        self.server = ModbusTcpServer(self.device.sim_device(), framer=self.framer,
                                      address=("127.0.0.1", self.port),
                                      trace_pdu=self.device.trace_pdu)
        await self.server.serve_forever(background=True)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None

    @property
    def connections(self) -> int:
        return 0 if self.server is None else len(self.server.active_connections)


class PtyLine:
    """Two pty pairs joined by a relay between their masters: a serial line whose ends are
    two device paths. The slave fds stay open here so that either end may close and reopen."""

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.paths: list[str] = []
        self.masters: list[int] = []

    def open(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(2):
            master, slave = os.openpty()
            tty.setraw(slave)
            self.fds += [master, slave]
            self.masters.append(master)
            self.paths.append(os.ttyname(slave))
        a, b = self.masters
        loop.add_reader(a, self._pump, a, b)
        loop.add_reader(b, self._pump, b, a)

    @staticmethod
    def _pump(src: int, dst: int) -> None:
        try:
            data = os.read(src, 4096)
            if data:
                os.write(dst, data)
        except OSError:
            pass

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for master in self.masters:
            loop.remove_reader(master)
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


class RtuPeer:
    """A pymodbus RTU server on one end of a PtyLine."""

    def __init__(self, device: MapDevice, path: str) -> None:
        self.device, self.path = device, path
        self.server: ModbusSerialServer | None = None

    async def start(self) -> None:
        self.server = ModbusSerialServer(self.device.sim_device(), framer=FramerType.RTU,
                                         port=self.path, baudrate=115200, parity=PTY_PARITY,
                                         trace_pdu=self.device.trace_pdu)
        await self.server.serve_forever(background=True)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None


def room_for(*, beam_gate: Any = None, imaging: Any = None, timeout_ms: float = 100,
             beam_gate_map: RegisterMapFile | None = None) -> RoomConfig:
    devices = BASE.room.devices
    updates: dict[str, Any] = {}
    if beam_gate is not None:
        updates["beam_gate"] = devices.beam_gate.model_copy(
            update={"transport": beam_gate, "timeout_ms": timeout_ms})
    if imaging is not None:
        updates["imaging"] = devices.imaging.model_copy(
            update={"transport": imaging, "timeout_ms": timeout_ms})
    room = BASE.room.model_copy(update={"devices": devices.model_copy(update=updates)})
    return dataclasses.replace(BASE, room=room,
                               beam_gate_map=beam_gate_map or BASE.beam_gate_map)


def tcp(port: int, unit: int = 1) -> ModbusTcp:
    return ModbusTcp(kind="modbus-tcp", host="127.0.0.1", port=port, unit=unit)


def rtu(path: str, unit: int = 2) -> ModbusRtu:
    return ModbusRtu(kind="modbus-rtu", port=path, baudrate=115200, parity="E", unit=unit)


async def eventually(condition: Callable[[], bool], within_s: float = 2.0) -> None:
    """Wait for a condition (polling), never for a fixed time."""
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.002)


async def poll_until_healthy(client: BeamGateClient | ImagingClient, within_s: float) -> float:
    started = time.monotonic()
    while not (await client.poll()).healthy:
        assert time.monotonic() - started < within_s, client.last_error
        await asyncio.sleep(0.005)
    return time.monotonic() - started


def link_of(client: BeamGateClient | ImagingClient) -> ModbusLink:
    link = client.backend
    assert isinstance(link, ModbusLink)
    return link


@pytest_asyncio.fixture(autouse=True)
async def no_task_left() -> AsyncIterator[None]:
    yield
    # Server-side request handlers finish within a few loop turns after a close.
    me = asyncio.current_task()
    await eventually(lambda: not (asyncio.all_tasks() - {me}), within_s=1.0)


@pytest_asyncio.fixture
async def pty_line() -> AsyncIterator[PtyLine]:
    line = PtyLine()
    line.open()
    yield line
    line.close()


# --- decoding and settings -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_beam_gate_over_tcp_polls_and_verifies_settings_after_connect() -> None:
    device = bgc_device()
    peer = TcpPeer(device)
    await peer.start()
    client = BeamGateClient(room_for(beam_gate=tcp(peer.port)))
    try:
        before = time.monotonic()
        reading = await client.poll()
        assert reading.healthy, client.last_error
        assert reading.read_at is not None and before <= reading.read_at <= time.monotonic()
        status = reading.status
        assert status is not None
        assert (status.ready, status.spill_active, status.chain_ok, status.door_closed,
                status.estop_released, status.watchdog_tripped) == (
            True, False, True, True, True, False)
        assert status.dose_delivered_mu == pytest.approx(12.34)
        assert status.heartbeat_echo == 42
        assert device.get("watchdog_timeout_ms") == 200
        assert (client.identity, client.firmware_version) == (BGC_ID, 101)
        assert client.stats["sessions_verified"] == 1
        assert await client.write_heartbeat(7) and device.get("heartbeat") == 7
        assert await client.reset_faults() and device.get("fault_reset") == 1
        polls_before = client.stats["transactions"]
        for _ in range(10):
            await client.poll()
        assert client.stats["transactions"] - polls_before == 10  # one read per poll
        assert peer.connections == 1
    finally:
        await client.close()
        await eventually(lambda: peer.connections == 0)
        await peer.stop()
    assert not link_of(client).connected
    assert (await client.poll()).healthy is False
    assert await client.write_gate(GateCommand.CLOSE) is False


@pytest.mark.asyncio
async def test_imaging_over_rtu_on_a_pty_polls_verifies_settings_and_commands(
    pty_line: PtyLine,
) -> None:
    device = xic_device()
    peer = RtuPeer(device, pty_line.paths[0])
    await peer.start()
    client = ImagingClient(room_for(imaging=rtu(pty_line.paths[1])))
    try:
        reading = await client.poll()
        assert reading.healthy, client.last_error
        status = reading.status
        assert status is not None
        assert (status.prepared, status.exposing) == (True, False)
        assert (status.frame_counter, status.frame_timestamp_ms, status.device_clock_ms) == (
            1234, 99_000, 99_010)
        assert (status.target.x_mm, status.target.y_mm, status.target.z_mm) == pytest.approx(
            (-1.5, 2.25, 30.0))
        assert status.tracking_confidence == pytest.approx(0.9)
        assert status.cumulative_mas == pytest.approx(3.5)
        assert client.identity == XIC_ID
        assert [device.get(n) for n in ("frame_rate_fps", "kv", "ma", "pulse_width_ms",
                                        "watchdog_timeout_ms")] == pytest.approx(
            [30, 90, 50, 4, 200])
        assert device.get("fault_reset") == 0  # between two settings, never written

        assert await client.write_xray(XrayCommand.EXPOSE)
        assert (device.get("prepare_command"), device.get("expose_command")) == (1, 1)
        assert await client.write_xray(XrayCommand.STOP)
        assert (device.get("prepare_command"), device.get("expose_command")) == (1, 0)

        # Concurrent callers share one half-duplex line: the client serialises them.
        results = await asyncio.gather(client.poll(), client.write_heartbeat(9),
                                       client.write_xray(XrayCommand.EXPOSE), client.poll())
        assert all(r.healthy for r in (results[0], results[3]))
        assert results[1] is True and results[2] is True
        assert client.stats["failures"] == 0
    finally:
        await client.close()
        await peer.stop()


@pytest.mark.asyncio
async def test_rtu_over_tcp() -> None:
    device = bgc_device()
    peer = TcpPeer(device, framer=FramerType.RTU)
    await peer.start()
    transport = RtuOverTcp(kind="rtu-over-tcp", host="127.0.0.1", port=peer.port, unit=1)
    client = BeamGateClient(room_for(beam_gate=transport))
    try:
        assert (await client.poll()).healthy, client.last_error
        assert device.get("watchdog_timeout_ms") == 200
        assert await client.write_gate(GateCommand.OPEN)
        assert (await client.poll()).status.gate_open_readback is True  # type: ignore[union-attr]
    finally:
        await client.close()
        await peer.stop()


# --- commands verified by readback ----------------------------------------------------------


@pytest.mark.asyncio
async def test_write_gate_and_dose_preset_are_verified_by_readback() -> None:
    device = bgc_device()
    peer = TcpPeer(device)
    await peer.start()
    client = BeamGateClient(room_for(beam_gate=tcp(peer.port)))
    try:
        assert await client.write_gate(GateCommand.OPEN) is False  # no session yet
        assert (await client.poll()).healthy
        assert await client.write_gate(GateCommand.OPEN) is True
        assert device.get("gate_command") == 1
        assert await client.write_gate(GateCommand.CLOSE) is True
        assert device.get("gate_command") == 0

        assert await client.load_dose_preset(25.67) is True
        assert device.get("dose_preset") == pytest.approx(25.67)

        # A device that acknowledges but keeps another value is caught by the readback.
        preset = BASE.beam_gate_map.registers["dose_preset"]
        device.clamp[preset.address + 1] = 0
        assert await client.load_dose_preset(30.0) is False
        assert "dose_preset reads back" in client.last_error
        # A single-register write is answered with what the register holds (pymodbus, like
        # most devices): a refused value shows in the acknowledgement already.
        device.clamp[BASE.beam_gate_map.registers["gate_command"].address] = 0
        assert await client.write_gate(GateCommand.OPEN) is False
        assert "write holding 0=[1]: device acknowledged [0]" in client.last_error
        assert link_of(client).connected  # refused, not a broken link
    finally:
        await client.close()
        await peer.stop()


@pytest.mark.asyncio
async def test_a_setting_the_device_does_not_keep_never_becomes_healthy() -> None:
    device = bgc_device()
    device.clamp[BASE.beam_gate_map.registers["watchdog_timeout_ms"].address] = 5000
    peer = TcpPeer(device)
    await peer.start()
    client = BeamGateClient(room_for(beam_gate=tcp(peer.port)))
    try:
        until = time.monotonic() + 0.2
        while time.monotonic() < until:
            reading = await client.poll()
            assert reading.healthy is False and reading.status is None
            await asyncio.sleep(0.002)
        assert "write holding 5=[200]: device acknowledged [5000]" in client.last_error
        # Each failed session is dropped and the next one waits for the backoff (0, 50,
        # 150 ms ...): a handful of attempts, not one per poll.
        assert 2 <= client.stats["connect_attempts"] <= 4
        assert client.stats["polls"] >= 5 * client.stats["connect_attempts"]
    finally:
        await client.close()
        await peer.stop()


# --- lost peers, timeouts, reconnection -----------------------------------------------------


@pytest.mark.asyncio
async def test_tcp_server_stopped_then_back_reconnects_with_backoff_and_reverifies() -> None:
    device = bgc_device()
    peer = TcpPeer(device)
    await peer.start()
    client = BeamGateClient(room_for(beam_gate=tcp(peer.port), timeout_ms=50))
    link = link_of(client)
    try:
        good = await client.poll()
        assert good.healthy
        await peer.stop()

        started = time.monotonic()
        lost = await client.poll()
        assert time.monotonic() - started <= link.call_timeout_s + 0.05
        assert lost.healthy is False
        assert (lost.status, lost.read_at) == (good.status, good.read_at)  # last good kept
        assert client.last_error

        # Polling at ~1 kHz while the server is away: attempts follow the backoff
        # (0, 50, 150, 350 ms ...), not the poll rate.
        attempts = link.stats["connect_attempts"]
        until = time.monotonic() + 0.5
        while time.monotonic() < until:
            assert (await client.poll()).healthy is False
            await asyncio.sleep(0.001)
        assert 3 <= link.stats["connect_attempts"] - attempts <= 6
        assert await client.write_gate(GateCommand.CLOSE) is False  # safe when disconnected

        device.power_cycle()  # it comes back without our settings
        await peer.start()
        took = await poll_until_healthy(client, within_s=3.0)
        assert took <= link.backoff_max_s + 0.5
        assert device.get("watchdog_timeout_ms") == 200  # written and verified again
        assert (link.stats["reconnects"], client.stats["sessions_verified"]) == (1, 2)
        assert peer.connections == 1  # failed attempts left nothing behind
    finally:
        await client.close()
        await peer.stop()


@pytest.mark.asyncio
async def test_rtu_server_stopped_is_a_timeout_then_reconnects(pty_line: PtyLine) -> None:
    device = xic_device()
    peer = RtuPeer(device, pty_line.paths[0])
    await peer.start()
    client = ImagingClient(room_for(imaging=rtu(pty_line.paths[1]), timeout_ms=50))
    link = link_of(client)
    try:
        good = await client.poll()
        assert good.healthy, client.last_error
        await peer.stop()

        started = time.monotonic()
        lost = await client.poll()
        assert time.monotonic() - started <= link.call_timeout_s + 0.05
        assert lost.healthy is False and lost.status == good.status
        assert "timeout" in client.last_error
        assert link.stats["timeouts"] == 1 and not link.connected  # closed: no stale answers

        device.power_cycle()
        await peer.start()
        await poll_until_healthy(client, within_s=3.0)
        assert device.get("kv") == 90 and device.get("watchdog_timeout_ms") == 200
        assert client.stats["sessions_verified"] == 2
    finally:
        await client.close()
        await peer.stop()


class SilentPeer(asyncio.Protocol):
    """Accepts a TCP connection and never answers."""

    transports: list[asyncio.BaseTransport] = []  # noqa: RUF012 - shared by design

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transports.append(transport)


@pytest.mark.asyncio
async def test_a_peer_that_never_answers_times_out_within_the_bound() -> None:
    port = free_port()
    server = await asyncio.get_running_loop().create_server(SilentPeer, "127.0.0.1", port)
    client = BeamGateClient(room_for(beam_gate=tcp(port), timeout_ms=30))
    link = link_of(client)
    try:
        started = time.monotonic()
        reading = await client.poll()
        elapsed = time.monotonic() - started
        assert reading.healthy is False and reading.status is None
        assert "timeout" in client.last_error
        assert elapsed <= link.call_timeout_s + 0.05
        assert link.stats["timeouts"] == 1 and not link.connected
        assert await client.write_heartbeat(1) is False
    finally:
        await client.close()
        for transport in SilentPeer.transports:
            transport.close()
        SilentPeer.transports.clear()
        server.close()
        await server.wait_closed()


# --- malformed and out-of-range answers -------------------------------------------------------


@pytest.mark.asyncio
async def test_an_exception_response_is_unhealthy_and_the_link_stays() -> None:
    device = bgc_device()
    peer = TcpPeer(device)
    await peer.start()
    client = BeamGateClient(room_for(beam_gate=tcp(peer.port)))
    try:
        good = await client.poll()
        assert good.healthy
        device.exception_on_read = True
        bad = await client.poll()
        assert bad.healthy is False and bad.status == good.status
        assert "exception code 4" in client.last_error
        assert link_of(client).connected and client.stats["exceptions"] == 1
        device.exception_on_read = False
        assert (await client.poll()).healthy
        assert client.stats["sessions_verified"] == 1  # same session
    finally:
        await client.close()
        await peer.stop()


def bool_readback_map() -> RegisterMapFile:
    regs = dict(BASE.beam_gate_map.registers)
    regs["gate_readback"] = regs["gate_readback"].model_copy(update={"type": "bool"})
    return BASE.beam_gate_map.model_copy(update={"registers": regs})


@pytest.mark.asyncio
@pytest.mark.parametrize("readback_type", ["uint16", "bool"])
async def test_a_flag_reading_7_is_unhealthy_and_never_passed_on(readback_type: str) -> None:
    regmap = bool_readback_map() if readback_type == "bool" else BASE.beam_gate_map
    device = bgc_device(regmap)
    peer = TcpPeer(device)
    await peer.start()
    client = BeamGateClient(room_for(beam_gate=tcp(peer.port), beam_gate_map=regmap))
    try:
        good = await client.poll()
        assert good.healthy
        device.set_raw("gate_readback", 7)
        bad = await client.poll()
        assert bad.healthy is False
        assert (bad.status, bad.read_at) == (good.status, good.read_at)
        assert "gate_readback" in client.last_error and "7" in client.last_error
        assert client.stats["decode_errors"] == 1
        device.set_raw("gate_readback", 1)
        recovered = await client.poll()
        assert recovered.healthy and recovered.status is not None
        assert recovered.status.gate_open_readback is True
    finally:
        await client.close()
        await peer.stop()


@pytest.mark.asyncio
async def test_a_wrong_word_count_is_unhealthy(pty_line: PtyLine) -> None:
    device = xic_device()
    peer = RtuPeer(device, pty_line.paths[0])
    await peer.start()
    client = ImagingClient(room_for(imaging=rtu(pty_line.paths[1])))
    try:
        good = await client.poll()
        assert good.healthy
        device.short_reads = True
        bad = await client.poll()
        assert bad.healthy is False and bad.status == good.status
        assert "wrong word count: 17 for 18" in client.last_error
        device.short_reads = False
        await poll_until_healthy(client, within_s=2.0)
    finally:
        await client.close()
        await peer.stop()


@pytest.mark.asyncio
async def test_values_that_decode_are_passed_on_for_the_core_to_judge() -> None:
    device = xic_device()
    device.set_raw("tracking_confidence", 5000)  # 5.0: implausible, but a valid uint16
    device.set_raw("status", 0xFFFC | 0b10)  # unnamed bits set; exposing without prepared
    peer = TcpPeer(device)
    await peer.start()
    client = ImagingClient(room_for(imaging=tcp(peer.port, unit=2)))
    try:
        reading = await client.poll()
        assert reading.healthy and reading.status is not None
        assert reading.status.tracking_confidence == pytest.approx(5.0)
        assert (reading.status.prepared, reading.status.exposing) == (False, True)
    finally:
        await client.close()
        await peer.stop()
