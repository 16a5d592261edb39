"""A scripted operator for the demo: select the plan, image for set-up, arm, beam on.

It acts only through commands, as a person at the console would, and retries a refused step
a bounded number of times (a refusal is an answer, not an error).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from syncctl.controller import Controller, ControllerReport
from syncctl.core import Command, CommandKind, Mode, XrayCommand

RETRY_S = 0.25
MAX_ATTEMPTS = 40
IMAGING_SETTLE_S = 0.5
"""Set-up imaging time before arming: lets tracking settle, as positioning would."""


@dataclass
class ScriptedOperator:
    controller: Controller
    plan_id: str
    operator_id: str = "demo-operator"
    log: list[str] = field(default_factory=list)
    _last_sent: float = -1e9
    _attempts: int = 0
    _imaging_since: float | None = None
    _selected: bool = False
    gave_up: str = ""

    def _send(self, kind: CommandKind, now: float, plan_id: str | None = None) -> None:
        if now - self._last_sent < RETRY_S:
            return
        if self._attempts >= MAX_ATTEMPTS:
            self.gave_up = f"{kind.value} refused {MAX_ATTEMPTS} times"
            return
        self._attempts += 1
        self._last_sent = now
        self.controller.submit(Command(kind, self.operator_id, plan_id))

    def __call__(self, report: ControllerReport) -> None:
        result = report.outputs.command_result
        if result is not None:
            verdict = "accepted" if result.accepted else f"refused: {result.reason}"
            self.log.append(f"{result.command.kind.value} {verdict}")
            if result.accepted:
                self._attempts = 0
                self._last_sent = -1e9
        mode, now, state = report.state.mode, report.now, report.state
        if mode is Mode.SAFE and not self._selected:
            self._send(CommandKind.SELECT_PLAN, now, self.plan_id)
            selected = result is not None and result.accepted
            if selected and result is not None and result.command.kind is CommandKind.SELECT_PLAN:
                self._selected = True
        elif mode is Mode.SETUP:
            self._selected = True
            if not state.imaging_requested:
                self._send(CommandKind.START_IMAGING, now)
            elif report.outputs.xray is XrayCommand.EXPOSE:
                if self._imaging_since is None:
                    self._imaging_since = now
                if now - self._imaging_since >= IMAGING_SETTLE_S:
                    self._send(CommandKind.ARM, now)
        elif mode is Mode.READY:
            self._send(CommandKind.BEAM_ON, now)
