"""Read a child process's output line by line with a deadline.

`select()` on the pipe and then `readline()` loses lines: readline reads a whole chunk into
Python's buffer and returns one line, and select then reports nothing to read while the rest
of the chunk waits in that buffer. This reader takes the raw bytes itself and keeps the
unfinished line."""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable


class LineReader:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pending = b""
        self.lines: list[str] = []
        self.eof = False

    def next_line(self, deadline: float) -> str | None:
        """The next whole line, or None at the deadline or at end of output."""
        while b"\n" not in self.pending:
            if self.eof:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.1))
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    self.eof = True
                self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        text = line.decode("utf-8", errors="replace") + "\n"
        self.lines.append(text)
        return text

    def wait_for(self, match: Callable[[str], bool], timeout_s: float) -> str | None:
        deadline = time.monotonic() + timeout_s
        for _ in range(1_000_000):  # bounded; the deadline ends it first
            line = self.next_line(deadline)
            if line is None:
                return None
            if match(line):
                return line
        return None
