"""Domain types of the safety core: device statuses, snapshots, commands and outputs.

Everything here is a frozen dataclass or an Enum. Times are floats in seconds on the
controller's monotonic clock and are always passed in by the caller; the core never reads a
clock. Device quantities keep their engineering units in the field name (``_mm``, ``_mu``...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Mode(Enum):
    """Operational modes (DESIGN.md section 3)."""

    OFFLINE = "OFFLINE"
    SAFE = "SAFE"
    SETUP = "SETUP"
    READY = "READY"
    TREATING = "TREATING"
    HOLD = "HOLD"
    COMPLETE = "COMPLETE"
    FAULT = "FAULT"


class RuleClass(Enum):
    """IEC usage: an interruption may resume; a termination ends the fraction and latches."""

    INTERRUPTION = "interruption"
    TERMINATION = "termination"


class Inhibits(Enum):
    """Which permit a rule denies while it is active."""

    BEAM = "beam"
    XRAY = "xray"


class GateCommand(Enum):
    OPEN = "open"
    CLOSE = "close"


class XrayCommand(Enum):
    EXPOSE = "expose"
    STOP = "stop"


class CommandKind(Enum):
    """Operator commands. Each is a trigger in the mode transition table."""

    SELECT_PLAN = "select_plan"
    START_IMAGING = "start_imaging"
    STOP_IMAGING = "stop_imaging"
    ARM = "arm"
    BEAM_ON = "beam_on"
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    ACKNOWLEDGE = "acknowledge"
    RESET = "reset"


class DeviceAction(Enum):
    """One-shot actions the I/O shell performs on the devices when the core asks."""

    RESET_BEAM_GATE_FAULTS = "reset_beam_gate_faults"
    RESET_IMAGING_FAULTS = "reset_imaging_faults"
    LOAD_DOSE_PRESET = "load_dose_preset"


@dataclass(frozen=True, slots=True)
class Position:
    """A point in room coordinates, millimetres."""

    x_mm: float
    y_mm: float
    z_mm: float


@dataclass(frozen=True, slots=True)
class BeamGateStatus:
    """What the beam-gate controller (BGC) reported in one read of its status block."""

    gate_open_readback: bool
    ready: bool
    spill_active: bool
    chain_ok: bool
    door_closed: bool
    estop_released: bool
    watchdog_tripped: bool
    dose_delivered_mu: float
    """Cumulative monitor units counted by the device since it powered up."""
    dose_preset_mu: float
    """The hardware dose limit the device holds (absolute MU, the same scale as
    ``dose_delivered_mu``), read back in every poll of the status block: what
    LOAD_DOSE_PRESET loaded, or 0 after a power-up (the gate then never opens). IL-032/IL-033
    compare it with the preset the core commanded."""
    fault_code: int
    heartbeat_echo: int


@dataclass(frozen=True, slots=True)
class ImagingStatus:
    """What the X-ray imaging controller (XIC) reported in one read of its status block."""

    prepared: bool
    exposing: bool
    frame_counter: int
    frame_timestamp_ms: int
    """Device clock (ms, uint32, wraps) when the latest frame was acquired."""
    device_clock_ms: int
    """Device clock (ms, uint32, wraps) when the status block was read."""
    target: Position
    tracking_confidence: float
    """0..1; 0 means the tracker has no target."""
    cumulative_mas: float
    """Cumulative tube current-time product since power-up, the imaging dose proxy."""
    fault_code: int
    heartbeat_echo: int


@dataclass(frozen=True, slots=True)
class BeamGateReading:
    """The latest read of the BGC as the I/O shell saw it.

    ``status`` is None when the device was never read successfully. ``healthy`` is False
    whenever the link is down, the last transaction failed, or settings are not verified;
    ``status`` and ``read_at`` then stay those of the last good read. ``read_at`` is the
    controller time of the last good read.

    The core counts an unhealthy reading whose last good read is still fresh as *degraded*
    (the beam waits, IL-030/IL-031) and one older than ``device_stale_s``, or never read, as
    *lost* (termination, IL-001/IL-002).
    """

    status: BeamGateStatus | None
    read_at: float | None
    healthy: bool


@dataclass(frozen=True, slots=True)
class ImagingReading:
    status: ImagingStatus | None
    read_at: float | None
    healthy: bool


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Both devices as seen at one control step."""

    beam_gate: BeamGateReading
    imaging: ImagingReading
    cycle_overrun: bool = False
    """The controller missed its cycle deadline repeatedly (IL-019)."""


NOT_READ = Snapshot(
    beam_gate=BeamGateReading(status=None, read_at=None, healthy=False),
    imaging=ImagingReading(status=None, read_at=None, healthy=False),
)


@dataclass(frozen=True, slots=True)
class Command:
    """An operator command; ``plan_id`` only for SELECT_PLAN."""

    kind: CommandKind
    operator: str = ""
    plan_id: str | None = None


@dataclass(frozen=True, slots=True)
class Permit:
    """A permit decision and the ids of the rules that deny it (empty when granted)."""

    granted: bool
    denied_by: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CommandResult:
    command: Command
    accepted: bool
    reason: str
    """Why it was refused (empty when accepted)."""


class EventKind(Enum):
    MODE_CHANGED = "mode_changed"
    COMMAND_ACCEPTED = "command_accepted"
    COMMAND_REFUSED = "command_refused"
    TRIP = "trip"
    TRIP_CLEARED = "trip_cleared"
    FRACTION_COMPLETE = "fraction_complete"


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    at: float
    message: str
    rule_ids: tuple[str, ...] = ()
    mode_from: Mode | None = None
    mode_to: Mode | None = None


@dataclass(frozen=True, slots=True)
class Alarm:
    """A rule that is active now, or a termination still latched."""

    rule_id: str
    rule_class: RuleClass
    message: str
    latched: bool


@dataclass(frozen=True, slots=True)
class Outputs:
    """Everything one step decides. The shell writes ``gate``, ``xray``, ``heartbeat`` and the
    device actions, publishes the events and alarms, and answers the command."""

    gate: GateCommand
    xray: XrayCommand
    beam_permit: Permit
    xray_permit: Permit
    heartbeat: int | None
    """Value to write to both heartbeat registers this step, or None when none is due."""
    device_actions: tuple[DeviceAction, ...] = ()
    dose_preset_mu: float | None = None
    """Absolute hardware dose limit to load with LOAD_DOSE_PRESET."""
    events: tuple[Event, ...] = ()
    alarms: tuple[Alarm, ...] = ()
    command_result: CommandResult | None = None


@dataclass(frozen=True, slots=True)
class WindowBox:
    """Gating window: a box with half-sizes around the planned target position."""

    half_x_mm: float
    half_y_mm: float
    half_z_mm: float


@dataclass(frozen=True, slots=True)
class WindowSphere:
    radius_mm: float


Window = WindowBox | WindowSphere


@dataclass(frozen=True, slots=True)
class Plan:
    plan_id: str
    planned_dose_mu: float
    target: Position
    """Planned target (marker) position in room coordinates, the window's centre."""


@dataclass(frozen=True, slots=True)
class CoreParams:
    """Everything the core needs from the room configuration, already in core units.

    Built by ``syncctl.config`` from the validated YAML; the core never sees the YAML.
    """

    window: Window
    hysteresis_mm: float
    max_frame_age_s: float
    min_confidence: float
    frames_required_inside: int
    max_jump_mm: float
    imaging_budget_mas: float
    max_hold_s: float
    gate_actuation_timeout_s: float
    xray_actuation_timeout_s: float
    heartbeat_period_s: float
    device_watchdog_timeout_s: float
    device_stale_s: float
    """A device whose last good read is older than this counts as lost (IL-001/IL-002); a
    failed transaction before then only makes it degraded (IL-030/IL-031)."""
    max_time_step_s: float
    """Two steps further apart than this are a clock jump (termination)."""
    dose_tolerance_mu: float
    """Dose beyond plan by more than this is an overdose (termination to FAULT)."""
    dose_preset_tolerance_mu: float = 0.01
    """How far the dose preset read back may lie from the one commanded and still count as
    armed (IL-032/IL-033): one count of the preset registers (their ``scale`` in the
    beam-gate map, 0.01 MU in the shipped one). The write rounds the commanded preset to the
    nearest count, so an honest readback is always within half of it."""
    plans: tuple[Plan, ...] = field(default=())

    def plan(self, plan_id: str) -> Plan | None:
        for candidate in self.plans:
            if candidate.plan_id == plan_id:
                return candidate
        return None
