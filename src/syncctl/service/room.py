"""The room service: controller, bus and audit trail of one room, tied together.

Inbound, every command envelope is

1. validated (``CommandEnvelope``: malformed JSON or fields -> ``invalid``),
2. authenticated and authorised (room, session and its sequence number, the user's role in
   the users file, the role's permissions, the room's mode and clinical flag) -> else
   ``unauthorised``; such commands never reach the core,
3. applied: treatment commands through the pure core (which may refuse them, with its
   reason), shelving here in the service (the core never sees a shelf), engineering commands
   through the room's engineering handler (none: refused),
4. answered with an ``Ack`` on ``acks/<operator>`` naming the result and the mode after.

Everything the service decides itself (refusals, logins, shelves) goes to the audit trail and
then, as an event, to the bus; what the core decides is recorded by the ``AuditListener``,
which runs before the service's listener in the same cycle, so the audit trail always has an
event before the bus does.

Outbound: retained state, interlocks and alarms on change; telemetry at the imaging frame
rate, numbered in the service's stream with a cumulative count of the ones the bus did not
take (``syncctl.bus.telemetry``); numbered events (and the backlog of recent ones). The
controller's listener runs 1000 times a second and only compares and enqueues (bounded,
non-blocking); the work happens in the service's own task, so a slow or broken bus never
slows the control cycle.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Literal

from pydantic import ValidationError

from syncctl.audit import AuditListener, AuditTrail, Kind
from syncctl.bus import (
    Ack,
    AlarmEntry,
    Alarms,
    Bus,
    CommandEnvelope,
    EventBacklog,
    EventMessage,
    InterlockRow,
    InterlockTable,
    PermitState,
    RoomContext,
    RoomState,
    RuleText,
    Sessions,
    Shelf,
    Status,
    Subscription,
    TelemetrySequence,
    Users,
    authorise,
    utc_now,
)
from syncctl.bus.messages import CORE_COMMANDS, ENGINEER_COMMANDS, ID_PATTERN, Result
from syncctl.config import RoomConfig
from syncctl.controller import Controller, ControllerReport
from syncctl.controller.controller import Listener
from syncctl.core import (
    RULES,
    RULES_BY_ID,
    Command,
    CommandKind,
    CoreParams,
    Event,
    Mode,
    Permit,
    WindowBox,
)
from syncctl.core.gating import frame_age_at_read_ms

log = logging.getLogger("syncctl.service")

EngineeringHandler = Callable[[CommandEnvelope], Awaitable[tuple[bool, str]]]
"""Performs an authorised engineering command; returns (accepted, reason)."""

LOCAL_SESSION = "local-console-session"
MAX_FAILED_LOGINS = 5
LOCKOUT_S = 60.0
"""After MAX_FAILED_LOGINS failed logins of one operator id within LOCKOUT_S, further logins
of that id are refused without checking the PIN until the oldest failure is LOCKOUT_S old."""


@dataclass(frozen=True)
class ServiceSettings:
    room_id: str
    clinical_mode: bool = False
    telemetry_period_s: float = 1 / 30
    """Telemetry and dose refresh: the imaging frame period."""
    state_refresh_s: float = 0.2
    """Retained state is re-published on any discrete change at once; for the dose and mAs
    figures alone at most this often."""
    command_timeout_s: float = 2.0
    """A command the core has not answered within this is refused as unanswered."""
    backlog_size: int = 256
    backlog_period_s: float = 0.5
    report_queue_size: int = 2048

    @classmethod
    def from_config(cls, config: RoomConfig) -> ServiceSettings:
        room = config.room
        return cls(room_id=room.room.id, clinical_mode=room.room.clinical_mode,
                   telemetry_period_s=1.0 / room.devices.imaging.frame_rate_fps)


@dataclass
class ServiceStats:
    reports_queued: int = 0
    reports_dropped: int = 0
    commands_received: int = 0
    events_published: int = 0
    telemetry_sent: int = 0
    telemetry_dropped: int = 0
    """Telemetry messages the bus did not take (link down): the ``dropped_total`` of the next."""
    states_sent: int = 0
    listener_max_s: float = 0.0


@dataclass
class _Pending:
    command: Command
    envelope: CommandEnvelope
    deadline: float
    future: asyncio.Future[Ack] | None


@dataclass
class _ShelfEntry:
    shelf: Shelf
    until_mono: float


def _rule_texts(permit: Permit) -> list[RuleText]:
    return [RuleText(rule_id=r, text=RULES_BY_ID[r].description if r in RULES_BY_ID else r)
            for r in permit.denied_by]


class RoomService:
    """Ties a ``Controller``, a ``Bus``, the ``AuditTrail`` and optionally a recorder.

    Use ``async with RoomService(...)`` (or ``start``/``stop``) around ``controller.run``.
    ``submit_local`` is the path for a console on the controller's own machine (`syncctl run`
    reads stdin): the same checks except the login, with the role the caller vouches for.
    """

    def __init__(
        self,
        controller: Controller,
        bus: Bus,
        users: Users,
        settings: ServiceSettings,
        *,
        audit: AuditTrail | None = None,
        recorder: Listener | None = None,
        engineering: EngineeringHandler | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.controller = controller
        self.bus = bus
        self.users = users
        self.settings = settings
        self.params: CoreParams = controller.state.params
        self.audit_listener = None if audit is None else AuditListener(audit, settings.room_id)
        self.recorder = recorder
        self.engineering = engineering
        self.clock = clock
        self.stats = ServiceStats()
        self.sessions = Sessions()
        self.stream = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(4)
        self.telemetry_sequence = TelemetrySequence(self.stream)
        """Numbers the telemetry of this stream and counts what the bus did not take."""
        self.latest: ControllerReport | None = None
        self.shelves: dict[str, _ShelfEntry] = {}
        self.events: deque[EventMessage] = deque(maxlen=settings.backlog_size)
        self._seq = 0
        self._local_seq = 0
        self._reports: asyncio.Queue[tuple[ControllerReport, bool]] = asyncio.Queue(
            maxsize=settings.report_queue_size)
        self._pending: list[_Pending] = []
        self._failed_logins: dict[str, deque[float]] = {}
        self._commands: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        # What the listener saw last (compared in the control cycle).
        self._seen_mode: Mode | None = None
        self._seen_beam: tuple[str, ...] | None = None
        self._seen_xray: tuple[str, ...] | None = None
        self._seen_alarms: tuple[Any, ...] | None = None
        self._seen_outputs: tuple[Any, ...] | None = None
        self._next_sample = -1e18
        self._dropped_unreported = 0
        # What was published last (compared in the service task).
        self._state_key: tuple[Any, ...] | None = None
        self._state_figures: tuple[Any, ...] | None = None
        self._state_at = -1e18
        self._interlocks_key: tuple[Any, ...] | None = None
        self._alarms_key: tuple[Any, ...] | None = None
        self._backlog_dirty = False
        self._backlog_at = -1e18

    # -- life cycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> RoomService:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> None:
        """Attach to the controller (audit listener first, then the recorder, then the
        service), subscribe to commands and announce the controller online."""
        if self._running:
            return
        self._running = True
        if self.audit_listener is not None:
            self.controller.listeners.append(self.audit_listener)
        if self.recorder is not None:
            self.controller.listeners.append(self.recorder)
        self.controller.listeners.append(self._listen)
        await self.bus.start()
        self._commands = self.bus.subscribe(self.bus.topics.commands, maxsize=256)
        self.bus.publish(Status(room=self.settings.room_id, controller="online"))
        self._event("service_started", f"room service started (stream {self.stream})", (),
                    None, self.controller.state.mode)
        self._tasks = [
            asyncio.create_task(self._command_loop(), name="service-commands"),
            asyncio.create_task(self._report_loop(), name="service-reports"),
        ]

    async def stop(self) -> None:
        """Detach, answer what is pending, publish the controller offline. The bus stays
        open (its owner closes it)."""
        if not self._running:
            return
        self._running = False
        for listener in (self._listen, self.recorder, self.audit_listener):
            if listener is not None and listener in self.controller.listeners:
                self.controller.listeners.remove(listener)
        # Reports already queued still count (their events must reach the bus).
        while not self._reports.empty():
            report, sample = self._reports.get_nowait()
            self._handle_report(report, sample)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._commands is not None:
            self._commands.close()
        mode = self.controller.state.mode
        for pending in self._pending:
            self._answer(pending.envelope, "refused", "the room service stopped", mode,
                         pending.future, audit=True)
        self._pending.clear()
        self._event("service_stopped", "room service stopped", (), None, mode)
        self._publish_backlog(force=True)
        if self.latest is not None:
            self._publish_state(self.latest, force=True, online=False)
        self.bus.publish(Status(room=self.settings.room_id, controller="offline"))

    # -- the control cycle's listener: compare and enqueue, nothing else -------------------------

    def _listen(self, report: ControllerReport) -> None:
        started = time.perf_counter()
        out, state = report.outputs, report.state
        sample = report.now >= self._next_sample
        outputs_key = (out.gate, out.xray, state.imaging_requested, state.plan)
        changed = (
            state.mode is not self._seen_mode
            or out.beam_permit.denied_by != self._seen_beam
            or out.xray_permit.denied_by != self._seen_xray
            or out.alarms != self._seen_alarms
            or outputs_key != self._seen_outputs
        )
        if sample or changed or out.events or out.command_result is not None:
            if sample:
                self._next_sample = report.now + self.settings.telemetry_period_s
            self._seen_mode = state.mode
            self._seen_beam = out.beam_permit.denied_by
            self._seen_xray = out.xray_permit.denied_by
            self._seen_alarms = out.alarms
            self._seen_outputs = outputs_key
            try:
                self._reports.put_nowait((report, sample))
                self.stats.reports_queued += 1
            except asyncio.QueueFull:
                self.stats.reports_dropped += 1
                self._dropped_unreported += 1
                self._seen_mode = None  # so that the next report goes through again
        elapsed = time.perf_counter() - started
        self.stats.listener_max_s = max(self.stats.listener_max_s, elapsed)

    # -- the service task: reports --------------------------------------------------------------

    async def _report_loop(self) -> None:
        while True:
            report, sample = await self._reports.get()
            try:
                self._handle_report(report, sample)
            except Exception:
                log.exception("room service could not handle a report")
            if not self._reports.empty():
                await asyncio.sleep(0)  # a backlog must not hold the control cycle back

    def _handle_report(self, report: ControllerReport, sample: bool) -> None:
        self.latest = report
        out, state = report.outputs, report.state
        if self._dropped_unreported:
            count, self._dropped_unreported = self._dropped_unreported, 0
            self._event("reports_dropped", f"{count} controller reports were dropped by the "
                        "room service (its queue was full): state may have been missed",
                        (), None, state.mode)
        result = out.command_result
        if result is not None:
            for pending in self._pending:
                if pending.command is result.command:
                    self._pending.remove(pending)
                    self._answer(pending.envelope, "accepted" if result.accepted else "refused",
                                 result.reason, state.mode, pending.future, audit=False)
                    break
        for event in out.events:
            self._core_event(event, report)
        now = report.now
        for pending in [p for p in self._pending if now > p.deadline]:
            self._pending.remove(pending)
            self._answer(pending.envelope, "refused", "not answered by the core in time "
                         "(command queue full?)", state.mode, pending.future, audit=True)
        self._expire_shelves(state.mode)
        self._publish_state(report)
        self._publish_interlocks(report)
        self._publish_alarms(report)
        if sample:
            self._publish_telemetry(report)
        self._publish_backlog()

    def _core_event(self, event: Event, report: ControllerReport) -> None:
        operator = None
        result = report.outputs.command_result
        if result is not None and event.kind.value.startswith("command_"):
            operator = result.command.operator or None
        mode = event.mode_to if event.mode_to is not None else report.state.mode
        self._event(event.kind.value, event.message, event.rule_ids, operator, mode)

    # -- events, acks and the audit trail ------------------------------------------------------

    def _event(self, kind: str, message: str, rule_ids: tuple[str, ...] | list[str],
               operator: str | None, mode: Mode) -> EventMessage:
        self._seq += 1
        event = EventMessage(room=self.settings.room_id, stream=self.stream, seq=self._seq,
                             utc=utc_now(), kind=kind,  # type: ignore[arg-type]
                             rule_ids=list(rule_ids), message=message, operator=operator,
                             mode=mode.value)
        self.events.append(event)
        self._backlog_dirty = True
        self.bus.publish(event)
        self.stats.events_published += 1
        return event

    def _audit(self, kind: str, payload: dict[str, Any], actor: str | None) -> None:
        if self.audit_listener is None:
            return
        self.audit_listener.trail.record(kind, payload,
                                         fraction_id=self.audit_listener.fraction_id,
                                         actor=actor, room=self.settings.room_id)

    def _answer(self, env: CommandEnvelope | dict[str, Any], result: Result, reason: str,
                mode: Mode, future: asyncio.Future[Ack] | None, *, audit: bool,
                source: str = "bus") -> Ack:
        """Acknowledge; with ``audit`` also record the outcome in the trail and as an event
        (outcomes the core gave are recorded by the AuditListener already)."""
        if isinstance(env, CommandEnvelope):
            fields: dict[str, Any] = {
                "operator": env.operator, "session": env.session, "seq": env.seq,
                "command": env.command, "role": env.role, "room": env.room,
                "plan_id": env.plan_id, "rule_id": env.rule_id,
            }
        else:
            fields = env
        operator = fields.get("operator")
        ack = Ack(room=self.settings.room_id, operator=operator, session=fields.get("session"),
                  seq=fields.get("seq"), command=fields.get("command"), result=result,
                  reason=reason, mode=mode.value, utc=utc_now())
        if audit:
            payload = {k: v for k, v in fields.items() if k != "pin"}
            self._audit(Kind.COMMAND, {**payload, "result": result, "reason": reason,
                                       "source": source}, operator)
            if result != "accepted":
                what = fields.get("command") or "command"
                self._event(f"command_{result}", f"{what} {result}: {reason}", (), operator,
                            mode)
        self.bus.publish(ack)
        if future is not None and not future.done():
            future.set_result(ack)
        return ack

    # -- the service task: commands -------------------------------------------------------------

    async def _command_loop(self) -> None:
        assert self._commands is not None
        async for item in self._commands:
            self.stats.commands_received += 1
            try:
                await self._on_payload(item.payload)
            except Exception:
                log.exception("room service could not handle a command")

    async def _on_payload(self, payload: bytes) -> None:
        mode = self.controller.state.mode
        try:
            envelope = CommandEnvelope.model_validate_json(payload)
        except (ValidationError, ValueError) as exc:
            self._answer(_identify(payload), "invalid", _short(exc), mode, None, audit=True)
            return
        await self._process(envelope, None, local=False)

    def submit_local(self, operator: str, role: str, command: str,
                     **fields: Any) -> asyncio.Future[Ack]:
        """A command from a console on this machine (no login; the caller vouches for the
        operator and role). Returns the future ack; refusals are audited as from the bus."""
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._local_seq += 1
        mode = self.controller.state.mode
        try:
            envelope = CommandEnvelope.model_validate({
                "command": command, "operator": operator, "role": role,
                "room": self.settings.room_id, "session": LOCAL_SESSION,
                "seq": self._local_seq, **fields})
        except (ValidationError, ValueError) as exc:
            self._answer({"operator": operator, "command": command, "role": role}, "invalid",
                         _short(exc), mode, future, audit=True, source="local")
            return future
        task = asyncio.create_task(self._process(envelope, future, local=True))
        self._tasks.append(task)
        task.add_done_callback(self._forget_task)
        return future

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)

    async def _process(self, env: CommandEnvelope, future: asyncio.Future[Ack] | None, *,
                       local: bool) -> None:
        mode = self.controller.state.mode
        source = "local" if local else "bus"

        def answer(result: Result, reason: str, audit: bool = True) -> None:
            self._answer(env, result, reason, self.controller.state.mode, future, audit=audit,
                         source=source)

        if env.room != self.settings.room_id:
            answer("unauthorised", f"wrong room: this is {self.settings.room_id!r}, not "
                   f"{env.room!r}")
            return
        if env.command == "login":
            if local:
                answer("invalid", "a local console does not log in")
                return
            if len(self._failed_logins) > 1024 and env.operator not in self._failed_logins:
                del self._failed_logins[next(iter(self._failed_logins))]  # bounded memory
            failures = self._failed_logins.setdefault(env.operator,
                                                      deque(maxlen=MAX_FAILED_LOGINS))
            now = self.clock()
            if len(failures) == MAX_FAILED_LOGINS and now - failures[0] < LOCKOUT_S:
                answer("unauthorised", f"{MAX_FAILED_LOGINS} failed logins within "
                       f"{LOCKOUT_S:g} s: try again later")
                return
            # scrypt takes tens of milliseconds: off the event loop, never in the cycle's way
            why = await asyncio.to_thread(self.users.authenticate, env.operator, env.role,
                                          env.pin or "")
            if why:
                failures.append(now)
            why = why or self.sessions.login(env)
            if why:
                answer("unauthorised", why)
                return
            answer("accepted", "")
            self._event("login", f"{env.operator} logged in as {env.role}", (), env.operator,
                        mode)
            return
        if not local:
            why = self.sessions.check(env)
            if why:
                answer("unauthorised", why)
                return
        if env.command == "logout":
            self.sessions.logout(env.session)
            answer("accepted", "")
            self._event("logout", f"{env.operator} logged out", (), env.operator, mode)
            return
        context = RoomContext(self.settings.room_id, mode, self.settings.clinical_mode)
        why = authorise(env.role, env.command, context, env.rule_id)
        if why:
            answer("unauthorised", why)
            return
        if env.command in CORE_COMMANDS:
            command = Command(CommandKind(env.command), env.operator, env.plan_id)
            self._pending.append(_Pending(command, env,
                                          self.clock() + self.settings.command_timeout_s,
                                          future))
            self.controller.submit(command)  # answered when the core's result comes back
        elif env.command == "shelve":
            self._shelve(env, answer)
        elif env.command == "unshelve":
            self._unshelve(env, answer)
        elif env.command in ENGINEER_COMMANDS:
            if self.engineering is None:
                answer("refused", "no engineering access is configured in this room")
                return
            accepted, reason = await self.engineering(env)
            answer("accepted" if accepted else "refused", reason)
        else:
            answer("invalid", f"unknown command {env.command!r}")

    # -- shelving (the core never sees it) --------------------------------------------------------

    def _active_alarm_ids(self) -> set[str]:
        out = self.latest.outputs if self.latest is not None else None
        return {a.rule_id for a in out.alarms} if out is not None else set()

    def _shelve(self, env: CommandEnvelope, answer: Callable[..., None]) -> None:
        rule_id = env.rule_id or ""
        if rule_id not in self._active_alarm_ids():
            answer("refused", f"{rule_id} is not an active alarm")
            return
        assert env.reason is not None and env.expiry_s is not None
        since = datetime.now(UTC)
        until = since + timedelta(seconds=env.expiry_s)
        shelf = Shelf(rule_id=rule_id, by=env.operator, reason=env.reason.strip(),
                      since_utc=since.isoformat(timespec="milliseconds"),
                      until_utc=until.isoformat(timespec="milliseconds"))
        self.shelves[rule_id] = _ShelfEntry(shelf, self.clock() + env.expiry_s)
        self._audit("alarm_shelved", {"rule_id": rule_id, "by": env.operator,
                                      "role": env.role, "reason": shelf.reason,
                                      "expiry_s": env.expiry_s, "until_utc": shelf.until_utc},
                    env.operator)
        answer("accepted", "", False)
        self._event("alarm_shelved", f"{rule_id} shelved by {env.operator} until "
                    f"{shelf.until_utc}: {shelf.reason}", (rule_id,), env.operator,
                    self.controller.state.mode)
        self._refresh_shelf_views()

    def _unshelve(self, env: CommandEnvelope, answer: Callable[..., None]) -> None:
        rule_id = env.rule_id or ""
        if self.shelves.pop(rule_id, None) is None:
            answer("refused", f"{rule_id} is not shelved")
            return
        self._audit("alarm_unshelved", {"rule_id": rule_id, "by": env.operator}, env.operator)
        answer("accepted", "", False)
        self._event("alarm_unshelved", f"{rule_id} unshelved by {env.operator}", (rule_id,),
                    env.operator, self.controller.state.mode)
        self._refresh_shelf_views()

    def _expire_shelves(self, mode: Mode) -> None:
        now = self.clock()
        for rule_id, entry in list(self.shelves.items()):
            if now >= entry.until_mono:
                del self.shelves[rule_id]
                self._audit("shelf_expired", {"rule_id": rule_id, "by": entry.shelf.by,
                                              "until_utc": entry.shelf.until_utc}, None)
                self._event("shelf_expired", f"the shelf of {rule_id} expired", (rule_id,),
                            None, mode)

    def _refresh_shelf_views(self) -> None:
        if self.latest is not None:
            self._publish_interlocks(self.latest)
            self._publish_alarms(self.latest)

    # -- what is published ----------------------------------------------------------------------

    def _publish_state(self, report: ControllerReport, *, force: bool = False,
                       online: bool = True) -> None:
        state, out, snap = report.state, report.outputs, report.snapshot
        plan = state.plan
        delivered = mas = None
        if plan is not None:
            bg, im = snap.beam_gate.status, snap.imaging.status
            if bg is not None:
                delivered = round(bg.dose_delivered_mu - plan.dose_baseline_mu, 4)
            if im is not None:
                mas = round(im.cumulative_mas - plan.mas_baseline, 3)
        key = (state.mode, out.beam_permit, out.xray_permit, out.gate, out.xray,
               state.imaging_requested, plan.plan.plan_id if plan else None, online)
        figures = (delivered, mas)
        now = report.now
        refresh_due = now - self._state_at >= self.settings.state_refresh_s
        if not force and key == self._state_key and (
                figures == self._state_figures or not refresh_due):
            return
        self._state_key, self._state_figures, self._state_at = key, figures, now
        self.bus.publish(RoomState(
            room=self.settings.room_id, utc=utc_now(), mode=state.mode.value,
            beam_permit=PermitState(granted=out.beam_permit.granted,
                                    denied_by=_rule_texts(out.beam_permit)),
            xray_permit=PermitState(granted=out.xray_permit.granted,
                                    denied_by=_rule_texts(out.xray_permit)),
            gate=out.gate.value, xray=out.xray.value,
            imaging_requested=state.imaging_requested,
            plan_id=plan.plan.plan_id if plan else None,
            planned_dose_mu=plan.plan.planned_dose_mu if plan else None,
            delivered_dose_mu=delivered, imaging_mas=mas,
            imaging_budget_mas=self.params.imaging_budget_mas,
            controller_online=online,
        ))
        self.stats.states_sent += 1

    def _publish_interlocks(self, report: ControllerReport) -> None:
        out = report.outputs
        active = set(out.beam_permit.denied_by) | set(out.xray_permit.denied_by)
        active |= {a.rule_id for a in out.alarms if not a.latched}
        latched = report.state.latched
        shelved = frozenset(self.shelves)
        key = (frozenset(active), latched, shelved)
        if key == self._interlocks_key:
            return
        self._interlocks_key = key
        self.bus.publish(InterlockTable(room=self.settings.room_id, utc=utc_now(), rules=[
            InterlockRow(rule_id=r.rule_id, name=r.name, text=r.description,
                         rule_class=r.rule_class.value,
                         inhibits=sorted(i.value for i in r.inhibits),
                         active=r.rule_id in active, latched=r.rule_id in latched,
                         shelved=r.rule_id in shelved)
            for r in sorted(RULES, key=lambda r: r.rule_id)
        ]))

    def _publish_alarms(self, report: ControllerReport) -> None:
        out = report.outputs
        acknowledged = report.state.acknowledged
        key = (out.alarms, acknowledged, tuple(e.shelf for e in self.shelves.values()))
        if key == self._alarms_key:
            return
        self._alarms_key = key
        self.bus.publish(Alarms(
            room=self.settings.room_id, utc=utc_now(),
            active=[AlarmEntry(rule_id=a.rule_id, rule_class=a.rule_class.value,
                               text=a.message, latched=a.latched,
                               acknowledged=a.rule_id in acknowledged,
                               shelved=a.rule_id in self.shelves) for a in out.alarms],
            shelved=[e.shelf for _, e in sorted(self.shelves.items())],
        ))

    def _publish_telemetry(self, report: ControllerReport) -> None:
        state, out, snap = report.state, report.outputs, report.snapshot
        im, bg = snap.imaging.status, snap.beam_gate.status
        plan = state.plan
        window = self.params.window
        shape: Literal["box", "sphere"]
        if isinstance(window, WindowBox):
            shape, size = "box", [window.half_x_mm, window.half_y_mm, window.half_z_mm]
        else:
            shape, size = "sphere", [window.radius_mm]
        frame_age = None
        if im is not None and snap.imaging.read_at is not None:
            at_read = frame_age_at_read_ms(im)
            if at_read is not None:
                frame_age = round(at_read + 1000 * (report.now - snap.imaging.read_at), 2)
        centre = None
        if plan is not None:
            t = plan.plan.target
            centre = (t.x_mm, t.y_mm, t.z_mm)
        sent = self.telemetry_sequence.publish(
            self.bus, room=self.settings.room_id, t_s=round(report.now, 4), utc=utc_now(),
            target_mm=None if im is None else (im.target.x_mm, im.target.y_mm, im.target.z_mm),
            tracking_confidence=None if im is None else round(im.tracking_confidence, 4),
            window_centre_mm=centre, window_shape=shape, window_size_mm=size,
            inside=state.gating.target_confirmed,
            gate_command=out.gate.value,
            gate_readback_open=None if bg is None else bg.gate_open_readback,
            spill_active=None if bg is None else bg.spill_active,
            delivered_dose_mu=None if (bg is None or plan is None)
            else round(bg.dose_delivered_mu - plan.dose_baseline_mu, 4),
            frame_age_ms=frame_age,
        )
        if sent:
            self.stats.telemetry_sent += 1
        else:
            self.stats.telemetry_dropped += 1

    def _publish_backlog(self, force: bool = False) -> None:
        now = self.clock()
        if not self._backlog_dirty or (not force and now - self._backlog_at
                                       < self.settings.backlog_period_s):
            return
        self._backlog_dirty, self._backlog_at = False, now
        self.bus.publish(EventBacklog(room=self.settings.room_id, utc=utc_now(),
                                      events=list(self.events)))


def _identify(payload: bytes) -> dict[str, Any]:
    """What can be read of a payload that is not a valid envelope, to address the answer."""
    try:
        raw = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(raw, dict):
        return {}
    fields: dict[str, Any] = {}
    operator = raw.get("operator")
    if isinstance(operator, str) and re.match(ID_PATTERN, operator):
        fields["operator"] = operator
    for name in ("session", "command", "role", "room"):
        value = raw.get(name)
        if isinstance(value, str) and len(value) <= 64:
            fields[name] = value
    seq = raw.get("seq")
    if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= 2**53:
        fields["seq"] = seq
    return fields


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        parts = []
        for error in exc.errors()[:3]:
            where = ".".join(str(p) for p in error["loc"]) or "payload"
            parts.append(f"{where}: {error['msg']}")
        return "; ".join(parts)
    return str(exc)[:300]


