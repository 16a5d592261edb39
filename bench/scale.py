"""Scale: N simulated rooms on one machine, each a complete `syncctl demo` (its own
simulators, controller and ground truth), all at once. Reports, per N, each room's controller
CPU, cycle p99, gating and synchronizer latencies and outcome, and where the targets stop
being met. The baseline is N = 1 in the same run.

    python bench/scale.py [--rooms 1,2,4] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PY, ROOT, emit, machine


def run_rooms(n: int, tmp: Path) -> list[dict[str, Any]]:
    procs = []
    for i in range(n):
        out = tmp / f"n{n}-room{i}.json"
        procs.append((out, subprocess.Popen(
            [PY, "-m", "syncctl", "demo", "--quiet", "--no-record", "--seed", str(i + 1),
             "--json", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)))
    rooms = []
    for out, proc in procs:
        proc.wait(600)
        s = json.loads(out.read_text()) if out.exists() else {"final_state": "NO RESULT"}
        c = s.get("controller", {})
        rooms.append({"final_state": s.get("final_state"),
                      "cpu_percent_of_one_core": c.get("cpu_percent_of_one_core"),
                      "cycle_p99_ms": c.get("cycle_p99_ms"), "overruns": c.get("overruns"),
                      "gating_latency_max_ms": s.get("gating_latency_ms", {}).get("max"),
                      "sync_latency_p99_ms": s.get("sync_latency_ms", {}).get("p99"),
                      "trips": s.get("trips")})
    return rooms


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rooms", default="1,2,4", help="comma-separated room counts")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()
    result: dict[str, Any] = {"benchmark": "scale", "machine": machine(), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as t:
        for n in (int(v) for v in args.rooms.split(",")):
            rooms = run_rooms(n, Path(t))
            ok = all(r["final_state"] == "COMPLETE" for r in rooms)
            result["runs"][str(n)] = {"all_complete": ok, "rooms": rooms}
            print(f"{n} room(s): all complete {ok}; cycle p99 "
                  f"{[r['cycle_p99_ms'] for r in rooms]} ms", file=sys.stderr, flush=True)
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
