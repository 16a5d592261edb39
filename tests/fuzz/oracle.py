"""An independent decoder of register words (``struct``, not ``syncctl.config``'s codec), an
independent reader of Modbus answer frames (not ``syncctl.devices.wire``), and a fake register
backend, shared by the Modbus fuzz targets.

The oracle knows the register types and the two device statuses field by field; it answers
what a status read *must* decode to, or None when the words cannot be a valid answer (wrong
count, a word outside 16 bits, a flag other than 0/1, a bool register other than 0/1).
:func:`read_answer_words` says which words an answer frame on the wire carries for a read
request, or None when it is not the right answer to it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from syncctl.config import RegisterDef, RegisterMapFile
from syncctl.core import BeamGateStatus, ImagingStatus, Position
from syncctl.devices import LinkError, ReadBlock

FORMAT = {"uint16": ">H", "int16": ">h", "bitfield": ">H", "bool": ">H",
          "uint32": ">I", "int32": ">i"}


def raw_value(type_: str, words: Sequence[int], word_order: str) -> int | None:
    """The integer a register of ``type_`` holds in ``words``, or None if they are not one."""
    width = 2 if type_ in ("uint32", "int32") else 1
    if len(words) != width:
        return None
    if not all(isinstance(w, int) and 0 <= w <= 0xFFFF for w in words):
        return None
    ordered = list(words) if word_order == "big" else list(reversed(words))
    value = int(struct.unpack(FORMAT[type_], b"".join(struct.pack(">H", w) for w in ordered))[0])
    if type_ == "bool" and value not in (0, 1):
        return None
    return value


def crc16_bitwise(data: bytes) -> bytes:
    """Modbus CRC-16 (poly 0xA001, init 0xFFFF), bit by bit, low byte first: written here, not
    taken from the client's table-driven one."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return bytes([crc & 0xFF, crc >> 8])


def mbap_frame_with(stream: bytes, tid: int) -> bytes | None:
    """The first whole MBAP frame of ``stream`` with transaction id ``tid``, skipping whole
    frames with other ids; None if there is none or the stream is out of step first."""
    for _ in range(len(stream)):
        if len(stream) < 7 or stream[2:4] != b"\0\0":
            return None
        size = 6 + int.from_bytes(stream[4:6], "big")
        if size < 8 or len(stream) < size:
            return None
        if int.from_bytes(stream[:2], "big") == tid:
            return stream[:size]
        stream = stream[size:]
    return None


def read_answer_words(answer: bytes, request: bytes, rtu: bool) -> list[int] | None:
    """The values (words, or 0/1 bits) that ``answer`` carries if it is a right answer to the
    read ``request`` (both whole frames as on the wire, RTU or MBAP); None otherwise. An RTU
    answer may be followed by other bytes; an MBAP one must have the request's transaction
    id."""
    if rtu:
        unit, function, _, count = struct.unpack(">BBHH", request[:6])
        head = 0
    else:
        tid, _, _, unit, function, _, count = struct.unpack(">HHHBBHH", request[:12])
        found = mbap_frame_with(answer, tid)
        if found is None:
            return None
        answer, head = found, 6
    bits = function in (1, 2)
    size = (count + 7) // 8 if bits else 2 * count
    body = answer[head:head + 3 + size]
    if len(body) != 3 + size or body[0] != unit or body[1] != function or body[2] != size:
        return None
    if rtu and answer[3 + size:5 + size] != crc16_bitwise(body):
        return None
    if not rtu and len(answer) != head + 3 + size:
        return None
    data = body[3:]
    if bits:
        return [data[i // 8] >> (i % 8) & 1 for i in range(count)]
    return [int.from_bytes(data[i:i + 2], "big") for i in range(0, size, 2)]


class Words:
    """The words of one status read, located by signal name through the map."""

    def __init__(self, regmap: RegisterMapFile, blocks: Sequence[ReadBlock],
                 answers: Sequence[Sequence[int]]) -> None:
        self.regmap = regmap
        self.ok = len(blocks) == len(answers) and all(
            len(a) == b.count for a, b in zip(answers, blocks, strict=False))
        self._at: dict[tuple[str, int], int] = {}
        if self.ok:
            for block, words in zip(blocks, answers, strict=True):
                for i, w in enumerate(words):
                    self._at[(block.table, block.address + i)] = w

    def reg(self, name: str) -> RegisterDef:
        return self.regmap.registers[name]

    def raw(self, name: str) -> int | None:
        reg = self.reg(name)
        width = 2 if reg.type in ("uint32", "int32") else 1
        words = [self._at[(reg.table, reg.address + i)] for i in range(width)]
        return raw_value(reg.type, words, self.regmap.word_order)

    def number(self, name: str) -> float | None:
        raw = self.raw(name)
        return None if raw is None else raw * self.reg(name).scale

    def flag(self, name: str) -> bool | None:
        raw = self.raw(name)
        return None if raw not in (0, 1) else raw == 1

    def bit(self, name: str, bit: str) -> bool | None:
        raw = self.raw(name)
        return None if raw is None else bool(raw >> (self.reg(name).bits or {})[bit] & 1)


def beam_gate_oracle(w: Words) -> BeamGateStatus | None:
    if not w.ok:
        return None
    bits = {b: w.bit("status", b) for b in (
        "ready", "spill_active", "chain_ok", "door_closed", "estop_released",
        "watchdog_tripped")}
    fields = (w.flag("gate_readback"), w.number("dose_delivered"), w.raw("fault_code"),
              w.raw("heartbeat_echo"), w.number("dose_preset_readback"), *bits.values())
    if any(f is None for f in fields):
        return None
    gate, dose, fault, echo, preset = fields[:5]
    assert isinstance(gate, bool) and dose is not None and preset is not None
    assert isinstance(fault, int) and isinstance(echo, int)
    return BeamGateStatus(
        gate_open_readback=gate, ready=bool(bits["ready"]),
        spill_active=bool(bits["spill_active"]), chain_ok=bool(bits["chain_ok"]),
        door_closed=bool(bits["door_closed"]), estop_released=bool(bits["estop_released"]),
        watchdog_tripped=bool(bits["watchdog_tripped"]), dose_delivered_mu=dose,
        dose_preset_mu=preset, fault_code=fault, heartbeat_echo=echo)


def imaging_oracle(w: Words) -> ImagingStatus | None:
    if not w.ok:
        return None
    ints = {n: w.raw(n) for n in ("frame_counter", "frame_timestamp_ms", "device_clock_ms",
                                  "fault_code", "heartbeat_echo")}
    nums = {n: w.number(n) for n in ("target_x", "target_y", "target_z", "tracking_confidence",
                                     "cumulative_mas")}
    prepared, exposing = w.bit("status", "prepared"), w.bit("status", "exposing")
    if None in ints.values() or None in nums.values() or prepared is None or exposing is None:
        return None
    i = {k: int(v) for k, v in ints.items() if v is not None}
    n = {k: float(v) for k, v in nums.items() if v is not None}
    return ImagingStatus(
        prepared=prepared, exposing=exposing, frame_counter=i["frame_counter"],
        frame_timestamp_ms=i["frame_timestamp_ms"], device_clock_ms=i["device_clock_ms"],
        target=Position(n["target_x"], n["target_y"], n["target_z"]),
        tracking_confidence=n["tracking_confidence"], cumulative_mas=n["cumulative_mas"],
        fault_code=i["fault_code"], heartbeat_echo=i["heartbeat_echo"])


class FakeBackend:
    """A ``RegisterBackend`` over an in-memory register image. Writes are stored (so settings
    read back equal); ``answer`` replaces the words of the next read of the status block, or
    raises a LinkError in its place (dropping the link for every kind but ``exception`` and
    ``corrupt``, as ``ModbusLink`` does)."""

    def __init__(self, status_block: ReadBlock) -> None:
        self.stats: dict[str, int] = {"transactions": 0, "failures": 0}
        self.tables: dict[str, dict[int, int]] = {
            "holding": {}, "input": {}, "coil": {}, "discrete": {}}
        self.status_block = status_block
        self.answer: list[int] | LinkError | tuple[int, int] | None = None
        """The next status read's answer: words, a failure, or (index, word) to replace one
        word of what the device holds."""
        self.served: list[int] | LinkError | None = None
        """What the last status read answered."""
        self._connected = True
        self._session = 1

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def session(self) -> int:
        return self._session

    @property
    def last_error(self) -> str:
        return ""

    def describe(self) -> str:
        return "fake"

    async def connect(self) -> bool:
        if not self._connected:
            self._connected = True
            self._session += 1
        return True

    def mark_good(self) -> None:
        pass

    def drop(self, reason: str) -> None:
        self._connected = False

    async def read(self, table: str, address: int, count: int) -> list[int]:
        self.stats["transactions"] += 1
        if not self._connected:
            raise LinkError("disconnected", "not connected")
        block = self.status_block
        if (table, address, count) == (block.table, block.address, block.count):
            answer, self.answer = self.answer, None
            if isinstance(answer, LinkError):
                self.served = answer
                self.stats["failures"] += 1
                if answer.kind not in ("exception", "corrupt"):
                    self.drop(str(answer))
                raise answer
            if isinstance(answer, tuple):
                words = self.true_words()
                words[answer[0]] = answer[1]
                answer = words
            self.served = list(answer) if answer is not None else self.true_words()
            return list(self.served)
        image = self.tables[table]
        return [image.get(a, 0) for a in range(address, address + count)]

    async def write(self, table: str, address: int, words: Sequence[int]) -> None:
        self.stats["transactions"] += 1
        if not self._connected:
            raise LinkError("disconnected", "not connected")
        for i, w in enumerate(words):
            self.tables[table][address + i] = w

    async def close(self) -> None:
        self._connected = False

    def true_words(self) -> list[int]:
        """What the device really holds in the status block."""
        block = self.status_block
        image = self.tables[block.table]
        return [image.get(a, 0) for a in range(block.address, block.address + block.count)]
