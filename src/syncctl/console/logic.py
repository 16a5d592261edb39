"""What the console shows and allows, as plain functions over the bus payloads (no Textual).

Availability follows the same tables the room service and the core use: the role's
permissions (``syncctl.bus.authorise``) and the mode table (``syncctl.core.modes``). The service
and the core check again: a disabled button is a convenience, never the safety barrier.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from syncctl.bus import RoomContext, RoomState, Telemetry, TelemetryGaps, authorise
from syncctl.core import Mode
from syncctl.core.modes import NOT_ALLOWED, TRANSITIONS, Trigger, next_mode


@dataclass(frozen=True)
class Action:
    command: str
    key: str
    label: str
    does: str
    """What it will do, in the confirmation's words."""


ACTIONS: tuple[Action, ...] = (
    Action("select_plan", "p", "Select plan",
           "select the plan: SAFE -> SETUP (the beam stays off)"),
    Action("start_imaging", "i", "Imaging on",
           "start X-ray imaging (fluoroscopy) for positioning and tracking"),
    Action("stop_imaging", "o", "Imaging off", "stop X-ray imaging"),
    Action("arm", "a", "Arm",
           "arm: SETUP -> READY (checks imaging, tracking and the beam gate; no beam yet)"),
    Action("beam_on", "b", "BEAM ON",
           "start the treatment: READY -> TREATING; the beam is gated by the target"),
    Action("pause", "h", "Pause",
           "interrupt the treatment: TREATING -> HOLD (the gate closes; resume later)"),
    Action("resume", "r", "Resume", "resume the treatment: HOLD -> TREATING"),
    Action("abort", "x", "Abort",
           "terminate the fraction: back to SAFE; the plan must be selected again"),
    Action("acknowledge", "k", "Acknowledge", "acknowledge the alarms and latched trips"),
    Action("reset", "e", "Reset",
           "reset: FAULT -> SAFE once every latched trip is acknowledged"),
    Action("shelve", "s", "Shelve",
           "shelve an interruption alarm (physicist: reason and expiry; it still denies)"),
)
ACTIONS_BY_COMMAND = {a.command: a for a in ACTIONS}


def _sources(trigger: Trigger) -> list[str]:
    return sorted({m.value for t in TRANSITIONS if t.trigger is trigger for m in t.sources})


def why_not(command: str, role: str | None, state: RoomState | None, room_id: str,
            *, online: bool = True) -> str:
    """"" when ``command`` is available now to ``role``, else why not (in words)."""
    if state is None:
        return "no room state yet"
    if not online:
        return "the controller is offline"
    mode = Mode(state.mode)
    if command == "shelve":
        why = authorise(role, command, RoomContext(room_id, mode, False), None)
        if why.startswith("no rule"):  # the rule is chosen in the dialog
            return ""
        return why
    why = authorise(role, command, RoomContext(room_id, mode, False))
    if why:
        return why
    trigger = Trigger(command)
    if next_mode(mode, trigger) is NOT_ALLOWED:
        return f"not allowed in {mode.value} (only in {', '.join(_sources(trigger))})"
    if command == "start_imaging" and state.imaging_requested:
        return "imaging is already on"
    if command == "stop_imaging" and not state.imaging_requested:
        return "imaging is off"
    return ""


# --- telemetry gaps ------------------------------------------------------------------------------


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def telemetry_gap_text(gaps: TelemetryGaps) -> str:
    """"" while no telemetry was missed, else the banner's words: the samples this console
    missed (``BusClient.telemetry_gaps``: from the sequence numbers, so whichever message was
    lost), and how many the controller says it could not send in its current run (known from
    any message, also what it dropped before this console started)."""
    parts = []
    if gaps.missing:
        last = gaps.last_gap
        when = f", last at {last.utc[11:19]} UTC" if last is not None and last.utc else ""
        parts.append(f"telemetry gap: {_plural(gaps.missing, 'sample')} missed in "
                     f"{_plural(gaps.gaps, 'gap')} (largest {gaps.largest_gap}{when})")
    if gaps.publisher_dropped_total:
        parts.append(f"the controller could not send {gaps.publisher_dropped_total} "
                     "telemetry samples in this run")
    if gaps.out_of_order:
        parts.append(f"{_plural(gaps.out_of_order, 'telemetry sample')} out of order")
    return "; ".join(parts)


# --- the gating trace --------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    t_s: float
    offset_mm: float | None
    """Target minus window centre along the traced axis."""
    half_mm: float | None
    """Half-size of the window along that axis."""
    gate_open: bool
    spill: bool


AXES = ("x", "y", "z")


class Trace:
    """The last ``span_s`` seconds of telemetry along one axis, drawn with block characters."""

    def __init__(self, span_s: float = 10.0, axis: int = 2, maxlen: int = 2000) -> None:
        self.span_s = span_s
        self.axis = axis
        self.samples: deque[Sample] = deque(maxlen=maxlen)

    def add(self, t: Telemetry) -> None:
        offset = half = None
        if t.target_mm is not None and t.window_centre_mm is not None:
            offset = t.target_mm[self.axis] - t.window_centre_mm[self.axis]
        if t.window_size_mm:
            half = t.window_size_mm[0] if t.window_shape == "sphere" else (
                t.window_size_mm[self.axis] if len(t.window_size_mm) > self.axis else None)
        gate_open = bool(t.gate_readback_open) if t.gate_readback_open is not None else (
            t.gate_command == "open")
        self.samples.append(Sample(t.t_s, offset, half, gate_open, bool(t.spill_active)))
        while self.samples and t.t_s - self.samples[0].t_s > self.span_s + 1.0:
            self.samples.popleft()

    def render(self, width: int = 60, rows: int = 9, range_mm: float = 13.5) -> list[str]:
        """Lines: ``rows`` of position (top +range_mm, bottom -range_mm, window band shaded),
        then the gate (open: █) and spill (on: ▀) rows, then the time axis."""
        label_w = 8
        cols: list[Sample | None] = [None] * width
        if self.samples:
            end = self.samples[-1].t_s
            for sample in self.samples:
                age = end - sample.t_s
                if age > self.span_s:
                    continue
                col = width - 1 - int(age / self.span_s * (width - 1))
                cols[col] = sample
        step = 2 * range_mm / rows
        half = next((s.half_mm for s in reversed(self.samples) if s.half_mm is not None), None)
        lines: list[str] = []
        for r in range(rows):
            top = range_mm - r * step
            bottom = top - step
            centre = (top + bottom) / 2
            label = (f"{round(centre, 1) + 0.0:+5.1f}mm" if r in (0, rows // 2, rows - 1)
                     else "")
            in_band = half is not None and -half <= centre <= half
            chars = []
            for s in cols:
                if s is not None and s.offset_mm is not None and (
                        bottom <= s.offset_mm < top or (r == 0 and s.offset_mm >= top)
                        or (r == rows - 1 and s.offset_mm < bottom)):
                    chars.append("●")
                else:
                    chars.append("░" if in_band else " ")
            lines.append(f"{label:>{label_w}}│" + "".join(chars))
        lines.append(f"{'gate':>{label_w}}│" + "".join(
            "█" if s is not None and s.gate_open else ("·" if s is not None else " ")
            for s in cols))
        lines.append(f"{'spill':>{label_w}}│" + "".join(
            "▀" if s is not None and s.spill else " " for s in cols))
        axis = f"-{self.span_s:g} s"
        lines.append(" " * label_w + "└" + axis + "─" * (width - len(axis) - 3) + "now")
        return lines
