"""Start the device simulators as a separate process and wait until they listen.

syncctl never imports firmware_sim: it runs ``python -m firmware_sim`` and reads the one JSON
line the simulators print on stdout once every server listens.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SIM_RT_PRIORITY = 20
"""The simulators' own default SCHED_FIFO priority (``python -m firmware_sim --rt-priority``),
above the controller's (docs/controller.md)."""


class SimulatorError(RuntimeError):
    pass


@dataclass
class SimProcess:
    process: subprocess.Popen[str]
    ready: dict[str, Any]

    def stop(self, timeout_s: float = 5.0) -> int:
        """SIGTERM, wait, then SIGKILL if needed. Returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        return self.process.returncode


def start_simulators(
    config: Path,
    extra_args: Sequence[str] = (),
    ready_timeout_s: float = 20.0,
    stderr: Any = subprocess.PIPE,
) -> SimProcess:
    """Run the simulators for ``config``; return once they print their ready line."""
    cmd = [sys.executable, "-m", "firmware_sim", "--config", str(config), *extra_args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read() if stderr == subprocess.PIPE and proc.stderr else ""
            raise SimulatorError(f"simulators exited with {proc.returncode}: {err.strip()}")
        readable, _, _ = select.select([proc.stdout], [], [], 0.1)
        if not readable:
            continue
        line = proc.stdout.readline()
        if not line:
            continue
        try:
            ready = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(ready, dict) and ready.get("ready"):
            return SimProcess(proc, ready)
    SimProcess(proc, {}).stop()
    raise SimulatorError(f"simulators did not report ready within {ready_timeout_s:.0f} s")
