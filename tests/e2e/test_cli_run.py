"""`syncctl run` as an engineer runs it against `syncctl sim`: commands on stdin, and a
SIGTERM that must end with the safe state confirmed by readback and exit 0."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from syncctl.cli.simproc import start_simulators
from syncctl.config import load_room

ROOT = Path(__file__).resolve().parents[2]


def wait_for(proc: subprocess.Popen[str], text: str, timeout_s: float, seen: list[str]) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline()
            seen.append(line)
            if text in line:
                return
        if proc.poll() is not None:
            break
    pytest.fail(f"{text!r} not seen within {timeout_s} s; output: {''.join(seen)}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_ends_safe_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    with (tmp_path / "sim.log").open("w") as log:
        sim = start_simulators(ROOT / "configs" / "room-sim.yaml", [
            "--beam-gate-port", "0", "--imaging-link", str(tmp_path / "xic"),
            "--backdoor-port", "0"], stderr=log)
        try:
            room = load_room(ROOT / "configs" / "room-sim.yaml").room
            text = (ROOT / "configs" / "room-sim.yaml").read_text()
            text = text.replace("port: 15020", f"port: {sim.ready['beam_gate']['port']}")
            text = text.replace(room.devices.imaging.transport.port,  # type: ignore[union-attr]
                                sim.ready["imaging"]["port"])
            text = text.replace("registers/", str(ROOT / "configs" / "registers") + "/")
            config = tmp_path / "room.yaml"
            config.write_text(text)
            with subprocess.Popen(
                [sys.executable, "-m", "syncctl", "run", "--config", str(config),
                 "--record", str(tmp_path / "session.fraction.jsonl.gz")],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
            ) as proc:
                seen: list[str] = []
                out = run_session(proc, sig, seen)
            output = "".join(seen) + out
            assert proc.returncode == 0, output
            assert "safe state confirmed by readback" in output
            assert "Traceback" not in output
            assert f"to {tmp_path / 'session.fraction.jsonl.gz'}" in output
            replayed = subprocess.run(
                [sys.executable, "-m", "syncctl", "replay",
                 str(tmp_path / "session.fraction.jsonl.gz")],
                capture_output=True, text=True, timeout=120, check=False)
            assert replayed.returncode == 0, replayed.stdout + replayed.stderr
            assert "IDENTICAL" in replayed.stdout
        finally:
            assert sim.stop() == 0


def run_session(proc: subprocess.Popen[str], sig: signal.Signals, seen: list[str]) -> str:
    try:
        wait_for(proc, "OFFLINE -> SAFE", 15, seen)
        assert proc.stdin is not None
        proc.stdin.write("select lung-01\nimaging on\n")
        proc.stdin.flush()
        wait_for(proc, "SAFE -> SETUP", 5, seen)
        proc.stdin.write("status\n")
        proc.stdin.flush()
        wait_for(proc, "mode SETUP  plan lung-01", 5, seen)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=15)
        return out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
