"""Modbus framing, pure: bytes in, bytes or values out. No I/O, no asyncio, no clock.

What the client side of syncctl needs and nothing more:

- **Requests** (:func:`read_request`, :func:`write_request`): the PDU of a read (function
  codes 1-4) or a write (5, 6, 15, 16), checked against the protocol's limits.
- **Framing**: :func:`rtu_frame` (unit + PDU + CRC-16, low byte first) and :func:`mbap_frame`
  (the 7-byte MBAP header with a transaction id).
- **Answers**, taken from a receive buffer as bytes arrive:

  - :class:`Rtu`: an answer's size follows from its function code (and byte count), so a
    frame is recognised without timing; a bad CRC, or a function code no answer can carry,
    is ``corrupt``.
  - :class:`Mbap`: frames are taken by the header's length field; a frame whose transaction
    id is not in flight is a *stray* (the caller discards it).

- **Judging an intact answer** against its request (:func:`check_answer`): an exception
  answer raises :class:`ExceptionAnswer`; an answer that is damaged inside (a byte count that
  disagrees with the frame's size) is ``corrupt``; an intact answer that does not answer the
  request (another unit, function, address, count or byte count) is ``malformed``. Then
  :func:`answer_values` gives the words or bits (bits come padded to whole bytes: the first
  ``count`` are taken) and :func:`single_write_echo` the value a single write's answer echoes.

Errors are :class:`WireError` with a ``kind``: the caller decides what each costs (see
``syncctl.devices.modbus``). Nothing here returns a value from a frame that failed a check.
"""

from __future__ import annotations

import struct
from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Final, Literal

READ_FUNCTIONS: Final = frozenset({1, 2, 3, 4})
BIT_READS: Final = frozenset({1, 2})
WRITE_FUNCTIONS: Final = frozenset({5, 6, 15, 16})
MAX_COUNT: Final = {1: 2000, 2: 2000, 3: 125, 4: 125, 15: 1968, 16: 123}
"""The protocol's limits on the number of values per request."""
EXCEPTION_FLAG: Final = 0x80
COIL_ON: Final = 0xFF00
MBAP_HEADER: Final = 7
MBAP_MAX_LENGTH: Final = 254
"""The largest MBAP length field: unit id + a PDU of at most 253 bytes."""
RTU_MIN_ANSWER: Final = 5


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


CRC_TABLE: Final = _crc_table()


def crc16(data: bytes | bytearray | memoryview) -> int:
    """Modbus CRC-16 (reflected polynomial 0xA001, initial 0xFFFF); on the wire it goes low
    byte first: ``crc16(x).to_bytes(2, "little")``."""
    crc = 0xFFFF
    table = CRC_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


# -- errors -------------------------------------------------------------------------------

WireErrorKind = Literal["corrupt", "malformed"]


class WireError(Exception):
    """An answer that cannot be used. ``kind``:

    - ``corrupt``: damaged bytes (a bad CRC, a function code no answer can carry, a byte count
      that disagrees with the frame, a truncated frame); nothing in it can be trusted;
    - ``malformed``: an intact frame that does not answer the request (another unit,
      function, address, count or byte count)."""

    def __init__(self, kind: WireErrorKind, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind: WireErrorKind = kind
        self.detail = detail


class ExceptionAnswer(Exception):
    """The device answered the request with a Modbus exception code."""

    def __init__(self, function: int, code: int) -> None:
        super().__init__(f"exception code {code} to function {function}")
        self.function = function
        self.code = code


# -- requests -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One request's PDU and what its answer must match."""

    function: int
    address: int
    count: int
    values: tuple[int, ...]
    """For a write: the values written (0/1 for coils); empty for a read."""
    pdu: bytes

    @property
    def expected_byte_count(self) -> int:
        """A read answer's byte count."""
        return (self.count + 7) // 8 if self.function in BIT_READS else 2 * self.count


def _check_span(function: int, address: int, count: int) -> None:
    if not 0 <= address <= 0xFFFF:
        raise ValueError(f"address {address} outside 0..65535")
    limit = MAX_COUNT.get(function, 1)
    if not 1 <= count <= limit:
        raise ValueError(f"function {function}: {count} values, allowed 1..{limit}")
    if address + count > 0x10000:
        raise ValueError(f"addresses {address}..{address + count - 1} beyond 65535")


def read_request(function: int, address: int, count: int) -> Request:
    """A read of ``count`` coils (1), discrete inputs (2), holding (3) or input (4)
    registers. ``ValueError`` if the request cannot be sent."""
    if function not in READ_FUNCTIONS:
        raise ValueError(f"not a read function code: {function}")
    _check_span(function, address, count)
    return Request(function, address, count, (), struct.pack(">BHH", function, address, count))


def write_request(function: int, address: int, values: Sequence[int]) -> Request:
    """A write: single coil (5), single register (6), multiple coils (15) or multiple
    registers (16). Coil values are taken as truth values. ``ValueError`` if the request
    cannot be sent."""
    vals = tuple(int(v) for v in values)
    if function in (5, 6) and len(vals) != 1:
        raise ValueError(f"function {function} writes one value, not {len(vals)}")
    if function not in WRITE_FUNCTIONS:
        raise ValueError(f"not a write function code: {function}")
    _check_span(function, address, len(vals))
    if function in (5, 15):
        vals = tuple(int(bool(v)) for v in vals)
    elif not all(0 <= v <= 0xFFFF for v in vals):
        raise ValueError(f"register values outside 0..65535: {list(vals)}")
    if function == 5:
        pdu = struct.pack(">BHH", 5, address, COIL_ON if vals[0] else 0)
    elif function == 6:
        pdu = struct.pack(">BHH", 6, address, vals[0])
    elif function == 15:
        packed = pack_bits(vals)
        pdu = struct.pack(">BHHB", 15, address, len(vals), len(packed)) + packed
    else:
        pdu = (struct.pack(">BHHB", 16, address, len(vals), 2 * len(vals))
               + struct.pack(f">{len(vals)}H", *vals))
    return Request(function, address, len(vals), vals, pdu)


def pack_bits(bits: Sequence[int]) -> bytes:
    """Bits, first one in the lowest bit of the first byte, padded with zeros."""
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


def unpack_bits(data: bytes | bytearray | memoryview, count: int) -> list[int]:
    return [(data[i >> 3] >> (i & 7)) & 1 for i in range(count)]


# -- framing ------------------------------------------------------------------------------


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    body = bytes([unit]) + pdu
    return body + crc16(body).to_bytes(2, "little")


def mbap_frame(transaction_id: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", transaction_id & 0xFFFF, 0, len(pdu) + 1, unit) + pdu


@dataclass(frozen=True, slots=True)
class Frame:
    """An answer taken whole off the wire (for RTU, with a right CRC)."""

    unit: int
    pdu: bytes
    transaction_id: int | None = None
    """MBAP only."""


class Rtu:
    """Takes RTU answers from the front of a receive buffer."""

    @staticmethod
    def frame_size(buffer: bytes | bytearray) -> int | None:
        """The size of the answer starting at ``buffer[0]``, or None while too few bytes have
        arrived to know it. ``WireError("corrupt")`` when the function code is one no answer
        to our requests can carry (the frame's end cannot be found: bytes to discard)."""
        if len(buffer) < 2:
            return None
        function = buffer[1]
        if function & EXCEPTION_FLAG:
            return RTU_MIN_ANSWER  # unit, function | 0x80, code, CRC
        if function in READ_FUNCTIONS:
            if len(buffer) < 3:
                return None
            return RTU_MIN_ANSWER + buffer[2]  # unit, function, byte count, data, CRC
        if function in WRITE_FUNCTIONS:
            return 8  # unit, function, address, value or count, CRC
        raise WireError("corrupt", f"function code {function} cannot start an answer")

    @classmethod
    def parse(cls, buffer: bytes | bytearray) -> tuple[Frame, int] | None:
        """The first frame of ``buffer`` and its size, or None while it is incomplete.
        ``WireError("corrupt")`` on a bad CRC or an impossible function code."""
        size = cls.frame_size(buffer)
        if size is None or len(buffer) < size:
            return None
        body = memoryview(buffer)[:size - 2]
        try:
            received = buffer[size - 2] | buffer[size - 1] << 8
            if crc16(body) != received:
                raise WireError("corrupt", f"bad CRC in a {size}-byte frame")
            return Frame(buffer[0], bytes(body[1:])), size
        finally:
            body.release()


@dataclass(frozen=True, slots=True)
class Stray:
    """A whole MBAP frame whose transaction id is not in flight."""

    transaction_id: int


class Mbap:
    """Takes MBAP frames from the front of a receive buffer, by their length field."""

    @staticmethod
    def parse(buffer: bytes | bytearray, in_flight: Container[int]
              ) -> tuple[Frame | Stray, int] | None:
        """The first frame (or a :class:`Stray`) and its size, or None while incomplete.
        ``WireError("corrupt")`` when the header cannot be one (protocol id not 0, length out
        of range): the stream is out of step and only closing the connection resynchronises
        it."""
        if len(buffer) < MBAP_HEADER:
            return None
        tid, protocol, length, unit = struct.unpack_from(">HHHB", buffer)
        if protocol != 0 or not 2 <= length <= MBAP_MAX_LENGTH:
            raise WireError("corrupt", f"MBAP header with protocol {protocol}, length {length}")
        size = MBAP_HEADER - 1 + length
        if len(buffer) < size:
            return None
        if tid not in in_flight:
            return Stray(tid), size
        return Frame(unit, bytes(buffer[MBAP_HEADER:size]), tid), size


# -- answers ------------------------------------------------------------------------------


def check_answer(request: Request, unit: int, frame: Frame) -> None:
    """Whether an intact frame answers ``request`` sent to ``unit``: returns, or raises
    :class:`ExceptionAnswer` or :class:`WireError`."""
    pdu = frame.pdu
    if not pdu:
        raise WireError("corrupt", "empty PDU")
    function = pdu[0]
    if frame.unit != unit:
        raise WireError("malformed", f"answer from unit {frame.unit}, asked unit {unit}")
    if function == request.function | EXCEPTION_FLAG:
        if len(pdu) != 2:
            raise WireError("corrupt", f"exception answer of {len(pdu)} bytes")
        raise ExceptionAnswer(request.function, pdu[1])
    if function != request.function:
        raise WireError("malformed", f"answer has function code {function}")
    if function in READ_FUNCTIONS:
        if len(pdu) < 2 or len(pdu) != 2 + pdu[1]:
            raise WireError("corrupt", f"byte count {pdu[1] if len(pdu) > 1 else '-'} in a "
                                       f"PDU of {len(pdu)} bytes")
        byte_count = pdu[1]
        if byte_count != request.expected_byte_count:
            if function in BIT_READS:
                raise WireError("malformed", f"{byte_count} byte(s) for {request.count} bits")
            if byte_count % 2:
                raise WireError("malformed", f"odd byte count {byte_count} for registers")
            raise WireError("malformed",
                            f"wrong word count: {byte_count // 2} for {request.count}")
        return
    if len(pdu) != 5:
        raise WireError("corrupt", f"write answer of {len(pdu)} bytes")
    address, value = struct.unpack_from(">HH", pdu, 1)
    if address != request.address:
        raise WireError("malformed", f"acknowledges address {address}, "
                                     f"wrote {request.address}")
    if function in (15, 16) and value != request.count:
        raise WireError("malformed", f"acknowledged {value} value(s) for {request.count}")
    if function == 5 and value not in (0, COIL_ON):
        raise WireError("malformed", f"coil echo 0x{value:04X}")


def answer_values(request: Request, pdu: bytes) -> list[int]:
    """The words (0..65535) or bits (0/1) a read answer carries: exactly ``request.count``.
    The answer must have passed :func:`check_answer`; checked again here, cheaply."""
    if (request.function not in READ_FUNCTIONS or len(pdu) < 2 or pdu[0] != request.function
            or pdu[1] != request.expected_byte_count or len(pdu) != 2 + pdu[1]):
        raise WireError("malformed", "not an answer to this read")
    if request.function in BIT_READS:
        return unpack_bits(memoryview(pdu)[2:], request.count)
    return list(struct.unpack_from(f">{request.count}H", pdu, 2))


def single_write_echo(request: Request, pdu: bytes) -> int:
    """The value a single write's answer (function 5 or 6) echoes: the word, or 0/1 for a
    coil. The answer must have passed :func:`check_answer`."""
    if request.function not in (5, 6) or len(pdu) != 5 or pdu[0] != request.function:
        raise WireError("malformed", "not an answer to this single write")
    value = int.from_bytes(pdu[3:5], "big")
    if request.function == 5:
        return 1 if value == COIL_ON else 0
    return value
