"""Fraction recordings: codec round trips, the writer off the hot path, crash-truncated files,
and replay through the core (identical with the same parameters, differences with others)."""

from __future__ import annotations

import asyncio
import gzip
import math
from dataclasses import replace
from pathlib import Path

import pytest

from syncctl.analysis.replay import replay
from syncctl.config import load_room
from syncctl.controller import ControllerReport
from syncctl.core import (
    BeamGateReading,
    Command,
    CommandKind,
    ImagingReading,
    Mode,
    Snapshot,
    WindowBox,
    WindowSphere,
    initial_state,
    step,
)
from syncctl.core.gating import inside_window
from syncctl.recording import FractionRecorder, header_for, read_recording
from syncctl.recording.codec import (
    decode_params,
    decode_snapshot,
    encode_params,
    encode_snapshot,
)
from syncctl.recording.reader import RecordingError
from syncctl.scripted import Breathing, ScriptedRoom
from tests.unit.harness import PARAMS, TARGET

ROOT = Path(__file__).resolve().parents[2]
ROOM = load_room(ROOT / "configs" / "room-sim.yaml")


def fraction_reports(seconds: float = 3.0, dt: float = 0.002,
                     estop_at: float | None = None) -> list[ControllerReport]:
    """A scripted fraction through the core, as the controller would hand it to listeners."""
    room = ScriptedRoom(Breathing(TARGET, seed=3))
    state = initial_state(PARAMS, 0.0)
    script = {0.1: CommandKind.SELECT_PLAN, 0.12: CommandKind.START_IMAGING,
              0.5: CommandKind.ARM, 0.52: CommandKind.BEAM_ON}
    reports = []
    t = 0.0
    for _ in range(round(seconds / dt)):
        t = round(t + dt, 6)
        room.advance(t, inside_window(room.truth, TARGET, PARAMS.window, 0.0))
        snap = room.snapshot(t)
        if estop_at is not None and t >= estop_at and snap.beam_gate.status is not None:
            snap = replace(snap, beam_gate=replace(
                snap.beam_gate, status=replace(snap.beam_gate.status, estop_released=False)))
        kind = script.get(round(t, 3))
        command = Command(kind, "tester", "lung-01" if kind is CommandKind.SELECT_PLAN
                          else None) if kind else None
        state, out = step(state, snap, command, t)
        room.apply(out, t)
        reports.append(ControllerReport(t, snap, state, out))
    return reports


def record(path: Path, reports: list[ControllerReport], **kwargs: float) -> FractionRecorder:
    rec = FractionRecorder(path, header_for(ROOM, initial_state(PARAMS, 0.0), source="test",
                                            plan_id="lung-01"), **kwargs)  # type: ignore[arg-type]
    for r in reports:
        rec(r)
    return rec


def test_snapshot_round_trip_keeps_every_value_exactly() -> None:
    snap = fraction_reports(0.3)[-1].snapshot
    assert snap.imaging.status is not None and snap.beam_gate.status is not None
    assert decode_snapshot(encode_snapshot(snap)) == snap
    odd = replace(snap, imaging=replace(snap.imaging, status=replace(
        snap.imaging.status, tracking_confidence=math.nan, cumulative_mas=math.inf,
        frame_counter=2**70)), cycle_overrun=True)
    back = decode_snapshot(encode_snapshot(odd))
    assert back.imaging.status is not None
    assert math.isnan(back.imaging.status.tracking_confidence)
    assert back.imaging.status.cumulative_mas == math.inf
    assert back.imaging.status.frame_counter == 2**70 and back.cycle_overrun
    never = Snapshot(BeamGateReading(None, None, False), ImagingReading(None, None, False))
    assert decode_snapshot(encode_snapshot(never)) == never


@pytest.mark.parametrize("window", [WindowBox(3.0, 4.0, 5.5), WindowSphere(6.25)])
def test_params_round_trip(window: WindowBox | WindowSphere) -> None:
    params = replace(PARAMS, window=window)
    assert decode_params(encode_params(params)) == params
    assert decode_params(encode_params(ROOM.to_core_params())) == ROOM.to_core_params()


def test_recorded_fraction_replays_identically(tmp_path: Path) -> None:
    reports = fraction_reports()
    assert reports[-1].state.mode is Mode.TREATING
    assert any(r.outputs.beam_permit.granted for r in reports)
    stats = record(tmp_path / "f.fraction.jsonl.gz", reports).close()
    assert stats.steps == len(reports) and stats.dropped == 0
    rec = read_recording(stats.path)
    assert rec.complete and rec.bad_lines == 0 and len(rec.steps) == len(reports)
    assert [s.snapshot for s in rec.steps] == [r.snapshot for r in reports]
    result = replay(rec)
    assert result.identical, (result.first_mismatch, result.first_mismatch_fields)
    assert result.differences == []


def test_replay_notices_a_changed_decision(tmp_path: Path) -> None:
    """A recording whose outputs were not what this core decides is reported, step and field."""
    reports = fraction_reports(1.0)
    k = next(i for i, r in enumerate(reports) if r.outputs.beam_permit.granted)
    forged = replace(reports[k].outputs, heartbeat=12345)
    reports[k] = replace(reports[k], outputs=forged)
    rec = read_recording(record(tmp_path / "f.fraction.jsonl.gz", reports).close().path)
    result = replay(rec)
    assert not result.identical
    assert result.first_mismatch == k and result.first_mismatch_fields == ("heartbeat",)


def test_replay_with_a_tighter_window_reports_permit_differences(tmp_path: Path) -> None:
    rec = read_recording(record(tmp_path / "f.fraction.jsonl.gz", fraction_reports()).close().path)
    tight = replace(PARAMS, window=WindowBox(1.0, 1.0, 1.0))
    result = replay(rec, tight)
    assert not result.identical
    beam = [d for d in result.differences if d.permit == "beam"]
    assert beam, "a 1 mm window must deny the beam where a 5 mm window granted it"
    assert all(d.recorded and not d.replayed for d in beam)
    assert any("IL-028" in d.replayed_denied_by for d in beam)
    # Ideal actuators: the recorded gate readback, which followed the recorded (open) command,
    # must not read as a stuck gate (IL-010) to the replayed core that closed it.
    assert result.first_mode_difference is None
    assert all(set(d.replayed_denied_by) <= {"IL-028"} for d in beam)
    recorded_s, replayed_s = result.beam_permit_s
    assert replayed_s < recorded_s
    intervals = result.intervals()
    assert sum(iv.steps for iv in intervals if iv.permit == "beam") == len(beam)


def test_a_truncated_recording_reads_up_to_its_last_flush(tmp_path: Path) -> None:
    path = tmp_path / "f.fraction.jsonl.gz"
    stats = record(path, fraction_reports(1.0)).close()
    data = path.read_bytes()
    seen = []
    for cut in (len(data) // 3, len(data) // 2, 2 * len(data) // 3):
        cut_path = tmp_path / f"cut{cut}.fraction.jsonl.gz"
        cut_path.write_bytes(data[:cut])
        rec = read_recording(cut_path)
        assert not rec.complete
        assert len(rec.steps) < stats.steps
        seen.append(len(rec.steps))
        assert replay(rec).identical  # a prefix of a fraction replays exactly
    assert seen == sorted(seen)
    no_trailer = tmp_path / "no-trailer.fraction.jsonl.gz"
    no_trailer.write_bytes(data[:-8])  # the gzip trailer lost: every line still reads
    assert len(read_recording(no_trailer).steps) == stats.steps


def test_a_recorder_that_was_never_closed_is_readable(tmp_path: Path) -> None:
    """What a SIGKILL leaves: the recorder pumped and flushed, then the process died."""
    path = tmp_path / "f.fraction.jsonl.gz"
    rec = record(path, fraction_reports(0.5))
    assert rec.pump(100, flush=True) == 100
    rec.pump(None, flush=True)
    copy = tmp_path / "copy.fraction.jsonl.gz"
    copy.write_bytes(path.read_bytes())  # the file as it is on disk now
    read = read_recording(copy)
    assert not read.complete and len(read.steps) == 250
    rec.close()


def test_the_pump_writes_at_most_its_budget() -> None:
    """The control loop waits for the recorder at most one budget's worth of records."""
    import tempfile

    with tempfile.TemporaryDirectory() as t:
        rec = record(Path(t) / "f.fraction.jsonl.gz", fraction_reports(0.2))
        assert rec.pump(16) == 16
        assert rec.steps == 16
        rec.close()
        assert rec.steps == 100


@pytest.mark.asyncio
async def test_inside_an_event_loop_the_recorder_pumps_itself(tmp_path: Path) -> None:
    reports = fraction_reports(0.2)
    rec = FractionRecorder(tmp_path / "f.fraction.jsonl.gz",
                           header_for(ROOM, initial_state(PARAMS, 0.0), source="test"),
                           pump_period_s=0.001, pump_budget=8)
    for r in reports:
        rec(r)
    for _ in range(2000):  # bounded: at most 2 s
        if rec.steps == len(reports):
            break
        await asyncio.sleep(0.001)
    assert rec.steps == len(reports)
    rec.close()
    await asyncio.sleep(0)  # let the cancelled pump task finish
    assert read_recording(rec.path).complete


def test_a_full_queue_drops_counts_and_says_so(tmp_path: Path) -> None:
    reports = fraction_reports(0.2)  # 100 steps
    rec = FractionRecorder(tmp_path / "f.fraction.jsonl.gz",
                           header_for(ROOM, initial_state(PARAMS, 0.0), source="test"),
                           max_queue=10)
    for r in reports:
        rec(r)  # never blocks, never raises
    assert rec.dropped == len(reports) - 10
    stats = rec.close()
    read = read_recording(stats.path)
    assert read.dropped == stats.dropped == rec.dropped
    assert len(read.steps) + read.dropped == len(reports)
    assert not replay(read).identical  # a recording with a hole never claims to be exact


def test_not_a_recording_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "x.gz"
    other.write_bytes(gzip.compress(b'{"type": "header", "format": "something-else"}\n'))
    with pytest.raises(RecordingError, match="not a fraction recording"):
        read_recording(other)
    plain = tmp_path / "plain.txt"
    plain.write_text("hello\n")
    with pytest.raises(RecordingError, match="not a fraction recording"):
        read_recording(plain)
    with pytest.raises(RecordingError, match="no such file"):
        read_recording(tmp_path / "missing.gz")


def _as_format_1(path: Path, out: Path) -> None:
    """The recording as syncctl wrote it before the dose preset readback (format 1): no
    ``dose_preset_mu`` in the beam-gate status, no ``dose_preset_tolerance_mu`` parameter."""
    import json

    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    rows = [json.loads(line) for line in lines]
    rows[0]["format"] = "syncctl-fraction/1"
    del rows[0]["params"]["dose_preset_tolerance_mu"]
    for row in rows[1:]:
        if row["type"] == "step" and row["snap"]["bg"]["status"] is not None:
            del row["snap"]["bg"]["status"]["dose_preset_mu"]
    out.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))


def test_a_format_1_recording_still_reads_and_replays(tmp_path: Path) -> None:
    """Recordings made before the preset readback have none: the reader fills it in as an
    ideal beam gate would have held it (0, then each commanded preset from the next step on)
    and says so. This fraction's device did behave so (the scripted room loads the preset at
    once): the replay through today's core is identical."""
    reports = fraction_reports()
    new = record(tmp_path / "new.fraction.jsonl.gz", reports).close().path
    assert read_recording(new).format == "syncctl-fraction/2"
    old = tmp_path / "old.fraction.jsonl.gz"
    _as_format_1(new, old)
    rec = read_recording(old)
    assert rec.format == "syncctl-fraction/1" and rec.preset_synthesized
    assert rec.complete and rec.bad_lines == 0 and len(rec.steps) == len(reports)
    assert rec.params == PARAMS  # the missing parameter takes its default
    presets = [s.snapshot.beam_gate.status.dose_preset_mu for s in rec.steps
               if s.snapshot.beam_gate.status is not None]
    assert presets[0] == 0.0 and presets[-1] == pytest.approx(3.0)
    result = replay(rec)
    assert result.identical, (result.first_mismatch, result.first_mismatch_fields)


def test_a_beam_gate_status_without_its_preset_decodes_as_unknown() -> None:
    """Without a stand-in the preset is unknown (None): the core takes that for invalid data
    (IL-003), never for an armed preset."""
    encoded = encode_snapshot(fraction_reports(0.3)[-1].snapshot)
    del encoded["bg"]["status"]["dose_preset_mu"]
    status = decode_snapshot(encoded).beam_gate.status
    assert status is not None and status.dose_preset_mu is None


def test_a_what_if_with_another_planned_dose_models_an_ideal_preset(tmp_path: Path) -> None:
    """Another planned dose makes the replayed core command another preset than the recorded
    device holds: the replay gives it an ideal device (the readback set to the replayed
    preset), so the what-if is about the plan, not a preset that never arrives (IL-032)."""
    rec = read_recording(record(tmp_path / "f.fraction.jsonl.gz", fraction_reports()).close().path)
    lung = PARAMS.plans[0]
    other = replace(PARAMS, plans=(replace(lung, planned_dose_mu=2.5), *PARAMS.plans[1:]))
    result = replay(rec, other)
    assert result.first_mode_difference is None
    assert not [d for d in result.differences
                if {"IL-032", "IL-033"} & set(d.replayed_denied_by)]
    # Without the model the preset would never be armed and the beam never granted.
    assert result.beam_permit_s[1] > 0
