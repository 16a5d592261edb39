"""`syncctl safety check`: the hazard log's chain hazard -> control -> rule -> verification.
`syncctl safety run`: the QA scenarios against the simulators, with a report (docs/qa.md).

check: exit status 0 when the chain is complete (warnings and planned controls are printed,
they do not fail it), 1 when it is broken, 2 when the file cannot be read or does not fit the
schema (and for a bad command line, as argparse does).

run: exit status 0 when the chain is complete and every scenario passed, 1 on any failure, 2
for a bad command line (an unknown scenario id).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from syncctl import __version__
from syncctl.safety.check import CheckResult, check_file, report_lines
from syncctl.safety.hazards import HazardLogError

if TYPE_CHECKING:
    from syncctl.safety.runner import ScenarioResult

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


# -- safety run -------------------------------------------------------------------------------

DEFAULT_REPORT = Path("safety-report")


def run(root: Path, hazards: Path, report_dir: Path, ids: list[str], reviews: bool) -> int:
    from syncctl.cli.logs import quiet_library_logs
    from syncctl.safety.report import slowest_text, write_reports
    from syncctl.safety.scenarios import LoadedScenario
    from syncctl.safety.suite import run_suite, select_files

    files, missing = select_files(root, ids)
    if missing:
        for scenario_id in missing:
            print(f"error: no scenario {scenario_id!r} "
                  f"(safety_cases/scenarios/{scenario_id}.yaml)", file=sys.stderr)
        return EXIT_UNREADABLE
    report_dir.mkdir(parents=True, exist_ok=True)
    # The controller's and the device clients' log (link failures, the safe shutdown) goes to
    # a file beside the report, not between the progress lines.
    handler = logging.FileHandler(report_dir / "run.log", mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(levelname)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    quiet_library_logs(False)
    print(f"syncctl safety run: syncctl {__version__}, {len(files)} scenario(s), "
          f"report in {report_dir}")
    started: dict[str, float] = {}

    def on_start(n: int, total: int, item: LoadedScenario) -> None:
        s = item.scenario
        started[s.id] = time.monotonic()
        print(f"[{n:>2}/{total}] run  {s.id} ({', '.join(s.hazards)}) ...", flush=True)

    def on_end(n: int, total: int, result: ScenarioResult) -> None:
        verdict = "PASS" if result.passed else "FAIL"
        print(f"[{n:>2}/{total}] {verdict} {result.scenario.id}  {result.duration_s:.1f} s  "
              f"slowest {slowest_text(result)}", flush=True)
        for attempt, error in enumerate(result.earlier_attempts, start=1):
            print(f"          attempt {attempt} not carried out: {error}", flush=True)
        if not result.passed:
            from syncctl.safety.report import failure_text

            for line in failure_text(result).splitlines():
                print(f"          {line}", flush=True)

    try:
        suite = run_suite(root, files, report_dir, hazards_file=hazards, selected=bool(ids),
                          on_start=on_start, on_end=on_end)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    if reviews:
        _write_reviews(suite.results, report_dir, suite.reviews)
    paths = write_reports(suite, report_dir)
    print()
    if suite.check is not None:
        from syncctl.safety.check import summary_lines

        print("\n".join(summary_lines(suite.check)))
    else:
        print("\n".join(f"error: {issue}" for issue in suite.check_error))
    for failure in suite.load_failures:
        print(f"error: {failure.file} cannot be loaded:")
        for issue in failure.issues:
            print(f"  {issue}")
    if suite.hazards_without_scenario:
        print(f"hazards without a scenario: {', '.join(suite.hazards_without_scenario)}")
    for scenario_id, links in suite.link_problems.items():
        for link in links:
            print(f"error: scenario {scenario_id}: {link}")
    passed = sum(1 for r in suite.results if r.passed)
    print(f"scenarios      {len(suite.results)} run, {passed} passed, "
          f"{len(suite.results) - passed + len(suite.load_failures)} failed "
          f"({suite.duration_s:.0f} s)")
    for label, found in (("slowest", suite.slowest()), ("closest", suite.tightest())):
        if found is not None:
            result, measured, deadline, what = found
            print(f"{label:<15}{what} {measured:g} ms of {deadline:g} ms "
                  f"({result.scenario.id})")
    hashes = ", ".join(f"{h} ({', '.join(rooms)})" for h, rooms in suite.config_hashes.items())
    print(f"config hash    {hashes or '-'}")
    print(f"report         {', '.join(str(p) for p in paths)}")
    print(f"result         {'PASS' if suite.passed else 'FAIL'}")
    return EXIT_COMPLETE if suite.passed else EXIT_BROKEN


def _write_reviews(results: list[ScenarioResult], report_dir: Path,
                   out: dict[str, Path]) -> None:
    from syncctl.analysis.review import write_review  # matplotlib: only when asked
    from syncctl.recording import read_recording

    for result in results:
        path = result.recording_file
        if path is None or not path.exists():
            continue
        try:
            out[result.scenario.id] = write_review(
                read_recording(path), report_dir / result.scenario.id / "review")
        except ValueError as exc:  # a recording without steps (the room never came up)
            print(f"warning: no review for {result.scenario.id}: {exc}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    root = Path(args.root)
    hazards = Path(args.hazards) if args.hazards is not None else root / DEFAULT_HAZARDS
    return run(root, hazards, Path(args.report), list(args.scenario), args.reviews)


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
    run_parser = safety_sub.add_parser(
        "run",
        help="run the QA scenarios against the simulators and write the report",
        description="Check the hazard log, then run every QA scenario of "
        "safety_cases/scenarios/ (or those named) against the device simulators over real "
        "transports, measuring each reaction time from the injected fault to the simulator's "
        "safe state. Writes report.html, junit.xml and report.json (and each scenario's audit "
        "trail and recording) into the report directory. Exit 0 when everything passed, 1 on "
        "any failure, 2 for an unknown scenario. See docs/qa.md.",
    )
    run_parser.add_argument("--report", metavar="DIR", default=str(DEFAULT_REPORT),
                            help=f"report directory (default: {DEFAULT_REPORT}/)")
    run_parser.add_argument("--scenario", metavar="ID", action="append", default=[],
                            help="run only this scenario (repeatable; default: all)")
    run_parser.add_argument("--reviews", action="store_true",
                            help="also write each scenario's review (HTML and plots) and link "
                                 "it from the report")
    run_parser.add_argument("--hazards", metavar="PATH", default=None,
                            help=f"the hazard log (default: ROOT/{DEFAULT_HAZARDS.as_posix()})")
    run_parser.add_argument("--root", metavar="DIR", default=".",
                            help="project root: safety_cases/ and the scenarios' room files "
                                 "are relative to it (default: the current directory)")
    run_parser.set_defaults(handler=_run)
