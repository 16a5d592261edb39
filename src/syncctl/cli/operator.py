"""The demo's scripted operator: the QA runner's ``Driver`` with the goal TREATING.

It acts only through commands, as a person at the console would: select the plan, start
set-up imaging, arm once tracking has settled, beam on; a refused step is retried a bounded
number of times (a refusal is an answer, not an error). A trip on the way, or a device that
reports a fault while the room is in SAFE (a watchdog that tripped before the room was in
use), is acknowledged and reset as an operator would, at most ``MAX_SETUP_FAULTS`` times;
every one is in ``setup_faults`` and the driver's log. Once the beam is on it does nothing
more: what happens during treatment is the controller's alone.
"""

from __future__ import annotations

from syncctl.controller import Controller
from syncctl.core import Mode
from syncctl.safety.runner import Driver

RETRY_S = 0.25
MAX_ATTEMPTS = 40
IMAGING_SETTLE_S = 0.5
"""Set-up imaging time before arming: lets tracking settle, as positioning would."""


def ScriptedOperator(controller: Controller, plan_id: str) -> Driver:
    return Driver(controller, plan_id, Mode.TREATING, retry_s=RETRY_S,
                  settle_s=IMAGING_SETTLE_S, max_commands=MAX_ATTEMPTS)
