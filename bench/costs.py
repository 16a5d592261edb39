"""Costs: what the pieces of a polling cycle cost in CPU on this machine, before any control
logic runs. It explains the CPU floor of a 1 kHz poll (docs/performance.md, "What limits the
CPU").

Measured in this process, each in blocks of ``--n`` iterations (median of ``--blocks``), as
CPU seconds of the process (user + system) per iteration:

- ``time.sleep(0.5 ms)``: one kernel timer wake-up, nothing else;
- ``asyncio.sleep(0.5 ms)`` on syncctl's event loop: a wake-up through the event loop;
- ``asyncio.sleep(0)``: the event loop's own turn, no kernel wait;
- a Modbus TCP read of the beam-gate status block (9 input registers) against the simulator
  on a raw blocking socket, split into the ``send()`` (on loopback the kernel delivers the
  bytes and wakes the simulator inside this call) and the wait for the answer plus ``recv()``;
- the same read through syncctl's Modbus client (``ModbusLink.read``) on its event loop.

The baseline is the raw socket read: the least any Python poller pays per transaction.

    python bench/costs.py [--n 2000] [--blocks 5] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOM, emit, machine, write_static_trace

from syncctl.cli.simproc import start_simulators
from syncctl.config.room import ModbusTcp
from syncctl.controller.loop import new_event_loop
from syncctl.devices.modbus import ModbusLink

PERIOD_S = 0.0005
STATUS_ADDRESS, STATUS_COUNT = 0, 9  # the beam-gate status block (configs/registers)


def per_iteration_us(block: Callable[[], None], n: int, blocks: int) -> float:
    """Median over ``blocks`` of the process CPU per iteration of ``block`` (which runs ``n``
    iterations), in microseconds."""
    values = []
    for _ in range(blocks):
        c0 = time.process_time()
        block()
        values.append(1e6 * (time.process_time() - c0) / n)
    return round(statistics.median(values), 1)


def raw_read(sock: socket.socket, tid: int, split: list[float]) -> None:
    request = struct.pack(">HHHBBHH", tid & 0xFFFF, 0, 6, 1, 4, STATUS_ADDRESS, STATUS_COUNT)
    c0 = time.process_time()
    sock.sendall(request)
    c1 = time.process_time()
    answer = b""
    for _ in range(100):  # an answer is 27 bytes; loopback delivers it in one piece
        answer += sock.recv(256)
        if len(answer) >= 27:
            break
    split[0] += c1 - c0
    split[1] += time.process_time() - c1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="iterations per block")
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()
    n, blocks = args.n, args.blocks
    result: dict[str, Any] = {"benchmark": "costs", "machine": machine(), "n": n,
                              "blocks": blocks, "cpu_us_per_iteration": {}}
    cost = result["cpu_us_per_iteration"]
    loop = new_event_loop()

    async def sleeps(delay: float) -> None:
        for _ in range(n):
            await asyncio.sleep(delay)

    def plain_sleeps() -> None:
        for _ in range(n):
            time.sleep(PERIOD_S)

    cost["time_sleep_0.5ms"] = per_iteration_us(plain_sleeps, n, blocks)
    cost["asyncio_sleep_0.5ms"] = per_iteration_us(
        lambda: loop.run_until_complete(sleeps(PERIOD_S)), n, blocks)
    cost["asyncio_sleep_0"] = per_iteration_us(
        lambda: loop.run_until_complete(sleeps(0.0)), n, blocks)

    with tempfile.TemporaryDirectory(prefix="bench-costs-") as t:
        tmp = Path(t)
        log = (tmp / "sim.log").open("w")
        sim = start_simulators(ROOM, [
            "--beam-gate-port", "0", "--imaging-link", str(tmp / "xic"), "--backdoor-port", "0",
            "--trace", str(write_static_trace(tmp / "still.csv"))], stderr=log)
        try:
            bg = sim.ready["beam_gate"]
            host, port = bg["host"], int(bg["port"])
            sock = socket.create_connection((host, port), timeout=1.0)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            split = [0.0, 0.0]
            tid = [0]

            def raw_block() -> None:
                for _ in range(n):
                    tid[0] += 1
                    raw_read(sock, tid[0], split)
                    time.sleep(PERIOD_S)

            total = per_iteration_us(raw_block, n, blocks)
            sock.close()
            cost["raw_read_with_sleep"] = total
            cost["raw_read_send"] = round(1e6 * split[0] / (n * blocks), 1)
            cost["raw_read_wait_and_recv"] = round(1e6 * split[1] / (n * blocks), 1)
            link = ModbusLink(ModbusTcp(kind="modbus-tcp", host=host, port=port, unit=1),
                              timeout_s=0.05)

            async def link_block() -> None:
                for _ in range(n):
                    await link.read("input", STATUS_ADDRESS, STATUS_COUNT)
                    await asyncio.sleep(PERIOD_S)

            if not loop.run_until_complete(link.connect()):
                raise SystemExit(f"cannot connect: {link.last_error}")
            cost["syncctl_read_with_asyncio_sleep"] = per_iteration_us(
                lambda: loop.run_until_complete(link_block()), n, blocks)
            loop.run_until_complete(link.close())
        finally:
            sim.stop()
            log.close()
            loop.close()

    # A thousand polls a second: microseconds per poll / 10 is the percentage of one core.
    result["raw_poll_1khz_percent_of_one_core"] = round(cost["raw_read_with_sleep"] / 10, 1)
    result["syncctl_poll_1khz_percent_of_one_core"] = round(
        cost["syncctl_read_with_asyncio_sleep"] / 10, 1)
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
