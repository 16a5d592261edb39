"""`syncctl probe` against the simulators: reads by name and by address (TCP and RTU), and
the write rules: refused without --engineering, refused in a clinical room, refused on an
actuator without --force-actuator, refused while a controller is seen (heartbeat moving, gate
open; `syncctl commission` too), allowed in an engineering session, every attempt logged.
An mbpoll cross-check of one read where mbpoll is installed."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from tests.e2e.test_cli_commission import SimRoom, sim_room, syncctl


def probe(room: SimRoom, *args: str, config: Path | None = None
          ) -> subprocess.CompletedProcess[str]:
    return syncctl("probe", "--config", str(config or room.config), *args, timeout_s=60)


def test_read_by_name_and_by_address(tmp_path: Path) -> None:
    with sim_room(tmp_path) as room:
        by_name = probe(room, "beam-gate", "read", "identity")
        by_address = probe(room, "beam-gate", "read", "0", "--table", "input", "--count", "8")
        ambiguous = probe(room, "beam-gate", "read", "0")
        rtu = probe(room, "imaging", "read", "identity")
        scaled = probe(room, "imaging", "read", "ma")
        unknown = probe(room, "imaging", "read", "warp_factor")
    assert by_name.returncode == 0, by_name.stderr
    assert "input     0  16967  0x4247" in by_name.stdout
    assert "identity = 16967" in by_name.stdout
    assert by_address.returncode == 0, by_address.stderr
    assert "identity = 16967" in by_address.stdout
    assert "status = 0x" in by_address.stdout and "chain_ok" in by_address.stdout
    assert "heartbeat_echo = " in by_address.stdout
    assert ambiguous.returncode == 2 and "--table" in ambiguous.stderr
    assert rtu.returncode == 0, rtu.stderr
    assert "identity = 22601" in rtu.stdout and "modbus-rtu" in rtu.stdout
    assert scaled.returncode == 0 and "ma = 50 mA" in scaled.stdout
    assert "holding     5    500" in scaled.stdout  # raw 500 x 0.1 mA
    assert unknown.returncode == 2 and "neither a signal" in unknown.stderr


def test_write_rules(tmp_path: Path) -> None:
    log = tmp_path / "probe-log.jsonl"
    with sim_room(tmp_path) as room:
        def write(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
            return probe(room, "beam-gate", "write", *args, "--log", str(log), config=config)

        no_session = write("watchdog_timeout_ms", "300")
        clinical = write("watchdog_timeout_ms", "300", "--engineering", config=room.clinical)
        unchanged = probe(room, "beam-gate", "read", "watchdog_timeout_ms")
        allowed = write("watchdog_timeout_ms", "300", "--engineering")
        changed = probe(room, "beam-gate", "read", "watchdog_timeout_ms")
        actuator = write("gate_command", "1", "--engineering")
        raw_actuator = write("0", "1", "--table", "holding", "--engineering")
        forced = write("heartbeat", "7", "--engineering", "--force-actuator",
                       "bench wiring check")
        read_only = write("status", "1", "--engineering")
        scaled = probe(room, "imaging", "write", "ma", "50.5", "--engineering", "--log",
                       str(log))
    assert no_session.returncode == 3 and "--engineering" in no_session.stderr
    assert clinical.returncode == 3 and "clinical_mode" in clinical.stderr
    assert "watchdog_timeout_ms = 200 ms" in unchanged.stdout
    assert allowed.returncode == 0, allowed.stderr
    assert "reads back 300 ms" in allowed.stdout
    assert "watchdog_timeout_ms = 300 ms" in changed.stdout
    assert actuator.returncode == 3 and "--force-actuator" in actuator.stderr
    assert raw_actuator.returncode == 3 and "gate_command" in raw_actuator.stderr
    assert forced.returncode == 0, forced.stderr
    assert "forced actuator write heartbeat" in forced.stderr
    assert read_only.returncode == 2 and "read-only" in read_only.stderr
    assert scaled.returncode == 0 and "reads back 50.5 mA" in scaled.stdout
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["outcome"].split(":")[0] for e in entries] == [
        "refused", "refused", "written", "refused", "refused", "written", "error", "written"]
    assert entries[5]["force_actuator"] == "bench wiring check"
    assert entries[2]["check"][0].startswith("beam gate closed")
    assert all(e["user"] and e["config_hash"] for e in entries)


async def heartbeats(port: int, stop: asyncio.Event) -> int:
    """A controller's heartbeat on the beam gate (holding 1), every 20 ms, until ``stop``."""
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1.0)
    sent = 0
    try:
        assert await client.connect()
        for value in range(1, 500):
            await client.write_register(1, value, device_id=1)
            sent += 1
            try:
                await asyncio.wait_for(stop.wait(), 0.02)
                break
            except TimeoutError:
                pass
    finally:
        client.close()
    return sent


async def while_heartbeating(room: SimRoom, *args: str) -> tuple[int, str, int]:
    """Run `syncctl ARGS` while a controller's heartbeat is going to the beam gate."""
    stop = asyncio.Event()
    beating = asyncio.create_task(heartbeats(room.beam_gate_port, stop))
    await asyncio.sleep(0.1)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "syncctl", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        stop.set()
        sent = await beating
    assert proc.returncode is not None
    return proc.returncode, err.decode(), sent


async def open_the_gate(port: int) -> None:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1.0)
    try:
        assert await client.connect()
        await client.write_registers(2, [0, 1000], device_id=1)  # dose preset 10 MU
        await client.write_register(0, 1, device_id=1)  # gate_command open
    finally:
        client.close()


def test_writes_refused_while_a_controller_is_seen(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    with sim_room(tmp_path) as room:
        code, err, sent = asyncio.run(while_heartbeating(
            room, "probe", "--config", str(room.config), "beam-gate", "write",
            "watchdog_timeout_ms", "300", "--engineering", "--log", str(log)))
        commission, commission_err, _ = asyncio.run(while_heartbeating(
            room, "commission", "--config", str(room.config), "--engineer", "A",
            "--report", str(tmp_path / "report")))
        asyncio.run(open_the_gate(room.beam_gate_port))
        gate_open = probe(room, "beam-gate", "write", "watchdog_timeout_ms", "300",
                          "--engineering", "--log", str(log))
        still = probe(room, "beam-gate", "read", "watchdog_timeout_ms")
    assert sent >= 5
    assert code == 3 and "heartbeat echo changed" in err, err
    assert commission == 3 and "heartbeat echo changed" in commission_err, commission_err
    assert not (tmp_path / "report").exists()
    assert gate_open.returncode == 3, gate_open.stdout + gate_open.stderr
    assert "OPEN" in gate_open.stderr or "gate_command is 1" in gate_open.stderr
    assert "watchdog_timeout_ms = 200 ms" in still.stdout


@pytest.mark.skipif(shutil.which("mbpoll") is None, reason="mbpoll is not installed")
def test_a_read_agrees_with_mbpoll(tmp_path: Path) -> None:
    with sim_room(tmp_path) as room:
        ours = probe(room, "beam-gate", "read", "identity")
        theirs = subprocess.run(
            ["mbpoll", "-m", "tcp", "-a", "1", "-r", "1", "-c", "1", "-t", "3", "-1",
             "-p", str(room.beam_gate_port), "127.0.0.1"],
            capture_output=True, text=True, timeout=30, check=False)
    assert ours.returncode == 0 and theirs.returncode == 0, theirs.stderr
    assert "[1]: \t16967" in theirs.stdout
    assert "identity = 16967" in ours.stdout
