"""Fuzzing the serial line: the real ``ImagingClient`` (Modbus RTU through syncctl's own client,
``syncctl.devices.modbus`` on ``syncctl.devices.wire``, a real pty) against a fake device that
answers its status reads with Hypothesis-chosen bytes.

The fake device sits on the master end of an ``os.openpty()`` pair, in the test's own event
loop; the client opens the slave end by its path, exactly as it opens the simulator's line.
Every other request (identity, settings, their read-back) gets a correct answer, so each
example exercises a whole session: connect, verify, poll.

Answers to a status read: a valid frame with a bad CRC, a truncated frame, random noise, an
overlong frame (a valid one with bytes after it), a frame with a right CRC and absurd or
malformed contents (wrong unit, wrong function code, wrong byte count, exception response,
random register words), silence, and the correct frame.

Properties, for every poll:
- ``poll`` never raises and returns within its bound (transaction timeout plus margin);
- a reading is healthy only when the line carried a frame with a right CRC that answers the
  request, and then its status is exactly what an independent decoder makes of that frame's
  words; anything else leaves it unhealthy with the last good status kept;
- the client asks a status read a second time only after damaged bytes (a bad CRC, a
  truncated frame, noise), never after an intact answer; the device then answers the second
  request correctly, and the reading is what that second frame says;
- once correct answers return, the client is healthy again within a few polls (reconnection
  backoff skipped with the client's injectable clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from hypothesis import event, given
from hypothesis import strategies as st

from syncctl.config import encode, load_room
from syncctl.core import ImagingStatus, Position
from syncctl.devices import ImagingClient
from tests.fuzz.oracle import Words, imaging_oracle
from tests.fuzz.profiles import fuzz

ROOT = Path(__file__).resolve().parents[2]
ROOM = load_room(ROOT / "configs" / "room-sim.yaml")
IMAGING = ROOM.room.devices.imaging
UNIT = IMAGING.transport.unit
MAP = ROOM.imaging_map
POLL_BOUND_S = 2.0
"""Generous bound on one poll (the transaction timeout is 60 ms): a hang, not a slow machine."""
RECOVERY_POLLS = 4


def crc16(data: bytes) -> bytes:
    """Modbus CRC-16 (poly 0xA001, init 0xFFFF), low byte first; written here, not taken from
    pymodbus, so the fake device does not share the client's code."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return bytes([crc & 0xFF, crc >> 8])


def frame(pdu: bytes, unit: int = UNIT) -> bytes:
    body = bytes([unit]) + pdu
    return body + crc16(body)


def read_answer(fc: int, words: list[int]) -> bytes:
    return bytes([fc, 2 * len(words)]) + b"".join(w.to_bytes(2, "big") for w in words)


class FakeImagingDevice:
    """An RTU slave on a pty master: correct answers from a register image, except that each
    read of the status block takes the next scripted answer (bytes, or None for silence)."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.buffer = b""
        self.holding: dict[int, int] = {}
        self.input: dict[int, int] = {}
        self.script: list[bytes | None] = []
        self.status_reads = 0
        regs = MAP.registers
        self.status_first = regs["status"].address
        self.status_count = regs["heartbeat_echo"].last_address - self.status_first + 1
        self.input[regs["identity"].address] = 0x5849
        self.input[regs["firmware_version"].address] = 101

    def set_status(self, status: ImagingStatus) -> None:
        regs = MAP.registers
        values = {
            "status": int(status.prepared) | int(status.exposing) << 1,
            "frame_counter": status.frame_counter,
            "frame_timestamp_ms": status.frame_timestamp_ms,
            "device_clock_ms": status.device_clock_ms, "target_x": status.target.x_mm,
            "target_y": status.target.y_mm, "target_z": status.target.z_mm,
            "tracking_confidence": status.tracking_confidence,
            "cumulative_mas": status.cumulative_mas, "fault_code": status.fault_code,
            "heartbeat_echo": status.heartbeat_echo}
        for name, value in values.items():
            for i, w in enumerate(encode(regs[name], value, MAP.word_order)):
                self.input[regs[name].address + i] = w

    def status_words(self) -> list[int]:
        return [self.input.get(a, 0) for a in range(self.status_first,
                                                    self.status_first + self.status_count)]

    def on_readable(self) -> None:
        try:
            self.buffer += os.read(self.master, 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        while self.buffer:
            size = self._request_size()
            if size is None or len(self.buffer) < size:
                return
            request, self.buffer = self.buffer[:size], self.buffer[size:]
            if crc16(request[:-2]) != request[-2:] or request[0] != UNIT:
                continue
            answer = self._answer(request[1], request[2:-2])
            if answer:
                with contextlib.suppress(BlockingIOError, OSError):
                    os.write(self.master, answer)

    def _request_size(self) -> int | None:
        if len(self.buffer) < 2:
            return None
        fc = self.buffer[1]
        if fc in (3, 4, 6):
            return 8
        if fc == 16:
            return 9 + self.buffer[6] if len(self.buffer) >= 7 else None
        self.buffer = b""  # not a request this device knows: resynchronise on silence
        return None

    def _answer(self, fc: int, data: bytes) -> bytes | None:
        address = int.from_bytes(data[0:2], "big")
        if fc in (3, 4):
            count = int.from_bytes(data[2:4], "big")
            if fc == 4 and (address, count) == (self.status_first, self.status_count):
                self.status_reads += 1
                if self.script:
                    return self.script.pop(0)
            table = self.input if fc == 4 else self.holding
            return frame(read_answer(fc, [table.get(a, 0)
                                          for a in range(address, address + count)]))
        if fc == 6:
            self.holding[address] = int.from_bytes(data[2:4], "big")
            return frame(bytes([6]) + data[:4])
        count = int.from_bytes(data[2:4], "big")
        for i in range(count):
            self.holding[address + i] = int.from_bytes(data[5 + 2 * i:7 + 2 * i], "big")
        return frame(bytes([16]) + data[:4])


@dataclass
class Line:
    device: FakeImagingDevice
    path: str
    fds: list[int] = field(default_factory=list)


@contextlib.contextmanager
def pty_line() -> Iterator[Line]:
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    line = Line(FakeImagingDevice(master), os.ttyname(slave), [master, slave])
    loop = asyncio.get_running_loop()
    loop.add_reader(master, line.device.on_readable)
    try:
        yield line
    finally:
        loop.remove_reader(master)
        for fd in line.fds:
            os.close(fd)


# -- the answers -------------------------------------------------------------------------

words_16 = st.one_of(st.integers(0, 0xFFFF), st.sampled_from((0, 1, 0x7FFF, 0x8000, 0xFFFF)))


@dataclass(frozen=True)
class Answer:
    kind: str
    data: bytes | None
    words: list[int] | None = None
    """The register words of the frame in ``data`` when it is a correct answer to the read."""


@st.composite
def answers(draw: st.DrawFn, true_words: list[int]) -> Answer:
    n = len(true_words)
    good = frame(read_answer(4, true_words))
    kind = draw(st.sampled_from((
        "bad_crc", "truncated", "noise", "overlong", "absurd", "flipped_word", "wrong_unit",
        "wrong_fc", "wrong_byte_count", "wrong_word_count", "exception", "silence", "valid")))
    if kind == "bad_crc":
        at = draw(st.integers(len(good) - 2, len(good) - 1))
        return Answer(kind, good[:at] + bytes([good[at] ^ draw(st.integers(1, 255))])
                      + good[at + 1:])
    if kind == "truncated":
        return Answer(kind, good[:draw(st.integers(1, len(good) - 1))])
    if kind == "noise":
        return Answer(kind, draw(st.binary(min_size=1, max_size=300)))
    if kind == "overlong":
        return Answer(kind, good + draw(st.binary(min_size=1, max_size=40)), true_words)
    if kind == "absurd":
        words = draw(st.lists(words_16, min_size=n, max_size=n))
        return Answer(kind, frame(read_answer(4, words)), words)
    if kind == "flipped_word":
        words = list(true_words)
        words[draw(st.integers(0, n - 1))] = draw(words_16)
        return Answer(kind, frame(read_answer(4, words)), words)
    if kind == "wrong_unit":
        unit = draw(st.integers(0, 255).filter(lambda u: u != UNIT))
        return Answer(kind, frame(read_answer(4, true_words), unit))
    if kind == "wrong_fc":
        fc = draw(st.sampled_from((1, 2, 3, 5, 6, 15, 16, 23, 43, 0x7F)))
        return Answer(kind, frame(read_answer(fc, true_words)))
    if kind == "wrong_byte_count":
        body = read_answer(4, true_words)
        count = draw(st.integers(0, 255).filter(lambda c: c != 2 * n))
        return Answer(kind, frame(bytes([4, count]) + body[2:]))
    if kind == "wrong_word_count":
        m = draw(st.integers(0, n + 6).filter(lambda m: m != n))
        return Answer(kind, frame(read_answer(4, draw(st.lists(words_16, min_size=m,
                                                              max_size=m)))))
    if kind == "exception":
        return Answer(kind, frame(bytes([0x84, draw(st.integers(0, 255))])))
    if kind == "silence":
        return Answer(kind, None)
    return Answer(kind, good, true_words)


class Clock:
    """The client's clock (reconnection backoff, read times): real time plus a skip."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skipped


async def _poll(client: ImagingClient) -> float:
    start = time.monotonic()
    await client.poll()
    took = time.monotonic() - start
    assert took < POLL_BOUND_S, f"poll took {took:.3f} s"
    return took


async def _scenario(data: st.DataObject, n_fuzzed: int) -> None:
    with pty_line() as line:
        device = line.device
        world = ImagingStatus(prepared=True, exposing=True, frame_counter=41,
                              frame_timestamp_ms=100_000, device_clock_ms=100_012,
                              target=Position(1.5, -2.25, 30.0), tracking_confidence=0.95,
                              cumulative_mas=12.5, fault_code=0, heartbeat_echo=7)
        device.set_status(world)
        config = ROOM.with_endpoints({}, {"port": line.path})
        clock = Clock()
        client = ImagingClient(config, clock)
        try:
            await _poll(client)
            assert client.healthy, client.last_error
            for i in range(n_fuzzed):
                device.set_status(_advanced(world, i + 1))
                answer = data.draw(answers(device.status_words()), label=f"answer {i}")
                before = client.reading
                device.script.append(answer.data)
                reads = device.status_reads
                await _poll(client)
                reading = client.reading
                if device.status_reads == reads:
                    # The session was being re-established (a failure before dropped the
                    # link and the backoff holds): the status read did not happen.
                    device.script.clear()
                    assert not reading.healthy
                    event("poll skipped: reconnecting")
                    clock.skipped += 3.0
                    continue
                expected = None
                block = client.transaction_plan[0]
                asked = device.status_reads - reads
                assert asked in (1, 2), f"{asked} status reads in one poll"
                if asked == 2:
                    # Damaged bytes: the client asked again and got the register image.
                    assert answer.kind not in ("valid", "overlong", "absurd", "flipped_word",
                                               "wrong_unit", "exception", "silence"), (
                        f"asked again after {answer.kind} {answer.data!r}")
                    expected = imaging_oracle(Words(MAP, [block], [device.status_words()]))
                    event(f"{answer.kind}: asked again")
                elif answer.words is not None:
                    expected = imaging_oracle(Words(MAP, [block], [answer.words]))
                event(f"{answer.kind}: {'healthy' if reading.healthy else 'unhealthy'}")
                if reading.healthy:
                    assert expected is not None, (
                        f"healthy after {answer.kind} {answer.data!r}: {reading.status}")
                    assert reading.status == expected
                else:
                    assert reading.status == before.status, "the last good status was lost"
                    assert reading.read_at == before.read_at
                    assert answer.kind != "valid", f"a valid answer failed: {client.last_error}"
                    clock.skipped += 3.0  # past any reconnection backoff
            # Correct answers again: healthy within a few polls.
            for _ in range(RECOVERY_POLLS):
                await _poll(client)
                if client.healthy:
                    break
                clock.skipped += 3.0
            assert client.healthy, f"no recovery: {client.last_error}"
            assert client.reading.status == imaging_oracle(
                Words(MAP, [client.transaction_plan[0]], [device.status_words()]))
        finally:
            await client.close()
            await asyncio.sleep(0)


def _advanced(status: ImagingStatus, frames: int) -> ImagingStatus:
    return replace(status, frame_counter=status.frame_counter + frames,
                   frame_timestamp_ms=status.frame_timestamp_ms + 33 * frames,
                   device_clock_ms=status.device_clock_ms + 33 * frames)


@fuzz("serial", slow=True)
@given(data=st.data(), n_fuzzed=st.integers(1, 4))
def test_serial_client_survives_any_bytes(data: st.DataObject, n_fuzzed: int) -> None:
    asyncio.run(_scenario(data, n_fuzzed))
