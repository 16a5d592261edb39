"""Every payload on the bus, as strict pydantic v2 models (unknown keys are errors).

Each model carries ``schema`` (the payload's version: 2 for ``Telemetry``, which gained its
sequence number and cumulative drop count, 1 for all the others): a subscriber that meets a
version it does not know must not guess. Payloads are UTF-8 JSON (``encode`` /
``decode``); times are ISO 8601 UTC strings (``utc``) and, where a rate matters, the
controller's monotonic seconds (``t_s``). Enumerated values are plain strings (``Literal``) so
that the JSON is the documentation: docs/bus.md shows real examples of every payload.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA = 1
"""The version of every payload defined here except ``Telemetry`` (``TELEMETRY_SCHEMA``)."""
TELEMETRY_SCHEMA: Literal[2] = 2
"""Telemetry's version: 2 since it carries ``stream``, ``seq`` and ``dropped_total`` (version 1
had only ``dropped``, the count since the previous message, which a subscriber that missed
that one message never learnt)."""
MAX_SEQ = 2**53
"""Sequence numbers stay exact in any JSON reader (IEEE doubles); none wraps: at 30 telemetry
messages a second a stream reaches it after millions of years."""

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""Operator, room and plan ids: no MQTT wildcard or level separator can appear in one."""
SESSION_PATTERN = r"^[A-Za-z0-9_-]{16,64}$"
RULE_ID_PATTERN = r"^IL-[0-9]{3}$"
MAX_SHELVE_S = 8 * 3600.0
"""The longest a physicist may shelve an alarm for (one working day)."""

Id = Annotated[str, Field(pattern=ID_PATTERN)]
RuleId = Annotated[str, Field(pattern=RULE_ID_PATTERN)]
Role = Literal["operator", "physicist", "engineer", "viewer"]
ROLES: tuple[Role, ...] = ("operator", "physicist", "engineer", "viewer")
ModeName = Literal["OFFLINE", "SAFE", "SETUP", "READY", "TREATING", "HOLD", "COMPLETE", "FAULT"]

CommandName = Literal[
    # a session
    "login", "logout",
    # the treatment (operator and physicist): the pure core applies them
    "select_plan", "start_imaging", "stop_imaging", "arm", "beam_on", "pause", "resume",
    "abort", "acknowledge", "reset",
    # alarm shelving (physicist): the room service applies them, the core never sees them
    "shelve", "unshelve",
    # engineering (engineer, only in SAFE and not in clinical mode)
    "register_read", "register_write", "commission",
]
CORE_COMMANDS: frozenset[str] = frozenset({
    "select_plan", "start_imaging", "stop_imaging", "arm", "beam_on", "pause", "resume",
    "abort", "acknowledge", "reset",
})
ENGINEER_COMMANDS: frozenset[str] = frozenset({"register_read", "register_write", "commission"})
Result = Literal["accepted", "refused", "unauthorised", "invalid"]


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Part(BaseModel):
    """Strict, frozen, no unknown keys, no NaN/infinity: every payload and its parts."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False,
                              populate_by_name=True)


class Message(Part):
    """Base of every payload (a part of one carries no ``schema`` of its own)."""

    schema_version: Literal[1] = Field(default=1, alias="schema")


# --- inbound: the command envelope ------------------------------------------------------------


class CommandEnvelope(Message):
    """What a console sends on ``<prefix>/<room>/commands``.

    ``session`` is chosen by the client (16..64 characters, random) and bound to the operator
    by a ``login`` carrying the PIN; ``seq`` must increase within a session (replay
    protection). The role must be the operator's role in the room's users file.
    """

    command: CommandName
    operator: Id
    role: Role
    room: Id
    session: Annotated[str, Field(pattern=SESSION_PATTERN)]
    seq: Annotated[int, Field(ge=1, le=MAX_SEQ)]
    plan_id: Id | None = None
    """select_plan only."""
    pin: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    """login only."""
    rule_id: RuleId | None = None
    """shelve and unshelve."""
    reason: Annotated[str, Field(min_length=1, max_length=500)] | None = None
    """shelve (mandatory, not blank)."""
    expiry_s: Annotated[float, Field(gt=0, le=MAX_SHELVE_S)] | None = None
    """shelve: seconds from acceptance until the shelf expires."""
    device: Literal["beam_gate", "imaging"] | None = None
    """register_read, register_write."""
    signal: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    """register_read, register_write: the register's signal name in the device's map."""
    value: int | None = None

    @model_validator(mode="after")
    def _fields_fit_the_command(self) -> CommandEnvelope:
        c = self.command
        if (c == "select_plan") != (self.plan_id is not None):
            raise ValueError("plan_id is required by select_plan and allowed only there")
        if (c == "login") != (self.pin is not None):
            raise ValueError("pin is required by login and allowed only there")
        if c in ("shelve", "unshelve") and self.rule_id is None:
            raise ValueError(f"{c} needs rule_id")
        if c == "shelve" and (self.reason is None or not self.reason.strip()
                              or self.expiry_s is None):
            raise ValueError("shelve needs a reason (not blank) and expiry_s")
        if c not in ("shelve", "unshelve") and self.rule_id is not None:
            raise ValueError("rule_id is allowed only with shelve and unshelve")
        if c != "shelve" and (self.reason is not None or self.expiry_s is not None):
            raise ValueError("reason and expiry_s are allowed only with shelve")
        if c in ("register_read", "register_write") and (self.device is None
                                                         or self.signal is None):
            raise ValueError(f"{c} needs device and signal")
        if (c == "register_write") != (self.value is not None):
            raise ValueError("value is required by register_write and allowed only there")
        if c not in ("register_read", "register_write") and (self.device is not None
                                                             or self.signal is not None):
            raise ValueError("device and signal are allowed only with register commands")
        return self


# --- outbound ---------------------------------------------------------------------------------


class Ack(Message):
    """The answer to one envelope, on ``<prefix>/<room>/acks/<operator>``."""

    room: str
    operator: str | None
    """None when the sender could not be identified (malformed payload)."""
    session: str | None
    seq: int | None
    command: str | None
    result: Result
    reason: str
    """Why it was refused, unauthorised or invalid; empty when accepted."""
    mode: ModeName
    """The mode after the command (or at the refusal)."""
    utc: str


class RuleText(Part):
    rule_id: str
    text: str
    """Plain language, from ``syncctl.core.RULES``."""


class PermitState(Part):
    granted: bool
    denied_by: list[RuleText]


class RoomState(Message):
    """Retained on ``<prefix>/<room>/state``: everything the console shows at a glance."""

    room: str
    utc: str
    mode: ModeName
    beam_permit: PermitState
    xray_permit: PermitState
    gate: Literal["open", "close"]
    xray: Literal["expose", "stop"]
    imaging_requested: bool
    plan_id: str | None
    planned_dose_mu: float | None
    delivered_dose_mu: float | None
    imaging_mas: float | None
    imaging_budget_mas: float
    controller_online: bool


class InterlockRow(Part):
    rule_id: str
    name: str
    text: str
    rule_class: Literal["interruption", "termination"]
    inhibits: list[Literal["beam", "xray"]]
    active: bool
    latched: bool
    shelved: bool


class InterlockTable(Message):
    """Retained on ``<prefix>/<room>/interlocks``: every rule of the core, in id order."""

    room: str
    utc: str
    rules: list[InterlockRow]


class Shelf(Part):
    rule_id: str
    by: str
    reason: str
    since_utc: str
    until_utc: str


class AlarmEntry(Part):
    rule_id: str
    rule_class: Literal["interruption", "termination"]
    text: str
    latched: bool
    acknowledged: bool
    shelved: bool


class Alarms(Message):
    """Retained on ``<prefix>/<room>/alarms``: the alarms the core raises now (active, with
    acknowledged and shelved flags) and every shelf in force (a shelf outlives its alarm
    until it expires). A shelved alarm still denies its permit."""

    room: str
    utc: str
    active: list[AlarmEntry]
    shelved: list[Shelf]


class Telemetry(Message):
    """``<prefix>/<room>/telemetry`` at the imaging frame rate, QoS 0, may be dropped or lost.

    Every message counts: ``seq`` numbers every telemetry message the publisher produced in its
    ``stream`` (the room service's run, as for events), sent or not, from 1 without gaps;
    ``dropped_total`` is how many of the ones before it the publisher could not send (link
    down, queue full). A subscriber that sees ``seq`` jump missed messages: the jump of
    ``dropped_total`` across the gap is the part the publisher never sent, the rest was lost
    on the way (``syncctl.bus.telemetry.TelemetryGaps``). Both counters are cumulative, so
    a subscriber learns of a loss from any later message, not only from the next one.
    """

    schema_version: Literal[2] = Field(  # type: ignore[assignment]  # telemetry's own version
        default=TELEMETRY_SCHEMA, alias="schema")
    room: str
    stream: str
    """One run of the room service (the events' ``stream``): ``seq`` starts again at 1."""
    seq: Annotated[int, Field(ge=1, le=MAX_SEQ)]
    dropped_total: Annotated[int, Field(ge=0, le=MAX_SEQ)]
    t_s: float
    """Controller monotonic time of the sampled cycle."""
    utc: str
    target_mm: tuple[float, float, float] | None
    """Measured target (marker) position; None when the imaging controller gives none."""
    tracking_confidence: float | None
    window_centre_mm: tuple[float, float, float] | None
    """The selected plan's target; None without a plan."""
    window_shape: Literal["box", "sphere"]
    window_size_mm: list[float]
    """Box: half-sizes x, y, z; sphere: [radius]."""
    inside: bool
    """The core's latch: target confirmed inside the window."""
    gate_command: Literal["open", "close"]
    gate_readback_open: bool | None
    spill_active: bool | None
    delivered_dose_mu: float | None
    frame_age_ms: float | None

    @model_validator(mode="after")
    def _no_more_dropped_than_produced(self) -> Telemetry:
        if self.dropped_total >= self.seq:
            raise ValueError("dropped_total counts messages before this one: below seq")
        return self


EventKindName = Literal[
    # from the core (syncctl.core.EventKind)
    "mode_changed", "command_accepted", "command_refused", "trip", "trip_cleared",
    "fraction_complete",
    # from the room service
    "command_unauthorised", "command_invalid", "login", "logout", "alarm_shelved",
    "alarm_unshelved", "shelf_expired", "service_started", "service_stopped",
    "reports_dropped",
]


class EventMessage(Message):
    """``<prefix>/<room>/events``, QoS 1: one per event, numbered per room without gaps from 1
    for the life of the service. A subscriber that sees a gap missed something; a repeat
    (after a reconnect) is a duplicate and is dropped by ``(stream, seq)``."""

    room: str
    stream: str
    """One run of the room service; ``seq`` starts again at 1 with a new stream."""
    seq: Annotated[int, Field(ge=1)]
    utc: str
    kind: EventKindName
    rule_ids: list[str]
    message: str
    operator: str | None
    mode: ModeName


class EventBacklog(Message):
    """Retained on ``<prefix>/<room>/events/recent``: the latest events (at most
    ``BACKLOG_SIZE``), so that a subscriber that (re)connects fills any gap by ``seq``."""

    room: str
    utc: str
    events: list[EventMessage]


class Status(Message):
    """Retained on ``<prefix>/<room>/status``; also the MQTT last will (``offline``)."""

    room: str
    controller: Literal["online", "offline"]


Outbound = (RoomState | InterlockTable | Alarms | Telemetry | EventMessage | EventBacklog
            | Status | Ack | CommandEnvelope)

M = TypeVar("M", bound=Message)


def encode(message: Message) -> bytes:
    """The wire form: compact UTF-8 JSON with ``schema`` as the key."""
    return message.model_dump_json(by_alias=True).encode("utf-8")


def decode(payload: bytes | str, model: type[M]) -> M:
    """Parse and validate a payload; raises ``pydantic.ValidationError`` (a ValueError)."""
    return model.model_validate_json(payload)


def as_dict(message: Message) -> dict[str, Any]:
    return message.model_dump(mode="json", by_alias=True)
