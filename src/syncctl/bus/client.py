"""The client side of a room's bus: what a console needs, over either bus.

::

    client = BusClient(bus)                    # InProcessBus shared with the service, or MqttBus
    await client.start()                       # subscribes to every topic of the room
    await client.login("alice", "operator", "1234")
    ack = await client.send("select_plan", plan_id="lung-01")
    async for event in client.stream(EventMessage): ...
    client.state, client.interlocks, client.alarms, client.status   # latest retained values
    client.telemetry, client.telemetry_gaps    # latest telemetry; what was missed of it

Every payload is validated before it is handed on (an invalid one is counted in
``invalid_payloads`` and dropped). Events are de-duplicated by ``(stream, seq)`` and gaps are
filled from the retained backlog (``events/recent``); ``events`` holds them in order and
``missing`` lists the sequence numbers not (yet) seen in the current stream. Telemetry cannot
be filled in: ``telemetry_gaps`` (``syncctl.bus.telemetry.TelemetryGaps``) counts the messages
missed by ``seq``, how many of them the publisher never sent, and stream restarts; a telemetry
message not newer than the last one of its stream is counted there and not handed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from syncctl.bus.bus import Bus, Received, Subscription
from syncctl.bus.messages import (
    Ack,
    Alarms,
    CommandEnvelope,
    EventBacklog,
    EventMessage,
    InterlockTable,
    Message,
    Role,
    RoomState,
    Status,
    Telemetry,
    decode,
)
from syncctl.bus.telemetry import TelemetryGaps

log = logging.getLogger("syncctl.bus.client")

M = TypeVar("M", bound=Message)
DEFAULT_ACK_TIMEOUT_S = 5.0


class NotLoggedIn(Exception):
    """``send`` before a successful ``login``."""


class LoginRefused(Exception):
    def __init__(self, ack: Ack) -> None:
        super().__init__(f"login refused ({ack.result}): {ack.reason}")
        self.ack = ack


class BusClient:
    """A console's view of one room (see the module docstring)."""

    def __init__(self, bus: Bus, *, ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S,
                 history: int = 10_000) -> None:
        self.bus = bus
        self.topics = bus.topics
        self.ack_timeout_s = ack_timeout_s
        self.operator: str | None = None
        self.role: Role | None = None
        self.session: str | None = None
        self.state: RoomState | None = None
        self.interlocks: InterlockTable | None = None
        self.alarms: Alarms | None = None
        self.status: Status | None = None
        self.telemetry: Telemetry | None = None
        self.telemetry_gaps = TelemetryGaps()
        self.events: deque[EventMessage] = deque(maxlen=history)
        self.invalid_payloads = 0
        self._seq = 0
        self._stream: str | None = None
        self._seen: set[int] = set()
        self._max_seq = 0
        self._waiting: dict[tuple[str, int], asyncio.Future[Ack]] = {}
        self._streams: list[tuple[type[Message], asyncio.Queue[Message]]] = []
        self._callbacks: list[tuple[type[Message], Callable[[Any], None]]] = []
        self._subs: list[Subscription] = []
        self._acks: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self, timeout_s: float = 5.0) -> None:
        """Subscribe to the room's topics; waits (bounded) until the subscriptions stand."""
        await self.bus.start()
        t = self.topics
        for topic_filter in (t.status, t.state, t.interlocks, t.alarms, t.telemetry, t.events,
                             t.events_recent):
            sub = self.bus.subscribe(topic_filter, maxsize=2000)
            self._subs.append(sub)
            self._tasks.append(asyncio.create_task(self._pump(sub)))
        await self._wait_ready(self._subs, timeout_s)

    async def close(self) -> None:
        for sub in [*self._subs, *([self._acks] if self._acks else [])]:
            sub.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()

    async def _wait_ready(self, subs: list[Subscription], timeout_s: float) -> None:
        try:
            await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in subs)), timeout_s)
        except TimeoutError:
            raise TimeoutError("the bus did not confirm the subscriptions in time") from None

    # -- commands ------------------------------------------------------------------------------

    async def login(self, operator: str, role: Role, pin: str) -> str:
        """Open a session (a new random id) checked by the room service against the users
        file; returns the session id, raises ``LoginRefused`` with the ack otherwise."""
        if self._acks is None or self.operator != operator:
            if self._acks is not None:
                self._acks.close()
            self._acks = self.bus.subscribe(self.topics.acks(operator), maxsize=1000)
            self._tasks.append(asyncio.create_task(self._pump(self._acks)))
            await self._wait_ready([self._acks], self.ack_timeout_s)
        self.operator, self.role = operator, role
        self.session, self._seq = secrets.token_urlsafe(24), 0
        ack = await self.send("login", pin=pin)
        if ack.result != "accepted":
            self.session = None
            raise LoginRefused(ack)
        return self.session

    async def logout(self) -> Ack | None:
        if self.session is None:
            return None
        ack = await self.send("logout")
        self.session = None
        return ack

    def envelope(self, command: str, **fields: Any) -> CommandEnvelope:
        """The next envelope of this session (consumes a sequence number)."""
        if self.session is None or self.operator is None or self.role is None:
            raise NotLoggedIn("log in first")
        self._seq += 1
        return CommandEnvelope.model_validate({
            "command": command, "operator": self.operator, "role": self.role,
            "room": self.topics.room, "session": self.session, "seq": self._seq, **fields})

    def send_nowait(self, command: str, **fields: Any) -> asyncio.Future[Ack]:
        """Send a command; the future resolves with its ack. A command the bus could not
        take (link down) resolves at once with an ``invalid`` ack saying so (never sent)."""
        envelope = self.envelope(command, **fields)
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        key = (envelope.session, envelope.seq)
        self._waiting[key] = future
        future.add_done_callback(lambda _f: self._waiting.pop(key, None))
        if not self.bus.publish(envelope):
            mode = self.state.mode if self.state is not None else "OFFLINE"
            future.set_result(Ack(room=self.topics.room, operator=envelope.operator,
                                  session=envelope.session, seq=envelope.seq,
                                  command=envelope.command, result="invalid",
                                  reason="not sent: the bus is not connected", mode=mode,
                                  utc=""))
        return future

    async def send(self, command: str, timeout_s: float | None = None, **fields: Any) -> Ack:
        """Send a command and wait for its ack (``TimeoutError`` after ``timeout_s``)."""
        future = self.send_nowait(command, **fields)
        return await asyncio.wait_for(future, timeout_s or self.ack_timeout_s)

    # -- what arrives ---------------------------------------------------------------------------

    def on(self, model: type[M], callback: Callable[[M], None]) -> None:
        """Call ``callback`` with every valid message of this type (events: new ones only)."""
        self._callbacks.append((model, callback))

    async def stream(self, model: type[M], maxsize: int = 1000) -> AsyncIterator[M]:
        """Every valid message of this type from now on (events: new ones only, in order of
        arrival; a gap filled from the backlog arrives late)."""
        queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=maxsize)
        entry = (model, queue)
        self._streams.append(entry)
        try:
            while True:
                item = await queue.get()
                assert isinstance(item, model)
                yield item
        finally:
            with contextlib.suppress(ValueError):
                self._streams.remove(entry)

    @property
    def missing(self) -> list[int]:
        """Sequence numbers of the current stream below the highest seen and not seen."""
        return [s for s in range(1, self._max_seq + 1) if s not in self._seen]

    async def _pump(self, sub: Subscription) -> None:
        async for item in sub:
            try:
                self._receive(item)
            except Exception:
                log.exception("bus client could not handle a message on %s", item.topic)

    def _receive(self, item: Received) -> None:
        t = self.topics
        model: type[Message]
        if item.topic == t.state:
            model = RoomState
        elif item.topic == t.interlocks:
            model = InterlockTable
        elif item.topic == t.alarms:
            model = Alarms
        elif item.topic == t.status:
            model = Status
        elif item.topic == t.telemetry:
            model = Telemetry
        elif item.topic == t.events:
            model = EventMessage
        elif item.topic == t.events_recent:
            model = EventBacklog
        elif item.topic.startswith(t.base + "/acks/"):
            model = Ack
        else:
            return
        try:
            message = decode(item.payload, model)
        except (ValidationError, ValueError):
            self.invalid_payloads += 1
            return
        if isinstance(message, EventBacklog):
            for event in sorted(message.events, key=lambda e: e.seq):
                self._new_event(event)
            return
        if isinstance(message, EventMessage):
            self._new_event(message)
            return
        if isinstance(message, Ack):
            waiting = self._waiting.get((message.session or "", message.seq or 0))
            if waiting is not None and not waiting.done():
                waiting.set_result(message)
        elif isinstance(message, RoomState):
            self.state = message
        elif isinstance(message, InterlockTable):
            self.interlocks = message
        elif isinstance(message, Alarms):
            self.alarms = message
        elif isinstance(message, Status):
            self.status = message
        elif isinstance(message, Telemetry):
            if not self.telemetry_gaps.add(message):
                return  # a duplicate or late: counted, not the latest
            self.telemetry = message
        self._hand_on(message)

    def _new_event(self, event: EventMessage) -> None:
        if event.stream != self._stream:
            if self._stream is not None and event.seq > 1 and event.stream < self._stream:
                return  # a backlog of an older run of the service
            self._stream, self._seen, self._max_seq = event.stream, set(), 0
        if event.seq in self._seen:
            return  # a duplicate (resent after a reconnect, or from the backlog)
        self._seen.add(event.seq)
        self._max_seq = max(self._max_seq, event.seq)
        self.events.append(event)
        self._hand_on(event)

    def _hand_on(self, message: Message) -> None:
        for model, callback in self._callbacks:
            if isinstance(message, model):
                callback(message)
        for model, queue in self._streams:
            if isinstance(message, model):
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(message)
