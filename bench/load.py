"""Load: CPU and memory of the controller at nominal load over a long run.

`syncctl run` treats a long fraction (breathing motion, 1 kHz beam-gate poll, 30 fps imaging,
the recording on) against the simulators; CPU share and resident memory are sampled every
second from /proc. Memory must be flat: the report gives the least-squares slope of RSS over
the second half of the run (after warm-up). The baseline is the naive 1 kHz interlock loop
(bench/naive_baseline.py) sampled the same way for a tenth of the time.

    python bench/load.py [--minutes 10] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    PY,
    ROOM,
    LineProcess,
    add_baseline_priority,
    cpu_seconds,
    emit,
    machine,
    room_config,
    rss_mb,
    scheduled,
)

from syncctl.cli.simproc import start_simulators


def sample(pid: int, seconds: float) -> list[tuple[float, float, float]]:
    """(t, cpu %, RSS MB) once a second."""
    out = []
    t_prev, c_prev = time.monotonic(), cpu_seconds(pid)
    t_end = t_prev + seconds
    while time.monotonic() < t_end:
        time.sleep(1.0)
        t, c = time.monotonic(), cpu_seconds(pid)
        out.append((t, 100 * (c - c_prev) / (t - t_prev), rss_mb(pid)))
        t_prev, c_prev = t, c
    return out


def slope_mb_per_hour(samples: list[tuple[float, float, float]]) -> float:
    half = samples[len(samples) // 2:]
    if len(half) < 2:
        return 0.0
    ts = [s[0] for s in half]
    ms = [s[2] for s in half]
    mt, mm = sum(ts) / len(ts), sum(ms) / len(ms)
    num = sum((t - mt) * (m - mm) for t, m in zip(ts, ms, strict=True))
    den = sum((t - mt) ** 2 for t in ts)
    return 3600 * num / den if den else 0.0


def summary(samples: list[tuple[float, float, float]]) -> dict[str, Any]:
    cpu = sorted(s[1] for s in samples)
    return {"samples": len(samples), "cpu_percent_mean": round(sum(cpu) / len(cpu), 1),
            "cpu_percent_p95": round(cpu[int(0.95 * (len(cpu) - 1))], 1),
            "rss_mb_start": round(samples[0][2], 1), "rss_mb_end": round(samples[-1][2], 1),
            "rss_slope_mb_per_hour_second_half": round(slope_mb_per_hour(samples), 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--json", help="also write the result here")
    add_baseline_priority(p)
    args = p.parse_args()
    result: dict[str, Any] = {"benchmark": "load", "machine": machine(),
                              "minutes": args.minutes,
                              "baseline_rt_priority": args.baseline_rt_priority}
    with tempfile.TemporaryDirectory(prefix="bench-load-") as t:
        tmp = Path(t)
        log = (tmp / "sim.log").open("w")
        sim = start_simulators(ROOM, ["--beam-gate-port", "0", "--imaging-link",
                                      str(tmp / "xic"), "--backdoor-port", "0",
                                      "--dose-rate", "0.001"], stderr=log)
        try:
            config = room_config(tmp, sim.ready, planned_dose_mu=9000,
                                 imaging_budget_mas=90000)
            bg = sim.ready["beam_gate"]
            base = LineProcess.start(scheduled(
                [PY, str(Path(__file__).with_name("naive_baseline.py")), bg["host"],
                 str(bg["port"])], args.baseline_rt_priority), tmp)
            base.wait_for("ready")
            base.send("open")
            result["baseline"] = summary(sample(base.proc.pid, max(10.0, 6 * args.minutes)))
            base.send("quit")
            base.stop()
            ctl = LineProcess.start([PY, "-m", "syncctl", "run", "--config", str(config),
                                     "--record", str(tmp / "load.fraction.jsonl.gz")], tmp)
            ctl.wait_for("OFFLINE -> SAFE")
            ctl.send("ack", "reset")
            for _ in range(200):
                ctl.send("select lung-01")
                if "SETUP" in ctl.wait_for("SAFE -> SETUP", "select_plan refused"):
                    break
                time.sleep(0.05)
            ctl.send("imaging on")
            for _ in range(400):
                ctl.send("arm")
                if "READY" in ctl.wait_for("SETUP -> READY", "arm refused"):
                    break
                time.sleep(0.05)
            ctl.send("beam on")
            ctl.wait_for("READY -> TREATING")
            samples = sample(ctl.proc.pid, 60 * args.minutes)
            ctl.send("status")
            still = ctl.wait_for("mode ")
            result["syncctl"] = {**summary(samples), "mode_at_end": still.split()[1]}
            ctl.stop()
        finally:
            sim.stop()
            log.close()
    result["ratio_cpu_syncctl_to_baseline"] = round(
        result["syncctl"]["cpu_percent_mean"] / max(0.1, result["baseline"]["cpu_percent_mean"]),
        2)
    result["targets"] = {"cpu_percent_of_one_core": 20.0, "rss_slope_mb_per_hour": "about 0"}
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
