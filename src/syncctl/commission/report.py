"""The commissioning report: one JSON file for machines and one HTML file for people, both
named with the room, the config hash and the start time:

    <DIR>/commission-<room>-<config hash>-<YYYYmmddTHHMMSSZ>.json
    <DIR>/commission-<room>-<config hash>-<YYYYmmddTHHMMSSZ>.html

The HTML is self-contained (no scripts, no external files) and is written from the JSON
document, so the two always say the same.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from syncctl.commission.checks import StepResult, run_passed

FORMAT = "syncctl-commissioning/1"


def build_report(*, results: Sequence[StepResult], meta: dict[str, Any]) -> dict[str, Any]:
    """The report document: who, when, what, and every step with its checks and figures."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status.value] = counts.get(r.status.value, 0) + 1
    return {
        "format": FORMAT,
        **meta,
        "result": "PASSED" if run_passed(results) else "FAILED",
        "step_counts": counts,
        "steps": [r.as_dict() for r in results],
    }


def report_stem(room_id: str, digest: str, started_compact: str) -> str:
    return f"commission-{room_id}-{digest}-{started_compact}"


def write_report(report: dict[str, Any], directory: Path, stem: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / f"{stem}.json"
    html_path = directory / f"{stem}.html"
    json_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    html_path.write_text(render_html(report), encoding="utf-8")
    return json_path, html_path


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _figure_rows(figures: dict[str, Any], prefix: str = "") -> list[str]:
    rows: list[str] = []
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and any(isinstance(v, dict) for v in value.values()):
            rows += _figure_rows(value, f"{name}.")
        else:
            rows.append(f"<tr><td>{html.escape(name)}</td>"
                        f"<td>{html.escape(_fmt(value))}</td></tr>")
    return rows


STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em; }
td, th { border: 1px solid #bbb; padding: 3px 8px; text-align: left; vertical-align: top;
         font-size: 90%; }
th { background: #eee; }
.passed { background: #d8f3d8; } .failed { background: #f7d0d0; }
.skipped { background: #f5ecc8; } .recorded { background: #e3e9f5; }
h2 { margin-top: 1.6em; }
"""


def render_html(report: dict[str, Any]) -> str:
    e = html.escape
    result = report["result"]
    head = [
        ("result", result), ("room", f"{report['room_id']} ({report['room_name']})"),
        ("engineer", report["engineer"]), ("started (UTC)", report["started_utc"]),
        ("finished (UTC)", report["finished_utc"]), ("config", report["config_path"]),
        ("config hash", report["config_hash"]), ("software", report["software_version"]),
        ("host", report["host"]), ("mode", report["mode"]),
        ("steps", _fmt(report["step_counts"])),
    ]
    out = [
        "<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>Commissioning {e(report['room_id'])} {e(report['started_utc'])}: "
        f"{e(result)}</title>", f"<style>{STYLE}</style></head><body>",
        f"<h1>Commissioning report: {e(report['room_id'])} "
        f"<span class=\"{result.lower()}\">{e(result)}</span></h1>",
        "<table>",
        *(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in head),
        "</table>",
    ]
    for note in report.get("notes", []):
        out.append(f"<p><b>Note:</b> {e(note)}</p>")
    out += ["<h2>Summary</h2>", "<table><tr><th>step</th><th>title</th><th>status</th>"
            "<th>duration s</th><th>reason</th></tr>"]
    for step in report["steps"]:
        out.append(
            f"<tr class=\"{e(step['status'])}\"><td><a href=\"#{e(step['step'])}\">"
            f"{e(step['step'])}</a></td><td>{e(step['title'])}</td><td>{e(step['status'])}</td>"
            f"<td>{step['duration_s']:g}</td><td>{e(step['skip_reason'] or '')}</td></tr>")
    out.append("</table>")
    for step in report["steps"]:
        out.append(f"<h2 id=\"{e(step['step'])}\">{e(step['step'])}: {e(step['title'])} "
                   f"<span class=\"{e(step['status'])}\">{e(step['status'].upper())}</span></h2>")
        if step["skip_reason"]:
            out.append(f"<p>Skipped: {e(step['skip_reason'])}</p>")
        for note in step["notes"]:
            out.append(f"<p>{e(note)}</p>")
        if step["figures"]:
            out += ["<table><tr><th>figure</th><th>value</th></tr>",
                    *_figure_rows(step["figures"]), "</table>"]
        if step["checks"]:
            out.append("<table><tr><th>check</th><th>status</th><th>measured</th>"
                       "<th>expected</th><th>detail</th></tr>")
            for c in step["checks"]:
                out.append(
                    f"<tr class=\"{e(c['status'])}\"><td>{e(c['name'])}</td>"
                    f"<td>{e(c['status'])}</td><td>{e(_fmt(c['measured']))}</td>"
                    f"<td>{e(c['expected'])}</td><td>{e(c['detail'])}</td></tr>")
            out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
