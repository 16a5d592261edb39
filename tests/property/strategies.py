"""Hypothesis strategies for the property tests of the pure core, and a plausible world.

Purely random snapshots would keep the beam off for ever and make every invariant vacuous.
So the snapshots come from :class:`World`, a small deterministic stand-in for both devices
that *answers the core's last outputs* (heartbeat echo, gate readback after an actuation
delay, dose rising while the gate is open, frames at the frame rate while exposing, mAs per
frame), and Hypothesis perturbs it:

- persistent world faults (:data:`WORLD_FAULTS`) that last a drawn number of steps: e-stop,
  door, chain, device fault codes and watchdogs, stuck gate readback, an X-ray that exposes
  whatever it is told or will not expose, frozen frames, a counter that repeats while the
  timestamps go on, low confidence, marker jumps, target outside, a link down (the last good
  reading kept, unhealthy: degraded, then lost once stale), an echo that stops, a beam that
  leaks dose while closed, controller cycle overruns, a beam gate that ignores the dose preset
  write (its readback stays where it was);
- one-step snapshot perturbations (:class:`Perturbation`): a dropped device, an unhealthy
  (degraded) one, a stale or future ``read_at``, NaN/inf/negative/out-of-range values,
  contradictory values (exposing while not prepared, a frame stamped in the future), counters
  (frame, dose, mAs) going backwards, dose jumps, target shifts, low confidence, a controller
  cycle overrun, a dose preset read back otherwise than loaded, and a beam-gate reboot (dose
  counter, dose preset and echo back to 0: physical, like a dose jump);
- time steps: mostly 1-40 ms, sometimes 0, backwards, a jump beyond ``max_time_step_s``, NaN
  or +/-inf.

Nothing here imports the core's rules or gating: the world knows physics, not interlocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import strategies as st

from syncctl.core import (
    BeamGateReading,
    BeamGateStatus,
    Command,
    CommandKind,
    CoreParams,
    DeviceAction,
    GateCommand,
    ImagingReading,
    ImagingStatus,
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
CENTRE = Position(10.0, -20.0, 30.0)
"""The patient's true target centre in room coordinates (the first plan's target)."""
PLAN_IDS = ("lung-01", "liver-02")
UNKNOWN_PLAN_IDS = (None, "", "nope", "LUNG-01", "lung-01 ", "\x00", "lung-01\n")

# --- parameters ----------------------------------------------------------------------------


@st.composite
def core_params(draw: st.DrawFn) -> CoreParams:
    """Room parameters in plausible ranges, chosen so that every termination is reachable in
    a run of a second or two: small plans, small imaging budgets, short maximum holds."""
    window = draw(
        st.one_of(
            st.builds(
                WindowBox,
                st.floats(3.0, 8.0),
                st.floats(3.0, 8.0),
                st.floats(3.0, 8.0),
            ),
            st.builds(WindowSphere, st.floats(3.0, 8.0)),
        )
    )
    dose_1 = draw(st.floats(0.05, 1.0))
    dose_2 = draw(st.floats(0.05, 1.0))
    # The second plan's target is shifted: with it selected the real target sits near, or
    # beyond, the edge of the window.
    shift = draw(st.floats(0.0, 6.0))
    return CoreParams(
        window=window,
        hysteresis_mm=draw(st.floats(0.0, 1.5)),
        max_frame_age_s=draw(st.sampled_from((0.07, 0.1))),
        min_confidence=draw(st.floats(0.3, 0.9)),
        frames_required_inside=draw(st.integers(1, 3)),
        max_jump_mm=draw(st.floats(3.0, 12.0)),
        imaging_budget_mas=draw(st.floats(0.3, 5.0)),
        max_hold_s=draw(st.floats(0.1, 1.0)),
        gate_actuation_timeout_s=0.02,
        xray_actuation_timeout_s=0.1,
        heartbeat_period_s=0.02,
        device_watchdog_timeout_s=0.2,
        device_stale_s=0.1,
        max_time_step_s=0.5,
        dose_tolerance_mu=0.05,
        plans=(
            Plan(PLAN_IDS[0], dose_1, CENTRE),
            Plan(PLAN_IDS[1], dose_2, replace(CENTRE, x_mm=CENTRE.x_mm + shift)),
        ),
    )


# --- the world -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldConfig:
    frame_period_s: float = 1 / 30
    dose_rate_mu_per_s: float = 2.0
    gate_delay_s: float = 0.004
    mas_per_frame: float = 0.05
    hardware_preset: bool = True
    """The beam-gate controller stops the beam itself at the loaded dose preset."""
    clock_offset_ms: int = 0
    """The imaging controller's clock at world time 0 (uint32, may wrap during a run)."""
    initial_counter: int = 0
    initial_dose_mu: float = 0.0
    initial_mas: float = 0.0
    breathing_amplitude_mm: float = 2.0
    breathing_period_s: float = 3.0
    confidence: float = 0.95
    jump_mm: float = 6.0
    """How far off a mis-detected marker is (world fault ``marker_jump``)."""


@st.composite
def world_configs(draw: st.DrawFn) -> WorldConfig:
    return WorldConfig(
        frame_period_s=draw(st.sampled_from((1 / 30, 1 / 25))),
        dose_rate_mu_per_s=draw(st.floats(0.5, 5.0)),
        gate_delay_s=draw(st.sampled_from((0.0, 0.004, 0.01))),
        mas_per_frame=draw(st.sampled_from((0.02, 0.05, 0.1))),
        hardware_preset=draw(st.booleans()),
        clock_offset_ms=draw(st.sampled_from((0, 123_456, UINT32 - 300))),
        initial_counter=draw(st.sampled_from((0, 41, UINT32 - 5))),
        initial_dose_mu=draw(st.sampled_from((0.0, 12.5))),
        initial_mas=draw(st.sampled_from((0.0, 730.25))),
        breathing_amplitude_mm=draw(st.floats(0.0, 6.0)),
        breathing_period_s=draw(st.floats(1.0, 5.0)),
        confidence=draw(st.floats(0.5, 1.0)),
        jump_mm=draw(st.floats(2.0, 12.0)),
    )


WORLD_FAULTS = (
    "estop",
    "door",
    "chain",
    "bg_fault_code",
    "bg_watchdog",
    "bg_not_ready",
    "xi_fault_code",
    "stuck_gate",
    "xray_stuck_on",
    "xray_wont_expose",
    "frozen_frames",
    "counter_stuck",
    "low_confidence",
    "marker_jump",
    "target_outside",
    "bg_disconnect",
    "xi_disconnect",
    "bg_echo_stuck",
    "xi_echo_stuck",
    "beam_leak",
    "bg_slow_reads",
    "cycle_overrun",
    "bg_preset_ignored",
)


@dataclass
class World:
    """Both devices, answering the core's outputs. World time only runs forwards; the
    controller's clock (``now``) is the caller's and may misbehave."""

    config: WorldConfig
    t: float = 0.0
    gate_cmd: GateCommand = GateCommand.CLOSE
    gate_cmd_at: float = 0.0
    gate_open: bool = False
    dose_mu: float = 0.0
    dose_preset_mu: float = 0.0
    """The hardware dose limit the beam gate holds: 0 at power-up (the gate never opens), then
    what LOAD_DOSE_PRESET loaded; read back in every snapshot."""
    xray_cmd: XrayCommand = XrayCommand.STOP
    exposing: bool = False
    frame_counter: int = 0
    frame_t: float = 0.0
    next_frame_t: float = math.inf
    mas: float = 0.0
    tracked: Position = CENTRE
    heartbeat: int = 0
    bg_echo: int = 0
    xi_echo: int = 0
    offset: Position = field(default_factory=lambda: Position(0.0, 0.0, 0.0))
    faults: dict[str, int] = field(default_factory=dict)
    """Active world faults and the number of steps each still lasts."""
    frames_seen: int = 0
    bg_read_at: float | None = None
    xi_read_at: float | None = None
    bg_last: BeamGateReading | None = None
    """The last reading that got through, kept while the beam-gate link is down."""
    xi_last: ImagingReading | None = None

    def __post_init__(self) -> None:
        self.dose_mu = self.config.initial_dose_mu
        self.mas = self.config.initial_mas
        self.frame_counter = self.config.initial_counter

    # -- physics ------------------------------------------------------------------------

    def target_at(self, t: float) -> Position:
        c = self.config
        z = c.breathing_amplitude_mm * math.sin(2 * math.pi * t / c.breathing_period_s)
        pos = Position(
            CENTRE.x_mm + self.offset.x_mm,
            CENTRE.y_mm + self.offset.y_mm,
            CENTRE.z_mm + self.offset.z_mm + z,
        )
        if "target_outside" in self.faults:
            pos = replace(pos, x_mm=pos.x_mm + 40.0)
        if "marker_jump" in self.faults and self.frames_seen % 2:
            # A mis-detection a few mm off, every other frame: often still inside the window.
            pos = replace(pos, y_mm=pos.y_mm + self.config.jump_mm)
        return pos

    def inject(self, fault: str, steps: int) -> None:
        self.faults[fault] = steps

    def disturb(self, p: Perturbation) -> bool:
        """Apply a perturbation that is physical (the device really counted more) to the
        world itself; False when it only concerns one read."""
        if p.kind == "dose_jump":
            self.dose_mu += p.amount
        elif p.kind == "mas_jump":
            self.mas += p.amount
        elif p.kind == "bg_reboot":
            # Power cycle: every register of the beam gate back to its power-up value.
            self.dose_mu = self.dose_preset_mu = 0.0
            self.bg_echo = 0
            self.gate_open = False
            self.gate_cmd, self.gate_cmd_at = GateCommand.CLOSE, self.t
        else:
            return False
        return True

    def advance(self, dt: float) -> None:
        """Advance world time by ``dt`` (ignored unless finite and positive) and tick the
        faults' remaining durations."""
        for name in list(self.faults):
            self.faults[name] -= 1
            if self.faults[name] <= 0:
                del self.faults[name]
        if not (math.isfinite(dt) and dt > 0):
            return
        self.t += dt
        t = self.t
        c = self.config
        if t - self.gate_cmd_at >= c.gate_delay_s:
            wanted = self.gate_cmd is GateCommand.OPEN
            if c.hardware_preset and self.dose_mu >= self.dose_preset_mu:
                wanted = False
            if "stuck_gate" in self.faults and self.gate_open:
                wanted = True
            self.gate_open = wanted
        if self.gate_open or "beam_leak" in self.faults:
            delivered = c.dose_rate_mu_per_s * dt
            if c.hardware_preset and "beam_leak" not in self.faults:
                delivered = min(delivered, max(0.0, self.dose_preset_mu - self.dose_mu))
            self.dose_mu += delivered
        if self.exposing:
            if self.next_frame_t <= t:
                n = int((t - self.next_frame_t) / c.frame_period_s) + 1
                last = self.next_frame_t + (n - 1) * c.frame_period_s
                self.next_frame_t = last + c.frame_period_s
                self.mas += n * c.mas_per_frame
                if "frozen_frames" not in self.faults:
                    self.frame_t = last
                    self.frames_seen += n
                    self.tracked = self.target_at(last)
                    if "counter_stuck" not in self.faults:
                        self.frame_counter = (self.frame_counter + n) % UINT32
        else:
            self.next_frame_t = t + c.frame_period_s

    def apply(self, outputs: Outputs) -> None:
        """Take the core's commands, as the I/O shell would write them."""
        if outputs.gate is not self.gate_cmd:
            self.gate_cmd = outputs.gate
            self.gate_cmd_at = self.t
        self.xray_cmd = outputs.xray
        expose = outputs.xray is XrayCommand.EXPOSE
        if "xray_stuck_on" in self.faults:
            expose = True  # exposes whatever it is told
        if "xray_wont_expose" in self.faults:
            expose = False
        if expose and not self.exposing:
            self.next_frame_t = self.t + self.config.frame_period_s
        self.exposing = expose
        if outputs.heartbeat is not None:
            self.heartbeat = outputs.heartbeat
        if "bg_echo_stuck" not in self.faults:
            self.bg_echo = self.heartbeat
        if "xi_echo_stuck" not in self.faults:
            self.xi_echo = self.heartbeat
        if DeviceAction.LOAD_DOSE_PRESET in outputs.device_actions and (
            outputs.dose_preset_mu is not None
        ) and "bg_preset_ignored" not in self.faults:
            self.dose_preset_mu = outputs.dose_preset_mu

    def snapshot(self, now: float) -> Snapshot:
        """The devices as the shell reads them at controller time ``now``."""
        if math.isfinite(now):
            self.bg_read_at = now if "bg_slow_reads" not in self.faults else self.bg_read_at
            if self.bg_read_at is None:
                self.bg_read_at = now
            self.xi_read_at = now
        clock_ms = (int(self.t * 1000) + self.config.clock_offset_ms) % UINT32
        frame_ms = (int(self.frame_t * 1000) + self.config.clock_offset_ms) % UINT32
        if "counter_stuck" in self.faults and self.exposing:
            # A device that keeps restamping a repeated frame.
            frame_ms = clock_ms
        bg = BeamGateStatus(
            gate_open_readback=self.gate_open,
            ready="bg_not_ready" not in self.faults,
            spill_active=True,
            chain_ok="chain" not in self.faults,
            door_closed="door" not in self.faults,
            estop_released="estop" not in self.faults,
            watchdog_tripped="bg_watchdog" in self.faults,
            dose_delivered_mu=round(self.dose_mu, 4),
            dose_preset_mu=self.dose_preset_mu,
            fault_code=7 if "bg_fault_code" in self.faults else 0,
            heartbeat_echo=self.bg_echo,
        )
        xi = ImagingStatus(
            prepared=self.exposing,
            exposing=self.exposing,
            frame_counter=self.frame_counter,
            frame_timestamp_ms=frame_ms,
            device_clock_ms=clock_ms,
            target=self.tracked,
            tracking_confidence=0.1 if "low_confidence" in self.faults else self.config.confidence,
            cumulative_mas=round(self.mas, 4),
            fault_code=3 if "xi_fault_code" in self.faults else 0,
            heartbeat_echo=self.xi_echo,
        )
        # A link that is down answers nothing: the reading keeps the last good status and
        # read time and is unhealthy (degraded, then lost once stale), as the clients do.
        if "bg_disconnect" in self.faults:
            last = self.bg_last
            bg_reading = BeamGateReading(last.status if last else None,
                                         last.read_at if last else None, False)
        else:
            bg_reading = self.bg_last = BeamGateReading(bg, self.bg_read_at, True)
        if "xi_disconnect" in self.faults:
            last_xi = self.xi_last
            xi_reading = ImagingReading(last_xi.status if last_xi else None,
                                        last_xi.read_at if last_xi else None, False)
        else:
            xi_reading = self.xi_last = ImagingReading(xi, self.xi_read_at, True)
        return Snapshot(
            beam_gate=bg_reading,
            imaging=xi_reading,
            cycle_overrun="cycle_overrun" in self.faults,
        )


# --- one-step perturbations --------------------------------------------------------------------

BAD_FLOATS: tuple[float, ...] = (math.nan, math.inf, -math.inf, -1.0, -1e-9)
BAD_UINT16: tuple[int, ...] = (-1, UINT16, UINT16 + 7, UINT32)
BAD_UINT32: tuple[int, ...] = (-1, UINT32, UINT32 * 3)
BAD_POSITIONS: tuple[float, ...] = (math.nan, math.inf, -math.inf, 10_000.5, -1e9)
BAD_CONFIDENCE: tuple[float, ...] = (math.nan, math.inf, -math.inf, -0.01, 1.01, 7.0)

BG_BAD_VALUES: dict[str, tuple[object, ...]] = {
    "dose_delivered_mu": BAD_FLOATS,
    "dose_preset_mu": BAD_FLOATS,
    "fault_code": BAD_UINT16,
    "heartbeat_echo": BAD_UINT16,
}
XI_BAD_VALUES: dict[str, tuple[object, ...]] = {
    "frame_counter": BAD_UINT32,
    "frame_timestamp_ms": BAD_UINT32,
    "device_clock_ms": BAD_UINT32,
    "target.x_mm": BAD_POSITIONS,
    "target.y_mm": BAD_POSITIONS,
    "target.z_mm": BAD_POSITIONS,
    "tracking_confidence": BAD_CONFIDENCE,
    "cumulative_mas": BAD_FLOATS,
    "fault_code": BAD_UINT16,
    "heartbeat_echo": BAD_UINT16,
}
MISSING_VALUES: dict[str, tuple[str, ...]] = {
    # Fields that a partial read leaves empty (None). Only fields whose absence the core is
    # specified to classify; see test_stateful.test_missing_values_never_raise for the rest.
    "beam_gate": ("dose_delivered_mu", "dose_preset_mu", "fault_code", "heartbeat_echo"),
    "imaging": ("frame_counter", "frame_timestamp_ms", "device_clock_ms", "cumulative_mas",
                "fault_code", "heartbeat_echo"),
}


@dataclass(frozen=True)
class Perturbation:
    """One change to one device's reading for one step. ``amount`` is kind-specific."""

    kind: str
    device: str = "imaging"
    field: str = ""
    value: object = None
    amount: float = 0.0

    def apply(self, snap: Snapshot) -> Snapshot:
        """This perturbation applied to one read (``dose_jump`` and ``mas_jump`` are
        physical: see :meth:`World.disturb`)."""
        return perturb(snap, self)


def _set_field(status: Any, name: str, value: object) -> Any:
    if name.startswith("target."):
        target = status.target
        return replace(status, target=replace(target, **{name.split(".")[1]: value}))
    return replace(status, **{name: value})


def perturb(snap: Snapshot, p: Perturbation) -> Snapshot:
    if p.kind == "overrun":
        return replace(snap, cycle_overrun=True)
    reading: BeamGateReading | ImagingReading = (
        snap.beam_gate if p.device == "beam_gate" else snap.imaging
    )
    status = reading.status
    kind = p.kind
    if kind == "drop":
        reading = replace(reading, status=None, read_at=None, healthy=False)
    elif kind == "unhealthy":
        reading = replace(reading, healthy=False)
    elif kind == "no_status":
        reading = replace(reading, status=None)
    elif kind == "no_read_at":
        reading = replace(reading, read_at=None)
    elif kind == "stale" and reading.read_at is not None:
        reading = replace(reading, read_at=reading.read_at - p.amount)
    elif kind == "future" and reading.read_at is not None:
        reading = replace(reading, read_at=reading.read_at + p.amount)
    elif status is None:
        return snap
    elif kind == "value":
        reading = replace(reading, status=_set_field(status, p.field, p.value))
    elif isinstance(status, BeamGateStatus):
        if kind == "dose_back":
            reading = replace(reading, status=replace(
                status, dose_delivered_mu=max(0.0, status.dose_delivered_mu - p.amount)))
        elif kind == "readback_open":
            reading = replace(reading, status=replace(status, gate_open_readback=True))
        elif kind == "preset_wrong":
            wrong = max(0.0, status.dose_preset_mu + p.amount)
            reading = replace(reading, status=replace(status, dose_preset_mu=wrong))
    elif isinstance(status, ImagingStatus):
        if kind == "exposing_not_prepared":
            reading = replace(reading, status=replace(status, exposing=True, prepared=False))
        elif kind == "frame_future":
            ts = (status.device_clock_ms + int(p.amount)) % UINT32
            reading = replace(reading, status=replace(status, frame_timestamp_ms=ts))
        elif kind == "frame_old":
            ts = (status.frame_timestamp_ms - int(p.amount)) % UINT32
            reading = replace(reading, status=replace(status, frame_timestamp_ms=ts))
        elif kind == "counter_back":
            c = (status.frame_counter - int(p.amount)) % UINT32
            reading = replace(reading, status=replace(status, frame_counter=c))
        elif kind == "counter_skip":
            c = (status.frame_counter + int(p.amount)) % UINT32
            reading = replace(reading, status=replace(status, frame_counter=c))
        elif kind == "mas_back":
            reading = replace(reading, status=replace(
                status, cumulative_mas=max(0.0, status.cumulative_mas - p.amount)))
        elif kind == "target_shift":
            t = status.target
            reading = replace(reading, status=replace(
                status, target=Position(t.x_mm + p.amount, t.y_mm, t.z_mm - p.amount / 2)))
        elif kind == "confidence":
            reading = replace(reading, status=replace(status, tracking_confidence=p.amount))
    if isinstance(reading, BeamGateReading):
        return replace(snap, beam_gate=reading)
    return replace(snap, imaging=reading)


DEVICES = st.sampled_from(("beam_gate", "imaging"))


def _bad_value(device: str) -> st.SearchStrategy[Perturbation]:
    table = BG_BAD_VALUES if device == "beam_gate" else XI_BAD_VALUES
    return st.sampled_from(sorted(table)).flatmap(
        lambda name: st.sampled_from(table[name]).map(
            lambda v: Perturbation("value", device, name, v)
        )
    )


def _missing_value(device: str) -> st.SearchStrategy[Perturbation]:
    return st.sampled_from(MISSING_VALUES[device]).map(
        lambda name: Perturbation("value", device, name, None)
    )


def _perturbation_branches() -> dict[str, st.SearchStrategy[Perturbation]]:
    def kind(name: str, device: st.SearchStrategy[str] = DEVICES,
             amount: st.SearchStrategy[float] | None = None) -> st.SearchStrategy[Perturbation]:
        if amount is None:
            return st.builds(Perturbation, st.just(name), device)
        return st.builds(Perturbation, st.just(name), device, amount=amount)

    imaging, beam_gate = st.just("imaging"), st.just("beam_gate")
    return {
        "drop": kind("drop"),
        "unhealthy": kind("unhealthy"),
        "no_status": kind("no_status"),
        "no_read_at": kind("no_read_at"),
        "stale": kind("stale", amount=st.floats(0.05, 5.0)),
        "future": kind("future", amount=st.floats(0.001, 1.0)),
        "value": DEVICES.flatmap(_bad_value),
        "missing": DEVICES.flatmap(_missing_value),
        "dose_back": kind("dose_back", beam_gate, st.floats(0.001, 2.0)),
        "dose_jump": kind("dose_jump", beam_gate, st.floats(0.001, 2.0)),
        "readback_open": kind("readback_open", beam_gate),
        "preset_wrong": kind("preset_wrong", beam_gate,
                             st.sampled_from((-100.0, -1.0, -0.02, 0.02, 0.5, 100.0))),
        "bg_reboot": kind("bg_reboot", beam_gate),
        "exposing_not_prepared": kind("exposing_not_prepared", imaging),
        "frame_future": kind("frame_future", imaging, st.integers(1, 5000).map(float)),
        "frame_old": kind("frame_old", imaging, st.integers(1, 5000).map(float)),
        "counter_back": kind("counter_back", imaging, st.integers(1, 5).map(float)),
        "counter_skip": kind("counter_skip", imaging, st.integers(1, 5).map(float)),
        "mas_back": kind("mas_back", imaging, st.floats(0.001, 10.0)),
        "mas_jump": kind("mas_jump", imaging, st.floats(0.001, 10.0)),
        "target_shift": kind("target_shift", imaging, st.floats(-30.0, 30.0)),
        "confidence": kind("confidence", imaging, st.floats(0.0, 1.0)),
        "overrun": st.just(Perturbation("overrun", "controller")),
    }


PERTURBATION_KINDS: tuple[str, ...] = tuple(_perturbation_branches())


def perturbations(kinds: frozenset[str] | None = None) -> st.SearchStrategy[Perturbation]:
    """One-step perturbations of a snapshot, of every kind or only of ``kinds``."""
    branches = _perturbation_branches()
    chosen = [b for k, b in branches.items() if kinds is None or k in kinds]
    return st.one_of(chosen) if chosen else st.nothing()


def maybe_perturbation(kinds: frozenset[str] | None = None
                       ) -> st.SearchStrategy[Perturbation | None]:
    """Mostly nothing (about 4 in 5 steps): the world must stay plausible most of the time
    for the gate to open at all."""
    if kinds is not None and not kinds:
        return st.none()
    return st.one_of(st.none(), st.none(), st.none(), st.none(), perturbations(kinds))


# --- time ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimeStep:
    """How the controller's clock moves for one step: ``dt`` seconds, or an absolute
    non-finite value when ``absolute`` is set (NaN, +inf, -inf)."""

    dt: float
    absolute: float | None = None

    def next_now(self, now: float) -> float:
        return self.absolute if self.absolute is not None else now + self.dt


def nominal_time_steps() -> st.SearchStrategy[TimeStep]:
    return st.integers(1, 40).map(lambda ms: TimeStep(ms / 1000.0))


def odd_time_steps() -> st.SearchStrategy[TimeStep]:
    """Zero, backwards (anywhere down to -2 s, and often by less than a heartbeat period:
    then every age still reads fresh and only the clock rule itself stops the beam), a jump,
    or non-finite."""
    return st.one_of(
        st.just(TimeStep(0.0)),
        st.floats(-2.0, -1e-6).map(TimeStep),
        st.floats(-0.02, -1e-6).map(TimeStep),
        st.floats(0.5001, 100.0).map(TimeStep),
        st.sampled_from((math.nan, math.inf, -math.inf)).map(
            lambda v: TimeStep(0.0, absolute=v)
        ),
    )


def time_steps() -> st.SearchStrategy[TimeStep]:
    """Mostly 1-40 ms; about one step in ten is zero, backwards, a jump or non-finite."""
    nominal = nominal_time_steps()
    return st.one_of(nominal, nominal, nominal, nominal, nominal, nominal, nominal, nominal,
                     nominal, odd_time_steps())


# --- commands ------------------------------------------------------------------------------------


def plan_ids() -> st.SearchStrategy[str | None]:
    return st.one_of(st.sampled_from(PLAN_IDS), st.sampled_from(UNKNOWN_PLAN_IDS),
                     st.text(max_size=8))


def commands() -> st.SearchStrategy[Command]:
    """Any operator command: valid or not in the current mode, in any order, with known,
    unknown or missing plan ids (on any kind, not only SELECT_PLAN)."""
    return st.builds(
        Command,
        kind=st.sampled_from(list(CommandKind)),
        operator=st.sampled_from(("op", "", "physicist")),
        plan_id=st.one_of(st.none(), plan_ids()),
    )


def statuses_beam_gate() -> st.SearchStrategy[BeamGateStatus]:
    """Unconstrained beam-gate statuses (for the never-raises and classification tests)."""
    return st.builds(
        BeamGateStatus,
        gate_open_readback=st.booleans(),
        ready=st.booleans(),
        spill_active=st.booleans(),
        chain_ok=st.booleans(),
        door_closed=st.booleans(),
        estop_released=st.booleans(),
        watchdog_tripped=st.booleans(),
        dose_delivered_mu=st.floats(allow_nan=True, allow_infinity=True),
        dose_preset_mu=st.floats(allow_nan=True, allow_infinity=True),
        fault_code=st.integers(-2, UINT16 + 2),
        heartbeat_echo=st.integers(-2, UINT16 + 2),
    )


def positions() -> st.SearchStrategy[Position]:
    return st.builds(Position, st.floats(), st.floats(), st.floats())


def statuses_imaging() -> st.SearchStrategy[ImagingStatus]:
    return st.builds(
        ImagingStatus,
        prepared=st.booleans(),
        exposing=st.booleans(),
        frame_counter=st.integers(-2, UINT32 + 2),
        frame_timestamp_ms=st.integers(-2, UINT32 + 2),
        device_clock_ms=st.integers(-2, UINT32 + 2),
        target=st.one_of(positions(), st.just(CENTRE)),
        tracking_confidence=st.floats(),
        cumulative_mas=st.floats(),
        fault_code=st.integers(-2, UINT16 + 2),
        heartbeat_echo=st.integers(-2, UINT16 + 2),
    )


def read_times() -> st.SearchStrategy[float | None]:
    return st.one_of(st.none(), st.floats(-1.0, 10.0), st.sampled_from((math.nan, math.inf)))


def snapshots() -> st.SearchStrategy[Snapshot]:
    """Unconstrained snapshots: statuses with any values, any read times, any health."""
    return st.builds(
        Snapshot,
        beam_gate=st.builds(BeamGateReading, st.one_of(st.none(), statuses_beam_gate()),
                            read_times(), st.booleans()),
        imaging=st.builds(ImagingReading, st.one_of(st.none(), statuses_imaging()),
                          read_times(), st.booleans()),
        cycle_overrun=st.booleans(),
    )


def nows() -> st.SearchStrategy[float]:
    return st.one_of(st.floats(-1.0, 10.0), st.sampled_from((math.nan, math.inf, -math.inf)))
