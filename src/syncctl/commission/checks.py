"""The pure part of commissioning: verdicts, range rules, summaries. No I/O, no clock.

Everything a commissioning step decides is decided here, from figures the step measured, so
that the rules can be read (and unit-tested) apart from the Modbus plumbing:

- ``Status`` of a check and of a step, and how a step's status follows from its checks;
- the range rules of every register (``register_rules``: what the code knows a signal means,
  what the room config says it must hold, and ranges documented in the map's descriptions);
- the watchdog rule (``watchdog_verdict``): within +-20 % of the configured timeout or
  +-30 ms, whichever is larger;
- percentile summaries (nearest rank) and the imaging frame analysis.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import pairwise
from typing import Any

from syncctl.config import CodecError, RegisterDef, RoomConfig, decode_bits, decode_raw

UINT32 = 1 << 32

WATCHDOG_TOLERANCE_FRACTION = 0.20
WATCHDOG_TOLERANCE_MIN_MS = 30.0
FRAME_RATE_TOLERANCE = 0.02
"""Measured frame rate (device clock) within +-2 % of the configured one."""
MAS_PER_FRAME_TOLERANCE = 0.05
"""Measured mAs per frame within +-5 % of mA x pulse width."""
TARGET_PLAUSIBLE_MM = 1000.0


class Status(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"
    RECORDED = "recorded"
    """Measured and written down, with nothing in the configuration to judge it against."""


@dataclass
class Check:
    """One verdict: what was measured, against what."""

    name: str
    status: Status
    measured: Any
    expected: str = ""
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status.value, "measured": self.measured,
                "expected": self.expected, "detail": self.detail}


@dataclass
class StepResult:
    """One commissioning step: its checks, its figures, and how it ended."""

    step: str
    title: str
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skip_reason: str | None = None
    started_utc: str = ""
    duration_s: float = 0.0

    def add(self, name: str, status: Status, measured: Any, expected: str = "",
            detail: str = "") -> Check:
        check = Check(name, status, measured, expected, detail)
        self.checks.append(check)
        return check

    def fail(self, name: str, detail: str, measured: Any = None, expected: str = "") -> Check:
        return self.add(name, Status.FAILED, measured, expected, detail)

    @property
    def status(self) -> Status:
        return step_status([c.status for c in self.checks], self.skip_reason)

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "title": self.title, "status": self.status.value,
                "skip_reason": self.skip_reason, "started_utc": self.started_utc,
                "duration_s": round(self.duration_s, 3), "figures": self.figures,
                "notes": self.notes, "checks": [c.as_dict() for c in self.checks]}


def step_status(checks: Sequence[Status], skip_reason: str | None) -> Status:
    """A skipped step (it must carry a reason) is SKIPPED; otherwise any failed check fails
    the step; a step without any check fails (nothing was shown); a step whose checks were
    all only recorded is RECORDED; else PASSED."""
    if skip_reason is not None:
        return Status.SKIPPED if skip_reason.strip() else Status.FAILED
    if not checks or Status.FAILED in checks or Status.SKIPPED in checks:
        return Status.FAILED
    if all(s is Status.RECORDED for s in checks):
        return Status.RECORDED
    return Status.PASSED


def run_passed(steps: Sequence[StepResult]) -> bool:
    """The run passes when every step passed, was only recorded, or was skipped with a
    reason."""
    return bool(steps) and all(s.status is not Status.FAILED for s in steps)


# --- summaries ------------------------------------------------------------------------------


def nearest_rank(ordered: Sequence[float], p: float) -> float:
    """The p-quantile (0 < p <= 1) of sorted values by nearest rank: a value that occurred."""
    if not ordered:
        raise ValueError("no values")
    rank = max(1, math.ceil(p * len(ordered) - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def summarize(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """count, min, p50, p95, p99, max, mean and (sample) stdev, rounded; None when empty."""
    if not values:
        return {"count": 0, "min": None, "p50": None, "p95": None, "p99": None, "max": None,
                "mean": None, "stdev": None}
    ordered = sorted(values)
    stdev = statistics.stdev(ordered) if len(ordered) > 1 else 0.0
    return {
        "count": len(ordered),
        "min": round(ordered[0], digits),
        "p50": round(nearest_rank(ordered, 0.50), digits),
        "p95": round(nearest_rank(ordered, 0.95), digits),
        "p99": round(nearest_rank(ordered, 0.99), digits),
        "max": round(ordered[-1], digits),
        "mean": round(statistics.fmean(ordered), digits),
        "stdev": round(stdev, digits),
    }


# --- the watchdog rule ----------------------------------------------------------------------


def watchdog_tolerance_ms(configured_ms: float) -> float:
    """+-20 % of the configured timeout, or +-30 ms, whichever is larger."""
    return max(WATCHDOG_TOLERANCE_FRACTION * configured_ms, WATCHDOG_TOLERANCE_MIN_MS)


def watchdog_verdict(measured_ms: float | None, configured_ms: float) -> tuple[Status, str]:
    """PASSED when the device failed safe within the tolerance around its configured timeout;
    too early fails as well as too late (a watchdog that trips early is not the configured
    one either). ``None``: it never failed safe within the observation window."""
    tolerance = watchdog_tolerance_ms(configured_ms)
    expected = f"{configured_ms:g} ms +- {tolerance:g} ms"
    if measured_ms is None:
        return Status.FAILED, f"did not fail safe (expected {expected})"
    deviation = measured_ms - configured_ms
    if abs(deviation) <= tolerance:
        return Status.PASSED, f"{measured_ms:.1f} ms, {deviation:+.1f} ms from {configured_ms:g}"
    side = "late" if deviation > 0 else "early"
    return Status.FAILED, (f"{measured_ms:.1f} ms is {abs(deviation):.1f} ms {side} "
                           f"(allowed {expected})")


# --- what a register's description documents -----------------------------------------------

_HEX = re.compile(r"\b0x([0-9A-Fa-f]{1,8})\b")
_RAW_RANGE = re.compile(r"(?<![\w.])(-?\d+)\s*\.\.\s*(-?\d+)(?![\w.])")
_BITS = re.compile(r"bits:\s*([^;]*)")
_BIT_ITEM = re.compile(r"(\d+)\s+([A-Za-z][\w -]*)")
_EXPECTED = re.compile(r"\bexpected[:=]?\s*(0x[0-9A-Fa-f]+|\d+)\b")


def expected_value(reg: RegisterDef) -> int | None:
    """The value a description states for an identity-like register: ``expected: N`` (or
    ``expected 0x4247``), else the first hexadecimal number (``device id, 0x4247 ('BG')``);
    None when the description states none."""
    found = _EXPECTED.search(reg.description)
    if found is not None:
        return int(found.group(1), 0)
    if reg.description.lower().startswith(("device id", "identity")):
        hexa = _HEX.search(reg.description)
        if hexa is not None:
            return int(hexa.group(1), 16)
    return None


def documented_raw_range(reg: RegisterDef) -> tuple[int, int] | None:
    """A raw range written in the description as ``A..B`` (``0..1000 = 0..1``: the first)."""
    found = _RAW_RANGE.search(reg.description)
    if found is None:
        return None
    low, high = int(found.group(1)), int(found.group(2))
    return (low, high) if low <= high else None


def documented_fault_bits(reg: RegisterDef) -> dict[int, str]:
    """Code bits listed as ``bits: 1 watchdog, 2 e-stop, 8 gate feedback`` -> {1: ...}."""
    found = _BITS.search(reg.description)
    if found is None:
        return {}
    bits: dict[int, str] = {}
    for item in found.group(1).split(","):
        match = _BIT_ITEM.fullmatch(item.strip())
        if match is not None:
            value = int(match.group(1))
            if value > 0 and value & (value - 1) == 0:
                bits[value] = match.group(2).strip()
    return bits


def watchdog_fault_bit(reg: RegisterDef) -> int:
    """The fault-code bit the description names ``watchdog`` (1 if it names none)."""
    for value, name in documented_fault_bits(reg).items():
        if "watchdog" in name.lower():
            return value
    return 1


# --- register rules -------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """An inclusive range in engineering units, and where it comes from."""

    low: float
    high: float
    why: str

    def describe(self) -> str:
        if self.low == self.high:
            return f"= {self.low:g} ({self.why})"
        return f"{self.low:g}..{self.high:g} ({self.why})"


FLAG = Rule(0, 1, "a flag: 0 or 1")


def register_rules(config: RoomConfig) -> dict[str, dict[str, Rule]]:
    """Per device kind, the range each known signal must be in: what the code knows the
    signal means (flags, a confidence of 0..1, plausible target positions) and what the room
    config says the settings are (written at session start, so they must read back equal)."""
    lim = config.room.limits
    xic = config.room.devices.imaging
    watchdog = Rule(lim.device_watchdog_timeout_ms, lim.device_watchdog_timeout_ms,
                    "limits.device_watchdog_timeout_ms, written at session start")
    target = Rule(-TARGET_PLAUSIBLE_MM, TARGET_PLAUSIBLE_MM, "plausible position, mm")

    def setting(value: float, field_name: str) -> Rule:
        return Rule(value, value, f"devices.imaging.{field_name}, written at session start")

    return {
        "beam-gate": {
            "gate_readback": FLAG, "gate_command": FLAG, "fault_reset": FLAG,
            "watchdog_timeout_ms": watchdog,
        },
        "xray-imaging": {
            "prepare_command": FLAG, "expose_command": FLAG, "fault_reset": FLAG,
            "tracking_confidence": Rule(0, 1, "a confidence"),
            "target_x": target, "target_y": target, "target_z": target,
            "frame_rate_fps": setting(xic.frame_rate_fps, "frame_rate_fps"),
            "kv": setting(xic.kv, "kv"), "ma": setting(xic.ma, "ma"),
            "pulse_width_ms": setting(xic.pulse_width_ms, "pulse_width_ms"),
            "watchdog_timeout_ms": watchdog,
        },
    }


SETTING_LIMITS: dict[str, tuple[float, float]] = {
    "frame_rate_fps": (1, 30), "kv": (40, 150), "ma": (0.1, 1000), "pulse_width_ms": (0.1, 100),
    "watchdog_timeout_ms": (10, 65535),
}
"""Where a test value for a setting may go (the room schema's ranges)."""


def trial_value(name: str, configured: float, scale: float) -> float:
    """A value one register step away from ``configured`` (up, or down at the top of the
    setting's range): written and read back to show the register really takes writes."""
    high = SETTING_LIMITS.get(name, (-math.inf, math.inf))[1]
    up = (round(configured / scale) + 1) * scale
    if up <= high:
        return round(up, 9)
    return round((round(configured / scale) - 1) * scale, 9)


def check_register(name: str, reg: RegisterDef, words: Sequence[int], word_order: str,
                   rule: Rule | None) -> Check:
    """Decode one register and judge it: type, named bits, documented ranges, the rule."""
    try:
        raw = decode_raw(reg, list(words), word_order)
    except CodecError as exc:
        return Check(name, Status.FAILED, list(words), f"a valid {reg.type}", str(exc))
    value = raw * reg.scale
    shown: Any = round(value, 6) if reg.scale != 1 else raw
    criteria: list[str] = [f"a {reg.type}"]
    problems: list[str] = []
    judged = reg.type == "bool"
    if reg.type == "bitfield":
        bits = decode_bits(reg, list(words))
        named = sum(1 << i for i in (reg.bits or {}).values())
        shown = {"raw": raw, **{k: int(v) for k, v in bits.items()}}
        criteria.append("only named bits set")
        judged = True
        if raw & ~named:
            problems.append(f"bits the map does not name are set: 0x{raw & ~named:04X}")
    documented = documented_raw_range(reg)
    if documented is not None:
        criteria.append(f"raw {documented[0]}..{documented[1]} (description)")
        judged = True
        if not documented[0] <= raw <= documented[1]:
            problems.append(f"raw {raw} outside the documented {documented[0]}..{documented[1]}")
    fault_bits = documented_fault_bits(reg)
    if fault_bits:
        mask = sum(fault_bits)
        criteria.append(f"only documented code bits (0x{mask:X})")
        judged = True
        if raw & ~mask:
            problems.append(f"undocumented code bits set: 0x{raw & ~mask:04X}")
    if rule is not None:
        criteria.append(rule.describe())
        judged = True
        eps = reg.scale / 2
        if not rule.low - eps <= value <= rule.high + eps:
            problems.append(f"{value:g} outside {rule.describe()}")
    expected = "; ".join(criteria)
    if problems:
        return Check(name, Status.FAILED, shown, expected, "; ".join(problems))
    return Check(name, Status.PASSED if judged else Status.RECORDED, shown, expected,
                 "" if judged else "nothing documents a range: type checked only")


# --- imaging frames -------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameSample:
    """One status read during exposure (host time in s, device values as read)."""

    t: float
    counter: int
    timestamp_ms: int
    device_clock_ms: int
    cumulative_mas: float


def analyse_frames(samples: Sequence[FrameSample], frame_rate_fps: float, ma: float,
                   pulse_width_ms: float, max_frame_age_ms: float
                   ) -> tuple[dict[str, Any], list[Check]]:
    """Frame rate, missed frames, frame-age jitter and mAs per frame from the reads of one
    exposure. The age of a frame is the device clock at the first read that shows it minus
    its acquisition timestamp (both on the device clock, so no clock offset enters). Frames
    the reads miss (a host or link stall) pass as long as no more are missed in a row than
    the gating's frame-age limit covers: one at 30 fps and 70 ms."""
    firsts: list[FrameSample] = []
    for s in samples:
        if not firsts or s.counter != firsts[-1].counter:
            firsts.append(s)
    figures: dict[str, Any] = {"reads": len(samples), "frames_seen": max(0, len(firsts) - 1)}
    checks: list[Check] = []
    if len(firsts) < 3:
        checks.append(Check("frames", Status.FAILED, figures["frames_seen"],
                            "at least 2 new frames", "the frame counter did not advance"))
        return figures, checks
    new = firsts[1:]  # the first is whatever frame was current when reading began
    steps = [(b.counter - a.counter) % UINT32 for a, b in pairwise(new)]
    missed = sum(s - 1 for s in steps if s > 1)
    in_a_row = max((s - 1 for s in steps), default=0)
    # Frames the reads may miss in a row while the latest frame read is still within the
    # gating's age limit: (k + 1) frame periods <= max_frame_age_ms.
    allowed = max(0, math.floor(max_frame_age_ms * frame_rate_fps / 1000 + 1e-9) - 1)
    gaps = [(b.t - a.t) * 1000 for a, b in pairwise(samples)]
    frames = (new[-1].counter - new[0].counter) % UINT32
    device_s = ((new[-1].timestamp_ms - new[0].timestamp_ms) % UINT32) / 1000
    host_s = new[-1].t - new[0].t
    fps_device = frames / device_s if device_s > 0 else math.nan
    fps_host = frames / host_s if host_s > 0 else math.nan
    intervals = [((b.timestamp_ms - a.timestamp_ms) % UINT32) / step
                 for (a, b), step in zip(pairwise(new), steps, strict=True) if step > 0]
    ages = [float((s.device_clock_ms - s.timestamp_ms) % UINT32) for s in new]
    mas = new[-1].cumulative_mas - new[0].cumulative_mas
    mas_per_frame = mas / frames if frames else math.nan
    expected_mas = ma * pulse_width_ms / 1000
    figures.update({
        "frames_counted": frames, "missed_frames": missed, "missed_in_a_row": in_a_row,
        "read_gap_max_ms": round(max(gaps), 3) if gaps else None,
        "frame_rate_device_fps": round(fps_device, 3), "frame_rate_host_fps": round(fps_host, 3),
        "frame_interval_ms": summarize(intervals), "frame_age_ms": summarize(ages),
        "mas_per_frame": round(mas_per_frame, 4), "observed_s": round(host_s, 3),
    })
    tolerance = FRAME_RATE_TOLERANCE * frame_rate_fps
    checks.append(Check(
        "frame rate (device clock)",
        Status.PASSED if abs(fps_device - frame_rate_fps) <= tolerance else Status.FAILED,
        round(fps_device, 3), f"{frame_rate_fps:g} fps +- {tolerance:.2g}"))
    checks.append(Check(
        "frames missed by the reads", Status.PASSED if in_a_row <= allowed else Status.FAILED,
        in_a_row, f"at most {allowed} in a row (a frame within gating.max_frame_age_ms "
                  f"{max_frame_age_ms:g} ms)", f"{missed} missed in all"))
    worst = max(ages)
    checks.append(Check("frame age at first read (max)",
                        Status.PASSED if worst <= max_frame_age_ms else Status.FAILED,
                        worst, f"<= gating.max_frame_age_ms {max_frame_age_ms:g} ms"))
    ok_mas = abs(mas_per_frame - expected_mas) <= MAS_PER_FRAME_TOLERANCE * expected_mas
    checks.append(Check("mAs per frame", Status.PASSED if ok_mas else Status.FAILED,
                        round(mas_per_frame, 4),
                        f"{expected_mas:g} (mA x pulse width) +- 5 %"))
    return figures, checks


def latency_check(name: str, values_ms: Sequence[float], limit_ms: float, why: str) -> Check:
    """PASSED when every measured latency is within the limit (the worst one decides)."""
    if not values_ms:
        return Check(name, Status.FAILED, None, f"<= {limit_ms:g} ms ({why})", "no measurement")
    worst = max(values_ms)
    return Check(name, Status.PASSED if worst <= limit_ms else Status.FAILED,
                 round(worst, 3), f"max <= {limit_ms:g} ms ({why})")


def json_safe(value: Any) -> Any:
    """NaN and infinities as None, recursively (the report is strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
