"""Counting telemetry: the publisher numbers what it produces, a subscriber counts what it missed.

Telemetry goes at QoS 0 and is dropped while the link is down, so a subscriber cannot rely on
any one message. Each carries its publisher's counters instead (``messages.Telemetry``):

- ``stream``: the room service's run (the events' stream id); a new one after a restart;
- ``seq``: every telemetry message produced in that stream, sent or not, from 1 without gaps;
- ``dropped_total``: how many of the messages before this one the publisher could not send.

For two messages ``a`` and ``b`` a subscriber received in a row from one stream,
``b.seq - a.seq - 1`` messages were missed, of which ``b.dropped_total - a.dropped_total``
were never sent; the rest were lost between the publisher and the subscriber (QoS 0 on a link
that failed before the publisher noticed, or while the subscriber itself was disconnected).

``TelemetrySequence`` is the publisher's side (the room service has one per stream);
``TelemetryGaps`` the subscriber's (``BusClient.telemetry_gaps``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from syncctl.bus.bus import Bus
from syncctl.bus.messages import Telemetry

KEEP_STREAMS = 8
"""How many streams a subscriber remembers the last position of (a stream seen again, e.g.
two controllers publishing for one room, goes on from where it was)."""


@dataclass
class TelemetrySequence:
    """The publisher's counters of one stream: ``publish`` numbers the message, hands it to
    the bus and counts it as dropped when the bus did not take it."""

    stream: str
    produced: int = 0
    """Messages produced so far (the ``seq`` of the latest)."""
    dropped_total: int = 0
    """Of those, how many the bus did not take."""

    def publish(self, bus: Bus, **fields: Any) -> bool:
        """Build the next ``Telemetry`` from ``fields`` (everything but the counters) and
        publish it; False when it was dropped (counted in the next message)."""
        self.produced += 1
        try:
            message = Telemetry(stream=self.stream, seq=self.produced,
                                dropped_total=self.dropped_total, **fields)
        except ValueError:
            self.dropped_total += 1  # produced, never sent: the next message says so
            raise
        sent = bus.publish(message)
        if not sent:
            self.dropped_total += 1
        return sent


@dataclass(frozen=True)
class TelemetryGap:
    """Messages one subscriber missed between two it received (or at the start of a new
    stream)."""

    stream: str
    after_seq: int
    """The last message received before the gap (0: the stream's first message was missed)."""
    seq: int
    """The first message received after it."""
    not_sent: int
    """How many of the missed ones the publisher says it never sent."""
    utc: str
    """The publisher's time of the message after the gap."""

    @property
    def size(self) -> int:
        return self.seq - self.after_seq - 1

    @property
    def lost_in_transit(self) -> int:
        return self.size - self.not_sent


@dataclass
class TelemetryGaps:
    """What a subscriber counts of the telemetry it receives (``add`` each valid message).

    The first message ever received sets the start: what came before it was not this
    subscriber's to miss (the publisher's ``dropped_total`` still says what it could not
    send, in ``publisher_dropped_total``). From then on every jump of ``seq`` is a gap; a new
    stream (the room service restarted) is counted in ``restarts`` and its messages before the
    first one received are a gap too (the end of the old stream is not known). A message not
    above the last one of its stream (a duplicate, or late) is counted in ``out_of_order`` and
    not handed on.
    """

    received: int = 0
    """Valid telemetry messages received (out-of-order ones included)."""
    gaps: int = 0
    """Jumps of ``seq``."""
    missing: int = 0
    """Messages missed in all the gaps."""
    largest_gap: int = 0
    not_sent: int = 0
    """Of ``missing``, how many the publisher says it never sent."""
    restarts: int = 0
    """New streams after the first one (the room service restarted)."""
    out_of_order: int = 0
    stream: str | None = None
    """The stream of the latest message."""
    last_seq: int = 0
    publisher_dropped_total: int = 0
    """``dropped_total`` of the latest message: the publisher's own count for its current
    stream, including what it dropped before this subscriber started."""
    last_gap: TelemetryGap | None = None
    _streams: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)
    """stream -> (last seq, its dropped_total), the latest streams only."""

    @property
    def lost_in_transit(self) -> int:
        """Of ``missing``, how many were sent but did not arrive here."""
        return self.missing - self.not_sent

    def add(self, message: Telemetry) -> bool:
        """Count ``message``; False when it is out of order (not newer than the last one of
        its stream): the caller should not treat it as the latest."""
        self.received += 1
        known = self._streams.get(message.stream)
        if known is None:
            if self.stream is None:
                known = (message.seq - 1, message.dropped_total)  # the start: no gap
            else:
                self.restarts += 1
                known = (0, 0)  # a new stream: what came before its first message was missed
        last_seq, last_dropped = known
        if message.seq <= last_seq:
            self.out_of_order += 1
            return False
        size = message.seq - last_seq - 1
        if size > 0:
            not_sent = min(size, max(0, message.dropped_total - last_dropped))
            gap = TelemetryGap(message.stream, last_seq, message.seq, not_sent, message.utc)
            self.gaps += 1
            self.missing += size
            self.largest_gap = max(self.largest_gap, size)
            self.not_sent += gap.not_sent
            self.last_gap = gap
        self._streams.pop(message.stream, None)
        self._streams[message.stream] = (message.seq, message.dropped_total)
        while len(self._streams) > KEEP_STREAMS:
            del self._streams[next(iter(self._streams))]
        self.stream, self.last_seq = message.stream, message.seq
        self.publisher_dropped_total = message.dropped_total
        return True
