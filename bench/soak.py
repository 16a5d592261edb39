"""Soak: a compressed treatment day. Many fractions back to back through one `syncctl run`
session, with random faults injected through the simulators' backdoor, watching the
controller process for leaks: open file descriptors, threads, resident memory.

Each fraction: (acknowledge and reset when needed), select the plan, image, arm, beam on;
with the given probability one random fault (terminations and interruptions, link cuts
included) at a random moment of the treatment, cleared half a second later; then wait for
COMPLETE or FAULT. The dose rate is raised (10 MU/s) so that a 10 MU fraction takes seconds.
At the end the session is stopped with SIGTERM and must confirm the safe state by readback.

    python bench/soak.py [--fractions 100] [--fault-probability 0.5] [--json OUT.json]

`tests/e2e/test_soak.py` runs a short day (a handful of fractions) in the suite.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pymodbus.client import ModbusTcpClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PY, ROOM, LineProcess, emit, machine, room_config, rss_mb

from syncctl.cli.faults import FAULTS
from syncctl.cli.simproc import start_simulators
from syncctl.config import encode
from syncctl.config.backdoor import load_backdoor_layout

SOAK_FAULTS = ("estop", "door", "chain", "tracking_loss", "marker_jump", "frozen_frames",
               "delayed_frames", "baseline_shift", "imaging_disconnect", "beam_gate_disconnect",
               "dropped_responses")
FRACTION_TIMEOUT_S = 60.0


def process_counts(pid: int) -> dict[str, float]:
    threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            threads = int(line.split()[1])
    return {"fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": threads,
            "rss_mb": round(rss_mb(pid), 1)}


class Backdoor:
    def __init__(self, ready: dict[str, Any]) -> None:
        self.layout = load_backdoor_layout()
        self.clients = {}
        for slot, where in ready["backdoor"].items():
            c = ModbusTcpClient(where["host"], port=int(where["port"]), timeout=1)
            c.connect()
            self.clients[slot] = c

    def write(self, slot: str, register: str, value: float) -> None:
        reg = self.layout.register(slot, register)
        words = encode(reg, value, self.layout.word_order)
        self.clients[slot].write_registers(reg.address, words, device_id=self.layout.unit)

    def clear(self) -> None:
        for slot in self.clients:
            self.write(slot, "clear_faults", 1)

    def close(self) -> None:
        for c in self.clients.values():
            c.close()


def to_treating(ctl: LineProcess) -> bool:
    """Bring the room to TREATING; False when it tripped on the way (a late device fault)."""
    for attempt in range(300):
        if attempt % 20 == 0:  # (again) after a trip, or a device fault that came later
            ctl.send("ack", "reset")
        ctl.send("select lung-01")
        if "SETUP" in ctl.wait_for("SAFE -> SETUP", "select_plan refused", timeout_s=15):
            break
        time.sleep(0.05)
    else:
        raise TimeoutError("select_plan refused for 15 s:\n" + "".join(ctl.seen[-8:]))
    ctl.send("imaging on")
    for _ in range(300):
        ctl.send("arm")
        line = ctl.wait_for("SETUP -> READY", "arm refused", "-> FAULT", timeout_s=15)
        if "READY" in line:
            break
        if "FAULT" in line:  # a device fault tripped the fraction before it was armed
            return False
        time.sleep(0.05)
    else:
        raise TimeoutError("arm refused for 15 s:\n" + "".join(ctl.seen[-8:]))
    for _ in range(100):
        ctl.send("beam on")
        line = ctl.wait_for("READY -> TREATING", "beam_on refused", "-> FAULT", timeout_s=15)
        if "TREATING" in line or "FAULT" in line:
            return "TREATING" in line
        time.sleep(0.05)
    raise TimeoutError("beam_on refused for 5 s:\n" + "".join(ctl.seen[-8:]))


def soak(fractions: int, fault_probability: float, seed: int, workdir: Path) -> dict[str, Any]:
    rng = random.Random(seed)
    log = (workdir / "sim.log").open("w")
    sim = start_simulators(ROOM, ["--beam-gate-port", "0", "--imaging-link",
                                  str(workdir / "xic"), "--backdoor-port", "0",
                                  "--dose-rate", "10", "--seed", str(seed)], stderr=log)
    backdoor = Backdoor(sim.ready)
    outcomes: dict[str, int] = {}
    faults: dict[str, int] = {}
    samples: list[dict[str, float]] = []
    result: dict[str, Any] = {}
    ctl = None
    try:
        config = room_config(workdir, sim.ready)
        ctl = LineProcess.start([PY, "-m", "syncctl", "run", "--config", str(config),
                                 "--record", str(workdir / "day.fraction.jsonl.gz")], workdir)
        ctl.wait_for("OFFLINE -> SAFE", timeout_s=30)
        t_day = time.monotonic()
        for i in range(fractions):
            injected = None
            if not to_treating(ctl):
                outcomes["tripped before treating"] = outcomes.get(
                    "tripped before treating", 0) + 1
                continue
            counts = process_counts(ctl.proc.pid)  # in TREATING: both links up and healthy
            if rng.random() < fault_probability:
                injected = rng.choice(SOAK_FAULTS)
                time.sleep(rng.uniform(0.1, 1.0))
                fault = FAULTS[injected]
                backdoor.write(fault.slot, fault.register, fault.value)
                time.sleep(0.5)
                backdoor.clear()
                faults[injected] = faults.get(injected, 0) + 1
            try:
                end = ctl.wait_for("TREATING -> COMPLETE", "-> FAULT", "HOLD -> FAULT",
                                   timeout_s=FRACTION_TIMEOUT_S)
            except TimeoutError:
                print(f"fraction {i + 1} STALLED (fault injected: {injected or 'none'}); the "
                      f"recording and the simulator log are in {workdir} with --keep",
                      file=sys.stderr, flush=True)
                raise
            outcome = "COMPLETE" if "COMPLETE" in end else "FAULT"
            trip = next((line.strip() for line in reversed(ctl.seen) if line.startswith("trip")),
                        "") if outcome == "FAULT" else ""
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            samples.append({"fraction": i + 1, "t_s": round(time.monotonic() - t_day, 1),
                            "fault": injected or "", "outcome": outcome, "trip": trip,
                            **counts})
            print(f"fraction {i + 1}: {outcome}{' after ' + injected if injected else ''}; "
                  f"{samples[-1]}", file=sys.stderr, flush=True)
        ctl.proc.terminate()
        ctl.wait_for("safe state confirmed", "SAFE STATE NOT CONFIRMED", timeout_s=15)
        result["safe_state_confirmed_at_end"] = "NOT" not in ctl.seen[-1]
        result["day_s"] = round(time.monotonic() - t_day, 1)
    finally:
        if ctl is not None:
            ctl.stop()
        backdoor.close()
        sim.stop()
        log.close()
    result.update({"fractions": fractions, "outcomes": outcomes, "faults": faults,
                   "samples": samples})
    if len(samples) >= 2:
        first, last = samples[0], samples[-1]
        half = samples[len(samples) // 2]
        result["growth"] = {
            "fds_first_to_last": last["fds"] - first["fds"],
            "threads_first_to_last": last["threads"] - first["threads"],
            "rss_mb_first_to_last": round(last["rss_mb"] - first["rss_mb"], 1),
            "rss_mb_second_half": round(last["rss_mb"] - half["rss_mb"], 1),
        }
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fractions", type=int, default=100)
    p.add_argument("--fault-probability", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="also write the result here")
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (the day's recording "
                   "and the simulator log), instead of a temporary directory")
    args = p.parse_args()
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        result = soak(args.fractions, args.fault_probability, args.seed, Path(args.keep))
    else:
        with tempfile.TemporaryDirectory(prefix="bench-soak-") as t:
            result = soak(args.fractions, args.fault_probability, args.seed, Path(t))
    emit({"benchmark": "soak", "machine": machine(), **result}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
