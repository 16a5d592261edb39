"""The operator console (Textual) over a room's bus: docs/console.md."""

from syncctl.console.app import ConsoleApp, PlanChoice
from syncctl.console.logic import ACTIONS, Trace, why_not

__all__ = ["ACTIONS", "ConsoleApp", "PlanChoice", "Trace", "why_not"]
