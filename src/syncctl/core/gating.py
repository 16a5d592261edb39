"""Gating: pure functions over imaging frames.

The gate may open only while the target is confirmed inside the gating window. Hysteresis
works inward, never outward: opening needs ``frames_required_inside`` consecutive new frames
inside the window shrunk by the hysteresis margin (the *inner* window), and an open gate stays
allowed while the target remains inside the window itself (the *outer* boundary). So the
beam is never permitted for a frame whose target lies outside the configured window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from syncctl.core.types import (
    CoreParams,
    ImagingStatus,
    Position,
    Window,
    WindowBox,
    WindowSphere,
)

UINT32 = 1 << 32


def inside_window(target: Position, centre: Position, window: Window, margin_mm: float) -> bool:
    """True when ``target`` is inside ``window`` around ``centre`` shrunk by ``margin_mm``.

    Non-finite coordinates are never inside.
    """
    coordinates = (target.x_mm, target.y_mm, target.z_mm, centre.x_mm, centre.y_mm, centre.z_mm)
    if not all(is_finite_number(v) for v in coordinates):
        return False
    dx = target.x_mm - centre.x_mm
    dy = target.y_mm - centre.y_mm
    dz = target.z_mm - centre.z_mm
    if isinstance(window, WindowBox):
        return (
            abs(dx) <= window.half_x_mm - margin_mm
            and abs(dy) <= window.half_y_mm - margin_mm
            and abs(dz) <= window.half_z_mm - margin_mm
        )
    assert isinstance(window, WindowSphere)
    return math.sqrt(dx * dx + dy * dy + dz * dz) <= window.radius_mm - margin_mm


def distance_mm(a: Position, b: Position) -> float:
    return math.sqrt((a.x_mm - b.x_mm) ** 2 + (a.y_mm - b.y_mm) ** 2 + (a.z_mm - b.z_mm) ** 2)


def frame_age_at_read_ms(status: ImagingStatus) -> int | None:
    """Age of the latest frame when the status block was read, from the device's own clock.

    Both values are uint32 milliseconds that wrap; a difference of more than half the range
    means the frame is stamped in the device's future: contradictory, so None.
    """
    age = (status.device_clock_ms - status.frame_timestamp_ms) % UINT32
    if age >= UINT32 // 2:
        return None
    return age


def is_finite_number(value: object) -> bool:
    """A real number that is finite. Never raises: an int too large for a float, a bool, a
    string or None is simply not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def elapsed(now: float, since: float | None) -> float:
    """Seconds from ``since`` to ``now``; infinite when unknown or when ``since`` is in the
    future (time went backwards), so that every age check fails safe."""
    if since is None or not is_finite_number(since) or since > now:
        return math.inf
    return float(now - since)


def counter_advanced(counter: int, last: int | None) -> bool:
    """True when ``counter`` is ahead of ``last`` (uint32 with wrap). A counter seen for the
    first time has not *advanced*: it may be a frame from before imaging started, or a frozen
    one. A counter that goes backwards has not advanced either."""
    if last is None:
        return False
    step = (counter - last) % UINT32
    return 0 < step < UINT32 // 2


@dataclass(frozen=True, slots=True)
class GatingState:
    """What the core remembers about the frame sequence between steps."""

    last_counter: int | None = None
    counter_changed_at: float | None = None
    """Controller time of the read in which the current frame counter was first seen."""
    last_position: Position | None = None
    consecutive_inside: int = 0
    """New frames in a row inside the inner window (capped)."""
    target_confirmed: bool = False
    """Hysteresis latch: the target is confirmed inside the window."""
    last_frame_jumped: bool = False


GATING_RESET = GatingState()
_COUNT_CAP = 1_000_000


def update_gating(
    gating: GatingState,
    status: ImagingStatus | None,
    read_at: float | None,
    centre: Position | None,
    params: CoreParams,
) -> GatingState:
    """Advance the gating state by one read of the imaging controller.

    ``status`` is None when imaging data are not usable, and ``centre`` is None when no plan
    is selected: in both cases nothing is confirmed. Only a frame with a new counter value
    counts towards the frames required inside; re-reading the same frame changes nothing but
    may still withdraw confirmation (confidence or position are re-checked every read).
    """
    if status is None or read_at is None or not status.exposing:
        # Nothing is confirmed without live imaging; the counter history is kept so that a
        # frozen counter is still recognised when imaging comes back.
        return replace(
            GATING_RESET,
            last_counter=gating.last_counter,
            counter_changed_at=gating.counter_changed_at,
        )
    new_frame = counter_advanced(status.frame_counter, gating.last_counter)
    counter_changed_at = read_at if new_frame else gating.counter_changed_at
    # The highest counter seen: a counter that steps back and forth never looks like it
    # advances. A first sighting is remembered but is not an advance.
    last_counter = (
        status.frame_counter if (new_frame or gating.last_counter is None)
        else gating.last_counter
    )
    if centre is None:
        return GatingState(
            last_counter=last_counter,
            counter_changed_at=counter_changed_at,
            last_position=status.target,
        )

    target = status.target
    jumped = gating.last_frame_jumped
    if new_frame:
        jumped = (
            gating.last_position is not None
            and distance_mm(target, gating.last_position) > params.max_jump_mm
        )
    confident = status.tracking_confidence >= params.min_confidence
    inner = inside_window(target, centre, params.window, params.hysteresis_mm)
    outer = inside_window(target, centre, params.window, 0.0)

    consecutive = gating.consecutive_inside
    if new_frame:
        counts = inner and confident and not jumped
        consecutive = min(consecutive + 1, _COUNT_CAP) if counts else 0
    elif not (inner and confident):
        consecutive = 0

    if gating.target_confirmed:
        confirmed = outer and confident and not jumped
    else:
        confirmed = consecutive >= params.frames_required_inside and inner
    return GatingState(
        last_counter=last_counter,
        counter_changed_at=counter_changed_at,
        last_position=target,
        consecutive_inside=consecutive,
        target_confirmed=confirmed,
        last_frame_jumped=jumped,
    )
