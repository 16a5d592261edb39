"""Judge a fraction from the simulators' ground truth, not from what the controller believed.

Pure functions over time series (seconds on the machine's monotonic clock, which the
simulators and the controller share on one machine):

- *dose outside the window*: every dose increment is attributed to the TRUE target position at
  that time; increments while it was outside the gating window (no hysteresis) are summed;
- *gating latency*: from the true target leaving the window while the gate was open to the
  gate actually closing (the safety-relevant direction);
- *synchronizer latency*: from a frame becoming available at the imaging controller to the
  next gate command received by the beam-gate controller (read, decide, write).
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from syncctl.core.gating import inside_window
from syncctl.core.types import Position, Window


@dataclass(frozen=True)
class GateSample:
    t: float
    gate_open: bool
    spill_active: bool
    dose_mu: float


@dataclass(frozen=True)
class TargetSample:
    t: float
    position: Position


@dataclass(frozen=True)
class Percentiles:
    count: int
    p50: float
    p95: float
    p99: float
    max: float

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready: no samples gives nulls, never NaN (which JSON does not have)."""
        def num(v: float) -> float | None:
            return None if math.isnan(v) else round(v, 3)

        return {"count": self.count, "p50": num(self.p50), "p95": num(self.p95),
                "p99": num(self.p99), "max": num(self.max)}


def percentiles(values: Sequence[float]) -> Percentiles:
    if not values:
        return Percentiles(0, math.nan, math.nan, math.nan, math.nan)
    ordered = sorted(values)

    def q(p: float) -> float:
        # nearest-rank
        rank = max(1, math.ceil(p * len(ordered)))
        return ordered[rank - 1]

    return Percentiles(len(ordered), q(0.50), q(0.95), q(0.99), ordered[-1])


class TargetTrack:
    """The true target position at any time, by linear interpolation of samples."""

    def __init__(self, samples: Sequence[TargetSample]) -> None:
        ordered = sorted(samples, key=lambda s: s.t)
        self.times = [s.t for s in ordered]
        self.positions = [s.position for s in ordered]

    def at(self, t: float) -> Position | None:
        if not self.times or t < self.times[0] or t > self.times[-1]:
            return None
        i = bisect_left(self.times, t)
        if self.times[i] == t or i == 0:
            return self.positions[i]
        t0, t1 = self.times[i - 1], self.times[i]
        a, b = self.positions[i - 1], self.positions[i]
        w = (t - t0) / (t1 - t0) if t1 > t0 else 0.0
        return Position(a.x_mm + (b.x_mm - a.x_mm) * w, a.y_mm + (b.y_mm - a.y_mm) * w,
                        a.z_mm + (b.z_mm - a.z_mm) * w)


def dose_outside_window(
    gate: Sequence[GateSample], track: TargetTrack, window: Window, centre: Position
) -> tuple[float, float]:
    """(dose delivered with the true target outside the window, dose whose position is
    unknown because no truth sample covers it). Unknown is reported, never assumed inside."""
    outside = unknown = 0.0
    for prev, cur in pairwise(gate):
        delta = cur.dose_mu - prev.dose_mu
        if delta <= 0:
            continue
        where = track.at((prev.t + cur.t) / 2)
        if where is None:
            unknown += delta
        elif not inside_window(where, centre, window, 0.0):
            outside += delta
    return outside, unknown


def gating_latencies(
    gate: Sequence[GateSample],
    track: TargetTrack,
    window: Window,
    centre: Position,
    start: float,
    end: float,
    max_latency_s: float = 1.0,
) -> list[float]:
    """Seconds from each true exit from the window (while the gate was open) to the gate
    actually closing, within [start, end]."""
    times = [g.t for g in gate]
    latencies: list[float] = []
    was_inside: bool | None = None
    prev_t = start
    for t, pos in zip(track.times, track.positions, strict=False):
        if t < start or t > end:
            was_inside = None
            continue
        inside = inside_window(pos, centre, window, 0.0)
        if was_inside and not inside:
            exit_t = _crossing(track, window, centre, prev_t, t)
            i = bisect_right(times, exit_t) - 1
            if i >= 0 and gate[i].gate_open:
                for g in gate[i + 1:]:
                    if g.t - exit_t > max_latency_s:
                        break
                    if not g.gate_open:
                        latencies.append(g.t - exit_t)
                        break
        was_inside = inside
        prev_t = t
    return latencies


def _crossing(track: TargetTrack, window: Window, centre: Position, t_in: float,
              t_out: float) -> float:
    """The time the interpolated track leaves the window between two samples (bisection)."""
    for _ in range(30):
        mid = (t_in + t_out) / 2
        where = track.at(mid)
        if where is not None and inside_window(where, centre, window, 0.0):
            t_in = mid
        else:
            t_out = mid
    return t_out


def sync_latencies(
    frame_times: Sequence[float],
    command_times: Sequence[float],
    start: float,
    end: float,
    max_age_s: float,
) -> list[float]:
    """Seconds from the latest frame available before each gate command to that command's
    arrival, for commands within [start, end] whose latest frame is younger than
    ``max_age_s`` (a command not caused by a frame, such as a trip, has none)."""
    frames = sorted(frame_times)
    out: list[float] = []
    for t_cmd in command_times:
        if not start <= t_cmd <= end:
            continue
        i = bisect_right(frames, t_cmd) - 1
        if i < 0:
            continue
        age = t_cmd - frames[i]
        if age <= max_age_s:
            out.append(age)
    return out


def beam_on_time(gate: Sequence[GateSample]) -> tuple[float, int]:
    """(seconds with the gate actually open during a spill, number of actual gate openings)."""
    on = 0.0
    openings = 0
    for prev, cur in pairwise(gate):
        if prev.gate_open and prev.spill_active:
            on += cur.t - prev.t
        if cur.gate_open and not prev.gate_open:
            openings += 1
    return on, openings


@dataclass
class Truth:
    """Everything the simulators recorded, as the analysis functions take it."""

    gate: list[GateSample]
    target: TargetTrack
    frame_times: list[float]
    command_times: list[float]
    faults: list[dict[str, object]]


TRUTH_FILES = {"beam-gate": "beam-gate.jsonl", "imaging": "imaging.jsonl"}
"""Device name -> ground-truth file name in a simulator's ``--truth`` directory."""


def read_truth_rows(directory: Path) -> dict[str, list[dict[str, Any]]]:
    """The rows of each device's truth file. A truncated last line (the simulator was killed
    mid-write) is ignored."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for device, name in TRUTH_FILES.items():
        path = directory / name
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.setdefault(device, []).append(row)
    return rows


def load_truth(directory: Path) -> Truth:
    """Read ``beam-gate.jsonl`` and ``imaging.jsonl`` (docs/simulators.md)."""
    return truth_from_rows(read_truth_rows(directory))


def truth_from_rows(rows: dict[str, list[dict[str, Any]]]) -> Truth:
    """The analysis form of truth rows, from files or from a fraction recording."""
    gate: list[GateSample] = []
    targets: list[TargetSample] = []
    frames: list[float] = []
    commands: list[float] = []
    faults: list[dict[str, object]] = []
    for device_rows in rows.values():
        for row in device_rows:
            kind = row.get("type")
            if kind == "state" and "gate_open" in row:
                gate.append(GateSample(row["t"], row["gate_open"], row["spill_active"],
                                       row["dose_mu"]))
            elif kind == "state" and "x" in row:
                targets.append(TargetSample(row["t"], Position(row["x"], row["y"], row["z"])))
            elif kind == "frame":
                frames.append(row["t_available"])
            elif kind == "gate_command":
                commands.append(row["t_received"])
            elif kind == "fault":
                faults.append(row)
    gate.sort(key=lambda g: g.t)
    return Truth(gate, TargetTrack(targets), sorted(frames), sorted(commands), faults)
