"""The baseline: the naive interlock loop a user would write with the same libraries.

A pymodbus client polls the beam-gate status every 1 ms with ``asyncio.sleep`` and writes the
gate-close register the moment it sees a fault bit (e-stop, door, chain, watchdog). It also
keeps the firmware watchdog fed (heartbeat every 20 ms). Commands on stdin: ``open`` (write
gate open), ``reset`` (write fault_reset), ``quit``. Prints ``ready`` once connected.

    python bench/naive_baseline.py HOST PORT
"""

from __future__ import annotations

import asyncio
import os
import sys

from pymodbus.client import AsyncModbusTcpClient

UNIT = 1
STATUS, GATE, HEARTBEAT, DOSE_PRESET, FAULT_RESET = 3, 0, 1, 2, 4  # beam-gate.yaml
PRESET_RAW = 900_000  # 9000 MU in 0.01 MU: the firmware opens the gate only below its preset
CHAIN_OK, DOOR_CLOSED, ESTOP_RELEASED, WATCHDOG = 1 << 2, 1 << 3, 1 << 4, 1 << 5


async def main(host: str, port: int) -> None:
    client = AsyncModbusTcpClient(host, port=port, timeout=1)
    await client.connect()
    await client.write_registers(DOSE_PRESET, [PRESET_RAW >> 16, PRESET_RAW & 0xFFFF],
                                 device_id=UNIT)
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()

    def on_input() -> None:
        data = os.read(sys.stdin.fileno(), 1024).decode()
        if not data:
            commands.put_nowait("quit")
        for line in data.splitlines():
            commands.put_nowait(line.strip())

    loop.add_reader(sys.stdin.fileno(), on_input)
    print("ready", flush=True)
    beat = 0
    last_beat = loop.time()
    gate_open = False
    while True:
        while not commands.empty():
            cmd = commands.get_nowait()
            if cmd == "quit":
                client.close()
                return
            if cmd == "open":
                await client.write_register(GATE, 1, device_id=UNIT)
                gate_open = True
            elif cmd == "reset":
                await client.write_register(FAULT_RESET, 1, device_id=UNIT)
        response = await client.read_input_registers(STATUS, count=1, device_id=UNIT)
        if not response.isError():
            bits = response.registers[0]
            fault = (not bits & CHAIN_OK or not bits & DOOR_CLOSED or not bits & ESTOP_RELEASED
                     or bits & WATCHDOG)
            if fault and gate_open:
                await client.write_register(GATE, 0, device_id=UNIT)
                gate_open = False
        if loop.time() - last_beat >= 0.02:
            beat = (beat + 1) % 65536
            await client.write_register(HEARTBEAT, beat, device_id=UNIT)
            last_beat = loop.time()
        await asyncio.sleep(0.001)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
