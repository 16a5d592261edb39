"""Transport adapters (lewis's *adapter*): a register interface served over Modbus.

- ``TcpAdapter``: Modbus TCP (MBAP framing), or RTU frames over a TCP socket
  (``rtu-over-tcp``, a serial gateway), on host:port (port 0 = a free one).
- ``PtyRtuAdapter``: Modbus RTU on a pseudo-terminal. Two pty pairs joined by an in-process
  relay: the server opens one slave end, the client the other, reached through a symlink at
  the configured serial-port path. A pty has no path for its master side, hence the pair of
  pairs; the relay is also where a disconnected cable drops bytes.

Each device's link can be made faulty from the backdoor (``LinkFaults``): responses delayed,
dropped or corrupted, or the link disconnected. The faults act on the bytes a server sends,
per connection, so the request is still processed (as a device whose reply is lost would).

pymodbus 3.16: devices are ``SimDevice`` objects with separate holding and input blocks; an
async ``action`` is called on every access and is where the register interface is asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import struct
import tty
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from firmware_sim.registers import IllegalAddress, IllegalValue, RegisterBank

# Function code -> the table it addresses.
FC_TABLE = {1: "coil", 5: "coil", 15: "coil", 2: "discrete", 4: "input",
            3: "holding", 6: "holding", 16: "holding", 22: "holding", 23: "holding"}


class RegisterPort(Protocol):
    """What an adapter needs of a register interface."""

    bank: RegisterBank

    def read(self, table: str, address: int, count: int) -> list[int]: ...

    def write(self, table: str, address: int, words: list[int]) -> None: ...

    async def settle(self) -> None: ...


@dataclass
class LinkFaults:
    """Faults of one device's link, set from the backdoor."""

    response_delay_s: float = 0.0
    drop_fraction: float = 0.0
    """Share of responses never sent (the request is still processed)."""
    corrupt_fraction: float = 0.0
    """Share of responses sent damaged: RTU -> wrong CRC; TCP -> a truncated PDU."""
    disconnected: bool = False
    rng: random.Random = field(default_factory=lambda: random.Random(1))

    def clear(self) -> None:
        self.response_delay_s = self.drop_fraction = self.corrupt_fraction = 0.0
        self.disconnected = False


def corrupt_frame(packet: bytes, rtu: bool) -> bytes:
    """RTU: flip the last CRC byte. MBAP: cut the PDU short by two bytes and make the MBAP
    length agree, so the stream stays in step but the PDU does not decode."""
    if rtu:
        return packet[:-1] + bytes([packet[-1] ^ 0xFF]) if packet else packet
    if len(packet) < 8:
        return packet
    pdu = packet[7:]
    cut = pdu[: max(1, len(pdu) - 2)]
    return packet[:4] + struct.pack(">H", len(cut) + 1) + packet[6:7] + cut


def sim_device(unit: int, port: RegisterPort) -> SimDevice:
    """A pymodbus device whose holding and input blocks are answered by ``port``."""

    def block(table: str) -> list[SimData]:
        span = port.bank.extent(table)
        if span is None:  # pymodbus wants a block per table; ours refuses every access
            return [SimData(0, count=1, values=0, datatype=DataType.REGISTERS)]
        first, last = span
        return [SimData(first, count=last - first + 1, values=0, datatype=DataType.REGISTERS)]

    bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]

    async def action(function_code: int, start_address: int, address: int, count: int,
                     current_registers: list[int],
                     set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        table = FC_TABLE.get(function_code)
        if table not in ("holding", "input"):
            return ExcCodes.ILLEGAL_ADDRESS
        try:
            if set_values is None:
                words = port.read(table, address, count)
                offset = address - start_address
                current_registers[offset:offset + count] = words
            else:
                port.write(table, address, [int(v) for v in set_values])
                # What pymodbus stores is what the device now holds (e.g. fault_reset -> 0).
                cast(list[int], set_values)[:] = port.bank.read(table, address, count)
                await port.settle()
        except IllegalAddress:
            return ExcCodes.ILLEGAL_ADDRESS
        except IllegalValue:
            return ExcCodes.ILLEGAL_VALUE
        return None

    return SimDevice(unit, simdata=(bits, bits, block("holding"), block("input")),
                     action=action)


def absent_units() -> SimDevice:
    """Catch-all for unit ids no device here has (pymodbus: id 0 = every other id). A Modbus
    TCP server answers them with exception 0x0B (gateway target failed to respond); on a
    serial line the RTU servers drop that answer: a slave not addressed stays silent."""

    async def action(function_code: int, start_address: int, address: int, count: int,
                     current_registers: list[int],
                     set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        return ExcCodes.GATEWAY_NO_RESPONSE

    everything = [SimData(0, count=0x10000, values=0, datatype=DataType.REGISTERS)]
    bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
    return SimDevice(0, simdata=(bits, bits, everything, everything), action=action)


def _faulty(server_class: type[Any]) -> type[Any]:
    """A pymodbus server class whose every connection passes its outgoing bytes through
    ``LinkFaults``. pymodbus calls ``trace_packet`` per connection handler; binding it to the
    handler lets a delayed response be sent later on the right connection."""

    class Faulty(server_class):  # type: ignore[misc]
        link: LinkFaults | None = None
        rtu: bool = False
        units: frozenset[int] = frozenset()

        def callback_new_connection(self) -> Any:
            handler = super().callback_new_connection()
            link, rtu, units = self.link, self.rtu, self.units

            def on_packet(sending: bool, data: bytes) -> bytes:
                if not sending or not data:
                    return data
                if rtu and data[0] not in units:
                    return b""  # not addressed to us: a serial slave stays silent
                if link is None:
                    return data
                if link.drop_fraction and link.rng.random() < link.drop_fraction:
                    return b""
                if link.corrupt_fraction and link.rng.random() < link.corrupt_fraction:
                    data = corrupt_frame(data, rtu)
                if link.response_delay_s > 0:
                    handler.loop.call_later(link.response_delay_s, _send_later, handler, data)
                    return b""
                return data

            handler.trace_packet = on_packet
            return handler

    Faulty.__name__ = f"Faulty{server_class.__name__}"
    return Faulty


def _send_later(handler: Any, data: bytes) -> None:
    if handler.transport is not None:
        handler.transport.write(data)


FaultyTcpServer = _faulty(ModbusTcpServer)
FaultySerialServer = _faulty(ModbusSerialServer)


class Adapter(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def set_disconnected(self, disconnected: bool) -> None: ...

    def describe(self) -> dict[str, Any]: ...


class TcpAdapter:
    """Modbus TCP, or RTU framing over TCP, on ``host:port``. Disconnect closes the
    listener and every connection (clients are refused); reconnect listens again on the
    same port."""

    def __init__(self, name: str, devices: list[SimDevice], host: str, port: int, unit: int,
                 kind: str = "modbus-tcp", link: LinkFaults | None = None) -> None:
        self.name, self.devices, self.host, self.port, self.unit = name, devices, host, port, unit
        self.kind, self.link = kind, link
        self._server: Any = None

    async def start(self) -> None:
        if self._server is not None:
            return
        rtu = self.kind == "rtu-over-tcp"
        server = FaultyTcpServer(
            [*self.devices, absent_units()], address=(self.host, self.port),
            framer=FramerType.RTU if rtu else FramerType.SOCKET,
        )
        server.link, server.rtu = self.link, rtu
        server.units = frozenset(d.id for d in self.devices)
        if not await server.listen():
            raise OSError(f"{self.name}: cannot listen on {self.host}:{self.port}")
        self.port = server.transport.sockets[0].getsockname()[1]
        self._server = server

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await asyncio.sleep(0)  # let the closed transports report connection_lost

    async def set_disconnected(self, disconnected: bool) -> None:
        if disconnected:
            await self.stop()
        else:
            await self.start()

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "host": self.host, "port": self.port, "unit": self.unit}


class PtyRelay:
    """Two pty pairs whose master ends are joined; bytes are dropped while disconnected.

    Both slave ends stay open here too, so a master never sees a hang-up (EIO) when the
    client closes its end; a full buffer on the far side drops bytes, as a line would.
    """

    def __init__(self) -> None:
        self.disconnected = False
        self._fds: list[int] = []
        self.device_master, self.device_path = self._open_pair()
        self.client_master, self.client_path = self._open_pair()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _open_pair(self) -> tuple[int, str]:
        master, slave = os.openpty()
        self._fds += [master, slave]
        tty.setraw(slave)
        os.set_blocking(master, False)
        return master, os.ttyname(slave)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.device_master, self._pump, self.device_master,
                              self.client_master)
        self._loop.add_reader(self.client_master, self._pump, self.client_master,
                              self.device_master)

    def _pump(self, source: int, sink: int) -> None:
        try:
            data = os.read(source, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data or self.disconnected:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(sink, data)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.device_master)
            self._loop.remove_reader(self.client_master)
            self._loop = None
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []


PTY_PARITY = "N"
"""A pty carries bytes: baud rate and parity have no effect on it, and Linux refuses PARENB
on a pty (tcsetattr: EINVAL), so both ends must open it with parity N whatever the room
config says for the real line."""


class PtyRtuAdapter:
    """Modbus RTU on a pty, the client's end symlinked at ``link``.

    A stale symlink at ``link`` is replaced; anything else there (a real device, a file) is
    left alone and the adapter refuses to start. The symlink is removed on stop.
    """

    def __init__(self, name: str, devices: list[SimDevice], link: Path, unit: int,
                 serial: dict[str, Any], link_faults: LinkFaults | None = None) -> None:
        self.name, self.devices, self.link, self.unit = name, devices, Path(link), unit
        self.serial = serial
        self.link_faults = link_faults
        self._relay: PtyRelay | None = None
        self._server: Any = None

    async def start(self) -> None:
        if self.link.is_symlink():
            self.link.unlink()
        elif self.link.exists():
            raise FileExistsError(f"{self.name}: {self.link} exists and is not a symlink; "
                                  "refusing to replace it")
        relay = PtyRelay()
        relay.start()
        server = FaultySerialServer(
            [*self.devices, absent_units()], framer=FramerType.RTU, port=relay.device_path,
            baudrate=self.serial.get("baudrate", 115200), parity=PTY_PARITY,
            stopbits=self.serial.get("stopbits", 1),
            bytesize=self.serial.get("bytesize", 8),
        )
        server.link, server.rtu = self.link_faults, True
        server.units = frozenset(d.id for d in self.devices)
        if not await server.listen():
            relay.close()
            raise OSError(f"{self.name}: cannot open {relay.device_path}")
        self._relay, self._server = relay, server
        os.symlink(relay.client_path, self.link)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await asyncio.sleep(0)
        if self._relay is not None:
            with contextlib.suppress(OSError):
                if os.readlink(self.link) == self._relay.client_path:
                    self.link.unlink()
            self._relay.close()
            self._relay = None

    async def set_disconnected(self, disconnected: bool) -> None:
        # A serial line has no connection to refuse: a pulled cable answers nothing.
        if self._relay is not None:
            self._relay.disconnected = disconnected

    @property
    def pty_path(self) -> str:
        return self._relay.client_path if self._relay else ""

    def describe(self) -> dict[str, Any]:
        return {"kind": "modbus-rtu", "port": str(self.link), "unit": self.unit,
                "pty": self.pty_path, **self.serial, "parity": PTY_PARITY}

