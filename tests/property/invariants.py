"""The safety invariants of the core, each a named checker, and the observer they share.

Every checker has the same signature::

    check(prev, snapshot, command, now, new, out, hist) -> str | None

``prev``/``new`` are the core's state before and after one ``step``; ``snapshot``, ``command``
and ``now`` its inputs; ``out`` its outputs; ``hist`` the :class:`History` of everything
observed *before* this step. A checker returns a violation message, or None.

**Independence.** The oracle recomputes every condition from the raw inputs and from its
own history: it never calls the core's rule predicates, its gating or validation functions,
``observe``, ``next_mode`` or the ``transitions`` machine. What it takes from the core is
only what the core *claims* (the new mode, the commands, the events, the permits), and those
claims are what is being checked. The conditions follow DESIGN.md section 3 and the brief
(`docs/safety-invariants.md`), not the code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from syncctl.core import (
    RULES,
    BeamGateReading,
    BeamGateStatus,
    Command,
    CommandKind,
    CoreParams,
    CoreState,
    EventKind,
    GateCommand,
    ImagingReading,
    ImagingStatus,
    Mode,
    Outputs,
    Plan,
    Position,
    Snapshot,
    WindowBox,
    WindowSphere,
    XrayCommand,
)

UINT16 = 1 << 16
UINT32 = 1 << 32
POSITION_LIMIT_MM = 10_000.0
RULE_IDS = frozenset(r.rule_id for r in RULES)

IMAGING_MODES = frozenset({Mode.SETUP, Mode.READY, Mode.TREATING, Mode.HOLD})
ARMED_MODES = frozenset({Mode.SETUP, Mode.READY, Mode.TREATING, Mode.HOLD})
"""A plan is selected and the fraction can still go on to beam: its hardware dose preset must
be armed (docs/core.md, "The hardware dose preset")."""
FRACTION_MODES = frozenset({Mode.SETUP, Mode.READY, Mode.TREATING, Mode.HOLD, Mode.COMPLETE})
DELIVERY_MODES = frozenset({Mode.TREATING, Mode.HOLD})
IDLE_MODES = frozenset({Mode.OFFLINE, Mode.SAFE})

# The mode graph, written down from DESIGN.md section 3 and the project's decisions, not
# read from the code (tests/property/test_every_mode_input.py checks it against the table).
ALLOWED_EDGES: frozenset[tuple[Mode, Mode]] = frozenset(
    {
        (Mode.OFFLINE, Mode.SAFE),  # both devices online
        (Mode.SAFE, Mode.SETUP),  # select plan
        (Mode.SETUP, Mode.READY),  # arm
        (Mode.READY, Mode.TREATING),  # beam on
        (Mode.TREATING, Mode.HOLD),  # pause
        (Mode.HOLD, Mode.TREATING),  # resume
        (Mode.TREATING, Mode.COMPLETE),  # planned dose reached
        (Mode.HOLD, Mode.COMPLETE),
        (Mode.COMPLETE, Mode.SAFE),  # acknowledge
        (Mode.FAULT, Mode.SAFE),  # reset
    }
    | {(m, Mode.SAFE) for m in (Mode.SETUP, Mode.READY, Mode.TREATING, Mode.HOLD)}  # abort
    | {(m, Mode.FAULT) for m in FRACTION_MODES}  # trip
)

RESTART_AFTER_TRIP = (
    CommandKind.ACKNOWLEDGE,
    CommandKind.RESET,
    CommandKind.SELECT_PLAN,
    CommandKind.ARM,
    CommandKind.BEAM_ON,
)
RESTART_AFTER_END = (CommandKind.SELECT_PLAN, CommandKind.ARM, CommandKind.BEAM_ON)

ORACLE_DOSE_EPSILON_MU = 1e-6
"""The oracle's own copy of the specified dose comparison tolerance."""


def elapsed(now: float, since: float | None) -> float:
    """The oracle's own age: unknown or future ``since`` reads as infinitely old."""
    if since is None or not math.isfinite(since) or not math.isfinite(now) or since > now:
        return math.inf
    return now - since


def _is_num(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _finite(v: object) -> bool:
    if not _is_num(v):
        return False
    try:
        return math.isfinite(v)  # type: ignore[arg-type]
    except OverflowError:
        return False


def _uint(v: object, size: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < size


def within_window(target: Position, centre: Position, params: CoreParams) -> bool:
    """Target inside the configured window (the outer boundary, no hysteresis)."""
    coords = (target.x_mm, target.y_mm, target.z_mm, centre.x_mm, centre.y_mm, centre.z_mm)
    if not all(_finite(c) for c in coords):
        return False
    dx, dy, dz = (target.x_mm - centre.x_mm, target.y_mm - centre.y_mm,
                  target.z_mm - centre.z_mm)
    w = params.window
    if isinstance(w, WindowBox):
        return abs(dx) <= w.half_x_mm and abs(dy) <= w.half_y_mm and abs(dz) <= w.half_z_mm
    assert isinstance(w, WindowSphere)
    return math.sqrt(dx * dx + dy * dy + dz * dz) <= w.radius_mm


def _distance(a: Position, b: Position) -> float:
    dx, dy, dz = a.x_mm - b.x_mm, a.y_mm - b.y_mm, a.z_mm - b.z_mm
    return math.sqrt(dx * dx + dy * dy + dz * dz)


def bad_values(snapshot: Snapshot) -> list[str]:
    """Every value in either raw status that cannot be classified: NaN, inf, negative,
    out-of-range, or contradictory (exposing unprepared, frame stamped in the future)."""
    found: list[str] = []
    bg = snapshot.beam_gate.status
    if bg is not None:
        if not (_finite(bg.dose_delivered_mu) and bg.dose_delivered_mu >= 0):
            found.append(f"beam_gate.dose_delivered_mu={bg.dose_delivered_mu!r}")
        if not (_finite(bg.dose_preset_mu) and bg.dose_preset_mu >= 0):
            found.append(f"beam_gate.dose_preset_mu={bg.dose_preset_mu!r}")
        for name in ("fault_code", "heartbeat_echo"):
            if not _uint(getattr(bg, name), UINT16):
                found.append(f"beam_gate.{name}={getattr(bg, name)!r}")
    xi = snapshot.imaging.status
    if xi is not None:
        for name in ("frame_counter", "frame_timestamp_ms", "device_clock_ms"):
            if not _uint(getattr(xi, name), UINT32):
                found.append(f"imaging.{name}={getattr(xi, name)!r}")
        if (
            _uint(xi.frame_timestamp_ms, UINT32)
            and _uint(xi.device_clock_ms, UINT32)
            and (xi.device_clock_ms - xi.frame_timestamp_ms) % UINT32 >= UINT32 // 2
        ):
            found.append("imaging frame stamped later than the device clock")
        for axis in ("x_mm", "y_mm", "z_mm"):
            v = getattr(xi.target, axis, None)
            if not (_finite(v) and abs(v) <= POSITION_LIMIT_MM):  # type: ignore[operator]
                found.append(f"imaging.target.{axis}={v!r}")
        c = xi.tracking_confidence
        if not (_finite(c) and 0.0 <= c <= 1.0):
            found.append(f"imaging.tracking_confidence={c!r}")
        if not (_finite(xi.cumulative_mas) and xi.cumulative_mas >= 0):
            found.append(f"imaging.cumulative_mas={xi.cumulative_mas!r}")
        if xi.exposing and not xi.prepared:
            found.append("imaging exposing while not prepared")
        for name in ("fault_code", "heartbeat_echo"):
            if not _uint(getattr(xi, name), UINT16):
                found.append(f"imaging.{name}={getattr(xi, name)!r}")
    return found


def _lost(reading: BeamGateReading | ImagingReading, now: float, stale_s: float) -> str:
    """Why a reading counts as a lost device, or "". A failed transaction alone (unhealthy,
    the last good status and read time kept) is not a loss: see :func:`_degraded`."""
    if reading.status is None:
        return "not read"
    if reading.read_at is None:
        return "no read time"
    age = elapsed(now, reading.read_at)
    if age > stale_s:
        return f"reading {age} s old"
    return ""


def _degraded(reading: BeamGateReading | ImagingReading, now: float, stale_s: float) -> str:
    """Why a reading that is not lost still may not carry the beam, or "": its last
    transaction failed or its session is not verified (``healthy`` is not True)."""
    if _lost(reading, now, stale_s) or reading.healthy is True:
        return ""
    return f"healthy={reading.healthy!r}, last good read at {reading.read_at}"


def _taken_after(read_at: float | None, since: float, timeout_s: float) -> bool:
    """A reading taken more than ``timeout_s`` after the command changed at ``since``: only
    such a reading can show that an actuator failed to follow. A change at an unknown
    (non-finite) time is judged by any reading."""
    if read_at is None or not _finite(read_at):
        return False
    if not _finite(since):
        return True
    return read_at - since > timeout_s


@dataclass(frozen=True)
class PlanRecord:
    plan: Plan
    dose_baseline: float
    mas_baseline: float

    @property
    def dose_preset(self) -> float:
        """The hardware dose limit this plan needs: absolute, baseline + planned."""
        return self.dose_baseline + self.plan.planned_dose_mu


def preset_read_back(bg: BeamGateStatus | None, plan: PlanRecord | None,
                     params: CoreParams) -> bool:
    """The beam gate reads back the plan's dose preset, within one count of its register."""
    if bg is None or plan is None or not (_finite(bg.dose_preset_mu)
                                          and _finite(plan.dose_preset)):
        return False
    return abs(bg.dose_preset_mu - plan.dose_preset) <= params.dose_preset_tolerance_mu


@dataclass(frozen=True)
class Facts:
    """The oracle's view of one step *before* the command: recomputed from raw inputs."""

    now: float
    """The time the core must compute with: ``now``, or +inf when it is not finite."""
    clock_fault: str
    bg_lost: str
    xi_lost: str
    bg_degraded: str
    xi_degraded: str
    bg_invalid: str
    xi_invalid: str
    bg: BeamGateStatus | None
    """The beam-gate status when usable (read, fresh, valid; healthy or degraded)."""
    xi: ImagingStatus | None
    bg_read_at: float | None
    xi_read_at: float | None
    frame_age_s: float
    counter: int | None
    counter_advanced_at: float | None
    frozen: bool
    stale: bool
    jump: bool
    bg_echo_ok_at: float | None
    xi_echo_ok_at: float | None
    preset_armed: bool
    """The active plan's dose preset has been read back (this step included) since it was
    selected."""
    terminations: dict[str, str]
    """Termination conditions present, by rule id (spec ids), with the reason."""
    degraded: dict[str, str]
    """Degraded devices (interruptions that hold the beam only), by rule id, with the
    reason: IL-030 beam gate, IL-031 imaging."""
    bad_values: list[str]


@dataclass(frozen=True)
class Post:
    """The oracle's view *after* the command: the operator's requests as accepted."""

    plan: PlanRecord | None
    """The last selected plan (including one selected in this step)."""
    imaging_requested: bool
    fraction_dose: float | None
    fraction_mas: float | None
    trip_progress: int | None
    end_progress: int


@dataclass
class History:
    """Everything the observer has seen before the current step."""

    params: CoreParams
    t0: float
    last_now: float | None = None
    heartbeat: int = 0
    gate: GateCommand = GateCommand.CLOSE
    gate_changed_at: float = 0.0
    xray: XrayCommand = XrayCommand.STOP
    xray_changed_at: float = 0.0
    bg_echo_ok_at: float | None = None
    xi_echo_ok_at: float | None = None
    sent: tuple[tuple[int, float], ...] = ()
    """(heartbeat value, time the core decided it) of the last 64 heartbeats."""
    last_dose: float | None = None
    last_mas: float | None = None
    counter: int | None = None
    counter_advanced_at: float | None = None
    prev_read: tuple[int, Position] | None = None
    plan: PlanRecord | None = None
    plan_active: bool = False
    preset_armed: bool = False
    """The active plan's dose preset was read back (in a step after its selection)."""
    mode: Mode = Mode.OFFLINE
    """The mode the core claimed after the previous step (the oracle does not re-derive the
    mode machine; INV-10 checks those claims)."""
    imaging_requested: bool = False
    trip_progress: int | None = None
    """None before any trip; then how far RESTART_AFTER_TRIP has been accepted."""
    end_progress: int = 0
    """How far RESTART_AFTER_END has been accepted since the start or the last fraction end."""
    held_since: float | None = None
    mode_was_delivery: bool = False
    """The mode after the previous step was TREATING or HOLD."""
    steps: int = 0
    replay: Callable[[], tuple[CoreState, Outputs]] | None = None
    """Set by the driver: runs the same step again (for the determinism invariant)."""
    _facts: tuple[Snapshot, Facts] | None = field(default=None, repr=False)
    _post: tuple[Outputs, Post] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.gate_changed_at = self.t0
        self.xray_changed_at = self.t0

    # -- the oracle, before the command ------------------------------------------------------

    def facts(self, snapshot: Snapshot, now: float) -> Facts:
        # Cached by identity while holding the snapshot itself: an id() alone may be reused by
        # a new object once the old one is freed, which handed back another step's facts and
        # made the runs depend on what ran before in the same process.
        if self._facts is not None and self._facts[0] is snapshot:
            return self._facts[1]
        f = self._compute_facts(snapshot, now)
        self._facts = (snapshot, f)
        return f

    def _compute_facts(self, snapshot: Snapshot, now: float) -> Facts:
        p = self.params
        finite_now = _finite(now)
        now_eff = float(now) if finite_now else math.inf
        clock_fault = ""
        if not finite_now:
            clock_fault = f"now={now!r} is not finite"
        elif self.last_now is not None and now < self.last_now:
            clock_fault = f"now={now} before the previous {self.last_now}"
        elif self.last_now is not None and now - self.last_now > p.max_time_step_s:
            clock_fault = f"now={now} jumped {now - self.last_now} s"

        bg_r, xi_r = snapshot.beam_gate, snapshot.imaging
        bg_lost = _lost(bg_r, now_eff, p.device_stale_s)
        xi_lost = _lost(xi_r, now_eff, p.device_stale_s)
        degraded: dict[str, str] = {}
        bg_degraded = _degraded(bg_r, now_eff, p.device_stale_s)
        xi_degraded = _degraded(xi_r, now_eff, p.device_stale_s)
        if bg_degraded:
            degraded["IL-030"] = bg_degraded
        if xi_degraded:
            degraded["IL-031"] = xi_degraded
        bg_invalid = "" if bg_lost else self._bg_invalid(bg_r.status)
        xi_invalid = "" if xi_lost else self._xi_invalid(xi_r.status)
        bg = bg_r.status if not (bg_lost or bg_invalid) else None
        xi = xi_r.status if not (xi_lost or xi_invalid) else None
        assert bg is None or isinstance(bg, BeamGateStatus)
        assert xi is None or isinstance(xi, ImagingStatus)

        frame_age = math.inf
        counter, advanced_at = self.counter, self.counter_advanced_at
        jump = False
        if xi is not None and xi_r.read_at is not None:
            frame_age = ((xi.device_clock_ms - xi.frame_timestamp_ms) % UINT32) / 1000.0 + (
                elapsed(now_eff, xi_r.read_at)
            )
            if xi.exposing and not clock_fault:
                # An advance is a change *seen*: forward (mod 2^32) from the previous
                # exposing read. The first value ever seen, a repeat, or a step backwards
                # is not one: an unknown history counts as frozen (anything unknown denies).
                if counter is not None and 0 < (xi.frame_counter - counter) % UINT32 < UINT32 // 2:
                    advanced_at = xi_r.read_at
                if (
                    self.prev_read is not None
                    and xi.frame_counter != self.prev_read[0]
                    and _distance(xi.target, self.prev_read[1]) > p.max_jump_mm
                ):
                    jump = True
                counter = xi.frame_counter
        frozen = xi is not None and elapsed(now_eff, advanced_at) > p.max_frame_age_s
        stale = xi is not None and frame_age > p.max_frame_age_s

        def echo_ok(status: BeamGateStatus | ImagingStatus | None,
                    before: float | None) -> float | None:
            # An echo of any recent heartbeat proves the device was fed when it was sent.
            if status is None:
                return before
            sent_at = [at for value, at in self.sent if value == status.heartbeat_echo]
            if not sent_at:
                return before
            newest = sent_at[-1]
            return newest if before is None or newest > before else before

        bg_echo = echo_ok(bg, self.bg_echo_ok_at)
        xi_echo = echo_ok(xi, self.xi_echo_ok_at)

        t: dict[str, str] = {}
        if bg_lost:
            t["IL-001"] = bg_lost
        if xi_lost:
            t["IL-002"] = xi_lost
        if bg_invalid:
            t["IL-003"] = bg_invalid
        if xi_invalid:
            t["IL-004"] = xi_invalid
        if bg is not None:
            if not bg.estop_released:
                t["IL-005"] = "e-stop"
            if not bg.door_closed:
                t["IL-006"] = "door open"
            if not bg.chain_ok:
                t["IL-007"] = "chain open"
            if bg.watchdog_tripped or bg.fault_code != 0:
                t["IL-008"] = f"beam-gate fault {bg.fault_code} wd={bg.watchdog_tripped}"
            if (
                bg.gate_open_readback
                and self.gate is GateCommand.CLOSE
                and _taken_after(bg_r.read_at, self.gate_changed_at, p.gate_actuation_timeout_s)
            ):
                t["IL-010"] = "gate reads open while commanded closed"
            if elapsed(now_eff, bg_echo) > p.device_watchdog_timeout_s:
                t["IL-012"] = "beam-gate heartbeat not echoed"
        if xi is not None:
            if xi.fault_code != 0:
                t["IL-009"] = f"imaging fault {xi.fault_code}"
            if (
                xi.exposing
                and self.xray is XrayCommand.STOP
                and _taken_after(xi_r.read_at, self.xray_changed_at, p.xray_actuation_timeout_s)
            ):
                t["IL-011"] = "exposing while commanded to stop"
            if elapsed(now_eff, xi_echo) > p.device_watchdog_timeout_s:
                t["IL-013"] = "imaging heartbeat not echoed"
        plan = self.plan if self.plan_active else None
        matches = preset_read_back(bg, plan, p)
        if (plan is not None and bg is not None and self.preset_armed and not matches
                and self.mode in ARMED_MODES):
            t["IL-033"] = (f"dose preset reads {bg.dose_preset_mu}, armed at "
                           f"{plan.dose_preset} in this fraction")
        if plan is not None and bg is not None:
            dose = bg.dose_delivered_mu - plan.dose_baseline
            # The specification compares doses to within 1e-6 MU (a fraction dose is the
            # difference of two decoded counter readings; docs/core.md, IL-014).
            if dose >= plan.plan.planned_dose_mu - ORACLE_DOSE_EPSILON_MU:
                t["IL-014"] = f"fraction dose {dose} >= {plan.plan.planned_dose_mu}"
            if dose > plan.plan.planned_dose_mu + p.dose_tolerance_mu:
                t["IL-015"] = f"fraction dose {dose} beyond plan + tolerance"
        if plan is not None and xi is not None:
            mas = xi.cumulative_mas - plan.mas_baseline
            if mas >= p.imaging_budget_mas:
                t["IL-016"] = f"fraction mAs {mas} >= budget {p.imaging_budget_mas}"
        if (
            self.held_since is not None
            and self.mode_was_delivery
            and elapsed(now_eff, self.held_since) > p.max_hold_s
        ):
            t["IL-017"] = f"held since {self.held_since}"
        if clock_fault:
            t["IL-018"] = clock_fault
        if snapshot.cycle_overrun:
            t["IL-019"] = "controller cycle overruns reported"
        return Facts(
            now=now_eff,
            clock_fault=clock_fault,
            bg_lost=bg_lost,
            xi_lost=xi_lost,
            bg_degraded=bg_degraded,
            xi_degraded=xi_degraded,
            bg_invalid=bg_invalid,
            xi_invalid=xi_invalid,
            bg=bg,
            xi=xi,
            bg_read_at=bg_r.read_at,
            xi_read_at=xi_r.read_at,
            frame_age_s=frame_age,
            counter=counter,
            counter_advanced_at=advanced_at,
            frozen=frozen,
            stale=stale,
            jump=jump,
            bg_echo_ok_at=bg_echo,
            xi_echo_ok_at=xi_echo,
            preset_armed=plan is not None and (self.preset_armed or matches),
            terminations=t,
            degraded=degraded,
            bad_values=bad_values(snapshot),
        )

    def _bg_invalid(self, s: BeamGateStatus | None) -> str:
        if s is None:
            return ""
        bad = bad_values(Snapshot(BeamGateReading(s, 0.0, True),
                                  ImagingReading(None, None, False)))
        if bad:
            return bad[0]
        if self.last_dose is not None and s.dose_delivered_mu < self.last_dose:
            return f"dose went backwards {self.last_dose} -> {s.dose_delivered_mu}"
        return ""

    def _xi_invalid(self, s: ImagingStatus | None) -> str:
        if s is None:
            return ""
        bad = bad_values(Snapshot(BeamGateReading(None, None, False),
                                  ImagingReading(s, 0.0, True)))
        if bad:
            return bad[0]
        if self.last_mas is not None and s.cumulative_mas < self.last_mas:
            return f"mAs went backwards {self.last_mas} -> {s.cumulative_mas}"
        return ""

    # -- the oracle, after the command ----------------------------------------------------------

    def post(self, snapshot: Snapshot, out: Outputs) -> Post:
        if self._post is not None and self._post[0] is out:
            return self._post[1]
        plan = self.plan
        requested = self.imaging_requested
        trip_progress = self.trip_progress
        end_progress = self.end_progress
        accepted = (
            out.command_result.command
            if out.command_result is not None and out.command_result.accepted
            else None
        )
        for e in out.events:
            if e.kind is EventKind.TRIP or (
                e.kind is EventKind.MODE_CHANGED and e.mode_to is Mode.FAULT
            ):
                trip_progress = 0
                end_progress = 0
                requested = False
            elif e.kind is EventKind.FRACTION_COMPLETE:
                end_progress = 0
                requested = False
            elif e.kind is EventKind.COMMAND_ACCEPTED and accepted is not None:
                kind = accepted.kind
                if trip_progress is not None and trip_progress < len(RESTART_AFTER_TRIP) and (
                    kind is RESTART_AFTER_TRIP[trip_progress]
                ):
                    trip_progress += 1
                if kind in (CommandKind.ABORT, CommandKind.RESET):
                    end_progress = 0
                elif end_progress < len(RESTART_AFTER_END) and (
                    kind is RESTART_AFTER_END[end_progress]
                ):
                    end_progress += 1
                if kind is CommandKind.SELECT_PLAN:
                    selected = self.params.plan(accepted.plan_id or "")
                    bg, xi = snapshot.beam_gate.status, snapshot.imaging.status
                    if selected is not None:
                        plan = PlanRecord(
                            selected,
                            bg.dose_delivered_mu if bg is not None else math.nan,
                            xi.cumulative_mas if xi is not None else math.nan,
                        )
                    requested = False
                elif kind is CommandKind.START_IMAGING:
                    requested = True
                elif kind in (CommandKind.STOP_IMAGING, CommandKind.ABORT, CommandKind.RESET):
                    requested = False
        bg, xi = snapshot.beam_gate.status, snapshot.imaging.status
        dose = mas = None
        if plan is not None and bg is not None and _finite(bg.dose_delivered_mu):
            dose = bg.dose_delivered_mu - plan.dose_baseline
        if plan is not None and xi is not None and _finite(xi.cumulative_mas):
            mas = xi.cumulative_mas - plan.mas_baseline
        result = Post(plan, requested, dose, mas, trip_progress, end_progress)
        self._post = (out, result)
        return result

    # -- after the checks: remember this step ------------------------------------------------------

    def commit(self, snapshot: Snapshot, command: Command | None, now: float, new: CoreState,
               out: Outputs) -> None:
        f = self.facts(snapshot, now)
        post = self.post(snapshot, out)
        accepted = (
            out.command_result.command.kind
            if out.command_result is not None and out.command_result.accepted
            else None
        )
        if f.bg is not None:
            self.last_dose = f.bg.dose_delivered_mu
        if f.xi is not None:
            self.last_mas = f.xi.cumulative_mas
        self.bg_echo_ok_at, self.xi_echo_ok_at = f.bg_echo_ok_at, f.xi_echo_ok_at
        self.counter, self.counter_advanced_at = f.counter, f.counter_advanced_at
        self.prev_read = None
        if (
            f.xi is not None
            and f.xi.exposing
            and not f.clock_fault
            and accepted not in (CommandKind.SELECT_PLAN, CommandKind.RESET)
        ):
            self.prev_read = (f.xi.frame_counter, f.xi.target)
        if accepted is CommandKind.RESET:
            self.last_dose = self.last_mas = None
        if _finite(now):
            self.last_now = float(now)
        if out.heartbeat is not None:
            self.heartbeat = out.heartbeat
            if _finite(f.now):
                self.sent = (*self.sent, (out.heartbeat, f.now))[-64:]
        if out.gate is not self.gate:
            self.gate, self.gate_changed_at = out.gate, f.now
        if out.xray is not self.xray:
            self.xray, self.xray_changed_at = out.xray, f.now
        # the plan is active from its selection until a trip, an abort, a reset, or the
        # acknowledgement of COMPLETE
        self.preset_armed = f.preset_armed
        if accepted is CommandKind.SELECT_PLAN:
            self.plan_active = True
            self.preset_armed = False  # a new preset, confirmed only by a later reading
        if any(e.kind is EventKind.MODE_CHANGED and e.mode_to is Mode.FAULT for e in out.events):
            self.plan_active = False
        if accepted in (CommandKind.ABORT, CommandKind.RESET) or (
            accepted is CommandKind.ACKNOWLEDGE and new.mode is Mode.SAFE
        ):
            self.plan_active = False
        if not self.plan_active:
            self.preset_armed = False
        self.mode = new.mode
        self.plan = post.plan
        self.imaging_requested = post.imaging_requested
        self.trip_progress = post.trip_progress
        self.end_progress = post.end_progress
        held = new.mode in DELIVERY_MODES and out.gate is GateCommand.CLOSE
        self.held_since = (self.held_since if self.held_since is not None else f.now) if held \
            else None
        self.mode_was_delivery = new.mode in DELIVERY_MODES
        self.steps += 1
        self._facts = self._post = None


# --- the checkers -----------------------------------------------------------------------------

Checker = Callable[
    [CoreState, Snapshot, Command | None, float, CoreState, Outputs, History], str | None
]


def _gate_open(out: Outputs) -> bool:
    return out.gate is GateCommand.OPEN


def inv01_beam_permit_conjunction(
    prev: CoreState,
    snapshot: Snapshot,
    command: Command | None,
    now: float,
    new: CoreState,
    out: Outputs,
    hist: History,
) -> str | None:
    """Gate OPEN only when every beam-permit condition holds in that step."""
    if not _gate_open(out):
        return None
    f = hist.facts(snapshot, now)
    post = hist.post(snapshot, out)
    p = hist.params
    failed: list[str] = []
    if new.mode is not Mode.TREATING:
        failed.append(f"mode {new.mode.name}")
    if f.clock_fault:
        failed.append("clock fault: " + f.clock_fault)
    if snapshot.cycle_overrun:
        failed.append("controller cycle overrun")
    if f.bg is None:
        failed.append(f"beam gate not usable ({f.bg_lost or f.bg_invalid})")
    if f.xi is None:
        failed.append(f"imaging not usable ({f.xi_lost or f.xi_invalid})")
    # Both devices healthy: a degraded reading (last transaction failed) holds the beam.
    if snapshot.beam_gate.healthy is not True:
        failed.append(f"beam gate not healthy ({f.bg_degraded or f.bg_lost})")
    if snapshot.imaging.healthy is not True:
        failed.append(f"imaging not healthy ({f.xi_degraded or f.xi_lost})")
    if new.latched:
        failed.append(f"latched {sorted(new.latched)}")
    if f.terminations:
        failed.append(f"termination conditions {f.terminations}")
    if f.bg is not None:
        bg = f.bg
        for ok, what in ((bg.chain_ok, "chain open"), (bg.door_closed, "door open"),
                         (bg.estop_released, "e-stop pressed"), (bg.ready, "gate not ready"),
                         (not bg.watchdog_tripped, "watchdog"), (bg.fault_code == 0, "bg fault")):
            if not ok:
                failed.append(what)
        if post.plan is None or post.fraction_dose is None:
            failed.append("no plan")
        elif post.fraction_dose >= post.plan.plan.planned_dose_mu:
            failed.append(f"fraction dose {post.fraction_dose} reached plan")
        if not preset_read_back(bg, post.plan, p):
            failed.append(f"dose preset reads {bg.dose_preset_mu}, not the plan's")
    if f.xi is not None:
        xi = f.xi
        if xi.fault_code != 0:
            failed.append("imaging fault")
        if not (xi.exposing and xi.prepared):
            failed.append("imaging not exposing")
        if f.frame_age_s > p.max_frame_age_s:
            failed.append(f"frame age {f.frame_age_s} s")
        if f.frozen:
            failed.append(f"frame counter not advanced since {f.counter_advanced_at}")
        if not xi.tracking_confidence >= p.min_confidence:
            failed.append(f"confidence {xi.tracking_confidence}")
        if post.plan is None or not within_window(xi.target, post.plan.plan.target, p):
            failed.append(f"target {xi.target} outside the window")
    if not post.imaging_requested:
        failed.append("imaging not requested")
    if failed:
        return "gate OPEN although: " + "; ".join(failed)
    return None


def inv02_xray_permit(
    prev: CoreState,
    snapshot: Snapshot,
    command: Command | None,
    now: float,
    new: CoreState,
    out: Outputs,
    hist: History,
) -> str | None:
    """X-ray EXPOSE only when the X-ray permit holds and imaging was requested."""
    if out.xray is not XrayCommand.EXPOSE:
        return None
    f = hist.facts(snapshot, now)
    post = hist.post(snapshot, out)
    failed: list[str] = []
    if new.mode not in IMAGING_MODES:
        failed.append(f"mode {new.mode.name}")
    if f.clock_fault:
        failed.append("clock fault")
    if snapshot.cycle_overrun:
        failed.append("controller cycle overrun")
    if f.bg is None:
        failed.append(f"beam gate not usable ({f.bg_lost or f.bg_invalid})")
    else:
        if not f.bg.estop_released:
            failed.append("e-stop")
        if not f.bg.door_closed:
            failed.append("door open")
        if f.bg.watchdog_tripped or f.bg.fault_code != 0:
            failed.append("beam-gate fault")
    if f.xi is None:
        failed.append(f"imaging not usable ({f.xi_lost or f.xi_invalid})")
    elif f.xi.fault_code != 0:
        failed.append("imaging fault")
    if post.fraction_mas is None or post.plan is None:
        failed.append("no plan or no mAs")
    elif post.fraction_mas >= hist.params.imaging_budget_mas:
        failed.append(f"imaging budget used ({post.fraction_mas} mAs)")
    if not post.imaging_requested:
        failed.append("imaging not requested")
    if new.latched:
        failed.append("fault latched")
    if failed:
        return "X-ray EXPOSE although: " + "; ".join(failed)
    return None


def inv03_beam_needs_confirming_image(
    prev: CoreState,
    snapshot: Snapshot,
    command: Command | None,
    now: float,
    new: CoreState,
    out: Outputs,
    hist: History,
) -> str | None:
    """Beam only while imaging confirms the target inside the window, X-ray exposing."""
    if not _gate_open(out):
        return None
    post = hist.post(snapshot, out)
    xi = snapshot.imaging.status
    if out.xray is not XrayCommand.EXPOSE:
        return "gate OPEN while the X-ray is commanded STOP"
    if xi is None or post.plan is None:
        return "gate OPEN without an imaging frame or a plan"
    if not within_window(xi.target, post.plan.plan.target, hist.params):
        return f"gate OPEN with the target {xi.target} outside the window around " \
               f"{post.plan.plan.target}"
    return None


def inv04_restart_after_trip(
    prev: CoreState,
    snapshot: Snapshot,
    command: Command | None,
    now: float,
    new: CoreState,
    out: Outputs,
    hist: History,
) -> str | None:
    """After a trip, no gate OPEN before ACK, RESET, SELECT_PLAN, ARM, BEAM_ON in order; and
    the first step of that order is checked where it happens: a RESET that leaves FAULT
    before an ACKNOWLEDGE was accepted since the trip is a violation at once."""
    if (prev.mode is Mode.FAULT and new.mode is not Mode.FAULT and command is not None
            and command.kind is CommandKind.RESET and hist.trip_progress == 0):
        return "RESET left FAULT before any ACKNOWLEDGE was accepted since the trip"
    if not _gate_open(out):
        return None
    post = hist.post(snapshot, out)
    if post.trip_progress is not None and post.trip_progress < len(RESTART_AFTER_TRIP):
        done = [k.name for k in RESTART_AFTER_TRIP[: post.trip_progress]]
        return f"gate OPEN after a trip with only {done} of the restart sequence accepted"
    return None


def inv05_dose_reached_closes(
    prev: CoreState,
    snapshot: Snapshot,
    command: Command | None,
    now: float,
    new: CoreState,
    out: Outputs,
    hist: History,
) -> str | None:
    """Fraction dose at or above plan => gate CLOSE."""
    if not _gate_open(out):
        return None
    post = hist.post(snapshot, out)
    if post.plan is not None and post.fraction_dose is not None and (
        post.fraction_dose >= post.plan.plan.planned_dose_mu
    ):
        return f"gate OPEN with fraction dose {post.fraction_dose} >= planned " \
               f"{post.plan.plan.planned_dose_mu}"
    return None


def inv06_stale_or_frozen_closes(
    prev: CoreState,
    snapshot: Snapshot,
    command: Command | None,
    now: float,
    new: CoreState,
    out: Outputs,
    hist: History,
) -> str | None:
    """Stale frame or frozen frame counter => gate CLOSE."""
    if not _gate_open(out):
        return None
    f = hist.facts(snapshot, now)
    if f.stale:
        return f"gate OPEN with a frame {f.frame_age_s} s old"
    if f.frozen:
        return f"gate OPEN with the frame counter not advanced since {f.counter_advanced_at}" \
               f" (now {f.now})"
    return None


def inv07_lost_device_stops_both(
    prev: CoreState,
    snapshot: Snapshot,
    command: Command | None,
    now: float,
    new: CoreState,
    out: Outputs,
    hist: History,
) -> str | None:
    """A lost device (never read, no read time, last good read stale or in the future) =>
    gate CLOSE and X-ray STOP. A degraded one (unhealthy, still fresh) is INV-01's."""
    f = hist.facts(snapshot, now)
    lost = [f"beam gate {f.bg_lost}"] if f.bg_lost else []
    lost += [f"imaging {f.xi_lost}"] if f.xi_lost else []
    if lost and (_gate_open(out) or out.xray is XrayCommand.EXPOSE):
        return f"{out.gate.name}/{out.xray.name} with a lost device: {lost}"
    return None


def inv08_imaging_budget(
    prev: CoreState,
    snapshot: Snapshot,
    command: Command | None,
    now: float,
    new: CoreState,
    out: Outputs,
    hist: History,
) -> str | None:
    """Imaging budget exhausted => X-ray STOP and gate CLOSE."""
    post = hist.post(snapshot, out)
    if post.fraction_mas is not None and post.fraction_mas >= hist.params.imaging_budget_mas \
            and (_gate_open(out) or out.xray is XrayCommand.EXPOSE):
        return f"{out.gate.name}/{out.xray.name} with {post.fraction_mas} mAs used of a budget" \
               f" of {hist.params.imaging_budget_mas}"
    return None


def inv09_hold_is_bounded(
    prev: CoreState,
    snapshot: Snapshot,
    command: Command | None,
    now: float,
    new: CoreState,
    out: Outputs,
    hist: History,
) -> str | None:
    """Beam held in TREATING/HOLD longer than max_hold_s => FAULT."""
    if prev.mode not in DELIVERY_MODES or hist.held_since is None:
        return None
    f = hist.facts(snapshot, now)
    held = elapsed(f.now, hist.held_since)
    if held > hist.params.max_hold_s and new.mode is not Mode.FAULT:
        return f"beam held {held} s (> {hist.params.max_hold_s}) but mode is {new.mode.name}"
    return None


def inv10_modes_follow_the_table(
    prev: CoreState,
    snapshot: Snapshot,
    command: Command | None,
    now: float,
    new: CoreState,
    out: Outputs,
    hist: History,
) -> str | None:
    """Modes change only along the table; every trip and entry into FAULT names rules."""
    mode = prev.mode
    for e in out.events:
        if e.kind is EventKind.MODE_CHANGED:
            if e.mode_from is not mode:
                return f"mode change event from {e.mode_from} while in {mode}"
            if (mode, e.mode_to) not in ALLOWED_EDGES:
                return f"mode change {mode.name} -> {e.mode_to} is not in the table"
            assert e.mode_to is not None
            mode = e.mode_to
            if mode is Mode.FAULT and not (e.rule_ids and set(e.rule_ids) <= RULE_IDS):
                return f"entry into FAULT names rules {e.rule_ids}"
        if e.kind is EventKind.TRIP and not (e.rule_ids and set(e.rule_ids) <= RULE_IDS):
            return f"trip names rules {e.rule_ids}"
    if mode is not new.mode:
        return f"mode went {prev.mode.name} -> {new.mode.name} with events ending in {mode.name}"
    return None


def inv11_clock_faults_close(
    prev: CoreState,
    snapshot: Snapshot,
    command: Command | None,
    now: float,
    new: CoreState,
    out: Outputs,
    hist: History,
) -> str | None:
    """Backward, non-finite or jumping time => gate CLOSE and X-ray STOP."""
    f = hist.facts(snapshot, now)
    if f.clock_fault and (_gate_open(out) or out.xray is XrayCommand.EXPOSE):
        return f"{out.gate.name}/{out.xray.name} in a step with a clock fault: {f.clock_fault}"
    return None


def inv12_denials_name_rules(
    prev: CoreState,
    snapshot: Snapshot,
    command: Command | None,
    now: float,
    new: CoreState,
    out: Outputs,
    hist: History,
) -> str | None:
    """Every denial names existing rule ids; grants name none; commands follow permits; a
    degraded device is named in the beam denial."""
    f = hist.facts(snapshot, now)
    unnamed = set(f.degraded) - set(out.beam_permit.denied_by)
    if unnamed:
        return f"beam permit {out.beam_permit} does not name degraded devices" \
               f" {sorted(unnamed)} ({f.degraded})"
    for name, permit in (("beam", out.beam_permit), ("xray", out.xray_permit)):
        if permit.granted and permit.denied_by:
            return f"{name} permit granted but denied by {permit.denied_by}"
        if not permit.granted and not permit.denied_by:
            return f"{name} permit denied without naming a rule"
        unknown = set(permit.denied_by) - RULE_IDS
        if unknown:
            return f"{name} permit denied by unknown rules {sorted(unknown)}"
    if not set(out.xray_permit.denied_by) <= set(out.beam_permit.denied_by):
        return f"beam permit {out.beam_permit.denied_by} omits X-ray denials" \
               f" {out.xray_permit.denied_by}"
    if _gate_open(out) != out.beam_permit.granted:
        return f"gate {out.gate.name} with beam permit {out.beam_permit}"
    if out.xray is XrayCommand.EXPOSE and not out.xray_permit.granted:
        return f"X-ray EXPOSE with X-ray permit {out.xray_permit}"
    return None


def inv13_unclassifiable_values_deny(
    prev: CoreState,
    snapshot: Snapshot,
    command: Command | None,
    now: float,
    new: CoreState,
    out: Outputs,
    hist: History,
) -> str | None:
    """NaN/inf/negative/out-of-range/contradictory values => gate CLOSE and X-ray STOP."""
    f = hist.facts(snapshot, now)
    if f.bad_values and (_gate_open(out) or out.xray is XrayCommand.EXPOSE):
        return f"{out.gate.name}/{out.xray.name} with unclassifiable values {f.bad_values}"
    return None


def inv14_step_never_raises(
    prev: CoreState,
    snapshot: Snapshot,
    command: Command | None,
    now: float,
    new: CoreState,
    out: Outputs,
    hist: History,
) -> str | None:
    """step never raises (enforced by the driver, :func:`run_step`; here: outputs typed)."""
    if not isinstance(out, Outputs) or not isinstance(new, CoreState):
        return f"step returned {type(new).__name__}, {type(out).__name__}"
    return None


def inv15_deterministic(
    prev: CoreState,
    snapshot: Snapshot,
    command: Command | None,
    now: float,
    new: CoreState,
    out: Outputs,
    hist: History,
) -> str | None:
    """The same inputs give the same state and outputs (purity)."""
    if hist.replay is None:
        return None
    again_state, again_out = hist.replay()
    if again_out != out:
        return f"outputs differ on replay: {out} != {again_out}"
    if again_state != new:
        return "state differs on replay"
    return None


def inv16_no_automatic_restart(
    prev: CoreState,
    snapshot: Snapshot,
    command: Command | None,
    now: float,
    new: CoreState,
    out: Outputs,
    hist: History,
) -> str | None:
    """Gate OPEN only after SELECT_PLAN, ARM, BEAM_ON accepted since the last fraction end."""
    if not _gate_open(out):
        return None
    post = hist.post(snapshot, out)
    if post.end_progress < len(RESTART_AFTER_END):
        done = [k.name for k in RESTART_AFTER_END[: post.end_progress]]
        return f"gate OPEN with only {done} accepted since the last fraction ended"
    return None


def inv17_marker_jump_closes(
    prev: CoreState,
    snapshot: Snapshot,
    command: Command | None,
    now: float,
    new: CoreState,
    out: Outputs,
    hist: History,
) -> str | None:
    """A new frame further than max_jump_mm from the last one => gate CLOSE."""
    f = hist.facts(snapshot, now)
    if f.jump and _gate_open(out):
        return f"gate OPEN on a marker jump (> {hist.params.max_jump_mm} mm)"
    return None


def inv18_terminations_trip_the_fraction(
    prev: CoreState,
    snapshot: Snapshot,
    command: Command | None,
    now: float,
    new: CoreState,
    out: Outputs,
    hist: History,
) -> str | None:
    """A termination during a fraction trips it to FAULT, naming the cause; the planned dose
    reached during delivery completes it; in FAULT, a new cause is latched too."""
    f = hist.facts(snapshot, now)
    if prev.mode is Mode.FAULT:
        r = out.command_result
        reset = r is not None and r.accepted and r.command.kind is CommandKind.RESET
        missing = set(f.terminations) - new.latched
        if missing and not reset:
            return f"in FAULT, terminations {sorted(missing)} present but not latched" \
                   f" ({f.terminations})"
        return None
    if prev.mode not in FRACTION_MODES:
        return None
    present = dict(f.terminations)
    if prev.mode in DELIVERY_MODES or prev.mode is Mode.COMPLETE:
        present.pop("IL-014", None)
    tripped = {rid for e in out.events if e.kind is EventKind.TRIP for rid in e.rule_ids}
    if present:
        if new.mode is not Mode.FAULT:
            return f"{prev.mode.name} -> {new.mode.name} with terminations {present}"
        missing = set(present) - tripped
        if missing:
            return f"trip names {sorted(tripped)}, not {sorted(missing)} ({present})"
        return None
    if "IL-014" in f.terminations and prev.mode in DELIVERY_MODES and not any(
        e.kind is EventKind.MODE_CHANGED and e.mode_to is Mode.COMPLETE for e in out.events
    ):
        return f"planned dose reached in {prev.mode.name} but no COMPLETE ({new.mode.name})"
    return None


def inv19_idle_modes_do_not_latch(
    prev: CoreState,
    snapshot: Snapshot,
    command: Command | None,
    now: float,
    new: CoreState,
    out: Outputs,
    hist: History,
) -> str | None:
    """In OFFLINE/SAFE a termination never latches, but blocks SELECT_PLAN."""
    if prev.mode not in IDLE_MODES:
        return None
    if new.mode is Mode.FAULT or any(e.kind is EventKind.TRIP for e in out.events):
        return f"{prev.mode.name} -> {new.mode.name} latched a trip"
    f = hist.facts(snapshot, now)
    r = out.command_result
    if r is not None and r.accepted and r.command.kind is CommandKind.SELECT_PLAN:
        if f.terminations:
            return f"SELECT_PLAN accepted with terminations present {f.terminations}"
        if f.bg is None or f.xi is None:
            return "SELECT_PLAN accepted with a device not usable"
    return None


def inv20_trips_are_real(
    prev: CoreState,
    snapshot: Snapshot,
    command: Command | None,
    now: float,
    new: CoreState,
    out: Outputs,
    hist: History,
) -> str | None:
    """Every rule a trip names is a termination condition that is really present."""
    if prev.mode not in FRACTION_MODES:
        return None
    f = hist.facts(snapshot, now)
    tripped = {rid for e in out.events if e.kind is EventKind.TRIP for rid in e.rule_ids}
    spurious = tripped - set(f.terminations)
    if spurious:
        return f"trip names {sorted(spurious)} whose conditions are absent ({f.terminations})"
    return None


def inv21_beam_needs_the_preset_armed(
    prev: CoreState,
    snapshot: Snapshot,
    command: Command | None,
    now: float,
    new: CoreState,
    out: Outputs,
    hist: History,
) -> str | None:
    """Gate OPEN only while the beam gate reads back the plan's hardware dose preset
    (baseline at selection + planned, within one register count): the independent backstop
    against overdose is armed, and armed at the right value."""
    if not _gate_open(out):
        return None
    f = hist.facts(snapshot, now)
    post = hist.post(snapshot, out)
    if f.bg is None or post.plan is None:
        return "gate OPEN without a usable beam gate or a plan"
    if not preset_read_back(f.bg, post.plan, hist.params):
        return (f"gate OPEN while the dose preset reads {f.bg.dose_preset_mu!r} MU, not the"
                f" plan's {post.plan.dose_preset!r} MU")
    return None


@dataclass(frozen=True)
class Invariant:
    inv_id: str
    title: str
    hazard: str
    check: Checker


INVARIANTS: tuple[Invariant, ...] = (
    Invariant("INV-01", "Gate OPEN only when every beam-permit condition holds (both devices"
              " healthy and fresh among them)",
              "beam delivered while any precondition is missing", inv01_beam_permit_conjunction),
    Invariant("INV-02", "X-ray EXPOSE only when the X-ray permit holds and imaging requested",
              "uncontrolled or unjustified imaging dose", inv02_xray_permit),
    Invariant("INV-03", "Beam only while imaging confirms the target inside the window",
              "beam on healthy tissue (target outside the window)",
              inv03_beam_needs_confirming_image),
    Invariant("INV-04", "After a trip: ACK, RESET, SELECT_PLAN, ARM, BEAM_ON before any beam",
              "automatic restart after a termination", inv04_restart_after_trip),
    Invariant("INV-05", "Planned dose reached => gate CLOSE", "overdose",
              inv05_dose_reached_closes),
    Invariant("INV-06", "Stale frame or frozen counter => gate CLOSE",
              "beam gated on an old image (target moved since)", inv06_stale_or_frozen_closes),
    Invariant("INV-07", "Lost device (never read or stale) => gate CLOSE and X-ray STOP",
              "acting on a device we can no longer see", inv07_lost_device_stops_both),
    Invariant("INV-08", "Imaging budget used up => X-ray STOP and gate CLOSE",
              "excess imaging dose", inv08_imaging_budget),
    Invariant("INV-09", "A hold longer than max_hold_s => FAULT",
              "an interruption that never ends (fraction left half-delivered, open-ended)",
              inv09_hold_is_bounded),
    Invariant("INV-10", "Modes follow the table; trips and FAULT name existing rules",
              "an undeclared path to beam; an unexplained stop", inv10_modes_follow_the_table),
    Invariant("INV-11", "Bad time (backwards, non-finite, jump) => gate CLOSE and X-ray STOP",
              "ages computed from a bad clock pass as fresh", inv11_clock_faults_close),
    Invariant("INV-12", "Every denial names existing rules (a degraded device among them);"
              " commands follow the permits",
              "an operator cannot tell why the beam is off; a permit bypassed",
              inv12_denials_name_rules),
    Invariant("INV-13", "Unclassifiable values (NaN, inf, negative, out of range) => deny",
              "a corrupt read taken for a good one", inv13_unclassifiable_values_deny),
    Invariant("INV-14", "step never raises", "the control loop dies with the gate in any state",
              inv14_step_never_raises),
    Invariant("INV-15", "Same inputs, same outputs (pure step)",
              "behaviour that a replay or a review cannot reproduce", inv15_deterministic),
    Invariant("INV-16", "No automatic restart: SELECT_PLAN, ARM, BEAM_ON since the last end",
              "beam resumed after an abort, a completion or a reset without reselection",
              inv16_no_automatic_restart),
    Invariant("INV-17", "A marker jump => gate CLOSE",
              "beam on a tracking glitch (marker swap, mis-detection)",
              inv17_marker_jump_closes),
    Invariant("INV-18", "A termination during a fraction trips it to FAULT, naming the cause",
              "a fraction that carries on after a termination; a trip that hides its cause",
              inv18_terminations_trip_the_fraction),
    Invariant("INV-19", "OFFLINE/SAFE never latch, but terminations block SELECT_PLAN",
              "a fraction started while a termination is present",
              inv19_idle_modes_do_not_latch),
    Invariant("INV-20", "Every tripping rule names a condition that is really present",
              "spurious trips (operators learn to reset by habit)", inv20_trips_are_real),
    Invariant("INV-21", "Gate OPEN only while the beam gate reads back the plan's hardware"
              " dose preset (baseline + planned)",
              "overdose with the hardware backstop lost (device rebooted, preset never loaded)",
              inv21_beam_needs_the_preset_armed),
)
INVARIANTS_BY_ID: dict[str, Invariant] = {inv.inv_id: inv for inv in INVARIANTS}


class InvariantViolation(AssertionError):
    """An invariant failed; the message starts with its id."""


def check_step(
    prev: CoreState,
    snapshot: Snapshot,
    command: Command | None,
    now: float,
    new: CoreState,
    out: Outputs,
    hist: History,
    only: frozenset[str] | None = None,
) -> None:
    """Run every invariant (or those in ``only``) and raise on the first violation."""
    for inv in INVARIANTS:
        if only is not None and inv.inv_id not in only:
            continue
        message = inv.check(prev, snapshot, command, now, new, out, hist)
        if message is not None:
            raise InvariantViolation(
                f"{inv.inv_id} ({inv.title}) violated at now={now!r}, mode "
                f"{prev.mode.name}->{new.mode.name}, command={command}: {message}"
            )


StepFn = Callable[..., tuple[CoreState, Outputs]]


def run_step(
    step_fn: StepFn, state: CoreState, snapshot: Snapshot, command: Command | None, now: float
) -> tuple[CoreState, Outputs]:
    """Call ``step``; any exception is an INV-14 violation."""
    try:
        return step_fn(state, snapshot, command, now)
    except Exception as exc:
        raise InvariantViolation(
            f"INV-14 (step never raises) violated: {type(exc).__name__}: {exc} "
            f"(now={now!r}, command={command}, mode={state.mode.name})"
        ) from exc
