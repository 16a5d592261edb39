"""What the two fraction commands (`demo`, `dryrun`) share: loading the room and the plan,
printing and saving the summary, and the exit code."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from syncctl.config import ConfigError, RoomConfig, load_room
from syncctl.core import Mode

EXIT_COMPLETE, EXIT_USAGE, EXIT_FAULT = 0, 2, 3


def load_room_and_plan(config_path: str, plan: str | None) -> tuple[RoomConfig, str] | None:
    """The room and the plan id to treat (the first plan unless one is named); None after
    printing every problem to stderr."""
    try:
        room = load_room(Path(config_path))
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"error: {issue}", file=sys.stderr)
        print(f"{len(exc.issues)} error(s) in {config_path}", file=sys.stderr)
        return None
    params = room.to_core_params()
    plan_id = plan or params.plans[0].plan_id
    if params.plan(plan_id) is None:
        known = ", ".join(p.plan_id for p in params.plans)
        print(f"error: plan {plan_id!r} is not in {config_path} (known: {known})",
              file=sys.stderr)
        return None
    return room, plan_id


def print_summary(summary: dict[str, Any]) -> None:
    """One line per figure; a dict (percentiles) on one line; an empty refusal list omitted."""
    print()
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        if key == "refused_commands" and not value:
            continue
        shown = ("  ".join(f"{k} {_fmt(v)}" for k, v in value.items())
                 if isinstance(value, dict) else value)
        print(f"  {key:<{width}}  {shown}")


def _fmt(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def write_json(path: str, summary: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(summary, indent=2, allow_nan=False, default=str) + "\n",
                          encoding="utf-8")


def exit_code(summary: dict[str, Any]) -> int:
    return EXIT_COMPLETE if summary["final_state"] == Mode.COMPLETE.name else EXIT_FAULT
