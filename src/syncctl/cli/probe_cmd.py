"""`syncctl probe`: read and write one device's registers, by name or by address.

    syncctl probe --config PATH DEVICE read NAME|ADDRESS [--count N] [--table T]
    syncctl probe --config PATH DEVICE write NAME|ADDRESS VALUE --engineering
                  [--force-actuator REASON] [--table T]

DEVICE is beam-gate or imaging. A NAME is a signal of the device's register map: read and
written typed and scaled (a write takes the engineering value, e.g. `ma 50.5`). An ADDRESS
(decimal or 0x..) is raw: --table says which table when the map does not decide it, VALUE is
one 16-bit word. --count N reads N registers from the start address and decodes every mapped
signal they cover. A read never writes anything (no session is started on the device).

Writes are for an engineering session with the room in SAFE (docs/commissioning.md):
refused when room.clinical_mode is true, refused without --engineering, and refused unless a
check finds no controller treating: the beam gate's readback and command are closed, its
heartbeat echo does not change over a few heartbeat periods (no controller is sending one),
and the X-ray is not exposing. gate_command, heartbeat, prepare_command and expose_command
(the actuators) are refused unless --force-actuator gives a reason. Every write attempt,
refused or done, is appended to a JSON-lines log (--log).

Exit status: 0 done, 1 the device or link failed (or a write read back differently),
2 bad command line or configuration, 3 refused.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from syncctl.cli.logs import quiet_library_logs
from syncctl.commission.guard import Refused, no_controller_treating, open_link
from syncctl.config import ConfigError, RegisterMapFile, RoomConfig, config_hash, load_room
from syncctl.devices import RemoteError, Signal, SignalMap
from syncctl.devices.signals import Table

log = logging.getLogger("syncctl.probe")

EXIT_OK, EXIT_DEVICE, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3
DEFAULT_LOG = "out/commissioning/probe-log.jsonl"
SLOTS = {"beam-gate": "beam_gate", "beam_gate": "beam_gate", "imaging": "imaging",
         "xray-imaging": "imaging"}
ACTUATORS = {"gate_command", "heartbeat", "prepare_command", "expose_command"}
"""Registers that move the beam or the tube (or keep a watchdog fed): --force-actuator."""
TABLES: tuple[Table, ...] = ("holding", "input", "coil", "discrete")


class Usage(Exception):
    """A bad name, address, table or value."""


@dataclass(frozen=True)
class Target:
    table: Table
    address: int
    count: int
    signal: Signal | None
    """Set when the target was given by name."""


def _regmap(config: RoomConfig, slot: str) -> RegisterMapFile:
    return config.beam_gate_map if slot == "beam_gate" else config.imaging_map


def resolve(signals: SignalMap, regmap: RegisterMapFile, text: str, table: str | None,
            count: int | None) -> Target:
    """A name of the map, or an address (its table from --table, else from the map when the
    address is mapped in exactly one table)."""
    if text in signals:
        signal = signals[text]
        if table is not None and table != signal.table:
            raise Usage(f"{text} is in the {signal.table} table, not {table}")
        return Target(signal.table, signal.address, count or signal.width, signal)
    try:
        address = int(text, 0)
    except ValueError:
        raise Usage(f"{text!r} is neither a signal of the {regmap.device} map nor an address; "
                    f"signals: {', '.join(regmap.registers)}") from None
    if not 0 <= address <= 0xFFFF:
        raise Usage(f"address {address} outside 0..65535")
    if table is None:
        found = sorted({reg.table for reg in regmap.registers.values()
                        if reg.address <= address <= reg.last_address})
        if len(found) != 1:
            where = f"mapped in {', '.join(found)}" if found else "not mapped"
            raise Usage(f"address {address} is {where}: say which table with --table")
        table = found[0]
    assert table in TABLES
    return Target(table, address, count or 1, None)


def covered(signals: SignalMap, regmap: RegisterMapFile, table: str, first: int,
            last: int) -> list[Signal]:
    """The mapped signals lying wholly inside ``first..last`` of ``table``."""
    return [signals[name] for name, reg in sorted(regmap.registers.items(),
                                                  key=lambda item: item[1].address)
            if reg.table == table and first <= reg.address and reg.last_address <= last]


def touched(signals: SignalMap, regmap: RegisterMapFile, table: str, first: int,
            last: int) -> list[Signal]:
    """The mapped signals that share any address with ``first..last`` of ``table``."""
    return [signals[name] for name, reg in regmap.registers.items()
            if reg.table == table and reg.address <= last and first <= reg.last_address]


def describe_value(signal: Signal, words: list[int]) -> str:
    reg = signal.reg
    try:
        if reg.type == "bitfield":
            raw = signal.raw(words)
            on = [name for name, is_on in signal.bits(words).items() if is_on]
            return f"0x{raw:04X} ({' '.join(on) or 'no named bit set'})"
        value = signal.number(words)
    except RemoteError as exc:
        return f"does not decode: {exc}"
    unit = f" {reg.unit}" if reg.unit else ""
    shown = f"{value:g}" if reg.scale != 1 else str(signal.raw(words))
    return f"{shown}{unit}"


async def do_read(config: RoomConfig, slot: str, args: argparse.Namespace) -> int:
    regmap = _regmap(config, slot)
    signals = SignalMap(regmap)
    target = resolve(signals, regmap, args.target, args.table, args.count)
    transport = getattr(config.room.devices, slot).transport
    if transport.kind == "modbus-rtu" and slot == "imaging":
        # One master per serial line: make sure no controller is using it.
        for fact in await no_controller_treating(config, need_imaging=False, strict=False):
            log.info("before reading the serial line: %s", fact)
    link = await open_link(config, slot)
    try:
        words = await link.read(target.table, target.address, target.count)
    finally:
        await link.close()
    last = target.address + target.count - 1
    print(f"{regmap.device} {target.table} {target.address}..{last} "
          f"({transport.describe()}):")
    for offset, word in enumerate(words):
        print(f"  {target.table} {target.address + offset:5d}  {word:5d}  0x{word:04X}")
    for signal in covered(signals, regmap, target.table, target.address, last):
        offset = signal.address - target.address
        print(f"  {signal.name} = {describe_value(signal, words[offset:offset + signal.width])}")
    return EXIT_OK


def parse_value(text: str) -> float:
    try:
        return float(int(text, 0)) if text.lower().startswith("0x") else float(text)
    except ValueError:
        raise Usage(f"{text!r} is not a number") from None


def append_log(path: Path, entry: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")


async def do_write(config: RoomConfig, slot: str, args: argparse.Namespace,
                   entry: dict[str, Any]) -> int:
    regmap = _regmap(config, slot)
    signals = SignalMap(regmap)
    target = resolve(signals, regmap, args.target, args.table, None)
    value = parse_value(args.value)
    if target.signal is not None:
        words = target.signal.encode(value)  # ValueError: read-only or does not fit
    else:
        if target.table not in ("holding", "coil"):
            raise Usage(f"the {target.table} table is read-only")
        if not value.is_integer() or not 0 <= value <= 0xFFFF:
            raise Usage(f"a raw write takes one 16-bit word (0..65535), got {args.value}")
        words = [int(value)]
    hit = touched(signals, regmap, target.table, target.address,
                  target.address + len(words) - 1)
    entry.update({"table": target.table, "address": target.address, "words": words,
                  "signals": [s.name for s in hit]})
    if config.room.room.clinical_mode:
        raise Refused("room.clinical_mode is true: no engineering writes in a clinical room")
    if not args.engineering:
        raise Refused("writes need an engineering session: --engineering (and the room SAFE)")
    actuators = sorted(ACTUATORS & {s.name for s in hit})
    if actuators:
        if not (args.force_actuator or "").strip():
            raise Refused(f"{', '.join(actuators)} moves an actuator or feeds a watchdog: "
                          "--force-actuator REASON is required")
        log.warning("forced actuator write %s by %s: %s", ", ".join(actuators), entry["user"],
                    args.force_actuator)
    entry["check"] = await no_controller_treating(config, need_imaging=True)
    link = await open_link(config, slot)
    try:
        await link.write(target.table, target.address, words)
        back = await link.read(target.table, target.address, len(words))
    finally:
        await link.close()
    entry["read_back"] = back
    name = target.signal.name if target.signal is not None else f"address {target.address}"
    shown = (describe_value(target.signal, back) if target.signal is not None else str(back))
    print(f"wrote {regmap.device} {name} = {args.value} ({target.table} {target.address} "
          f"<- {words}); reads back {shown}")
    if back != words:
        print("warning: the read-back differs from what was written", file=sys.stderr)
        entry["outcome"] = "read back differs"
        return EXIT_DEVICE
    entry["outcome"] = "written"
    return EXIT_OK


def _handle(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    quiet_library_logs(False)
    try:
        config = load_room(Path(args.config))
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"error: {issue}", file=sys.stderr)
        return EXIT_USAGE
    slot = SLOTS[args.device]
    entry: dict[str, Any] = {}
    if args.action == "write":
        entry = {"utc": datetime.now(UTC).isoformat(timespec="milliseconds"),
                 "user": getpass.getuser(), "room": config.room.room.id,
                 "config": str(config.path.resolve()), "config_hash": config_hash(config),
                 "device": slot, "target": args.target, "value": args.value,
                 "engineering": args.engineering, "force_actuator": args.force_actuator}
    code = EXIT_DEVICE
    try:
        if args.action == "read":
            code = asyncio.run(do_read(config, slot, args))
        else:
            code = asyncio.run(do_write(config, slot, args, entry))
    except Refused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        entry["outcome"] = f"refused: {exc}"
        code = EXIT_REFUSED
    except (Usage, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        entry["outcome"] = f"error: {exc}"
        code = EXIT_USAGE
    except (RemoteError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        entry["outcome"] = f"device error: {exc}"
        code = EXIT_DEVICE
    if args.action == "write":
        append_log(Path(args.log), entry)
    return code


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("probe", help="read or write one device register by name or address",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="room configuration (YAML)")
    p.add_argument("device", choices=sorted(SLOTS), metavar="DEVICE",
                   help="beam-gate or imaging")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    read = actions.add_parser("read", help="read by name or address")
    read.add_argument("target", metavar="NAME|ADDRESS")
    read.add_argument("--count", type=int, choices=range(1, 126), metavar="N",
                      help="registers to read from the start address (1..125)")
    read.add_argument("--table", choices=TABLES, help="table of a raw address")
    write = actions.add_parser("write", help="write by name or address (engineering only)")
    write.add_argument("target", metavar="NAME|ADDRESS")
    write.add_argument("value", metavar="VALUE")
    write.add_argument("--table", choices=("holding", "coil"), help="table of a raw address")
    write.add_argument("--engineering", action="store_true",
                       help="this is an engineering session with the room in SAFE")
    write.add_argument("--force-actuator", metavar="REASON",
                       help="allow gate_command/heartbeat/prepare/expose, for this reason")
    write.add_argument("--log", default=DEFAULT_LOG,
                       help=f"append every write attempt here (default {DEFAULT_LOG})")
    p.set_defaults(handler=_handle)
