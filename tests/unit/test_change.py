"""syncctl.core.change.only_time_moved: nothing but clocks and read times changed.

The cases are generated from ``dataclasses.fields`` of the snapshot types, so a field added
to any of them is covered (as a change) without editing this file.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import fields, is_dataclass, replace
from typing import Any

import pytest

from syncctl.core import (
    BeamGateReading,
    BeamGateStatus,
    ImagingReading,
    ImagingStatus,
    Position,
    Snapshot,
)
from syncctl.core.change import TIME_FIELDS, WALKED, only_time_moved

BG_STATUS = BeamGateStatus(
    gate_open_readback=False, ready=True, spill_active=True, chain_ok=True, door_closed=True,
    estop_released=True, watchdog_tripped=False, dose_delivered_mu=1.25, dose_preset_mu=11.25,
    fault_code=0, heartbeat_echo=17,
)
XI_STATUS = ImagingStatus(
    prepared=True, exposing=True, frame_counter=40, frame_timestamp_ms=1_000,
    device_clock_ms=1_010, target=Position(1.0, -2.0, 3.0), tracking_confidence=0.9,
    cumulative_mas=2.0, fault_code=0, heartbeat_echo=17,
)
BASE = Snapshot(
    beam_gate=BeamGateReading(BG_STATUS, read_at=10.0, healthy=True),
    imaging=ImagingReading(XI_STATUS, read_at=9.998, healthy=True),
    cycle_overrun=False,
)

# Where each walked type sits in BASE: a getter and a rebuilder.
Path = tuple[str, ...]
PLACES: dict[type, Path] = {
    Snapshot: (),
    BeamGateReading: ("beam_gate",),
    ImagingReading: ("imaging",),
    BeamGateStatus: ("beam_gate", "status"),
    ImagingStatus: ("imaging", "status"),
    Position: ("imaging", "status", "target"),
}


def get(obj: Any, path: Path) -> Any:
    for name in path:
        obj = getattr(obj, name)
    return obj


def put(obj: Any, path: Path, value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    return replace(obj, **{head: put(getattr(obj, head), rest, value)})


def with_field(snapshot: Snapshot, cls: type, name: str, value: Any) -> Snapshot:
    path = PLACES[cls]
    return put(snapshot, path, replace(get(snapshot, path), **{name: value}))  # type: ignore[no-any-return]


def altered(value: Any) -> Any:
    """A different value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.25
    if isinstance(value, str):
        return value + "x"
    if is_dataclass(value) and not isinstance(value, type):
        first = fields(value)[0].name
        return replace(value, **{first: altered(getattr(value, first))})
    raise AssertionError(f"no way to alter {value!r}: extend altered()")


def is_time(cls: type, name: str) -> bool:
    return name in TIME_FIELDS.get(cls, frozenset())


DATA_FIELDS = [(cls, f.name) for cls in PLACES for f in fields(cls) if not is_time(cls, f.name)]
TIME_CASES = [(cls, name) for cls, names in TIME_FIELDS.items() for name in sorted(names)]


def case_id(case: tuple[type, str]) -> str:
    return f"{case[0].__name__}.{case[1]}"


def test_every_walked_type_is_placed_here() -> None:
    assert set(WALKED) == set(PLACES), "place a new walked type in PLACES"


def test_the_time_fields_are_these_and_exist() -> None:
    """The decision, field by field: only the read times and the imaging device's clock."""
    assert {(cls, name) for cls, name in TIME_CASES} == {
        (BeamGateReading, "read_at"), (ImagingReading, "read_at"),
        (ImagingStatus, "device_clock_ms"),
    }
    for cls, name in TIME_CASES:
        assert name in {f.name for f in fields(cls)}, f"{cls.__name__}.{name} is not a field"
    assert not is_time(ImagingStatus, "frame_timestamp_ms"), "a new frame is a change"


def test_equal_snapshots_are_no_change() -> None:
    assert only_time_moved(BASE, BASE)
    copy = Snapshot(
        beam_gate=BeamGateReading(replace(BG_STATUS), 10.0, True),
        imaging=ImagingReading(replace(XI_STATUS, target=Position(1.0, -2.0, 3.0)), 9.998, True),
    )
    assert copy is not BASE and copy.imaging.status is not XI_STATUS
    assert only_time_moved(BASE, copy)


@pytest.mark.parametrize("case", DATA_FIELDS, ids=case_id)
def test_every_data_field_changed_alone_is_a_change(case: tuple[type, str]) -> None:
    cls, name = case
    before = get(BASE, PLACES[cls])
    after = with_field(BASE, cls, name, altered(getattr(before, name)))
    assert after != BASE
    assert not only_time_moved(BASE, after)
    assert not only_time_moved(after, BASE)


@pytest.mark.parametrize("case", TIME_CASES, ids=case_id)
def test_a_time_field_moving_forward_alone_is_no_change(case: tuple[type, str]) -> None:
    cls, name = case
    value = getattr(get(BASE, PLACES[cls]), name)
    later = value + (1 if isinstance(value, int) else 0.004)
    assert only_time_moved(BASE, with_field(BASE, cls, name, later))


@pytest.mark.parametrize("case", TIME_CASES, ids=case_id)
def test_a_time_field_going_back_or_not_a_number_is_a_change(case: tuple[type, str]) -> None:
    """A clock that went backwards (a device reboot, a wrap) or a time that is no number
    changes what the core concludes without time passing."""
    cls, name = case
    value = getattr(get(BASE, PLACES[cls]), name)
    earlier = value - (1 if isinstance(value, int) else 0.004)
    assert not only_time_moved(BASE, with_field(BASE, cls, name, earlier))
    if isinstance(value, float):
        for bad in (math.nan, math.inf):
            assert not only_time_moved(BASE, with_field(BASE, cls, name, bad))
    else:
        assert not only_time_moved(BASE, with_field(BASE, cls, name, float(value + 1)))


NONE_CASES: list[tuple[str, Callable[[Snapshot], Snapshot]]] = [
    ("beam_gate.status", lambda s: with_field(s, BeamGateReading, "status", None)),
    ("beam_gate.read_at", lambda s: with_field(s, BeamGateReading, "read_at", None)),
    ("imaging.status", lambda s: with_field(s, ImagingReading, "status", None)),
    ("imaging.read_at", lambda s: with_field(s, ImagingReading, "read_at", None)),
]


@pytest.mark.parametrize(("name", "to_none"), NONE_CASES, ids=[c[0] for c in NONE_CASES])
def test_none_against_a_value_is_a_change(name: str,
                                          to_none: Callable[[Snapshot], Snapshot]) -> None:
    emptied = to_none(BASE)
    assert not only_time_moved(BASE, emptied)
    assert not only_time_moved(emptied, BASE)
    assert only_time_moved(emptied, to_none(BASE))  # None both times: no change


def test_never_read_to_never_read_is_no_change() -> None:
    from syncctl.core import NOT_READ

    assert only_time_moved(NOT_READ, replace(NOT_READ))


def test_a_nan_in_a_data_field_is_a_change() -> None:
    nan = with_field(BASE, BeamGateStatus, "dose_delivered_mu", math.nan)
    assert not only_time_moved(nan, with_field(BASE, BeamGateStatus, "dose_delivered_mu",
                                               math.nan))


def test_what_it_cannot_compare_is_a_change() -> None:
    """A value of a type the walk does not know (here a list where a number belongs, and an
    int where a bool belongs) counts as a change even when equal."""
    odd = with_field(BASE, BeamGateStatus, "fault_code", [0])
    assert not only_time_moved(odd, with_field(BASE, BeamGateStatus, "fault_code", [0]))
    flag = with_field(BASE, BeamGateStatus, "ready", 1)
    assert not only_time_moved(BASE, flag)


def test_only_time_moving_everywhere_at_once_is_no_change() -> None:
    later = with_field(BASE, BeamGateReading, "read_at", 10.001)
    later = with_field(later, ImagingReading, "read_at", 10.0)
    later = with_field(later, ImagingStatus, "device_clock_ms", 1_012)
    assert only_time_moved(BASE, later)
    assert not only_time_moved(BASE, with_field(later, ImagingStatus, "frame_timestamp_ms",
                                                1_011))
