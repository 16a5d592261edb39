"""The pure safety core: domain types, interlock rules, gating and the mode machine.

No I/O, no clock reads, no asyncio, nothing else of syncctl: `tests/unit/test_layering.py`
enforces it. The asyncio controller only does I/O around :func:`step`.
"""

from syncctl.core.modes import TRANSITIONS, Trigger, mermaid_state_diagram, next_mode
from syncctl.core.rules import RULES, RULES_BY_ID, Rule
from syncctl.core.state import CoreState, initial_state
from syncctl.core.step import TERMINATION_REFUSAL, step
from syncctl.core.types import (
    NOT_READ,
    Alarm,
    BeamGateReading,
    BeamGateStatus,
    Command,
    CommandKind,
    CommandResult,
    CoreParams,
    DeviceAction,
    Event,
    EventKind,
    GateCommand,
    ImagingReading,
    ImagingStatus,
    Inhibits,
    Mode,
    Outputs,
    Permit,
    Plan,
    Position,
    RuleClass,
    Snapshot,
    WindowBox,
    WindowSphere,
    XrayCommand,
)

__all__ = [
    "NOT_READ",
    "RULES",
    "RULES_BY_ID",
    "TERMINATION_REFUSAL",
    "TRANSITIONS",
    "Alarm",
    "BeamGateReading",
    "BeamGateStatus",
    "Command",
    "CommandKind",
    "CommandResult",
    "CoreParams",
    "CoreState",
    "DeviceAction",
    "Event",
    "EventKind",
    "GateCommand",
    "ImagingReading",
    "ImagingStatus",
    "Inhibits",
    "Mode",
    "Outputs",
    "Permit",
    "Plan",
    "Position",
    "Rule",
    "RuleClass",
    "Snapshot",
    "Trigger",
    "WindowBox",
    "WindowSphere",
    "XrayCommand",
    "initial_state",
    "mermaid_state_diagram",
    "next_mode",
    "step",
]
