"""A scripted room: a small deterministic stand-in for both devices, with no I/O.

It answers the core's outputs the way the firmware would (gate readback after an actuation
delay, dose only while the gate is open during a spill, frames at the frame rate while
exposing, heartbeat echo) and keeps the *true* target position, so that a run can be judged
from what really happened. A disconnected device reads as the real clients report it: the
last good status and read time, unhealthy (degraded, then lost once stale). It drives the
core-only dry run (`syncctl dryrun`) and gives the property tests a plausible world to
perturb. The device simulators that speak Modbus live in
`firmware_sim/`; this module is deliberately much simpler.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from syncctl.core import (
    BeamGateReading,
    BeamGateStatus,
    DeviceAction,
    GateCommand,
    ImagingReading,
    ImagingStatus,
    Outputs,
    Position,
    Snapshot,
    XrayCommand,
)

FAULTS = ("estop", "door", "chain", "stuck_gate", "tracking_loss", "frozen_frames",
          "marker_jump", "imaging_disconnect", "beam_gate_disconnect")


@dataclass
class Breathing:
    """Periodic target motion around a centre, seeded irregularity and tracking noise."""

    centre: Position
    period_s: float = 4.0
    amplitude_mm: tuple[float, float, float] = (1.0, 2.0, 8.0)
    irregularity: float = 0.1
    noise_mm: float = 0.3
    seed: int = 1
    _rng: random.Random = field(init=False, repr=False)
    _phase: float = field(default=0.0, init=False)
    _last_t: float = field(default=0.0, init=False)
    _scale: float = field(default=1.0, init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def true_position(self, t: float) -> Position:
        dt = max(0.0, t - self._last_t)
        self._last_t = t
        before = self._phase
        self._phase += 2 * math.pi * dt / self.period_s
        if int(before / (2 * math.pi)) != int(self._phase / (2 * math.pi)):
            self._scale = 1.0 + self._rng.uniform(-self.irregularity, self.irregularity)
        # Exhale is the resting phase: the target spends longer near the window centre.
        s = self._scale * (1 - math.cos(self._phase)) ** 2 / 4 - 0.25 * self._scale
        ax, ay, az = self.amplitude_mm
        return Position(
            self.centre.x_mm + ax * s, self.centre.y_mm + ay * s, self.centre.z_mm + az * s
        )

    def tracked(self, truth: Position) -> Position:
        n = self.noise_mm
        return Position(
            truth.x_mm + self._rng.gauss(0, n),
            truth.y_mm + self._rng.gauss(0, n),
            truth.z_mm + self._rng.gauss(0, n),
        )


@dataclass
class ScriptedRoom:
    """Both devices, advanced by the caller's clock. Faults are set by name."""

    motion: Breathing
    frame_rate_fps: float = 30.0
    spill_on_s: float = 2.0
    spill_off_s: float = 1.3
    dose_rate_mu_per_s: float = 1.0
    gate_delay_s: float = 0.004
    mas_per_frame: float = 0.05
    faults: set[str] = field(default_factory=set)

    # device state
    gate_open: bool = False
    dose_mu: float = 0.0
    dose_preset_mu: float = 0.0
    """The hardware dose limit, 0 at power-up as in the firmware: the gate opens only once a
    preset above the counted dose is loaded."""
    mas: float = 0.0
    exposing: bool = False
    frame_counter: int = 0
    frame_time_s: float = 0.0
    tracked: Position = field(default_factory=lambda: Position(0.0, 0.0, 0.0))
    truth: Position = field(default_factory=lambda: Position(0.0, 0.0, 0.0))
    heartbeat: int = 0
    _gate_cmd: GateCommand = GateCommand.CLOSE
    _gate_cmd_at: float = 0.0
    _last_t: float = 0.0
    # the last good reads, kept while a device is disconnected (as the real clients do)
    _bg_last: BeamGateReading = field(
        default_factory=lambda: BeamGateReading(None, None, healthy=False))
    _xi_last: ImagingReading = field(
        default_factory=lambda: ImagingReading(None, None, healthy=False))
    # ground truth accumulated
    dose_outside_window_mu: float = 0.0

    def reboot_beam_gate(self) -> None:
        """Power-cycle the beam-gate controller: dose counter, dose preset, heartbeat echo and
        gate back to their power-up values (0, 0, 0, closed)."""
        self.dose_mu = 0.0
        self.dose_preset_mu = 0.0
        self.heartbeat = 0
        self.gate_open = False
        self._gate_cmd = GateCommand.CLOSE

    def spill_active(self, t: float) -> bool:
        cycle = self.spill_on_s + self.spill_off_s
        return (t % cycle) < self.spill_on_s

    def apply(self, outputs: Outputs, t: float) -> None:
        """Take the core's commands, as the shell would write them."""
        if outputs.gate is not self._gate_cmd:
            self._gate_cmd = outputs.gate
            self._gate_cmd_at = t
        self.exposing = outputs.xray is XrayCommand.EXPOSE
        if outputs.heartbeat is not None:
            self.heartbeat = outputs.heartbeat
        if DeviceAction.LOAD_DOSE_PRESET in outputs.device_actions and outputs.dose_preset_mu:
            self.dose_preset_mu = outputs.dose_preset_mu

    def advance(self, t: float, inside: bool) -> None:
        """Advance physics to ``t``; ``inside`` says whether the true target is in the window."""
        dt = max(0.0, t - self._last_t)
        self._last_t = t
        self.truth = self.motion.true_position(t)
        if t - self._gate_cmd_at >= self.gate_delay_s:
            wanted = self._gate_cmd is GateCommand.OPEN and self.dose_mu < self.dose_preset_mu
            if "stuck_gate" in self.faults and self.gate_open:
                wanted = True
            self.gate_open = wanted
        if self.gate_open and self.spill_active(t):
            headroom = max(0.0, self.dose_preset_mu - self.dose_mu)
            delivered = min(self.dose_rate_mu_per_s * dt, headroom)
            if "stuck_gate" in self.faults:
                delivered = self.dose_rate_mu_per_s * dt
            self.dose_mu += delivered
            if not inside:
                self.dose_outside_window_mu += delivered
        if self.exposing and "frozen_frames" not in self.faults:
            period = 1.0 / self.frame_rate_fps
            while self.frame_time_s + period <= t:
                self.frame_time_s += period
                self.frame_counter += 1
                self.mas += self.mas_per_frame
                self.tracked = self.motion.tracked(self.truth)
                if "marker_jump" in self.faults:
                    self.tracked = Position(self.tracked.x_mm + 20.0, self.tracked.y_mm,
                                            self.tracked.z_mm)
        elif not self.exposing:
            self.frame_time_s = t

    def snapshot(self, t: float) -> Snapshot:
        bg = BeamGateStatus(
            gate_open_readback=self.gate_open,
            ready=True,
            spill_active=self.spill_active(t),
            chain_ok="chain" not in self.faults,
            door_closed="door" not in self.faults,
            estop_released="estop" not in self.faults,
            watchdog_tripped=False,
            dose_delivered_mu=round(self.dose_mu, 2),
            dose_preset_mu=round(self.dose_preset_mu, 2),
            fault_code=0,
            heartbeat_echo=self.heartbeat,
        )
        xi = ImagingStatus(
            prepared=self.exposing,
            exposing=self.exposing,
            frame_counter=self.frame_counter,
            frame_timestamp_ms=int(self.frame_time_s * 1000) % (1 << 32),
            device_clock_ms=int(t * 1000) % (1 << 32),
            target=self.tracked,
            tracking_confidence=0.0 if "tracking_loss" in self.faults else 0.95,
            cumulative_mas=round(self.mas, 2),
            fault_code=0,
            heartbeat_echo=self.heartbeat,
        )
        # A disconnected device answers nothing: its reading keeps the last good status and
        # read time and is unhealthy, so the core sees it degraded, then lost once stale.
        if "beam_gate_disconnect" in self.faults:
            bg_reading = BeamGateReading(self._bg_last.status, self._bg_last.read_at, False)
        else:
            bg_reading = self._bg_last = BeamGateReading(bg, t, healthy=True)
        if "imaging_disconnect" in self.faults:
            xi_reading = ImagingReading(self._xi_last.status, self._xi_last.read_at, False)
        else:
            xi_reading = self._xi_last = ImagingReading(xi, t, healthy=True)
        return Snapshot(beam_gate=bg_reading, imaging=xi_reading)
