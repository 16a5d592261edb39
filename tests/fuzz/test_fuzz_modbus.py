"""Fuzzing the device layer's decoding of Modbus answers, from bytes to the beam permit.

Targets (docs/fuzzing.md):

1. ``codec``: ``syncctl.config.decode_raw`` / ``decode`` / ``decode_bits`` on any register
   definition and any list of integers: only ``CodecError``, and otherwise exactly what an
   independent ``struct`` decoder says (tests/fuzz/oracle.py).
2. ``decode_status``: a status read (``ReadPlan.values`` + ``beam_gate_status`` /
   ``imaging_status``) fed arbitrary words per block, wrong counts included: only
   ``DeviceDataError``, and a status only when the oracle finds the words valid, equal to it.
3. ``link_pdu``: the real ``ModbusLink.read``/``write`` (its RTU and its MBAP path) over a
   scripted line that answers each request with the right frame or a mutation of it (function
   code, a byte, shorter, longer, another unit, a bad CRC, a wrong MBAP length or transaction
   id, garbage before it), an exception answer, arbitrary bytes, silence or a lost line, in
   pieces: only ``LinkError``; no hang; a read returns exactly ``count`` 16-bit words (0/1 for
   bits), and only those of a frame an independent reader (tests/fuzz/oracle.py) finds to be
   the right answer; a read is asked again only after damaged bytes, a write never; the link
   is dropped on a malformed answer, a timeout or a lost line, and kept otherwise.
4. ``framer``: our parsers (``syncctl.devices.wire.Rtu`` / ``Mbap``) on arbitrary bytes and
   frames amid garbage: only ``WireError``; a frame is taken only with its CRC (checked by an
   independent CRC), the same from every longer prefix and from no shorter one; values only
   when the frame answers the request, equal to what the independent reader finds.
5. ``core_e2e``: the real ``BeamGateClient``/``ImagingClient`` over an in-memory register image
   of a plausible room, driven by the pure core into TREATING with the gate open; then status
   answers are replaced by fuzzed ones. No permit is ever granted from a malformed answer;
   a granted permit has two healthy readings whose every value is in range.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias
from unittest import mock

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from syncctl.config import (
    CodecError,
    RegisterDef,
    decode,
    decode_bits,
    decode_raw,
    encode,
    encode_bits,
    encode_raw,
    load_room,
)
from syncctl.config.registers import RAW_RANGE
from syncctl.config.room import ModbusRtu, ModbusTcp
from syncctl.core import (
    BeamGateStatus,
    Command,
    CommandKind,
    ImagingStatus,
    Mode,
    Plan,
    Snapshot,
    WindowBox,
    WindowSphere,
    step,
)
from syncctl.core.state import CoreState
from syncctl.devices import (
    BeamGateClient,
    DeviceDataError,
    ImagingClient,
    LinkError,
    ModbusLink,
    beam_gate_status,
    imaging_status,
    modbus,
)
from syncctl.devices.modbus import READ_FUNCTION
from syncctl.devices.signals import SignalDevice
from syncctl.devices.wire import (
    ExceptionAnswer,
    Frame,
    Mbap,
    Request,
    Rtu,
    Stray,
    WireError,
    answer_values,
    check_answer,
    mbap_frame,
    read_request,
    rtu_frame,
)
from tests.fuzz.oracle import (
    FakeBackend,
    Words,
    beam_gate_oracle,
    crc16_bitwise,
    imaging_oracle,
    mbap_frame_with,
    raw_value,
    read_answer_words,
)
from tests.fuzz.profiles import fuzz
from tests.property.invariants import bad_values
from tests.property.strategies import CENTRE, World, WorldConfig

ROOT = Path(__file__).resolve().parents[2]
ROOM = load_room(ROOT / "configs" / "room-sim.yaml")

# -- strategies ---------------------------------------------------------------------------

WORD_EDGES = (0, 1, 2, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)
words_16 = st.one_of(st.integers(0, 0xFFFF), st.sampled_from(WORD_EDGES))
"""A word as it comes off the wire."""
any_words = st.one_of(words_16, st.integers(-(2**33), 2**33), st.sampled_from((-1, 0x10000)))
"""A word as a buggy backend might hand it over: negative and over 16 bits too."""


@st.composite
def register_defs(draw: st.DrawFn) -> RegisterDef:
    type_ = draw(st.sampled_from(sorted(RAW_RANGE)))
    bits = None
    if type_ == "bitfield":
        indices = draw(st.lists(st.integers(0, 15), min_size=1, max_size=16, unique=True))
        bits = {f"b{i}": i for i in indices}
    scale = draw(st.sampled_from((1.0, 0.1, 0.01, 0.001, 2.5, 1e-9, 1e6)))
    return RegisterDef(address=draw(st.integers(0, 0xFFFE)), table="input", type=type_,
                       bits=bits, scale=scale)


# -- 1. codec -----------------------------------------------------------------------------


@fuzz("codec")
@given(reg=register_defs(), words=st.lists(any_words, max_size=3),
       word_order=st.sampled_from(("big", "little")))
def test_codec_decodes_only_valid_words_and_agrees_with_struct(
        reg: RegisterDef, words: list[int], word_order: str) -> None:
    expected = raw_value(reg.type, words, word_order)
    try:
        raw = decode_raw(reg, words, word_order)
    except CodecError:
        assert expected is None, f"{reg.type} {words}: refused, but decodes to {expected}"
        return
    assert expected is not None, f"{reg.type} {words} ({word_order}) decoded to {raw}"
    assert raw == expected
    low, high = RAW_RANGE[reg.type]
    assert low <= raw <= high
    assert decode(reg, words, word_order) == raw * reg.scale
    assert encode_raw(reg, raw, word_order) == words, "encode is not the inverse of decode"
    if reg.type == "bitfield":
        flags = decode_bits(reg, words)
        assert flags == {n: bool(raw >> i & 1) for n, i in (reg.bits or {}).items()}
        named = dict(flags)
        assert decode_bits(reg, encode_bits(reg, named)) == flags


@fuzz("codec")
@given(reg=register_defs(), value=st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**40), 2**40)),
    word_order=st.sampled_from(("big", "little")))
def test_codec_encodes_in_range_or_refuses(reg: RegisterDef, value: float,
                                           word_order: str) -> None:
    try:
        words = encode(reg, value, word_order)
    except CodecError:
        return
    except OverflowError:  # pragma: no cover - reported by the assertion below
        pytest.fail(f"encode({reg.type}, {value!r}) raised OverflowError, not CodecError")
    assert all(0 <= w <= 0xFFFF for w in words)
    back = decode(reg, words, word_order)
    assert abs(back - value) <= reg.scale / 2 * (1 + 1e-9) + abs(value) * 1e-12


@pytest.mark.parametrize(("type_", "scale", "value"), [
    ("uint32", 1e-9, 1e300), ("uint16", 1e-320, 90.0), ("int32", 1e-300, -1e10)])
def test_finding_m1_a_value_too_big_for_the_scale_is_a_codec_error(
        type_: str, scale: float, value: float) -> None:
    """Found by test_codec_encodes_in_range_or_refuses (long run): ``encode`` divided by the
    scale and rounded; a quotient that overflows to infinity raised OverflowError, which no
    caller expects (the device clients catch ValueError). Now a CodecError."""
    reg = RegisterDef(address=0, table="holding", type=type_, scale=scale, access="rw")
    with pytest.raises(CodecError, match="does not fit"):
        encode(reg, value, "big")


# -- 2. status decoding -------------------------------------------------------------------

STATUS = {
    "beam-gate": (ROOM.beam_gate_map, ("gate_readback", "status", "dose_delivered",
                                       "fault_code", "heartbeat_echo", "dose_preset_readback"),
                  beam_gate_status, beam_gate_oracle),
    "xray-imaging": (ROOM.imaging_map, (
        "status", "frame_counter", "frame_timestamp_ms", "device_clock_ms", "target_x",
        "target_y", "target_z", "tracking_confidence", "cumulative_mas", "fault_code",
        "heartbeat_echo"), imaging_status, imaging_oracle),
}


def _status_plan(device: str) -> Any:
    from syncctl.devices import SignalMap

    regmap, names, _, _ = STATUS[device]
    return SignalMap(regmap).plan_reads(names)


@st.composite
def block_answers(draw: st.DrawFn, counts: tuple[int, ...]) -> list[list[int]]:
    """Per block: the right number of words (mostly), or a wrong number; values from the wire
    or beyond it."""
    answers: list[list[int]] = []
    blocks = draw(st.sampled_from((len(counts), len(counts), len(counts) - 1,
                                   len(counts) + 1)))
    for i in range(max(0, blocks)):
        count = counts[i] if i < len(counts) else 1
        size = draw(st.one_of(st.just(count), st.integers(0, count + 3)))
        element = draw(st.sampled_from((words_16, words_16, any_words)))
        answers.append(draw(st.lists(element, min_size=size, max_size=size)))
    return answers


@fuzz("decode_status")
@given(data=st.data(), device=st.sampled_from(sorted(STATUS)))
def test_status_decoding_refuses_malformed_words(data: st.DataObject, device: str) -> None:
    regmap, _, decode_status, oracle = STATUS[device]
    plan = _status_plan(device)
    answers = data.draw(block_answers(tuple(b.count for b in plan.blocks)))
    expected = oracle(Words(regmap, plan.blocks, answers))
    try:
        status = decode_status(plan.values(answers))
    except DeviceDataError:
        assert expected is None, f"refused valid words {answers}"
        return
    assert expected is not None, f"decoded malformed words {answers} into {status}"
    assert status == expected


# -- 3. ModbusLink against arbitrary answers on the wire --------------------------------------


class WireChannel(modbus._Channel):
    """Stands in for the socket or serial line under the real ``ModbusLink``: each request sent
    is answered by the next scripted answer (bytes built from the request, delivered in
    chunks), by silence, or by the line going away."""

    def __init__(self, stats: dict[str, int], script: list[AnswerSpec], rtu: bool) -> None:
        super().__init__(stats)
        self.script = script
        self.rtu = rtu
        self.exchanges: list[tuple[bytes, bytes | None]] = []
        """(request frame, answer bytes) in order."""

    def send(self, data: bytes) -> None:
        if self.lost is not None:
            raise ConnectionError(self.lost)
        spec = self.script.pop(0) if self.script else AnswerSpec("silence")
        if spec.kind == "lost":
            self.exchanges.append((data, None))
            self._loop.call_soon(self.connection_lost, "fuzz: line gone")
            return
        answer = spec.realise(data, self.rtu)
        self.exchanges.append((data, answer))
        if not answer:
            return
        cuts = sorted({c for c in spec.cuts if 0 < c < len(answer)})
        pieces = [answer[a:b] for a, b in zip([0, *cuts], [*cuts, len(answer)], strict=True)]
        for i, piece in enumerate(pieces):
            # Well inside the 2 ms silence that ends a frame.
            self._loop.call_later(0.0002 * i, self.received, piece)


FUNCTION_CODES = (1, 2, 3, 4, 5, 6, 15, 16, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x8F, 0x90)


@st.composite
def response_frames(draw: st.DrawFn) -> bytes:
    """A response PDU as bytes: a plausible function code with a byte count and words (the
    count and the words not necessarily agreeing), or arbitrary bytes."""
    kind = draw(st.sampled_from(("read", "write", "exception", "random")))
    fc = draw(st.one_of(st.sampled_from(FUNCTION_CODES), st.integers(0, 255)))
    if kind == "read":
        n = draw(st.integers(0, 20))
        body = b"".join(w.to_bytes(2, "big") for w in draw(st.lists(words_16, max_size=n)))
        count = draw(st.one_of(st.just(len(body)), st.integers(0, 255)))
        return bytes([fc, count]) + body
    if kind == "write":
        return bytes([fc]) + draw(st.binary(min_size=4, max_size=4))
    if kind == "exception":
        return bytes([fc | 0x80, draw(st.integers(0, 255))])
    return draw(st.binary(max_size=40))


WRITE_FC = {("holding", True): 6, ("holding", False): 16, ("coil", True): 5,
            ("coil", False): 15}


def _right_pdu(op: tuple[Any, ...], words: list[int]) -> bytes:
    """The PDU a correct device would answer ``op`` with (``words``: what a read returns)."""
    kind, table, address, arg = op
    if kind == "read":
        if table in ("coil", "discrete"):
            bits = [w & 1 for w in words[:arg]]
            packed = bytes(sum(b << i for i, b in enumerate(bits[k:k + 8]))
                           for k in range(0, len(bits), 8))
            return bytes([READ_FUNCTION[table], len(packed)]) + packed
        body = b"".join(w.to_bytes(2, "big") for w in words[:arg])
        return bytes([READ_FUNCTION[table], len(body)]) + body
    single = len(arg) == 1
    fc = WRITE_FC[(table, single)]
    if single:
        value = (0xFF00 if arg[0] else 0) if table == "coil" else arg[0]
        return bytes([fc]) + address.to_bytes(2, "big") + value.to_bytes(2, "big")
    return bytes([fc]) + address.to_bytes(2, "big") + len(arg).to_bytes(2, "big")


def _rtu_frame(unit: int, pdu: bytes, good_crc: bool = True) -> bytes:
    frame = bytes([unit]) + pdu
    crc = crc16_bitwise(frame)
    return frame + (crc if good_crc else bytes([crc[0] ^ 0xFF, crc[1]]))


def _mbap_frame(tid: int, unit: int, pdu: bytes, length: int | None = None) -> bytes:
    size = len(pdu) + 1 if length is None else length
    return tid.to_bytes(2, "big") + b"\0\0" + size.to_bytes(2, "big") + bytes([unit]) + pdu


@dataclasses.dataclass
class AnswerSpec:
    """How the device answers one request: ``kind`` and what it needs, made into bytes only
    when the request is known (the MBAP transaction id comes with it)."""

    kind: str
    pdu: bytes = b""
    """The PDU of the answer (right, mutated or random)."""
    extra: bytes = b""
    before: bytes = b""
    unit_delta: int = 0
    tid_delta: int = 0
    good_crc: bool = True
    length: int | None = None
    cuts: tuple[int, ...] = ()

    def realise(self, request: bytes, rtu: bool) -> bytes:
        if self.kind == "silence":
            return b""
        if rtu:
            unit = (request[0] + self.unit_delta) & 0xFF
            return self.before + _rtu_frame(unit, self.pdu, self.good_crc) + self.extra
        tid = (int.from_bytes(request[:2], "big") + self.tid_delta) & 0xFFFF
        unit = (request[6] + self.unit_delta) & 0xFF
        frame = _mbap_frame(tid, unit, self.pdu, self.length)
        if self.kind == "stray_then_right":
            right = _mbap_frame(int.from_bytes(request[:2], "big"), request[6], self.extra)
            return frame + right
        return self.before + frame + self.extra


@st.composite
def answer_specs(draw: st.DrawFn, op: tuple[Any, ...]) -> AnswerSpec:
    """The right answer to ``op``, or one mutation of it (function code, a byte, shorter,
    longer, another unit, a bad CRC, another transaction id, garbage before it), an exception
    response, arbitrary response bytes, silence, or the line going away."""
    kind = draw(st.sampled_from((
        "right", "right", "right", "mutated", "mutated", "mutated", "bad_crc", "unit",
        "other_request", "exception", "random", "noise", "silence", "lost",
        "stray_then_right")))
    cuts = tuple(draw(st.lists(st.integers(1, 60), max_size=3)))
    words = draw(st.lists(words_16, min_size=25, max_size=25))
    pdu = _right_pdu(op, words)
    if kind in ("silence", "lost"):
        return AnswerSpec(kind)
    if kind == "mutated":
        how = draw(st.sampled_from(("fc", "byte", "shorter", "longer", "length", "before")))
        if how == "fc":
            pdu = bytes([draw(st.sampled_from(FUNCTION_CODES))]) + pdu[1:]
        elif how == "byte":
            at = draw(st.integers(1, len(pdu) - 1))
            pdu = pdu[:at] + bytes([draw(st.integers(0, 255))]) + pdu[at + 1:]
        elif how == "shorter":
            pdu = pdu[:draw(st.integers(1, len(pdu) - 1))]
        elif how == "longer":
            return AnswerSpec(kind, pdu, extra=draw(st.binary(min_size=1, max_size=6)),
                              cuts=cuts)
        elif how == "length":
            return AnswerSpec(kind, pdu, length=draw(st.integers(0, 0xFFFF)), cuts=cuts)
        else:
            return AnswerSpec(kind, pdu, before=draw(st.binary(min_size=1, max_size=6)),
                              cuts=cuts)
        return AnswerSpec(kind, pdu, cuts=cuts)
    if kind == "bad_crc":
        return AnswerSpec(kind, pdu, good_crc=False, cuts=cuts)
    if kind == "other_request":
        # The intact, right answer to another request: another count, address or table.
        other = list(op)
        if op[0] == "read":
            other[3] = draw(st.integers(1, 25).filter(lambda n: n != op[3]))
            if draw(st.booleans()):
                other[1] = draw(st.sampled_from(sorted(READ_FUNCTION)))
        else:
            other[2] = draw(st.integers(0, 20))
            other[3] = draw(st.lists(st.integers(0, 1) if op[1] == "coil" else words_16,
                                     min_size=1, max_size=4))
        return AnswerSpec(kind, _right_pdu(tuple(other), words), cuts=cuts)
    if kind == "unit":
        return AnswerSpec(kind, pdu, unit_delta=draw(st.integers(1, 255)), cuts=cuts)
    if kind == "exception":
        return AnswerSpec(kind, bytes([pdu[0] | 0x80, draw(st.integers(0, 255))]), cuts=cuts)
    if kind == "random":
        return AnswerSpec(kind, draw(response_frames()), cuts=cuts)
    if kind == "noise":
        return AnswerSpec(kind, b"", before=draw(st.binary(min_size=1, max_size=60)),
                          good_crc=draw(st.booleans()), cuts=cuts)
    if kind == "stray_then_right":
        return AnswerSpec(kind, draw(response_frames()), extra=pdu,
                          tid_delta=draw(st.integers(1, 0xFFFF)), cuts=cuts)
    return AnswerSpec(kind, pdu, cuts=cuts)


TRANSPORTS = {
    "rtu": ModbusRtu(kind="modbus-rtu", port="/nonexistent/fuzz", unit=2),
    "tcp": ModbusTcp(kind="modbus-tcp", host="127.0.0.1", port=1, unit=2),
}
LINK_TIMEOUT_S = 0.02


async def _link_call(script: list[AnswerSpec], op: tuple[Any, ...], transport: str
                     ) -> tuple[ModbusLink, WireChannel, list[int] | LinkError | None, bool]:
    """One transaction of the real link over a scripted line; also whether the link was
    still connected afterwards."""
    link = ModbusLink(TRANSPORTS[transport], timeout_s=LINK_TIMEOUT_S)
    channel = WireChannel(link.stats, script, rtu=transport == "rtu")

    async def open_fake() -> WireChannel:
        return channel

    with mock.patch.object(link, "_open", open_fake):
        assert await link.connect()
    result: list[int] | LinkError | None = None
    try:
        if op[0] == "read":
            result = await link.read(op[1], op[2], op[3])
        else:
            await link.write(op[1], op[2], op[3])
    except LinkError as exc:
        result = exc
    connected = link.connected
    await link.close()
    return link, channel, result, connected


@st.composite
def link_ops(draw: st.DrawFn) -> tuple[Any, ...]:
    if draw(st.booleans()):
        table = draw(st.sampled_from(("input", "holding", "coil", "discrete")))
        return "read", table, draw(st.integers(0, 20)), draw(st.integers(1, 20))
    table = draw(st.sampled_from(("holding", "coil")))
    values = draw(st.lists(st.integers(0, 1) if table == "coil" else words_16,
                           min_size=1, max_size=4))
    return "write", table, draw(st.integers(0, 20)), values


def _write_acknowledged(op: tuple[Any, ...], request: bytes, answer: bytes, rtu: bool) -> bool:
    """Independently: ``answer`` is the acknowledgement of the write ``op`` that echoes it."""
    pdu = _right_pdu(op, [])
    if rtu:
        expected = _rtu_frame(request[0], pdu)
        return answer[:len(expected)] == expected
    frame = mbap_frame_with(answer, int.from_bytes(request[:2], "big"))
    return frame == _mbap_frame(int.from_bytes(request[:2], "big"), request[6], pdu)


@fuzz("link_pdu")
@given(data=st.data(), op=link_ops(), transport=st.sampled_from(("rtu", "tcp")))
def test_link_raises_only_link_error_and_returns_only_the_right_answer(
        data: st.DataObject, op: tuple[Any, ...], transport: str) -> None:
    """The real ``ModbusLink`` (its RTU or MBAP path) over a scripted line: only LinkError;
    a read returns exactly ``count`` values, and only those of a frame that an independent
    reader (tests/fuzz/oracle.py) finds to be the right answer to the request sent last; the
    link is dropped on a timeout, a lost line or an intact answer that does not match, and
    kept on an exception answer, a refused write or a damaged answer."""
    script = [data.draw(answer_specs(op), label="answer"),
              data.draw(answer_specs(op), label="answer to the second asking")]
    rtu = transport == "rtu"
    link, channel, result, connected = asyncio.run(_link_call(script, op, transport))
    assert link.stats["transactions"] == 1
    dropping = isinstance(result, LinkError) and result.kind in ("timeout", "disconnected",
                                                                  "malformed")
    assert connected is not dropping, f"{result}: connected={connected}"
    assert link.stats["drops"] == int(dropping)
    asked = len(channel.exchanges)
    assert 1 <= asked <= 2
    if asked == 2:
        assert op[0] == "read", "a write was sent twice"
        assert link.stats["corrupt"] >= 1, "asked again without a damaged answer"
    request, answer = channel.exchanges[-1]
    if isinstance(result, LinkError):
        assert result.kind in ("timeout", "disconnected", "malformed", "exception", "refused",
                               "corrupt")
        assert link.stats["failures"] == 1
        event(f"{transport} {op[0]}: {result.kind}" + (" (asked again)" if asked == 2 else ""))
        if op[0] == "read":
            assert answer is None or read_answer_words(answer, request, rtu) is None, (
                f"refused the right answer {answer!r}: {result}")
        return
    assert link.stats["failures"] == 0
    assert answer is not None
    if op[0] == "read":
        _, table, _, count = op
        assert isinstance(result, list) and len(result) == count
        limit = 1 if table in ("coil", "discrete") else 0xFFFF
        assert all(isinstance(w, int) and 0 <= w <= limit for w in result)
        assert result == read_answer_words(answer, request, rtu), (
            f"accepted {answer!r} for {op}: {result}")
    else:
        assert _write_acknowledged(op, request, answer, rtu), f"accepted {answer!r} for {op}"
    event(f"{transport} {op[0]}: ok" + (" (asked again)" if asked == 2 else ""))


# -- 4. the parsers (syncctl.devices.wire) ---------------------------------------------------


@st.composite
def wire_bytes(draw: st.DrawFn, request: Request, unit: int, tid: int) -> bytes:
    """Arbitrary bytes, or a response frame (the right answer to ``request``, another one, a
    good or bad CRC, an MBAP header) among garbage."""
    shape = draw(st.sampled_from(("random", "rtu", "rtu_bad_crc", "mbap", "right_rtu",
                                  "right_mbap")))
    if shape == "random":
        return draw(st.binary(max_size=300))
    if shape.startswith("right"):
        # The right answer, or (one time in four) the right answer to another count.
        count = draw(st.sampled_from((request.count,) * 3 + (draw(st.integers(1, 25)),)))
        words = draw(st.lists(words_16, min_size=count, max_size=count))
        table = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}[request.function]
        pdu = _right_pdu(("read", table, request.address, count), words)
    else:
        pdu = draw(response_frames())
    exact = shape.startswith("right") and draw(st.sampled_from((True, True, True, False)))
    if exact:
        frame = (_mbap_frame(tid, unit, pdu) if shape == "right_mbap"
                 else _rtu_frame(unit, pdu))
        return frame + draw(st.binary(max_size=8))
    if shape in ("mbap", "right_mbap"):
        length = draw(st.one_of(st.just(len(pdu) + 1), st.integers(0, 0xFFFF)))
        frame = _mbap_frame(draw(st.one_of(st.just(tid), st.integers(0, 0xFFFF))),
                            draw(st.one_of(st.just(unit), st.integers(0, 255))), pdu, length)
    else:
        frame = _rtu_frame(draw(st.one_of(st.just(unit), st.integers(0, 255))), pdu,
                           shape != "rtu_bad_crc")
    before = draw(st.one_of(st.just(b""), st.binary(max_size=8)))
    after = draw(st.binary(max_size=8))
    return before + frame + after


@st.composite
def read_requests(draw: st.DrawFn) -> Request:
    return read_request(draw(st.sampled_from((1, 2, 3, 4))), draw(st.integers(0, 100)),
                        draw(st.integers(1, 20)))


def _values_or_refusal(request: Request, frame: Frame, unit: int) -> list[int] | None:
    try:
        check_answer(request, unit, frame)
    except (WireError, ExceptionAnswer):
        return None
    return answer_values(request, frame.pdu)


@fuzz("framer")
@given(draw=st.data(), unit=st.integers(0, 3), request=read_requests())
def test_rtu_parser_consumes_any_bytes(draw: st.DataObject, unit: int, request: Request
                                       ) -> None:
    """``Rtu.parse`` on any bytes: None (incomplete), WireError("corrupt"), or a frame whose
    CRC an independent CRC confirms; the same frame from any longer prefix and None from any
    shorter one (bytes arriving in pieces); values only when the frame answers the request, and
    then exactly the ones an independent reader finds."""
    data = draw.draw(wire_bytes(request, unit, 0), label="bytes")
    try:
        parsed = Rtu.parse(data)
    except WireError as exc:
        assert exc.kind == "corrupt"
        event("rtu: corrupt")
        return
    if parsed is None:
        event("rtu: incomplete")
        return
    frame, size = parsed
    assert 5 <= size <= len(data)
    assert crc16_bitwise(data[:size - 2]) == data[size - 2:size]
    assert (frame.unit, frame.pdu) == (data[0], data[1:size - 2])
    assert all(Rtu.parse(data[:k]) is None for k in range(size))
    assert Rtu.parse(data[:size]) == parsed
    values = _values_or_refusal(request, frame, unit)
    request_frame = rtu_frame(unit, request.pdu)
    assert values == read_answer_words(data, request_frame, rtu=True)
    event(f"rtu: frame, {'values' if values is not None else 'refused'}")


@fuzz("framer")
@given(draw=st.data(), unit=st.integers(0, 3), request=read_requests(),
       tid=st.integers(0, 0xFFFF))
def test_mbap_parser_consumes_any_bytes(draw: st.DataObject, unit: int, request: Request,
                                        tid: int) -> None:
    """``Mbap.parse``: None, WireError("corrupt") (the stream is out of step), a stray
    (another transaction id), or the frame its length field delimits; values only when it
    answers the request."""
    data = draw.draw(wire_bytes(request, unit, tid), label="bytes")
    try:
        taken = Mbap.parse(data, {tid})
    except WireError as exc:
        assert exc.kind == "corrupt"
        event("mbap: out of step")
        return
    if taken is None:
        assert len(data) < 7 or len(data) < 6 + int.from_bytes(data[4:6], "big")
        event("mbap: incomplete")
        return
    item, size = taken
    assert 8 <= size == 6 + int.from_bytes(data[4:6], "big") <= len(data)
    if isinstance(item, Stray):
        assert item.transaction_id == int.from_bytes(data[:2], "big") != tid
        event("mbap: stray")
        return
    assert item.transaction_id == tid and item.pdu == data[7:size]
    values = _values_or_refusal(request, item, unit)
    request_frame = mbap_frame(tid, unit, request.pdu)
    assert values == read_answer_words(data[:size], request_frame, rtu=False)
    event(f"mbap: frame, {'values' if values is not None else 'refused'}")


@fuzz("framer")
@given(unit=st.integers(1, 247), words=st.lists(words_16, min_size=1, max_size=40),
       good_crc=st.booleans())
def test_rtu_parser_takes_a_frame_only_with_its_crc(unit: int, words: list[int],
                                                    good_crc: bool) -> None:
    body = b"".join(w.to_bytes(2, "big") for w in words)
    frame = _rtu_frame(unit, bytes([4, len(body)]) + body, good_crc)
    request = read_request(4, 0, len(words))
    if good_crc:
        parsed = Rtu.parse(frame)
        assert parsed is not None and parsed[1] == len(frame)
        check_answer(request, unit, parsed[0])
        assert answer_values(request, parsed[0].pdu) == words
    else:
        with pytest.raises(WireError, match="CRC"):
            Rtu.parse(frame)


# -- 5. end to end: clients + pure core ------------------------------------------------------

PARAMS = dataclasses.replace(ROOM.to_core_params(), plans=(Plan("fuzz", 1000.0, CENTRE),))
DT = 0.01
WORLD = WorldConfig(breathing_amplitude_mm=0.0, dose_rate_mu_per_s=2.0, confidence=0.95)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _encode_status(client: SignalDevice[Any], status: BeamGateStatus | ImagingStatus,
                   backend: FakeBackend) -> None:
    """Write a status into the device's register image, field by field through its map."""
    regmap = client.signals
    if isinstance(status, BeamGateStatus):
        values: dict[str, float] = {
            "gate_readback": int(status.gate_open_readback),
            "dose_delivered": status.dose_delivered_mu, "fault_code": status.fault_code,
            "heartbeat_echo": status.heartbeat_echo,
            "dose_preset_readback": status.dose_preset_mu}
        bits = {"ready": status.ready, "spill_active": status.spill_active,
                "chain_ok": status.chain_ok, "door_closed": status.door_closed,
                "estop_released": status.estop_released,
                "watchdog_tripped": status.watchdog_tripped}
    else:
        values = {"frame_counter": status.frame_counter,
                  "frame_timestamp_ms": status.frame_timestamp_ms,
                  "device_clock_ms": status.device_clock_ms, "target_x": status.target.x_mm,
                  "target_y": status.target.y_mm, "target_z": status.target.z_mm,
                  "tracking_confidence": status.tracking_confidence,
                  "cumulative_mas": status.cumulative_mas, "fault_code": status.fault_code,
                  "heartbeat_echo": status.heartbeat_echo}
        bits = {"prepared": status.prepared, "exposing": status.exposing}
    image = backend.tables["input"]
    for name, value in values.items():
        sig = regmap[name]
        for i, w in enumerate(encode(sig.reg, value, sig.word_order)):
            image[sig.address + i] = w
    status_reg = regmap["status"].reg
    image[status_reg.address] = encode_bits(status_reg, bits)[0]


class Room:
    """Both real clients on fake backends, the world behind them, the core in front."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.world = World(WORLD)
        self.backends: dict[str, FakeBackend] = {}
        self.clients: dict[str, BeamGateClient | ImagingClient] = {}
        for name, cls in (("bg", BeamGateClient), ("xi", ImagingClient)):
            probe = cls(ROOM, self.clock, backend=FakeBackend(_dummy_block()))
            block = probe.transaction_plan[0]
            backend = FakeBackend(block)
            identity = probe.signals["identity"]
            backend.tables["input"][identity.address] = 0x4247 if name == "bg" else 0x5849
            self.backends[name] = backend
            self.clients[name] = cls(ROOM, self.clock, backend=backend)
        self.state = CoreState(params=PARAMS)
        self.outputs: Any = None
        self.snapshot: Snapshot | None = None

    async def tick(self, command: Command | None = None) -> None:
        self.clock.now += DT
        self.world.advance(DT)
        truth = self.world.snapshot(self.clock.now)
        assert truth.beam_gate.status is not None and truth.imaging.status is not None
        _encode_status(self.clients["bg"], truth.beam_gate.status, self.backends["bg"])
        _encode_status(self.clients["xi"], truth.imaging.status, self.backends["xi"])
        bg_client, xi_client = self.clients["bg"], self.clients["xi"]
        assert isinstance(bg_client, BeamGateClient) and isinstance(xi_client, ImagingClient)
        self.snapshot = Snapshot(beam_gate=await bg_client.poll(),
                                 imaging=await xi_client.poll())
        self.state, self.outputs = step(self.state, self.snapshot, command, self.clock.now)
        self.world.apply(self.outputs)

    async def treat(self) -> None:
        """Select, image, arm, beam on, as an operator would; the gate ends up open."""
        async def ticks(n: int, command: CommandKind | None = None) -> None:
            for i in range(n):
                cmd = Command(command, "fuzz", "fuzz") if command and i == 0 else None
                await self.tick(cmd)

        await ticks(2)
        await ticks(1, CommandKind.SELECT_PLAN)
        await ticks(12, CommandKind.START_IMAGING)
        await ticks(2, CommandKind.ARM)
        await ticks(6, CommandKind.BEAM_ON)
        assert self.state.mode is Mode.TREATING and self.outputs.beam_permit.granted, (
            self.state.mode, self.outputs.beam_permit)


def _dummy_block() -> Any:
    from syncctl.devices import ReadBlock

    return ReadBlock("input", 0, 0, ())


Answer: TypeAlias = list[int] | LinkError | tuple[int, int]


@st.composite
def status_answers(draw: st.DrawFn, count: int) -> Answer:
    """A fuzzed answer to one status read: one true word replaced (``(index, word)``),
    arbitrary words (right count or not, 16-bit or not), or a failed transaction."""
    kind = draw(st.sampled_from(("flip", "flip", "words", "count", "link")))
    if kind == "flip":
        return draw(st.integers(0, count - 1)), draw(words_16)
    if kind == "words":
        return draw(st.lists(st.sampled_from((words_16, any_words)).flatmap(lambda s: s),
                             min_size=count, max_size=count))
    if kind == "count":
        n = draw(st.integers(0, count + 4).filter(lambda n: n != count))
        return draw(st.lists(words_16, min_size=n, max_size=n))
    return LinkError(draw(st.sampled_from(("timeout", "malformed", "disconnected",
                                           "exception", "corrupt"))), "fuzzed")


def _in_range(snapshot: Snapshot) -> list[str]:
    """Independent check of a snapshot the core granted the beam from."""
    problems = list(bad_values(snapshot))
    xi = snapshot.imaging.status
    if xi is not None:
        if xi.tracking_confidence < PARAMS.min_confidence:
            problems.append(f"confidence {xi.tracking_confidence}")
        d = (xi.target.x_mm - CENTRE.x_mm, xi.target.y_mm - CENTRE.y_mm,
             xi.target.z_mm - CENTRE.z_mm)
        outer = PARAMS.hysteresis_mm
        w = PARAMS.window
        if isinstance(w, WindowBox):
            inside = (abs(d[0]) <= w.half_x_mm + outer and abs(d[1]) <= w.half_y_mm + outer
                      and abs(d[2]) <= w.half_z_mm + outer)
        else:
            assert isinstance(w, WindowSphere)
            inside = math.hypot(*d) <= w.radius_mm + outer
        if not inside:
            problems.append(f"target {xi.target} outside the window")
        if not (xi.prepared and xi.exposing):
            problems.append("not exposing")
    return problems


Step: TypeAlias = tuple[str, Answer] | None


@st.composite
def fuzz_steps(draw: st.DrawFn) -> list[Step]:
    counts = {"bg": 8, "xi": 18}
    steps: list[Step] = []
    for _ in range(draw(st.integers(1, 12))):
        if draw(st.integers(0, 3)) == 0:
            steps.append(None)  # a clean step between fuzzed ones
            continue
        device = draw(st.sampled_from(("bg", "xi")))
        steps.append((device, draw(status_answers(counts[device]))))
    return steps


@fuzz("core_e2e", slow=True)
@given(steps=fuzz_steps())
def test_no_permit_from_a_malformed_answer(steps: list[Step]) -> None:
    asyncio.run(_run_e2e(steps))


async def _run_e2e(steps: list[Step]) -> None:
    room = Room()
    await room.treat()
    assert room.backends["bg"].status_block.count == 8
    assert room.backends["xi"].status_block.count == 18
    oracles: dict[str, Callable[[Words], Any]] = {"bg": beam_gate_oracle, "xi": imaging_oracle}
    maps = {"bg": ROOM.beam_gate_map, "xi": ROOM.imaging_map}
    granted_after = 0
    for item in [*steps, *[None] * 8]:  # clean steps at the end: the beam comes back
        device = None
        if item is not None:
            device, answer = item
            room.backends[device].answer = answer
            before = room.clients[device].reading
        await room.tick()
        snap, out = room.snapshot, room.outputs
        assert snap is not None
        malformed = False
        if device is not None:
            backend = room.backends[device]
            reading = snap.beam_gate if device == "bg" else snap.imaging
            served = backend.served
            expected = None if isinstance(served, LinkError) or served is None else (
                oracles[device](Words(maps[device], [backend.status_block], [served])))
            if expected is None:
                malformed = True
                assert reading.healthy is False, f"healthy after a malformed answer {served}"
                assert reading.status == before.status, "the last good status was replaced"
                assert reading.read_at == before.read_at
            else:
                assert reading.healthy is True, f"a valid answer made it unhealthy: {served}"
                assert reading.status == expected, "the reading is not what the words say"
        if out.beam_permit.granted:
            assert not malformed, f"beam permit granted on a malformed answer: {item}"
            assert snap.beam_gate.healthy and snap.imaging.healthy
            assert not _in_range(snap), f"beam permit granted on {_in_range(snap)}"
            assert out.gate.value == "open"
            if item is None:
                granted_after += 1
        else:
            assert out.gate.value == "close"
    event(f"final mode {room.state.mode.name}")
    event("the beam came back after the fuzzed steps" if granted_after
          else "the beam stayed off after the fuzzed steps")
