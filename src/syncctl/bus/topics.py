"""The topic tree of one room, under the configured prefix (``mqtt.topic_prefix``).

=================================  =====  ======  ===========================================
topic                              QoS    retain  what
=================================  =====  ======  ===========================================
``<prefix>/<room>/status``         1      yes     ``online``/``offline`` (also the last will)
``<prefix>/<room>/state``          1      yes     mode, permits with reasons, plan, dose, mAs
``<prefix>/<room>/interlocks``     1      yes     every rule: active, latched, shelved
``<prefix>/<room>/alarms``         1      yes     active alarms and shelves
``<prefix>/<room>/telemetry``      0      no      frame-rate samples; may be dropped
``<prefix>/<room>/events``         1      no      numbered events, kept until acknowledged
``<prefix>/<room>/events/recent``  1      yes     the latest events, to fill gaps
``<prefix>/<room>/commands``       1      no      command envelopes, inbound
``<prefix>/<room>/acks/<op>``      1      no      the answer to each envelope of operator op
=================================  =====  ======  ===========================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from syncctl.bus.messages import (
    ID_PATTERN,
    Ack,
    Alarms,
    CommandEnvelope,
    EventBacklog,
    EventMessage,
    InterlockTable,
    Message,
    RoomState,
    Status,
    Telemetry,
)

ANONYMOUS = "_anonymous"
"""The ack topic level for a sender that could not be identified (no operator id can start
with an underscore)."""
PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")


class Delivery(Enum):
    """How a bus treats a message when the link is down or slow."""

    RETAINED = "retained"
    """Latest value per topic; re-published after every reconnect."""
    EVENT = "event"
    """Kept in the outbox until the broker acknowledged it; re-sent after a reconnect."""
    TELEMETRY = "telemetry"
    """Dropped when the link is down (the publisher counts it in ``dropped_total``)."""
    TRANSIENT = "transient"
    """Acks and commands: sent while connected, otherwise refused (counted)."""


@dataclass(frozen=True)
class Route:
    topic: str
    qos: int
    retain: bool
    delivery: Delivery


@dataclass(frozen=True)
class Topics:
    prefix: str
    room: str

    def __post_init__(self) -> None:
        if not PREFIX_PATTERN.match(self.prefix):
            raise ValueError(f"topic prefix {self.prefix!r}: letters, digits, _ and - in "
                             "levels separated by /")
        if not re.match(ID_PATTERN, self.room):
            raise ValueError(f"room id {self.room!r} is not a valid topic level")

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.room}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def interlocks(self) -> str:
        return f"{self.base}/interlocks"

    @property
    def alarms(self) -> str:
        return f"{self.base}/alarms"

    @property
    def telemetry(self) -> str:
        return f"{self.base}/telemetry"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def events_recent(self) -> str:
        return f"{self.base}/events/recent"

    @property
    def commands(self) -> str:
        return f"{self.base}/commands"

    def acks(self, operator: str | None) -> str:
        level = operator if operator is not None and re.match(ID_PATTERN, operator) \
            else ANONYMOUS
        return f"{self.base}/acks/{level}"

    @property
    def all_acks(self) -> str:
        return f"{self.base}/acks/+"

    def route(self, message: Message) -> Route:
        """Topic, QoS, retain flag and delivery class of an outbound message."""
        if isinstance(message, RoomState):
            return Route(self.state, 1, True, Delivery.RETAINED)
        if isinstance(message, InterlockTable):
            return Route(self.interlocks, 1, True, Delivery.RETAINED)
        if isinstance(message, Alarms):
            return Route(self.alarms, 1, True, Delivery.RETAINED)
        if isinstance(message, Status):
            return Route(self.status, 1, True, Delivery.RETAINED)
        if isinstance(message, EventBacklog):
            return Route(self.events_recent, 1, True, Delivery.RETAINED)
        if isinstance(message, Telemetry):
            return Route(self.telemetry, 0, False, Delivery.TELEMETRY)
        if isinstance(message, EventMessage):
            return Route(self.events, 1, False, Delivery.EVENT)
        if isinstance(message, Ack):
            return Route(self.acks(message.operator), 1, False, Delivery.TRANSIENT)
        if isinstance(message, CommandEnvelope):
            return Route(self.commands, 1, False, Delivery.TRANSIENT)
        raise TypeError(f"no topic for {type(message).__name__}")


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching (``+`` one level, ``#`` the rest, at the end)."""
    f_levels, t_levels = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return i == len(f_levels) - 1
        if i >= len(t_levels):
            return False
        if level != "+" and level != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)
