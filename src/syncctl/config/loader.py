"""Load and validate a room configuration and its register maps; convert to core parameters."""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from syncctl.config.errors import ConfigError, ConfigIssue
from syncctl.config.registers import CodecError, RegisterMapFile, check_register_map, encode
from syncctl.config.room import BoxWindow, RoomFile, cross_field_problems
from syncctl.config.yaml_source import PathKey, YamlSource, load_yaml
from syncctl.core.types import CoreParams, Plan, Position, Window, WindowBox, WindowSphere

EXPECTED_KIND = {"beam_gate": "beam-gate", "imaging": "xray-imaging"}


# --- pydantic errors -> issues ---------------------------------------------------------------


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated[...]`` layers."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _union_members(annotation: Any) -> list[Any]:
    annotation = _unwrap(annotation)
    if get_origin(annotation) in (Union, UnionType):
        return [_unwrap(a) for a in get_args(annotation) if a is not type(None)]
    return [annotation]


def _tags(model: type[BaseModel]) -> dict[str, tuple[Any, ...]]:
    """The model's ``Literal`` fields (discriminators) and their values."""
    return {name: get_args(f.annotation) for name, f in model.model_fields.items()
            if get_origin(f.annotation) is Literal}


def _pick(annotation: Any, node: Any) -> Any:
    """The concrete type of ``annotation`` for this data: a union of models is resolved by
    the member whose discriminator (a Literal field) matches the data."""
    members = _union_members(annotation)
    models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
    if len(members) == 1:
        return members[0]
    if isinstance(node, dict) and models:
        # The discriminator: a Literal field every member has (kind, shape).
        shared = set.intersection(*(set(_tags(m)) for m in models))
        for m in models:
            tags = _tags(m)
            if shared and all(node.get(k) in tags[k] for k in shared):
                return m
    return models[0] if len(models) == 1 else None


def annotation_at(model: type[BaseModel], path: PathKey, data: Any) -> Any:
    """The type expected at ``path`` of ``data`` validated as ``model`` (None if unknown)."""
    current: Any = model
    node: Any = data
    for part in path:
        current = _pick(current, node)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        else:
            origin, args = get_origin(current), get_args(current)
            if origin is list and args:
                current = args[0]
            elif origin is dict and len(args) == 2:
                current = args[1]
            elif origin is tuple and isinstance(part, int) and part < len(args):
                current = args[part]
            else:
                return None
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        node = node[part] if in_dict or in_list else None
    return _pick(current, node) if current is not None else None


def _node_at(data: Any, path: PathKey) -> tuple[bool, Any]:
    node = data
    for part in path:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if not (in_dict or in_list):
            return False, None
        node = node[part]
    return True, node


def _describe_found(source: YamlSource, path: PathKey) -> str:
    present, node = _node_at(source.data, path)
    if not present:
        return ""
    if isinstance(node, dict):
        return " (found a mapping)"
    if isinstance(node, list):
        return f" (found a list of {len(node)})"
    return f" (found {repr(node)[:60]})"


def _unknown_field(model: type[BaseModel] | None, source: YamlSource, path: PathKey) -> str:
    key = str(path[-1])
    allowed: list[str] = []
    if model is not None:
        parent = annotation_at(model, path[:-1], source.data)
        if isinstance(parent, type) and issubclass(parent, BaseModel):
            allowed = list(parent.model_fields)
    if not allowed:
        return f"unknown field {key!r} (not allowed here; check the spelling)"
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown field {key!r}{hint} (allowed here: {', '.join(allowed)})"


def _missing_tag(model: type[BaseModel] | None, source: YamlSource, path: PathKey,
                 discriminator: str) -> str:
    expected: list[str] = []
    parent = annotation_at(model, path[:-1], source.data) if model is not None and path else None
    if isinstance(parent, type) and issubclass(parent, BaseModel):
        field = parent.model_fields.get(str(path[-1]))
        for member in _union_members(field.annotation if field is not None else None):
            if isinstance(member, type) and issubclass(member, BaseModel):
                expected.extend(str(v) for v in _tags(member).get(discriminator, ()))
    allowed = f": one of {', '.join(expected)}" if expected else ""
    return f"required field {discriminator!r} is missing{allowed}"


def pydantic_issues(source: YamlSource, error: ValidationError,
                    model: type[BaseModel] | None = None) -> list[ConfigIssue]:
    """One issue per pydantic error, at the path as the user wrote it, with what was found.

    ``model`` (the model that was validated) lets an unknown field list the allowed ones.
    """
    issues = []
    for err in error.errors():
        loc: PathKey = tuple(err["loc"])
        kind = err["type"]
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
            elif kind in ("missing", "extra_forbidden") and part == loc[-1]:
                clean.append(part)
        path = tuple(clean)
        ctx = err.get("ctx") or {}
        if kind == "extra_forbidden":
            message = _unknown_field(model, source, path)
        elif kind == "missing" and path and isinstance(path[-1], int):
            # A fixed-length list ([x, y, z]) with too few items.
            path = path[:-1]
            expected = annotation_at(model, path, source.data) if model is not None else None
            args = get_args(expected) if get_origin(expected) is tuple else ()
            want = f"; expected {len(args)} values" if args else ""
            message = f"too few values{want}{_describe_found(source, path)}"
        elif kind == "missing":
            message = "required field is missing"
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            message = f"expected a mapping (key: value){_describe_found(source, path)}"
        elif kind == "union_tag_invalid":
            discriminator = str(ctx.get("discriminator", "kind")).strip("'")
            allowed = str(ctx.get("expected_tags", "")).replace("'", "")
            path = (*path, discriminator)
            message = f"{ctx.get('tag')!r} is not allowed; one of {allowed}"
        elif kind == "union_tag_not_found":
            discriminator = str(ctx.get("discriminator", "kind")).strip("'")
            message = _missing_tag(model, source, path, discriminator)
        else:
            message = err["msg"] + _describe_found(source, path)
        issues.append(source.issue(path, message))
    return issues


# --- loading -------------------------------------------------------------------------------


def load_register_map(file: Path) -> RegisterMapFile:
    """Load and check one register map; ConfigError issues name this file."""
    source = load_yaml(file)
    try:
        regmap = RegisterMapFile.model_validate(source.data)
    except ValidationError as exc:
        raise ConfigError(pydantic_issues(source, exc, RegisterMapFile)) from None
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
            # One count of the preset registers: the write rounds to it, the readback shows it.
            dose_preset_tolerance_mu=max(
                self.beam_gate_map.registers["dose_preset"].scale,
                self.beam_gate_map.registers["dose_preset_readback"].scale),
            plans=tuple(
                Plan(p.id, p.planned_dose_mu, Position(*p.target_mm)) for p in self.room.plans
            ),
        )

    def with_endpoints(self, beam_gate: dict[str, Any], imaging: dict[str, Any]) -> RoomConfig:
        """The same room pointed at other endpoints (host, port, serial path), e.g. the ones
        the simulators opened. Only fields the transport has are taken; the rest stay."""
        devices = self.room.devices

        def moved(device: Any, where: dict[str, Any]) -> Any:
            fields = type(device.transport).model_fields
            update = {k: v for k, v in where.items() if k in ("host", "port") and k in fields}
            return device.model_copy(update={"transport": device.transport.model_copy(
                update=update)})

        room = self.room.model_copy(update={"devices": devices.model_copy(update={
            "beam_gate": moved(devices.beam_gate, beam_gate),
            "imaging": moved(devices.imaging, imaging),
        })})
        return RoomConfig(self.path, room, self.beam_gate_map, self.imaging_map)

    def resolve(self, relative: str) -> Path:
        """A path written in the room file, relative to the room file's directory."""
        return Path(os.path.normpath(self.path.parent / relative))


def _map_paths(source: YamlSource, room: RoomFile | None) -> dict[str, str]:
    """The register-map path each device names: from the validated room, or (when the room
    failed its schema) whatever text the file gives, so the maps are still checked."""
    if room is not None:
        return {slot: getattr(room.devices, slot).register_map for slot in EXPECTED_KIND}
    found: dict[str, str] = {}
    devices = source.data.get("devices")
    for slot in EXPECTED_KIND:
        device = devices.get(slot) if isinstance(devices, dict) else None
        value = device.get("register_map") if isinstance(device, dict) else None
        if isinstance(value, str) and value:
            found[slot] = value
    return found


def _load_maps(source: YamlSource, room: RoomFile | None
               ) -> tuple[dict[str, RegisterMapFile], list[ConfigIssue]]:
    maps: dict[str, RegisterMapFile] = {}
    issues: list[ConfigIssue] = []
    for slot, relative in _map_paths(source, room).items():
        expected = EXPECTED_KIND[slot]
        map_path = Path(os.path.normpath(source.file.parent / relative))
        where: PathKey = ("devices", slot, "register_map")
        if not map_path.exists():
            issues.append(source.issue(where, f"register map not found: {map_path} "
                                              "(the path is relative to the room file)"))
            continue
        if not map_path.is_file():
            issues.append(source.issue(where, f"register map {map_path} is not a file"))
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
            continue
        maps[slot] = regmap
    return maps, issues


def _settings_problems(source: YamlSource, room: RoomFile,
                       maps: dict[str, RegisterMapFile]) -> list[ConfigIssue]:
    """Each value the controller writes to a device at every connection (its settings) must
    fit the register the map gives it (type and scale); otherwise the device client would
    refuse it at start-up, after the configuration was called valid."""
    lim, xic = room.limits, room.devices.imaging
    settings: dict[str, dict[str, tuple[PathKey, float]]] = {
        "beam_gate": {"watchdog_timeout_ms": (("limits", "device_watchdog_timeout_ms"),
                                              lim.device_watchdog_timeout_ms)},
        "imaging": {
            "watchdog_timeout_ms": (("limits", "device_watchdog_timeout_ms"),
                                    lim.device_watchdog_timeout_ms),
            **{name: (("devices", "imaging", name), float(getattr(xic, name)))
               for name in ("frame_rate_fps", "kv", "ma", "pulse_width_ms")},
        },
    }
    issues: list[ConfigIssue] = []
    for slot, values in settings.items():
        regmap = maps.get(slot)
        if regmap is None:
            continue
        for signal, (where, value) in values.items():
            reg = regmap.registers[signal]
            try:
                encode(reg, value, regmap.word_order)
            except CodecError as exc:
                issues.append(source.issue(
                    where, f"{value:g} cannot be written to {signal} of the {slot} register "
                           f"map ({reg.type}, scale {reg.scale:g}): {exc}"))
    return issues


def _preset_resolution_problems(source: YamlSource, room: RoomFile,
                                maps: dict[str, RegisterMapFile]) -> list[ConfigIssue]:
    """The dose preset is compared with its readback to one count of its registers
    (IL-032/IL-033). A count coarser than the overdose tolerance would let the hardware
    backstop sit beyond the dose the synchronizer itself calls an overdose, unseen."""
    regmap = maps.get("beam_gate")
    if regmap is None:
        return []
    count = max(regmap.registers["dose_preset"].scale,
                regmap.registers["dose_preset_readback"].scale)
    if count <= room.limits.dose_tolerance_mu:
        return []
    return [source.issue(("devices", "beam_gate", "register_map"),
                         f"the dose preset registers count in {count:g} MU, coarser than "
                         f"limits.dose_tolerance_mu ({room.limits.dose_tolerance_mu:g} MU): "
                         "the preset read back could not show a limit beyond the tolerance")]


def _plan_resolution_problems(source: YamlSource, room: RoomFile,
                              maps: dict[str, RegisterMapFile]) -> list[ConfigIssue]:
    """A plan's dose must be a whole number of counts of the dose counter and of the preset
    registers. The hardware preset is the counter at selection plus the plan, rounded to a
    count when it is written: 10.005 MU in 0.01 MU counts would stop the beam at 10.00 (the
    fraction could never reach its plan, and would wait in TREATING for good) or at 10.01."""
    regmap = maps.get("beam_gate")
    if regmap is None:
        return []
    count = max(regmap.registers[name].scale
                for name in ("dose_delivered", "dose_preset", "dose_preset_readback"))
    issues = []
    for i, plan in enumerate(room.plans):
        counts = plan.planned_dose_mu / count
        if abs(counts - round(counts)) > 1e-6:
            issues.append(source.issue(
                ("plans", i, "planned_dose_mu"),
                f"{plan.planned_dose_mu:g} MU is not a whole number of the dose counter's "
                f"counts ({count:g} MU): the hardware preset would be rounded to a count, and "
                "the fraction would stop short of its plan or run past it"))
    return issues


def load_room(path: Path | str) -> RoomConfig:
    """Load, validate and cross-check a room file and the register maps it names.

    Raises ConfigError listing every problem found, each with file, field path and line: the
    room's schema errors (or, once the schema holds, its cross-field errors), then every
    problem of the register maps (issues of a map name the map's own file).
    """
    file = Path(path)
    source = load_yaml(file)
    room: RoomFile | None
    try:
        room = RoomFile.model_validate(source.data)
    except ValidationError as exc:
        room = None
        issues = pydantic_issues(source, exc, RoomFile)
    else:
        issues = [source.issue(p, m) for p, m in cross_field_problems(room)]
    maps, map_issues = _load_maps(source, room)
    issues.extend(map_issues)
    if room is not None and not issues:
        issues.extend(_settings_problems(source, room, maps))
        issues.extend(_preset_resolution_problems(source, room, maps))
        issues.extend(_plan_resolution_problems(source, room, maps))
    if issues or room is None:
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
