"""The room configuration (pydantic v2). Unknown keys are errors everywhere."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from syncctl.config.yaml_source import PathKey


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Port = Annotated[int, Field(ge=1, le=65535)]
Unit = Annotated[int, Field(ge=0, le=247)]
Positive = Annotated[float, Field(gt=0)]
Vec3 = tuple[float, float, float]


class ModbusTcp(Strict):
    kind: Literal["modbus-tcp"]
    host: str = Field(min_length=1)
    port: Port = 502
    unit: Unit = 1

    def describe(self) -> str:
        return f"modbus-tcp {self.host}:{self.port} unit {self.unit}"


class ModbusRtu(Strict):
    kind: Literal["modbus-rtu"]
    port: str = Field(min_length=1, description="serial device path")
    baudrate: Literal[9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600] = 115200
    parity: Literal["N", "E", "O"] = "E"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit: Unit = 1

    def describe(self) -> str:
        return (f"modbus-rtu {self.port} {self.baudrate} "
                f"{self.bytesize}{self.parity}{self.stopbits} unit {self.unit}")


class RtuOverTcp(Strict):
    kind: Literal["rtu-over-tcp"]
    host: str = Field(min_length=1)
    port: Port
    unit: Unit = 1

    def describe(self) -> str:
        return f"rtu-over-tcp {self.host}:{self.port} unit {self.unit}"


Transport = Annotated[ModbusTcp | ModbusRtu | RtuOverTcp, Field(discriminator="kind")]


class BeamGateDevice(Strict):
    transport: Transport
    register_map: str = Field(min_length=1, description="path, relative to the room file")
    timeout_ms: Annotated[float, Field(gt=0, le=5000)] = 50.0
    retries: Annotated[int, Field(ge=0, le=5)] = 0
    poll_period_ms: Annotated[float, Field(ge=0.2, le=1000)] = 1.0


class ImagingDevice(BeamGateDevice):
    poll_period_ms: Annotated[float, Field(ge=0.2, le=1000)] = 5.0
    frame_rate_fps: Annotated[float, Field(ge=1, le=30)] = 30.0
    kv: Annotated[float, Field(ge=40, le=150)] = 90.0
    ma: Annotated[float, Field(gt=0, le=1000)] = 50.0
    pulse_width_ms: Annotated[float, Field(gt=0, le=100)] = 4.0


class Devices(Strict):
    beam_gate: BeamGateDevice
    imaging: ImagingDevice


class BoxWindow(Strict):
    shape: Literal["box"]
    half_size_mm: tuple[Positive, Positive, Positive]


class SphereWindow(Strict):
    shape: Literal["sphere"]
    radius_mm: Positive


class Gating(Strict):
    window: Annotated[BoxWindow | SphereWindow, Field(discriminator="shape")]
    hysteresis_mm: Annotated[float, Field(ge=0)]
    max_frame_age_ms: Positive
    min_confidence: Annotated[float, Field(ge=0, le=1)]
    frames_required_inside: Annotated[int, Field(ge=1, le=30)]
    max_jump_mm: Positive


class Limits(Strict):
    imaging_budget_mas: Positive
    max_hold_s: Positive
    gate_actuation_timeout_ms: Positive
    xray_actuation_timeout_ms: Positive
    heartbeat_period_ms: Positive
    device_watchdog_timeout_ms: Annotated[float, Field(gt=0, le=65535)]
    device_stale_ms: Positive
    max_time_step_ms: Positive
    dose_tolerance_mu: Annotated[float, Field(ge=0)]
    cycle_deadline_ms: Positive = 10.0
    """A control cycle (read, decide, write) longer than this is an overrun."""
    max_consecutive_overruns: Annotated[int, Field(ge=1, le=1000)] = 5
    """This many overruns in a row trip the fraction (IL-019)."""


class PlanConfig(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    planned_dose_mu: Annotated[float, Field(gt=0, le=10_000)]
    target_mm: Vec3


class Mqtt(Strict):
    """Used by the console/MQTT milestone; validated now so the file format is stable."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Port = 1883
    tls: bool = False
    credentials_file: str | None = None
    topic_prefix: str = Field(default="syncctl", pattern=r"^[A-Za-z0-9_/-]+$")


class Users(Strict):
    """Operator accounts (used by the console milestone)."""

    file: str | None = None


class RoomIdentity(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    name: str = ""
    clinical_mode: bool = False


class RoomFile(Strict):
    room: RoomIdentity
    devices: Devices
    gating: Gating
    limits: Limits
    plans: list[PlanConfig] = Field(min_length=1)
    mqtt: Mqtt = Mqtt()
    users: Users = Users()
    roles: dict[str, list[str]] = Field(default_factory=dict)


def cross_field_problems(room: RoomFile) -> list[tuple[PathKey, str]]:
    """Checks that span fields, each with the path it is best reported at."""
    problems: list[tuple[PathKey, str]] = []
    lim = room.limits
    if lim.heartbeat_period_ms * 4 > lim.device_watchdog_timeout_ms:
        problems.append((("limits", "heartbeat_period_ms"),
                         f"{lim.heartbeat_period_ms} ms is not well below the device watchdog "
                         f"({lim.device_watchdog_timeout_ms} ms): allowed at most a quarter of it "
                         f"({lim.device_watchdog_timeout_ms / 4:g} ms)"))
    if lim.device_stale_ms >= lim.device_watchdog_timeout_ms:
        problems.append((("limits", "device_stale_ms"),
                         f"{lim.device_stale_ms} ms must be below the device watchdog "
                         f"({lim.device_watchdog_timeout_ms} ms): we must notice a lost device "
                         "before its watchdog acts"))
    frame_period_ms = 1000.0 / room.devices.imaging.frame_rate_fps
    if room.gating.max_frame_age_ms < frame_period_ms:
        problems.append((("gating", "max_frame_age_ms"),
                         f"{room.gating.max_frame_age_ms} ms is shorter than one frame period "
                         f"({frame_period_ms:.1f} ms at {room.devices.imaging.frame_rate_fps:g} "
                         "fps): every frame would be stale"))
    window = room.gating.window
    smallest = min(window.half_size_mm) if isinstance(window, BoxWindow) else window.radius_mm
    if room.gating.hysteresis_mm >= smallest:
        problems.append((("gating", "hysteresis_mm"),
                         f"{room.gating.hysteresis_mm} mm must be smaller than the window "
                         f"({smallest} mm): the inner window would be empty"))
    for device in ("beam_gate", "imaging"):
        dev = getattr(room.devices, device)
        if dev.timeout_ms >= lim.device_stale_ms:
            problems.append((("devices", device, "timeout_ms"),
                             f"{dev.timeout_ms} ms must be below limits.device_stale_ms "
                             f"({lim.device_stale_ms} ms)"))
    if lim.cycle_deadline_ms >= lim.device_stale_ms:
        problems.append((("limits", "cycle_deadline_ms"),
                         f"{lim.cycle_deadline_ms} ms must be below limits.device_stale_ms "
                         f"({lim.device_stale_ms} ms)"))
    if lim.max_time_step_ms <= room.devices.beam_gate.poll_period_ms:
        problems.append((("limits", "max_time_step_ms"),
                         f"{lim.max_time_step_ms} ms must exceed the beam-gate poll period "
                         f"({room.devices.beam_gate.poll_period_ms} ms)"))
    seen: dict[str, int] = {}
    for i, plan in enumerate(room.plans):
        if plan.id in seen:
            problems.append((("plans", i, "id"),
                             f"duplicate plan id {plan.id!r} (first at plans[{seen[plan.id]}])"))
        seen.setdefault(plan.id, i)
    return problems
