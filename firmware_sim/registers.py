"""Register interface: a device model seen through its register map (lewis's *interface*).

The map is the same YAML the controller reads (``configs/registers/*.yaml``). A
``RegisterBank`` holds the 16-bit words of every mapped register and converts names to typed
values with the codec of ``syncctl.config``. A ``RegisterInterface`` joins a bank to a model:

- a read first advances the model to *now* on the injected clock, then copies the model's
  state into the bank (``refresh``), so every read is fresh;
- a write is checked as real firmware checks it (unmapped or read-only address -> illegal
  address; a value outside the setting's range -> illegal value), all or nothing, and then
  turned into model inputs (``apply``).

No I/O and no protocol here: the transport adapter maps Modbus function codes onto ``read``
and ``write`` and the exceptions below onto Modbus exception codes.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from firmware_sim.beam_gate import BeamGateModel
from firmware_sim.imaging import ImagingModel
from syncctl.config import (
    CodecError,
    RegisterDef,
    RegisterMapFile,
    decode,
    decode_bits,
    decode_raw,
    encode,
    encode_bits,
    encode_raw,
)
from syncctl.config.registers import RAW_RANGE

Clock = Callable[[], float]
"""Seconds on a monotonic clock; ``time.monotonic`` in the runner, a fake one in tests."""

TABLES = ("holding", "input", "coil", "discrete")

# Bounded catch-up: after a stall the model is advanced in at most this many steps.
MAX_STEP_S = 0.001
MAX_STEPS_PER_ADVANCE = 1000


class RegisterError(Exception):
    """A request the firmware refuses; the adapter answers it with a Modbus exception."""


class IllegalAddress(RegisterError):
    """Unmapped address, or a write to a read-only register (Modbus exception 2)."""


class IllegalValue(RegisterError):
    """A value the register or the setting does not accept (Modbus exception 3)."""


@dataclass(frozen=True)
class WriteEvent:
    """One register written by a client, after it was accepted and applied."""

    t: float
    name: str
    value: float


class RegisterBank:
    """The words of one device's registers, addressed and typed as its map says.

    An address no register covers is unmapped: reading or writing it is refused.
    """

    def __init__(self, registers: Mapping[str, RegisterDef], word_order: str = "big") -> None:
        self.registers = dict(registers)
        self.word_order = word_order
        self.words: dict[str, dict[int, int]] = {table: {} for table in TABLES}
        self._owner: dict[tuple[str, int], str] = {}
        for name, reg in self.registers.items():
            for address in range(reg.address, reg.last_address + 1):
                self.words[reg.table][address] = 0
                self._owner[(reg.table, address)] = name

    # -- extents (the adapter sizes its blocks from these) ---------------------------

    def extent(self, table: str) -> tuple[int, int] | None:
        """(first, last) mapped address of a table, or None if the table is empty."""
        addresses = self.words[table]
        if not addresses:
            return None
        return min(addresses), max(addresses)

    # -- typed access by name --------------------------------------------------------

    def _words_of(self, name: str) -> list[int]:
        reg = self.registers[name]
        table = self.words[reg.table]
        return [table[a] for a in range(reg.address, reg.last_address + 1)]

    def _store(self, name: str, words: list[int]) -> None:
        reg = self.registers[name]
        table = self.words[reg.table]
        for offset, word in enumerate(words):
            table[reg.address + offset] = word

    def get_raw(self, name: str) -> int:
        return decode_raw(self.registers[name], self._words_of(name), self.word_order)

    def get(self, name: str) -> float:
        """Engineering value (raw x scale)."""
        return decode(self.registers[name], self._words_of(name), self.word_order)

    def get_bits(self, name: str) -> dict[str, bool]:
        return decode_bits(self.registers[name], self._words_of(name))

    def set_raw(self, name: str, raw: int) -> None:
        """Store a raw integer; a value beyond the type saturates, as a firmware counter
        register would rather than wrap into nonsense."""
        reg = self.registers[name]
        low, high = RAW_RANGE[reg.type]
        self._store(name, encode_raw(reg, min(high, max(low, int(raw))), self.word_order))

    def set(self, name: str, value: float) -> None:
        """Store an engineering value, rounded to the register's resolution (saturating)."""
        reg = self.registers[name]
        if not math.isfinite(value):
            value = 0.0
        try:
            self._store(name, encode(reg, value, self.word_order))
        except CodecError:
            self.set_raw(name, round(value / reg.scale))

    def set_bits(self, name: str, flags: Mapping[str, bool]) -> None:
        reg = self.registers[name]
        known = {k: v for k, v in flags.items() if k in (reg.bits or {})}
        self._store(name, encode_bits(reg, known))

    # -- word access by address (what the adapter uses) ------------------------------

    def read(self, table: str, address: int, count: int) -> list[int]:
        words = self.words[table]
        out: list[int] = []
        for a in range(address, address + count):
            if a not in words:
                raise IllegalAddress(f"{table} register {a} is not mapped")
            out.append(words[a])
        return out

    def names_at(self, table: str, address: int, count: int) -> list[str]:
        """The registers a range of addresses touches, in address order."""
        names: list[str] = []
        for a in range(address, address + count):
            name = self._owner.get((table, a))
            if name is None:
                raise IllegalAddress(f"{table} register {a} is not mapped")
            if name not in names:
                names.append(name)
        return names


class RegisterInterface(ABC):
    """A bank in front of something with state: subclasses say how state becomes words
    (``refresh``) and how accepted writes become inputs (``apply``).

    ``RANGES``: the engineering-unit range every writable register accepts (inclusive).
    """

    RANGES: ClassVar[Mapping[str, tuple[float, float]]] = {}

    def __init__(self, bank: RegisterBank, clock: Clock,
                 ranges: Mapping[str, tuple[float, float]] | None = None) -> None:
        self.bank = bank
        self.clock = clock
        self.ranges = dict(self.RANGES if ranges is None else ranges)
        self.write_listeners: list[Callable[[WriteEvent], None]] = []

    # -- the device side -------------------------------------------------------------

    def advance(self) -> float:
        """Bring the state up to now; returns now. Nothing to do for a stateless bank."""
        return self.clock()

    @abstractmethod
    def refresh(self) -> None:
        """State -> words."""

    @abstractmethod
    def apply(self, name: str, value: float, t: float) -> None:
        """An accepted write -> state."""

    async def settle(self) -> None:  # noqa: B027 (an optional hook, not abstract)
        """Awaited by the adapter after a write is answered-to-be: effects that need the
        event loop (e.g. closing a server) complete before the response goes out."""

    # -- the protocol side -------------------------------------------------------------

    TRIGGERS = ("fault_reset",)
    """Command registers: each write of 1 acts, and the register holds the value last
    written, so a write is echoed as written (Modbus function 06 echoes its request)."""

    def read(self, table: str, address: int, count: int) -> list[int]:
        self.advance()
        self.refresh()
        return self.bank.read(table, address, count)

    def write(self, table: str, address: int, words: list[int]) -> None:
        """Check every register the write touches, then apply them in address order.

        A write that covers part of a 32-bit register is merged with the word it leaves.
        Raises IllegalAddress / IllegalValue and changes nothing if any register refuses.
        """
        t = self.advance()
        self.refresh()
        names = self.bank.names_at(table, address, len(words))
        for name in names:
            if self.bank.registers[name].access != "rw":
                raise IllegalAddress(f"{name} is read-only")
        staged = RegisterBank({n: self.bank.registers[n] for n in names}, self.bank.word_order)
        for name in names:
            staged._store(name, self.bank._words_of(name))
        for offset, word in enumerate(words):
            if not 0 <= word <= 0xFFFF:
                raise IllegalValue(f"{word} is not a 16-bit word")
            staged.words[table][address + offset] = word
        values: list[tuple[str, float]] = []
        for name in names:
            try:
                value = staged.get(name)
            except CodecError as exc:
                raise IllegalValue(f"{name}: {exc}") from None
            low, high = self.ranges.get(name, (-math.inf, math.inf))
            tolerance = 1e-9 * max(1.0, abs(value))
            if not low - tolerance <= value <= high + tolerance:
                raise IllegalValue(f"{name}: {value:g} outside {low:g}..{high:g}")
            values.append((name, value))
        for name, value in values:
            self.apply(name, value, t)
            event = WriteEvent(t, name, value)
            for listener in self.write_listeners:
                listener(event)
        self.refresh()
        for name in names:
            if name in self.TRIGGERS:
                self.bank._store(name, staged._words_of(name))


class DeviceInterface(RegisterInterface):
    """A register interface over a model that ``process(dt)``-es on the injected clock."""

    IDENTITY: ClassVar[int] = 0
    FIRMWARE_VERSION: ClassVar[int] = 102

    def __init__(self, model: BeamGateModel | ImagingModel, regmap: RegisterMapFile,
                 clock: Clock) -> None:
        super().__init__(RegisterBank(regmap.registers, regmap.word_order), clock)
        self.model = model
        self.t_origin = clock()
        """Clock reading at which the model's time was 0 (device clock origin)."""
        self._last = self.t_origin
        self.advance_listeners: list[Callable[[float], None]] = []

    def advance(self) -> float:
        """Process the model up to now, in steps of at most 1 ms (bounded: after a long
        stall the steps grow rather than their number)."""
        now = self.clock()
        dt = now - self._last
        if dt > 0:
            steps = min(MAX_STEPS_PER_ADVANCE, max(1, math.ceil(dt / MAX_STEP_S - 1e-9)))
            step = dt / steps
            for _ in range(steps):
                self.model.process(step)
            self._last = now
            for listener in self.advance_listeners:
                listener(now)
        return now

    def reboot(self) -> None:
        """Power cycle: the model and every register back to power-up values."""
        self.advance()
        self.model.reboot()
        for name in self.TRIGGERS:  # command registers power up at 0
            if name in self.bank.registers:
                self.bank.set_raw(name, 0)
        self.refresh()

    def refresh(self) -> None:
        self.bank.set_raw("identity", self.IDENTITY)
        self.bank.set_raw("firmware_version", self.FIRMWARE_VERSION)
        self.bank.set_raw("fault_code", int(self.model.fault))
        self.bank.set_raw("heartbeat", self.model.heartbeat)
        self.bank.set_raw("heartbeat_echo", self.model.heartbeat)
        self.bank.set("watchdog_timeout_ms", self.model.watchdog_timeout_s * 1000)
        self.refresh_device()

    @abstractmethod
    def refresh_device(self) -> None:
        """The device-specific part of ``refresh``."""


FLAG = (0.0, 1.0)
WATCHDOG_MS = (10.0, 65535.0)


class BeamGateInterface(DeviceInterface):
    IDENTITY = 0x4247  # 'BG'
    FIRMWARE_VERSION = 102
    RANGES: ClassVar[Mapping[str, tuple[float, float]]] = {
        "gate_command": FLAG,
        "fault_reset": FLAG,
        "watchdog_timeout_ms": WATCHDOG_MS,
        "dose_preset": (0.0, math.inf),
        "heartbeat": (0.0, 65535.0),
    }

    model: BeamGateModel

    def __init__(self, model: BeamGateModel, regmap: RegisterMapFile, clock: Clock) -> None:
        super().__init__(model, regmap, clock)

    def refresh_device(self) -> None:
        m, b = self.model, self.bank
        b.set_raw("gate_readback", int(m.gate_open))
        b.set_bits("status", {
            "ready": m.ready,
            "spill_active": m.spill_active,
            "chain_ok": m.chain_ok,
            "door_closed": not m.faults.door_open,
            "estop_released": not m.faults.estop_pressed,
            "watchdog_tripped": m.watchdog_tripped,
        })
        b.set("dose_delivered", m.dose_mu)
        b.set("dose_preset_readback", m.dose_preset_mu)
        b.set_raw("gate_command", int(m.gate_command))
        b.set("dose_preset", m.dose_preset_mu)

    def apply(self, name: str, value: float, t: float) -> None:
        m = self.model
        if name == "gate_command":
            m.command_gate(value >= 0.5)
        elif name == "heartbeat":
            m.write_heartbeat(round(value))
        elif name == "dose_preset":
            m.load_dose_preset(value)
        elif name == "fault_reset":
            if value >= 0.5:
                m.reset_faults()
        elif name == "watchdog_timeout_ms":
            m.watchdog_timeout_s = value / 1000


class ImagingInterface(DeviceInterface):
    IDENTITY = 0x5849  # 'XI'
    FIRMWARE_VERSION = 102
    RANGES: ClassVar[Mapping[str, tuple[float, float]]] = {
        "prepare_command": FLAG,
        "expose_command": FLAG,
        "fault_reset": FLAG,
        "watchdog_timeout_ms": WATCHDOG_MS,
        "heartbeat": (0.0, 65535.0),
        "frame_rate_fps": (1.0, 30.0),
        "kv": (40.0, 150.0),
        "ma": (0.1, 1000.0),
        "pulse_width_ms": (0.1, 100.0),
    }

    model: ImagingModel

    def __init__(self, model: ImagingModel, regmap: RegisterMapFile, clock: Clock) -> None:
        super().__init__(model, regmap, clock)

    def refresh_device(self) -> None:
        m, b = self.model, self.bank
        b.set_bits("status", {"prepared": m.prepared, "exposing": m.exposing})
        b.set_raw("frame_counter", m.frame.counter)
        b.set_raw("frame_timestamp_ms", m.frame.timestamp_ms)
        b.set_raw("device_clock_ms", m.device_clock_ms)
        b.set("target_x", m.frame.tracked[0])
        b.set("target_y", m.frame.tracked[1])
        b.set("target_z", m.frame.tracked[2])
        b.set("tracking_confidence", m.frame.confidence)
        b.set("cumulative_mas", m.cumulative_mas)
        b.set_raw("prepare_command", int(m.prepare_command))
        b.set_raw("expose_command", int(m.expose_command))
        b.set("frame_rate_fps", m.frame_rate_fps)
        b.set("kv", m.kv)
        b.set("ma", m.ma)
        b.set("pulse_width_ms", m.pulse_width_ms)

    def apply(self, name: str, value: float, t: float) -> None:
        m = self.model
        if name == "prepare_command":
            m.command_prepare(value >= 0.5)
        elif name == "expose_command":
            m.command_expose(value >= 0.5)
        elif name == "heartbeat":
            m.write_heartbeat(round(value))
        elif name == "fault_reset":
            if value >= 0.5:
                m.reset_faults()
        elif name == "watchdog_timeout_ms":
            m.watchdog_timeout_s = value / 1000
        elif name in ("frame_rate_fps", "kv", "ma", "pulse_width_ms"):
            setattr(m, name, value)
