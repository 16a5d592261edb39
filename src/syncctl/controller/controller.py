"""The control cycle.

Two tasks share the work, because the two devices live on different lines:

- the **cycle** (about 1 kHz): read the beam-gate status block, take the latest imaging
  reading, call the pure step, write the gate when its command changes, write the heartbeat
  when the step says one is due, perform device actions, tell the listeners;
- the **imaging task**: the imaging controller sits on a half-duplex serial line, so one task
  owns it. It polls at its own period, and closely around the moment the next frame is due
  (:class:`syncctl.controller.frames.FramePoller`, when ``frame_period_s`` is given); it writes
  the X-ray command the moment the cycle changes it (an Event wakes it), and the heartbeat.
  A poll that brings a new frame wakes the cycle at once, so that the frame is judged without
  waiting for the cycle's next turn.

Stepping only on change: with ``max_step_interval_s`` > 0, a cycle whose snapshot differs
from the one last stepped only in its clocks and read times
(:func:`syncctl.core.change.only_time_moved`), with no command queued, is *skipped*: no
step, no report; the last outputs stay, a gate write that failed is retried. The core is
still stepped at least every ``max_step_interval_s`` for its time-driven rules
(:func:`step_interval_s`; docs/controller.md, *Stepping only on change*).

Deadlines: a cycle that takes longer than ``deadline_s`` is an overrun; overruns are counted,
and ``max_consecutive_overruns`` in a row are reported to the core as data in the snapshot,
where a rule turns them into a trip.

Shutdown: whatever ends the run (stop request, signal, exception), the gate is commanded
closed and the X-ray stopped, and both are verified by readback. The firmware watchdogs back
this up when the process dies without a chance to do it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

from syncctl.controller.frames import FramePoller
from syncctl.core import (
    RULES,
    BeamGateReading,
    Command,
    CoreParams,
    CoreState,
    DeviceAction,
    GateCommand,
    ImagingReading,
    Outputs,
    Rule,
    Snapshot,
    XrayCommand,
    initial_state,
    step,
)
from syncctl.core.change import only_time_moved

log = logging.getLogger("syncctl.controller")
T = TypeVar("T")


class BeamGatePort(Protocol):
    """What the controller needs of the beam-gate client (syncctl.devices.BeamGateClient)."""

    @property
    def reading(self) -> BeamGateReading: ...
    async def poll(self) -> BeamGateReading: ...
    async def write_gate(self, command: GateCommand) -> bool: ...
    async def write_heartbeat(self, value: int) -> bool: ...
    async def load_dose_preset(self, preset_mu: float) -> bool: ...
    async def reset_faults(self) -> bool: ...
    async def close(self) -> None: ...


class ImagingPort(Protocol):
    @property
    def reading(self) -> ImagingReading: ...
    async def poll(self) -> ImagingReading: ...
    async def write_xray(self, command: XrayCommand) -> bool: ...
    async def write_heartbeat(self, value: int) -> bool: ...
    async def reset_faults(self) -> bool: ...
    async def close(self) -> None: ...


@dataclass
class CycleStats:
    cycles: int = 0
    overruns: int = 0
    consecutive_overruns: int = 0
    max_cycle_s: float = 0.0
    recent_cycle_s: deque[float] = field(default_factory=lambda: deque(maxlen=4096))
    gate_writes: int = 0
    failed_writes: int = 0
    imaging_polls: int = 0
    frame_wakes: int = 0
    """Cycles run early because the imaging task had just seen a new frame."""
    steps: int = 0
    """Cycles in which the core stepped (the others were skipped: nothing but time moved)."""

    def percentile_ms(self, q: float) -> float:
        if not self.recent_cycle_s:
            return 0.0
        ordered = sorted(self.recent_cycle_s)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(frozen=True)
class ControllerReport:
    """What one cycle hands to its listeners (bus, recorder, console, progress display)."""

    now: float
    snapshot: Snapshot
    state: CoreState
    outputs: Outputs


Listener = Callable[[ControllerReport], None]

MAX_STEP_INTERVAL_S = 0.05
"""The largest ``max_step_interval_s`` a Controller accepts."""

STEP_INTERVAL_CAP_S = 0.005
"""``step_interval_s`` never exceeds this, however long the room's deadlines."""


def step_interval_s(params: CoreParams) -> float:
    """The longest a room's core may go unstepped while nothing but time moves.

    A quarter of the shortest deadline a time-driven rule judges (gate and X-ray actuation
    timeouts, heartbeat period, device staleness, frame age), at most 5 ms: such a rule is
    then judged at most a quarter of its own deadline late. ``max_time_step_s`` is among
    them too, because two steps further apart than that are a clock fault (IL-018): with it,
    two steps are never more than half of it apart (500 ms in the simulated room, so it
    changes nothing there). Derived from the room's configuration, not a setting of its own
    (the config hash stays what it was).
    """
    shortest = min(
        params.gate_actuation_timeout_s,
        params.heartbeat_period_s,
        params.device_stale_s,
        params.xray_actuation_timeout_s,
        params.max_frame_age_s,
        params.max_time_step_s,
    )
    return min(STEP_INTERVAL_CAP_S, shortest / 4)


class Controller:
    def __init__(
        self,
        params: CoreParams,
        beam_gate: BeamGatePort,
        imaging: ImagingPort,
        *,
        period_s: float = 0.001,
        imaging_period_s: float = 0.004,
        deadline_s: float = 0.010,
        max_consecutive_overruns: int = 5,
        clock: Callable[[], float] = time.monotonic,
        rules: tuple[Rule, ...] = RULES,
        max_step_interval_s: float = 0.0,
        frame_period_s: float = 0.0,
    ) -> None:
        """``rules`` is the interlock rule table handed to ``step``. It exists for QA's
        weakened-rule demonstration only (``syncctl.safety.runner``: a scenario run with one rule
        removed must fail); production code always uses the full table, ``syncctl.core.RULES``.

        ``max_step_interval_s`` (0 to ``MAX_STEP_INTERVAL_S``): 0 steps the core every cycle;
        above 0, a cycle in which nothing but time moved is skipped unless the last step is at
        least that long ago. Production code passes ``step_interval_s(params)``.

        ``frame_period_s`` (1 / the imaging frame rate; 0: off): poll the imaging controller
        also where the next frame is due, not only every ``imaging_period_s``
        (:class:`~syncctl.controller.frames.FramePoller`), and run a cycle as soon as a new
        frame is read.
        """
        if not 0.0 <= max_step_interval_s <= MAX_STEP_INTERVAL_S:
            raise ValueError(
                f"max_step_interval_s={max_step_interval_s!r} outside 0..{MAX_STEP_INTERVAL_S}")
        self.max_step_interval_s = float(max_step_interval_s)
        self.rules = rules
        self.beam_gate = beam_gate
        self.imaging = imaging
        self.period_s = period_s
        self.imaging_period_s = imaging_period_s
        self.deadline_s = deadline_s
        self.max_consecutive_overruns = max_consecutive_overruns
        self.clock = clock
        self.state = initial_state(params, clock())
        self.stats = CycleStats()
        self.listeners: list[Listener] = []
        self.last_outputs: Outputs | None = None
        """The outputs of the last step (a skipped cycle leaves them as they are)."""
        self._held: Outputs | None = None
        self._last_stepped: Snapshot | None = None
        self._last_step_at = 0.0
        self._commands: deque[Command] = deque(maxlen=64)
        self._gate_written: GateCommand | None = None
        self._xray_wanted = XrayCommand.STOP
        self._xray_written: XrayCommand | None = None
        self._imaging_heartbeat: int | None = None
        self._imaging_reset = False
        self._imaging_wake = asyncio.Event()
        self.frames = FramePoller(imaging_period_s, frame_period_s)
        self._cycle_waiter: asyncio.Future[bool] | None = None
        self._gate_session: int | None = None
        self._xray_session: int | None = None

    # -- inputs -----------------------------------------------------------------------------

    def submit(self, command: Command) -> None:
        """Queue an operator command; the core takes one per cycle and answers in its outputs."""
        self._commands.append(command)

    # -- the run ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> bool:
        """Run until ``stop`` is set. Always ends with the safe commands written and verified;
        returns whether the safe state was confirmed by readback. Exceptions propagate after
        the safe shutdown was attempted."""
        imaging_stop = asyncio.Event()
        imaging_task = asyncio.create_task(self._imaging_loop(imaging_stop), name="imaging")
        try:
            await self._cycle_loop(stop, imaging_task)
        finally:
            imaging_stop.set()
            self._imaging_wake.set()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(imaging_task, timeout=1.0)
            if not imaging_task.done():
                imaging_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await imaging_task
        return await self.safe_shutdown()

    async def _cycle_loop(self, stop: asyncio.Event, imaging_task: asyncio.Task[None]) -> None:
        next_at = self.clock()
        early = False
        while not stop.is_set():
            if imaging_task.done():
                # The imaging task must never end on its own: treat it as a controller fault.
                exc = imaging_task.exception()
                raise RuntimeError(f"imaging task ended unexpectedly: {exc!r}")
            started = self.clock()
            await self.cycle()
            elapsed = self.clock() - started
            self._account(elapsed)
            if not early:  # a cycle run early for a frame leaves the schedule as it was
                next_at += self.period_s
            now = self.clock()
            # Fell behind: do not try to catch up with a burst. Ahead by more than a period
            # (the clock went backwards): do not wait for it either; the core judges the jump.
            if not now <= next_at <= now + self.period_s:
                next_at = max(now, min(next_at, now + self.period_s))
            early = await self._pause(max(0.0, next_at - now))

    async def _pause(self, delay_s: float) -> bool:
        """Sleep ``delay_s`` like ``asyncio.sleep``, unless a new frame ends it earlier
        (``_frame_arrived``). Returns whether it ended early."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._cycle_waiter = waiter
        timer = loop.call_later(delay_s, _resolve, waiter, False)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._cycle_waiter = None

    def _frame_arrived(self) -> None:
        waiter = self._cycle_waiter
        if waiter is not None and not waiter.done():
            self.stats.frame_wakes += 1
            waiter.set_result(True)

    def _account(self, elapsed: float) -> None:
        s = self.stats
        s.cycles += 1
        s.recent_cycle_s.append(elapsed)
        s.max_cycle_s = max(s.max_cycle_s, elapsed)
        if elapsed > self.deadline_s:
            s.overruns += 1
            s.consecutive_overruns += 1
            log.warning("cycle overrun: %.1f ms (deadline %.1f ms)", elapsed * 1e3,
                        self.deadline_s * 1e3)
        else:
            s.consecutive_overruns = 0

    async def cycle(self) -> Outputs:
        """One control cycle: read, then decide, write and publish, or skip (see
        ``_must_step``). A skipped cycle returns the last outputs without their one-shot
        parts (heartbeat, device actions, events, command answer): they were acted on when
        decided."""
        beam_gate = await self.beam_gate.poll()
        snapshot = Snapshot(
            beam_gate=beam_gate,
            imaging=self.imaging.reading,
            cycle_overrun=self.stats.consecutive_overruns >= self.max_consecutive_overruns,
        )
        now = self.clock()
        last = self.last_outputs
        if last is not None and not self._must_step(snapshot, now):
            await self._write_gate(last.gate)  # a write that failed is retried
            if self._held is None:
                self._held = replace(last, heartbeat=None, device_actions=(),
                                     dose_preset_mu=None, events=(), command_result=None)
            return self._held
        command = self._commands.popleft() if self._commands else None
        self.state, outputs = step(self.state, snapshot, command, now, self.rules)
        self.stats.steps += 1
        self._last_stepped, self._last_step_at = snapshot, now
        self.last_outputs, self._held = outputs, None
        await self._write_beam_gate(outputs)
        self._hand_to_imaging(outputs)
        report = ControllerReport(now, snapshot, self.state, outputs)
        for listener in self.listeners:
            listener(report)
        return outputs

    def _must_step(self, snapshot: Snapshot, now: float) -> bool:
        """Step when: stepping every cycle; a command is queued; the last step is
        ``max_step_interval_s`` old (or the clock went backwards since, or is not a number);
        or anything but time changed since the snapshot last stepped (that includes
        ``cycle_overrun``, a field of the snapshot)."""
        if self.max_step_interval_s <= 0.0 or self._commands or self._last_stepped is None:
            return True
        if not 0.0 <= now - self._last_step_at < self.max_step_interval_s:
            return True
        return not only_time_moved(self._last_stepped, snapshot)

    async def _write_gate(self, gate: GateCommand) -> None:
        bg = self.beam_gate
        session = _session(bg)
        if session != self._gate_session:
            # A new session (reconnect, device reboot): do not trust what the previous one
            # was told; write the current command again.
            self._gate_session, self._gate_written = session, None
        if gate is not self._gate_written:
            if await bg.write_gate(gate):
                self._gate_written = gate
                self.stats.gate_writes += 1
            else:
                # Retried next cycle, stepped or skipped; the core sees the readback.
                self.stats.failed_writes += 1

    async def _write_beam_gate(self, out: Outputs) -> None:
        bg = self.beam_gate
        await self._write_gate(out.gate)
        if out.heartbeat is not None and not await bg.write_heartbeat(out.heartbeat):
            self.stats.failed_writes += 1
        for action in out.device_actions:
            ok = True
            if action is DeviceAction.LOAD_DOSE_PRESET and out.dose_preset_mu is not None:
                ok = await bg.load_dose_preset(out.dose_preset_mu)
            elif action is DeviceAction.RESET_BEAM_GATE_FAULTS:
                ok = await bg.reset_faults()
            if not ok:
                self.stats.failed_writes += 1
                log.error("beam-gate action %s failed", action.value)

    def _hand_to_imaging(self, out: Outputs) -> None:
        wake = False
        if out.xray is not self._xray_wanted:
            self._xray_wanted = out.xray
            wake = True
        if out.heartbeat is not None:
            self._imaging_heartbeat = out.heartbeat
        if DeviceAction.RESET_IMAGING_FAULTS in out.device_actions:
            self._imaging_reset = True
            wake = True
        if wake:
            self._imaging_wake.set()

    async def _imaging_loop(self, stop: asyncio.Event) -> None:
        im = self.imaging
        while not stop.is_set():
            session = _session(im)
            if session != self._xray_session:
                self._xray_session, self._xray_written = session, None
            if self._xray_wanted is not self._xray_written:
                wanted = self._xray_wanted
                if await im.write_xray(wanted):
                    self._xray_written = wanted
                else:
                    self.stats.failed_writes += 1
            heartbeat, self._imaging_heartbeat = self._imaging_heartbeat, None
            if heartbeat is not None and not await im.write_heartbeat(heartbeat):
                self.stats.failed_writes += 1
            if self._imaging_reset:
                self._imaging_reset = False
                if not await im.reset_faults():
                    self.stats.failed_writes += 1
            polled_at = self.clock()
            reading = await im.poll()
            self.stats.imaging_polls += 1
            status = reading.status if reading.healthy else None
            new_frame = self.frames.observe(
                polled_at, None if status is None else status.frame_counter)
            if new_frame and self.frames.frame_period_s > 0:
                self._frame_arrived()
            self._imaging_wake.clear()
            now = self.clock()
            delay = self.frames.next_poll(now) - now
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, delay)):  # no task per wait
                    await self._imaging_wake.wait()

    # -- the safe state ----------------------------------------------------------------------

    async def safe_shutdown(self, timeout_s: float = 1.0) -> bool:
        """Command the gate closed and the X-ray stopped; verify both by readback.

        Retries within ``timeout_s``. Returns True when the readback confirms the safe state.
        """
        deadline = self.clock() + timeout_s
        for _ in range(1000):  # bounded; the deadline ends it first
            gate_ok = await _best_effort(self.beam_gate.write_gate(GateCommand.CLOSE))
            xray_ok = await _best_effort(self.imaging.write_xray(XrayCommand.STOP))
            bg = await _best_effort(self.beam_gate.poll())
            im = await _best_effort(self.imaging.poll())
            closed = (
                isinstance(bg, BeamGateReading) and bg.healthy and bg.status is not None
                and not bg.status.gate_open_readback
            )
            stopped = (
                isinstance(im, ImagingReading) and im.healthy and im.status is not None
                and not im.status.exposing
            )
            if gate_ok is True and xray_ok is True and closed and stopped:
                log.info("safe state confirmed by readback: gate closed, X-ray stopped")
                return True
            if self.clock() >= deadline:
                break
            await asyncio.sleep(0.01)
        log.error("safe state NOT confirmed by readback within %.1f s", timeout_s)
        return False


def _resolve(waiter: asyncio.Future[bool], value: bool) -> None:
    if not waiter.done():
        waiter.set_result(value)


async def _best_effort(call: Awaitable[T]) -> T | None:
    """Await a device call during shutdown; a failure is logged, never raised, so that the
    other safe command still goes out and the original error is the one reported."""
    try:
        return await call
    except Exception:
        log.exception("device call failed during safe shutdown")
        return None


def _session(client: object) -> int | None:
    """The client's count of verified sessions, when it keeps one (syncctl.devices does)."""
    stats = getattr(client, "stats", None)
    if isinstance(stats, dict):
        value = stats.get("sessions_verified")
        return value if isinstance(value, int) else None
    return None
