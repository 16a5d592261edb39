"""`syncctl replay FILE [--config OTHER.yaml]`: run a recorded fraction through the core again.

With the recording's own configuration the core must decide exactly what it decided then; the
command says IDENTICAL or names the first step and field that differ. With another room
configuration it lists every stretch of steps where the beam or X-ray permit would have
differed, with the rule ids on each side, and what that would have meant: beam-permit time
gained or lost and, where the recording holds the simulators' ground truth, the dose that
would have been delivered with the true target outside the (recorded) gating window.

Exit status: 0 identical, 1 differences found, 2 the recording or configuration is unusable.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from syncctl.analysis.replay import ReplayResult, replay
from syncctl.config import ConfigError, config_hash, load_room
from syncctl.core import CoreParams
from syncctl.recording import Recording, read_recording
from syncctl.recording.reader import RecordingError

EXIT_IDENTICAL, EXIT_DIFFERENT, EXIT_UNUSABLE = 0, 1, 2


def _describe(rec: Recording) -> str:
    h = rec.header
    state = "complete" if rec.complete else "INCOMPLETE (no end record: the recorder was cut off)"
    lines = [f"  recorded  {h['created_utc']} by syncctl {h['software_version']} ({h['source']}), "
             f"room {h['room_id']}, plan {h['plan_id']}",
             f"            config {h['config_path']} (hash {h['config_hash']}), "
             f"{len(rec.steps)} steps, {state}"]
    if rec.dropped:
        lines.append(f"            {rec.dropped} steps were DROPPED while recording: the replay "
                     "cannot be exact")
    if rec.preset_synthesized:
        lines.append(f"            format {rec.format}: no dose preset readback recorded; the "
                     "replay assumes the beam gate held each preset from the step after it was "
                     "commanded")
    return "\n".join(lines)


def _rules(ids: tuple[str, ...]) -> str:
    return ",".join(ids) if ids else "-"


def report(result: ReplayResult, same_config: bool, max_intervals: int) -> str:
    lines: list[str] = []
    if result.identical:
        lines.append(f"IDENTICAL: every output of all {result.steps} steps equals the recorded "
                     "one.")
        return "\n".join(lines)
    if same_config and result.first_mismatch is not None:
        lines.append(f"NOT IDENTICAL: step {result.first_mismatch} differs in "
                     f"{', '.join(result.first_mismatch_fields)}.")
    intervals = result.intervals()
    for permit, label in (("beam", "Beam permit"), ("xray", "X-ray permit")):
        mine = [iv for iv in intervals if iv.permit == permit]
        steps = sum(iv.steps for iv in mine)
        if not mine:
            lines.append(f"{label}: no difference.")
            continue
        lines.append(f"{label} differs in {steps} steps ({len(mine)} stretches):")
        for iv in mine[:max_intervals]:
            rec = "GRANTED" if iv.recorded else f"denied by {_rules(iv.recorded_denied_by)}"
            rep = "GRANTED" if iv.replayed else f"denied by {_rules(iv.replayed_denied_by)}"
            lines.append(f"  t {iv.start_s:8.3f} .. {iv.end_s:8.3f} s  {iv.steps:6d} steps  "
                         f"recorded {rec:<24} replay {rep}")
        if len(mine) > max_intervals:
            lines.append(f"  ... and {len(mine) - max_intervals} more (all in --json)")
    if result.first_mode_difference is not None:
        i, was, now = result.first_mode_difference
        lines.append(f"First mode difference at step {i}: recorded {was}, replay {now} "
                     "(from there on, the replay says what the core would have permitted on "
                     "the recorded input, not what would have happened)")
    b_rec, b_rep = result.beam_permit_s
    x_rec, x_rep = result.xray_permit_s
    lines.append("Summary:")
    lines.append(f"  beam permit granted   recorded {b_rec:8.3f} s  replay {b_rep:8.3f} s  "
                 f"({b_rep - b_rec:+.3f} s)")
    lines.append(f"  X-ray permit granted  recorded {x_rec:8.3f} s  replay {x_rep:8.3f} s  "
                 f"({x_rep - x_rec:+.3f} s)")
    est = result.dose_estimate
    if est is None:
        lines.append("  dose: no ground truth in the recording (bench hardware): not estimated")
    else:
        r, p = est["recorded"], est["replayed"]
        lines.append(f"  dose by ground truth  recorded {r['dose_mu']:8.3f} MU "
                     f"({r['dose_outside_window_mu']:.4f} MU outside the window)  "
                     f"replay {p['dose_mu']:8.3f} MU ({p['dose_outside_window_mu']:.4f} MU "
                     f"outside); estimated at {est['dose_rate_mu_per_s']:g} MU/s during spills")
    return "\n".join(lines)


def as_json(rec: Recording, result: ReplayResult, config: str | None) -> dict[str, Any]:
    return {
        "recording": str(rec.path),
        "recorded_config_hash": rec.header["config_hash"],
        "replay_config": config,
        "steps": result.steps,
        "identical": result.identical,
        "first_mismatch": result.first_mismatch,
        "first_mismatch_fields": list(result.first_mismatch_fields),
        "first_mode_difference": result.first_mode_difference,
        "beam_permit_s": {"recorded": result.beam_permit_s[0],
                          "replayed": result.beam_permit_s[1]},
        "xray_permit_s": {"recorded": result.xray_permit_s[0],
                          "replayed": result.xray_permit_s[1]},
        "dose_estimate": result.dose_estimate,
        "intervals": [asdict(iv) for iv in result.intervals()],
        "differences": [asdict(d) for d in result.differences],
    }


def _run(args: argparse.Namespace) -> int:
    try:
        rec = read_recording(Path(args.file))
    except RecordingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    params: CoreParams | None = None
    same = True
    label = f"the recorded configuration (hash {rec.header['config_hash']})"
    if args.config:
        try:
            other = load_room(Path(args.config))
        except ConfigError as exc:
            for issue in exc.issues:
                print(f"error: {issue}", file=sys.stderr)
            return EXIT_UNUSABLE
        params = other.to_core_params()
        other_hash = config_hash(other)
        same = other_hash == rec.header["config_hash"]
        label = f"{args.config} (hash {other_hash}{', the recorded one' if same else ''})"
    print(f"syncctl replay: {args.file}")
    print(_describe(rec))
    print(f"  replayed  with {label}")
    result = replay(rec, params)
    print(report(result, same, args.max_intervals))
    if args.json:
        Path(args.json).write_text(json.dumps(as_json(rec, result, args.config), indent=1,
                                              default=str) + "\n", encoding="utf-8")
    return EXIT_IDENTICAL if result.identical else EXIT_DIFFERENT


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "replay", help="replay a recorded fraction through the core; compare or ask what-if",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="a fraction recording (*.fraction.jsonl.gz)")
    p.add_argument("--config", help="replay with this room configuration instead")
    p.add_argument("--json", metavar="FILE", help="write every difference as JSON")
    p.add_argument("--max-intervals", type=int, default=20,
                   help="stretches of differences to print per permit (default 20)")
    p.set_defaults(handler=_run)
