"""The QA safety suite: the hazard log's check, then every scenario (or those named), in order.

``run_suite`` is what ``syncctl safety run`` does apart from printing and writing the report:
it checks the chain of the hazard log (``syncctl.safety.check``), loads the scenarios, runs each
one against the simulators (``syncctl.safety.runner``) and collects the results.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from syncctl import __version__
from syncctl.controller.loop import run as run_loop
from syncctl.core import RULES, Rule
from syncctl.safety.check import SCENARIO_DIR, CheckResult, check_file
from syncctl.safety.hazards import Hazard, HazardLogError, load_hazard_log
from syncctl.safety.runner import ScenarioResult, run_scenario
from syncctl.safety.scenarios import (
    LoadedScenario,
    Scenario,
    ScenarioError,
    load_scenario,
    scenario_files,
)

DEFAULT_HAZARDS = Path("safety_cases") / "hazards.yaml"


@dataclass(frozen=True)
class LoadFailure:
    """A scenario file that could not be loaded: it counts as a failed scenario."""

    file: Path
    issues: tuple[str, ...]


@dataclass
class SuiteResult:
    root: Path
    hazards_file: Path
    started_utc: str
    software_version: str = __version__
    check: CheckResult | None = None
    check_error: tuple[str, ...] = ()
    """Why the hazard log could not be checked (unreadable, not of the schema)."""
    hazards: list[Hazard] = field(default_factory=list)
    results: list[ScenarioResult] = field(default_factory=list)
    load_failures: list[LoadFailure] = field(default_factory=list)
    link_problems: dict[str, list[str]] = field(default_factory=dict)
    """Scenario id -> how its ``hazards`` disagree with the hazard log: a hazard that is not
    in the log, a hazard none of whose controls lists the scenario, or a hazard whose
    control lists it while the scenario does not name the hazard."""
    selected: bool = False
    """Only the named scenarios ran: hazards without one are not a failure then."""
    duration_s: float = 0.0
    reviews: dict[str, Path] = field(default_factory=dict)

    @property
    def scenarios_by_hazard(self) -> dict[str, list[ScenarioResult]]:
        out: dict[str, list[ScenarioResult]] = {h.id: [] for h in self.hazards}
        for result in self.results:
            for hazard in result.scenario.hazards:
                out.setdefault(hazard, []).append(result)
        return out

    @property
    def hazards_without_scenario(self) -> list[str]:
        if self.selected:
            return []
        return [h for h, results in self.scenarios_by_hazard.items() if not results]

    @property
    def check_ok(self) -> bool:
        return self.check is not None and self.check.ok

    @property
    def passed(self) -> bool:
        return (self.check_ok and not self.load_failures and not self.link_problems
                and not self.hazards_without_scenario and bool(self.results)
                and all(r.passed for r in self.results))

    @property
    def failed(self) -> list[ScenarioResult]:
        return [r for r in self.results if not r.passed]

    @property
    def config_hashes(self) -> dict[str, list[str]]:
        """Config hash -> the rooms (files) that have it."""
        out: dict[str, list[str]] = {}
        for r in self.results:
            if r.config_hash:
                rooms = out.setdefault(r.config_hash, [])
                if r.scenario.room not in rooms:
                    rooms.append(r.scenario.room)
        return out

    def _timed(self) -> list[tuple[ScenarioResult, float, float, str]]:
        return [(result, r.measured_ms, r.deadline_ms, r.what) for result in self.results
                for r in result.reactions if r.measured_ms is not None]

    def slowest(self) -> tuple[ScenarioResult, float, float, str] | None:
        """(scenario, measured ms, deadline ms, what) of the longest reaction time."""
        return max(self._timed(), key=lambda t: t[1], default=None)

    def tightest(self) -> tuple[ScenarioResult, float, float, str] | None:
        """The reaction that used the largest share of its deadline."""
        return max(self._timed(), key=lambda t: t[1] / t[2], default=None)


def link_problems(hazards: Sequence[Hazard], scenarios: Sequence[Scenario]
                  ) -> dict[str, list[str]]:
    """Where a scenario's ``hazards`` and the hazard log's ``scenario:`` verifications
    disagree (both must say the same thing)."""
    known = {h.id for h in hazards}
    listed_by: dict[str, set[str]] = {}
    for hazard in hazards:
        for control in hazard.controls:
            for evidence in control.verification:
                if evidence.scenario is not None:
                    listed_by.setdefault(evidence.scenario, set()).add(hazard.id)
    out: dict[str, list[str]] = {}
    for scenario in scenarios:
        named, listing = set(scenario.hazards), listed_by.get(scenario.id, set())
        problems = [f"{h} is not in the hazard log" for h in sorted(named - known)]
        problems += [f"names {h}, but no control of {h} lists scenario {scenario.id}"
                     for h in sorted((named & known) - listing)]
        problems += [f"a control of {h} lists it, but it does not name {h}"
                     for h in sorted(listing - named)]
        if problems:
            out[scenario.id] = problems
    return out


def scenario_dir(root: Path) -> Path:
    return root / Path(SCENARIO_DIR)


def select_files(root: Path, ids: Sequence[str]) -> tuple[list[Path], list[str]]:
    """The files to run (every one, or those named) and the ids that have no file."""
    directory = scenario_dir(root)
    if not ids:
        return scenario_files(directory), []
    files = [directory / f"{i}.yaml" for i in ids]
    return [f for f in files if f.is_file()], [i for i, f in zip(ids, files, strict=True)
                                               if not f.is_file()]


def run_scenario_once_more_if_not_started(scenario: Scenario, file: Path, report_dir: Path,
                                          root: Path, rules: Sequence[Rule] = RULES
                                          ) -> ScenarioResult:
    """Run one scenario; when the room never got to its initial mode (nothing of the scenario
    was tried: a loaded machine can starve the simulated room's 60 ms serial timeout during
    set-up), run it once more. The result lists the earlier attempt's error, and the reports
    show it."""
    result = run_loop(run_scenario(scenario, file, report_dir, root, rules))
    if result.error is not None and not result.reached_initial_mode and result.config_hash:
        first = result.error
        result = run_loop(run_scenario(scenario, file, report_dir, root, rules))
        result.earlier_attempts.append(first)
    return result


def run_suite(
    root: Path,
    files: Sequence[Path],
    report_dir: Path,
    *,
    hazards_file: Path | None = None,
    rules: Sequence[Rule] = RULES,
    selected: bool = False,
    on_start: Callable[[int, int, LoadedScenario], None] | None = None,
    on_end: Callable[[int, int, ScenarioResult], None] | None = None,
) -> SuiteResult:
    """Check the hazard log, then run the scenario files in order. Each scenario's outputs go
    into ``report_dir/<id>/``."""
    started = time.monotonic()
    hazards_path = hazards_file or root / DEFAULT_HAZARDS
    suite = SuiteResult(root, hazards_path,
                        datetime.now(UTC).isoformat(timespec="seconds"), selected=selected)
    try:
        suite.check = check_file(hazards_path, root)
        suite.hazards = list(load_hazard_log(hazards_path).log.hazards)
    except HazardLogError as exc:
        suite.check_error = tuple(str(i) for i in exc.issues)
    loaded: list[LoadedScenario] = []
    for file in files:
        try:
            loaded.append(load_scenario(file))
        except ScenarioError as exc:
            suite.load_failures.append(LoadFailure(file, tuple(str(i) for i in exc.issues)))
    if suite.hazards:
        suite.link_problems = link_problems(suite.hazards, [i.scenario for i in loaded])
    report_dir.mkdir(parents=True, exist_ok=True)
    for n, item in enumerate(loaded, start=1):
        if on_start is not None:
            on_start(n, len(loaded), item)
        result = run_scenario_once_more_if_not_started(item.scenario, item.file, report_dir,
                                                       root, rules)
        suite.results.append(result)
        if on_end is not None:
            on_end(n, len(loaded), result)
    suite.duration_s = time.monotonic() - started
    return suite
