"""The event loop the control cycle runs on.

asyncio's default loop on Linux waits in ``epoll_wait``, whose timeout is whole milliseconds:
``selectors.EpollSelector`` rounds every wait *up* to the next millisecond. A cycle that asks
to sleep 0.6 ms to the next 1 ms tick sleeps 1 ms, and one that asks 1.0 ms often sleeps
2 ms once the loop's own work is counted (measured: ``asyncio.sleep(0.001)`` wakes about 900
times a second, docs/performance.md). ``select()`` takes its timeout in microseconds, so a
loop over ``selectors.SelectSelector`` wakes when asked. Its limits do not bite here: the
control process watches a handful of descriptors (two device links, the bus, stdin), far
below ``FD_SETSIZE`` (1024), and the cost of ``select`` grows with the number watched.

Use ``run(coro)`` where ``asyncio.run(coro)`` would be used for a control loop.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A selector event loop that waits in ``select()`` (microsecond timeouts)."""
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the loop from ``new_event_loop``."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coro)
