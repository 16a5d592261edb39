"""The X-ray imaging controller (XIC) client: status poll, X-ray command, heartbeat.

One poll reads the status signals (with the shipped map: one read of input registers 2..19).
After every (re)connect the client reads ``identity``/``firmware_version``, writes the imaging
settings (``frame_rate_fps``, ``kv``, ``ma``, ``pulse_width_ms`` from the room file and
``watchdog_timeout_ms`` from its limits) and reads them back; only a session whose settings
read back equal counts as healthy.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from syncctl.config import RoomConfig
from syncctl.core.types import ImagingReading, ImagingStatus, Position, XrayCommand
from syncctl.devices.modbus import ModbusLink
from syncctl.devices.signals import RegisterBackend, SignalDevice, SignalValues

STATUS_SIGNALS = (
    "status", "frame_counter", "frame_timestamp_ms", "device_clock_ms", "target_x", "target_y",
    "target_z", "tracking_confidence", "cumulative_mas", "fault_code", "heartbeat_echo",
)


def imaging_status(values: SignalValues) -> ImagingStatus:
    """The XIC status from one read. Raises DeviceDataError for a malformed value. Values that
    decode but make no sense (a confidence above 1, a frame stamped in the future) are passed
    on: judging them is the core's business (it names them, rule IL-004)."""
    bits = values.bits("status")
    return ImagingStatus(
        prepared=bits["prepared"],
        exposing=bits["exposing"],
        frame_counter=values.integer("frame_counter"),
        frame_timestamp_ms=values.integer("frame_timestamp_ms"),
        device_clock_ms=values.integer("device_clock_ms"),
        target=Position(values.number("target_x"), values.number("target_y"),
                        values.number("target_z")),
        tracking_confidence=values.number("tracking_confidence"),
        cumulative_mas=values.number("cumulative_mas"),
        fault_code=values.integer("fault_code"),
        heartbeat_echo=values.integer("heartbeat_echo"),
    )


class ImagingClient(SignalDevice[ImagingStatus]):
    """The XIC over its configured transport (or any ``RegisterBackend``)."""

    def __init__(
        self,
        config: RoomConfig,
        clock: Callable[[], float] = time.monotonic,
        *,
        backend: RegisterBackend | None = None,
    ) -> None:
        device = config.room.devices.imaging
        if backend is None:
            backend = ModbusLink(device.transport, timeout_s=device.timeout_ms / 1000,
                                 retries=device.retries, clock=clock)
        super().__init__(
            name="xray-imaging",
            regmap=config.imaging_map,
            backend=backend,
            clock=clock,
            status_signals=STATUS_SIGNALS,
            settings={
                "frame_rate_fps": device.frame_rate_fps,
                "kv": device.kv,
                "ma": device.ma,
                "pulse_width_ms": device.pulse_width_ms,
                "watchdog_timeout_ms": config.room.limits.device_watchdog_timeout_ms,
            },
            room=config.room.room.id,
        )

    def _decode_status(self, values: SignalValues) -> ImagingStatus:
        return imaging_status(values)

    @property
    def reading(self) -> ImagingReading:
        """The latest reading; never raises."""
        return ImagingReading(status=self._status, read_at=self._read_at, healthy=self.healthy)

    async def poll(self) -> ImagingReading:
        """Read the status block once, (re)connecting and re-verifying settings when needed.
        Remote failures never raise: they make the reading unhealthy (see ``last_error``)."""
        await self._poll()
        return self.reading

    async def write_xray(self, command: XrayCommand) -> bool:
        """EXPOSE: prepare_command = 1 and expose_command = 1 (needs a verified session).
        STOP: expose_command = 0, keeping the tube prepared (goes out on any live connection).
        Both are read back."""
        if command is XrayCommand.EXPOSE:
            return await self._write("x-ray expose",
                                     {"prepare_command": 1, "expose_command": 1},
                                     verify=True, need_ready=True)
        return await self._write("x-ray stop", {"expose_command": 0}, verify=True,
                                 need_ready=False)
