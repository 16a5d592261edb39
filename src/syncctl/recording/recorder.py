"""Record a fraction to one self-describing file, off the control cycle's hot path.

The file is gzip-compressed JSON lines (``*.fraction.jsonl.gz``). The controller's listener
only puts the (immutable) report on a bounded queue; a writer thread encodes, compresses and
flushes. A full queue drops the record, counts it, and the file says so (a ``dropped`` line),
so a reader knows the recording has a hole. The compressor is flushed to the file (a gzip
*sync flush*) every ``flush_interval_s``, so a crash leaves a file readable up to its last
flush (``syncctl.recording.reader`` reads a stream without its gzip trailer).

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

import gzip
import json
import logging
import queue
import threading
import time
import zlib
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

FORMAT = "syncctl-fraction/1"
SUFFIX = ".fraction.jsonl.gz"
YIELD_EVERY = 8
"""The writer thread offers the GIL to the control loop after this many records, so that it
never holds it for long (CPython only takes it back from a busy thread after 5 ms)."""
_IDLE: dict[str, Any] = {"type": "idle"}
"""Marks a wake-up of the writer with nothing queued (compared by identity, never written)."""


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
    replay starts from). ``add`` appends other records (truth rows, the summary) from the
    same thread as the listener; ``close`` drains the queue and finishes the file.
    """

    def __init__(self, path: Path, header: dict[str, Any], *, max_queue: int = 50_000,
                 flush_interval_s: float = 0.5) -> None:
        self.path = path
        self.flush_interval_s = flush_interval_s
        self._queue: queue.Queue[dict[str, Any] | ControllerReport | None] = queue.Queue(
            maxsize=max_queue)
        self._lock = threading.Lock()
        self._dropped_pending = 0
        self.dropped = 0
        self.steps = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._raw = path.open("wb")
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6)
        self._write_line(header)
        self._flush()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()
        self._closed = False

    # -- producer side (the control loop) ------------------------------------------------------

    def __call__(self, report: ControllerReport) -> None:
        self._put(report)

    def add(self, record: dict[str, Any]) -> None:
        self._put(record)

    def _put(self, item: dict[str, Any] | ControllerReport) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            with self._lock:
                self._dropped_pending += 1
                self.dropped += 1

    def close(self, timeout_s: float = 30.0) -> RecorderStats:
        if not self._closed:
            self._closed = True
            self._queue.put(None)  # blocks only while the writer drains a full queue
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("recorder did not finish within %.0f s: %s may be incomplete",
                          timeout_s, self.path)
            else:
                self._write_line({"type": "end", "steps": self.steps, "dropped": self.dropped})
                self._gz.close()
                self._raw.close()
        return RecorderStats(self.path, self.steps, self.dropped, self.path.stat().st_size)

    # -- the writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        last_flush = time.monotonic()
        written = 0
        while True:
            try:
                item = self._queue.get(timeout=self.flush_interval_s)
            except queue.Empty:
                item = _IDLE
            if item is None:
                self._note_drops()
                self._flush()
                return
            if item is not _IDLE:
                self._note_drops()
                try:
                    self._write_item(item)
                except Exception:  # a record that cannot be encoded must not stop the rest
                    log.exception("could not record an item")
                written += 1
                if written % YIELD_EVERY == 0:
                    time.sleep(0)
            if time.monotonic() - last_flush >= self.flush_interval_s:
                self._flush()
                last_flush = time.monotonic()

    def _note_drops(self) -> None:
        with self._lock:
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
