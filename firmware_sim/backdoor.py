"""The backdoor: fault injection through a channel of its own (lewis's backdoor).

A separate Modbus TCP server per simulator process (unit 100) whose holding registers are
the faults of each device, laid out in ``configs/registers/backdoor.yaml`` (data, so that
syncctl and any Modbus tool can use it; see docs/simulators.md). Writing a register sets the
fault from that moment (the device's model is first advanced to now); reading shows the
faults in force. Each accepted write is also reported to the write listeners, which is how
the ground-truth files record when a fault was injected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from firmware_sim.beam_gate import BeamGateFaults, BeamGateModel
from firmware_sim.imaging import ImagingFaults, ImagingModel
from firmware_sim.registers import (
    Clock,
    DeviceInterface,
    RegisterBank,
    RegisterInterface,
)
from firmware_sim.transport import Adapter, LinkFaults
from syncctl.config import RegisterDef

DEFAULT_LAYOUT = Path(__file__).resolve().parents[1] / "configs" / "registers" / "backdoor.yaml"

LINK_FAULTS = ("response_delay_ms", "drop_percent", "corrupt_percent", "disconnect", "reboot",
               "clear_faults")
FAULTS = {
    "beam_gate": ("door_open", "estop_pressed", "chain_broken", "stuck_gate",
                  "slow_gate_factor", *LINK_FAULTS),
    "imaging": ("tracking_loss", "frozen_frames", "frame_delay_ms", "marker_jump_x",
                "marker_jump_y", "marker_jump_z", "baseline_shift_x", "baseline_shift_y",
                "baseline_shift_z", *LINK_FAULTS),
}
Slot = Literal["beam_gate", "imaging"]


class BackdoorBlock(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    registers: dict[str, RegisterDef]
    ranges: dict[str, tuple[float, float]] = {}


class BackdoorLayout(BaseModel):
    """``configs/registers/backdoor.yaml`` (format ``syncctl-backdoor/1``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["syncctl-backdoor/1"]
    unit: int
    word_order: Literal["big", "little"] = "big"
    devices: dict[Slot, BackdoorBlock]

    @model_validator(mode="after")
    def _complete(self) -> BackdoorLayout:
        for slot, block in self.devices.items():
            missing = set(FAULTS[slot]) - set(block.registers)
            unknown = set(block.registers) - set(FAULTS[slot])
            if missing or unknown:
                raise ValueError(f"devices.{slot}: missing {sorted(missing)}, "
                                 f"unknown {sorted(unknown)}")
            for name in block.ranges:
                if name not in block.registers:
                    raise ValueError(f"devices.{slot}.ranges.{name}: no such register")
            for name, reg in block.registers.items():
                if reg.table != "holding" or reg.access != "rw" or reg.width != 1:
                    raise ValueError(f"devices.{slot}.registers.{name}: must be a writable "
                                     "one-word holding register")
        return self

    @classmethod
    def load(cls, path: Path = DEFAULT_LAYOUT) -> BackdoorLayout:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            return cls.model_validate(data)
        except (OSError, yaml.YAMLError, ValidationError) as exc:
            raise ValueError(f"{path}: not a valid backdoor layout: {exc}") from None

    def block_span(self, slot: Slot) -> tuple[int, int]:
        """First and last address of a device's block: its registers and the reserved words
        between them (16 addresses in the shipped layout)."""
        addresses = [r.address for r in self.devices[slot].registers.values()]
        first = min(addresses)
        return first, max(*addresses, first + 15)


@dataclass
class BackdoorTarget:
    """What the backdoor may act on for one device."""

    interface: DeviceInterface
    link: LinkFaults
    adapter: Adapter | None = None


class Backdoor(RegisterInterface):
    """The fault registers of every device this process simulates, as one register bank.

    Bank names are ``<slot>.<fault>`` (both blocks have e.g. ``response_delay_ms``). Words
    inside a block that no fault uses are read-only reserved registers: they read 0.
    """

    def __init__(self, layout: BackdoorLayout, targets: dict[Slot, BackdoorTarget],
                 clock: Clock) -> None:
        registers: dict[str, RegisterDef] = {}
        ranges: dict[str, tuple[float, float]] = {}
        for slot in targets:
            block = layout.devices[slot]
            for name, reg in block.registers.items():
                registers[f"{slot}.{name}"] = reg
            for name, span in block.ranges.items():
                ranges[f"{slot}.{name}"] = span
            used = {r.address for r in block.registers.values()}
            first, last = layout.block_span(slot)
            for address in range(first, last + 1):
                if address not in used:
                    registers[f"{slot}.reserved_{address}"] = RegisterDef(
                        address=address, table="holding", type="uint16", access="ro")
        super().__init__(RegisterBank(registers, layout.word_order), clock, ranges)
        self.layout = layout
        self.targets = targets

    def advance(self) -> float:
        for target in self.targets.values():
            target.interface.advance()
        return self.clock()

    # -- state -> words ----------------------------------------------------------------

    def refresh(self) -> None:
        for slot, target in self.targets.items():
            values: dict[str, float] = {
                "response_delay_ms": target.link.response_delay_s * 1000,
                "drop_percent": target.link.drop_fraction * 100,
                "corrupt_percent": target.link.corrupt_fraction * 100,
                "disconnect": float(target.link.disconnected),
                "reboot": 0.0,
                "clear_faults": 0.0,
            }
            model = target.interface.model
            if isinstance(model, BeamGateModel):
                f = model.faults
                values |= {"door_open": f.door_open, "estop_pressed": f.estop_pressed,
                           "chain_broken": f.chain_broken, "stuck_gate": f.stuck_gate,
                           "slow_gate_factor": f.slow_gate_factor}
            else:
                g = model.faults
                shift = model.motion.baseline_shift_mm
                values |= {"tracking_loss": g.tracking_loss, "frozen_frames": g.frozen_frames,
                           "frame_delay_ms": g.frame_delay_s * 1000}
                for i, axis in enumerate("xyz"):
                    values[f"marker_jump_{axis}"] = g.marker_jump_mm[i]
                    values[f"baseline_shift_{axis}"] = shift[i]
            for name, value in values.items():
                self.bank.set(f"{slot}.{name}", float(value))

    # -- accepted writes -> faults --------------------------------------------------------

    def apply(self, name: str, value: float, t: float) -> None:
        slot_name, fault = name.split(".", 1)
        target = self.targets[slot_name]  # type: ignore[index]
        link, interface = target.link, target.interface
        on = value >= 0.5
        if fault == "response_delay_ms":
            link.response_delay_s = value / 1000
        elif fault == "drop_percent":
            link.drop_fraction = value / 100
        elif fault == "corrupt_percent":
            link.corrupt_fraction = value / 100
        elif fault == "disconnect":
            link.disconnected = on
        elif fault == "reboot":
            if on:
                interface.reboot()
        elif fault == "clear_faults":
            if on:
                self._clear(target)
        elif isinstance(interface.model, BeamGateModel):
            _apply_beam_gate(interface.model, fault, value)
        else:
            _apply_imaging(interface.model, fault, value)

    @staticmethod
    def _clear(target: BackdoorTarget) -> None:
        target.link.clear()
        model = target.interface.model
        if isinstance(model, BeamGateModel):
            model.faults = BeamGateFaults()
        else:
            model.faults = ImagingFaults()
            model.motion.baseline_shift_mm = (0.0, 0.0, 0.0)

    async def settle(self) -> None:
        """Bring each adapter's connection state in line with its link's ``disconnected``;
        awaited before the write is answered, so a client sees the effect at once."""
        for target in self.targets.values():
            if target.adapter is not None:
                await target.adapter.set_disconnected(target.link.disconnected)


def _apply_beam_gate(model: BeamGateModel, fault: str, value: float) -> None:
    f = model.faults
    if fault == "slow_gate_factor":
        f.slow_gate_factor = value
    elif fault in ("door_open", "estop_pressed", "chain_broken", "stuck_gate"):
        setattr(f, fault, value >= 0.5)


def _apply_imaging(model: ImagingModel, fault: str, value: float) -> None:
    g = model.faults
    if fault in ("tracking_loss", "frozen_frames"):
        setattr(g, fault, value >= 0.5)
    elif fault == "frame_delay_ms":
        g.frame_delay_s = value / 1000
    elif fault.startswith(("marker_jump_", "baseline_shift_")):
        axis = "xyz".index(fault[-1])
        if fault.startswith("marker_jump_"):
            jump = list(g.marker_jump_mm)
            jump[axis] = value
            g.marker_jump_mm = (jump[0], jump[1], jump[2])
        else:
            shift = list(model.motion.baseline_shift_mm)
            shift[axis] = value
            model.motion.baseline_shift_mm = (shift[0], shift[1], shift[2])


def describe_layout(layout: BackdoorLayout) -> list[dict[str, Any]]:
    """The layout as rows (address, device, name, type, scale, unit, range, description)."""
    rows = []
    for slot, block in layout.devices.items():
        for name, reg in sorted(block.registers.items(), key=lambda kv: kv[1].address):
            rows.append({"address": reg.address, "device": slot, "name": name,
                         "type": reg.type, "scale": reg.scale, "unit": reg.unit,
                         "range": block.ranges.get(name), "description": reg.description})
    return rows
