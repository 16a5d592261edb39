"""The review report of one recorded fraction: plots and figures in one HTML page.

Built from the recording alone (the core's view: snapshots and decisions) and, where the
simulators ran, their ground truth (where the target really was, when the gate really moved).
Plots are PNG files drawn with matplotlib's object API (no pyplot, no global state), beside an
``index.html`` that links them, so the folder can be archived or mailed as it is.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from syncctl.analysis.truth import (
    Truth,
    gating_latencies,
    sync_latencies,
    truth_from_rows,
)
from syncctl.core import Plan, WindowBox
from syncctl.recording import Recording

AXES = ("x", "y", "z")
TRIP_COLOUR = "#c0392b"
COMMAND_COLOUR = "#555555"
WINDOW_COLOUR = "#2e86c1"
GATE_COLOUR = "#27ae60"


@dataclass
class Marker:
    t: float
    label: str
    trip: bool


@dataclass
class Series:
    """The recording unpacked into plottable arrays (time in seconds from the first step)."""

    t: list[float] = field(default_factory=list)
    gate_cmd: list[int] = field(default_factory=list)
    gate_readback: list[int] = field(default_factory=list)
    xray_cmd: list[int] = field(default_factory=list)
    exposing: list[int] = field(default_factory=list)
    spill: list[int] = field(default_factory=list)
    dose_mu: list[float] = field(default_factory=list)
    mas: list[float] = field(default_factory=list)
    frame_t: list[float] = field(default_factory=list)
    frame_pos: list[tuple[float, float, float]] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    events: list[tuple[float, str, str, str]] = field(default_factory=list)
    """(t, kind, message, rule ids) for the event table."""


def unpack(rec: Recording) -> Series:
    s = Series()
    if not rec.steps:
        return s
    t0 = rec.steps[0].now
    dose_base = mas_base = None
    last_counter = None
    for st in rec.steps:
        t = st.now - t0
        out = st.out
        bg, xi = st.snapshot.beam_gate.status, st.snapshot.imaging.status
        s.t.append(t)
        s.gate_cmd.append(out["gate"] == "open")
        s.xray_cmd.append(out["xray"] == "expose")
        s.gate_readback.append(bool(bg and bg.gate_open_readback))
        s.spill.append(bool(bg and bg.spill_active))
        s.exposing.append(bool(xi and xi.exposing))
        if dose_base is None and out["mode"] == "SETUP" and bg is not None:
            dose_base = bg.dose_delivered_mu
            mas_base = xi.cumulative_mas if xi is not None else None
        s.dose_mu.append(bg.dose_delivered_mu - dose_base
                         if bg is not None and dose_base is not None else 0.0)
        s.mas.append(xi.cumulative_mas - mas_base
                     if xi is not None and mas_base is not None else 0.0)
        if xi is not None and xi.frame_counter != last_counter:
            last_counter = xi.frame_counter
            s.frame_t.append(t)
            s.frame_pos.append((xi.target.x_mm, xi.target.y_mm, xi.target.z_mm))
        if st.command is not None and out["result"] is not None:
            accepted, reason = out["result"]
            what = st.command.kind.value
            s.markers.append(Marker(t, what, trip=False))
            s.events.append((t, "command", f"{what} by {st.command.operator or '?'}: "
                             f"{'accepted' if accepted else 'REFUSED: ' + reason}", ""))
        for ev in out["events"]:
            rules = ",".join(ev["rule_ids"])
            if ev["kind"] == "trip":
                s.markers.append(Marker(t, rules, trip=True))
            if ev["kind"] not in ("command_accepted", "command_refused"):
                s.events.append((t, ev["kind"], ev["message"], rules))
    return s


def _window_limits(rec: Recording, plan: Plan) -> list[tuple[float, float]]:
    w = rec.params.window
    half = ((w.half_x_mm, w.half_y_mm, w.half_z_mm) if isinstance(w, WindowBox)
            else (w.radius_mm,) * 3)
    c = (plan.target.x_mm, plan.target.y_mm, plan.target.z_mm)
    return [(c[i] - half[i], c[i] + half[i]) for i in range(3)]


def _spans(t: list[float], flags: list[int]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    start = None
    for ti, on in zip(t, flags, strict=True):
        if on and start is None:
            start = ti
        elif not on and start is not None:
            out.append((start, ti))
            start = None
    if start is not None and t:
        out.append((start, t[-1]))
    return out


def _clusters(markers: list[Marker], span_s: float) -> list[tuple[float, str, bool]]:
    """Markers closer than 4 % of the time span share one label, so that labels of a quick
    series of commands (select plan, start imaging, arm, beam on) do not overprint."""
    out: list[tuple[float, str, bool]] = []
    gap = 0.04 * span_s
    for m in sorted(markers, key=lambda m: m.t):
        if out and m.t - out[-1][0] < gap and out[-1][2] == m.trip:
            t, label, trip = out[-1]
            out[-1] = (t, f"{label}, {m.label}", trip)
        else:
            out.append((m.t, m.label, m.trip))
    return out


def _mark(ax: Axes, markers: list[Marker], label: bool, span_s: float = 0.0) -> None:
    for m in markers:
        colour = TRIP_COLOUR if m.trip else COMMAND_COLOUR
        ax.axvline(m.t, color=colour, lw=1.2 if m.trip else 0.8,
                   ls="-" if m.trip else "--", alpha=0.9)
    if not label:
        return
    for k, (t, text, trip) in enumerate(_clusters(markers, span_s)):
        ax.annotate(text, (t, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(2, 2 + 10 * (k % 2)), textcoords="offset points", fontsize=7,
                    color=TRIP_COLOUR if trip else COMMAND_COLOUR, ha="left", va="bottom",
                    fontweight="bold" if trip else "normal")


def plot_motion(rec: Recording, s: Series, truth: Truth | None, plan: Plan, path: Path) -> None:
    fig = Figure(figsize=(11, 7.5), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    limits = _window_limits(rec, plan)
    gate_spans = _spans(s.t, s.gate_cmd)
    t0 = rec.steps[0].now
    for i, ax in enumerate(axes):
        lo, hi = limits[i]
        ax.axhspan(lo, hi, color=WINDOW_COLOUR, alpha=0.12, label="gating window")
        for edge in (lo, hi):
            ax.axhline(edge, color=WINDOW_COLOUR, lw=0.8, ls="--")
        for a, b in gate_spans:
            ax.axvspan(a, b, color=GATE_COLOUR, alpha=0.12, lw=0)
        if truth is not None and truth.target.times:
            tt = [t - t0 for t in truth.target.times]
            vals = [(p.x_mm, p.y_mm, p.z_mm)[i] for p in truth.target.positions]
            ax.plot(tt, vals, color="black", lw=0.8, label="true target (simulator)")
        if s.frame_t:
            ax.plot(s.frame_t, [p[i] for p in s.frame_pos], ".", ms=2.5, color="#d35400",
                    label="tracked target (per frame)")
        ax.set_ylabel(f"{AXES[i]} (mm)")
        ax.grid(alpha=0.3)
        _mark(ax, s.markers, label=(i == 0), span_s=s.t[-1])
    axes[-1].set_xlabel("time since recording start (s)")
    handles, labels = axes[0].get_legend_handles_labels()
    handles.append(Patch(color=GATE_COLOUR, alpha=0.3))
    labels.append("gate commanded open")
    fig.legend(handles, labels, loc="outside lower center", ncols=4, fontsize=8)
    fig.suptitle(f"Target position against the gating window: plan {plan.plan_id}")
    fig.savefig(path, dpi=110)


def plot_timing(rec: Recording, s: Series, truth: Truth | None, path: Path) -> None:
    """A timing diagram: one lane per signal, high when on."""
    t0 = rec.steps[0].now
    lanes: list[tuple[str, list[float], list[int]]] = [
        ("gate command", s.t, s.gate_cmd),
        ("gate readback", s.t, s.gate_readback),
        ("spill (BGC)", s.t, s.spill),
        ("X-ray command", s.t, s.xray_cmd),
        ("X-ray exposing", s.t, s.exposing),
    ]
    if truth is not None and truth.gate:
        tg = [g.t - t0 for g in truth.gate]
        lanes.insert(2, ("gate actual (sim)", tg, [g.gate_open for g in truth.gate]))
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax = fig.subplots()
    for k, (name, t, flags) in enumerate(lanes):
        base = (len(lanes) - 1 - k) * 1.5
        ax.fill_between(t, base, [base + 0.9 * f for f in flags], step="post",
                        color=GATE_COLOUR if "gate" in name else
                        ("#8e44ad" if "X-ray" in name else "#f39c12"), alpha=0.7, lw=0)
    ax.set_yticks([(len(lanes) - 1 - k) * 1.5 + 0.45 for k in range(len(lanes))],
                  [name for name, _, _ in lanes])
    ax.set_ylim(-0.3, len(lanes) * 1.5)
    ax.set_xlabel("time since recording start (s)")
    ax.grid(axis="x", alpha=0.3)
    _mark(ax, s.markers, label=True, span_s=s.t[-1])
    fig.suptitle("Gate, spill and X-ray (high = on); dashed: operator commands, red: trips")
    fig.savefig(path, dpi=110)


def plot_dose(rec: Recording, s: Series, plan: Plan, path: Path) -> None:
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    ax_d, ax_m = fig.subplots(1, 2, width_ratios=(2, 1))
    ax_d.plot(s.t, s.dose_mu, color=GATE_COLOUR, label="delivered (BGC counter)")
    ax_d.axhline(plan.planned_dose_mu, color="black", ls="--", lw=1, label="planned")
    ax_d.set_xlabel("time since recording start (s)")
    ax_d.set_ylabel("dose (MU)")
    ax_d.grid(alpha=0.3)
    _mark(ax_d, s.markers, label=False)
    ax_d.legend(fontsize=8, loc="upper left")
    budget = rec.params.imaging_budget_mas
    ax_m.plot(s.t, s.mas, color="#8e44ad", label="imaging (XIC counter)")
    ax_m.axhline(budget, color="black", ls="--", lw=1, label="budget")
    ax_m.set_xlabel("time since recording start (s)")
    ax_m.set_ylabel("tube current-time product (mAs)")
    ax_m.grid(alpha=0.3)
    ax_m.legend(fontsize=8, loc="upper left")
    fig.suptitle("Dose delivered against plan, and imaging dose against budget")
    fig.savefig(path, dpi=110)


def plot_latencies(gating_ms: list[float], sync_ms: list[float], path: Path) -> None:
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    for ax, values, title in zip(fig.subplots(1, 2), (gating_ms, sync_ms), (
            "gating latency: true exit from the window -> gate actually closed",
            "synchronizer latency: frame available -> gate command received"), strict=True):
        if values:
            ax.hist(values, bins=min(30, max(5, len(values))), color=WINDOW_COLOUR,
                    edgecolor="white")
            ax.axvline(max(values), color=TRIP_COLOUR, lw=1, ls=":", label=f"max "
                       f"{max(values):.1f} ms")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no samples", transform=ax.transAxes, ha="center")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("ms")
        ax.set_ylabel("count")
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)


def _figures_table(figures: dict[str, Any]) -> str:
    rows = []
    for key, value in figures.items():
        if isinstance(value, dict):
            shown = ", ".join(f"{k} {_num(v)}" for k, v in value.items())
        elif isinstance(value, list):
            shown = "; ".join(str(v) for v in value) or "none"
        else:
            shown = _num(value)
        rows.append(f"<tr><th>{html.escape(key)}</th><td>{html.escape(shown)}</td></tr>")
    return "<table class='figures'>" + "".join(rows) + "</table>"


def _num(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:g}" if isinstance(v, float) else str(v)


def write_review(rec: Recording, out_dir: Path) -> Path:
    """Write ``index.html`` and its PNG plots into ``out_dir``; return the page's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if not rec.steps:
        raise ValueError(f"{rec.path}: the recording holds no control steps")
    params = rec.params
    plan_id = rec.header.get("plan_id")
    plan = params.plan(plan_id) if isinstance(plan_id, str) else None
    if plan is None:
        plan = params.plans[0]
    s = unpack(rec)
    truth = truth_from_rows(rec.truth) if rec.truth else None
    t0, t_end = rec.steps[0].now, rec.steps[-1].now
    gating_ms: list[float] = []
    sync_ms: list[float] = []
    if truth is not None:
        gating_ms = [1000 * v for v in gating_latencies(
            truth.gate, truth.target, params.window, plan.target, t0, t_end)]
        sync_ms = [1000 * v for v in sync_latencies(
            truth.frame_times, truth.command_times, t0, t_end, params.max_frame_age_s)]
    plot_motion(rec, s, truth, plan, out_dir / "motion.png")
    plot_timing(rec, s, truth, out_dir / "timing.png")
    plot_dose(rec, s, plan, out_dir / "dose.png")
    plot_latencies(gating_ms, sync_ms, out_dir / "latency.png")
    figures = rec.summary or {
        "final_state": rec.steps[-1].out["mode"],
        "planned_dose_mu": plan.planned_dose_mu,
        "delivered_dose_mu": round(s.dose_mu[-1], 3),
        "imaging_mas": round(s.mas[-1], 2),
        "note": "no summary in the recording (cut off): figures from the core's view only",
    }
    page = out_dir / "index.html"
    page.write_text(_page(rec, plan, figures, s), encoding="utf-8")
    return page


def _page(rec: Recording, plan: Plan, figures: dict[str, Any], s: Series) -> str:
    h = rec.header
    esc = html.escape
    outcome = esc(str(figures.get("final_state", "?")))
    status = "complete" if rec.complete else "INCOMPLETE (recorder cut off)"
    dropped = (f"<p class='warn'>{rec.dropped} control steps were dropped while recording."
               "</p>" if rec.dropped else "")
    events = "".join(
        f"<tr class='{esc(kind)}'><td>{t:.3f}</td><td>{esc(kind)}</td><td>{esc(rules)}</td>"
        f"<td>{esc(msg)}</td></tr>" for t, kind, msg, rules in s.events)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Fraction review: {esc(h['room_id'])} {esc(plan.plan_id)} {esc(h['created_utc'])}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; max-width: 1250px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }}
table.figures th {{ background: #f4f4f4; }}
tr.trip td {{ color: #c0392b; font-weight: bold; }}
.warn {{ color: #c0392b; font-weight: bold; }}
img {{ max-width: 100%; border: 1px solid #ddd; margin-bottom: 1em; }}
</style></head><body>
<h1>Fraction review: {outcome}</h1>
<p>Room <b>{esc(h['room_id'])}</b>, plan <b>{esc(plan.plan_id)}</b>
({plan.planned_dose_mu:g} MU), recorded {esc(h['created_utc'])} by syncctl
{esc(h['software_version'])} ({esc(h['source'])}); configuration {esc(h['config_path'])},
hash <code>{esc(h['config_hash'])}</code>; {len(rec.steps)} control steps, {status}.
Recording: <code>{esc(str(rec.path))}</code></p>
{dropped}
<h2>Figures</h2>
{_figures_table(figures)}
<h2>Target position and gating window</h2>
<img src="motion.png" alt="target position per axis against the gating window">
<h2>Gate, spill and X-ray</h2>
<img src="timing.png" alt="timing diagram of gate, spill and X-ray">
<h2>Dose</h2>
<img src="dose.png" alt="dose delivered against plan and imaging dose against budget">
<h2>Latencies (ground truth)</h2>
<img src="latency.png" alt="histograms of gating and synchronizer latencies">
<h2>Events</h2>
<table><tr><th>t (s)</th><th>kind</th><th>rules</th><th>what</th></tr>{events}</table>
</body></html>
"""
