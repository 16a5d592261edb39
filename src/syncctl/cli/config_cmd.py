"""`syncctl config check PATH`: validate a room configuration and summarise it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from syncctl.config import ConfigError, RegisterMapFile, RoomConfig, config_hash, load_room
from syncctl.config.room import BeamGateDevice, BoxWindow, ImagingDevice

EXIT_OK = 0
EXIT_INVALID = 2


def _device_lines(label: str, device: BeamGateDevice, regmap: RegisterMapFile) -> list[str]:
    retries = f"{device.retries} retr{'y' if device.retries == 1 else 'ies'}"
    lines = [
        f"{label:<12}{device.transport.describe()}",
        f"{'':<12}poll {device.poll_period_ms:g} ms, timeout {device.timeout_ms:g} ms, {retries}",
        f"{'':<12}map {device.register_map} ({len(regmap.registers)} registers, "
        f"word order {regmap.word_order})",
    ]
    if isinstance(device, ImagingDevice):
        lines.insert(2, f"{'':<12}{device.frame_rate_fps:g} fps, {device.kv:g} kV, "
                        f"{device.ma:g} mA, {device.pulse_width_ms:g} ms pulse")
    return lines


def summary(config: RoomConfig) -> str:
    """A short, readable account of a valid room: what syncctl will talk to and enforce."""
    room = config.room
    dev = room.devices
    g, lim = room.gating, room.limits
    if isinstance(g.window, BoxWindow):
        hx, hy, hz = g.window.half_size_mm
        window = f"box, half-size {hx:g} x {hy:g} x {hz:g} mm"
    else:
        window = f"sphere, radius {g.window.radius_mm:g} mm"
    mqtt = (f"enabled, {room.mqtt.host}:{room.mqtt.port}{' (TLS)' if room.mqtt.tls else ''}"
            if room.mqtt.enabled else "disabled (in-process bus)")
    width = max(len(p.id) for p in room.plans)
    plans = [
        f"{p.id:<{width}}  {p.planned_dose_mu:g} MU, target "
        f"[{', '.join(f'{c:g}' for c in p.target_mm)}] mm"
        for p in room.plans
    ]
    lines = [
        f"room        {room.room.id}  {room.room.name}"
        + ("  [clinical mode]" if room.room.clinical_mode else ""),
        *_device_lines("beam gate", dev.beam_gate, config.beam_gate_map),
        *_device_lines("imaging", dev.imaging, config.imaging_map),
        f"window      {window}, hysteresis {g.hysteresis_mm:g} mm",
        f"gating      frame age <= {g.max_frame_age_ms:g} ms, confidence >= {g.min_confidence:g},"
        f" {g.frames_required_inside} frame(s) inside to open, jump > {g.max_jump_mm:g} mm",
        f"limits      imaging {lim.imaging_budget_mas:g} mAs/fraction,"
        f" hold <= {lim.max_hold_s:g} s, dose tolerance {lim.dose_tolerance_mu:g} MU",
        f"            actuation: gate {lim.gate_actuation_timeout_ms:g} ms,"
        f" x-ray {lim.xray_actuation_timeout_ms:g} ms",
        f"            heartbeat {lim.heartbeat_period_ms:g} ms, device watchdog "
        f"{lim.device_watchdog_timeout_ms:g} ms, stale after {lim.device_stale_ms:g} ms",
        f"            cycle deadline {lim.cycle_deadline_ms:g} ms "
        f"({lim.max_consecutive_overruns} overruns in a row trip),"
        f" max time step {lim.max_time_step_ms:g} ms",
        f"plans       {plans[0]}",
        *(f"            {line}" for line in plans[1:]),
        f"mqtt        {mqtt}",
        f"config hash {config_hash(config)}",
    ]
    return "\n".join(lines)


def check(path: Path) -> int:
    try:
        config = load_room(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"error: {issue}", file=sys.stderr)
        count = len(exc.issues)
        print(f"{path}: {count} error{'s' if count != 1 else ''}; configuration NOT valid",
              file=sys.stderr)
        return EXIT_INVALID
    print(f"{path}: valid")
    print(summary(config))
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    return check(Path(args.path))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = sub.add_parser("config", help="room configuration tools")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION")
    config_sub.required = True
    check_parser = config_sub.add_parser(
        "check",
        help="validate a room configuration and its register maps",
        description="Validate a room file and the register maps it names. Exit 0 and print a "
        "summary when valid; exit 2 and print every error (file:line: field: message) when not.",
    )
    check_parser.add_argument("path", help="room configuration YAML")
    check_parser.set_defaults(handler=_run)
