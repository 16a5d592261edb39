"""`syncctl commission`: bring up a room's devices and record how they behave.

    syncctl commission --config PATH --engineer NAME [--report DIR] [--rehearse]
                       [--backdoor HOST:PORT] [--steps a,b,...] [--yes]

Steps, in order: connect, identity, registers, settings, door, estop, watchdog, gate_latency,
imaging (docs/commissioning.md). Prompts go to stdout and answers come from stdin. --yes
answers the confirmations (gate may open, X-ray may expose) but never a person step.
--rehearse runs against the simulators (`syncctl sim`): the gate and X-ray steps run without
confirmation, and the tool performs the person steps itself through the simulators'
backdoor (and says so in the report).

Exit status: 0 when every step passed (or was only recorded, or skipped with a reason),
1 when a step failed, 2 for a bad command line or configuration (or a clinical room), 3 when
a controller is seen running (heartbeat moving, gate open or X-ray exposing: see
syncctl.commission.guard).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymodbus.client import AsyncModbusTcpClient

from syncctl import __version__
from syncctl.cli.logs import quiet_library_logs
from syncctl.commission import (
    STEP_NAMES,
    Commissioning,
    Options,
    Rehearsal,
    build_report,
    run_passed,
    write_report,
)
from syncctl.commission.guard import Refused, no_controller_treating
from syncctl.commission.prompts import LineSource, Prompter
from syncctl.commission.report import report_stem
from syncctl.config import ConfigError, RoomConfig, config_hash, load_room
from syncctl.config.backdoor import load_backdoor_layout

EXIT_PASSED, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3
DEFAULT_REPORT_DIR = "out/commissioning"


def parse_steps(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in STEP_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown step(s) {', '.join(unknown) or '(none given)'}; "
            f"known: {', '.join(STEP_NAMES)}")
    return names


def parse_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


async def backdoor_answers(host: str, port: int, unit: int) -> str | None:
    """None when the simulators' backdoor answers a read, else why not."""
    client = AsyncModbusTcpClient(host, port=port, timeout=2.0, retries=0)
    try:
        if not await client.connect():
            return f"the simulators' backdoor {host}:{port} does not answer"
        response = await client.read_holding_registers(0, count=1, device_id=unit)
        if response.isError():
            return f"the backdoor {host}:{port} answered {response}"
        return None
    finally:
        client.close()


async def run_commissioning(config: RoomConfig, args: argparse.Namespace) -> int:
    started = datetime.now(UTC)
    lines = LineSource(sys.stdin)
    lines.start()
    prompter = Prompter(sys.stdout, lines, assume_yes=args.yes)
    rehearsal = None
    notes: list[str] = []
    if args.rehearse:
        layout = load_backdoor_layout()
        host, port = args.backdoor
        problem = await backdoor_answers(host, port, layout.unit)
        if problem is not None:
            lines.close()
            print(f"error: --rehearse: {problem} (start `syncctl sim --config "
                  f"{args.config}` first)", file=sys.stderr)
            return EXIT_USAGE
        rehearsal = Rehearsal(layout, host, port)
        notes.append(f"REHEARSAL against the simulators: the gate and X-ray steps ran without "
                     f"confirmation, and the person steps (door, e-stop) were performed by the "
                     f"tool through the simulators' backdoor at {host}:{port}; their times are "
                     f"the simulated devices' reaction, not a person's.")
    options = Options(steps=args.steps, rehearse=args.rehearse, gate_cycles=args.gate_cycles,
                      imaging_s=args.imaging_seconds, person_timeout_s=args.person_timeout)
    digest = config_hash(config)
    prompter.say(f"syncctl commission: room {config.room.room.id} (config {config.path}, "
                 f"hash {digest}), engineer {args.engineer}, "
                 f"{'REHEARSAL against the simulators' if args.rehearse else 'hardware'}")
    try:
        for fact in await no_controller_treating(config, need_imaging=True, strict=False):
            prompter.say(f"no controller seen: {fact}")
            notes.append(f"before the run, no controller seen: {fact}")
    except Refused as exc:
        lines.close()
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    t0 = time.monotonic()
    try:
        results = await Commissioning(config, prompter, options, rehearsal).run()
    finally:
        lines.close()
    finished = datetime.now(UTC)
    meta: dict[str, Any] = {
        "room_id": config.room.room.id,
        "room_name": config.room.room.name,
        "engineer": args.engineer,
        "started_utc": started.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "finished_utc": finished.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "duration_s": round(time.monotonic() - t0, 3),
        "config_path": str(config.path.resolve()),
        "config_hash": digest,
        "software_version": f"syncctl {__version__}",
        "host": socket.gethostname(),
        "mode": "rehearsal (simulators)" if args.rehearse else "hardware",
        "command": "syncctl " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "options": {"steps": list(args.steps), "gate_cycles": args.gate_cycles,
                    "imaging_seconds": args.imaging_seconds,
                    "person_timeout_s": args.person_timeout, "yes": args.yes},
        "notes": notes,
    }
    report = build_report(results=results, meta=meta)
    stem = report_stem(config.room.room.id, digest, started.strftime("%Y%m%dT%H%M%SZ"))
    json_path, html_path = write_report(report, Path(args.report), stem)
    print()
    print(f"{'step':14} {'status':9} duration")
    for r in results:
        reason = f"  ({r.skip_reason})" if r.skip_reason else ""
        print(f"{r.step:14} {r.status.value.upper():9} {r.duration_s:6.2f} s{reason}")
    print(f"\nresult: {report['result']}")
    print(f"report: {html_path}")
    print(f"        {json_path}")
    return EXIT_PASSED if run_passed(results) else EXIT_FAILED


def _handle(args: argparse.Namespace) -> int:
    if not args.engineer.strip():
        print("error: --engineer must name who runs the commissioning", file=sys.stderr)
        return EXIT_USAGE
    if not (0.5 <= args.imaging_seconds <= 60 and 1 <= args.person_timeout <= 3600):
        print("error: --imaging-seconds must be 0.5..60 and --person-timeout 1..3600",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        config = load_room(Path(args.config))
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"error: {issue}", file=sys.stderr)
        return EXIT_USAGE
    if config.room.room.clinical_mode:
        print(f"error: {args.config}: room.clinical_mode is true; commissioning is engineering "
              "access and is refused in a clinical room", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    quiet_library_logs(args.verbose)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return asyncio.run(run_commissioning(config, args))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("commission", help="commission a room's devices; HTML+JSON report",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="room configuration (YAML)")
    p.add_argument("--engineer", required=True, help="who runs it (recorded in the report)")
    p.add_argument("--report", default=DEFAULT_REPORT_DIR,
                   help=f"directory for the report (default {DEFAULT_REPORT_DIR})")
    p.add_argument("--rehearse", action="store_true",
                   help="against the simulators: person steps through the backdoor")
    p.add_argument("--backdoor", type=parse_hostport, default=("127.0.0.1", 15099),
                   metavar="HOST:PORT",
                   help="the simulators' backdoor, with --rehearse (default 127.0.0.1:15099)")
    p.add_argument("--steps", type=parse_steps, default=STEP_NAMES,
                   help=f"comma-separated subset of: {','.join(STEP_NAMES)} (connect always "
                        "runs; the others are recorded as skipped)")
    p.add_argument("--yes", action="store_true",
                   help="answer yes to the confirmations (not to person steps)")
    p.add_argument("--gate-cycles", type=int, default=20, choices=range(1, 1001),
                   metavar="N", help="open/close cycles of the gate latency step (default 20)")
    p.add_argument("--imaging-seconds", type=float, default=3.0,
                   help="exposure observed by the imaging step (default 3 s)")
    p.add_argument("--person-timeout", type=float, default=120.0,
                   help="how long a person step waits for the change (default 120 s)")
    p.add_argument("--verbose", action="store_true", help="log the device layer to stderr")
    p.set_defaults(handler=_handle)
