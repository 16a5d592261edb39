"""Target motion for the imaging simulator: a seeded breathing model, or a recorded trace.

Both give the *true* target position at a time (the ground truth) and, separately, what the
tracker would report (truth plus noise, with a confidence). Positions are millimetres in room
coordinates; times are seconds of the simulator's own clock.
"""

from __future__ import annotations

import csv
import math
import random
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path

Vec = tuple[float, float, float]


@dataclass
class BreathingMotion:
    """Periodic breathing around ``centre``: exhale is the longer, resting phase.

    Each cycle draws its own amplitude scale and period from the seeded generator
    (cycle-to-cycle irregularity); the baseline drifts linearly; the tracker adds Gaussian
    noise. The same seed gives the same trajectory.
    """

    centre: Vec = (0.0, 0.0, 0.0)
    period_s: float = 4.0
    amplitude_mm: Vec = (1.0, 2.0, 8.0)
    drift_mm_per_min: Vec = (0.0, 0.0, 0.0)
    irregularity: float = 0.1
    noise_mm: float = 0.3
    seed: int = 1
    baseline_shift_mm: Vec = (0.0, 0.0, 0.0)
    """Added by the backdoor's baseline-shift fault."""
    _rng: random.Random = field(init=False, repr=False)
    _cycle_start: float = field(default=0.0, init=False)
    _cycle_period: float = field(default=0.0, init=False)
    _cycle_scale: float = field(default=1.0, init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._cycle_period = self.period_s
        self._noise_rng = random.Random(self.seed + 7919)

    def _advance_cycles(self, t: float) -> None:
        # Bounded: at most one new cycle per call per elapsed period; times only go forward.
        for _ in range(10_000):
            if t < self._cycle_start + self._cycle_period:
                return
            self._cycle_start += self._cycle_period
            jitter = self.irregularity
            self._cycle_period = self.period_s * (1 + self._rng.uniform(-jitter, jitter) / 2)
            self._cycle_scale = 1 + self._rng.uniform(-jitter, jitter)
        self._cycle_start = t

    def true_position(self, t: float) -> Vec:
        self._advance_cycles(t)
        phase = 2 * math.pi * (t - self._cycle_start) / self._cycle_period
        # (1 - cos)^2 / 4 lies in 0..1 and dwells near 0 (exhale); centred on exhale + 1/4.
        s = self._cycle_scale * ((1 - math.cos(phase)) ** 2 / 4 - 0.25)
        minutes = t / 60.0
        return (
            self.centre[0] + self.amplitude_mm[0] * s + self.drift_mm_per_min[0] * minutes
            + self.baseline_shift_mm[0],
            self.centre[1] + self.amplitude_mm[1] * s + self.drift_mm_per_min[1] * minutes
            + self.baseline_shift_mm[1],
            self.centre[2] + self.amplitude_mm[2] * s + self.drift_mm_per_min[2] * minutes
            + self.baseline_shift_mm[2],
        )

    def tracked(self, truth: Vec) -> tuple[Vec, float]:
        n = self.noise_mm
        g = self._noise_rng.gauss
        return (truth[0] + g(0, n), truth[1] + g(0, n), truth[2] + g(0, n)), 0.95


@dataclass
class TraceMotion:
    """Replay of a recorded trace: CSV with columns ``t_s,x_mm,y_mm,z_mm`` (header required),
    optionally ``confidence``. Linear interpolation; the trace loops when it ends."""

    times: list[float]
    points: list[Vec]
    confidences: list[float]
    baseline_shift_mm: Vec = (0.0, 0.0, 0.0)

    @classmethod
    def from_csv(cls, path: Path) -> TraceMotion:
        times: list[float] = []
        points: list[Vec] = []
        confidences: list[float] = []
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"t_s", "x_mm", "y_mm", "z_mm"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{path}: trace needs columns {sorted(missing)}")
            for line, row in enumerate(reader, start=2):
                try:
                    t = float(row["t_s"])
                    p = (float(row["x_mm"]), float(row["y_mm"]), float(row["z_mm"]))
                    c = float(row.get("confidence") or 0.95)
                except ValueError as exc:
                    raise ValueError(f"{path}:{line}: {exc}") from None
                if times and t <= times[-1]:
                    raise ValueError(f"{path}:{line}: times must increase")
                times.append(t)
                points.append(p)
                confidences.append(c)
        if len(times) < 2:
            raise ValueError(f"{path}: a trace needs at least two rows")
        return cls(times, points, confidences)

    def _locate(self, t: float) -> tuple[int, float]:
        span = self.times[-1] - self.times[0]
        local = self.times[0] + ((t - self.times[0]) % span)
        i = max(1, min(len(self.times) - 1, bisect_right(self.times, local)))
        t0, t1 = self.times[i - 1], self.times[i]
        return i, (local - t0) / (t1 - t0)

    def true_position(self, t: float) -> Vec:
        i, w = self._locate(t)
        self._confidence = self.confidences[i - 1]
        a, b = self.points[i - 1], self.points[i]
        s = self.baseline_shift_mm
        return (
            a[0] + (b[0] - a[0]) * w + s[0],
            a[1] + (b[1] - a[1]) * w + s[1],
            a[2] + (b[2] - a[2]) * w + s[2],
        )

    def tracked(self, truth: Vec) -> tuple[Vec, float]:
        return truth, getattr(self, "_confidence", 0.95)


Motion = BreathingMotion | TraceMotion
