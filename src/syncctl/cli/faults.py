"""Named faults for `syncctl demo --inject` and `syncctl sim inject`, written to the
simulators' backdoor through its documented register layout."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from pymodbus.client import AsyncModbusTcpClient

from syncctl.config import encode
from syncctl.config.backdoor import BackdoorLayout


@dataclass(frozen=True)
class Fault:
    slot: str
    register: str
    value: float
    what: str


FAULTS: dict[str, Fault] = {
    "door": Fault("beam_gate", "door_open", 1, "treatment-room door opens"),
    "estop": Fault("beam_gate", "estop_pressed", 1, "emergency stop pressed"),
    "chain": Fault("beam_gate", "chain_broken", 1, "interlock chain opens"),
    "stuck_gate": Fault("beam_gate", "stuck_gate", 1, "gate sticks open"),
    "slow_gate": Fault("beam_gate", "slow_gate_factor", 20, "gate actuates 20x slower"),
    "response_delay": Fault("beam_gate", "response_delay_ms", 150,
                            "beam-gate answers 150 ms late"),
    "dropped_responses": Fault("beam_gate", "drop_percent", 100,
                               "beam-gate stops answering"),
    "beam_gate_corrupt": Fault("beam_gate", "corrupt_percent", 100,
                               "every beam-gate response damaged"),
    "beam_gate_disconnect": Fault("beam_gate", "disconnect", 1, "beam-gate link down"),
    "beam_gate_reboot": Fault("beam_gate", "reboot", 1, "beam-gate controller reboots"),
    "tracking_loss": Fault("imaging", "tracking_loss", 1, "tracker loses the target"),
    "frozen_frames": Fault("imaging", "frozen_frames", 1, "frame counter freezes"),
    "delayed_frames": Fault("imaging", "frame_delay_ms", 150, "frames arrive 150 ms late"),
    "marker_jump": Fault("imaging", "marker_jump_z", 12.0, "tracker jumps 12 mm (wrong marker)"),
    "baseline_shift": Fault("imaging", "baseline_shift_z", 8.0, "target baseline shifts 8 mm"),
    "imaging_corrupt": Fault("imaging", "corrupt_percent", 100,
                             "every imaging response has a bad CRC"),
    "imaging_disconnect": Fault("imaging", "disconnect", 1, "imaging link down"),
    "imaging_reboot": Fault("imaging", "reboot", 1, "imaging controller reboots"),
}


def parse_fault(text: str) -> Fault:
    """A named fault (`estop`) or a backdoor register (`imaging.frame_delay_ms=80`)."""
    if text in FAULTS:
        return FAULTS[text]
    target, sep, value = text.partition("=")
    slot, dot, register = target.partition(".")
    if sep and dot and slot and register:
        try:
            return Fault(slot, register, float(value), f"{slot}.{register} = {value}")
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(
        f"unknown fault {text!r}: use one of {', '.join(FAULTS)} or SLOT.REGISTER=VALUE"
    )


async def inject(layout: BackdoorLayout, host: str, port: int, fault: Fault,
                 timeout_s: float = 2.0) -> None:
    """Write one fault to the backdoor; raises on failure (a bad injection is our error)."""
    reg = layout.register(fault.slot, fault.register)
    words = encode(reg, fault.value, layout.word_order)
    client = AsyncModbusTcpClient(host, port=port, timeout=timeout_s, retries=1)
    try:
        if not await client.connect():
            raise ConnectionError(f"backdoor {host}:{port} does not answer")
        response = await client.write_registers(reg.address, words, device_id=layout.unit)
        if response.isError():
            raise ValueError(f"backdoor refused {fault.slot}.{fault.register}={fault.value}: "
                             f"{response}")
    finally:
        client.close()
