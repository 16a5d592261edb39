"""The room configuration (pydantic v2).

Every model forbids unknown keys, validates strictly (YAML already gives native types: a quoted
``"20"`` is not a number and ``"yes"`` is not a boolean here) and refuses ``.inf`` and
``.nan`` (an infinite dose tolerance or a NaN target would pass every comparison).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic import Strict as StrictMode

from syncctl.config.yaml_source import PathKey


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


Port = Annotated[int, Field(ge=1, le=65535)]
Unit = Annotated[int, Field(ge=0, le=247)]
Positive = Annotated[float, Field(gt=0)]
LIST_AS_TUPLE = StrictMode(False)
"""YAML gives lists; a fixed-length tuple field takes one (its items stay strict)."""
Vec3 = Annotated[tuple[float, float, float], LIST_AS_TUPLE]


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
    watchdog_timeout_ms: Annotated[float, Field(gt=0, le=65535)] | None = None
    """Optional statement of the device's firmware watchdog. The controller always writes
    ``limits.device_watchdog_timeout_ms`` to both devices; when given here it must agree."""


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
    half_size_mm: Annotated[tuple[Positive, Positive, Positive], LIST_AS_TUPLE]


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
    cycle_deadline_ms: Positive = 20.0
    """A control cycle (read, decide, write) longer than this is an overrun."""
    max_consecutive_overruns: Annotated[int, Field(ge=1, le=1000)] = 5
    """This many overruns in a row trip the fraction (IL-019)."""


class PlanConfig(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    planned_dose_mu: Annotated[float, Field(gt=0, le=10_000)]
    target_mm: Vec3


class Mqtt(Strict):
    """The bus (docs/bus.md): in-process when disabled, else MQTT to this broker."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Port = 1883
    tls: bool = False
    ca_file: str | None = None
    """CA certificate(s) to verify the broker with (PEM, relative to the room file); None:
    the system's CAs. Only with ``tls: true``."""
    credentials_file: str | None = None
    """YAML with ``username`` and ``password`` of the controller's broker account."""
    client_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """MQTT client id of the controller; None: ``syncctl-<room id>``."""
    keepalive_s: Annotated[int, Field(ge=2, le=600)] = 10
    reconnect_max_s: Annotated[float, Field(ge=0.1, le=300)] = 5.0
    """Reconnect backoff doubles from 50 ms up to this."""
    topic_prefix: str = Field(default="syncctl", pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")


class Users(Strict):
    """Operator accounts: a users file (``syncctl users``), relative to the room file."""

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


def _endpoint(transport: ModbusTcp | ModbusRtu | RtuOverTcp) -> tuple[str, ...]:
    if isinstance(transport, ModbusRtu):
        return ("serial", transport.port, str(transport.unit))
    return ("net", transport.host, str(transport.port), str(transport.unit))


def cross_field_problems(room: RoomFile) -> list[tuple[PathKey, str]]:
    """Checks that span fields, each with the path it is best reported at.

    Run only on a room that passed the schema; each problem is (path, message), the message
    saying what was found and what is allowed. docs/configuration.md lists them all.
    """
    problems: list[tuple[PathKey, str]] = []
    lim, gating, devices = room.limits, room.gating, room.devices
    bgc, xic = devices.beam_gate, devices.imaging
    watchdog = lim.device_watchdog_timeout_ms

    # Heartbeat and watchdogs.
    if lim.heartbeat_period_ms * 4 > watchdog:
        problems.append((("limits", "heartbeat_period_ms"),
                         f"{lim.heartbeat_period_ms:g} ms is not well below the device watchdog "
                         f"({watchdog:g} ms): allowed at most a quarter of it "
                         f"({watchdog / 4:g} ms)"))
    if lim.device_stale_ms >= watchdog:
        problems.append((("limits", "device_stale_ms"),
                         f"{lim.device_stale_ms:g} ms must be below the device watchdog "
                         f"({watchdog:g} ms): we must notice a lost device before its watchdog "
                         "acts"))
    for slot, dev in (("beam_gate", bgc), ("imaging", xic)):
        if dev.watchdog_timeout_ms is not None and dev.watchdog_timeout_ms != watchdog:
            problems.append((("devices", slot, "watchdog_timeout_ms"),
                             f"{dev.watchdog_timeout_ms:g} ms disagrees with "
                             f"limits.device_watchdog_timeout_ms ({watchdog:g} ms), which is what "
                             "the controller writes to the device: make them equal or leave this "
                             "field out"))

    # Polling, transactions and staleness.
    for slot, dev in (("beam_gate", bgc), ("imaging", xic)):
        if dev.timeout_ms >= lim.device_stale_ms:
            problems.append((("devices", slot, "timeout_ms"),
                             f"{dev.timeout_ms:g} ms must be below limits.device_stale_ms "
                             f"({lim.device_stale_ms:g} ms): a slow transaction must not hide a "
                             "lost device"))
        if dev.poll_period_ms >= lim.device_stale_ms:
            problems.append((("devices", slot, "poll_period_ms"),
                             f"{dev.poll_period_ms:g} ms must be below limits.device_stale_ms "
                             f"({lim.device_stale_ms:g} ms): every reading would be stale "
                             "before the next poll"))
    if lim.cycle_deadline_ms >= lim.device_stale_ms:
        problems.append((("limits", "cycle_deadline_ms"),
                         f"{lim.cycle_deadline_ms:g} ms must be below limits.device_stale_ms "
                         f"({lim.device_stale_ms:g} ms)"))
    if lim.max_time_step_ms <= bgc.poll_period_ms:
        problems.append((("limits", "max_time_step_ms"),
                         f"{lim.max_time_step_ms:g} ms must exceed the beam-gate poll period "
                         f"({bgc.poll_period_ms:g} ms): a normal cycle would be a clock fault"))
    if lim.gate_actuation_timeout_ms <= bgc.poll_period_ms:
        problems.append((("limits", "gate_actuation_timeout_ms"),
                         f"{lim.gate_actuation_timeout_ms:g} ms must exceed the beam-gate poll "
                         f"period ({bgc.poll_period_ms:g} ms): the readback is only seen once "
                         "per poll, so every close would look like a stuck gate"))
    if lim.xray_actuation_timeout_ms <= xic.poll_period_ms:
        problems.append((("limits", "xray_actuation_timeout_ms"),
                         f"{lim.xray_actuation_timeout_ms:g} ms must exceed the imaging poll "
                         f"period ({xic.poll_period_ms:g} ms): the exposing bit is only seen "
                         "once per poll"))
    if _endpoint(bgc.transport) == _endpoint(xic.transport):
        problems.append((("devices", "imaging", "transport"),
                         "the same endpoint and unit as devices.beam_gate.transport "
                         f"({bgc.transport.describe()}): each device needs its own address"))

    # Imaging timing.
    fps = xic.frame_rate_fps
    frame_period_ms = 1000.0 / fps
    if gating.max_frame_age_ms < frame_period_ms:
        problems.append((("gating", "max_frame_age_ms"),
                         f"{gating.max_frame_age_ms:g} ms is shorter than one frame period "
                         f"({frame_period_ms:.1f} ms at {fps:g} fps): every frame would be "
                         "stale; allowed: at least one frame period (about two is usual)"))
    if xic.pulse_width_ms >= frame_period_ms:
        problems.append((("devices", "imaging", "pulse_width_ms"),
                         f"{xic.pulse_width_ms:g} ms does not fit in one frame period "
                         f"({frame_period_ms:.1f} ms at {fps:g} fps)"))
    if xic.poll_period_ms * 2 > frame_period_ms:
        problems.append((("devices", "imaging", "poll_period_ms"),
                         f"{xic.poll_period_ms:g} ms is too slow for {fps:g} fps: poll at least "
                         f"twice per frame period (<= {frame_period_ms / 2:.1f} ms) so that no "
                         "frame is missed"))

    # Gating window.
    window = gating.window
    if isinstance(window, BoxWindow):
        smallest, what = min(window.half_size_mm), "smallest half-size"
    else:
        smallest, what = window.radius_mm, "radius"
    if gating.hysteresis_mm >= smallest:
        problems.append((("gating", "hysteresis_mm"),
                         f"{gating.hysteresis_mm:g} mm must be smaller than the window "
                         f"({what} {smallest:g} mm): the inner window would be empty"))

    # Plans.
    seen: dict[str, int] = {}
    for i, plan in enumerate(room.plans):
        if plan.id in seen:
            problems.append((("plans", i, "id"),
                             f"duplicate plan id {plan.id!r} (first at plans[{seen[plan.id]}]): "
                             "plan ids must be unique"))
        seen.setdefault(plan.id, i)
    return problems
