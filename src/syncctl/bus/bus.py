"""One bus interface, two implementations: in-process (asyncio queues) and MQTT (aiomqtt).

Both sides of a room use the same interface: the room service publishes state, events and
telemetry and subscribes to commands; a console (``BusClient``) publishes command envelopes
and subscribes to the rest. In one process both share one :class:`InProcessBus`; across
machines each has its own :class:`MqttBus` to the broker.

Publishing never blocks and never raises: :meth:`Bus.publish` routes the message
(``Topics.route``), encodes it and hands it over. What happens when the link is down depends
on the delivery class (``Delivery``):

- retained topics keep their latest value and are re-published after every reconnect;
- events go into an outbox and stay there until the broker acknowledged them (QoS 1 PUBACK);
  after a reconnect everything not acknowledged is sent again, in order (a subscriber drops
  duplicates by ``seq``);
- telemetry is dropped while the link is down (``publish`` returns False); its publisher
  counts that in the next messages' ``dropped_total`` (``syncctl.bus.telemetry``);
- acks and commands are sent only while connected (``publish`` returns False otherwise).

A subscription is a bounded queue of ``Received`` (topic and raw payload): the receiver
validates what it reads (``messages.decode``), because a payload is only bytes from the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import yaml

from syncctl.bus.messages import Message, Status, encode
from syncctl.bus.topics import Delivery, Route, Topics, matches
from syncctl.config import RoomConfig

log = logging.getLogger("syncctl.bus")

DEFAULT_QUEUE_SIZE = 1000
DEFAULT_OUTBOX_SIZE = 100_000


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes


@dataclass
class BusStats:
    connects: int = 0
    disconnects: int = 0
    published: int = 0
    """Messages handed to the transport (in-process: delivered; MQTT: sent)."""
    telemetry_dropped: int = 0
    transient_dropped: int = 0
    events_acknowledged: int = 0
    events_resent: int = 0
    events_lost: int = 0
    """Events pushed out of a full outbox (never expected: the outbox holds 100 000)."""
    last_error: str = ""


class Subscription:
    """Messages on one topic filter, in arrival order, at most ``maxsize`` waiting (further
    ones are dropped and counted in ``dropped``). Iterate with ``async for``; ends on close."""

    def __init__(self, bus: Bus, topic_filter: str, maxsize: int) -> None:
        self.bus = bus
        self.topic_filter = topic_filter
        self.maxsize = maxsize
        self.dropped = 0
        self.closed = False
        self.ready = asyncio.Event()
        """Set once the transport confirmed the subscription (MQTT: the broker's SUBACK)."""
        self._queue: asyncio.Queue[Received | None] = asyncio.Queue()

    def offer(self, item: Received) -> bool:
        if self.closed:
            return False
        if self._queue.qsize() >= self.maxsize:
            self.dropped += 1
            return False
        self._queue.put_nowait(item)
        return True

    async def get(self, timeout: float | None = None) -> Received | None:
        """The next message, or None when closed or after ``timeout`` seconds."""
        if self.closed and self._queue.empty():
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    def get_nowait(self) -> Received | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def __aiter__(self) -> AsyncIterator[Received]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Received]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.bus._unsubscribe(self)
            self._queue.put_nowait(None)


class Bus(ABC):
    """The interface both sides use (see the module docstring)."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self.stats = BusStats()
        self._subscriptions: list[Subscription] = []
        self._up = asyncio.Event()
        self._down = asyncio.Event()
        self._down.set()

    # -- connection state ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    def _set_connected(self, connected: bool) -> None:
        if connected and not self._up.is_set():
            self.stats.connects += 1
            self._down.clear()
            self._up.set()
        elif not connected and self._up.is_set():
            self.stats.disconnects += 1
            self._up.clear()
            self._down.set()

    async def wait_connected(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up.wait(), timeout)
        return self.connected

    async def wait_disconnected(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._down.wait(), timeout)
        return not self.connected

    @abstractmethod
    async def start(self) -> None:
        """Begin connecting (returns at once; see ``wait_connected``)."""

    @abstractmethod
    async def close(self, timeout_s: float = 2.0) -> None:
        """Send what is pending (bounded by ``timeout_s``), then disconnect cleanly."""

    # -- publishing ----------------------------------------------------------------------------

    def publish(self, message: Message) -> bool:
        """Route, encode and hand over; never blocks, never raises. False when the message was
        not taken (telemetry or an ack/command while the link is down, or a full queue)."""
        try:
            route = self.topics.route(message)
            if route.delivery is Delivery.TELEMETRY:
                return self._publish_telemetry(route, message)
            return self._send(route, encode(message))
        except Exception:
            log.exception("could not publish %s", type(message).__name__)
            return False

    def _publish_telemetry(self, route: Route, message: Message) -> bool:
        if self.connected and self._send(route, encode(message)):
            return True
        self.stats.telemetry_dropped += 1
        return False

    @abstractmethod
    def _send(self, route: Route, payload: bytes) -> bool: ...

    # -- subscribing ---------------------------------------------------------------------------

    def subscribe(self, topic_filter: str, maxsize: int = DEFAULT_QUEUE_SIZE) -> Subscription:
        sub = Subscription(self, topic_filter, maxsize)
        self._subscriptions.append(sub)
        self._subscribed(sub)
        return sub

    def _subscribed(self, sub: Subscription) -> None:  # noqa: B027 (an optional hook)
        """Hook: the transport starts delivering to ``sub``."""

    def _unsubscribe(self, sub: Subscription) -> None:
        with contextlib.suppress(ValueError):
            self._subscriptions.remove(sub)

    def _dispatch(self, topic: str, payload: bytes) -> None:
        item = Received(topic, payload)
        for sub in list(self._subscriptions):
            if matches(sub.topic_filter, topic):
                sub.offer(item)


class InProcessBus(Bus):
    """Delivery through asyncio queues within one event loop: no broker, always connected
    (until closed). Retained topics behave as on a broker: a new subscription first gets the
    latest retained value of every matching topic. A subscriber whose queue is full loses
    messages (counted in its ``dropped``)."""

    def __init__(self, topics: Topics) -> None:
        super().__init__(topics)
        self._retained: dict[str, bytes] = {}
        self._set_connected(True)

    async def start(self) -> None:
        return None

    async def close(self, timeout_s: float = 2.0) -> None:
        self._set_connected(False)
        for sub in list(self._subscriptions):
            sub.close()

    def _send(self, route: Route, payload: bytes) -> bool:
        if not self.connected:
            if route.delivery is Delivery.TRANSIENT:
                self.stats.transient_dropped += 1
            return False
        if route.retain:
            self._retained[route.topic] = payload
        self._dispatch(route.topic, payload)
        self.stats.published += 1
        if route.delivery is Delivery.EVENT:
            self.stats.events_acknowledged += 1
        return True

    def _subscribed(self, sub: Subscription) -> None:
        sub.ready.set()
        for topic, payload in self._retained.items():
            if matches(sub.topic_filter, topic):
                sub.offer(Received(topic, payload))


# --- MQTT -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MqttSettings:
    """How to reach the broker. ``from_config`` reads the room's ``mqtt:`` section."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    client_id: str | None = None
    keepalive_s: int = 10
    reconnect_min_s: float = 0.05
    reconnect_max_s: float = 5.0
    timeout_s: float = 5.0
    """Connect timeout, and how long a QoS 1 publish waits for the broker's PUBACK."""

    @classmethod
    def from_config(cls, config: RoomConfig, **overrides: Any) -> MqttSettings:
        m = config.room.mqtt
        base = config.path.parent
        username = password = None
        if m.credentials_file is not None:
            username, password = read_credentials(base / m.credentials_file)
        values: dict[str, Any] = {
            "host": m.host, "port": m.port, "username": username, "password": password,
            "tls": m.tls, "ca_file": None if m.ca_file is None else str(base / m.ca_file),
            "client_id": m.client_id, "keepalive_s": m.keepalive_s,
            "reconnect_max_s": m.reconnect_max_s,
        }
        values.update(overrides)
        return cls(**values)

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        return ssl.create_default_context(cafile=self.ca_file)


class CredentialsError(Exception):
    """The MQTT credentials file is missing or malformed (a local error: refuse to start)."""


def read_credentials(path: Path) -> tuple[str, str]:
    """``username`` and ``password`` from a YAML file of exactly those two keys (keep it
    readable only by the account that runs syncctl)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CredentialsError(f"{path}: cannot read the MQTT credentials: {exc.strerror}") \
            from None
    except yaml.YAMLError as exc:
        raise CredentialsError(f"{path}: not valid YAML: {exc}") from None
    if (not isinstance(raw, dict) or set(raw) != {"username", "password"}
            or not all(isinstance(v, str) and v for v in raw.values())):
        raise CredentialsError(f"{path}: expected exactly the keys username and password, "
                               "both non-empty strings")
    return raw["username"], raw["password"]


class MqttBus(Bus):
    """The bus over an MQTT broker with aiomqtt.

    One task keeps the connection: connect, subscribe, re-publish the retained values and the
    unacknowledged events, then send and receive until the link fails; reconnect after
    ``reconnect_min_s``, doubling up to ``reconnect_max_s``. ``will`` (the room service's
    ``Status(controller="offline")``) is the last will, published retained by the broker
    when this client vanishes without disconnecting.
    """

    def __init__(self, topics: Topics, settings: MqttSettings, *, will: Status | None = None,
                 queue_size: int = DEFAULT_QUEUE_SIZE,
                 outbox_size: int = DEFAULT_OUTBOX_SIZE) -> None:
        super().__init__(topics)
        self.settings = settings
        self.will = will
        self.queue_size = queue_size
        self.outbox_size = outbox_size
        self._retained: dict[str, bytes] = {}
        self._retained_dirty: dict[str, None] = {}
        self._outbox: OrderedDict[int, tuple[str, bytes]] = OrderedDict()
        self._outbox_next = 0
        self._inflight: set[int] = set()
        self._transient: deque[tuple[str, bytes, int]] = deque()
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None

    @property
    def outbox_size_now(self) -> int:
        """Events not yet acknowledged by the broker."""
        return len(self._outbox)

    async def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="mqtt-bus")

    async def close(self, timeout_s: float = 2.0) -> None:
        self._closing.set()
        self._wake.set()
        if self._runner is not None:
            try:
                await asyncio.wait_for(self._runner, timeout_s + self.settings.timeout_s)
            except TimeoutError:
                log.error("MQTT bus did not close in time; cancelled")
            except Exception:
                log.exception("MQTT bus ended with an error")
        for sub in list(self._subscriptions):
            sub.close()
        self._set_connected(False)

    # -- handing over (never blocks) -----------------------------------------------------------

    def _send(self, route: Route, payload: bytes) -> bool:
        if route.delivery is Delivery.RETAINED:
            self._retained[route.topic] = payload
            self._retained_dirty[route.topic] = None
        elif route.delivery is Delivery.EVENT:
            if len(self._outbox) >= self.outbox_size:
                key, _ = self._outbox.popitem(last=False)
                self._inflight.discard(key)
                self.stats.events_lost += 1
                log.error("MQTT outbox full: the oldest unacknowledged event was dropped")
            self._outbox[self._outbox_next] = (route.topic, payload)
            self._outbox_next += 1
        else:
            if not self.connected or len(self._transient) >= self.queue_size:
                if route.delivery is Delivery.TRANSIENT:
                    self.stats.transient_dropped += 1
                return False
            self._transient.append((route.topic, payload, route.qos))
        self._wake.set()
        return True

    def _subscribed(self, sub: Subscription) -> None:
        client = self._client
        if client is not None and self.connected:
            self._spawn(self._subscribe_one(client, sub.topic_filter))

    def _unsubscribe(self, sub: Subscription) -> None:
        super()._unsubscribe(sub)
        client = self._client
        still = any(s.topic_filter == sub.topic_filter for s in self._subscriptions)
        if client is not None and self.connected and not still:
            self._spawn(self._unsubscribe_one(client, sub.topic_filter))

    async def _subscribe_one(self, client: aiomqtt.Client, topic_filter: str) -> None:
        await client.subscribe(topic_filter, qos=1, timeout=self.settings.timeout_s)
        for sub in self._subscriptions:
            if sub.topic_filter == topic_filter:
                sub.ready.set()

    async def _unsubscribe_one(self, client: aiomqtt.Client, topic_filter: str) -> None:
        await client.unsubscribe(topic_filter, timeout=self.settings.timeout_s)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.stats.last_error = repr(task.exception())

    # -- the connection ------------------------------------------------------------------------

    def _new_client(self) -> aiomqtt.Client:
        s = self.settings
        will = None
        if self.will is not None:
            route = self.topics.route(self.will)
            will = aiomqtt.Will(route.topic, encode(self.will), qos=1, retain=True)
        return aiomqtt.Client(
            s.host, s.port, username=s.username, password=s.password,
            identifier=s.client_id, will=will, keepalive=s.keepalive_s, timeout=s.timeout_s,
            tls_context=s.tls_context(), logger=logging.getLogger("syncctl.bus.aiomqtt"),
        )

    async def _run(self) -> None:
        delay = self.settings.reconnect_min_s
        while not self._closing.is_set():
            try:
                async with self._new_client() as client:
                    delay = self.settings.reconnect_min_s
                    await self._session(client)
            except (aiomqtt.MqttError, OSError) as exc:
                self.stats.last_error = str(exc)
                log.warning("MQTT %s:%d: %s; reconnecting in %.2f s", self.settings.host,
                            self.settings.port, exc, delay)
            if self._closing.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay)
            delay = min(delay * 2, self.settings.reconnect_max_s)

    async def _session(self, client: aiomqtt.Client) -> None:
        self._client = client
        for topic_filter in dict.fromkeys(s.topic_filter for s in self._subscriptions):
            await self._subscribe_one(client, topic_filter)
        # Everything retained goes out again (the broker may have restarted without it), and
        # every event the broker has not acknowledged.
        for topic in self._retained:
            self._retained_dirty[topic] = None
        self._inflight.clear()
        self.stats.events_resent += len(self._outbox) if self.stats.connects else 0
        self._set_connected(True)
        self._wake.set()
        sender = asyncio.create_task(self._sender(client), name="mqtt-sender")
        receiver = asyncio.create_task(self._receiver(client), name="mqtt-receiver")
        closing = asyncio.create_task(self._closing.wait(), name="mqtt-closing")
        try:
            done, _ = await asyncio.wait({sender, receiver, closing},
                                         return_when=asyncio.FIRST_COMPLETED)
            if closing in done:
                await self._flush()
                return
            for task in done:
                task.result()  # an MqttError from the receiver: the link failed
            raise aiomqtt.MqttError("the MQTT session ended")
        finally:
            self._set_connected(False)
            self._client = None
            for task in (sender, receiver, closing, *self._tasks):
                task.cancel()
            await asyncio.gather(sender, receiver, closing, *self._tasks,
                                 return_exceptions=True)
            self._tasks.clear()
            self._inflight.clear()

    async def _flush(self) -> None:
        """At close: wait (bounded) until everything handed over is sent."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.timeout_s
        while loop.time() < deadline and (self._outbox or self._retained_dirty
                                          or self._transient or self._tasks):
            self._wake.set()
            await asyncio.sleep(0.01)

    async def _receiver(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if isinstance(payload, (bytes, bytearray)):
                data = bytes(payload)
            elif isinstance(payload, str):
                data = payload.encode("utf-8")
            elif payload is None:
                data = b""
            else:
                data = str(payload).encode("utf-8")
            self._dispatch(message.topic.value, data)

    async def _sender(self, client: aiomqtt.Client) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            for topic in list(self._retained_dirty):
                del self._retained_dirty[topic]
                self._spawn(self._publish_retained(client, topic, self._retained[topic]))
            for key, (topic, payload) in list(self._outbox.items()):
                if key not in self._inflight:
                    self._inflight.add(key)
                    self._spawn(self._publish_event(client, key, topic, payload))
            while self._transient:
                topic, payload, qos = self._transient.popleft()
                self._spawn(self._publish_transient(client, topic, payload, qos))

    async def _publish_retained(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        try:
            await client.publish(topic, payload, qos=1, retain=True,
                                 timeout=self.settings.timeout_s)
            self.stats.published += 1
        except aiomqtt.MqttError:
            if self._retained.get(topic) is payload:
                self._retained_dirty[topic] = None  # try again (after a reconnect at least)
            raise

    async def _publish_event(self, client: aiomqtt.Client, key: int, topic: str,
                             payload: bytes) -> None:
        try:
            await client.publish(topic, payload, qos=1, timeout=self.settings.timeout_s)
        except aiomqtt.MqttError:
            self._wake.set()  # still in the outbox: sent again (in this session or the next)
            raise
        finally:
            self._inflight.discard(key)
        if self._outbox.pop(key, None) is not None:
            self.stats.events_acknowledged += 1
            self.stats.published += 1

    async def _publish_transient(self, client: aiomqtt.Client, topic: str, payload: bytes,
                                 qos: int) -> None:
        await client.publish(topic, payload, qos=qos, timeout=self.settings.timeout_s)
        self.stats.published += 1
