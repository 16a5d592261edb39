"""`syncctl dryrun`: one gated fraction through the pure core against the scripted room.

No devices, no transports, no wall clock: simulated time advances in fixed steps, so a
fraction of a minute runs in seconds and the same seed gives the same result. It prints what
the core decided (mode changes, trips, refused commands, every gate change with the rules
that closed it) and a summary judged from the scripted room's ground truth.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from syncctl.cli.fraction import (
    EXIT_USAGE,
    exit_code,
    load_room_and_plan,
    print_summary,
    write_json,
)
from syncctl.config import config_hash
from syncctl.core import (
    Command,
    CommandKind,
    CoreParams,
    EventKind,
    GateCommand,
    Mode,
    Outputs,
    initial_state,
    step,
)
from syncctl.core.gating import inside_window
from syncctl.core.rules import RULES_BY_ID
from syncctl.scripted import FAULTS, Breathing, ScriptedRoom

STEP_S = 0.002
"""Simulated control period: 500 Hz is enough to show the decisions; the real controller
polls the beam gate at about 1 kHz."""


@dataclass
class Injection:
    fault: str
    at_s: float


def parse_injection(text: str) -> Injection:
    fault, sep, at = text.partition("@")
    if not sep or fault not in FAULTS:
        raise argparse.ArgumentTypeError(
            f"expected FAULT@SECONDS with FAULT one of {', '.join(FAULTS)}; got {text!r}"
        )
    try:
        at_s = float(at)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{at!r} is not a number of seconds") from None
    if at_s < 0:
        raise argparse.ArgumentTypeError("the injection time must be >= 0 s")
    return Injection(fault, at_s)


@dataclass
class Tally:
    gate_open_count: int = 0
    beam_on_s: float = 0.0
    treating_started: float | None = None
    treating_ended: float | None = None
    trips: list[dict[str, object]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def _script(plan_id: str) -> list[tuple[float, Command]]:
    """The scripted operator: seconds after the room is SAFE, and the command."""
    op = "dryrun"
    return [
        (0.2, Command(CommandKind.SELECT_PLAN, op, plan_id)),
        (0.3, Command(CommandKind.START_IMAGING, op)),
        (1.0, Command(CommandKind.ARM, op)),
        (1.2, Command(CommandKind.BEAM_ON, op)),
    ]


MODE_AND_REQUEST_RULES = ("IL-020", "IL-021", "IL-022")


def _describe_denial(outputs: Outputs) -> str:
    """The rules that closed the gate, leaving out the mode rules when there is a cause."""
    ids = list(outputs.beam_permit.denied_by)
    causes = [rid for rid in ids if rid not in MODE_AND_REQUEST_RULES] or ids
    return ", ".join(f"{rid} {RULES_BY_ID[rid].name}" for rid in causes[:3])


def run_fraction(
    params: CoreParams,
    plan_id: str,
    seed: int,
    injections: list[Injection],
    max_s: float,
    echo: bool,
) -> dict[str, object]:
    plan = params.plan(plan_id)
    assert plan is not None
    room = ScriptedRoom(Breathing(plan.target, seed=seed))
    state = initial_state(params, 0.0)
    tally = Tally()
    script: list[tuple[float, Command]] = []
    safe_at: float | None = None
    t = 0.0
    prev_gate = GateCommand.CLOSE

    def say(line: str) -> None:
        if echo:
            print(line)

    while t < max_s and state.mode not in (Mode.COMPLETE, Mode.FAULT):
        t = round(t + STEP_S, 6)
        for inj in injections:
            if t >= inj.at_s and inj.fault not in room.faults:
                room.faults.add(inj.fault)
                say(f"{t:9.3f} s  inject    {inj.fault}")
        room.advance(t, inside_window(room.truth, plan.target, params.window, 0.0))
        command = None
        if script and safe_at is not None and t >= safe_at + script[0][0]:
            command = script.pop(0)[1]
        state, out = step(state, room.snapshot(t), command, t)
        room.apply(out, t)

        if room.gate_open and room.spill_active(t):
            tally.beam_on_s += STEP_S
        for event in out.events:
            if event.kind is EventKind.MODE_CHANGED:
                say(f"{t:9.3f} s  mode      {event.message}")
                if event.mode_to is Mode.SAFE and safe_at is None:
                    safe_at = t
                    script = _script(plan_id)
                if event.mode_to is Mode.TREATING and tally.treating_started is None:
                    tally.treating_started = t
                if event.mode_from is Mode.TREATING or event.mode_from is Mode.HOLD:
                    tally.treating_ended = t
            elif event.kind is EventKind.TRIP:
                tally.trips.append({"at_s": round(t, 3), "rule_ids": list(event.rule_ids)})
                say(f"{t:9.3f} s  TRIP      {event.message}")
            elif event.kind is EventKind.COMMAND_REFUSED:
                tally.refused.append(event.message)
                say(f"{t:9.3f} s  refused   {event.message}")
            elif event.kind is EventKind.COMMAND_ACCEPTED:
                say(f"{t:9.3f} s  command   {event.message}")
        if out.gate is not prev_gate:
            if out.gate is GateCommand.OPEN:
                tally.gate_open_count += 1
                say(f"{t:9.3f} s  gate      OPEN   (all {len(RULES_BY_ID)} rules pass)")
            else:
                say(f"{t:9.3f} s  gate      CLOSE  ({_describe_denial(out)})")
            prev_gate = out.gate

    started = tally.treating_started or t
    ended = tally.treating_ended or t
    treatment_s = max(0.0, ended - started)
    delivered = room.dose_mu
    return {
        "final_state": state.mode.name,
        "plan_id": plan_id,
        "planned_dose_mu": plan.planned_dose_mu,
        "delivered_dose_mu": round(delivered, 3),
        "treatment_time_s": round(treatment_s, 3),
        "beam_on_time_s": round(tally.beam_on_s, 3),
        "gate_open_count": tally.gate_open_count,
        "duty_cycle": round(tally.beam_on_s / treatment_s, 3) if treatment_s else 0.0,
        "imaging_mas": round(room.mas, 2),
        "dose_outside_window_mu": round(room.dose_outside_window_mu, 3),
        "trips": tally.trips,
        "refused_commands": tally.refused,
        "simulated_time_s": round(t, 3),
        "seed": seed,
    }


def _run(args: argparse.Namespace) -> int:
    loaded = load_room_and_plan(args.config, args.plan)
    if loaded is None:
        return EXIT_USAGE
    room_config, plan_id = loaded
    echo = not args.quiet
    if echo:
        print(f"syncctl dryrun: core only, scripted room, simulated time "
              f"(config {args.config}, hash {config_hash(room_config)}, seed {args.seed})")
    summary = run_fraction(room_config.to_core_params(), plan_id, args.seed, args.inject,
                           args.max_seconds, echo)
    summary["config_hash"] = config_hash(room_config)
    if echo:
        print_summary(summary)
    if args.json:
        write_json(args.json, summary)
    return exit_code(summary)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dryrun",
        help="run one gated fraction through the core against a scripted room (no devices)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default="configs/room-sim.yaml", help="room configuration")
    p.add_argument("--plan", help="plan id (default: the first plan in the config)")
    p.add_argument("--seed", type=int, default=1, help="seed of the breathing motion")
    p.add_argument("--inject", type=parse_injection, action="append", default=[],
                   metavar="FAULT@SECONDS",
                   help=f"inject a fault at a simulated time; FAULT in: {', '.join(FAULTS)}")
    p.add_argument("--max-seconds", type=float, default=600.0,
                   help="give up after this much simulated time (default 600)")
    p.add_argument("--json", help="also write the summary as JSON to this path")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(handler=_run)
