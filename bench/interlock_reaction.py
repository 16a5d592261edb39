"""Interlock reaction: an e-stop flipped at a random moment while the gate is open, to the
gate-close write arriving at the beam-gate simulator.

Both times are the simulator's (its ground truth: the backdoor write's ``fault`` row and the
``gate_command`` row of the close write), on the machine's monotonic clock. The controller
under test is ``syncctl run`` (1 kHz beam-gate poll over Modbus TCP, imaging at 30 fps over
Modbus RTU on a pty, recording off) against a target held still inside the window, so that
the gate opens again quickly after each sample. The baseline (``bench/naive_baseline.py``) is
the naive 1 kHz pymodbus loop. Both run in alternating blocks in the same run, against the
same simulators; CPU is each controller process's own (from /proc), over its blocks.

    python bench/interlock_reaction.py [--samples 2000] [--block 100] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pymodbus.client import ModbusTcpClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
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
    write_static_trace,
)

from syncctl.cli.simproc import start_simulators

BACKDOOR_UNIT, ESTOP, CLEAR = 100, 1, 15  # configs/registers/backdoor.yaml
GATE_READBACK = 2


class Room:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.baseline_priority = 0
        self.truth = tmp / "truth"
        self.log = (tmp / "sim.log").open("w")
        self.sim = start_simulators(ROOM, [
            "--beam-gate-port", "0", "--imaging-link", str(tmp / "xic"), "--backdoor-port",
            "0", "--truth", str(self.truth), "--trace", str(write_static_trace(tmp / "still.csv")),
            "--spill-on-s", "3600", "--spill-off-s", "0.1"], stderr=self.log)
        self.config = room_config(tmp, self.sim.ready, planned_dose_mu=9000,
                                  imaging_budget_mas=90000)
        bd, bg = self.sim.ready["backdoor"]["beam_gate"], self.sim.ready["beam_gate"]
        self.backdoor = ModbusTcpClient(bd["host"], port=int(bd["port"]), timeout=1)
        self.device = ModbusTcpClient(bg["host"], port=int(bg["port"]), timeout=1)
        self.backdoor.connect()
        self.device.connect()

    def estop(self) -> None:
        self.backdoor.write_register(ESTOP, 1, device_id=BACKDOOR_UNIT)

    def clear(self) -> None:
        self.backdoor.write_register(CLEAR, 1, device_id=BACKDOOR_UNIT)

    def wait_gate_open(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            r = self.device.read_input_registers(GATE_READBACK, count=1, device_id=1)
            if not r.isError() and r.registers[0] == 1:
                return
            time.sleep(0.002)
        raise TimeoutError("the gate did not open")

    def close(self) -> None:
        self.backdoor.close()
        self.device.close()
        self.sim.stop()
        self.log.close()


def baseline_block(room: Room, n: int, rng: random.Random) -> tuple[float, float, float]:
    bg = room.sim.ready["beam_gate"]
    child = LineProcess.start(scheduled([PY, str(Path(__file__).with_name("naive_baseline.py")),
                                         bg["host"], str(bg["port"])], room.baseline_priority),
                              room.tmp)
    try:
        child.wait_for("ready")
        meter = CpuMeter(child.proc.pid)
        meter.start()
        t0 = time.monotonic()
        for _ in range(n):
            child.send("reset", "open")
            room.wait_gate_open()
            time.sleep(rng.uniform(0.0, 0.02))
            room.estop()
            time.sleep(0.03)
            room.clear()
        return t0, time.monotonic(), meter.percent()
    finally:
        child.send("quit")
        child.stop()


def syncctl_block(room: Room, n: int, rng: random.Random) -> tuple[float, float, float]:
    child = LineProcess.start([PY, "-m", "syncctl", "run", "--config", str(room.config),
                               "--no-record"], room.tmp)
    try:
        child.wait_for("OFFLINE -> SAFE")
        child.send("ack", "reset")  # the watchdog fault the baseline left when it quit
        meter = CpuMeter(child.proc.pid)
        meter.start()
        t0 = time.monotonic()
        for _ in range(n):
            for _ in range(100):
                child.send("select lung-01")
                if "SETUP" in child.wait_for("SAFE -> SETUP", "select_plan refused"):
                    break
                time.sleep(0.02)
            child.send("imaging on")
            for _ in range(100):
                child.send("arm")
                if "READY" in child.wait_for("SETUP -> READY", "arm refused"):
                    break
                time.sleep(0.02)
            child.send("beam on")
            child.wait_for("READY -> TREATING")
            room.wait_gate_open()
            time.sleep(rng.uniform(0.0, 0.02))
            room.estop()
            child.wait_for("IL-005")
            room.clear()
            child.send("ack", "reset")
            child.wait_for("trip_cleared")
        return t0, time.monotonic(), meter.percent()
    finally:
        child.stop()


def reactions(truth: Path, windows: list[tuple[float, float]]) -> list[float]:
    """Seconds from each e-stop write to the next gate-close write, inside the windows."""
    rows = truth_rows(truth)
    faults = [r["t"] for r in rows if r.get("type") == "fault" and r.get("name") ==
              "estop_pressed" and r.get("value")]
    closes = [r["t_received"] for r in rows if r.get("type") == "gate_command"
              and r.get("value") == 0]
    out = []
    for t in faults:
        if not any(a <= t <= b for a, b in windows):
            continue
        after = [c for c in closes if t < c < t + 0.5]
        if after:
            out.append(after[0] - t)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=300, help="per controller (default 300)")
    p.add_argument("--block", type=int, default=100, help="samples per alternating block")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="also write the result here")
    add_baseline_priority(p)
    args = p.parse_args()
    rng = random.Random(args.seed)
    info = machine()
    info["baseline_rt_priority"] = args.baseline_rt_priority
    with tempfile.TemporaryDirectory(prefix="bench-reaction-") as tmp:
        room = Room(Path(tmp))
        room.baseline_priority = args.baseline_rt_priority
        windows: dict[str, list[tuple[float, float]]] = {"baseline": [], "syncctl": []}
        cpu: dict[str, list[tuple[float, float]]] = {"baseline": [], "syncctl": []}
        try:
            done = 0
            while done < args.samples:
                n = min(args.block, args.samples - done)
                for name, block in (("baseline", baseline_block), ("syncctl", syncctl_block)):
                    a, b, pct = block(room, n, rng)
                    windows[name].append((a, b))
                    cpu[name].append((b - a, pct))
                    print(f"{name}: {n} samples in {b - a:.1f} s, CPU {pct:.1f} %",
                          file=sys.stderr, flush=True)
                done += n
        finally:
            room.close()
        result: dict[str, Any] = {"benchmark": "interlock_reaction", "machine": info,
                                  "samples_requested": args.samples}
        for name, spans in windows.items():
            ms = [1000 * v for v in reactions(room.truth, spans)]
            wall = sum(w for w, _ in cpu[name])
            result[name] = {
                "reaction_ms": stats(ms).as_dict(),
                "cpu_percent_of_one_core": round(sum(w * c for w, c in cpu[name]) / wall, 1),
            }
    b, s = result["baseline"]["reaction_ms"], result["syncctl"]["reaction_ms"]
    result["ratio_syncctl_to_baseline"] = {
        k: round(s[k] / b[k], 2) if b.get(k) else None for k in ("p50", "p99", "max")}
    result["ratio_syncctl_to_baseline"]["cpu"] = round(
        result["syncctl"]["cpu_percent_of_one_core"]
        / max(0.1, result["baseline"]["cpu_percent_of_one_core"]), 2)
    result["targets"] = {"reaction_p99_ms": 1.0, "cpu_percent_of_one_core": 15.0}
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
