"""The simulators' fault-injection ("backdoor") register layout, read as data.

syncctl never imports firmware_sim; `syncctl sim inject` and `syncctl demo --inject` write
faults through this layout (configs/registers/backdoor.yaml, format syncctl-backdoor/1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from syncctl.config.errors import ConfigError
from syncctl.config.loader import pydantic_issues
from syncctl.config.registers import RegisterDef
from syncctl.config.yaml_source import load_yaml

DEFAULT_LAYOUT = Path(__file__).resolve().parents[3] / "configs" / "registers" / "backdoor.yaml"


class BackdoorBlock(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    registers: dict[str, RegisterDef]
    ranges: dict[str, tuple[float, float]] = Field(default_factory=dict)


class BackdoorLayout(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    format: Literal["syncctl-backdoor/1"]
    unit: int = Field(ge=0, le=247)
    word_order: Literal["big", "little"] = "big"
    devices: dict[Literal["beam_gate", "imaging"], BackdoorBlock]

    def register(self, slot: str, name: str) -> RegisterDef:
        block = self.devices.get(slot)  # type: ignore[call-overload]
        if block is None or name not in block.registers:
            known = ", ".join(
                f"{s}.{n}" for s, b in self.devices.items() for n in b.registers
            )
            raise KeyError(f"no backdoor register {slot}.{name}; known: {known}")
        reg: RegisterDef = block.registers[name]
        return reg


def load_backdoor_layout(path: Path = DEFAULT_LAYOUT) -> BackdoorLayout:
    source = load_yaml(path)
    try:
        return BackdoorLayout.model_validate(source.data)
    except ValidationError as exc:
        raise ConfigError(pydantic_issues(source, exc)) from None
