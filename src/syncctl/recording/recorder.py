"""Record a fraction to one self-describing file, off the control cycle's hot path.

The file is gzip-compressed JSON lines (``*.fraction.jsonl.gz``). The controller's listener
only appends the (immutable) report to a bounded queue. A small task on the same event loop
(started with the first report) wakes every ``pump_period_s`` and encodes, compresses and
writes at most ``pump_budget`` records, so the control cycle waits at most that long for it,
ever. A writer *thread* was tried first and measured: on a loaded machine it held the
interpreter lock or the CPU long enough to stretch a cycle gap to 64-79 ms (11-18 ms
without it). A full queue drops the record, counts it, and the file says so (a ``dropped``
line), so a reader knows the recording has a hole. The compressor is flushed to the file (a
gzip *sync flush*) every ``flush_interval_s``, so a crash leaves a file readable up to its
last flush (``syncctl.recording.reader`` reads a stream without its gzip trailer).

Line types (docs/recording.md has the full format):

- ``header``: format, software version, room, config hash, the config files' text, the core
  parameters, the core's initial time, plan, seed and source;
- ``step``: one control step: time, snapshot, command, and everything the core decided;
- ``dropped``: how many steps were lost since the last line, after which step;
- ``truth``: one row of the simulators' ground truth (demo and simulated rooms);
- ``summary``: the fraction's figures, as the demo prints them;
- ``end``: steps written and dropped; missing when the recorder did not close (a crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import time
import zlib
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from syncctl import __version__
from syncctl.config import RoomConfig, config_hash
from syncctl.controller import ControllerReport
from syncctl.core import CoreState
from syncctl.recording.codec import encode_command, encode_outputs, encode_params, encode_snapshot

log = logging.getLogger("syncctl.recording")

FORMAT = "syncctl-fraction/2"
"""2: the beam-gate status holds ``dose_preset_mu`` (the dose preset read back, IL-032/IL-033).
Recordings of format 1 still read (``syncctl.recording.reader``)."""
FORMATS = ("syncctl-fraction/1", FORMAT)
"""Every format the reader accepts."""
SUFFIX = ".fraction.jsonl.gz"



@dataclass(frozen=True)
class RecorderStats:
    path: Path
    steps: int
    dropped: int
    bytes: int


def header_for(config: RoomConfig, initial_state: CoreState, *, source: str,
               plan_id: str | None = None, seed: int | None = None) -> dict[str, Any]:
    """The header of a recording: enough to replay it without the original files."""
    files = {"room": config.path.read_text(encoding="utf-8")}
    for name, device in (("beam_gate_map", config.room.devices.beam_gate),
                         ("imaging_map", config.room.devices.imaging)):
        files[name] = (config.path.parent / device.register_map).read_text(encoding="utf-8")
    return {
        "type": "header",
        "format": FORMAT,
        "software_version": __version__,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source,
        "room_id": config.room.room.id,
        "config_path": str(config.path),
        "config_hash": config_hash(config),
        "config_files": files,
        "params": encode_params(initial_state.params),
        "initial_now": initial_state.mode_since,
        "plan_id": plan_id,
        "seed": seed,
    }


def default_path(directory: Path, room_id: str, plan_id: str | None) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return directory / f"{room_id}-{plan_id or 'none'}-{stamp}{SUFFIX}"


class FractionRecorder:
    """A controller listener that writes every step to ``path``.

    Attach it before the controller runs (the header holds the core's initial time, which a
    replay starts from). ``add`` appends other records (truth rows, the summary). Inside an
    event loop the pump task starts with the first report; elsewhere (tests, tools) call
    ``pump``. ``close`` drains the queue and finishes the file.
    """

    def __init__(self, path: Path, header: dict[str, Any], *, max_queue: int = 50_000,
                 flush_interval_s: float = 0.5, pump_period_s: float = 0.005,
                 pump_budget: int = 16) -> None:
        self.path = path
        self.flush_interval_s = flush_interval_s
        self.pump_period_s = pump_period_s
        self.pump_budget = pump_budget
        self.max_queue = max_queue
        self._queue: deque[dict[str, Any] | ControllerReport] = deque()
        self._dropped_pending = 0
        self.dropped = 0
        self.steps = 0
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        self._raw = path.open("wb")
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6)
        self._write_line(header)
        self._flush()
        self._last_flush = time.monotonic()

    # -- producer side (the control loop) ------------------------------------------------------

    def __call__(self, report: ControllerReport) -> None:
        self._put(report)
        if self._task is None and not self._closed:
            with contextlib.suppress(RuntimeError):  # no running loop: pump() by hand
                self._task = asyncio.get_running_loop().create_task(
                    self._pump_forever(), name="recorder")

    def add(self, record: dict[str, Any]) -> None:
        self._put(record)

    def _put(self, item: dict[str, Any] | ControllerReport) -> None:
        if self._closed:
            return
        if len(self._queue) >= self.max_queue:
            self._dropped_pending += 1
            self.dropped += 1
            return
        self._queue.append(item)

    # -- the writer side ------------------------------------------------------------------------

    async def _pump_forever(self) -> None:
        for _ in range(1 << 62):  # bounded in form; ends when the recorder closes
            await asyncio.sleep(self.pump_period_s)
            if self._closed:
                return
            self.pump(self.pump_budget)

    def pump(self, budget: int | None = None, *, flush: bool = False) -> int:
        """Encode and write up to ``budget`` queued records (all when None); flush the
        compressor when the flush interval has passed (or ``flush``). Returns how many."""
        written = 0
        while self._queue and (budget is None or written < budget):
            self._note_drops()
            item = self._queue.popleft()
            try:
                self._write_item(item)
            except Exception:  # a record that cannot be encoded must not stop the rest
                log.exception("could not record an item")
            written += 1
        self._note_drops()
        if flush or time.monotonic() - self._last_flush >= self.flush_interval_s:
            self._flush()
            self._last_flush = time.monotonic()
        return written

    def close(self) -> RecorderStats:
        if not self._closed:
            self.pump(None, flush=True)
            self._closed = True
            if self._task is not None and not self._task.done():
                self._task.cancel()
            self._write_line({"type": "end", "steps": self.steps, "dropped": self.dropped})
            self._gz.close()
            self._raw.close()
        return RecorderStats(self.path, self.steps, self.dropped, self.path.stat().st_size)

    def _note_drops(self) -> None:
        count, self._dropped_pending = self._dropped_pending, 0
        if count:
            self._write_line({"type": "dropped", "count": count, "after_step": self.steps})

    def _write_item(self, item: dict[str, Any] | ControllerReport) -> None:
        if isinstance(item, dict):
            self._write_line(item)
            return
        out = item.outputs
        command = out.command_result.command if out.command_result is not None else None
        self._write_line({
            "type": "step",
            "i": self.steps,
            "now": item.now,
            "snap": encode_snapshot(item.snapshot),
            "cmd": encode_command(command),
            "out": encode_outputs(out, item.state.mode),
        })
        self.steps += 1

    def _write_line(self, record: dict[str, Any]) -> None:
        self._gz.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")

    def _flush(self) -> None:
        self._gz.flush(zlib.Z_SYNC_FLUSH)
        self._raw.flush()
