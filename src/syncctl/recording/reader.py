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
from syncctl.recording.recorder import FORMAT, FORMATS

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
    preset_synthesized: bool = False
    """Format 1: the beam-gate status did not hold the dose preset read back. The reader fills
    it in as an ideal device would have held it (0 until the first LOAD_DOSE_PRESET the
    recording holds, then each preset from the step after it was commanded), so that the
    replay through a core that checks it (IL-032/IL-033) is meaningful; a preset really lost
    in such a recording (a reboot) cannot be seen."""

    @property
    def format(self) -> str:
        return str(self.header.get("format"))

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
    if not isinstance(header, dict) or header.get("format") not in FORMATS:
        raise RecordingError(f"{path}: not a fraction recording (format is not "
                             f"{' or '.join(FORMATS)})")
    rec = Recording(path, header)
    rec.preset_synthesized = header["format"] != FORMAT
    ideal_preset: float | None = 0.0 if rec.preset_synthesized else None
    for line in lines[1:]:
        try:
            row = json.loads(line)
            kind = row["type"]
            if kind == "step":
                rec.steps.append(StepRecord(row["i"], row["now"],
                                            decode_snapshot(row["snap"], ideal_preset),
                                            decode_command(row["cmd"]), row["out"]))
                out = row["out"]
                if (rec.preset_synthesized and "load_dose_preset" in out["actions"]
                        and out["dose_preset_mu"] is not None):
                    ideal_preset = float(out["dose_preset_mu"])
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
