"""The controller listener that turns each cycle's report into audit records.

Called inside the control cycle (about 1000 times a second), so it only compares the report
with what it saw last and hands records to the trail when something changed: a mode change,
a change of either permit (granted, or the set of rules denying it), a trip, an operator
command and its result. Records of one fraction carry its fraction id, assigned when a plan
is selected (the mode enters SETUP) and kept until the next selection.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from syncctl.audit.store import AuditTrail, Kind
from syncctl.config import RoomConfig, config_hash
from syncctl.controller import ControllerReport
from syncctl.core import CommandResult, Event, EventKind, Mode, Permit

log = logging.getLogger("syncctl.audit")

_EVENT_KINDS = {
    EventKind.TRIP: Kind.TRIP,
    EventKind.TRIP_CLEARED: Kind.TRIP_CLEARED,
    EventKind.FRACTION_COMPLETE: Kind.FRACTION_COMPLETE,
}
"""Events recorded as they are. MODE_CHANGED is recorded on its own; COMMAND_ACCEPTED and
COMMAND_REFUSED are recorded from the command result, which names the operator."""


def _permit_fields(permit: Permit | None) -> dict[str, Any] | None:
    if permit is None:
        return None
    return {"granted": permit.granted, "denied_by": list(permit.denied_by)}


def _same_permit(a: Permit | None, b: Permit) -> bool:
    if a is b:
        return True
    if a is None or a.granted != b.granted:
        return False
    return a.denied_by == b.denied_by or set(a.denied_by) == set(b.denied_by)


class AuditListener:
    """A controller listener (``Controller.listeners.append(AuditListener(trail, room))``)."""

    def __init__(self, trail: AuditTrail, room_id: str) -> None:
        self.trail = trail
        self.room_id = room_id
        self.fraction_id: str | None = None
        self.errors = 0
        self._mode: Mode | None = None
        self._beam: Permit | None = None
        self._xray: Permit | None = None

    # -- the per-cycle call --------------------------------------------------------------------

    def __call__(self, report: ControllerReport) -> None:
        try:
            self._observe(report)
        except Exception as exc:  # never into the control cycle; but never silently either
            self.errors += 1
            log.exception("audit listener failed on the report at %.3f", report.now)
            self._record(Kind.LISTENER_ERROR, {"error": repr(exc)[:2000]}, report.now)

    def _observe(self, report: ControllerReport) -> None:
        out = report.outputs
        now = report.now
        if out.events:
            for event in out.events:
                if event.kind is EventKind.MODE_CHANGED and event.mode_to is Mode.SETUP:
                    self._start_fraction(report)
        if out.command_result is not None:
            self._record_command(out.command_result, now)
        if out.events:
            for event in out.events:
                self._record_event(event, report)
        mode = report.state.mode
        if mode is not self._mode:  # only when no event said so: the first report
            self._record(Kind.MODE_CHANGED, {
                "from": None if self._mode is None else self._mode.value,
                "to": mode.value,
                "message": "mode observed",
                "rule_ids": [],
            }, now)
            self._mode = mode
        if not _same_permit(self._beam, out.beam_permit):
            self._record_permit("beam", self._beam, out.beam_permit, report)
            self._beam = out.beam_permit
        if not _same_permit(self._xray, out.xray_permit):
            self._record_permit("xray", self._xray, out.xray_permit, report)
            self._xray = out.xray_permit

    def _start_fraction(self, report: ControllerReport) -> None:
        active = report.state.plan
        plan_id = active.plan.plan_id if active is not None else None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"
        self.fraction_id = f"{self.room_id}-{stamp}-{plan_id or 'unknown'}"
        self._record(Kind.FRACTION_STARTED, {
            "plan_id": plan_id,
            "planned_dose_mu": active.plan.planned_dose_mu if active is not None else None,
        }, report.now)

    def _record_command(self, result: CommandResult, now: float) -> None:
        command = result.command
        self._record(Kind.COMMAND, {
            "command": command.kind.value,
            "plan_id": command.plan_id,
            "operator": command.operator,
            "result": "accepted" if result.accepted else "refused",
            "reason": result.reason,
        }, now, actor=command.operator or None)

    def _record_event(self, event: Event, report: ControllerReport) -> None:
        if event.kind is EventKind.MODE_CHANGED:
            self._record(Kind.MODE_CHANGED, {
                "from": None if event.mode_from is None else event.mode_from.value,
                "to": None if event.mode_to is None else event.mode_to.value,
                "message": event.message,
                "rule_ids": list(event.rule_ids),
            }, event.at)
            self._mode = event.mode_to
            return
        kind = _EVENT_KINDS.get(event.kind)
        if kind is not None:
            self._record(kind, {
                "rule_ids": list(event.rule_ids),
                "message": event.message,
                "mode": report.state.mode.value,
            }, event.at)

    def _record_permit(self, name: str, before: Permit | None, after: Permit,
                       report: ControllerReport) -> None:
        self._record(Kind.PERMIT_CHANGED, {
            "permit": name,
            "granted": after.granted,
            "denied_by": list(after.denied_by),
            "before": _permit_fields(before),
            "mode": report.state.mode.value,
        }, report.now)

    def _record(self, kind: str, payload: dict[str, Any], mono: float,
                actor: str | None = None) -> None:
        self.trail.record(kind, payload, fraction_id=self.fraction_id, actor=actor, mono=mono,
                          room=self.room_id)

    # -- records the caller hands in -----------------------------------------------------------

    def record_config(self, room_config: RoomConfig) -> None:
        """The configuration in force: its hash, file and room (at start, and on any reload)."""
        room = room_config.room.room
        self.trail.record(Kind.CONFIG, {
            "config_hash": config_hash(room_config),
            "path": str(room_config.path),
            "room_id": room.id,
            "room_name": room.name,
            "clinical_mode": room.clinical_mode,
        }, fraction_id=self.fraction_id, room=self.room_id)

    def record_treatment(self, summary: dict[str, Any]) -> None:
        """The per-fraction treatment record (plan, planned and delivered dose, beam-on time,
        imaging mAs, gating latency figures, outcome), as the caller summarised it."""
        self.trail.record(Kind.TREATMENT_RECORD, summary, fraction_id=self.fraction_id,
                          room=self.room_id)
