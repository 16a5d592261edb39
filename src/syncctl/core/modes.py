"""The operational state machine: a declared transition table held by a `transitions` Machine.

The Machine is built once, with Enum states and no auto transitions, and is only *queried*
(`get_transitions`): it never holds a model, so a step stays a pure function and nothing in
the library (callbacks, queued or async transitions) can stand between a trip and FAULT.
Guards (preconditions) are evaluated by the step, which can then say *why* it refused.

A trigger that the table does not list for the current mode is refused: nothing outside the
table happens.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from transitions import Machine

from syncctl.core.types import CommandKind, Mode


class Trigger(Enum):
    """Every trigger of the table: the operator commands and the core's own events."""

    DEVICES_ONLINE = "devices_online"
    SELECT_PLAN = CommandKind.SELECT_PLAN.value
    START_IMAGING = CommandKind.START_IMAGING.value
    STOP_IMAGING = CommandKind.STOP_IMAGING.value
    ARM = CommandKind.ARM.value
    BEAM_ON = CommandKind.BEAM_ON.value
    PAUSE = CommandKind.PAUSE.value
    RESUME = CommandKind.RESUME.value
    ABORT = CommandKind.ABORT.value
    ACKNOWLEDGE = CommandKind.ACKNOWLEDGE.value
    RESET = CommandKind.RESET.value
    COMPLETE = "complete"
    TRIP = "trip"


def trigger_for(kind: CommandKind) -> Trigger:
    return Trigger(kind.value)


@dataclass(frozen=True, slots=True)
class Transition:
    trigger: Trigger
    sources: tuple[Mode, ...]
    dest: Mode | None
    """None: an internal transition (the mode does not change)."""
    guard: str
    """The precondition, in words, as the step checks it."""


_FRACTION = (Mode.SETUP, Mode.READY, Mode.TREATING, Mode.HOLD)

TRANSITIONS: tuple[Transition, ...] = (
    Transition(Trigger.DEVICES_ONLINE, (Mode.OFFLINE,), Mode.SAFE,
               "both devices read, fresh, valid, not degraded, and echoing our heartbeat"),
    Transition(Trigger.SELECT_PLAN, (Mode.SAFE,), Mode.SETUP,
               "plan exists; no termination condition present"),
    Transition(Trigger.START_IMAGING, (Mode.SETUP,), None, "none"),
    Transition(Trigger.STOP_IMAGING, (Mode.SETUP,), None, "none"),
    Transition(Trigger.ARM, (Mode.SETUP,), Mode.READY,
               "imaging running and tracking; beam-gate ready; hardware dose preset read back"
               " armed; neither device degraded; no termination condition"),
    Transition(Trigger.BEAM_ON, (Mode.READY,), Mode.TREATING,
               "imaging running and tracking; beam-gate ready; hardware dose preset read back"
               " armed; neither device degraded; no termination condition"),
    Transition(Trigger.PAUSE, (Mode.TREATING,), Mode.HOLD, "none"),
    Transition(Trigger.RESUME, (Mode.HOLD,), Mode.TREATING,
               "neither device degraded; no termination condition"),
    Transition(Trigger.ABORT, _FRACTION, Mode.SAFE, "none (operator termination)"),
    Transition(Trigger.COMPLETE, (Mode.TREATING, Mode.HOLD), Mode.COMPLETE,
               "planned dose reached and no other termination"),
    Transition(Trigger.TRIP, (*_FRACTION, Mode.COMPLETE), Mode.FAULT,
               "any termination rule active"),
    Transition(Trigger.ACKNOWLEDGE, (Mode.FAULT, Mode.SAFE), None,
               "something to acknowledge"),
    Transition(Trigger.ACKNOWLEDGE, (Mode.COMPLETE,), Mode.SAFE, "none"),
    Transition(Trigger.RESET, (Mode.FAULT,), Mode.SAFE, "every latched trip acknowledged"),
    Transition(Trigger.RESET, (Mode.SAFE,), None,
               "device faults present and acknowledged"),
)


def _build_machine() -> Machine:
    return Machine(
        model=None,
        states=Mode,
        transitions=[
            {"trigger": t.trigger.value, "source": list(t.sources), "dest": t.dest}
            for t in TRANSITIONS
        ],
        initial=Mode.OFFLINE,
        auto_transitions=False,
    )


_MACHINE = _build_machine()


class NotAllowed(Enum):
    """Marker: the table has no transition for this trigger in this mode."""

    NOT_ALLOWED = "not allowed"


NOT_ALLOWED = NotAllowed.NOT_ALLOWED


def next_mode(mode: Mode, trigger: Trigger) -> Mode | NotAllowed:
    """Where ``trigger`` takes ``mode`` per the table; NOT_ALLOWED when it is not listed.

    An internal transition returns ``mode`` itself.
    """
    found = _MACHINE.get_transitions(trigger=trigger.value, source=mode.name)
    if not found:
        return NOT_ALLOWED
    dest = found[0].dest
    if dest is None:
        return mode
    return Mode[str(dest)]


def allowed_triggers(mode: Mode) -> tuple[Trigger, ...]:
    names = set(_MACHINE.get_triggers(mode.name))
    return tuple(t for t in Trigger if t.value in names)


def mermaid_state_diagram() -> str:
    """A Mermaid state diagram generated from the table (docs/state-diagram.md)."""
    lines = ["stateDiagram-v2", f"    [*] --> {Mode.OFFLINE.name}"]
    for t in TRANSITIONS:
        for source in t.sources:
            dest = t.dest if t.dest is not None else source
            lines.append(f"    {source.name} --> {dest.name}: {t.trigger.value}")
    return "\n".join(lines) + "\n"


def transition_table_markdown() -> str:
    lines = ["| trigger | from | to | guard |", "|---|---|---|---|"]
    for t in TRANSITIONS:
        sources = ", ".join(s.name for s in t.sources)
        dest = t.dest.name if t.dest is not None else "(same mode)"
        lines.append(f"| `{t.trigger.value}` | {sources} | {dest} | {t.guard} |")
    return "\n".join(lines) + "\n"
