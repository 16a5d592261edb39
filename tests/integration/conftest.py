"""Fixtures for the simulator integration tests: real processes, loopback TCP and real ptys.

Every simulator process a test starts is stopped at teardown (SIGTERM, wait, SIGKILL as a
last resort), and the teardown FAILS the test if the process had to be killed, exited
non-zero, or left its serial-port symlink behind. Readiness is the ready line on stdout,
waited for with a deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from firmware_sim.backdoor import BackdoorLayout
from syncctl.config import RegisterMapFile, decode, decode_bits, encode, load_room

ROOT = Path(__file__).resolve().parents[2]
ROOM = ROOT / "configs" / "room-sim.yaml"
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
# Short spills so a test sees both phases within a second; a fast dose rate so the dose
# counter (0.01 MU) moves visibly between two reads.
FAST_SPILLS = ("--spill-on-s", "0.4", "--spill-off-s", "0.3", "--dose-rate", "10")
RELAXED_WATCHDOG_MS = 1000
ROOM_WATCHDOG_MS = 200


@dataclass
class Sim:
    process: subprocess.Popen[str]
    ready: dict[str, Any]
    link: Path
    truth: Path | None
    stderr_path: Path
    stopped: bool = field(default=False)

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stop the process; fail the test if it does not exit cleanly by itself."""
        if self.stopped:
            return self.process.returncode
        self.stopped = True
        killed = False
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
                killed = True
        if self.process.stdout is not None:
            self.process.stdout.close()
        assert not killed, f"simulator ignored signal {sig}; killed.\n{self.stderr()}"
        assert self.process.poll() is not None, "simulator still running after teardown"
        assert self.process.returncode == 0, (
            f"simulator exited {self.process.returncode}\n{self.stderr()}")
        assert not self.link.is_symlink(), f"{self.link} left behind"
        return self.process.returncode


def start_sim(workdir: Path, *extra: str, truth: bool = False, config: Path = ROOM) -> Sim:
    """Start ``python -m firmware_sim`` on free ports and a private link; wait for ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    link = workdir / "xic"
    truth_dir = workdir / "truth" if truth else None
    stderr_path = workdir / "sim.stderr"
    cmd = [sys.executable, "-m", "firmware_sim", "--config", str(config),
           "--beam-gate-port", "0", "--backdoor-port", "0", "--imaging-link", str(link),
           *extra]
    if truth_dir is not None:
        cmd += ["--truth", str(truth_dir)]
    with stderr_path.open("w", encoding="utf-8") as err:
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                   cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    sim = Sim(process, {}, link, truth_dir, stderr_path)
    assert process.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    line = ""
    while time.monotonic() < deadline and process.poll() is None:
        readable, _, _ = select.select([process.stdout], [], [], 0.05)
        if readable:
            line = process.stdout.readline()
            break
    if not line:
        if process.poll() is None:
            process.kill()
            process.wait(STOP_TIMEOUT_S)
        sim.stopped = True
        pytest.fail(f"simulator not ready (exit {process.returncode}):\n{sim.stderr()}")
    sim.ready = json.loads(line)
    return sim


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    """One simulator process for a module (fast spills); tests reset it through the
    backdoor (``devices`` fixture)."""
    running = start_sim(tmp_path_factory.mktemp("sim"), *FAST_SPILLS)
    try:
        yield running
    finally:
        running.stop()


# -- typed clients --------------------------------------------------------------------


class ModbusError(AssertionError):
    def __init__(self, response: Any) -> None:
        super().__init__(f"Modbus exception response: {response}")
        self.exception_code = getattr(response, "exception_code", None)


@dataclass
class Device:
    """A pymodbus client plus a register map: read and write signals by name."""

    client: Any
    regmap: RegisterMapFile
    unit: int

    def reg(self, name: str) -> Any:
        return self.regmap.registers[name]

    async def words(self, name: str) -> list[int]:
        reg = self.reg(name)
        read = (self.client.read_input_registers if reg.table == "input"
                else self.client.read_holding_registers)
        response = await read(reg.address, count=reg.width, device_id=self.unit)
        if response.isError():
            raise ModbusError(response)
        return list(response.registers)

    async def get(self, name: str) -> float:
        return decode(self.reg(name), await self.words(name), self.regmap.word_order)

    async def bits(self, name: str) -> dict[str, bool]:
        return decode_bits(self.reg(name), await self.words(name))

    async def set(self, name: str, value: float) -> None:
        reg = self.reg(name)
        words = encode(reg, value, self.regmap.word_order)
        if len(words) == 1:
            response = await self.client.write_register(reg.address, words[0],
                                                        device_id=self.unit)
        else:
            response = await self.client.write_registers(reg.address, words,
                                                         device_id=self.unit)
        if response.isError():
            raise ModbusError(response)

    async def block(self) -> dict[str, Any]:
        """The whole input table in one read, decoded by name."""
        inputs = {n: r for n, r in self.regmap.registers.items() if r.table == "input"}
        first = min(r.address for r in inputs.values())
        last = max(r.last_address for r in inputs.values())
        response = await self.client.read_input_registers(first, count=last - first + 1,
                                                          device_id=self.unit)
        if response.isError():
            raise ModbusError(response)
        out: dict[str, Any] = {}
        for name, reg in inputs.items():
            words = response.registers[reg.address - first:reg.last_address - first + 1]
            out[name] = (decode_bits(reg, words) if reg.type == "bitfield"
                         else decode(reg, words, self.regmap.word_order))
        return out


@dataclass
class Backdoor:
    client: Any
    layout: BackdoorLayout

    async def set(self, device: str, fault: str, value: float) -> None:
        reg = self.layout.devices[device].registers[fault]  # type: ignore[index]
        words = encode(reg, value, self.layout.word_order)
        response = await self.client.write_register(reg.address, words[0],
                                                    device_id=self.layout.unit)
        if response.isError():
            raise ModbusError(response)

    async def get(self, device: str, fault: str) -> float:
        reg = self.layout.devices[device].registers[fault]  # type: ignore[index]
        response = await self.client.read_holding_registers(reg.address, count=1,
                                                            device_id=self.layout.unit)
        if response.isError():
            raise ModbusError(response)
        return decode(reg, list(response.registers), self.layout.word_order)

    async def reset(self, devices: tuple[str, ...] = ("beam_gate", "imaging")) -> None:
        """Every fault off, then a power cycle: a clean device for the next test."""
        for device in devices:
            await self.set(device, "clear_faults", 1)
            await self.set(device, "reboot", 1)


def tcp_client(host: str, port: int, timeout: float = 1.0) -> AsyncModbusTcpClient:
    return AsyncModbusTcpClient(host, port=port, timeout=timeout, retries=0,
                                reconnect_delay=0)


def rtu_client(path: Path | str, timeout: float = 1.0) -> AsyncModbusSerialClient:
    # Parity N: Linux refuses PARENB on a pty (see docs/simulators.md).
    return AsyncModbusSerialClient(str(path), framer=FramerType.RTU, baudrate=115200,
                                   parity="N", timeout=timeout, retries=0, reconnect_delay=0)


@dataclass
class Clients:
    sim: Sim
    bgc: Device
    xic: Device
    backdoor: Backdoor
    opened: list[Any]

    async def bgc_client(self, timeout: float = 1.0) -> Device:
        """A further client of the BGC (connected), closed at teardown."""
        info = self.sim.ready["beam_gate"]
        client = tcp_client(info["host"], info["port"], timeout)
        self.opened.append(client)
        await client.connect()
        return Device(client, self.bgc.regmap, info["unit"])

    async def xic_client(self, timeout: float = 1.0) -> Device:
        """A new client on the serial line, which replaces ``xic``: the clients opened before
        are closed first, as two masters on one serial port would steal each other's
        answers (both read the same pty)."""
        for client in self.opened:
            if isinstance(client, AsyncModbusSerialClient):
                client.close()
        client = rtu_client(self.sim.link, timeout)
        self.opened.append(client)
        assert await client.connect()
        self.xic = Device(client, self.xic.regmap, self.sim.ready["imaging"]["unit"])
        return self.xic


async def open_clients(sim: Sim) -> Clients:
    room = load_room(ROOM)
    opened: list[Any] = []
    ready = sim.ready
    bgc = tcp_client(ready["beam_gate"]["host"], ready["beam_gate"]["port"])
    xic = rtu_client(sim.link)
    door = tcp_client(ready["backdoor"]["beam_gate"]["host"],
                      ready["backdoor"]["beam_gate"]["port"])
    opened += [bgc, xic, door]
    assert await door.connect(), "backdoor refused the connection"
    assert await bgc.connect(), "beam-gate server refused the connection"
    assert await xic.connect(), f"cannot open {sim.link}"
    return Clients(
        sim,
        Device(bgc, room.beam_gate_map, ready["beam_gate"]["unit"]),
        Device(xic, room.imaging_map, ready["imaging"]["unit"]),
        Backdoor(door, BackdoorLayout.load()),
        opened,
    )


@pytest_asyncio.fixture
async def devices(sim: Sim) -> AsyncIterator[Clients]:
    """Clients of both devices and the backdoor of the module's simulator, reset first.

    The watchdogs are set to 1 s: a test about something else must not trip one because a
    loaded machine delayed a heartbeat. The watchdog tests set the room's 200 ms back."""
    clients = await open_clients(sim)
    try:
        await clients.backdoor.reset()
        await clients.bgc.set("watchdog_timeout_ms", RELAXED_WATCHDOG_MS)
        await clients.xic.set("watchdog_timeout_ms", RELAXED_WATCHDOG_MS)
        imaging = load_room(ROOM).room.devices.imaging  # settings survive a reboot
        for setting in ("frame_rate_fps", "kv", "ma", "pulse_width_ms"):
            await clients.xic.set(setting, getattr(imaging, setting))
        yield clients
    finally:
        for client in clients.opened:
            client.close()
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def heartbeats(device: Device, period_s: float = 0.02) -> AsyncIterator[None]:
    """Write a changing heartbeat every ``period_s`` until the block ends (task cancelled
    and awaited: nothing left running)."""

    async def beat() -> None:
        value = 0
        while True:
            value = value % 65535 + 1
            with contextlib.suppress(ModbusException):
                await device.set("heartbeat", value)
            await asyncio.sleep(period_s)

    task = asyncio.create_task(beat())
    try:
        await asyncio.sleep(0)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_for(predicate: Any, timeout_s: float, poll_s: float = 0.005) -> float:
    """Poll an async predicate until true; returns the seconds it took (fails on timeout)."""
    start = time.monotonic()
    while True:
        if await predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(poll_s)
