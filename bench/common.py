"""What the benchmarks share: the machine they ran on, simulators, a controller process,
CPU and memory of a process from /proc, truth rows, percentiles and JSON output.

Every benchmark runs against the simulators (``python -m firmware_sim``) over real loopback
transports, and runs its baseline in the same run, so that a figure taken on a shared,
noisy machine is always read next to the baseline's figure from the same minutes.
"""

from __future__ import annotations

import json
import math
import os
import platform
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ROOM = ROOT / "configs" / "room-sim.yaml"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def machine() -> dict[str, Any]:
    """The machine, Python and package versions, for every figure's context."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    packages = {}
    for name in ("syncctl", "pymodbus", "pyserial", "aiomqtt", "pydantic"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": packages,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


@dataclass(frozen=True)
class Stats:
    count: int
    p50: float
    p90: float
    p99: float
    max: float
    mean: float

    def as_dict(self, digits: int = 3) -> dict[str, float | int]:
        return {k: (round(v, digits) if isinstance(v, float) else v)
                for k, v in self.__dict__.items()}


def stats(values: list[float]) -> Stats:
    if not values:
        return Stats(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    v = sorted(values)

    def q(p: float) -> float:
        return v[max(0, math.ceil(p * len(v)) - 1)]

    return Stats(len(v), q(0.5), q(0.9), q(0.99), v[-1], sum(v) / len(v))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


@dataclass
class CpuMeter:
    """CPU share of one core used by a process between start() and stop()."""

    pid: int
    t0: float = 0.0
    c0: float = 0.0

    def start(self) -> None:
        self.t0, self.c0 = time.monotonic(), cpu_seconds(self.pid)

    def percent(self) -> float:
        return 100 * (cpu_seconds(self.pid) - self.c0) / max(1e-9, time.monotonic() - self.t0)


def write_static_trace(path: Path, position: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Path:
    """A motion trace that holds the target still (inside the window)."""
    x, y, z = position
    path.write_text(f"t_s,x_mm,y_mm,z_mm\n0,{x},{y},{z}\n10,{x},{y},{z}\n")
    return path


def room_config(tmp: Path, sim_ready: dict[str, Any], **plan: float) -> Path:
    """room-sim.yaml pointed at the running simulators; ``plan`` may override the first
    plan's dose (``planned_dose_mu``) and the imaging budget (``imaging_budget_mas``)."""
    text = ROOM.read_text()
    text = text.replace("port: 15020", f"port: {sim_ready['beam_gate']['port']}")
    text = text.replace("/tmp/syncctl-sim-1-xic", sim_ready["imaging"]["port"])
    text = text.replace("registers/", str(ROOT / "configs" / "registers") + "/")
    if "planned_dose_mu" in plan:
        text = text.replace("planned_dose_mu: 10,", f"planned_dose_mu: {plan['planned_dose_mu']},",
                            1)
    if "imaging_budget_mas" in plan:
        text = text.replace("imaging_budget_mas: 400",
                            f"imaging_budget_mas: {plan['imaging_budget_mas']}", 1)
    path = tmp / "room.yaml"
    path.write_text(text)
    return path


@dataclass
class LineProcess:
    """A child process driven on stdin and read line by line on stdout."""

    proc: subprocess.Popen[str]
    seen: list[str] = field(default_factory=list)
    pending: bytes = b""

    @classmethod
    def start(cls, args: list[str], cwd: Path) -> LineProcess:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=cwd,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        return cls(proc)

    def send(self, *lines: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("".join(f"{line}\n" for line in lines))
        self.proc.stdin.flush()

    def wait_for(self, *texts: str, timeout_s: float = 10.0) -> str:
        """The next line containing one of ``texts``. Reads the raw descriptor: select() and
        readline() together lose lines that arrive in one chunk."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            while b"\n" in self.pending:
                raw, _, self.pending = self.pending.partition(b"\n")
                line = raw.decode("utf-8", errors="replace") + "\n"
                self.seen.append(line)
                del self.seen[:-200]
                if any(t in line for t in texts):
                    return line
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk and self.proc.poll() is not None:
                    break
                self.pending += chunk
        raise TimeoutError(f"{texts!r} not seen within {timeout_s} s; last output:\n"
                           + "".join(self.seen[-20:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


def truth_rows(directory: Path, device: str = "beam-gate") -> list[dict[str, Any]]:
    rows = []
    path = directory / f"{device}.jsonl"
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def emit(result: dict[str, Any], json_path: str | None) -> None:
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n")


PY = sys.executable


BASELINE_RT_PRIORITY = 10
"""The baselines run under the same scheduling as ``syncctl run`` by default (SCHED_FIFO 10,
docs/controller.md), so that the ratio compares the software, not the scheduler;
``--baseline-rt-priority 0`` runs them as a user's script would run."""


def add_baseline_priority(p: Any) -> None:
    p.add_argument("--baseline-rt-priority", type=int, default=BASELINE_RT_PRIORITY,
                   metavar="N", help="SCHED_FIFO priority of the baseline process (default "
                   f"{BASELINE_RT_PRIORITY}, as syncctl run; 0: ordinary scheduling)")


def scheduled(cmd: list[str], priority: int) -> list[str]:
    """``cmd`` under SCHED_FIFO at ``priority`` (``chrt``), or as it is for 0."""
    return ["chrt", "-f", str(priority), *cmd] if priority > 0 else cmd

