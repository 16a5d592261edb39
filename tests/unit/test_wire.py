"""Modbus framing (``syncctl.devices.wire``) against known vectors and against pymodbus, used
here as an independent peer: every request we build is decoded by pymodbus's server-side
decoder, and every answer pymodbus's server side would send parses to the same values. Damaged
frames (every single-bit flip, truncations) never give a value."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu import bit_message as bm
from pymodbus.pdu import register_message as rm

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
    crc16,
    mbap_frame,
    read_request,
    rtu_frame,
    single_write_echo,
    write_request,
)

UNIT = 2

# -- CRC -----------------------------------------------------------------------------------


def test_crc_known_vectors() -> None:
    assert crc16(b"123456789") == 0x4B37  # CRC-16/MODBUS check value
    assert crc16(b"") == 0xFFFF
    # The textbook request: read 10 holding registers from address 0 of unit 1.
    assert rtu_frame(1, bytes.fromhex("030000000a")).hex() == "01030000000ac5cd"


@given(st.binary(max_size=300))
def test_crc_agrees_with_pymodbus(data: bytes) -> None:
    # pymodbus gives the two wire bytes as a big-endian int.
    assert crc16(data).to_bytes(2, "little") == FramerRTU.compute_CRC(data).to_bytes(2, "big")


# -- requests, decoded by pymodbus's server side -----------------------------------------------

addresses = st.integers(0, 0xFFFF)
words = st.integers(0, 0xFFFF)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    function = draw(st.sampled_from((1, 2, 3, 4, 5, 6, 15, 16)))
    limit = {1: 2000, 2: 2000, 3: 125, 4: 125, 5: 1, 6: 1, 15: 1968, 16: 123}[function]
    address = draw(addresses)
    count = draw(st.integers(1, min(limit, 0x10000 - address, 60 if function == 15 else limit)))
    if function in (1, 2, 3, 4):
        return read_request(function, address, count)
    element = st.integers(0, 1) if function in (5, 15) else words
    return write_request(function, address, draw(st.lists(element, min_size=count,
                                                          max_size=count)))


@given(requests())
def test_every_request_decodes_in_pymodbus_to_the_same_fields(request: Request) -> None:
    decoded = DecodePDU(is_server=True).decode(request.pdu)
    assert decoded is not None
    assert decoded.function_code == request.function
    assert decoded.address == request.address
    if request.function in (1, 2, 3, 4, 15, 16):
        assert decoded.count == request.count
    if request.function in (5, 15):
        assert [int(b) for b in decoded.bits[:request.count]] == list(request.values)
    if request.function in (6, 16):
        assert list(decoded.registers) == list(request.values)


@given(requests(), st.integers(1, 247), st.integers(0, 0xFFFF))
def test_our_frames_pass_pymodbus_server_framers(request: Request, unit: int, tid: int) -> None:
    frame = rtu_frame(unit, request.pdu)
    used, pdu = FramerRTU(DecodePDU(is_server=True)).handleFrame(frame, 0, 0)
    assert used == len(frame) and pdu is not None
    assert (pdu.dev_id, pdu.function_code, pdu.address) == (unit, request.function,
                                                            request.address)
    frame = mbap_frame(tid, unit, request.pdu)
    used, pdu = FramerSocket(DecodePDU(is_server=True)).handleFrame(frame, 0, 0)
    assert used == len(frame) and pdu is not None
    assert (pdu.transaction_id, pdu.dev_id, pdu.function_code) == (tid, unit, request.function)


@pytest.mark.parametrize(("function", "address", "count"), [
    (7, 0, 1), (3, 0, 0), (3, 0, 126), (1, 0, 2001), (4, 0xFFFF, 2), (4, -1, 1), (4, 0x10000, 1)])
def test_impossible_reads_are_refused(function: int, address: int, count: int) -> None:
    with pytest.raises(ValueError):
        read_request(function, address, count)


@pytest.mark.parametrize(("function", "values"), [
    (6, [1, 2]), (6, [0x10000]), (16, [-1]), (16, []), (16, [0] * 124), (3, [1])])
def test_impossible_writes_are_refused(function: int, values: list[int]) -> None:
    with pytest.raises(ValueError):
        write_request(function, 0, values)


# -- answers, encoded by pymodbus's server side ------------------------------------------------


def pymodbus_answer(request: Request, values: list[int], unit: int, tid: int = 0) -> ModbusPDU:
    """The response pymodbus's server side would send to ``request``."""
    f, a, n = request.function, request.address, request.count
    bits = [bool(v) for v in values]
    pdu: ModbusPDU
    if f == 1:
        pdu = bm.ReadCoilsResponse(bits=bits, dev_id=unit, transaction_id=tid)
    elif f == 2:
        pdu = bm.ReadDiscreteInputsResponse(bits=bits, dev_id=unit, transaction_id=tid)
    elif f == 3:
        pdu = rm.ReadHoldingRegistersResponse(registers=values, dev_id=unit, transaction_id=tid)
    elif f == 4:
        pdu = rm.ReadInputRegistersResponse(registers=values, dev_id=unit, transaction_id=tid)
    elif f == 5:
        pdu = bm.WriteSingleCoilResponse(address=a, bits=bits[:1], dev_id=unit,
                                         transaction_id=tid)
    elif f == 6:
        pdu = rm.WriteSingleRegisterResponse(address=a, registers=values[:1], dev_id=unit,
                                             transaction_id=tid)
    elif f == 15:
        pdu = bm.WriteMultipleCoilsResponse(address=a, count=n, dev_id=unit, transaction_id=tid)
    else:
        pdu = rm.WriteMultipleRegistersResponse(address=a, count=n, dev_id=unit,
                                                transaction_id=tid)
    return pdu


def rtu_answer(pdu: ModbusPDU) -> bytes:
    return FramerRTU(DecodePDU(is_server=False)).buildFrame(pdu)


def mbap_answer(pdu: ModbusPDU) -> bytes:
    return FramerSocket(DecodePDU(is_server=False)).buildFrame(pdu)


def answer_of(request: Request, data: st.DataObject) -> list[int]:
    """What a correct device would answer: words or bits for a read, the echo for a write."""
    if request.function in (1, 2):
        return data.draw(st.lists(st.integers(0, 1), min_size=request.count,
                                  max_size=request.count))
    if request.function in (3, 4):
        return data.draw(st.lists(words, min_size=request.count, max_size=request.count))
    return list(request.values)


def parse_rtu(frame: bytes) -> Frame:
    parsed = Rtu.parse(frame)
    assert parsed is not None
    taken, size = parsed
    assert size == len(frame)
    return taken


@given(requests().filter(lambda r: r.function not in (1, 2, 3, 4) or r.count <= 125),
       st.data(), st.integers(0, 0xFFFF))
def test_answers_encoded_by_pymodbus_parse_to_the_same_values(
        request: Request, data: st.DataObject, tid: int) -> None:
    values = answer_of(request, data)
    pdu = pymodbus_answer(request, values, UNIT, tid)
    rtu = parse_rtu(rtu_answer(pdu))
    mbap_bytes = mbap_answer(pdu)
    taken = Mbap.parse(mbap_bytes, {tid})
    assert taken is not None and taken[1] == len(mbap_bytes)
    mbap = taken[0]
    assert isinstance(mbap, Frame) and mbap.transaction_id == tid
    for frame in (rtu, mbap):
        check_answer(request, UNIT, frame)
        if request.function in (1, 2, 3, 4):
            assert answer_values(request, frame.pdu) == values
        elif request.function in (5, 6):
            assert single_write_echo(request, frame.pdu) == values[0]


@given(st.sampled_from((1, 2, 3, 4, 5, 6, 15, 16)), st.integers(1, 255))
def test_exception_answers_raise_with_their_code(function: int, code: int) -> None:
    request = (read_request(function, 0, 1) if function <= 4
               else write_request(function, 0, [1]))
    response = ExceptionResponse(function, code)
    response.dev_id = UNIT
    frame = parse_rtu(rtu_answer(response))
    with pytest.raises(ExceptionAnswer) as caught:
        check_answer(request, UNIT, frame)
    assert caught.value.code == code


# -- damage --------------------------------------------------------------------------------

SAMPLES: list[tuple[Request, list[int]]] = [
    (read_request(4, 2, 18), list(range(1000, 1018))),
    (read_request(3, 5, 1), [0xFFFF]),
    (read_request(1, 0, 11), [1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1]),
    (write_request(6, 5, [200]), [200]),
    (write_request(16, 3, [1, 2, 3, 4]), [1, 2, 3, 4]),
    (write_request(5, 9, [1]), [1]),
]


def never_a_value(request: Request, damaged: bytes | bytearray) -> str:
    """What the parser makes of damaged bytes; fails if it yields values."""
    try:
        parsed = Rtu.parse(damaged)
    except WireError as exc:
        assert exc.kind == "corrupt"
        return "corrupt"
    if parsed is None:
        return "incomplete"
    try:
        check_answer(request, UNIT, parsed[0])
    except (WireError, ExceptionAnswer):
        return "refused"
    pytest.fail(f"damaged frame {bytes(damaged).hex()} accepted")


@pytest.mark.parametrize(("request_", "values"), SAMPLES)
def test_every_single_bit_flip_is_never_a_value(request_: Request, values: list[int]) -> None:
    good = rtu_answer(pymodbus_answer(request_, values, UNIT))
    check_answer(request_, UNIT, parse_rtu(good))
    outcomes = set()
    for bit in range(8 * len(good)):
        damaged = bytearray(good)
        damaged[bit // 8] ^= 1 << (bit % 8)
        outcomes.add(never_a_value(request_, damaged))
    assert "corrupt" in outcomes


@pytest.mark.parametrize(("request_", "values"), SAMPLES)
def test_truncated_frames_are_incomplete_and_extra_bytes_are_left(
        request_: Request, values: list[int]) -> None:
    good = rtu_answer(pymodbus_answer(request_, values, UNIT))
    for size in range(len(good)):
        assert Rtu.parse(good[:size]) is None
    parsed = Rtu.parse(good + b"\x00\xff\x13")
    assert parsed is not None and parsed[1] == len(good)
    check_answer(request_, UNIT, parsed[0])


@given(st.sampled_from(SAMPLES), st.binary(min_size=1, max_size=80))
def test_arbitrary_bytes_are_never_a_value(sample: tuple[Request, list[int]],
                                           noise: bytes) -> None:
    never_a_value(sample[0], noise)


def test_a_function_code_no_answer_carries_is_corrupt() -> None:
    with pytest.raises(WireError) as caught:
        Rtu.parse(bytes([UNIT, 0x2B, 0, 0, 0]))
    assert caught.value.kind == "corrupt"


# -- intact frames that do not answer the request -------------------------------------------

READ = read_request(4, 2, 18)
WORDS = list(range(18))


def malformed(request: Request, frame: Frame) -> str:
    with pytest.raises(WireError) as caught:
        check_answer(request, UNIT, frame)
    assert caught.value.kind == "malformed", caught.value
    return caught.value.detail


@pytest.mark.parametrize("unit", [0, 1, 3, 247])
def test_wrong_unit_is_malformed(unit: int) -> None:
    frame = parse_rtu(rtu_answer(pymodbus_answer(READ, WORDS, unit)))
    assert "unit" in malformed(READ, frame)


def test_wrong_function_is_malformed() -> None:
    frame = parse_rtu(rtu_answer(pymodbus_answer(read_request(3, 2, 18), WORDS, UNIT)))
    assert "function code 3" in malformed(READ, frame)
    other_exception = ExceptionResponse(3, 2)
    other_exception.dev_id = UNIT
    malformed(READ, parse_rtu(rtu_answer(other_exception)))


@pytest.mark.parametrize("count", [1, 17, 19, 125])
def test_wrong_word_count_is_malformed(count: int) -> None:
    frame = parse_rtu(rtu_answer(pymodbus_answer(read_request(4, 2, count), list(range(count)),
                                                 UNIT)))
    assert f"wrong word count: {count} for 18" in malformed(READ, frame)


def test_wrong_bit_count_and_odd_byte_count_are_malformed() -> None:
    coils = read_request(1, 0, 11)
    frame = parse_rtu(rtu_answer(pymodbus_answer(read_request(1, 0, 17), [1] * 17, UNIT)))
    malformed(coils, frame)
    odd = parse_rtu(rtu_frame(UNIT, bytes([4, 3, 0, 1, 2])))
    assert "odd byte count" in malformed(READ, odd)


@pytest.mark.parametrize("answer", [
    (6, 6, [200]),     # another address
    (16, 5, [1, 2, 3]),  # another count
])
def test_write_acknowledging_something_else_is_malformed(answer: tuple[int, int, Any]) -> None:
    function, address, values = answer
    request = write_request(function, 5, [200] if function == 6 else [1, 2, 3, 4])
    frame = parse_rtu(rtu_answer(pymodbus_answer(write_request(function, address, values),
                                                 values, UNIT)))
    malformed(request, frame)


def test_a_single_write_echo_that_differs_is_given_for_the_caller_to_judge() -> None:
    request = write_request(6, 5, [200])
    frame = parse_rtu(rtu_answer(pymodbus_answer(write_request(6, 5, [7]), [7], UNIT)))
    check_answer(request, UNIT, frame)
    assert single_write_echo(request, frame.pdu) == 7


# -- MBAP ----------------------------------------------------------------------------------


def test_mbap_frames_by_length_strays_and_bad_headers() -> None:
    one = mbap_answer(pymodbus_answer(READ, WORDS, UNIT, 7))
    two = mbap_answer(pymodbus_answer(READ, WORDS, UNIT, 8))
    stream = one + two
    for size in range(len(one)):
        assert Mbap.parse(stream[:size], {8}) is None
    taken = Mbap.parse(stream, {8})
    assert taken == (Stray(7), len(one))
    taken = Mbap.parse(stream[len(one):], {8})
    assert taken is not None and isinstance(taken[0], Frame) and taken[1] == len(two)
    assert answer_values(READ, taken[0].pdu) == WORDS
    for header in (b"\x00\x01\x00\x01\x00\x03\x02", b"\x00\x01\x00\x00\x00\x01\x02",
                   b"\x00\x01\x00\x00\x01\x00\x02"):
        with pytest.raises(WireError) as caught:
            Mbap.parse(header + b"\x04\x00", {1})
        assert caught.value.kind == "corrupt"


def test_mbap_pdu_cut_short_is_corrupt() -> None:
    """What the simulator's TCP noise sends: the PDU cut by two bytes, the length adjusted."""
    pdu = bytes([4, 36]) + bytes(34)
    frame = Mbap.parse(mbap_frame(3, UNIT, pdu), {3})
    assert frame is not None and isinstance(frame[0], Frame)
    with pytest.raises(WireError) as caught:
        check_answer(READ, UNIT, frame[0])
    assert caught.value.kind == "corrupt"
