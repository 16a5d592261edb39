"""The asyncio shell around the pure core: poll, step, command, heartbeat, publish.

The controller owns no safety decision. Each cycle it reads the beam-gate controller, takes
the latest imaging reading, calls :func:`syncctl.core.step`, and writes what the step decided.
Everything that goes wrong on the wire becomes data in the next snapshot.
"""

from syncctl.controller.controller import (
    BeamGatePort,
    Controller,
    ControllerReport,
    CycleStats,
    ImagingPort,
    step_interval_s,
)
from syncctl.controller.frames import FramePoller

__all__ = ["BeamGatePort", "Controller", "ControllerReport", "CycleStats", "FramePoller",
           "ImagingPort", "step_interval_s"]
