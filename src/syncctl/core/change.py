"""Did anything but time change between two snapshots? (``only_time_moved``)

The controller polls the beam gate about once a millisecond, and most polls return the very
status of the poll before: only the read time has moved. Stepping the core for such a
snapshot can only re-judge what depends on time (ages, timeouts, the heartbeat schedule), so
the controller skips it, and steps at least every ``max_step_interval_s`` for the time-driven
rules (docs/controller.md, *Stepping only on change*). This module decides "nothing but time":
pure, no clock, no I/O, and cheap, because it runs every cycle.

The comparison walks the fields of the snapshot types with ``dataclasses.fields``, so a field
added later is compared by default. Only the fields listed in ``TIME_FIELDS`` are clocks or
read times; every other field must be equal. Anything the walk does not know how to compare
(a type it does not walk, a value that is not a plain scalar) counts as a change.

A time field counts as "only moved" when it holds a finite number of the same type as before
that is not earlier than before (or is None both times). ``None`` against a value, a clock
that went backwards (a device reboot, a uint32 device clock wrapping) or a value that is not
a finite number is a change: those alter what the core concludes without time passing.
"""

from __future__ import annotations

import math
from dataclasses import fields

from syncctl.core.types import (
    BeamGateReading,
    BeamGateStatus,
    ImagingReading,
    ImagingStatus,
    Position,
    Snapshot,
)

TIME_FIELDS: dict[type, frozenset[str]] = {
    BeamGateReading: frozenset({"read_at"}),
    ImagingReading: frozenset({"read_at"}),
    ImagingStatus: frozenset({"device_clock_ms"}),
}
"""The fields that are clocks or read times, per type. Everything else is data: in
particular ``ImagingStatus.frame_timestamp_ms`` (a new frame is a change), the heartbeat
echoes, the counters and ``Snapshot.cycle_overrun``."""

WALKED: tuple[type, ...] = (
    Snapshot, BeamGateReading, ImagingReading, BeamGateStatus, ImagingStatus, Position,
)
"""The types whose fields are walked. A field holding any other dataclass counts as a change
until it is listed here."""

_SCALARS: frozenset[type] = frozenset({bool, int, float, str, type(None)})
"""Compared with ``==`` (so a NaN is never equal to anything: a change)."""

def _fields_of(cls: type) -> tuple[tuple[str, bool], ...]:
    """(name, is a time field) for every field of ``cls``, in declaration order."""
    times = TIME_FIELDS.get(cls, frozenset())
    return tuple((f.name, f.name in times) for f in fields(cls))


_FIELDS: dict[type, tuple[tuple[str, bool], ...]] = {cls: _fields_of(cls) for cls in WALKED}


def _time_moved_only(before: object, after: object) -> bool:
    """A time field: the same numeric type, finite, and not earlier than before (or None
    both times: never read)."""
    if after is None:
        return before is None
    if type(after) is not type(before):
        return False
    if isinstance(after, float) and isinstance(before, float):
        return math.isfinite(after) and before <= after
    if isinstance(after, int) and isinstance(before, int) and not isinstance(after, bool):
        return before <= after
    return False


def _same(before: object, after: object) -> bool:
    """Equal in every field but the time fields, which may only have moved forward."""
    kind = type(before)
    if kind is not type(after):
        return False
    walked = _FIELDS.get(kind)
    if walked is None:
        if kind in _SCALARS:
            return bool(before == after)
        return False  # not known how to compare: a change
    if before is after:  # the very same (frozen) reading: nothing in it changed
        return True
    for name, is_time in walked:
        a = getattr(before, name)
        b = getattr(after, name)
        if is_time:
            if not _time_moved_only(a, b):
                return False
            continue
        field_kind = type(a)
        if field_kind in _SCALARS and field_kind is type(b):
            if a != b:
                return False
        elif not _same(a, b):
            return False
    return True


def only_time_moved(before: Snapshot, after: Snapshot) -> bool:
    """True when ``after`` differs from ``before`` only in its clocks and read times (moving
    forward): stepping the core for it could only re-judge what depends on time."""
    return _same(before, after)
