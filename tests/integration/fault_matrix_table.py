"""Render the fault matrix's results (JSON lines written by tests/integration/test_fault_matrix.py
when SYNCCTL_FAULT_MATRIX_JSON names a file) as the "Fault matrix" section of
docs/reliability.md. Nothing in the table is typed by hand: every cell comes from a run.

    SYNCCTL_FAULT_MATRIX_JSON=/tmp/matrix.jsonl pytest tests/integration/test_fault_matrix.py
    python tests/integration/fault_matrix_table.py /tmp/matrix.jsonl --write docs/reliability.md

Without ``--write`` the section is printed. With it, the section from its heading
``## Fault matrix`` to the next ``## `` heading (or the end of the page) is replaced, or
appended when the page has none.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HEADING = "## Fault matrix"
MODES = ("SAFE", "SETUP", "READY", "TREATING", "HOLD")


def read_results(path: Path) -> tuple[dict[str, Any], dict[tuple[str, str], dict[str, Any]]]:
    """(the run's summary line, the last line for each (mode, fault))."""
    run: dict[str, Any] = {}
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("type") == "run":
            run.update(row)
        elif row.get("type") in ("case", "n/a"):
            cells[(str(row["mode"]), str(row["fault"]))] = row
    return run, cells


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0f} ms"


def cell_text(row: dict[str, Any], notes: dict[str, int]) -> str:
    """One cell: the outcome (mode, rule ids) and the measured times to the safe state."""
    if row["type"] == "n/a":
        note = notes.setdefault(str(row["why"]), len(notes) + 1)
        return f"n/a ({note})"
    final = row.get("final_mode") or "?"
    rules = ", ".join(row.get("rules_seen") or []) or "-"
    kind = row.get("kind")
    parts: list[str] = []
    if kind == "trip":
        parts.append(f"{final} {rules} at {_ms(row.get('detected_ms'))}")
    elif kind == "blocks":
        parts.append(f"select refused {rules} (shown at {_ms(row.get('detected_ms'))})")
    elif kind == "accepts":
        parts.append("nothing to block: select accepted")
    else:
        parts.append(f"{final}, beam held {rules} at {_ms(row.get('detected_ms'))}")
    if row.get("degraded_first"):
        parts.append(f"{row['degraded_first']} first" if row.get("degraded_seen") else
                     "healthy straight to lost")
    if row.get("gate_closed_ms") is not None:
        parts.append(f"gate closed {_ms(row['gate_closed_ms'])} (deadline "
                     f"{_ms(row.get('gate_deadline_ms'))})")
    elif row.get("gate_stuck_open"):
        parts.append("gate stuck open")
    if row.get("xray_stopped_ms") is not None:
        parts.append(f"X-ray off {_ms(row['xray_stopped_ms'])} after the trip")
    if row.get("earlier_attempts"):
        parts.append("2nd run (1st starved)")
    text = "; ".join(parts)
    return text if row.get("ok") else f"**FAIL**: {text}; {row.get('failure', '')}"


def render(run: dict[str, Any], cells: dict[tuple[str, str], dict[str, Any]]) -> str:
    order = list(run.get("faults") or [])
    faults = order + sorted({fault for _, fault in cells} - set(order))
    cases = [r for r in cells.values() if r["type"] == "case"]
    failed = [r for r in cases if not r.get("ok")]
    notes: dict[str, int] = {}
    table = ["| fault | " + " | ".join(MODES) + " |", "|---|" + "---|" * len(MODES)]
    for fault in faults:
        row = [f"`{fault}`"]
        for mode in MODES:
            entry = cells.get((mode, fault))
            row.append("not run" if entry is None else cell_text(entry, notes))
        table.append("| " + " | ".join(row) + " |")
    lines = [
        HEADING,
        "",
        "Generated from one run of `tests/integration/test_fault_matrix.py` by "
        "`tests/integration/fault_matrix_table.py`; do not edit by hand (the test's "
        "docstring says how to regenerate it).",
        "",
        f"Run of {run.get('started_utc', '?')}: {len(cases)} cases, {len(failed)} failed, "
        f"in {run.get('duration_s', 0):.0f} s (one simulator process for all of them); "
        f"{run.get('machine', '?')}, load average {run.get('load_start', '?')} at the start "
        f"(other work on the machine), Python {run.get('python', '?')}.",
        "",
        "How: one simulator process serves every case; before each, both devices get every "
        "backdoor fault cleared and are power-cycled through the backdoor. Each case runs its "
        "own controller (real device clients, Modbus TCP and RTU over a pty) and its own audit "
        "trail, reaches the mode by operator commands only (HOLD: the pause in TREATING), and "
        "injects the fault: in TREATING while the gate reads back open, for an interruption "
        "once none of its rules denies the beam. A case that fails after a gap of more than "
        "100 ms between two control cycles (a starved process: device reads go stale) is run "
        "once more, and the cell says so.",
        "",
        "Each cell: the mode after the fault and the rule ids (for a trip, every rule id that "
        "tripped after the injection), with the time from the "
        "injection (just before the backdoor write) to the first control cycle that tripped, "
        "or held the beam under an interruption (the mode stays); in SAFE, where nothing "
        "latches, whether the plan "
        "selection tried after the fault is refused, naming the rule. For a cut link, the "
        "degraded rule that held the beam first, before the lost device tripped (or \"healthy "
        "straight to lost\" when a transaction in flight delayed the first failed poll until "
        "the last good read was already stale). Times to the "
        "safe state are from the simulators' ground truth: in TREATING, the gate closed for "
        "good (from the injection; the deadlines are the matrix's); after a trip, the X-ray "
        "stopped for good (from the trip; deadline 500 ms). "
        "In SAFE, SETUP, READY and HOLD every case also checked that the gate, closed at the "
        "injection, never opened. Every case checked the X-ray command (stopped on a trip, "
        "going on under an interruption), that each trip the controller reported is a `trip` "
        "record with its rule ids in the case's audit trail (and a SAFE refusal a `command` "
        "record), and that the trail's hash chain verifies.",
        "",
        *table,
        "",
    ]
    for text, number in notes.items():
        lines.append(f"({number}) {text}.")
        lines.append("")
    if failed:
        lines.append("Failed cases: " + ", ".join(f"{r['mode']}-{r['fault']}" for r in failed)
                     + ".")
        lines.append("")
    return "\n".join(lines)


def replace_section(page: str, section: str) -> str:
    start = page.find("\n" + HEADING + "\n")
    if start < 0:
        return page.rstrip("\n") + "\n\n" + section
    start += 1
    end = page.find("\n## ", start + len(HEADING))
    rest = "" if end < 0 else page[end + 1:]
    return page[:start] + section + ("\n" + rest if rest else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="JSON lines written by the matrix")
    parser.add_argument("--write", type=Path, help="the page whose section to replace")
    args = parser.parse_args(argv)
    run, cells = read_results(args.results)
    if not cells:
        print(f"{args.results}: no results", file=sys.stderr)
        return 1
    section = render(run, cells)
    if args.write is None:
        print(section)
    else:
        page = args.write.read_text(encoding="utf-8")
        args.write.write_text(replace_section(page, section), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
