"""`syncctl commission` as an engineer runs it: against the simulators (started here on free
ports and a private pty), a rehearsal end to end, a simulator whose watchdog is slowed (the
tool must report it FAILED with the measured time), prompts answered through a pipe, and the
usage errors."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncctl.cli.simproc import start_simulators
from syncctl.config import config_hash, load_room

ROOT = Path(__file__).resolve().parents[2]
ROOM = ROOT / "configs" / "room-sim.yaml"
ALL_STEPS = ["connect", "identity", "registers", "settings", "door", "estop", "watchdog",
             "gate_latency", "imaging"]


@dataclass
class SimRoom:
    config: Path
    clinical: Path
    backdoor: str
    beam_gate_port: int


def room_text(beam_gate_port: int, link: str) -> str:
    room = load_room(ROOM).room
    text = ROOM.read_text(encoding="utf-8")
    text = text.replace("port: 15020", f"port: {beam_gate_port}")
    text = text.replace(room.devices.imaging.transport.port, link)  # type: ignore[union-attr]
    return text.replace("registers/", str(ROOT / "configs" / "registers") + "/")


WIDER_LIMITS = {"gate_actuation_timeout_ms: 20": "gate_actuation_timeout_ms: 60",
                "device_watchdog_timeout_ms: 200": "device_watchdog_timeout_ms: 400"}
"""For the rehearsal that must pass on a loaded, shared CI machine: the figures it judges
against the room's limits get three times (gate) and twice (watchdog: +-80 ms) the room's
margins. The rules themselves are unit-tested; docs/commissioning.md shows a run with the
shipped limits."""


@contextlib.contextmanager
def sim_room(tmp_path: Path, *extra: str, edits: dict[str, str] | None = None
             ) -> Iterator[SimRoom]:
    """The simulators on free ports, and room files pointing at them (with ``edits``, text
    replacements, applied); stopped at the end (the test fails if they do not exit 0 or leave
    their pty link)."""
    link = tmp_path / "xic"
    with (tmp_path / "sim.log").open("w") as log:
        sim = start_simulators(ROOM, ["--beam-gate-port", "0", "--imaging-link", str(link),
                                      "--backdoor-port", "0", *extra], stderr=log)
        try:
            text = room_text(sim.ready["beam_gate"]["port"], sim.ready["imaging"]["port"])
            for old, new in (edits or {}).items():
                assert old in text
                text = text.replace(old, new)
            config = tmp_path / "room.yaml"
            config.write_text(text, encoding="utf-8")
            clinical = tmp_path / "clinical.yaml"
            clinical.write_text(text.replace("clinical_mode: false", "clinical_mode: true"),
                                encoding="utf-8")
            door = sim.ready["backdoor"]["beam_gate"]
            yield SimRoom(config, clinical, f"{door['host']}:{door['port']}",
                          sim.ready["beam_gate"]["port"])
        finally:
            code = sim.stop()
    assert code == 0, (tmp_path / "sim.log").read_text()
    assert not link.exists()


def syncctl(*args: str, stdin: str = "", timeout_s: float = 180
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "syncctl", *args], input=stdin,
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout_s,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"), check=False)


def the_report(directory: Path, config: Path) -> dict[str, Any]:
    digest = config_hash(load_room(config))
    found = sorted(directory.glob(f"commission-sim-1-{digest}-*.json"))
    assert len(found) == 1, list(directory.iterdir())
    assert found[0].with_suffix(".html").is_file()
    report: dict[str, Any] = json.loads(found[0].read_text(encoding="utf-8"))
    assert report["config_hash"] == digest
    return report


def steps_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["step"]: s for s in report["steps"]}


def test_a_rehearsal_passes_end_to_end(tmp_path: Path) -> None:
    with sim_room(tmp_path, edits=WIDER_LIMITS) as room:
        run = syncctl("commission", "--config", str(room.config), "--engineer", "A. Tester",
                      "--report", str(tmp_path / "report"), "--rehearse",
                      "--backdoor", room.backdoor, "--gate-cycles", "10",
                      "--imaging-seconds", "1.5")
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "result: PASSED" in run.stdout
    assert "Traceback" not in output
    assert "rehearsal: the tool does this itself" in run.stdout
    report = the_report(tmp_path / "report", room.config)
    assert report["engineer"] == "A. Tester"
    assert report["mode"] == "rehearsal (simulators)"
    assert report["software_version"].startswith("syncctl ")
    assert report["started_utc"].endswith("Z") and report["finished_utc"].endswith("Z")
    assert any("REHEARSAL" in note for note in report["notes"])
    steps = steps_of(report)
    assert list(steps) == ALL_STEPS
    for name, step in steps.items():
        assert step["status"] == "passed", (name, step)
        assert step["figures"], name
        assert step["checks"], name
    connect = steps["connect"]["figures"]
    assert connect["beam_gate"]["transport"].startswith("modbus-tcp 127.0.0.1:")
    assert connect["imaging"]["transport"].startswith("modbus-rtu ")
    identity = steps["identity"]["figures"]
    assert identity["beam_gate"]["identity"] == "0x4247"
    assert identity["imaging"]["identity"] == "0x5849"
    registers = steps["registers"]["figures"]
    assert registers["beam_gate"]["registers"] == 13 and registers["imaging"]["registers"] == 22
    assert registers["beam_gate"]["failed"] == registers["imaging"]["failed"] == 0
    watchdog = steps["watchdog"]["figures"]
    for slot in ("beam_gate", "imaging"):
        assert watchdog[slot]["actuator_active"] is True
        assert abs(watchdog[slot]["measured_ms"] - 400) <= 80
    latency = steps["gate_latency"]["figures"]
    assert latency["open_ms"]["count"] == latency["close_ms"]["count"] == 10
    preset = {c["name"]: c for c in steps["gate_latency"]["checks"]}["dose preset read back"]
    assert preset["status"] == "passed" and preset["measured"] <= 500
    assert latency["close_ms"]["max"] <= 60
    imaging = steps["imaging"]["figures"]
    assert abs(imaging["frame_rate_device_fps"] - 30) <= 0.6
    assert imaging["missed_in_a_row"] <= 1
    html = next((tmp_path / "report").glob("*.html")).read_text(encoding="utf-8")
    assert "A. Tester" in html and "gate_latency" in html and "REHEARSAL" in html


def test_a_slowed_watchdog_is_reported_failed_with_its_time(tmp_path: Path) -> None:
    with sim_room(tmp_path, "--beam-gate-watchdog-scale", "2.0") as room:
        run = syncctl("commission", "--config", str(room.config), "--engineer", "A. Tester",
                      "--report", str(tmp_path / "report"), "--rehearse",
                      "--backdoor", room.backdoor, "--steps", "watchdog")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "result: FAILED" in run.stdout
    assert "FAILED beam-gate watchdog fails safe" in run.stdout
    report = the_report(tmp_path / "report", room.config)
    assert report["result"] == "FAILED"
    steps = steps_of(report)
    assert steps["watchdog"]["status"] == "failed"
    checks = {c["name"]: c for c in steps["watchdog"]["checks"]}
    slow = checks["beam-gate watchdog fails safe"]
    assert slow["status"] == "failed"
    assert 340 <= slow["measured"] <= 600  # 2 x 200 ms, measured
    assert "late" in slow["detail"]
    assert checks["xray-imaging watchdog fails safe"]["status"] == "passed"
    assert steps["identity"]["status"] == "skipped"
    assert steps["identity"]["skip_reason"] == "not selected (--steps)"


def test_prompts_answered_through_a_pipe(tmp_path: Path) -> None:
    """On hardware (no --rehearse) the engineer answers on stdin: a confirmation with --yes,
    a person step skipped with a reason; a skip without a reason is refused."""
    with sim_room(tmp_path) as room:
        skipped = syncctl("commission", "--config", str(room.config), "--engineer", "B",
                          "--report", str(tmp_path / "r1"), "--steps", "door,gate_latency",
                          "--yes", "--gate-cycles", "3",
                          stdin="skip door switch not wired on this bench\n")
        refused = syncctl("commission", "--config", str(room.config), "--engineer", "B",
                          "--report", str(tmp_path / "r2"), "--steps", "estop,gate_latency",
                          "--person-timeout", "1",
                          stdin="n\nno beam stop on the bench\nskip\n")
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert "[y/N] y (--yes)" in skipped.stdout
    assert ">>> Open the treatment-room door." in skipped.stdout
    steps = steps_of(the_report(tmp_path / "r1", room.config))
    assert steps["door"]["status"] == "skipped"
    assert steps["door"]["skip_reason"] == ("skipped by the engineer: door switch not wired "
                                            "on this bench")
    assert steps["gate_latency"]["status"] == "passed"
    assert steps["gate_latency"]["figures"]["open_ms"]["count"] == 3

    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "a reason is required" in refused.stdout
    steps = steps_of(the_report(tmp_path / "r2", room.config))
    assert steps["estop"]["status"] == "failed"
    assert "gate not opened (not confirmed): chain bits only" in steps["estop"]["notes"]
    assert steps["gate_latency"]["status"] == "skipped"
    assert steps["gate_latency"]["skip_reason"] == "not confirmed: no beam stop on the bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    no_engineer = syncctl("commission", "--config", str(ROOM))
    assert no_engineer.returncode == 2 and "--engineer" in no_engineer.stderr
    blank = syncctl("commission", "--config", str(ROOM), "--engineer", " ")
    assert blank.returncode == 2
    bad_step = syncctl("commission", "--config", str(ROOM), "--engineer", "A",
                       "--steps", "connect,warp")
    assert bad_step.returncode == 2 and "warp" in bad_step.stderr
    clinical = tmp_path / "clinical.yaml"
    clinical.write_text(room_text(15020, "/tmp/nowhere-xic").replace(
        "clinical_mode: false", "clinical_mode: true"), encoding="utf-8")
    refused = syncctl("commission", "--config", str(clinical), "--engineer", "A")
    assert refused.returncode == 2 and "clinical_mode" in refused.stderr
    no_sim = syncctl("commission", "--config", str(ROOM), "--engineer", "A", "--rehearse",
                     "--backdoor", f"127.0.0.1:{free_port()}", "--report", str(tmp_path))
    assert no_sim.returncode == 2 and "backdoor" in no_sim.stderr
    assert not list(tmp_path.glob("commission-*"))
