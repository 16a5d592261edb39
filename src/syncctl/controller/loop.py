"""The event loop the control cycle runs on.

asyncio's default loop on Linux waits in ``epoll_wait``, whose timeout is whole milliseconds:
``selectors.EpollSelector`` rounds every wait *up* to the next millisecond. A cycle that asks
to sleep 0.6 ms to the next 1 ms tick sleeps 1 ms, and one that asks 1.0 ms often sleeps
2 ms once the loop's own work is counted (measured: ``asyncio.sleep(0.001)`` wakes about 900
times a second, docs/performance.md). ``select()`` takes its timeout in microseconds, so a
loop over ``selectors.SelectSelector`` wakes when asked. Its limits do not bite here: the
control process watches a handful of descriptors (two device links, the bus, stdin), far
below ``FD_SETSIZE`` (1024), and the cost of ``select`` grows with the number watched.

**The garbage collector.** A full (generation 2) collection walks every object the process
holds and stops every thread while it does: measured 50-122 ms in a test process that had run
the console, fuzz and device tests (about 2 million objects), which tripped the fraction it
was running (IL-002, imaging stale) or made it overrun. ``run`` therefore collects once and
then *freezes* what start-up left alive (imports, the configuration, the register maps,
pydantic's models): frozen objects are never walked again, so a collection during a fraction
looks only at what the run allocated since. Nothing is disabled: garbage made during the run
is still collected.

Use ``run(coro)`` where ``asyncio.run(coro)`` would be used for a control loop.
"""

from __future__ import annotations

import asyncio
import gc
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A selector event loop that waits in ``select()`` (microsecond timeouts)."""
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


def freeze_heap() -> None:
    """Collect, then move every object alive now out of the collector's reach (``gc.freeze``):
    later collections walk only what is allocated from here on."""
    gc.collect()
    gc.freeze()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the loop from ``new_event_loop``, with the start-up heap frozen."""
    freeze_heap()
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coro)
