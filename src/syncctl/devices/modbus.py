"""The Modbus backend: syncctl's own Modbus client, one link per device, built from the room's
transport config. The framing is in ``syncctl.devices.wire`` (pure); this module does the I/O.

- **Transports**: ``modbus-tcp`` (MBAP framing, a transaction id per request) and
  ``rtu-over-tcp`` (RTU frames through a TCP serial server), both an asyncio ``Protocol`` on
  ``loop.create_connection``; ``modbus-rtu``, a serial line opened with pyserial, non-blocking,
  its file descriptor watched by the event loop (a pty, as the simulator provides, is opened
  with parity N). Received bytes go to a buffer and wake the waiting transaction; no task is
  started per transaction, nothing runs in the background.
- **Timeouts**: an attempt waits at most ``timeout_ms`` for a complete answer (``retries``
  extra attempts after one that got none), and an ``asyncio.timeout`` around the whole
  transaction (or connection attempt) adds a margin on top, so that the control cycle is
  never held longer than ``call_timeout_s``.
- **A damaged RTU answer** (bad CRC, or bytes that cannot be a frame) costs neither the
  timeout nor the line: the client waits for the line to fall silent (3.5 character times,
  at least 2 ms), discards what came, counts it (``corrupt``) and asks a read once more within
  the same attempt's time; a write is not repeated blindly: it fails (``LinkError("corrupt")``)
  and the line is kept. No value is ever taken from a damaged frame. (Over Modbus TCP, a PDU
  whose byte count disagrees with its length is treated the same way: the stream stays in step
  because frames are taken by their length.)
- **A transaction that times out, is cancelled, or gets an intact answer that does not match
  the request closes the connection.** RTU has no transaction id: a late answer could
  otherwise be taken for the answer to the next request. The next ``connect`` opens a new
  session, and the client re-verifies the device's settings before trusting it again. An
  exception response (the device answered, with a Modbus exception code) keeps the connection,
  and so does a single write whose echo differs from the value sent (``refused``).
- **Reconnection**: a connection attempt happens only when a caller asks (``connect``), and
  attempts are spaced by an exponential backoff, 50 ms doubling to 2 s, reset once a session
  delivered a good reading. An attempt is itself bounded by the timeout.
- **Half-duplex**: one asyncio.Lock serialises transactions on the link. Bytes arriving while
  no transaction is in flight are counted (``stray_bytes``) and discarded, and the input is
  flushed before each request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import NoReturn

import serial

from syncctl.config.room import ModbusRtu, ModbusTcp, RtuOverTcp
from syncctl.devices.signals import LinkError, Table
from syncctl.devices.wire import (
    READ_FUNCTIONS,
    ExceptionAnswer,
    Frame,
    Mbap,
    Request,
    Rtu,
    WireError,
    answer_values,
    check_answer,
    mbap_frame,
    read_request,
    rtu_frame,
    single_write_echo,
    write_request,
)

log = logging.getLogger("syncctl.devices.modbus")

Transport = ModbusTcp | ModbusRtu | RtuOverTcp

BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 2.0
SILENCE_MIN_S = 0.002
"""The least line silence that ends a damaged RTU answer (3.5 character times is less at
19 200 baud and above; a pty or a TCP serial server has no character time)."""
MAX_WAKEUPS = 10_000
"""Bound on the wake-ups of one wait loop (each is a chunk of bytes or a timer)."""
READ_CACHE_MAX = 64

READ_FUNCTION = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
WRITE_FUNCTION = {("holding", True): 6, ("holding", False): 16,
                  ("coil", True): 5, ("coil", False): 15}


def is_pty(path: str) -> bool:
    """Whether a serial port path is (a link to) a Unix98 pseudo-terminal."""
    return os.path.realpath(path).startswith("/dev/pts/")


def serial_parity(transport: ModbusRtu) -> str:
    """The configured parity, except on a pty (the simulator's line): a pty carries bytes
    without parity, and Linux refuses PARENB on one (tcsetattr EINVAL), so it is opened with
    parity N whatever the room file says for the real line."""
    return "N" if is_pty(transport.port) else transport.parity


def silence_s(transport: Transport) -> float:
    """The line silence that ends an RTU frame: 3.5 character times at the line's settings,
    at least ``SILENCE_MIN_S``."""
    if not isinstance(transport, ModbusRtu) or is_pty(transport.port):
        return SILENCE_MIN_S
    bits = 1 + transport.bytesize + (transport.parity != "N") + transport.stopbits
    return max(SILENCE_MIN_S, 3.5 * bits / transport.baudrate)


class _Channel:
    """The bytes of one connection: received ones accumulate in ``buffer`` while a
    transaction expects them (and wake it); others are counted as stray and dropped."""

    def __init__(self, stats: dict[str, int]) -> None:
        self.buffer = bytearray()
        self.expecting = False
        self.lost: str | None = None
        self.last_rx = 0.0
        """Loop time of the last received chunk."""
        self._stats = stats
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None

    @property
    def connected(self) -> bool:
        return self.lost is None

    def received(self, data: bytes) -> None:
        self.last_rx = self._loop.time()
        if not self.expecting:
            self._stats["stray_bytes"] += len(data)
            return
        self.buffer += data
        self._wake()

    def connection_lost(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, until: float) -> None:
        """Until bytes arrive, the connection is lost, or the loop time ``until``."""
        if self.lost is not None:
            return
        waiter = self._loop.create_future()
        self._waiter = waiter
        timer = self._loop.call_at(until, self._wake)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def discard_input(self) -> None:
        """Drop every byte received so far (counted as stray)."""
        self.drop_buffer()

    def drop_buffer(self) -> None:
        """Drop the bytes of ``buffer`` (counted as stray)."""
        if self.buffer:
            self._stats["stray_bytes"] += len(self.buffer)
            self.buffer.clear()

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.connection_lost("closed")


class _StreamProtocol(asyncio.Protocol):
    def __init__(self, channel: _TcpChannel) -> None:
        self.channel = channel

    def data_received(self, data: bytes) -> None:
        self.channel.received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.channel.connection_lost(f"connection lost: {exc}" if exc else "connection closed "
                                     "by the peer")


class _TcpChannel(_Channel):
    def __init__(self, stats: dict[str, int]) -> None:
        super().__init__(stats)
        self.transport: asyncio.Transport | None = None

    async def open(self, host: str, port: int) -> None:
        transport, _ = await self._loop.create_connection(
            lambda: _StreamProtocol(self), host, port)
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("connection closed")
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        super().close()


class _SerialChannel(_Channel):
    """A serial line, non-blocking; the event loop watches its file descriptor."""

    def __init__(self, stats: dict[str, int], transport: ModbusRtu) -> None:
        super().__init__(stats)
        self.port = serial.Serial(
            transport.port, baudrate=transport.baudrate, parity=serial_parity(transport),
            stopbits=transport.stopbits, bytesize=transport.bytesize, timeout=0,
            write_timeout=0)
        self.fd = self.port.fileno()
        self._watching = True
        self._loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._unwatch()
            self.connection_lost(f"serial line: {exc}")
            return
        if not data:
            self._unwatch()
            self.connection_lost("serial line: end of file")
            return
        self.received(data)

    def discard_input(self) -> None:
        # What the kernel holds and the loop has not handed over yet, then our buffer. Only
        # while the line is open: a closed descriptor's number may belong to another file.
        for _ in range(16 if self._watching else 0):
            try:
                data = os.read(self.fd, 4096)
            except OSError:
                break
            if not data:
                break
            self._stats["stray_bytes"] += len(data)
        self.drop_buffer()

    def send(self, data: bytes) -> None:
        if self.lost is not None:
            raise ConnectionError(self.lost)
        written = os.write(self.fd, data)
        if written != len(data):
            raise OSError(f"serial line took {written} of {len(data)} bytes")

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            self._loop.remove_reader(self.fd)

    def close(self) -> None:
        self._unwatch()
        self.port.close()
        super().close()


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
        """The asyncio.timeout bound around a whole transaction (or connection attempt)."""
        self.silence_s = silence_s(transport)
        """The line silence that ends a damaged RTU answer."""
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.stats: dict[str, int] = {
            "transactions": 0, "failures": 0, "timeouts": 0, "exceptions": 0, "malformed": 0,
            "corrupt": 0, "stray_bytes": 0,
            "connect_attempts": 0, "connect_failures": 0, "connects": 0, "reconnects": 0,
            "drops": 0,
        }
        self._mbap = isinstance(transport, ModbusTcp)
        self._clock = clock
        self._channel: _Channel | None = None
        self._session = 0
        self._tid = 0
        self._delay = backoff_min_s
        self._next_attempt_at: float | None = None
        self._last_error = "never connected"
        self._closed = False
        self._lock = asyncio.Lock()
        self._reads: dict[tuple[int, int, int], tuple[Request, bytes]] = {}

    # -- RegisterBackend: connection ---------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._channel is not None and self._channel.connected

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
        self._discard_channel()
        self.stats["connect_attempts"] += 1
        try:
            async with asyncio.timeout(self.call_timeout_s):
                channel = await self._open()
        except TimeoutError:
            reason = f"connection attempt timed out ({self.call_timeout_s:g} s)"
        except (OSError, ValueError) as exc:  # serial.SerialException is an OSError
            reason = f"connection failed: {exc}"
        else:
            if self._closed:  # closed while the attempt was under way
                channel.close()
                self._last_error = "closed"
                return False
            self._channel = channel
            self._session += 1
            self.stats["connects"] += 1
            if self._session > 1:
                self.stats["reconnects"] += 1
            self._last_error = ""
            log.info("connected: %s (session %d)", self.describe(), self._session)
            return True
        self.stats["connect_failures"] += 1
        self._last_error = f"{reason} (next attempt in {self._next_attempt_at - now:g} s)"
        return False

    async def _open(self) -> _Channel:
        transport = self.transport
        if isinstance(transport, ModbusRtu):
            return _SerialChannel(self.stats, transport)
        channel = _TcpChannel(self.stats)
        await channel.open(transport.host, transport.port)
        return channel

    def mark_good(self) -> None:
        self._delay = self.backoff_min_s

    def drop(self, reason: str) -> None:
        if self._channel is not None:
            self.stats["drops"] += 1
            log.warning("closing %s: %s", self.describe(), reason)
        self._last_error = reason
        self._discard_channel()

    async def close(self) -> None:
        self._closed = True
        self._discard_channel()

    def _discard_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

    # -- RegisterBackend: transactions --------------------------------------------------------

    async def read(self, table: Table, address: int, count: int) -> list[int]:
        key = (READ_FUNCTION[table], address, count)
        cached = self._reads.get(key)
        if cached is None:
            request = read_request(*key)
            if len(self._reads) >= READ_CACHE_MAX:
                self._reads.clear()
            cached = self._reads[key] = (request, rtu_frame(self.unit, request.pdu))
        request, frame = cached
        what = f"read {table} {address}+{count}"
        pdu = await self._transact(what, request, frame)
        return answer_values(request, pdu)

    async def write(self, table: Table, address: int, words: Sequence[int]) -> None:
        values = list(words)
        if table not in ("holding", "coil") or not values:
            raise ValueError(f"cannot write {len(values)} value(s) to the {table} table")
        single = len(values) == 1
        request = write_request(WRITE_FUNCTION[(table, single)], address, values)
        what = f"write {table} {address}={values}"
        pdu = await self._transact(what, request, rtu_frame(self.unit, request.pdu))
        if single:
            echoed = [single_write_echo(request, pdu)]
            if echoed != values:
                # The device answered this request, keeping another value (a single write's
                # answer echoes what the register holds): refused, but the link is sound.
                self.stats["failures"] += 1
                raise LinkError("refused", f"{what}: device acknowledged {echoed}")

    async def _transact(self, what: str, request: Request, rtu: bytes) -> bytes:
        """Send ``request`` and return its answer's PDU, checked against the request."""
        async with self._lock:
            channel = self._channel
            if channel is None or not channel.connected:
                raise LinkError("disconnected", f"{what}: not connected")
            self.stats["transactions"] += 1
            channel.expecting = True
            try:
                # asyncio.timeout, not wait_for: in Python 3.11 wait_for wraps every call in
                # a new task, a measurable share of the cycle's CPU at 1 kHz.
                async with asyncio.timeout(self.call_timeout_s):
                    return await self._exchange(channel, what, request, rtu)
            except asyncio.CancelledError:
                self.stats["failures"] += 1
                self.drop(f"{what}: cancelled in flight")
                raise
            except TimeoutError:
                self._timed_out(what, f"no answer within {self.call_timeout_s:g} s")
            except OSError as exc:
                self.stats["failures"] += 1
                self.drop(f"{what}: {exc}")
                raise LinkError("disconnected", f"{what}: {exc}") from None
            finally:
                channel.expecting = False
                channel.drop_buffer()  # what followed the answer (the next request flushes)

    async def _exchange(self, channel: _Channel, what: str, request: Request,
                        rtu: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        ask_again = request.function in READ_FUNCTIONS  # a read may be asked once more
        retries_left = self.retries
        deadline = loop.time() + self.timeout_s
        for _ in range(self.retries + 2):  # each turn uses up ask_again or a retry
            channel.discard_input()
            tid = 0
            if self._mbap:
                self._tid = tid = (self._tid + 1) & 0xFFFF
                channel.send(mbap_frame(tid, self.unit, request.pdu))
            else:
                channel.send(rtu)
            try:
                frame = await self._receive(channel, tid, deadline)
                check_answer(request, self.unit, frame)
                return frame.pdu
            except ExceptionAnswer as exc:
                self.stats["failures"] += 1
                self.stats["exceptions"] += 1
                raise LinkError("exception", f"{what}: device answered exception code "
                                             f"{exc.code}") from None
            except WireError as exc:
                if exc.kind == "malformed":
                    self._malformed(what, exc.detail)
                self.stats["corrupt"] += 1
                if not await self._settle(channel, deadline):
                    self._timed_out(what, f"the line stayed busy after a damaged answer "
                                          f"({exc.detail})")
                if ask_again:
                    ask_again = False
                    log.info("%s %s: damaged answer (%s), asking again", self.describe(),
                             what, exc.detail)
                    continue
                self.stats["failures"] += 1
                raise LinkError("corrupt", f"{what}: damaged answer: {exc.detail}") from None
            except _NoAnswer as exc:
                if retries_left <= 0:
                    self._timed_out(what, str(exc))
                retries_left -= 1
                deadline = loop.time() + self.timeout_s
                log.info("%s %s: %s, retrying", self.describe(), what, exc)
        self._timed_out(what, "no answer")

    async def _receive(self, channel: _Channel, tid: int, deadline: float) -> Frame:
        """The first complete frame from the channel. Raises WireError (damaged or, over
        MBAP, out of step), _NoAnswer at the deadline, ConnectionError if the line is gone."""
        loop = asyncio.get_running_loop()
        buffer = channel.buffer
        in_flight = (tid,)
        rx_before_wait: float | None = None
        for _ in range(MAX_WAKEUPS):
            if channel.lost is not None:
                raise ConnectionError(channel.lost)
            if self._mbap:
                try:
                    taken = Mbap.parse(buffer, in_flight)
                except WireError as exc:
                    # The stream is out of step: only a new connection resynchronises it.
                    raise ConnectionError(f"MBAP stream out of step: {exc.detail}") from None
                if taken is not None:
                    item, size = taken
                    del buffer[:size]
                    if isinstance(item, Frame):
                        return item
                    self.stats["stray_bytes"] += size
                    continue
                wake_at = deadline
            else:
                parsed = Rtu.parse(buffer)
                if parsed is not None:
                    frame, size = parsed
                    del buffer[:size]
                    return frame
                wake_at = deadline
                if buffer:
                    # Part of a frame: if the line falls silent, the rest is not coming.
                    # Silent means: a whole wait until then brought nothing (a late wake-up
                    # after a stall of the process is not silence: pending bytes are read
                    # before the timer fires).
                    quiet_at = channel.last_rx + self.silence_s
                    if rx_before_wait == channel.last_rx and loop.time() >= quiet_at:
                        raise WireError("corrupt", f"incomplete frame of {len(buffer)} "
                                                   "byte(s), then silence")
                    wake_at = min(deadline, quiet_at)
            if loop.time() >= deadline:
                raise _NoAnswer(f"no complete answer within {self.timeout_s:g} s")
            rx_before_wait = channel.last_rx
            await channel.wait(wake_at)
        raise _NoAnswer("too many wake-ups")

    async def _settle(self, channel: _Channel, deadline: float) -> bool:
        """After a damaged answer: wait for line silence (a whole wait of ``silence_s`` with
        no byte), then discard the input. False if the line did not fall silent before
        ``deadline``."""
        if self._mbap:
            return True  # frames are taken by length: the stream is still in step
        loop = asyncio.get_running_loop()
        for _ in range(MAX_WAKEUPS):
            rx = channel.last_rx
            quiet_at = rx + self.silence_s
            if loop.time() >= deadline or channel.lost is not None:
                return False
            await channel.wait(min(quiet_at, deadline))
            if channel.last_rx == rx and loop.time() >= quiet_at:
                channel.buffer.clear()  # the damaged answer (counted as corrupt, not stray)
                return True
        return False

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


class _NoAnswer(Exception):
    """No complete answer before the attempt's deadline."""
