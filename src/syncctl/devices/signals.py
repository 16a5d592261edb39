"""Typed signals over a register map, and the transaction plans that read and write them.

A *signal* is one named register of a device's map (``syncctl.config`` register maps), with
its codec: ``flag`` (0/1), ``integer``, ``number`` (raw x scale) or ``bits`` (a bitfield). The
device clients never touch addresses: they ask for signals by name, and this module plans the
fewest Modbus transactions that cover them (contiguous addresses of one table, at most 125
registers or 2000 bits per read) and decodes the words that come back.

Everything here is sans-I/O except ``RegisterBackend``, the protocol a transport implements
(``syncctl.devices.modbus.ModbusLink`` is the real one; tests may plug in a fake). Errors are
split as the house rules ask: ``RemoteError`` (the device or the link misbehaved: becomes
``healthy=False`` in a reading, never a crash) versus ``ValueError`` (our bug or bad
configuration: raised).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

from syncctl.config import CodecError, RegisterDef, RegisterMapFile
from syncctl.config import decode_bits as _decode_bits
from syncctl.config import decode_raw as _decode_raw
from syncctl.config import encode as _encode

log = logging.getLogger("syncctl.devices")

Table = Literal["holding", "input", "coil", "discrete"]
REGISTER_TABLES: tuple[Table, ...] = ("holding", "input")
BIT_TABLES: tuple[Table, ...] = ("coil", "discrete")

MAX_REGISTERS_PER_READ = 125
"""Modbus limit for function codes 03/04."""
MAX_BITS_PER_READ = 2000
"""Modbus limit for function codes 01/02."""
MAX_REGISTERS_PER_WRITE = 123
"""Modbus limit for function code 16."""
MAX_BITS_PER_WRITE = 1968
"""Modbus limit for function code 15."""


# --- errors ---------------------------------------------------------------------------------


class RemoteError(Exception):
    """The device or the link failed. Reported as data (an unhealthy reading), never raised
    out of a client method."""


class DeviceDataError(RemoteError):
    """The device answered, but a value is malformed or out of the register's range."""


LINK_TROUBLE = frozenset({"disconnected", "timeout", "malformed"})
"""Failures that say the link itself is in trouble (an exception answer or a refused write
came over a working link; so did a ``corrupt`` answer: the line is noisy, not lost, the link
is kept, and a write that failed so is retried and judged by the next status read)."""


class LinkError(RemoteError):
    """A transaction failed: ``kind`` is ``disconnected``, ``timeout``, ``exception`` (the
    device answered with a Modbus exception), ``malformed`` (the answer does not match the
    request), ``corrupt`` (the answer was damaged on the line, again when a read was asked
    once more: no value is taken from it) or ``refused`` (a write acknowledged with another
    value than the one sent)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# --- signals --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signal:
    """One named register of a map with its codec."""

    name: str
    reg: RegisterDef
    word_order: str

    @property
    def table(self) -> Table:
        return self.reg.table

    @property
    def address(self) -> int:
        return self.reg.address

    @property
    def width(self) -> int:
        return self.reg.width

    @property
    def last_address(self) -> int:
        return self.reg.last_address

    def raw(self, words: Sequence[int]) -> int:
        try:
            return _decode_raw(self.reg, list(words), self.word_order)
        except CodecError as exc:
            raise DeviceDataError(f"{self.name}: {exc}") from None

    def number(self, words: Sequence[int]) -> float:
        """Engineering value: raw x scale."""
        return self.raw(words) * self.reg.scale

    def integer(self, words: Sequence[int]) -> int:
        """A count or a code: the engineering value, which must be a whole number."""
        raw = self.raw(words)
        if self.reg.scale == 1:
            return raw
        value = raw * self.reg.scale
        if not float(value).is_integer():
            raise DeviceDataError(f"{self.name}: {value!r} is not a whole number")
        return int(value)

    def flag(self, words: Sequence[int]) -> bool:
        """A 0/1 register (type bool, or uint16 used as a flag). Anything else is malformed:
        a 7 in a flag must not read as True."""
        raw = self.raw(words)
        if raw not in (0, 1):
            raise DeviceDataError(f"{self.name}: a flag holds 0 or 1, got {raw}")
        return raw == 1

    def bits(self, words: Sequence[int]) -> dict[str, bool]:
        """Named bits of a bitfield; bits the map does not name are ignored."""
        if self.reg.type != "bitfield":
            raise ValueError(f"{self.name} is a {self.reg.type}, not a bitfield")
        try:
            return _decode_bits(self.reg, list(words))
        except CodecError as exc:
            raise DeviceDataError(f"{self.name}: {exc}") from None

    def encode(self, value: float) -> list[int]:
        """Words for an engineering value. Raises ValueError (CodecError) when the register
        cannot carry it: that is a local error (our value), not the device's."""
        if self.reg.access != "rw":
            raise ValueError(f"{self.name} is read-only in the register map")
        return _encode(self.reg, value, self.word_order)


class SignalMap:
    """Every signal of one device's register map, by name."""

    def __init__(self, regmap: RegisterMapFile) -> None:
        self.device = regmap.device
        self.word_order = regmap.word_order
        self._signals = {
            name: Signal(name, reg, regmap.word_order) for name, reg in regmap.registers.items()
        }

    def __getitem__(self, name: str) -> Signal:
        try:
            return self._signals[name]
        except KeyError:
            raise ValueError(f"the {self.device} map has no signal {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._signals

    def plan_reads(self, names: Iterable[str]) -> ReadPlan:
        return ReadPlan.of([self[name] for name in names])


# --- reading: plan and decode ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read transaction: ``count`` registers (or bits) of ``table`` from ``address``."""

    table: Table
    address: int
    count: int
    signals: tuple[str, ...]

    @property
    def last_address(self) -> int:
        return self.address + self.count - 1


def plan_reads(
    signals: Iterable[Signal],
    *,
    max_registers: int = MAX_REGISTERS_PER_READ,
    max_bits: int = MAX_BITS_PER_READ,
) -> tuple[ReadBlock, ...]:
    """The fewest read transactions covering ``signals``.

    Signals are grouped per table and in address order; a block grows while the next signal
    starts right after it (a gap ends the block: an unmapped address may answer with an
    exception) and while it stays within the per-read limit. A 32-bit value is never split
    across two blocks. Greedy in address order is optimal for this (interval cover) problem.
    Tables are read in a fixed order: input, holding, discrete, coil.
    """
    by_table: dict[Table, list[Signal]] = {}
    for sig in {s.name: s for s in signals}.values():
        by_table.setdefault(sig.table, []).append(sig)
    blocks: list[ReadBlock] = []
    for table in ("input", "holding", "discrete", "coil"):
        entries = sorted(by_table.get(table, []), key=lambda s: s.address)
        limit = max_bits if table in BIT_TABLES else max_registers
        start = end = -1
        names: list[str] = []
        for sig in entries:
            if sig.width > limit:
                raise ValueError(f"{sig.name} is wider than one read ({limit})")
            if names and sig.address <= end:
                raise ValueError(f"{sig.name} overlaps {names[-1]} in the {table} table")
            if names and sig.address == end + 1 and sig.last_address - start + 1 <= limit:
                end = sig.last_address
                names.append(sig.name)
                continue
            if names:
                blocks.append(ReadBlock(table, start, end - start + 1, tuple(names)))
            start, end, names = sig.address, sig.last_address, [sig.name]
        if names:
            blocks.append(ReadBlock(table, start, end - start + 1, tuple(names)))
    return tuple(blocks)


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """The blocks that read a set of signals, and where each signal sits in them."""

    blocks: tuple[ReadBlock, ...]
    signals: Mapping[str, Signal]

    @classmethod
    def of(cls, signals: Sequence[Signal]) -> ReadPlan:
        return cls(plan_reads(signals), {s.name: s for s in signals})

    def values(self, words_per_block: Sequence[Sequence[int]]) -> SignalValues:
        """Decode the answers, one word list per block in plan order. A wrong number of words
        is a DeviceDataError."""
        if len(words_per_block) != len(self.blocks):
            raise DeviceDataError(
                f"expected {len(self.blocks)} block(s), got {len(words_per_block)}")
        located: dict[str, list[int]] = {}
        for block, words in zip(self.blocks, words_per_block, strict=True):
            if len(words) != block.count:
                raise DeviceDataError(
                    f"{block.table} {block.address}..{block.last_address}: expected "
                    f"{block.count} value(s), got {len(words)}")
            for name in block.signals:
                sig = self.signals[name]
                offset = sig.address - block.address
                located[name] = list(words[offset:offset + sig.width])
        return SignalValues(self.signals, located)


class SignalValues:
    """Decoded access to the words of one read, by signal name. Every accessor raises
    DeviceDataError for a malformed value."""

    def __init__(self, signals: Mapping[str, Signal], words: Mapping[str, list[int]]) -> None:
        self._signals = signals
        self._words = words

    def words(self, name: str) -> list[int]:
        try:
            return list(self._words[name])
        except KeyError:
            raise ValueError(f"{name!r} was not part of this read") from None

    def flag(self, name: str) -> bool:
        return self._signals[name].flag(self.words(name))

    def integer(self, name: str) -> int:
        return self._signals[name].integer(self.words(name))

    def number(self, name: str) -> float:
        return self._signals[name].number(self.words(name))

    def bits(self, name: str) -> dict[str, bool]:
        return self._signals[name].bits(self.words(name))


# --- writing: plan --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WriteBlock:
    """One write transaction: ``words`` (or 0/1 bits) into ``table`` from ``address``."""

    table: Table
    address: int
    words: tuple[int, ...]
    signals: tuple[str, ...]


def plan_writes(
    items: Sequence[tuple[Signal, Sequence[int]]],
    *,
    max_registers: int = MAX_REGISTERS_PER_WRITE,
    max_bits: int = MAX_BITS_PER_WRITE,
) -> tuple[WriteBlock, ...]:
    """The fewest write transactions for already encoded signals: contiguous addresses of one
    table go into one multiple-write. Only holding registers and coils are writable."""
    blocks: list[WriteBlock] = []
    for table in ("holding", "coil"):
        entries = sorted((i for i in items if i[0].table == table), key=lambda i: i[0].address)
        limit = max_bits if table == "coil" else max_registers
        start = -1
        words: list[int] = []
        names: list[str] = []
        for sig, encoded in entries:
            if len(encoded) != sig.width:
                raise ValueError(f"{sig.name}: {len(encoded)} word(s) for width {sig.width}")
            if names and sig.address == start + len(words) and len(words) + sig.width <= limit:
                words.extend(encoded)
                names.append(sig.name)
                continue
            if names:
                blocks.append(WriteBlock(table, start, tuple(words), tuple(names)))
            start, words, names = sig.address, list(encoded), [sig.name]
        if names:
            blocks.append(WriteBlock(table, start, tuple(words), tuple(names)))
    others = [sig.name for sig, _ in items if sig.table not in ("holding", "coil")]
    if others:
        raise ValueError(f"not writable (input or discrete table): {others}")
    return tuple(blocks)


# --- the backend a transport implements ------------------------------------------------------


class RegisterBackend(Protocol):
    """One connection to one device. Implementations serialise transactions (a serial line is
    half-duplex), bound each by a timeout, and raise only LinkError for remote failures."""

    stats: dict[str, int]
    """Counters for the status line; clients add their own keys to the same dict."""

    @property
    def connected(self) -> bool: ...

    @property
    def session(self) -> int:
        """Increments at every new connection: a client re-checks the device when it changes."""
        ...

    @property
    def last_error(self) -> str: ...

    def describe(self) -> str: ...

    async def connect(self) -> bool:
        """Connect unless connected; honours the reconnection backoff. Never raises."""
        ...

    def mark_good(self) -> None:
        """The current session delivered a good reading: reset the backoff."""
        ...

    def drop(self, reason: str) -> None:
        """Close the connection (the next ``connect`` opens a new session)."""
        ...

    async def read(self, table: Table, address: int, count: int) -> list[int]: ...

    async def write(self, table: Table, address: int, words: Sequence[int]) -> None: ...

    async def close(self) -> None:
        """Close for good: ``connect`` fails afterwards."""
        ...


async def read_plan(
    backend: RegisterBackend, plan: ReadPlan, clock: Callable[[], float]
) -> tuple[SignalValues, float]:
    """Execute a read plan. Returns the decoded values and the clock value taken right after
    the *first* block's answer arrived: with several blocks, the oldest data decides how fresh
    the reading is."""
    answers, at = await read_words(backend, plan, clock)
    return plan.values(answers), at


async def read_words(
    backend: RegisterBackend, plan: ReadPlan, clock: Callable[[], float]
) -> tuple[list[list[int]], float]:
    """``read_plan`` without the decoding: each block's words, and the same clock value."""
    answers: list[list[int]] = []
    first_at: float | None = None
    for block in plan.blocks:
        answers.append(await backend.read(block.table, block.address, block.count))
        if first_at is None:
            first_at = clock()
    return answers, (clock() if first_at is None else first_at)


# --- the device: signals over a backend, one session at a time -------------------------------


class VerifyError(RemoteError):
    """A value read back differs from the value written."""


S = TypeVar("S")


class SignalDevice(Generic[S]):
    """What both device clients share: the session rules, the status poll, verified writes.

    A *session* is one connection of the backend. A new session counts as ready only after the
    device's identity was read and its settings were written **and read back equal**; until
    then every reading is unhealthy and only writes toward the safe state go out.

    Health: a reading is healthy when the last poll succeeded and the link is still up in the
    session that poll used. Any remote failure (timeout, disconnect, exception response,
    malformed answer, undecodable or out-of-range value) makes it unhealthy and is kept in
    ``last_error``; the last good status and its ``read_at`` are kept, so the core can tell an
    old good value from none (``status=None`` only while nothing was ever read).

    Calls are serialised by one asyncio.Lock: a serial line is half-duplex and a command's
    write must not interleave with another call's read-back.
    """

    def __init__(
        self,
        *,
        name: str,
        regmap: RegisterMapFile,
        backend: RegisterBackend,
        clock: Callable[[], float],
        status_signals: Sequence[str],
        settings: Mapping[str, float],
        room: str = "",
    ) -> None:
        self.name = name
        self.room = room
        self.signals = SignalMap(regmap)
        self.settings = dict(settings)
        self.identity: int | None = None
        """Device id read at the start of each session (recorded for commissioning)."""
        self.firmware_version: int | None = None
        self.last_error = ""
        """Why the reading is unhealthy or why the latest write failed; a healthy poll clears
        it (a successful write does not, so it never hides why the reading is unhealthy)."""
        self._backend = backend
        self._clock = clock
        self._status_plan = self.signals.plan_reads(status_signals)
        self._identity_plan = self.signals.plan_reads(("identity", "firmware_version"))
        # A setting the register cannot carry is a configuration error: raise now (local).
        encoded = [(self.signals[n], self.signals[n].encode(v)) for n, v in settings.items()]
        self._settings_writes = plan_writes(encoded)
        self._settings_expected = {sig.name: words for sig, words in encoded}
        self._settings_check = self.signals.plan_reads(self._settings_expected)
        self.stats = backend.stats
        for key in ("polls", "unchanged", "decode_errors", "verify_failures",
                    "session_failures", "sessions_verified"):
            self.stats.setdefault(key, 0)
        self._lock = asyncio.Lock()
        self._ready_session: int | None = None
        self._status: S | None = None
        self._status_words: list[list[int]] | None = None
        """The words ``_status`` was decoded from: the same words again decode to it."""
        self._read_at: float | None = None
        self._polled_ok = False
        self._closed = False
        self._log_extra = {"room": room, "device": name}

    # -- state -----------------------------------------------------------------------------

    @property
    def backend(self) -> RegisterBackend:
        return self._backend

    @property
    def ready(self) -> bool:
        """Connected, and this session's identity and settings were verified."""
        return (
            not self._closed
            and self._backend.connected
            and self._ready_session == self._backend.session
        )

    @property
    def healthy(self) -> bool:
        return self._polled_ok and self.ready

    @property
    def status(self) -> S | None:
        """The last good status (kept while unhealthy)."""
        return self._status

    @property
    def read_at(self) -> float | None:
        return self._read_at

    @property
    def transaction_plan(self) -> tuple[ReadBlock, ...]:
        """The reads one poll performs."""
        return self._status_plan.blocks

    def describe(self) -> str:
        return f"{self.name} ({self._backend.describe()})"

    def _decode_status(self, values: SignalValues) -> S:
        raise NotImplementedError

    # -- poll ------------------------------------------------------------------------------

    async def _poll(self) -> None:
        async with self._lock:
            self.stats["polls"] += 1
            if not await self._ensure_ready():
                return
            try:
                words, at = await read_words(self._backend, self._status_plan, self._clock)
                if words == self._status_words and self._status is not None:
                    # Decoding is a pure function of the words (range checks included):
                    # most polls read the block unchanged, and skip it.
                    status = self._status
                    self.stats["unchanged"] += 1
                else:
                    status = self._decode_status(self._status_plan.values(words))
                    self._status_words = words
            except RemoteError as exc:
                if isinstance(exc, DeviceDataError):
                    self.stats["decode_errors"] += 1
                self._fail(f"status read: {exc}")
                return
            self._status, self._read_at = status, at
            if not self._polled_ok:
                log.info("%s healthy", self.describe(), extra=self._log_extra)
            self._polled_ok = True
            self.last_error = ""
            self._backend.mark_good()

    async def _ensure_ready(self) -> bool:
        """Connect (with backoff) and verify the session when needed. Holds the lock."""
        if self._closed:
            self._fail("closed")
            return False
        if not self._backend.connected and not await self._backend.connect():
            self._fail(f"not connected: {self._backend.last_error}")
            return False
        if self._ready_session == self._backend.session:
            return True
        session = self._backend.session
        try:
            await self._start_session()
        except RemoteError as exc:
            self.stats["session_failures"] += 1
            self._fail(f"session not verified: {exc}")
            # Dropping the link puts the next attempt behind the reconnection backoff.
            self._backend.drop(f"session not verified: {exc}")
            return False
        self._ready_session = session
        self.stats["sessions_verified"] += 1
        return True

    async def _start_session(self) -> None:
        values, _ = await read_plan(self._backend, self._identity_plan, self._clock)
        identity = values.integer("identity")
        if self.identity is not None and identity != self.identity:
            # Accepted (the map has no expected id), but a device swapped behind one address
            # is worth a line in the log for commissioning.
            log.warning("%s identity changed: 0x%04X -> 0x%04X", self.describe(),
                        self.identity, identity, extra=self._log_extra)
        self.identity = identity
        self.firmware_version = values.integer("firmware_version")
        log.info("%s connected: identity 0x%04X, firmware %d", self.describe(),
                 self.identity, self.firmware_version, extra=self._log_extra)
        for block in self._settings_writes:
            await self._backend.write(block.table, block.address, block.words)
        await self._verify(self._settings_check, self._settings_expected)

    async def _verify(self, plan: ReadPlan, expected: Mapping[str, Sequence[int]]) -> None:
        values, _ = await read_plan(self._backend, plan, self._clock)
        wrong = [
            f"{name} reads back {values.words(name)}, wrote {list(words)}"
            for name, words in expected.items()
            if values.words(name) != list(words)
        ]
        if wrong:
            self.stats["verify_failures"] += 1
            raise VerifyError("; ".join(wrong))

    def _fail(self, reason: str) -> None:
        if self._polled_ok or reason != self.last_error:
            log.warning("%s unhealthy: %s", self.describe(), reason, extra=self._log_extra)
        self._polled_ok = False
        self.last_error = reason

    # -- writes ----------------------------------------------------------------------------

    async def _write(
        self, what: str, values: Mapping[str, float], *, verify: bool, need_ready: bool
    ) -> bool:
        """Write signals (contiguous ones in one transaction); with ``verify``, read them back
        and compare. ``need_ready=False`` only for writes toward the safe state, which go out
        on any live connection. Returns True on success; never raises for remote failures."""
        try:
            encoded = {name: self.signals[name].encode(v) for name, v in values.items()}
            blocks = plan_writes([(self.signals[n], w) for n, w in encoded.items()])
        except ValueError as exc:  # our value does not fit the register: a local error
            self.last_error = f"{what}: {exc}"
            log.error("%s %s refused: %s", self.describe(), what, exc, extra=self._log_extra)
            return False
        async with self._lock:
            if self._closed or not self._backend.connected:
                self.last_error = f"{what}: not connected"
                return False
            if need_ready and not self.ready:
                self.last_error = f"{what}: settings not verified since connect"
                return False
            try:
                for block in blocks:
                    await self._backend.write(block.table, block.address, block.words)
                if verify:
                    await self._verify(self.signals.plan_reads(encoded), encoded)
            except RemoteError as exc:
                if isinstance(exc, LinkError) and exc.kind in LINK_TROUBLE:
                    # The link failed now: the reading is degraded at once (the core holds
                    # the beam) rather than at the next poll, which the lock may delay.
                    self._fail(f"{what}: {exc}")
                else:
                    self.last_error = f"{what}: {exc}"
                log.warning("%s %s failed: %s", self.describe(), what, exc,
                            extra=self._log_extra)
                return False
            return True

    async def write_heartbeat(self, value: int) -> bool:
        """Write the heartbeat (acknowledged, not read back: the echo comes with the status)."""
        return await self._write("heartbeat", {"heartbeat": value}, verify=False,
                                 need_ready=True)

    async def reset_faults(self) -> bool:
        """Write fault_reset = 1 (acknowledged; the device may clear it again by itself)."""
        return await self._write("fault reset", {"fault_reset": 1}, verify=False,
                                 need_ready=True)

    async def close(self) -> None:
        """Close the connection for good; later calls return False / unhealthy readings."""
        self._closed = True
        self._polled_ok = False
        await self._backend.close()
