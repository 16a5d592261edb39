"""The core's memory between steps, and what one step observes of the devices."""

from __future__ import annotations

import math
from dataclasses import dataclass

from syncctl.core.gating import (
    GATING_RESET,
    GatingState,
    elapsed,
    frame_age_at_read_ms,
    is_finite_number,
)
from syncctl.core.types import (
    BeamGateReading,
    BeamGateStatus,
    CoreParams,
    GateCommand,
    ImagingReading,
    ImagingStatus,
    Mode,
    Plan,
    Position,
    XrayCommand,
)

UINT16 = 1 << 16
UINT32 = 1 << 32
POSITION_LIMIT_MM = 10_000.0
"""Any tracked coordinate beyond 10 m from the room origin is out of range."""


@dataclass(frozen=True, slots=True)
class ActivePlan:
    """The selected plan, the device counters when it was selected, and the hardware dose
    preset the core commanded for it.

    ``dose_preset_mu`` is the absolute limit sent with LOAD_DOSE_PRESET at selection
    (``dose_baseline_mu`` + planned). ``preset_armed`` turns True at the first step after the
    selection whose beam-gate reading holds that preset (within
    ``CoreParams.dose_preset_tolerance_mu``) and stays True for the rest of the fraction:
    before it the beam waits (IL-032); after it a readback that differs means the device was
    reset or reprogrammed behind the core's back (IL-033, termination). Both go with the plan:
    a new selection commands, and must confirm, its own preset.
    """

    plan: Plan
    dose_baseline_mu: float
    mas_baseline: float
    dose_preset_mu: float
    preset_armed: bool = False


@dataclass(frozen=True, slots=True)
class CoreState:
    params: CoreParams
    mode: Mode = Mode.OFFLINE
    mode_since: float = 0.0
    plan: ActivePlan | None = None
    imaging_requested: bool = False
    gate: GateCommand = GateCommand.CLOSE
    gate_changed_at: float = 0.0
    xray: XrayCommand = XrayCommand.STOP
    xray_changed_at: float = 0.0
    gating: GatingState = GATING_RESET
    latched: frozenset[str] = frozenset()
    """Terminations that tripped the fraction (non-empty only in FAULT)."""
    acknowledged: frozenset[str] = frozenset()
    last_now: float | None = None
    beam_denied_since: float | None = None
    heartbeat: int = 0
    heartbeat_sent_at: float | None = None
    heartbeats_sent: tuple[tuple[int, float], ...] = ()
    """The most recent heartbeat values with the time each was decided (newest last): an echo
    proves the device received that value, so its watchdog was fed no earlier than then."""
    beam_gate_echo_ok_at: float | None = None
    imaging_echo_ok_at: float | None = None
    last_dose_mu: float | None = None
    last_mas: float | None = None


def initial_state(params: CoreParams, now: float) -> CoreState:
    """The state of a freshly started controller: OFFLINE, gate closed, X-ray stopped."""
    return CoreState(params=params, mode_since=now, gate_changed_at=now, xray_changed_at=now)


@dataclass(frozen=True, slots=True)
class Observation:
    """What one step makes of the snapshot, independent of mode and plan.

    ``beam_gate``/``imaging`` hold a status only when it is usable: read, fresh and valid.
    Otherwise exactly one of ``*_lost`` or ``*_invalid`` says why.

    ``*_degraded``: the reading is present and fresh but not healthy (the last transaction
    failed, or the session's settings are not verified yet). Its status is the last good one
    and stays usable for every rule that reads values; only the beam waits (IL-030/IL-031).
    """

    now: float
    clock_fault: bool
    cycle_overrun: bool
    beam_gate: BeamGateStatus | None
    beam_gate_read_at: float | None
    beam_gate_lost: bool
    beam_gate_degraded: bool
    beam_gate_invalid: str
    imaging: ImagingStatus | None
    imaging_read_at: float | None
    imaging_lost: bool
    imaging_degraded: bool
    imaging_invalid: str
    frame_age_s: float


def _finite_nonneg(value: float) -> bool:
    return is_finite_number(value) and value >= 0


def _in_range(value: int, size: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < size


def _flags_are_bools(status: object, names: tuple[str, ...]) -> str:
    for name in names:
        if not isinstance(getattr(status, name, None), bool):
            return f"{name}={getattr(status, name, None)!r} is not a boolean"
    return ""


def beam_gate_problem(status: BeamGateStatus, last_dose_mu: float | None) -> str:
    """Why a BGC status cannot be trusted, or "" when it can."""
    flags = _flags_are_bools(status, (
        "gate_open_readback", "ready", "spill_active", "chain_ok", "door_closed",
        "estop_released", "watchdog_tripped"))
    if flags:
        return flags
    if not _finite_nonneg(status.dose_delivered_mu):
        return f"dose_delivered_mu={status.dose_delivered_mu!r} is not a finite count >= 0"
    if last_dose_mu is not None and status.dose_delivered_mu < last_dose_mu:
        return (
            f"dose counter went backwards ({last_dose_mu} -> {status.dose_delivered_mu} MU):"
            " device reset or corrupt read"
        )
    if not _finite_nonneg(status.dose_preset_mu):
        return f"dose_preset_mu={status.dose_preset_mu!r} is not a finite limit >= 0"
    if not _in_range(status.fault_code, UINT16):
        return f"fault_code={status.fault_code!r} outside 0..65535"
    if not _in_range(status.heartbeat_echo, UINT16):
        return f"heartbeat_echo={status.heartbeat_echo!r} outside 0..65535"
    return ""


def imaging_problem(status: ImagingStatus, last_mas: float | None) -> str:
    """Why an XIC status cannot be trusted, or "" when it can."""
    flags = _flags_are_bools(status, ("prepared", "exposing"))
    if flags:
        return flags
    if not isinstance(status.target, Position):
        return f"target={status.target!r} is not a position"
    if not _in_range(status.frame_counter, UINT32):
        return f"frame_counter={status.frame_counter!r} outside 0..2^32-1"
    if not _in_range(status.frame_timestamp_ms, UINT32) or not _in_range(
        status.device_clock_ms, UINT32
    ):
        return "frame timestamp or device clock outside 0..2^32-1"
    if frame_age_at_read_ms(status) is None:
        return "frame is stamped later than the device clock"
    for axis, value in (
        ("x", status.target.x_mm),
        ("y", status.target.y_mm),
        ("z", status.target.z_mm),
    ):
        if not (is_finite_number(value) and abs(value) <= POSITION_LIMIT_MM):
            return f"target {axis}={value!r} mm is not a finite position within 10 m"
    confidence = status.tracking_confidence
    if not (is_finite_number(confidence) and 0.0 <= confidence <= 1.0):
        return f"tracking_confidence={confidence!r} outside 0..1"
    if not _finite_nonneg(status.cumulative_mas):
        return f"cumulative_mas={status.cumulative_mas!r} is not a finite count >= 0"
    if last_mas is not None and status.cumulative_mas < last_mas:
        return f"mAs counter went backwards ({last_mas} -> {status.cumulative_mas})"
    if status.exposing and not status.prepared:
        return "exposing while not prepared"
    if not _in_range(status.fault_code, UINT16):
        return f"fault_code={status.fault_code!r} outside 0..65535"
    if not _in_range(status.heartbeat_echo, UINT16):
        return f"heartbeat_echo={status.heartbeat_echo!r} outside 0..65535"
    return ""


def _reading_lost(has_status: bool, read_at: float | None, now: float, stale_s: float) -> bool:
    """Lost (IL-001/IL-002): never read, no read time, or the last good read is older than
    ``stale_s`` (or stamped in the future, which ``elapsed`` makes infinitely old). A failed
    transaction alone is not a loss: that reading is *degraded* until it goes stale."""
    if not has_status or read_at is None:
        return True
    return elapsed(now, read_at) > stale_s


def observe(
    state: CoreState,
    beam_gate: BeamGateReading,
    imaging: ImagingReading,
    now: float,
    clock_fault: bool,
    cycle_overrun: bool = False,
) -> Observation:
    params = state.params
    bg_lost = _reading_lost(
        beam_gate.status is not None, beam_gate.read_at, now, params.device_stale_s
    )
    bg_problem = ""
    if not bg_lost and beam_gate.status is not None:
        bg_problem = beam_gate_problem(beam_gate.status, state.last_dose_mu)
    xi_lost = _reading_lost(
        imaging.status is not None, imaging.read_at, now, params.device_stale_s
    )
    xi_problem = ""
    if not xi_lost and imaging.status is not None:
        xi_problem = imaging_problem(imaging.status, state.last_mas)

    bg_usable = None if (bg_lost or bg_problem) else beam_gate.status
    xi_usable = None if (xi_lost or xi_problem) else imaging.status
    frame_age_s = math.inf
    if xi_usable is not None and imaging.read_at is not None:
        at_read = frame_age_at_read_ms(xi_usable)
        if at_read is not None:
            frame_age_s = at_read / 1000.0 + elapsed(now, imaging.read_at)
    return Observation(
        now=now,
        clock_fault=clock_fault,
        cycle_overrun=cycle_overrun,
        beam_gate=bg_usable,
        beam_gate_read_at=beam_gate.read_at,
        beam_gate_lost=bg_lost,
        beam_gate_degraded=not bg_lost and beam_gate.healthy is not True,
        beam_gate_invalid=bg_problem,
        imaging=xi_usable,
        imaging_read_at=imaging.read_at,
        imaging_lost=xi_lost,
        imaging_degraded=not xi_lost and imaging.healthy is not True,
        imaging_invalid=xi_problem,
        frame_age_s=frame_age_s,
    )
