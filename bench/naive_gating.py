"""The gating baseline: the naive loop a user would write with the same libraries.

Polls the imaging controller (Modbus RTU) every 4 ms with ``asyncio.sleep``; on each new frame
opens the gate when the tracked target is inside the box window with enough confidence, and
closes it otherwise (one frame decides: no confirmation, no other check). Feeds both
watchdogs. Prints ``ready`` once imaging is exposing. Stops on end of stdin.

    python bench/naive_gating.py BGC_HOST BGC_PORT XIC_SERIAL_PATH
"""

from __future__ import annotations

import asyncio
import os
import sys

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

BGC, XIC = 1, 2
GATE, BGC_HEARTBEAT, DOSE_PRESET, BGC_RESET = 0, 1, 2, 4  # configs/registers/beam-gate.yaml
PREPARE, EXPOSE, XIC_HEARTBEAT, XIC_RESET = 0, 1, 2, 7    # configs/registers/xray-imaging.yaml
HALF_MM, MIN_CONFIDENCE = 5.0, 0.6


def int32(hi: int, lo: int) -> int:
    v = (hi << 16) | lo
    return v - (1 << 32) if v >= 1 << 31 else v


async def main(host: str, port: int, serial: str) -> None:
    bgc = AsyncModbusTcpClient(host, port=port, timeout=1)
    xic = AsyncModbusSerialClient(serial, framer=FramerType.RTU, baudrate=115200, timeout=0.1)
    await bgc.connect()
    await xic.connect()
    await bgc.write_register(BGC_RESET, 1, device_id=BGC)
    await xic.write_register(XIC_RESET, 1, device_id=XIC)
    await bgc.write_registers(DOSE_PRESET, [900_000 >> 16, 900_000 & 0xFFFF], device_id=BGC)
    await xic.write_register(PREPARE, 1, device_id=XIC)
    await xic.write_register(EXPOSE, 1, device_id=XIC)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(sys.stdin.fileno(),
                    lambda: None if os.read(sys.stdin.fileno(), 1024) else done.set())
    print("ready", flush=True)
    last_counter, gate, beat, last_beat = -1, 0, 0, 0.0
    while not done.is_set():
        r = await xic.read_input_registers(0, count=20, device_id=XIC)
        if not r.isError():
            w = r.registers
            counter = (w[3] << 16) | w[4]
            if counter != last_counter:
                last_counter = counter
                x, y, z = (int32(w[i], w[i + 1]) / 100 for i in (9, 11, 13))
                inside = max(abs(x), abs(y), abs(z)) <= HALF_MM and w[15] / 1000 >= MIN_CONFIDENCE
                if int(inside) != gate:
                    gate = int(inside)
                    await bgc.write_register(GATE, gate, device_id=BGC)
        if loop.time() - last_beat >= 0.02:
            beat = (beat + 1) % 65536
            await bgc.write_register(BGC_HEARTBEAT, beat, device_id=BGC)
            await xic.write_register(XIC_HEARTBEAT, beat, device_id=XIC)
            last_beat = loop.time()
        await asyncio.sleep(0.004)
    await bgc.write_register(GATE, 0, device_id=BGC)
    await xic.write_register(EXPOSE, 0, device_id=XIC)
    bgc.close()
    xic.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
