"""`syncctl run --config PATH`: the controller against whatever the config points to.

Simulators (`syncctl sim`) or bench hardware. The room service publishes the room on the bus
the config names (in-process when `mqtt.enabled` is false, else MQTT; docs/bus.md), takes
commands from it (operators logged in against the users file) and writes the audit trail
(`--audit`, default `audit/<room>.sqlite`).

Commands are also read from standard input, one per line, as a local operator (`--operator`)
with the role given by `--role` (default operator), through the same role checks:

    select PLAN | imaging on | imaging off | arm | beam on | pause | resume | abort | ack |
    reset | status | quit

Events (mode changes, trips, refusals with their reasons) are printed as they happen.
SIGINT/SIGTERM or `quit`: the gate is closed and the X-ray stopped, verified by readback; exit
0 when confirmed, 1 when not; 2 for a bad configuration, users or credentials file.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from syncctl.audit import AuditFileError, AuditTrail
from syncctl.bus import ROLES, Ack, Bus, CredentialsError, Users, UsersFileError
from syncctl.cli.logs import quiet_library_logs
from syncctl.cli.scheduling import add_rt_priority_option, apply_rt_priority
from syncctl.config import ConfigError, RoomConfig, config_hash, load_room
from syncctl.controller import Controller, ControllerReport, step_interval_s
from syncctl.controller.loop import run as run_loop
from syncctl.core import Command, CommandKind, EventKind
from syncctl.devices import BeamGateClient, ImagingClient
from syncctl.recording import FractionRecorder, default_path, header_for
from syncctl.service import RoomService, ServiceSettings, load_room_users, make_bus

WORDS = {
    "imaging on": CommandKind.START_IMAGING,
    "imaging off": CommandKind.STOP_IMAGING,
    "arm": CommandKind.ARM,
    "beam on": CommandKind.BEAM_ON,
    "pause": CommandKind.PAUSE,
    "resume": CommandKind.RESUME,
    "abort": CommandKind.ABORT,
    "ack": CommandKind.ACKNOWLEDGE,
    "acknowledge": CommandKind.ACKNOWLEDGE,
    "reset": CommandKind.RESET,
}


def parse_command(line: str, operator: str) -> Command | str | None:
    """A Command, the words "status"/"quit", or None for an unknown line."""
    words = " ".join(line.strip().lower().split())
    if words in ("status", "quit"):
        return words
    if words.startswith("select "):
        return Command(CommandKind.SELECT_PLAN, operator, line.strip().split(maxsplit=1)[1])
    kind = WORDS.get(words)
    return Command(kind, operator) if kind is not None else None


def describe(report: ControllerReport) -> str:
    out, state = report.outputs, report.state
    beam = "GRANTED" if out.beam_permit.granted else "denied " + ",".join(
        out.beam_permit.denied_by)
    xray = "GRANTED" if out.xray_permit.granted else "denied " + ",".join(
        out.xray_permit.denied_by)
    plan = state.plan.plan.plan_id if state.plan is not None else "-"
    alarms = ", ".join(f"{a.rule_id}{'*' if a.latched else ''}" for a in out.alarms) or "none"
    return (f"mode {state.mode.name}  plan {plan}  gate {out.gate.value}  "
            f"X-ray {out.xray.value}\n  beam permit {beam}\n  X-ray permit {xray}\n"
            f"  alarms {alarms} (* latched)")


def room_users(config: RoomConfig) -> Users:
    """The room's users; a users file that is named but missing leaves nobody able to log in
    over the bus (said on stderr), a malformed one is an error (``UsersFileError``)."""
    name = config.room.users.file
    if name is not None and not (config.path.parent / name).exists():
        print(f"warning: users file {config.path.parent / name} not found: nobody can log in "
              "over the bus", file=sys.stderr, flush=True)
        return Users([])
    return load_room_users(config)


def audit_path(arg: str | None, config: RoomConfig) -> Path:
    """``--audit PATH``, or ``audit/<room>.sqlite`` in the working directory."""
    return Path(arg) if arg else Path("audit") / f"{config.room.room.id}.sqlite"


def describe_steps(controller: Controller) -> str:
    """How many cycles the core stepped in (the others: nothing but time moved), and how
    many ran early for a new frame."""
    s = controller.stats
    share = f" ({100 * s.steps / s.cycles:.1f} %)" if s.cycles else ""
    return (f"controller: {s.cycles} cycles, core stepped in {s.steps}{share}; "
            f"{s.imaging_polls} imaging polls, {s.frame_wakes} cycles run at once for a new frame")


def print_ack(ack: Ack) -> None:
    """What the core answers is printed as its event; the service's own refusals here."""
    if ack.result in ("unauthorised", "invalid"):
        print(f"{ack.command}: {ack.result}: {ack.reason}", flush=True)


async def _main(args: argparse.Namespace) -> int:
    config = load_room(Path(args.config))
    users = room_users(config)
    bus = make_bus(config)
    trail_path = audit_path(args.audit, config)
    trail_path.parent.mkdir(parents=True, exist_ok=True)
    trail = AuditTrail(trail_path, room=config.room.room.id)
    try:
        return await _run_room(args, config, users, bus, trail)
    finally:
        await bus.close()
        trail.close()
        print(f"audit trail {trail_path} (head seq {trail.head[0]})", flush=True)


async def _run_room(args: argparse.Namespace, config: RoomConfig, users: Users, bus: Bus,
                    trail: AuditTrail) -> int:
    params = config.to_core_params()
    devices, limits = config.room.devices, config.room.limits
    beam_gate, imaging = BeamGateClient(config), ImagingClient(config)
    controller = Controller(
        params, beam_gate, imaging,
        period_s=devices.beam_gate.poll_period_ms / 1000,
        imaging_period_s=devices.imaging.poll_period_ms / 1000,
        deadline_s=limits.cycle_deadline_ms / 1000,
        max_consecutive_overruns=limits.max_consecutive_overruns,
        max_step_interval_s=step_interval_s(params),
        frame_period_s=1.0 / devices.imaging.frame_rate_fps,
    )
    recording: FractionRecorder | None = None
    if not args.no_record:
        target = Path(args.record)
        path = target if target.name.endswith(".gz") else default_path(
            target, config.room.room.id, "session")
        recording = FractionRecorder(path, header_for(config, controller.state, source="run"))
    service = RoomService(controller, bus, users, ServiceSettings.from_config(config),
                          audit=trail, recorder=recording)
    if service.audit_listener is not None:
        service.audit_listener.record_config(config)
    latest: list[ControllerReport] = []

    def show(report: ControllerReport) -> None:
        latest[:] = [report]
        for event in report.outputs.events:
            if event.kind in (EventKind.COMMAND_ACCEPTED,):
                continue
            ids = f" [{', '.join(event.rule_ids)}]" if event.rule_ids else ""
            print(f"{event.kind.value}: {event.message}{ids}", flush=True)

    controller.listeners.append(show)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    pending = bytearray()

    def on_input() -> None:
        # Read what the descriptor holds and act on every whole line: a buffered readline()
        # would keep the second of two lines that arrived together until more input came.
        chunk = os.read(sys.stdin.fileno(), 4096)
        if not chunk:  # end of input: keep running until a signal
            loop.remove_reader(sys.stdin.fileno())
            return
        pending.extend(chunk)
        for _ in range(1000):  # bounded: at most 4096 lines in one chunk
            end = pending.find(b"\n")
            if end < 0:
                break
            line = pending[:end].decode("utf-8", errors="replace")
            del pending[:end + 1]
            on_line(line)

    def on_line(line: str) -> None:
        parsed = parse_command(line, args.operator)
        if parsed == "quit":
            stop.set()
        elif parsed == "status":
            print(describe(latest[0]) if latest else "no cycle yet", flush=True)
        elif isinstance(parsed, Command):
            future = service.submit_local(args.operator, args.role, parsed.kind.value,
                                          plan_id=parsed.plan_id)
            future.add_done_callback(lambda f: print_ack(f.result()))
        elif line.strip():
            print(f"unknown command {line.strip()!r}; try: select PLAN, imaging on, arm, "
                  "beam on, pause, resume, abort, ack, reset, status, quit", flush=True)

    if not args.no_stdin:
        loop.add_reader(sys.stdin.fileno(), on_input)
    print(f"syncctl run: room {config.room.room.id}, config hash {config_hash(config)}; "
          f"beam gate {devices.beam_gate.transport.describe()}, "
          f"imaging {devices.imaging.transport.describe()}", flush=True)
    scheduling = apply_rt_priority(args)
    print(f"control loop: {scheduling.describe()}"
          + ("" if scheduling.realtime or args.rt_priority == 0
             else "; cycles may be delayed when the machine is busy"), flush=True)
    await service.start()
    try:
        safe = await controller.run(stop)
    finally:
        if not args.no_stdin:
            loop.remove_reader(sys.stdin.fileno())
        await service.stop()
        await beam_gate.close()
        await imaging.close()
        if recording is not None:
            stats = recording.close()
            print(f"recorded {stats.steps} steps to {stats.path}"
                  + (f" ({stats.dropped} DROPPED)" if stats.dropped else ""), flush=True)
    print(describe_steps(controller), flush=True)
    print("safe state confirmed by readback" if safe
          else "SAFE STATE NOT CONFIRMED: check the devices", flush=True)
    return 0 if safe else 1


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(name)s: %(levelname)s: %(message)s")
    quiet_library_logs(args.verbose)
    try:
        return run_loop(_main(args))
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"error: {issue}", file=sys.stderr)
        return 2
    except (UsersFileError, CredentialsError, AuditFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the controller against the configured devices",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="room configuration")
    p.add_argument("--operator", default="console",
                   help="operator id of the commands read from stdin")
    p.add_argument("--role", default="operator", choices=ROLES,
                   help="role of the stdin operator (default operator)")
    p.add_argument("--audit", metavar="PATH",
                   help="audit trail file (default audit/<room>.sqlite)")
    p.add_argument("--no-stdin", action="store_true", help="do not read commands from stdin")
    p.add_argument("--record", default="recordings", metavar="DIR|FILE",
                   help="record the session into a new file in DIR, or into FILE when it ends "
                   "in .gz (default: recordings/)")
    p.add_argument("--no-record", action="store_true", help="do not record the session")
    p.add_argument("--verbose", action="store_true", help="log controller warnings")
    add_rt_priority_option(p)
    p.set_defaults(handler=_run)
