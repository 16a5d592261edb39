"""Talking to the engineer: confirmations and person steps, over a text stream (stdin/stdout,
so a pipe can answer in a test).

- ``confirm``: a yes/no question before something that needs the room to be safe (opening
  the gate, exposing X-ray). ``--yes`` answers yes (scripted rehearsals); a no needs a reason
  (the step is then SKIPPED with it); no answer at all (input closed) is not a decision and
  the caller fails the step.
- ``person``: an instruction for a person (press the e-stop, open the door). The tool does
  not wait for Enter: it watches the device's status bits and times the change from the
  moment the instruction was printed. Typing ``skip REASON`` skips the step; a skip without
  a reason is refused. In a rehearsal the tool performs the action itself (``act``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TextIO

POLL_S = 0.005
"""How often a person step looks at the device while waiting."""


class LineSource:
    """Lines from a text stream, read without blocking the event loop when the stream is a
    pipe or a terminal (``loop.add_reader``); a stream the loop cannot watch (a regular file,
    an in-memory buffer) is read directly, since reading it never blocks for long."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._buffer = b""
        self._fd: int | None = None
        self._eof = False

    def start(self) -> None:
        try:
            fd = self._stream.fileno()
            asyncio.get_running_loop().add_reader(fd, self._readable)
        except (AttributeError, OSError, ValueError, PermissionError, NotImplementedError):
            return  # read directly
        self._fd = fd

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._fd)
            self._fd = None

    def _readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._eof = True
            self.close()
            if self._buffer:
                self._queue.put_nowait(self._buffer.decode(errors="replace"))
                self._buffer = b""
            self._queue.put_nowait(None)
            return
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self._queue.put_nowait(line.decode(errors="replace").rstrip("\r"))

    def _read_direct(self) -> str | None:
        if self._eof:
            return None
        line = self._stream.readline()
        if not line:
            self._eof = True
            return None
        return line.rstrip("\r\n")

    async def get(self, timeout_s: float) -> str | None:
        """The next line; None at end of input. Raises TimeoutError after ``timeout_s``."""
        if self._queue.empty():
            if self._eof:
                return None
            if self._fd is None:
                return self._read_direct()
        return await asyncio.wait_for(self._queue.get(), timeout_s)

    def get_nowait(self) -> tuple[bool, str | None]:
        """(True, line or None at end of input) if something is there, else (False, None)."""
        if self._fd is None and self._queue.empty():
            if self._eof:
                return False, None
            return True, self._read_direct()
        try:
            return True, self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return False, None


@dataclass(frozen=True)
class Confirmation:
    kind: Literal["yes", "skip", "no_answer"]
    reason: str = ""


@dataclass(frozen=True)
class PersonOutcome:
    kind: Literal["done", "skip", "timeout"]
    elapsed_s: float
    reason: str = ""


class Prompter:
    """Confirmations and person steps on ``out`` and ``lines``."""

    def __init__(self, out: TextIO, lines: LineSource, *, assume_yes: bool = False,
                 answer_timeout_s: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.lines = lines
        self.assume_yes = assume_yes
        self.answer_timeout_s = answer_timeout_s
        self.clock = clock

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def _answer(self) -> str | None:
        try:
            return await self.lines.get(self.answer_timeout_s)
        except TimeoutError:
            return None

    async def confirm(self, question: str) -> Confirmation:
        if self.assume_yes:
            self.say(f"{question} [y/N] y (--yes)")
            return Confirmation("yes", "--yes")
        self.say(f"{question} [y/N]")
        answer = await self._answer()
        if answer is None:
            self.say("  no answer (input closed): not confirmed")
            return Confirmation("no_answer")
        if answer.strip().lower() in ("y", "yes"):
            return Confirmation("yes", "confirmed by the engineer")
        reason = await self.reason("  not confirmed: reason for skipping this step?")
        if reason is None:
            return Confirmation("no_answer")
        return Confirmation("skip", reason)

    async def reason(self, question: str) -> str | None:
        """A non-empty reason (asked at most three times); None if none was given."""
        for _ in range(3):
            self.say(question)
            answer = await self._answer()
            if answer is None:
                return None
            if answer.strip():
                return answer.strip()
        return None

    async def person(self, instruction: str, watch: Callable[[], Awaitable[bool]],
                     timeout_s: float,
                     act: Callable[[], Awaitable[None]] | None = None) -> PersonOutcome:
        """Print the instruction, then watch until ``watch()`` is true (timed from the print),
        the engineer types ``skip REASON``, or ``timeout_s`` passes. ``act``: a rehearsal
        performs the action itself right after the prompt."""
        self.say(f">>> {instruction}")
        if act is None:
            self.say("    (the tool watches the status bits; type 'skip REASON' to skip)")
        t0 = self.clock()
        if act is not None:
            await act()
        deadline = t0 + timeout_s
        max_rounds = int(timeout_s / POLL_S) + 10
        for _ in range(max_rounds):
            if await watch():
                return PersonOutcome("done", self.clock() - t0)
            if act is None:
                got, line = self.lines.get_nowait()
                if got and line is not None:
                    word, _, rest = line.strip().partition(" ")
                    if word.lower() == "skip":
                        if rest.strip():
                            return PersonOutcome("skip", self.clock() - t0, rest.strip())
                        self.say("    a reason is required: skip REASON")
            if self.clock() >= deadline:
                break
            await asyncio.sleep(POLL_S)
        return PersonOutcome("timeout", self.clock() - t0)
