"""`syncctl run` as an engineer runs it against `syncctl sim`: commands on stdin, and a
SIGTERM that must end with the safe state confirmed by readback and exit 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from syncctl.cli.simproc import start_simulators
from syncctl.config import load_room
from tests.lines import LineReader

ROOT = Path(__file__).resolve().parents[2]


_READERS: dict[int, LineReader] = {}


def reader_of(proc: subprocess.Popen[str]) -> LineReader:
    if proc.pid not in _READERS:
        assert proc.stdout is not None
        _READERS[proc.pid] = LineReader(proc.stdout.fileno())
    return _READERS[proc.pid]


def wait_for(proc: subprocess.Popen[str], text: str, timeout_s: float, seen: list[str]) -> None:
    reader = reader_of(proc)
    line = reader.wait_for(lambda line: text in line, timeout_s)
    seen[:] = reader.lines
    if line is None:
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
            assert re.search(r"controller: \d+ cycles, core stepped in \d+ \([\d.]+ %\); "
                             r"\d+ imaging polls, \d+ cycles run at once for a new frame",
                             output), output
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
        reader = reader_of(proc)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=15)
        return reader.pending.decode() + out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
