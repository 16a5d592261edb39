"""Whole demo fractions on a busy machine, with and without real-time scheduling.

``syncctl demo`` (simulators in their own process, controller, room service) is run ``--runs``
times in each of two arms, alternating, while ``--hogs`` processes spin on the CPU beside it:

- ``realtime``: as shipped: the controller asks for SCHED_FIFO (``--rt-priority 10``) and the
  simulators for theirs (20);
- ``ordinary``: both with ``--rt-priority 0`` (the ordinary Linux scheduler): the baseline.

For each run: whether the fraction completed, the trips, the controller's cycle p99 and
overruns, and the synchronizer-added latency. The hogs are plain busy loops at the ordinary
priority: a stand-in for a compiler, a browser or a test suite on the treatment-room PC.

    python bench/scheduling.py --runs 5 --hogs 3 --json /tmp/scheduling.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit, machine, stats

HOG = "while True: pass"


def one_demo(rt: bool, seed: int, workdir: Path, timeout_s: float) -> dict[str, Any]:
    out = workdir / f"summary-{rt}-{seed}.json"
    args = [sys.executable, "-m", "syncctl", "demo", "--quiet", "--no-record",
            "--seed", str(seed), "--json", str(out)]
    if not rt:
        args += ["--rt-priority", "0", "--sim-rt-priority", "0"]
    started = time.monotonic()
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
                          check=False)
    summary = json.loads(out.read_text()) if out.exists() else {}
    controller = summary.get("controller", {})
    return {
        "arm": "realtime" if rt else "ordinary",
        "seed": seed,
        "exit": done.returncode,
        "final_state": summary.get("final_state"),
        "trips": [t["rule_ids"] for t in summary.get("trips", [])],
        "cycle_p99_ms": controller.get("cycle_p99_ms"),
        "overruns": controller.get("overruns"),
        "sync_p99_ms": summary.get("sync_latency_ms", {}).get("p99"),
        "scheduling": summary.get("scheduling"),
        "wall_s": round(time.monotonic() - started, 1),
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    cycles = [r["cycle_p99_ms"] for r in runs if r["cycle_p99_ms"] is not None]
    return {
        "runs": len(runs),
        "completed": sum(r["final_state"] == "COMPLETE" for r in runs),
        "tripped": sum(bool(r["trips"]) for r in runs),
        "cycle_p99_ms": stats(cycles).as_dict() if cycles else None,
        "overruns_total": sum(r["overruns"] or 0 for r in runs),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="fractions per arm (default 3)")
    p.add_argument("--hogs", type=int, default=3,
                   help="busy processes beside the room (default 3, on a 2-core machine)")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds per fraction")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    if args.runs < 1 or args.hogs < 0:
        p.error("--runs >= 1, --hogs >= 0")
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(args.hogs)]
    runs: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-sched-") as tmp:
            for i in range(args.runs):
                for rt in ((True, False) if i % 2 == 0 else (False, True)):
                    run = one_demo(rt, seed=1 + i, workdir=Path(tmp), timeout_s=args.timeout)
                    print(json.dumps(run), file=sys.stderr, flush=True)
                    runs.append(run)
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait(10)
    result = {
        "benchmark": "scheduling",
        "machine": machine(),
        "hogs": args.hogs,
        "realtime": summarise([r for r in runs if r["arm"] == "realtime"]),
        "ordinary": summarise([r for r in runs if r["arm"] == "ordinary"]),
        "runs": runs,
    }
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
