"""The beam-gate controller (BGC) client: status poll, gate command, heartbeat, dose preset.

One poll reads the status signals (with the shipped map: one read of input registers 2..9),
the dose preset the firmware holds among them (``dose_preset_readback``).
After every (re)connect the client reads ``identity``/``firmware_version`` and writes
``watchdog_timeout_ms`` (= ``limits.device_watchdog_timeout_ms``), then reads it back; only a
session whose settings read back equal counts as healthy.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from syncctl.config import RoomConfig
from syncctl.core.types import BeamGateReading, BeamGateStatus, GateCommand
from syncctl.devices.modbus import ModbusLink
from syncctl.devices.signals import RegisterBackend, SignalDevice, SignalValues

STATUS_SIGNALS = ("gate_readback", "status", "dose_delivered", "fault_code", "heartbeat_echo",
                  "dose_preset_readback")


def beam_gate_status(values: SignalValues) -> BeamGateStatus:
    """The BGC status from one read. Raises DeviceDataError for a malformed value (a flag
    other than 0/1, a word count that does not fit); bits the map does not name are ignored."""
    bits = values.bits("status")
    return BeamGateStatus(
        gate_open_readback=values.flag("gate_readback"),
        ready=bits["ready"],
        spill_active=bits["spill_active"],
        chain_ok=bits["chain_ok"],
        door_closed=bits["door_closed"],
        estop_released=bits["estop_released"],
        watchdog_tripped=bits["watchdog_tripped"],
        dose_delivered_mu=values.number("dose_delivered"),
        dose_preset_mu=values.number("dose_preset_readback"),
        fault_code=values.integer("fault_code"),
        heartbeat_echo=values.integer("heartbeat_echo"),
    )


class BeamGateClient(SignalDevice[BeamGateStatus]):
    """The BGC over its configured transport (or any ``RegisterBackend``)."""

    def __init__(
        self,
        config: RoomConfig,
        clock: Callable[[], float] = time.monotonic,
        *,
        backend: RegisterBackend | None = None,
    ) -> None:
        device = config.room.devices.beam_gate
        if backend is None:
            backend = ModbusLink(device.transport, timeout_s=device.timeout_ms / 1000,
                                 retries=device.retries, clock=clock)
        super().__init__(
            name="beam-gate",
            regmap=config.beam_gate_map,
            backend=backend,
            clock=clock,
            status_signals=STATUS_SIGNALS,
            settings={"watchdog_timeout_ms": config.room.limits.device_watchdog_timeout_ms},
            room=config.room.room.id,
        )

    def _decode_status(self, values: SignalValues) -> BeamGateStatus:
        return beam_gate_status(values)

    @property
    def reading(self) -> BeamGateReading:
        """The latest reading; never raises."""
        return BeamGateReading(status=self._status, read_at=self._read_at, healthy=self.healthy)

    async def poll(self) -> BeamGateReading:
        """Read the status block once, (re)connecting and re-verifying settings when needed.
        Remote failures never raise: they make the reading unhealthy (see ``last_error``)."""
        await self._poll()
        return self.reading

    async def write_gate(self, command: GateCommand) -> bool:
        """Write gate_command (1 open, 0 close) and read it back. OPEN needs a verified
        session; CLOSE goes out on any live connection."""
        opening = command is GateCommand.OPEN
        return await self._write(f"gate {command.value}", {"gate_command": 1 if opening else 0},
                                 verify=True, need_ready=opening)

    async def load_dose_preset(self, preset_mu: float) -> bool:
        """Write the absolute hardware dose limit (MU) and verify it by readback."""
        return await self._write("dose preset", {"dose_preset": preset_mu}, verify=True,
                                 need_ready=True)
