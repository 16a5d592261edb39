"""Load and validate a room configuration and its register maps; convert to core parameters."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from syncctl.config.errors import ConfigError, ConfigIssue
from syncctl.config.registers import RegisterMapFile, check_register_map
from syncctl.config.room import BoxWindow, RoomFile, cross_field_problems
from syncctl.config.yaml_source import PathKey, YamlSource, load_yaml
from syncctl.core.types import CoreParams, Plan, Position, Window, WindowBox, WindowSphere

EXPECTED_KIND = {"beam_gate": "beam-gate", "imaging": "xray-imaging"}


def _describe_found(source: YamlSource, loc: PathKey) -> str:
    node: Any = source.data
    for part in loc:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if not (in_dict or in_list):
            return ""
        node = node[part]
    text = repr(node)
    return f" (found {text[:60]})" if not isinstance(node, dict | list) else ""


def _pydantic_issues(source: YamlSource, error: ValidationError) -> list[ConfigIssue]:
    issues = []
    for err in error.errors():
        loc: PathKey = tuple(err["loc"])
        # Discriminated unions add the tag (e.g. "modbus-tcp") to the path: drop parts that
        # are not keys of the data so the path reads as the user wrote it.
        clean: list[str | int] = []
        node: Any = source.data
        for part in loc:
            if isinstance(node, dict) and part in node:
                clean.append(part)
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int):
                clean.append(part)
                node = node[part] if 0 <= part < len(node) else None
            elif err["type"] in ("missing", "extra_forbidden") and part == loc[-1]:
                clean.append(part)
        path = tuple(clean)
        kind = err["type"]
        if kind == "extra_forbidden":
            message = "unknown field (not allowed here; check the spelling)"
        elif kind == "missing":
            message = "required field is missing"
        else:
            message = err["msg"] + _describe_found(source, path)
        issues.append(source.issue(path, message))
    return issues


def load_register_map(file: Path) -> RegisterMapFile:
    source = load_yaml(file)
    try:
        regmap = RegisterMapFile.model_validate(source.data)
    except ValidationError as exc:
        raise ConfigError(_pydantic_issues(source, exc)) from None
    problems = check_register_map(regmap)
    if problems:
        raise ConfigError([source.issue(path, msg) for path, msg in problems])
    return regmap


@dataclass(frozen=True)
class RoomConfig:
    """A validated room: the file's content, where it came from, and its register maps."""

    path: Path
    room: RoomFile
    beam_gate_map: RegisterMapFile
    imaging_map: RegisterMapFile

    def to_core_params(self) -> CoreParams:
        g, lim = self.room.gating, self.room.limits
        window: Window
        if isinstance(g.window, BoxWindow):
            window = WindowBox(*g.window.half_size_mm)
        else:
            window = WindowSphere(g.window.radius_mm)
        return CoreParams(
            window=window,
            hysteresis_mm=g.hysteresis_mm,
            max_frame_age_s=g.max_frame_age_ms / 1000,
            min_confidence=g.min_confidence,
            frames_required_inside=g.frames_required_inside,
            max_jump_mm=g.max_jump_mm,
            imaging_budget_mas=lim.imaging_budget_mas,
            max_hold_s=lim.max_hold_s,
            gate_actuation_timeout_s=lim.gate_actuation_timeout_ms / 1000,
            xray_actuation_timeout_s=lim.xray_actuation_timeout_ms / 1000,
            heartbeat_period_s=lim.heartbeat_period_ms / 1000,
            device_watchdog_timeout_s=lim.device_watchdog_timeout_ms / 1000,
            device_stale_s=lim.device_stale_ms / 1000,
            max_time_step_s=lim.max_time_step_ms / 1000,
            dose_tolerance_mu=lim.dose_tolerance_mu,
            plans=tuple(
                Plan(p.id, p.planned_dose_mu, Position(*p.target_mm)) for p in self.room.plans
            ),
        )

    def resolve(self, relative: str) -> Path:
        """A path written in the room file, relative to the room file's directory."""
        return Path(os.path.normpath(self.path.parent / relative))


def load_room(path: Path | str) -> RoomConfig:
    """Load, validate and cross-check a room file and the register maps it names.

    Raises ConfigError listing every problem found (each with file, field path and line).
    """
    file = Path(path)
    source = load_yaml(file)
    try:
        room = RoomFile.model_validate(source.data)
    except ValidationError as exc:
        raise ConfigError(_pydantic_issues(source, exc)) from None

    issues = [source.issue(p, m) for p, m in cross_field_problems(room)]
    maps: dict[str, RegisterMapFile] = {}
    for slot, expected in EXPECTED_KIND.items():
        device = getattr(room.devices, slot)
        map_path = Path(os.path.normpath(file.parent / device.register_map))
        where: PathKey = ("devices", slot, "register_map")
        if not map_path.exists():
            issues.append(source.issue(where, f"register map not found: {map_path}"))
            continue
        try:
            regmap = load_register_map(map_path)
        except ConfigError as exc:
            issues.extend(exc.issues)
            continue
        if regmap.device != expected:
            issues.append(source.issue(
                where, f"{map_path} describes device {regmap.device!r}; "
                       f"devices.{slot} needs a {expected!r} map"))
        maps[slot] = regmap
    if issues:
        raise ConfigError(issues)
    return RoomConfig(file, room, maps["beam_gate"], maps["imaging"])


def config_hash(config: RoomConfig) -> str:
    """SHA-256 over the validated room and both register maps (canonical JSON), 16 hex digits.

    Comments, key order and formatting do not change it; any value that syncctl uses does.
    """
    canonical = json.dumps(
        {
            "room": config.room.model_dump(mode="json"),
            "beam_gate_map": config.beam_gate_map.model_dump(mode="json"),
            "imaging_map": config.imaging_map.model_dump(mode="json"),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
