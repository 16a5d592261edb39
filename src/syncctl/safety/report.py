"""The report of ``syncctl safety run``: ``report.html`` for people, ``junit.xml`` for CI tools,
``report.json`` for machines, all written from one ``SuiteResult``.

Every report names the software version, the date, the configuration hash of each room, the
hazard log's check, and for each scenario its hazards, its result, its measured reaction times
against their deadlines and, for a failure, why.
"""

from __future__ import annotations

import html
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from syncctl.safety.check import report_lines
from syncctl.safety.runner import ScenarioResult
from syncctl.safety.suite import SuiteResult

REPORT_FILES = ("report.html", "junit.xml", "report.json")
STARVED_MS = 50.0
"""A gap between two control cycles this long (the room's imaging transaction timeout is
60 ms) is worth pointing out next to a failure."""


def _rel(path: Path | None, base: Path) -> str | None:
    if path is None:
        return None
    try:
        return Path(os.path.relpath(path, base)).as_posix()
    except ValueError:
        return str(path)


def failure_text(result: ScenarioResult) -> str:
    """Why a scenario failed, one sentence per failed check."""
    lines = []
    lines += [f"attempt {n} not carried out: {e}"
              for n, e in enumerate(result.earlier_attempts, start=1)]
    if result.error is not None:
        lines.append(f"not carried out: {result.error}")
    lines += [f"{c.name}: {c.detail}" for c in result.failures]
    if not result.checks and result.error is None:
        lines.append("no outcome was checked")
    gap = result.max_cycle_gap_ms
    if gap is not None and gap >= STARVED_MS and not result.scenario.steps_hang:
        lines.append(f"note: the controller ran no cycle for {gap:g} ms at one point (the "
                     "machine may be overloaded: see docs/qa.md)")
    return "\n".join(lines)


def slowest_text(result: ScenarioResult) -> str:
    r = result.slowest
    if r is None or r.measured_ms is None:
        return "-"
    return f"{r.what}: {r.measured_ms:g} ms of {r.deadline_ms:g} ms"


# -- JSON -----------------------------------------------------------------------------------


def _figure(found: tuple[ScenarioResult, float, float, str] | None) -> dict[str, Any] | None:
    if found is None:
        return None
    return {"scenario": found[0].scenario.id, "what": found[3], "measured_ms": found[1],
            "deadline_ms": found[2]}


def to_json(suite: SuiteResult, out_dir: Path) -> dict[str, Any]:
    scenarios = []
    for result in suite.results:
        item = result.to_json()
        item["audit_file"] = _rel(result.audit_file, out_dir)
        item["recording_file"] = _rel(result.recording_file, out_dir)
        item["review"] = _rel(suite.reviews.get(result.scenario.id), out_dir)
        item["failure"] = failure_text(result) if not result.passed else None
        scenarios.append(item)
    by_hazard = suite.scenarios_by_hazard
    return {
        "software": "syncctl",
        "software_version": suite.software_version,
        "date_utc": suite.started_utc,
        "duration_s": round(suite.duration_s, 3),
        "passed": suite.passed,
        "counts": {
            "hazards": len(suite.hazards),
            "scenarios": len(suite.results) + len(suite.load_failures),
            "passed": sum(1 for r in suite.results if r.passed),
            "failed": len(suite.failed) + len(suite.load_failures),
        },
        "config_hashes": suite.config_hashes,
        "safety_check": (suite.check.to_json() if suite.check is not None
                         else {"ok": False, "unreadable": True,
                               "issues": list(suite.check_error)}),
        "hazards": [{"id": h.id, "title": h.title, "severity": h.severity,
                     "scenarios": [r.scenario.id for r in by_hazard.get(h.id, [])],
                     "passed": bool(by_hazard.get(h.id))
                     and all(r.passed for r in by_hazard[h.id])}
                    for h in suite.hazards],
        "hazards_without_scenario": suite.hazards_without_scenario,
        "hazard_link_problems": suite.link_problems,
        "load_failures": [{"file": str(f.file), "issues": list(f.issues)}
                          for f in suite.load_failures],
        "slowest_reaction": _figure(suite.slowest()),
        "tightest_reaction": _figure(suite.tightest()),
        "scenarios": scenarios,
    }


# -- JUnit XML ------------------------------------------------------------------------------


def to_junit(suite: SuiteResult) -> ET.ElementTree[ET.Element]:
    """One testcase per scenario (classname: its first hazard), one for the hazard log's
    check, one per scenario file that did not load, one per hazard without a scenario."""
    cases: list[ET.Element] = []

    def case(classname: str, name: str, seconds: float) -> ET.Element:
        element = ET.Element("testcase", classname=classname, name=name,
                             time=f"{seconds:.3f}")
        cases.append(element)
        return element

    check = case("safety-check", "hazard log chain", 0.0)
    if suite.check is None:
        ET.SubElement(check, "error", message="the hazard log cannot be read").text = (
            "\n".join(suite.check_error))
    elif not suite.check.ok:
        ET.SubElement(check, "failure", message="the chain is broken").text = (
            "\n".join(report_lines(suite.check)))
    else:
        ET.SubElement(check, "system-out").text = "\n".join(report_lines(suite.check))
    for failure in suite.load_failures:
        element = case("scenario-file", failure.file.stem, 0.0)
        ET.SubElement(element, "error", message="the scenario file cannot be loaded").text = (
            "\n".join(failure.issues))
    for hazard in suite.hazards_without_scenario:
        element = case(hazard, "(no scenario)", 0.0)
        ET.SubElement(element, "failure", message=f"{hazard} has no QA scenario")
    for result in suite.results:
        s = result.scenario
        element = case(s.hazards[0], s.id, result.duration_s)
        props = ET.SubElement(element, "properties")
        for name, value in (("hazards", " ".join(s.hazards)), ("title", s.title),
                            ("config_hash", result.config_hash), ("room", s.room),
                            ("seed", str(s.seed))):
            ET.SubElement(props, "property", name=name, value=value)
        for reaction in result.reactions:
            ET.SubElement(props, "property", name=f"reaction: {reaction.what}",
                          value=f"{reaction.measured_ms} ms of {reaction.deadline_ms:g} ms")
        if result.error is not None:
            ET.SubElement(element, "error", message=result.error[:500]).text = (
                failure_text(result))
        elif not result.passed:
            first = result.failures[0] if result.failures else None
            message = f"{first.name}: {first.detail}" if first else "failed"
            ET.SubElement(element, "failure", message=message[:500]).text = (
                failure_text(result))
        ET.SubElement(element, "system-out").text = "\n".join(
            f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}" for c in result.checks)
    failures = sum(1 for c in cases if c.find("failure") is not None)
    errors = sum(1 for c in cases if c.find("error") is not None)
    total = f"{suite.duration_s:.3f}"
    root = ET.Element("testsuites", name="syncctl safety run", tests=str(len(cases)),
                      failures=str(failures), errors=str(errors), time=total)
    testsuite = ET.SubElement(root, "testsuite", name="syncctl-safety-scenarios",
                              tests=str(len(cases)), failures=str(failures),
                              errors=str(errors), skipped="0", time=total,
                              timestamp=suite.started_utc)
    props = ET.SubElement(testsuite, "properties")
    ET.SubElement(props, "property", name="software_version", value=suite.software_version)
    for digest, rooms in suite.config_hashes.items():
        ET.SubElement(props, "property", name=f"config_hash {digest}", value=" ".join(rooms))
    testsuite.extend(cases)
    ET.indent(root)
    return ET.ElementTree(root)


# -- HTML -----------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 80em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
.pass { color: #11661d; font-weight: bold; }
.fail { color: #b00020; font-weight: bold; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 90%; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _verdict(ok: bool) -> str:
    return '<span class="pass">PASS</span>' if ok else '<span class="fail">FAIL</span>'


def _link(path: str | None, text: str) -> str:
    return f'<a href="{_e(path)}">{_e(text)}</a>' if path else "-"


def to_html(suite: SuiteResult, out_dir: Path) -> str:
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>syncctl safety run</title>", f"<style>{_CSS}</style></head><body>",
        f"<h1>syncctl safety run: {_verdict(suite.passed)}</h1>",
        "<table>",
        f"<tr><th>software</th><td>syncctl {_e(suite.software_version)}</td></tr>",
        f"<tr><th>date (UTC)</th><td>{_e(suite.started_utc)}</td></tr>",
        f"<tr><th>duration</th><td>{suite.duration_s:.1f} s</td></tr>",
        f"<tr><th>hazard log</th><td>{_e(suite.hazards_file)}: "
        f"{_verdict(suite.check_ok)}</td></tr>",
        f"<tr><th>scenarios</th><td>{len(suite.results)} run, "
        f"{sum(1 for r in suite.results if r.passed)} passed, "
        f"{len(suite.failed)} failed, {len(suite.load_failures)} not loadable</td></tr>",
    ]
    for digest, rooms in suite.config_hashes.items():
        parts.append(f"<tr><th>config hash</th><td><code>{_e(digest)}</code> "
                     f"({_e(', '.join(rooms))})</td></tr>")
    for label, found in (("slowest reaction", suite.slowest()),
                         ("closest to its deadline", suite.tightest())):
        if found is not None:
            parts.append(f"<tr><th>{label}</th><td>{found[1]:g} ms of {found[2]:g} ms "
                         f"deadline: {_e(found[3])} in {_e(found[0].scenario.id)}</td></tr>")
    parts.append("</table>")

    problems = []
    if suite.hazards_without_scenario:
        problems.append("hazards without a scenario: " + ", ".join(suite.hazards_without_scenario))
    for sid, links in suite.link_problems.items():
        problems += [f"{sid}: {link}" for link in links]
    for failure in suite.load_failures:
        problems.append(f"{failure.file} cannot be loaded:\n" + "\n".join(failure.issues))
    if problems:
        parts.append("<h2>Problems of the suite</h2>")
        parts += [f"<pre>{_e(p)}</pre>" for p in problems]

    parts.append("<h2>Hazards</h2><table><tr><th>hazard</th><th>title</th><th>severity</th>"
                 "<th>scenarios</th><th>result</th></tr>")
    by_hazard = suite.scenarios_by_hazard
    for hazard in suite.hazards:
        results = by_hazard.get(hazard.id, [])
        cell = ", ".join(f'<a href="#{_e(r.scenario.id)}">{_e(r.scenario.id)}</a> '
                        f"{_verdict(r.passed)}" for r in results) or "none run"
        ok = bool(results) and all(r.passed for r in results)
        parts.append(f"<tr><td>{_e(hazard.id)}</td><td>{_e(hazard.title)}</td>"
                     f"<td>{_e(hazard.severity)}</td><td>{cell}</td>"
                     f"<td>{_verdict(ok) if results else '-'}</td></tr>")
    parts.append("</table>")

    parts.append("<h2>Scenarios</h2><table><tr><th>scenario</th><th>hazards</th>"
                 "<th>result</th><th>reaction times (measured / deadline)</th>"
                 "<th>config hash</th><th>run time</th><th>files</th></tr>")
    for result in suite.results:
        s = result.scenario
        reactions = "<br>".join(
            f"{_e(r.what)}: {'never' if r.measured_ms is None else f'{r.measured_ms:g} ms'}"
            f" / {r.deadline_ms:g} ms {_verdict(r.ok)}" for r in result.reactions) or "-"
        files = " ".join(x for x in (
            _link(_rel(result.audit_file, out_dir), "audit"),
            _link(_rel(result.recording_file, out_dir), "recording"),
            _link(_rel(suite.reviews.get(s.id), out_dir), "review")) if x != "-") or "-"
        parts.append(f'<tr><td><a href="#{_e(s.id)}">{_e(s.id)}</a></td>'
                     f"<td>{_e(', '.join(s.hazards))}</td><td>{_verdict(result.passed)}</td>"
                     f"<td>{reactions}</td><td><code>{_e(result.config_hash or '-')}</code></td>"
                     f'<td class="num">{result.duration_s:.1f} s</td><td>{files}</td></tr>')
    parts.append("</table>")

    parts.append("<h2>Hazard log check</h2>")
    if suite.check is not None:
        parts.append(f"<pre>{_e(chr(10).join(report_lines(suite.check)))}</pre>")
    else:
        parts.append(f"<pre>{_e(chr(10).join(suite.check_error))}</pre>")

    parts.append("<h2>Scenario details</h2>")
    for result in suite.results:
        parts += _scenario_html(result)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _scenario_html(result: ScenarioResult) -> list[str]:
    s = result.scenario
    out = [f'<h3 id="{_e(s.id)}">{_e(s.id)}: {_e(s.title)} {_verdict(result.passed)}</h3>',
           f"<p>Hazards {_e(', '.join(s.hazards))}; room <code>{_e(s.room)}</code> (hash "
           f"<code>{_e(result.config_hash or '-')}</code>), plan {_e(s.plan)}, seed {s.seed}, "
           f"from {_e(s.initial_mode)}; ended in {_e(result.final_mode or '-')}; longest gap "
           f"between two control cycles {_e(result.max_cycle_gap_ms)} ms.</p>"]
    if s.description:
        out.append(f"<p>{_e(s.description)}</p>")
    if not result.passed:
        out.append(f'<p class="fail">Why it failed:</p><pre>{_e(failure_text(result))}</pre>')
    elif result.earlier_attempts:
        out.append("<p>Carried out at attempt {}; earlier: {}</p>".format(
            len(result.earlier_attempts) + 1, _e("; ".join(result.earlier_attempts))))
    if s.steps:
        out.append("<p>Steps:</p><ol>" + "".join(
            f"<li>{_e(step.describe())}{' (trigger)' if i == s.trigger_index else ''}"
            f"{': ' + _e(step.note) if step.note else ''}</li>"
            for i, step in enumerate(s.steps)) + "</ol>")
    out.append("<table><tr><th>check</th><th>result</th><th>detail</th></tr>")
    out += [f"<tr><td>{_e(c.name)}</td><td>{_verdict(c.ok)}</td><td>{_e(c.detail)}</td></tr>"
            for c in result.checks]
    out.append("</table>")
    if result.safe_state_confirmed is not None:
        out.append("<p>At the end the controller's safe shutdown "
                   + ("confirmed the gate closed and the X-ray stopped by readback."
                      if result.safe_state_confirmed else
                      "could NOT confirm the safe state by readback (expected with a stuck "
                      "gate or a cut link).") + "</p>")
    for label, during in (("Trips", True), ("Trips during set-up (acknowledged and reset by "
                                            "the runner, not counted)", False)):
        trips = [t for t in result.trips if t["during_steps"] is during]
        if trips:
            out.append(f"<p>{label}: " + "; ".join(
                f"{', '.join(t['rule_ids'])}" + (f" at {t['at_s']} s" if during else "")
                for t in trips) + "</p>")
    if not result.passed and result.timeline:
        out.append("<p>What the controller reported (changes only):</p>"
                   f"<pre>{_e(chr(10).join(result.timeline[-60:]))}</pre>")
    return out


def write_reports(suite: SuiteResult, out_dir: Path) -> list[Path]:
    """Write report.html, junit.xml and report.json into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, junit_path, json_path = (out_dir / name for name in REPORT_FILES)
    html_path.write_text(to_html(suite, out_dir), encoding="utf-8")
    to_junit(suite).write(junit_path, encoding="utf-8", xml_declaration=True)
    json_path.write_text(json.dumps(to_json(suite, out_dir), indent=2, allow_nan=False)
                         + "\n", encoding="utf-8")
    return [html_path, junit_path, json_path]
