"""The simulators against a third-party Modbus master: mbpoll (libmodbus), as an engineer
would use it on the bench. Skipped only where mbpoll is not installed
(Debian: ``apt-get install mbpoll``).

mbpoll numbers registers from 1 (``-r 1`` is address 0) unless ``-0`` is given.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.integration.conftest import Sim

MBPOLL = shutil.which("mbpoll")
pytestmark = pytest.mark.skipif(MBPOLL is None, reason="mbpoll is not installed")

VALUE = re.compile(r"^\[(\d+)\]:\s+(-?\d+)", re.MULTILINE)
READY_BITS = 0b11101  # ready, chain_ok, door_closed, estop_released (spill_active varies)


def mbpoll(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert MBPOLL is not None
    done = subprocess.run([MBPOLL, *args], capture_output=True, text=True, timeout=15,
                          check=False)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def values(output: str) -> dict[int, int]:
    """mbpoll's ``[reference]: value`` lines -> {reference: value}."""
    return {int(ref): int(value) for ref, value in VALUE.findall(output)}


def tcp(port: int, unit: int) -> list[str]:
    return ["-m", "tcp", "-a", str(unit), "-p", str(port), "-t"]


@pytest.fixture
def ports(sim: Sim) -> Iterator[tuple[int, int]]:
    bgc, backdoor = sim.ready["beam_gate"]["port"], sim.ready["backdoor"]["beam_gate"]["port"]
    yield bgc, backdoor
    mbpoll(*tcp(backdoor, 100), "4", "-r", "16", "127.0.0.1", "1")  # clear_faults


def test_mbpoll_reads_the_bgc_status_block(ports: tuple[int, int]) -> None:
    bgc, _ = ports
    out = mbpoll(*tcp(bgc, 1), "3", "-r", "1", "-c", "8", "-1", "127.0.0.1").stdout
    regs = values(out)
    assert list(regs) == list(range(1, 9))
    assert regs[1] == 0x4247 and regs[2] == 102
    assert regs[4] & READY_BITS == READY_BITS and regs[7] == 0  # status, fault_code


def test_mbpoll_injects_a_fault_through_the_backdoor(ports: tuple[int, int]) -> None:
    bgc, backdoor = ports
    written = mbpoll(*tcp(backdoor, 100), "4", "-r", "1", "127.0.0.1", "1").stdout
    assert "Written 1 references" in written
    shown = values(mbpoll(*tcp(backdoor, 100), "4", "-r", "1", "-c", "16", "-1",
                          "127.0.0.1").stdout)
    assert shown[1] == 1  # door_open, as written
    status = values(mbpoll(*tcp(bgc, 1), "3", "-r", "4", "-1", "127.0.0.1").stdout)[4]
    assert status & 0b1101 == 0  # not ready, chain not ok, door not closed
    assert status & 0b10000  # the e-stop is still released
    mbpoll(*tcp(backdoor, 100), "4", "-r", "1", "127.0.0.1", "0")
    status = values(mbpoll(*tcp(bgc, 1), "3", "-r", "4", "-1", "127.0.0.1").stdout)[4]
    assert status & READY_BITS == READY_BITS


def test_mbpoll_sees_modbus_exceptions(ports: tuple[int, int]) -> None:
    bgc, backdoor = ports
    refused = mbpoll(*tcp(backdoor, 100), "4", "-r", "12", "127.0.0.1", "101", check=False)
    assert refused.returncode != 0 and "Illegal data value" in refused.stderr
    unmapped = mbpoll(*tcp(bgc, 1), "4", "-r", "11", "127.0.0.1", "1", check=False)
    assert unmapped.returncode != 0 and "Illegal data address" in unmapped.stderr


def test_mbpoll_reads_the_xic_over_rtu_on_the_pty(sim: Sim) -> None:
    out = mbpoll("-m", "rtu", "-a", str(sim.ready["imaging"]["unit"]), "-b", "115200",
                 "-P", "none", "-t", "3", "-r", "1", "-c", "3", "-1", str(sim.link)).stdout
    regs = values(out)
    assert regs[1] == 0x5849 and regs[2] == 102
