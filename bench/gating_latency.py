"""Gating latency at 30 fps: the target crossing the window boundary to the gate really
changing (end to end), and a frame becoming available to the gate command arriving
(synchronizer-added), both from the simulators' ground truth.

The target follows a square wave along z (0 mm inside, 8 mm outside a 5 mm window) with
random dwell times and 30 ms ramps, so the gate changes several times a second. The true
crossing times are computed from the trace itself (the simulator's truth header gives the
clock reading at which the trace's time 0 was). The controller under test is ``syncctl run``;
the baseline (``bench/naive_gating.py``) is a naive 4 ms imaging poll that switches the gate on
every frame. They run in alternating blocks against the same simulators.

    python bench/gating_latency.py [--seconds 120] [--block 30] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import itertools

from common import (
    PY,
    ROOM,
    CpuMeter,
    LineProcess,
    add_baseline_priority,
    emit,
    machine,
    room_config,
    scheduled,
    stats,
    truth_rows,
)

from syncctl.analysis.truth import sync_latencies
from syncctl.cli.simproc import start_simulators

INSIDE_MM, OUTSIDE_MM, EDGE_MM, RAMP_S = 0.0, 8.0, 5.0, 0.03
TRACE_S = 60.0


def square_wave(path: Path, rng: random.Random) -> list[tuple[float, bool]]:
    """Write the trace; return its true crossings (model time, entering?) over one loop."""
    rows = [(0.0, INSIDE_MM)]
    crossings = []
    t, inside = 0.0, True
    while t < TRACE_S - 1.0:
        t += rng.uniform(0.15, 0.45)
        start, end = (INSIDE_MM, OUTSIDE_MM) if inside else (OUTSIDE_MM, INSIDE_MM)
        rows.append((t, start))
        frac = abs(EDGE_MM - start) / abs(end - start)
        crossings.append((t + frac * RAMP_S, not inside))
        t += RAMP_S
        rows.append((t, end))
        inside = not inside
    rows.append((TRACE_S, rows[-1][1]))
    # Close the loop: the trace wraps from its end to its start.
    if rows[-1][1] != INSIDE_MM:
        rows[-1] = (TRACE_S - RAMP_S, OUTSIDE_MM)
        rows.append((TRACE_S, INSIDE_MM))
        crossings.append((TRACE_S - RAMP_S + (OUTSIDE_MM - EDGE_MM) / OUTSIDE_MM * RAMP_S, True))
    path.write_text("t_s,x_mm,y_mm,z_mm\n" + "".join(f"{a:.4f},0,0,{z}\n" for a, z in rows))
    return crossings


def end_to_end(truth: Path, crossings: list[tuple[float, bool]],
               windows: list[tuple[float, float]]) -> dict[str, list[float]]:
    header = json.loads((truth / "imaging.jsonl").read_text().splitlines()[0])
    origin = float(header["t_origin"])
    gate = [(r["t"], r["gate_open"]) for r in truth_rows(truth) if r.get("type") == "state"]
    changes = [(t, now) for (_, was), (t, now) in itertools.pairwise(gate)
               if now != was]
    out: dict[str, list[float]] = {"exit_ms": [], "entry_ms": []}
    first, last = gate[0][0], gate[-1][0]
    for loop in range(int((last - origin) // TRACE_S) + 1):
        for t_model, entering in crossings:
            t = origin + loop * TRACE_S + t_model
            if not (first <= t <= last) or not any(a + 0.5 <= t <= b for a, b in windows):
                continue
            after = [c for c, now in changes if c > t and now == entering and c - t < 0.5]
            before_next = [c for c, _ in crossings if c > t_model]
            if after and (not before_next or after[0] - t < min(before_next) - t_model):
                out["entry_ms" if entering else "exit_ms"].append(1000 * (after[0] - t))
    return out


def split_syncctl(tmp: Path, commands: list[tuple[float, int]],
                  frames: list[tuple[float, int]]) -> dict[str, list[float]]:
    """From the controller's own recordings: for each gate command the core changed on a new
    frame, (a) frame available at the imaging controller -> read by the controller (poll phase
    and the RTU transfer), (b) read -> decided (waiting for the next 1 kHz cycle), (c) decided
    -> the command received by the beam-gate controller (the write transaction)."""
    from syncctl.recording import read_recording

    available = {counter: t for t, counter in frames}
    out: dict[str, list[float]] = {"frame_to_read_ms": [], "read_to_decision_ms": [],
                                   "decision_to_received_ms": [], "read_to_received_ms": []}
    for path in sorted(tmp.glob("block*.fraction.jsonl.gz")):
        rec = read_recording(path)
        prev_gate = None
        for step in rec.steps:
            gate = step.out["gate"]
            xi = step.snapshot.imaging
            if (prev_gate is not None and gate != prev_gate and step.out["mode"] == "TREATING"
                    and xi.status is not None and xi.read_at is not None):
                value = 1 if gate == "open" else 0
                received = [t for t, v in commands if v == value and t >= step.now]
                t_frame = available.get(xi.status.frame_counter)
                if received and received[0] - step.now < 0.1 and t_frame is not None:
                    out["frame_to_read_ms"].append(1000 * (xi.read_at - t_frame))
                    out["read_to_decision_ms"].append(1000 * (step.now - xi.read_at))
                    out["decision_to_received_ms"].append(1000 * (received[0] - step.now))
                    out["read_to_received_ms"].append(1000 * (received[0] - xi.read_at))
            prev_gate = gate
    return out


def run_block(name: str, room: dict[str, Any], seconds: float) -> tuple[float, float, float]:
    sim, tmp = room["sim"], room["tmp"]
    if name == "baseline":
        bg = sim.ready["beam_gate"]
        child = LineProcess.start(scheduled(
            [PY, str(Path(__file__).with_name("naive_gating.py")), bg["host"], str(bg["port"]),
             sim.ready["imaging"]["port"]], room.get("baseline_priority", 0)), tmp)
        child.wait_for("ready")
    else:
        room["blocks"] = room.get("blocks", 0) + 1
        child = LineProcess.start([PY, "-m", "syncctl", "run", "--config", str(room["config"]),
                                   "--record", str(tmp / f"block{room['blocks']}"
                                                   ".fraction.jsonl.gz")], tmp)
        child.wait_for("OFFLINE -> SAFE")
        child.send("ack", "reset")
        for _ in range(200):
            child.send("select lung-01")
            if "SETUP" in child.wait_for("SAFE -> SETUP", "select_plan refused"):
                break
            time.sleep(0.02)
        child.send("imaging on")
        for _ in range(400):
            child.send("arm")
            if "READY" in child.wait_for("SETUP -> READY", "arm refused"):
                break
            time.sleep(0.02)
        child.send("beam on")
        child.wait_for("READY -> TREATING")
    meter = CpuMeter(child.proc.pid)
    meter.start()
    t0 = time.monotonic()
    time.sleep(seconds)
    t1, pct = time.monotonic(), meter.percent()
    if name == "baseline":
        assert child.proc.stdin is not None
        child.proc.stdin.close()
        child.proc.stdin = None
        child.proc.wait(10)
    child.stop()
    return t0, t1, pct


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=120.0, help="per controller (default 120)")
    p.add_argument("--block", type=float, default=30.0, help="seconds per alternating block")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="also write the result here")
    add_baseline_priority(p)
    args = p.parse_args()
    rng = random.Random(args.seed)
    info = machine()
    info["baseline_rt_priority"] = args.baseline_rt_priority
    with tempfile.TemporaryDirectory(prefix="bench-gating-") as t:
        tmp = Path(t)
        crossings = square_wave(tmp / "square.csv", rng)
        log = (tmp / "sim.log").open("w")
        sim = start_simulators(ROOM, [
            "--beam-gate-port", "0", "--imaging-link", str(tmp / "xic"), "--backdoor-port", "0",
            "--truth", str(tmp / "truth"), "--trace", str(tmp / "square.csv"),
            "--spill-on-s", "3600", "--spill-off-s", "0.1"], stderr=log)
        room = {"sim": sim, "tmp": tmp, "config": room_config(
            tmp, sim.ready, planned_dose_mu=9000, imaging_budget_mas=90000),
                "baseline_priority": args.baseline_rt_priority}
        windows: dict[str, list[tuple[float, float]]] = {"baseline": [], "syncctl": []}
        cpu: dict[str, list[tuple[float, float]]] = {"baseline": [], "syncctl": []}
        try:
            done = 0.0
            while done < args.seconds:
                n = min(args.block, args.seconds - done)
                for name in ("baseline", "syncctl"):
                    a, b, pct = run_block(name, room, n)
                    windows[name].append((a, b))
                    cpu[name].append((b - a, pct))
                    print(f"{name}: {n:.0f} s, CPU {pct:.1f} %", file=sys.stderr, flush=True)
                done += n
        finally:
            sim.stop()
            log.close()
        truth = tmp / "truth"
        frames = [r["t_available"] for r in truth_rows(truth, "imaging")
                  if r.get("type") == "frame"]
        commands = [r["t_received"] for r in truth_rows(truth) if r.get("type") ==
                    "gate_command"]
        result: dict[str, Any] = {"benchmark": "gating_latency", "machine": info,
                                  "seconds_per_controller": args.seconds}
        for name, spans in windows.items():
            e2e = end_to_end(truth, crossings, spans)
            sync: list[float] = []
            for a, b in spans:
                sync += [1000 * v for v in sync_latencies(frames, commands, a + 0.5, b, 0.07)]
            wall = sum(w for w, _ in cpu[name])
            result[name] = {
                "end_to_end_exit_ms": stats(e2e["exit_ms"]).as_dict(),
                "end_to_end_entry_ms": stats(e2e["entry_ms"]).as_dict(),
                "end_to_end_all_ms": stats(e2e["exit_ms"] + e2e["entry_ms"]).as_dict(),
                "synchronizer_added_ms": stats(sync).as_dict(),
                "cpu_percent_of_one_core": round(sum(w * c for w, c in cpu[name]) / wall, 1),
            }
        gate_cmds = [(r["t_received"], r["value"]) for r in truth_rows(truth)
                     if r.get("type") == "gate_command"]
        frame_ids = [(r["t_available"], r["counter"]) for r in truth_rows(truth, "imaging")
                     if r.get("type") == "frame"]
        result["syncctl"]["split_ms"] = {
            k: stats(v).as_dict() for k, v in split_syncctl(tmp, gate_cmds, frame_ids).items()}
    b, s = result["baseline"], result["syncctl"]
    result["ratio_syncctl_to_baseline"] = {
        key: round(s[key]["p99"] / b[key]["p99"], 2) if b[key]["p99"] else None
        for key in ("end_to_end_all_ms", "synchronizer_added_ms")}
    result["targets"] = {"end_to_end_p99_ms": 40.0, "synchronizer_added_p99_ms": 2.0}
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
