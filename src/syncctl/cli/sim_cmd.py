"""`syncctl sim`: the device simulators as a process, for bench work and third-party tools.

    syncctl sim --config configs/room-sim.yaml [--seed N] [--truth DIR] [--backdoor-port N]
    syncctl sim inject --backdoor 127.0.0.1:PORT estop
    syncctl sim inject --backdoor 127.0.0.1:PORT imaging.frame_delay_ms=80

The simulators print where each device listens and how to inject faults (with mbpoll too).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from syncctl.cli.faults import FAULTS, inject, parse_fault
from syncctl.config import ConfigError
from syncctl.config.backdoor import DEFAULT_LAYOUT, load_backdoor_layout


def _start(args: argparse.Namespace) -> int:
    cmd = [sys.executable, "-m", "firmware_sim", "--config", args.config,
           "--seed", str(args.seed), "--backdoor-port", str(args.backdoor_port)]
    for flag, value in (("--truth", args.truth), ("--trace", args.trace),
                        ("--devices", args.devices)):
        if value:
            cmd += [flag, value]
    # Replace this process: signals (Ctrl-C, SIGTERM) then reach the simulators directly.
    os.execv(sys.executable, cmd)
    return 1  # not reached


def _inject(args: argparse.Namespace) -> int:
    host, _, port = args.backdoor.rpartition(":")
    if not host or not port.isdigit():
        print(f"error: --backdoor must be HOST:PORT, got {args.backdoor!r}", file=sys.stderr)
        return 2
    try:
        layout = load_backdoor_layout(DEFAULT_LAYOUT)
        fault = args.fault
        if args.clear:
            fault = type(fault)(fault.slot, fault.register, 0, f"{fault.what} (cleared)")
        asyncio.run(inject(layout, host, int(port), fault))
    except (ConfigError, KeyError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"injected {fault.slot}.{fault.register} = {fault.value:g}: {fault.what}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sim = sub.add_parser("sim", help="run the device simulators; inject faults into them",
                         description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    sim.add_argument("--config", default="configs/room-sim.yaml", help="room configuration")
    sim.add_argument("--seed", type=int, default=1, help="seed of the breathing motion")
    sim.add_argument("--truth", help="record ground truth (JSON lines) in this directory")
    sim.add_argument("--trace", help="replay a recorded target trace (CSV: t_s,x_mm,y_mm,z_mm)")
    sim.add_argument("--devices", help="which devices (default: beam-gate,imaging)")
    sim.add_argument("--backdoor-port", type=int, default=15099,
                     help="fault-injection port (default 15099; 0 = any free port)")
    sim.set_defaults(handler=_start)
    actions = sim.add_subparsers(dest="sim_command", metavar="ACTION")
    inj = actions.add_parser("inject", help="write a fault to a running simulator's backdoor")
    inj.add_argument("--backdoor", required=True, metavar="HOST:PORT",
                     help="the backdoor address the simulators printed")
    inj.add_argument("fault", type=parse_fault,
                     help=f"one of {', '.join(FAULTS)}, or SLOT.REGISTER=VALUE")
    inj.add_argument("--clear", action="store_true", help="write 0 instead (fault off)")
    inj.set_defaults(handler=_inject)
