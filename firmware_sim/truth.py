"""Ground truth: what each simulated device really did, as JSON lines.

One file per device (``beam-gate.jsonl``, ``imaging.jsonl``) in the ``--truth`` directory.
Every ``t`` is ``time.monotonic()`` in seconds: on Linux the same CLOCK_MONOTONIC the
controller reads, so a controller's timestamps and these compare directly on one machine.
Row types (docs/simulators.md has the full format):

- ``header`` (first line): device, config hash, seed, clock, the clock reading at which the
  model's own time (and the XIC's device clock) was 0, and the model's parameters;
- ``state``: the device's physical state; for the BGC at every tick where a discrete state
  changed plus at least every 10 ms, for the XIC every 10 ms and when exposing changes;
- ``gate_command`` (BGC): each gate-command write received, with its value;
- ``frame`` (XIC): each frame as it becomes available to a reader;
- ``fault``: each backdoor write to this device's block.

Rows are buffered in memory and written by ``flush`` (the runner calls it every 0.25 s and
at exit), so the physics loop never waits on the disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from firmware_sim.beam_gate import BeamGateModel
from firmware_sim.imaging import Frame, ImagingModel
from firmware_sim.registers import WriteEvent

SAMPLE_PERIOD_S = 0.0085
"""A state row is due once this much has passed: with a ~1 ms tick, rows stay <= 10 ms apart."""


def _r(value: float, digits: int = 4) -> float:
    return round(float(value), digits)


class TruthWriter:
    """A JSON-lines file written in batches."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self._file: IO[str] | None = path.open("w", encoding="utf-8")
        self._rows: list[str] = []
        self.row({"type": "header", **header})
        self.flush()

    def row(self, row: dict[str, Any]) -> None:
        self._rows.append(json.dumps(row, separators=(",", ":")))

    def flush(self) -> None:
        if self._file is None or not self._rows:
            return
        rows, self._rows = self._rows, []
        self._file.write("\n".join(rows) + "\n")
        self._file.flush()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None


class BeamGateTruth:
    """Listens to the BGC interface (advance, writes) and to its backdoor block."""

    def __init__(self, writer: TruthWriter, model: BeamGateModel) -> None:
        self.writer, self.model = writer, model
        self._last_state: tuple[Any, ...] | None = None
        self._last_t = float("-inf")

    def on_advance(self, t: float) -> None:
        m = self.model
        state = (m.gate_command, m.gate_open, m.spill_active, int(m.fault), m.ready)
        if state == self._last_state and t - self._last_t < SAMPLE_PERIOD_S:
            return
        self._last_state, self._last_t = state, t
        self.writer.row({"type": "state", "t": _r(t, 6), "gate_command": m.gate_command,
                         "gate_open": m.gate_open, "spill_active": m.spill_active,
                         "dose_mu": _r(m.dose_mu, 5), "fault_code": int(m.fault),
                         "ready": m.ready})

    def on_write(self, event: WriteEvent) -> None:
        if event.name == "gate_command":
            self.writer.row({"type": "gate_command", "t_received": _r(event.t, 6),
                             "value": int(event.value)})

    def on_fault(self, event: WriteEvent) -> None:
        self.writer.row({"type": "fault", "t": _r(event.t, 6), "name": event.name,
                         "value": event.value})


class ImagingTruth:
    """Listens to the XIC interface (advance) and to its backdoor block."""

    def __init__(self, writer: TruthWriter, model: ImagingModel) -> None:
        self.writer, self.model = writer, model
        self._last_t = float("-inf")
        self._last_exposing: bool | None = None
        self._last_frame: Frame = model.frame

    def on_advance(self, t: float) -> None:
        m = self.model
        if m.exposing != self._last_exposing or t - self._last_t >= SAMPLE_PERIOD_S:
            self._last_exposing, self._last_t = m.exposing, t
            self.writer.row({"type": "state", "t": _r(t, 6), "x": _r(m.truth[0]),
                             "y": _r(m.truth[1]), "z": _r(m.truth[2]),
                             "exposing": m.exposing, "prepared": m.prepared,
                             "fault_code": int(m.fault)})
        frame = m.frame
        if frame is not self._last_frame:
            self._last_frame = frame
            if frame.counter or frame.timestamp_ms:  # not the power-up placeholder
                self.writer.row({"type": "frame", "t_available": _r(t, 6),
                                 "counter": frame.counter, "timestamp_ms": frame.timestamp_ms,
                                 "x": _r(frame.tracked[0]), "y": _r(frame.tracked[1]),
                                 "z": _r(frame.tracked[2]),
                                 "confidence": _r(frame.confidence, 3)})

    def on_fault(self, event: WriteEvent) -> None:
        self.writer.row({"type": "fault", "t": _r(event.t, 6), "name": event.name,
                         "value": event.value})
