"""The Modbus backend: one pymodbus client per device, built from the room's transport config.

- **Transports**: ``modbus-tcp`` (MBAP framing), ``modbus-rtu`` (a serial line; a pty, as the
  simulator provides, is opened with parity N) and ``rtu-over-tcp`` (RTU frames through a
  TCP serial server).
- **Timeouts**: every transaction is bounded twice: by the client's own timeout
  (``timeout_ms`` per attempt, ``retries`` extra attempts) and by an ``asyncio.wait_for``
  around the whole call with a margin on top, so that nothing in the client library can hold
  the control cycle longer than that.
- **Reconnection** is ours, not pymodbus's (its automatic reconnect task is disabled): a
  connection attempt happens only when a caller asks (``connect``), and attempts are spaced
  by an exponential backoff, 50 ms doubling to 2 s, reset once a session delivered a good
  reading. An attempt is itself bounded by the timeout. Nothing runs in the background.
- **A transaction that times out, is cancelled, or gets an answer that does not match the
  request closes the connection.** RTU has no transaction id: a late answer could otherwise be
  taken for the answer to the next request. The next ``connect`` opens a new session, and the
  client re-verifies the device's settings before trusting it again. An exception response
  (the device answered, with a Modbus exception code) keeps the connection.
- **Half-duplex**: one asyncio.Lock serialises transactions on the link.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.client.base import ModbusBaseClient
from pymodbus.exceptions import ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from syncctl.config.room import ModbusRtu, ModbusTcp, RtuOverTcp
from syncctl.devices.signals import BIT_TABLES, LinkError, Table

log = logging.getLogger("syncctl.devices.modbus")

Transport = ModbusTcp | ModbusRtu | RtuOverTcp

BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 2.0

READ_FUNCTION = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}


def make_client(transport: Transport, timeout_s: float, retries: int) -> ModbusBaseClient:
    """The pymodbus client for a transport config, with pymodbus's own reconnect disabled."""
    if isinstance(transport, ModbusTcp):
        return AsyncModbusTcpClient(
            transport.host, port=transport.port, framer=FramerType.SOCKET,
            timeout=timeout_s, retries=retries, reconnect_delay=0,
        )
    if isinstance(transport, RtuOverTcp):
        return AsyncModbusTcpClient(
            transport.host, port=transport.port, framer=FramerType.RTU,
            timeout=timeout_s, retries=retries, reconnect_delay=0,
        )
    return AsyncModbusSerialClient(
        transport.port, framer=FramerType.RTU, baudrate=transport.baudrate,
        parity=serial_parity(transport), stopbits=transport.stopbits,
        bytesize=transport.bytesize, timeout=timeout_s, retries=retries, reconnect_delay=0,
    )


def is_pty(path: str) -> bool:
    """Whether a serial port path is (a link to) a Unix98 pseudo-terminal."""
    return os.path.realpath(path).startswith("/dev/pts/")


def serial_parity(transport: ModbusRtu) -> str:
    """The configured parity, except on a pty (the simulator's line): a pty carries bytes
    without parity, and Linux refuses PARENB on one (tcsetattr EINVAL), so it is opened with
    parity N whatever the room file says for the real line."""
    return "N" if is_pty(transport.port) else transport.parity


class ModbusLink:
    """One device's connection: implements ``syncctl.devices.signals.RegisterBackend``."""

    def __init__(
        self,
        transport: Transport,
        *,
        timeout_s: float,
        retries: int = 0,
        clock: Callable[[], float] = time.monotonic,
        backoff_min_s: float = BACKOFF_MIN_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        if timeout_s <= 0 or retries < 0 or not 0 < backoff_min_s <= backoff_max_s:
            raise ValueError("timeout_s > 0, retries >= 0, 0 < backoff_min_s <= backoff_max_s")
        self.transport = transport
        self.unit = transport.unit
        self.timeout_s = timeout_s
        self.retries = retries
        self.call_timeout_s = timeout_s * (retries + 1) + max(0.005, 0.5 * timeout_s)
        """The asyncio.wait_for bound around a whole transaction (or connection attempt)."""
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.stats: dict[str, int] = {
            "transactions": 0, "failures": 0, "timeouts": 0, "exceptions": 0, "malformed": 0,
            "connect_attempts": 0, "connect_failures": 0, "connects": 0, "reconnects": 0,
            "drops": 0,
        }
        self._clock = clock
        self._client: ModbusBaseClient | None = None
        self._session = 0
        self._delay = backoff_min_s
        self._next_attempt_at: float | None = None
        self._last_error = "never connected"
        self._closed = False
        self._lock = asyncio.Lock()

    # -- RegisterBackend: connection ---------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    @property
    def session(self) -> int:
        return self._session

    @property
    def last_error(self) -> str:
        return self._last_error

    @property
    def backoff_s(self) -> float:
        """The wait that will follow the next failed connection attempt."""
        return self._delay

    def describe(self) -> str:
        return self.transport.describe()

    async def connect(self) -> bool:
        if self.connected:
            return True
        if self._closed:
            self._last_error = "closed"
            return False
        now = self._clock()
        if self._next_attempt_at is not None and now < self._next_attempt_at:
            return False  # backing off; _last_error still says why the last attempt failed
        self._next_attempt_at = now + self._delay
        self._delay = min(2 * self._delay, self.backoff_max_s)
        self._discard_client()
        self.stats["connect_attempts"] += 1
        client = make_client(self.transport, self.timeout_s, self.retries)
        try:
            ok = await asyncio.wait_for(client.connect(), self.call_timeout_s)
            reason = "connection refused or failed"
        except asyncio.CancelledError:
            client.close()
            raise
        except TimeoutError:
            ok, reason = False, f"connection attempt timed out ({self.call_timeout_s:g} s)"
        except (OSError, ModbusException) as exc:
            ok, reason = False, f"connection failed: {exc}"
        if not ok or not client.connected:
            client.close()
            self.stats["connect_failures"] += 1
            self._last_error = f"{reason} (next attempt in {self._next_attempt_at - now:g} s)"
            return False
        self._client = client
        self._session += 1
        self.stats["connects"] += 1
        if self._session > 1:
            self.stats["reconnects"] += 1
        self._last_error = ""
        log.info("connected: %s (session %d)", self.describe(), self._session)
        return True

    def mark_good(self) -> None:
        self._delay = self.backoff_min_s

    def drop(self, reason: str) -> None:
        if self._client is not None:
            self.stats["drops"] += 1
            log.warning("closing %s: %s", self.describe(), reason)
        self._last_error = reason
        self._discard_client()

    async def close(self) -> None:
        self._closed = True
        self._discard_client()

    def _discard_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- RegisterBackend: transactions --------------------------------------------------------

    async def read(self, table: Table, address: int, count: int) -> list[int]:
        def call(c: ModbusBaseClient) -> Awaitable[ModbusPDU]:
            unit = self.unit
            if table == "input":
                return c.read_input_registers(address, count=count, device_id=unit)
            if table == "holding":
                return c.read_holding_registers(address, count=count, device_id=unit)
            if table == "coil":
                return c.read_coils(address, count=count, device_id=unit)
            return c.read_discrete_inputs(address, count=count, device_id=unit)

        what = f"read {table} {address}+{count}"
        response = await self._transact(what, call)
        if response.function_code != READ_FUNCTION[table]:
            self._malformed(what, f"answer has function code {response.function_code}")
        if table in BIT_TABLES:
            # Bits come padded to a whole byte.
            bits = list(response.bits)
            if not count <= len(bits) < count + 8:
                self._malformed(what, f"{len(bits)} bits for {count}")
            return [int(b) for b in bits[:count]]
        words = list(response.registers)
        if len(words) != count:
            self._malformed(what, f"wrong word count: {len(words)} for {count}")
        return words

    async def write(self, table: Table, address: int, words: Sequence[int]) -> None:
        values = list(words)
        if table not in ("holding", "coil") or not values:
            raise ValueError(f"cannot write {len(values)} value(s) to the {table} table")
        single = len(values) == 1

        def call(c: ModbusBaseClient) -> Awaitable[ModbusPDU]:
            if table == "holding":
                if single:
                    return c.write_register(address, values[0], device_id=self.unit)
                return c.write_registers(address, values, device_id=self.unit)
            if single:
                return c.write_coil(address, bool(values[0]), device_id=self.unit)
            return c.write_coils(address, [bool(v) for v in values], device_id=self.unit)

        what = f"write {table} {address}={values}"
        response = await self._transact(what, call)
        expected_fc = {("holding", True): 6, ("holding", False): 16,
                       ("coil", True): 5, ("coil", False): 15}[(table, single)]
        if response.function_code != expected_fc or response.address != address:
            self._malformed(what, f"acknowledgement does not match the request: {response}")
        if not single and response.count != len(values):
            self._malformed(what, f"acknowledged {response.count} value(s) for {len(values)}")
        if single:
            echoed = (list(response.registers) if table == "holding"
                      else [int(bool(response.bits and response.bits[0]))])
            if echoed != values:
                # The device answered this request, keeping another value (a single write's
                # answer echoes what the register holds): refused, but the link is sound.
                self.stats["failures"] += 1
                raise LinkError("refused", f"{what}: device acknowledged {echoed}")

    async def _transact(
        self, what: str, call: Callable[[ModbusBaseClient], Awaitable[ModbusPDU]]
    ) -> ModbusPDU:
        async with self._lock:
            client = self._client
            if client is None or not client.connected:
                raise LinkError("disconnected", f"{what}: not connected")
            self.stats["transactions"] += 1
            try:
                # asyncio.timeout, not wait_for: in Python 3.11 wait_for wraps every call in
                # a new task, a measurable share of the cycle's CPU at 1 kHz.
                async with asyncio.timeout(self.call_timeout_s):
                    response = await call(client)
            except asyncio.CancelledError:
                self.stats["failures"] += 1
                self.drop(f"{what}: cancelled in flight")
                raise
            except TimeoutError:
                self._timed_out(what, f"no answer within {self.call_timeout_s:g} s")
            except ModbusIOException as exc:  # pymodbus: no (valid) answer after its retries
                self._timed_out(what, str(exc))
            except (ModbusException, OSError) as exc:
                self.stats["failures"] += 1
                self.drop(f"{what}: {exc}")
                raise LinkError("disconnected", f"{what}: {exc}") from None
            if response is None:
                self._malformed(what, "no response object")
            if response.isError():
                self.stats["failures"] += 1
                self.stats["exceptions"] += 1
                code = getattr(response, "exception_code", "?")
                raise LinkError("exception", f"{what}: device answered exception code {code}")
            return response

    def _timed_out(self, what: str, detail: str) -> NoReturn:
        self.stats["failures"] += 1
        self.stats["timeouts"] += 1
        self.drop(f"{what}: timeout: {detail}")
        raise LinkError("timeout", f"{what}: timeout: {detail}")

    def _malformed(self, what: str, detail: str) -> NoReturn:
        self.stats["failures"] += 1
        self.stats["malformed"] += 1
        self.drop(f"{what}: malformed answer: {detail}")
        raise LinkError("malformed", f"{what}: malformed answer: {detail}")
