"""`syncctl safety check`: the hazard log's chain hazard -> control -> rule -> verification.

A command group, so that `syncctl safety run` (the QA scenarios) can join it.

Exit status: 0 when the chain is complete (warnings and planned controls are printed, they do
not fail it), 1 when it is broken, 2 when the file cannot be read or does not fit the schema
(and for a bad command line, as argparse does).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from syncctl import __version__
from syncctl.safety.check import CheckResult, check_file, report_lines
from syncctl.safety.hazards import HazardLogError

EXIT_COMPLETE = 0
EXIT_BROKEN = 1
EXIT_UNREADABLE = 2

DEFAULT_HAZARDS = Path("safety_cases") / "hazards.yaml"


def _write_json(path: Path, result: CheckResult | None, error: HazardLogError | None,
                hazards: Path) -> str | None:
    """Write the machine-readable result; the reason when it cannot be written."""
    if result is not None:
        data = result.to_json()
    else:
        assert error is not None
        data = {"file": str(hazards), "ok": False, "unreadable": True,
                "issues": [str(i) for i in error.issues]}
    data["syncctl_version"] = __version__
    try:
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        return f"cannot write {path}: {exc.strerror or exc}"
    return None


def check(hazards: Path, root: Path, json_path: Path | None) -> int:
    result: CheckResult | None = None
    error: HazardLogError | None = None
    try:
        result = check_file(hazards, root)
    except HazardLogError as exc:
        error = exc
    if json_path is not None:
        problem = _write_json(json_path, result, error, hazards)
        if problem is not None:
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_UNREADABLE
    if error is not None:
        for issue in error.issues:
            print(f"error: {issue}", file=sys.stderr)
        count = len(error.issues)
        print(f"{hazards}: {count} error{'s' if count != 1 else ''}; not a valid hazard log, "
              "chain NOT checked", file=sys.stderr)
        return EXIT_UNREADABLE
    assert result is not None
    for line in report_lines(result):
        print(line)
    return EXIT_COMPLETE if result.ok else EXIT_BROKEN


def _check(args: argparse.Namespace) -> int:
    root = Path(args.root)
    hazards = Path(args.hazards) if args.hazards is not None else root / DEFAULT_HAZARDS
    return check(hazards, root, Path(args.json) if args.json is not None else None)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    safety = sub.add_parser("safety", help="safety cases: the hazard log and its evidence")
    safety_sub = safety.add_subparsers(dest="safety_command", metavar="ACTION")
    safety_sub.required = True
    check_parser = safety_sub.add_parser(
        "check",
        help="validate the chain hazard -> control -> rule -> verification",
        description="Check the hazard log: every hazard has an implemented control, every "
        "control names interlock rules that exist in the code (or code, or a stated hardware "
        "assumption) and verification that exists (test node ids found by parsing the test "
        "files, scenario files), and every rule is needed by a hazard. Nothing is run. Exit 0 "
        "when the chain is complete, 1 when it is broken, 2 when the file cannot be read.",
    )
    check_parser.add_argument(
        "--hazards", metavar="PATH", default=None,
        help=f"the hazard log (default: ROOT/{DEFAULT_HAZARDS.as_posix()})")
    check_parser.add_argument(
        "--root", metavar="DIR", default=".",
        help="project root: test paths and safety_cases/scenarios/ are relative to it "
             "(default: the current directory)")
    check_parser.add_argument("--json", metavar="FILE", default=None,
                              help="also write the result as JSON to FILE")
    check_parser.set_defaults(handler=_check)
