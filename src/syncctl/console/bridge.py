"""A ``Bus`` for a console whose event loop is not the room's (``syncctl demo --console``).

The console's drawing must never stall the control cycle (a 200 ms stall trips the devices'
watchdogs), so in `syncctl demo --console` the room (simulator clients, controller, room
service, its ``InProcessBus``) runs in a worker thread with its own event loop and the console
keeps the main thread (Textual needs it). This bus, used by the console's ``BusClient`` in the
main loop, forwards each subscription and each publish to the room's bus in the room's loop
with ``call_soon_threadsafe``, and hands what arrives back the same way. Nothing else is
shared between the two threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from syncctl.bus import Bus, Message, Topics
from syncctl.bus.bus import Received, Subscription
from syncctl.bus.topics import Route

log = logging.getLogger("syncctl.console.bridge")


class LoopBridgeBus(Bus):
    """Create it in the console's loop; pass ``serve`` as the room's console hook (it runs
    in the room's loop until the room's ``stop`` event is set)."""

    def __init__(self, topics: Topics) -> None:
        super().__init__(topics)
        self._ui_loop = asyncio.get_running_loop()
        self.attached = asyncio.Event()
        """The room's side is serving (console loop)."""
        self.gone = asyncio.Event()
        """The room's side has stopped (console loop)."""
        self._room_loop: asyncio.AbstractEventLoop | None = None
        self._room_bus: Bus | None = None
        self._stop: asyncio.Event | None = None
        self._remote: dict[int, tuple[Subscription, asyncio.Task[None]]] = {}

    # -- the room's side (runs in the room's loop) -----------------------------------------------

    async def serve(self, bus: Bus, stop: asyncio.Event) -> None:
        self._room_loop, self._room_bus, self._stop = asyncio.get_running_loop(), bus, stop
        self._ui_loop.call_soon_threadsafe(self._attached)
        try:
            await stop.wait()
        finally:
            self._room_bus = None
            for remote, pump in list(self._remote.values()):
                remote.close()
                pump.cancel()
            await asyncio.gather(*(p for _, p in self._remote.values()),
                                 return_exceptions=True)
            self._remote.clear()
            self._ui_loop.call_soon_threadsafe(self._gone)

    def _remote_subscribe(self, sub: Subscription) -> None:
        if self._room_bus is None:
            return
        remote = self._room_bus.subscribe(sub.topic_filter, maxsize=2000)
        self._remote[id(sub)] = (remote, asyncio.get_running_loop().create_task(
            self._pump(remote, sub)))

    async def _pump(self, remote: Subscription, sub: Subscription) -> None:
        with contextlib.suppress(RuntimeError):  # the console's loop has closed
            await asyncio.wait_for(remote.ready.wait(), 30)
            self._ui_loop.call_soon_threadsafe(sub.ready.set)
            async for item in remote:
                self._ui_loop.call_soon_threadsafe(self._offer, sub, item)

    def _remote_unsubscribe(self, key: int) -> None:
        entry = self._remote.pop(key, None)
        if entry is not None:
            entry[0].close()
            entry[1].cancel()

    def _remote_publish(self, message: Message) -> None:
        if self._room_bus is not None:
            self._room_bus.publish(message)

    # -- the console's side ------------------------------------------------------------------------

    def _attached(self) -> None:
        self._set_connected(True)
        self.attached.set()

    def _gone(self) -> None:
        self._set_connected(False)
        self.gone.set()

    @staticmethod
    def _offer(sub: Subscription, item: Received) -> None:
        if not sub.closed:
            sub.offer(item)

    async def start(self) -> None:
        """Wait (bounded) until the room's side serves."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.attached.wait(), 120)

    async def close(self, timeout_s: float = 2.0) -> None:
        for sub in list(self._subscriptions):
            sub.close()

    def request_stop(self) -> None:
        """End the run: the room stops safely (its ``stop`` event is set)."""
        if self._room_loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the room's loop has already closed
                self._room_loop.call_soon_threadsafe(self._stop.set)

    def publish(self, message: Message) -> bool:
        if not self.connected or self._room_loop is None:
            return False
        try:
            self._room_loop.call_soon_threadsafe(self._remote_publish, message)
        except RuntimeError:
            return False
        return True

    def _send(self, route: Route, payload: bytes) -> bool:
        return False  # publish is forwarded whole (see ``publish``)

    def _subscribed(self, sub: Subscription) -> None:
        if self._room_loop is not None:
            with contextlib.suppress(RuntimeError):
                self._room_loop.call_soon_threadsafe(self._remote_subscribe, sub)

    def _unsubscribe(self, sub: Subscription) -> None:
        super()._unsubscribe(sub)
        if self._room_loop is not None:
            with contextlib.suppress(RuntimeError):
                self._room_loop.call_soon_threadsafe(self._remote_unsubscribe, id(sub))
