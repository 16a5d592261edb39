"""X-ray imaging controller model: state and physics, advanced by ``process(dt)``. No I/O.

Pulsed fluoroscopy: after PREPARE the tube is ready within ``prepare_time_s``; EXPOSE then
takes one frame every 1/frame_rate seconds. Each frame has a counter, a timestamp on the
device clock (ms, uint32, wraps) and the tracked target position with a confidence. Each
frame adds ``mA x pulse width`` to the cumulative mAs. A watchdog like the beam-gate's
(armed by the first heartbeat) stops exposure and latches a fault.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntFlag

from firmware_sim.motion import BreathingMotion, Motion, Vec

UINT32 = 1 << 32


class ImagingFault(IntFlag):
    NONE = 0
    WATCHDOG = 0x0001
    TUBE = 0x0002


@dataclass
class ImagingFaults:
    tracking_loss: bool = False
    """The tracker reports no target (confidence 0)."""
    frozen_frames: bool = False
    """The frame counter stops and the image is not updated, but the device clock runs."""
    frame_delay_s: float = 0.0
    """Each frame is delivered this much after acquisition (its timestamp shows it)."""
    marker_jump_mm: Vec = (0.0, 0.0, 0.0)
    """Offset added to the tracked position: a different marker was picked up."""


@dataclass
class Frame:
    counter: int
    timestamp_ms: int
    tracked: Vec
    confidence: float


@dataclass
class ImagingModel:
    motion: Motion = field(default_factory=BreathingMotion)
    frame_rate_fps: float = 30.0
    kv: float = 90.0
    ma: float = 50.0
    pulse_width_ms: float = 4.0
    prepare_time_s: float = 0.2
    watchdog_timeout_s: float = 0.2
    watchdog_scale: float = 1.0
    """As the beam gate's: the watchdog acts after ``watchdog_timeout_s`` x this
    (``--imaging-watchdog-scale``); the register still reads the configured timeout."""
    faults: ImagingFaults = field(default_factory=ImagingFaults)

    t: float = 0.0
    prepare_command: bool = False
    expose_command: bool = False
    prepared: bool = False
    exposing: bool = False
    cumulative_mas: float = 0.0
    frame: Frame = field(default_factory=lambda: Frame(0, 0, (0.0, 0.0, 0.0), 0.0))
    truth: Vec = (0.0, 0.0, 0.0)
    fault: ImagingFault = ImagingFault.NONE
    heartbeat: int = 0
    watchdog_armed: bool = False
    _heartbeat_changed_at: float = 0.0
    _prepare_since: float | None = None
    _next_frame_at: float = 0.0
    _pending: list[tuple[float, Frame]] = field(default_factory=list)

    @property
    def device_clock_ms(self) -> int:
        return int(self.t * 1000) % UINT32

    # -- inputs -----------------------------------------------------------------------

    def command_prepare(self, on: bool) -> None:
        self.prepare_command = on
        if on and self._prepare_since is None:
            self._prepare_since = self.t
        if not on:
            self._prepare_since = None
            self.prepared = False

    def command_expose(self, on: bool) -> None:
        self.expose_command = on

    def write_heartbeat(self, value: int) -> None:
        if value != self.heartbeat:
            self.heartbeat = value
            self._heartbeat_changed_at = self.t
            self.watchdog_armed = True

    def reset_faults(self) -> None:
        self.fault = ImagingFault.NONE
        self.watchdog_armed = False

    # -- physics ----------------------------------------------------------------------

    def process(self, dt: float) -> None:
        if dt <= 0:
            return
        self.t += dt
        self.truth = self.motion.true_position(self.t)
        watchdog_s = self.watchdog_timeout_s * self.watchdog_scale
        if self.watchdog_armed and self.t - self._heartbeat_changed_at > watchdog_s:
            self.fault |= ImagingFault.WATCHDOG
        if self._prepare_since is not None and self.t - self._prepare_since >= self.prepare_time_s:
            self.prepared = True
        was_exposing = self.exposing
        self.exposing = self.expose_command and self.prepared and self.fault == ImagingFault.NONE
        if not self.exposing:
            self._pending.clear()
            return
        period = 1.0 / self.frame_rate_fps
        if not was_exposing:
            self._next_frame_at = self.t
        # Bounded: at most one second of frames per call.
        for _ in range(int(self.frame_rate_fps) + 1):
            if self._next_frame_at > self.t:
                break
            self._acquire(self._next_frame_at)
            self._next_frame_at += period
        self._deliver()

    def _acquire(self, at: float) -> None:
        self.cumulative_mas += self.ma * self.pulse_width_ms / 1000.0
        if self.faults.frozen_frames:
            return
        truth = self.motion.true_position(at) if at != self.t else self.truth
        tracked, confidence = self.motion.tracked(truth)
        jump = self.faults.marker_jump_mm
        tracked = (tracked[0] + jump[0], tracked[1] + jump[1], tracked[2] + jump[2])
        if self.faults.tracking_loss:
            confidence = 0.0
        counter = (self.frame.counter + len(self._pending) + 1) % UINT32
        frame = Frame(counter, int(at * 1000) % UINT32, tracked, confidence)
        self._pending.append((at + self.faults.frame_delay_s, frame))

    def _deliver(self) -> None:
        while self._pending and self._pending[0][0] <= self.t:
            self.frame = self._pending.pop(0)[1]

    def reboot(self) -> None:
        fresh = ImagingModel(
            motion=self.motion,
            frame_rate_fps=self.frame_rate_fps,
            kv=self.kv,
            ma=self.ma,
            pulse_width_ms=self.pulse_width_ms,
            prepare_time_s=self.prepare_time_s,
            watchdog_timeout_s=self.watchdog_timeout_s,
            watchdog_scale=self.watchdog_scale,
            faults=self.faults,
        )
        fresh.t = self.t
        self.__dict__.update(fresh.__dict__)
