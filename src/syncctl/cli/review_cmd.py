"""`syncctl review FILE [--out DIR]`: the review report of a recorded fraction.

Writes ``DIR/index.html`` with plots: the target per axis against the gating window, the gate
(commanded, read back and, with simulators, actual), spills and X-ray exposure on one time
axis with trips and operator commands marked, dose against plan and imaging dose against
budget, latency histograms, the fraction's figures and its event log. Open the page in a
browser. A recording cut off by a crash is reviewed up to its last flush.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from syncctl.recording import SUFFIX, read_recording
from syncctl.recording.reader import RecordingError

EXIT_OK, EXIT_UNUSABLE = 0, 2


def _run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        rec = read_recording(path)
    except RecordingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    if not rec.steps:
        print(f"error: {path}: the recording holds no control steps", file=sys.stderr)
        return EXIT_UNUSABLE
    out = Path(args.out) if args.out else path.with_name(
        path.name.removesuffix(SUFFIX) + "-review")
    from syncctl.analysis.review import write_review  # matplotlib loads only here

    page = write_review(rec, out)
    if not rec.complete:
        print(f"note: {path} has no end record (the recorder was cut off): reviewed up to its "
              "last flush", file=sys.stderr)
    print(f"review written: {page}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("review", help="write the HTML review report (plots) of a recorded fraction",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="a fraction recording (*.fraction.jsonl.gz)")
    p.add_argument("--out", metavar="DIR",
                   help="output folder (default: beside the recording, named after it)")
    p.set_defaults(handler=_run)
