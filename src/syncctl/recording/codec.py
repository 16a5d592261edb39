"""JSON forms of the core's inputs and outputs, exact enough to replay.

Floats go through ``json`` unchanged (``repr`` round-trips every float exactly); values the
devices may send that JSON has no word for (NaN, infinities) are written as Python's ``json``
writes them (``NaN``, ``Infinity``), so a replay sees exactly what the core saw. Snapshots and
commands decode back to the core's own dataclasses; outputs are only encoded, and a replay
compares the encoded forms.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from syncctl.core import (
    BeamGateReading,
    BeamGateStatus,
    Command,
    CommandKind,
    CoreParams,
    ImagingReading,
    ImagingStatus,
    Mode,
    Outputs,
    Plan,
    Position,
    Snapshot,
    WindowBox,
    WindowSphere,
)

_BG_FIELDS = tuple(f.name for f in fields(BeamGateStatus))
_XI_FIELDS = tuple(f.name for f in fields(ImagingStatus))


def _position(p: Position) -> list[float]:
    return [p.x_mm, p.y_mm, p.z_mm]


def _to_position(v: list[float]) -> Position:
    return Position(v[0], v[1], v[2])


def encode_snapshot(s: Snapshot) -> dict[str, Any]:
    bg, xi = s.beam_gate, s.imaging
    bg_status = None if bg.status is None else {n: getattr(bg.status, n) for n in _BG_FIELDS}
    xi_status: dict[str, Any] | None = None
    if xi.status is not None:
        xi_status = {n: getattr(xi.status, n) for n in _XI_FIELDS}
        xi_status["target"] = _position(xi.status.target)
    return {
        "bg": {"status": bg_status, "read_at": bg.read_at, "healthy": bg.healthy},
        "xi": {"status": xi_status, "read_at": xi.read_at, "healthy": xi.healthy},
        "overrun": s.cycle_overrun,
    }


def decode_snapshot(d: dict[str, Any], preset_if_missing: float | None = None) -> Snapshot:
    """The snapshot of a step record. ``preset_if_missing`` stands in for a beam-gate status
    written before it held ``dose_preset_mu`` (format 1); without one such a status decodes
    with the preset unknown (None), which the core takes for invalid data (IL-003)."""
    bg, xi = d["bg"], d["xi"]
    bg_status = None
    if bg["status"] is not None:
        raw_bg = dict(bg["status"])
        raw_bg.setdefault("dose_preset_mu", preset_if_missing)
        bg_status = BeamGateStatus(**raw_bg)
    xi_status = None
    if xi["status"] is not None:
        raw = dict(xi["status"])
        raw["target"] = _to_position(raw["target"])
        xi_status = ImagingStatus(**raw)
    return Snapshot(
        beam_gate=BeamGateReading(bg_status, bg["read_at"], bg["healthy"]),
        imaging=ImagingReading(xi_status, xi["read_at"], xi["healthy"]),
        cycle_overrun=d["overrun"],
    )


def encode_command(c: Command | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {"kind": c.kind.value, "operator": c.operator, "plan_id": c.plan_id}


def decode_command(d: dict[str, Any] | None) -> Command | None:
    if d is None:
        return None
    return Command(CommandKind(d["kind"]), d["operator"], d["plan_id"])


def encode_outputs(out: Outputs, mode: Mode) -> dict[str, Any]:
    """Everything the step decided, plus the mode it left the core in."""
    result = out.command_result
    return {
        "mode": mode.value,
        "gate": out.gate.value,
        "xray": out.xray.value,
        "beam": [out.beam_permit.granted, list(out.beam_permit.denied_by)],
        "xray_permit": [out.xray_permit.granted, list(out.xray_permit.denied_by)],
        "heartbeat": out.heartbeat,
        "actions": [a.value for a in out.device_actions],
        "dose_preset_mu": out.dose_preset_mu,
        "events": [
            {"kind": e.kind.value, "at": e.at, "message": e.message,
             "rule_ids": list(e.rule_ids),
             "from": e.mode_from.value if e.mode_from else None,
             "to": e.mode_to.value if e.mode_to else None}
            for e in out.events
        ],
        "alarms": [[a.rule_id, a.latched] for a in out.alarms],
        "result": None if result is None else [result.accepted, result.reason],
    }


def encode_params(p: CoreParams) -> dict[str, Any]:
    window: dict[str, Any]
    if isinstance(p.window, WindowBox):
        window = {"shape": "box", "half_mm": [p.window.half_x_mm, p.window.half_y_mm,
                                              p.window.half_z_mm]}
    else:
        window = {"shape": "sphere", "radius_mm": p.window.radius_mm}
    scalars = {f.name: getattr(p, f.name) for f in fields(CoreParams)
               if f.name not in ("window", "plans")}
    return {
        "window": window,
        **scalars,
        "plans": [{"plan_id": pl.plan_id, "planned_dose_mu": pl.planned_dose_mu,
                   "target": _position(pl.target)} for pl in p.plans],
    }


def decode_params(d: dict[str, Any]) -> CoreParams:
    raw = dict(d)
    w = raw.pop("window")
    window = (WindowBox(*w["half_mm"]) if w["shape"] == "box"
              else WindowSphere(w["radius_mm"]))
    plans = tuple(Plan(pl["plan_id"], pl["planned_dose_mu"], _to_position(pl["target"]))
                  for pl in raw.pop("plans"))
    return CoreParams(window=window, plans=plans, **raw)
