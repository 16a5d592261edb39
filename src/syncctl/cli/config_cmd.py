"""`syncctl config check PATH`: validate a room configuration and summarise it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from syncctl.config import ConfigError, RoomConfig, config_hash, load_room
from syncctl.config.room import BoxWindow

EXIT_OK = 0
EXIT_INVALID = 2


def summary(config: RoomConfig) -> str:
    room = config.room
    dev = room.devices
    g, lim = room.gating, room.limits
    if isinstance(g.window, BoxWindow):
        hx, hy, hz = g.window.half_size_mm
        window = f"box, half-size {hx:g} x {hy:g} x {hz:g} mm"
    else:
        window = f"sphere, radius {g.window.radius_mm:g} mm"
    plans = ", ".join(f"{p.id} ({p.planned_dose_mu:g} MU)" for p in room.plans)
    bg, xi = dev.beam_gate, dev.imaging
    mqtt = (f"enabled, {room.mqtt.host}:{room.mqtt.port}" if room.mqtt.enabled
            else "disabled (in-process bus)")
    lines = [
        f"room        {room.room.id}  {room.room.name}"
        + ("  [clinical mode]" if room.room.clinical_mode else ""),
        f"beam gate   {bg.transport.describe()}, poll {bg.poll_period_ms:g} ms,"
        f" timeout {bg.timeout_ms:g} ms",
        f"            map {dev.beam_gate.register_map} ({len(config.beam_gate_map.registers)} "
        "registers)",
        f"imaging     {xi.transport.describe()}, poll {xi.poll_period_ms:g} ms,"
        f" timeout {xi.timeout_ms:g} ms",
        f"            {dev.imaging.frame_rate_fps:g} fps, {dev.imaging.kv:g} kV, "
        f"{dev.imaging.ma:g} mA, {dev.imaging.pulse_width_ms:g} ms pulse",
        f"            map {dev.imaging.register_map} ({len(config.imaging_map.registers)} "
        "registers)",
        f"window      {window}, hysteresis {g.hysteresis_mm:g} mm",
        f"gating      frame age <= {g.max_frame_age_ms:g} ms, confidence >= {g.min_confidence:g},"
        f" {g.frames_required_inside} frame(s) inside to open, jump > {g.max_jump_mm:g} mm",
        f"limits      imaging {lim.imaging_budget_mas:g} mAs/fraction,"
        f" hold <= {lim.max_hold_s:g} s, gate actuation {lim.gate_actuation_timeout_ms:g} ms",
        f"            heartbeat {lim.heartbeat_period_ms:g} ms, device watchdog "
        f"{lim.device_watchdog_timeout_ms:g} ms, stale after {lim.device_stale_ms:g} ms",
        f"plans       {plans}",
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
