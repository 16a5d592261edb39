"""A live progress line for a fraction: dose against plan, mode, gate duty cycle."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO

from syncctl.controller import ControllerReport
from syncctl.core import EventKind, GateCommand, Mode

BAR = 30


@dataclass
class Progress:
    planned_mu: float
    out: TextIO = field(default_factory=lambda: sys.stdout)
    interval_s: float = 0.25
    enabled: bool = True
    _last: float = -1e9
    _baseline: float | None = None
    _open_cycles: int = 0
    _treating_cycles: int = 0
    lines: list[str] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return self.enabled and self.out.isatty()

    def __call__(self, report: ControllerReport) -> None:
        state, out = report.state, report.outputs
        if state.mode is Mode.TREATING:
            self._treating_cycles += 1
            self._open_cycles += out.gate is GateCommand.OPEN
        for event in out.events:
            if event.kind in (EventKind.MODE_CHANGED, EventKind.TRIP, EventKind.COMMAND_REFUSED):
                self._say(f"{event.message}" + (f" [{', '.join(event.rule_ids)}]"
                                                if event.kind is EventKind.TRIP else ""))
        if report.now - self._last < self.interval_s:
            return
        self._last = report.now
        self._draw(report)

    def dose_mu(self, report: ControllerReport) -> float:
        plan = report.state.plan
        status = report.snapshot.beam_gate.status
        if plan is None or status is None:
            return 0.0
        return max(0.0, status.dose_delivered_mu - plan.dose_baseline_mu)

    def _draw(self, report: ControllerReport) -> None:
        if not self.live:
            return
        dose = self.dose_mu(report)
        filled = min(BAR, int(BAR * dose / self.planned_mu)) if self.planned_mu else 0
        duty = self._open_cycles / self._treating_cycles if self._treating_cycles else 0.0
        gate = report.outputs.gate.value.upper()
        line = (f"\r[{'#' * filled}{'.' * (BAR - filled)}] {dose:6.2f}/{self.planned_mu:g} MU  "
                f"{report.state.mode.name:<8} gate {gate:<5} duty {duty:4.0%}")
        self.out.write(line)
        self.out.flush()

    def _say(self, text: str) -> None:
        self.lines.append(text)
        if not self.enabled:
            return
        prefix = "\r\x1b[K" if self.live else ""
        self.out.write(f"{prefix}{text}\n")
        self.out.flush()

    def finish(self) -> None:
        if self.live:
            self.out.write("\n")
            self.out.flush()
