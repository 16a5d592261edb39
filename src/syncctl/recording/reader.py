"""Read a fraction recording, including one cut short by a crash.

A recording whose writer was killed has no gzip trailer and may end in the middle of a line:
it is decompressed as a stream up to the last byte that decodes, and only whole lines are
kept. ``Recording.complete`` says whether the ``end`` line was found.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncctl.core import Command, CoreParams, Snapshot
from syncctl.recording.codec import decode_command, decode_params, decode_snapshot
from syncctl.recording.recorder import FORMAT

CHUNK = 1 << 16


class RecordingError(Exception):
    """The file is not a readable fraction recording."""


@dataclass(frozen=True)
class StepRecord:
    index: int
    now: float
    snapshot: Snapshot
    command: Command | None
    out: dict[str, Any]
    """The encoded outputs (syncctl.recording.codec.encode_outputs)."""


@dataclass
class Recording:
    path: Path
    header: dict[str, Any]
    steps: list[StepRecord] = field(default_factory=list)
    truth: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    dropped: int = 0
    complete: bool = False
    bad_lines: int = 0

    @property
    def params(self) -> CoreParams:
        return decode_params(self.header["params"])

    @property
    def initial_now(self) -> float:
        return float(self.header["initial_now"])


def _lines(path: Path) -> tuple[list[bytes], bool]:
    """(whole lines, whether the stream ended cleanly)."""
    decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    data = bytearray()
    clean = False
    with path.open("rb") as f:
        for _ in range(1 << 24):  # bounded: 1 TiB of chunks
            chunk = f.read(CHUNK)
            if not chunk:
                break
            try:
                data += decoder.decompress(chunk)
            except zlib.error:
                break  # a torn write: keep what decoded
        else:
            raise RecordingError(f"{path}: too large")
        clean = decoder.eof
    text = bytes(data)
    parts = text.split(b"\n")
    return parts[:-1], clean  # the last part is empty or a line cut in the middle


def read_recording(path: Path) -> Recording:
    if not path.is_file():
        raise RecordingError(f"{path}: no such file")
    lines, _ = _lines(path)
    if not lines:
        raise RecordingError(f"{path}: not a fraction recording (no header could be read)")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        raise RecordingError(f"{path}: not a fraction recording (bad header)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise RecordingError(f"{path}: not a fraction recording (format is not {FORMAT})")
    rec = Recording(path, header)
    for line in lines[1:]:
        try:
            row = json.loads(line)
            kind = row["type"]
            if kind == "step":
                rec.steps.append(StepRecord(row["i"], row["now"], decode_snapshot(row["snap"]),
                                            decode_command(row["cmd"]), row["out"]))
            elif kind == "truth":
                rec.truth.setdefault(row["device"], []).append(row["row"])
            elif kind == "dropped":
                rec.dropped += int(row["count"])
            elif kind == "summary":
                rec.summary = row["figures"]
            elif kind == "end":
                rec.complete = True
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            rec.bad_lines += 1
    return rec
