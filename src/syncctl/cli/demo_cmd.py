"""`syncctl demo`: one target-gated fraction against the simulated room, end to end.

The simulators run as a separate process (`python -m firmware_sim`): the beam-gate controller
on Modbus TCP over loopback, the imaging controller on Modbus RTU over a pty. The controller
runs here with the real device clients, a scripted operator (select the plan, image for
set-up, arm, beam on) and a live progress line. The summary is judged from the simulators'
ground truth: where the target really was when dose was delivered, and when the gate really
moved.

The room service publishes the room on the bus the config names (in-process for the simulated
room; docs/bus.md) and, with `--audit PATH`, records the fraction into that audit trail.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncctl.analysis.truth import (
    Truth,
    beam_on_time,
    dose_outside_window,
    gating_latencies,
    percentiles,
    read_truth_rows,
    sync_latencies,
    truth_from_rows,
)
from syncctl.audit import AuditFileError, AuditTrail
from syncctl.bus import Bus, CredentialsError, UsersFileError
from syncctl.cli.faults import FAULTS, Fault, inject, parse_fault
from syncctl.cli.fraction import (
    EXIT_USAGE,
    exit_code,
    load_room_and_plan,
    print_summary,
    write_json,
)
from syncctl.cli.logs import quiet_library_logs
from syncctl.cli.operator import ScriptedOperator
from syncctl.cli.progress import Progress
from syncctl.cli.run_cmd import room_users
from syncctl.cli.scheduling import (
    add_rt_priority_option,
    console_thread_block,
    rt_priority,
    rt_priority_block,
)
from syncctl.cli.simproc import SIM_RT_PRIORITY, SimulatorError, start_simulators
from syncctl.config import RoomConfig, config_hash
from syncctl.config.backdoor import load_backdoor_layout
from syncctl.controller import Controller, ControllerReport, step_interval_s
from syncctl.controller.loop import run as run_loop
from syncctl.core import EventKind, Mode
from syncctl.devices import BeamGateClient, ImagingClient
from syncctl.recording import FractionRecorder, default_path, header_for, read_recording
from syncctl.service import RoomService, ServiceSettings, make_bus

EXIT_ERROR = 1
"""The simulators could not be started (exit codes 0, 2, 3: see syncctl.cli.fraction)."""
TAIL_S = 0.5
"""Keep running this long after the fraction ends, so the truth records the safe state."""
CONSOLE_MAX_S = 8 * 3600.0
"""With --console the human ends the run; this bounds a forgotten session."""
CONSOLE_SWITCH_INTERVAL_S = 0.0005


@dataclass
class Injection:
    fault: Fault
    name: str
    at_s: float


def parse_injection(text: str) -> Injection:
    name, sep, at = text.rpartition("@")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected FAULT@SECONDS, got {text!r}")
    fault = parse_fault(name)
    try:
        at_s = float(at)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{at!r} is not a number of seconds") from None
    if not 0 <= at_s < 3600:
        raise argparse.ArgumentTypeError("the injection time must be 0..3600 s")
    return Injection(fault, name, at_s)


@dataclass
class Recorder:
    """Remembers what the summary needs from the controller's reports."""

    treating_started: float | None = None
    ended_at: float | None = None
    final_mode: Mode = Mode.OFFLINE
    trips: list[dict[str, Any]] = field(default_factory=list)
    dose_baseline_mu: float | None = None
    mas_baseline: float | None = None
    last_mas: float = 0.0
    started_at: float = field(default_factory=time.monotonic)

    def __call__(self, report: ControllerReport) -> None:
        state = report.state
        if state.plan is not None:
            self.dose_baseline_mu = state.plan.dose_baseline_mu
            self.mas_baseline = state.plan.mas_baseline
        status = report.snapshot.imaging.status
        if status is not None:
            self.last_mas = status.cumulative_mas
        for event in report.outputs.events:
            if event.kind is EventKind.TRIP:
                self.trips.append({"at_s": round(report.now - self.started_at, 3),
                                   "rule_ids": list(event.rule_ids)})
            if event.kind is EventKind.MODE_CHANGED:
                if event.mode_to is Mode.TREATING and self.treating_started is None:
                    self.treating_started = report.now
                if event.mode_to in (Mode.COMPLETE, Mode.FAULT) and self.ended_at is None:
                    self.ended_at = report.now
        self.final_mode = state.mode


async def _inject_later(injection: Injection, layout: Any, backdoor: dict[str, Any],
                        t0: float, say: Any) -> None:
    await asyncio.sleep(max(0.0, t0 + injection.at_s - time.monotonic()))
    where = backdoor[injection.fault.slot]
    await inject(layout, where["host"], int(where["port"]), injection.fault)
    say(f"inject {injection.name}: {injection.fault.what}")


def recording_path(args: argparse.Namespace, config: RoomConfig, plan_id: str) -> Path | None:
    """Where to record the fraction: a file named by --record, or a new file in the directory
    it names (default ``recordings/``); None with --no-record."""
    if args.no_record:
        return None
    target = Path(args.record)
    if target.name.endswith(".gz"):
        return target
    return default_path(target, config.room.room.id, plan_id)


async def run_demo(config: RoomConfig, args: argparse.Namespace, workdir: Path,
                   bus: Bus | None = None,
                   console: Callable[[Bus, asyncio.Event], Coroutine[Any, Any, None]] | None = None,
                   ) -> dict[str, Any]:
    """One fraction; ``bus``: share this bus (e.g. an InProcessBus with a console) instead of
    the one the config names. ``console``: a human drives over that bus instead of the
    scripted operator; the run ends when the console sets the stop event it is given (and the
    console must return once that event is set).

    The calling thread runs the control loop under ``--rt-priority`` (real-time scheduling,
    docs/controller.md) for the run, and gets its previous scheduling back afterwards."""
    with rt_priority_block(args) as scheduling:
        summary = await _fraction(config, args, workdir, bus, console)
    summary["scheduling"] = scheduling.describe()
    return summary


async def _fraction(config: RoomConfig, args: argparse.Namespace, workdir: Path,
                    bus: Bus | None,
                    console: Callable[[Bus, asyncio.Event], Coroutine[Any, Any, None]] | None,
                    ) -> dict[str, Any]:
    params = config.to_core_params()
    plan_id = args.plan or params.plans[0].plan_id
    plan = params.plan(plan_id)
    assert plan is not None
    truth_dir = workdir / "truth"
    sim_log = (workdir / "simulators.log").open("w", encoding="utf-8")
    sim = start_simulators(config.path, [
        "--seed", str(args.seed), "--truth", str(truth_dir), "--beam-gate-port", "0",
        "--imaging-link", str(workdir / "xic"), "--backdoor-port", "0",
        "--rt-priority", str(args.sim_rt_priority),
    ], stderr=sim_log)
    beam_gate = imaging = None
    recording: FractionRecorder | None = None
    recorder = Recorder()
    progress = Progress(plan.planned_dose_mu, enabled=not args.quiet and console is None)
    room_bus: Bus | None = None
    trail: AuditTrail | None = None
    service: RoomService | None = None
    try:
        room_bus = make_bus(config) if bus is None else bus
        if getattr(args, "audit", None):
            trail = AuditTrail(args.audit, room=config.room.room.id)
        runtime = config.with_endpoints(sim.ready["beam_gate"], sim.ready["imaging"])
        devices, limits = runtime.room.devices, runtime.room.limits
        beam_gate, imaging = BeamGateClient(runtime), ImagingClient(runtime)
        controller = Controller(
            params, beam_gate, imaging,
            period_s=devices.beam_gate.poll_period_ms / 1000,
            imaging_period_s=devices.imaging.poll_period_ms / 1000,
            deadline_s=limits.cycle_deadline_ms / 1000,
            max_consecutive_overruns=limits.max_consecutive_overruns,
            max_step_interval_s=step_interval_s(params),
            frame_period_s=1.0 / devices.imaging.frame_rate_fps,
        )
        record_to = recording_path(args, config, plan_id)
        if record_to is not None:
            recording = FractionRecorder(record_to, header_for(
                config, controller.state, source="demo", plan_id=plan_id, seed=args.seed))
        service = RoomService(controller, room_bus, room_users(config),
                              ServiceSettings.from_config(config), audit=trail,
                              recorder=recording)
        if service.audit_listener is not None:
            service.audit_listener.record_config(config)
        stop = asyncio.Event()
        operator = ScriptedOperator(controller, plan_id)

        def watch(report: ControllerReport) -> None:
            if recorder.ended_at is not None and report.now - recorder.ended_at >= TAIL_S:
                stop.set()
            if operator.gave_up:
                progress._say(f"operator gave up: {operator.gave_up}")
                stop.set()

        if console is None:
            controller.listeners += [recorder, operator, progress, watch]
        else:  # the human drives and decides when the run ends (quitting the console)
            controller.listeners += [recorder]
        layout = load_backdoor_layout()
        t0 = recorder.started_at
        injectors = [asyncio.create_task(_inject_later(i, layout, sim.ready["backdoor"], t0,
                                                       progress._say))
                     for i in args.inject]
        loop = asyncio.get_running_loop()
        # (in the main thread only: with --console the room runs in a worker thread)
        signals = ((signal.SIGINT, signal.SIGTERM)
                   if threading.current_thread() is threading.main_thread() else ())
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        timer = loop.call_later(args.max_seconds, stop.set)
        cpu0 = time.process_time()
        wall0 = time.monotonic()
        await service.start()
        human = None if console is None else asyncio.create_task(console(room_bus, stop))
        try:
            safe = await controller.run(stop)
        finally:
            stop.set()
            if human is not None:
                for failure in await asyncio.gather(human, return_exceptions=True):
                    if isinstance(failure, Exception):
                        logging.getLogger("syncctl.demo").error("the console failed: %r",
                                                                failure)
            await service.stop()
            timer.cancel()
            for sig in signals:
                loop.remove_signal_handler(sig)
            for task in injectors:
                task.cancel()
            await asyncio.gather(*injectors, return_exceptions=True)
        cpu_s = time.process_time() - cpu0
        wall_s = time.monotonic() - wall0
        progress.finish()
    except BaseException:
        if recording is not None:
            recording.close()  # keep what was recorded of a run that failed
        if trail is not None:
            trail.close()
        raise
    finally:
        for client in (beam_gate, imaging):
            if client is not None:
                await client.close()
        if room_bus is not None and bus is None:
            await room_bus.close()
        sim.stop()
        sim_log.close()
    truth_rows = read_truth_rows(truth_dir)
    summary = summarise(config, plan_id, recorder, truth_from_rows(truth_rows), safe, controller,
                        cpu_s, wall_s, args.seed)
    if console is None:  # trips and device faults the operator reset before the beam
        summary["setup_faults_reset"] = operator.setup_faults
    if recording is not None:
        for device, rows in truth_rows.items():
            for row in rows:
                recording.add({"type": "truth", "device": device, "row": row})
        recording.add({"type": "summary", "figures": summary})
        stats = recording.close()
        summary["recording"] = str(stats.path)
        summary["recording_dropped_steps"] = stats.dropped
    if trail is not None and service is not None and service.audit_listener is not None:
        service.audit_listener.record_treatment(summary)
        trail.close()
        summary["audit_trail"] = str(trail.path)
    return summary


def summarise(config: RoomConfig, plan_id: str, rec: Recorder, truth: Truth, safe: bool,
              controller: Controller, cpu_s: float, wall_s: float, seed: int) -> dict[str, Any]:
    params = config.to_core_params()
    plan = params.plan(plan_id)
    assert plan is not None
    start = rec.treating_started or (truth.gate[-1].t if truth.gate else 0.0)
    end = rec.ended_at or (truth.gate[-1].t if truth.gate else start)
    in_fraction = [g for g in truth.gate if g.t >= start - 0.01]
    last_dose = truth.gate[-1].dose_mu if truth.gate else 0.0
    delivered = last_dose - (rec.dose_baseline_mu or 0.0)
    on_s, openings = beam_on_time([g for g in in_fraction if g.t <= end + TAIL_S])
    outside, unknown = dose_outside_window(truth.gate, truth.target, params.window, plan.target)
    gating = gating_latencies(truth.gate, truth.target, params.window, plan.target, start, end)
    sync = sync_latencies(truth.frame_times, truth.command_times, start, end,
                          params.max_frame_age_s)
    treatment_s = max(0.0, end - start) if rec.treating_started else 0.0

    def ms(values: list[float]) -> dict[str, float | int | None]:
        return percentiles([v * 1000 for v in values]).as_dict()

    stats = controller.stats
    return {
        "final_state": rec.final_mode.name,
        "plan_id": plan_id,
        "planned_dose_mu": plan.planned_dose_mu,
        "delivered_dose_mu": round(delivered, 3),
        "treatment_time_s": round(treatment_s, 3),
        "beam_on_time_s": round(on_s, 3),
        "gate_open_count": openings,
        "duty_cycle": round(on_s / treatment_s, 3) if treatment_s else 0.0,
        "imaging_mas": round(rec.last_mas - (rec.mas_baseline or 0.0), 2),
        "dose_outside_window_mu": round(outside, 4),
        "dose_position_unknown_mu": round(unknown, 4),
        "gating_latency_ms": ms(gating),
        "sync_latency_ms": ms(sync),
        "trips": rec.trips,
        "safe_state_confirmed": safe,
        "controller": {
            "cycles": stats.cycles,
            "steps": stats.steps,
            "imaging_polls": stats.imaging_polls,
            "frame_wakes": stats.frame_wakes,
            "cycle_p50_ms": round(stats.percentile_ms(0.50), 3),
            "cycle_p99_ms": round(stats.percentile_ms(0.99), 3),
            "overruns": stats.overruns,
            "failed_writes": stats.failed_writes,
            "cpu_percent_of_one_core": round(100 * cpu_s / wall_s, 1) if wall_s else 0.0,
        },
        "seed": seed,
        "config_hash": config_hash(config),
    }


async def _with_console(config: RoomConfig, args: argparse.Namespace, workdir: Path
                        ) -> dict[str, Any]:
    """`--console`: the room (run_demo over its own InProcessBus) in a worker thread with its
    own event loop, so that drawing the console never stalls the control cycle; the console in
    this thread over a bridge to that bus (syncctl.console.bridge, docs/console.md)."""
    from syncctl.bus import InProcessBus
    from syncctl.cli.console_cmd import run_beside
    from syncctl.console.bridge import LoopBridgeBus
    from syncctl.service import room_topics

    bridge = LoopBridgeBus(room_topics(config))

    async def room_side() -> dict[str, Any]:
        bus = InProcessBus(room_topics(config))
        try:
            return await run_demo(config, args, workdir, bus=bus, console=bridge.serve)
        finally:
            await bus.close()

    # The room's thread waits at most this long for the interpreter lock when it wakes up
    # (default 5 ms: too long next to a 1 ms cycle while the console draws).
    sys.setswitchinterval(CONSOLE_SWITCH_INTERVAL_S)
    with console_thread_block(args):
        room = asyncio.ensure_future(asyncio.to_thread(run_loop, room_side()))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, bridge.request_stop)
        try:
            await run_beside(bridge, config, room)
        finally:
            bridge.request_stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await asyncio.wait([room], timeout=60)
    return await room


def _run(args: argparse.Namespace) -> int:
    if args.max_seconds is None:
        args.max_seconds = CONSOLE_MAX_S if args.console else 300.0
    if args.review and args.no_record:
        print("error: --review needs the recording: drop --no-record", file=sys.stderr)
        return EXIT_USAGE
    loaded = load_room_and_plan(args.config, args.plan)
    if loaded is None:
        return EXIT_USAGE
    config, args.plan = loaded
    if not args.quiet:
        print(f"syncctl demo: simulated room {config.room.room.id} "
              f"(config {args.config}, hash {config_hash(config)}, seed {args.seed})")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(name)s: %(levelname)s: %(message)s")
    quiet_library_logs(args.verbose)
    with tempfile.TemporaryDirectory(prefix="syncctl-demo-") as tmp:
        workdir = Path(args.keep) if args.keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            if args.console:
                summary = run_loop(_with_console(config, args, workdir))
            else:
                summary = run_loop(run_demo(config, args, workdir))
        except SimulatorError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        except (UsersFileError, CredentialsError, AuditFileError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.review and "recording" in summary:
        from syncctl.analysis.review import write_review  # matplotlib: only when asked

        report = write_review(read_recording(Path(summary["recording"])), Path(args.review))
        summary["review"] = str(report)
    if not args.quiet:
        print_summary(summary)
    if args.json:
        write_json(args.json, summary)
    return exit_code(summary)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run one gated fraction against the simulated room (simulators, Modbus, controller)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default="configs/room-sim.yaml", help="room configuration")
    p.add_argument("--plan", help="plan id (default: the first plan in the config)")
    p.add_argument("--seed", type=int, default=1, help="seed of the breathing motion")
    p.add_argument("--inject", type=parse_injection, action="append", default=[],
                   metavar="FAULT@SECONDS",
                   help="inject a fault this many seconds after the start; FAULT is one of "
                   f"{', '.join(FAULTS)}, or SLOT.REGISTER=VALUE of the backdoor")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop (safely) after this long (default 300 s; with --console 8 h)")
    p.add_argument("--console", action="store_true",
                   help="drive the room yourself from the operator console (Textual) in this "
                   "process instead of the scripted operator; quitting the console ends the "
                   "run safely (docs/console.md)")
    p.add_argument("--json", help="also write the summary as JSON to this path")
    p.add_argument("--keep", metavar="DIR",
                   help="keep the ground truth and simulator log in DIR")
    p.add_argument("--record", default="recordings", metavar="DIR|FILE",
                   help="record the fraction into a new file in DIR, or into FILE when it ends "
                   "in .gz (default: recordings/); see `syncctl replay` and `syncctl review`")
    p.add_argument("--no-record", action="store_true", help="do not record the fraction")
    p.add_argument("--audit", metavar="PATH",
                   help="record the fraction into this audit trail (see `syncctl audit`)")
    p.add_argument("--review", metavar="DIR",
                   help="write the fraction's review report (HTML and plots) into DIR")
    add_rt_priority_option(p)
    p.add_argument("--sim-rt-priority", type=rt_priority, default=SIM_RT_PRIORITY, metavar="N",
                   help="SCHED_FIFO priority of the simulators, which "
                   f"stand in for firmware (default {SIM_RT_PRIORITY}; 0: ordinary scheduling)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--verbose", action="store_true",
                   help="log the controller's warnings (cycle overruns, failed writes)")
    p.set_defaults(handler=_run)
