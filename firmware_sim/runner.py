"""Run the device simulators of a room as one asyncio process.

    python -m firmware_sim --config configs/room-sim.yaml [--devices beam-gate,imaging]
        [--seed N] [--trace CSV] [--truth DIR] [--beam-gate-port N] [--imaging-port N]
        [--beam-gate-link PATH] [--imaging-link PATH] [--backdoor-port N]
        [--beam-gate-watchdog-scale F] [--imaging-watchdog-scale F] ...

Each device gets its model, its register interface and the transport its room config names
(``devices.<slot>.transport``); the backdoor listens on a Modbus TCP port of its own. Once
every server listens, exactly one JSON line goes to stdout (the *ready line*, see
docs/simulators.md) and human-readable help to stderr. SIGINT or SIGTERM stops the servers,
flushes the ground truth, removes the serial-port symlinks and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware_sim.backdoor import DEFAULT_LAYOUT, Backdoor, BackdoorLayout, BackdoorTarget, Slot
from firmware_sim.beam_gate import BeamGateModel
from firmware_sim.imaging import ImagingModel
from firmware_sim.motion import BreathingMotion, Motion, TraceMotion
from firmware_sim.registers import (
    BeamGateInterface,
    Clock,
    DeviceInterface,
    ImagingInterface,
    WriteEvent,
)
from firmware_sim.transport import Adapter, LinkFaults, PtyRtuAdapter, TcpAdapter, sim_device
from firmware_sim.truth import BeamGateTruth, ImagingTruth, TruthWriter
from syncctl.config import ConfigError, RoomConfig, config_hash, load_room

RT_PRIORITY = 20
"""Above the controller's default (10): the firmware it stands in for runs on its own."""

log = logging.getLogger("firmware_sim")

DEVICE_NAMES: dict[str, Slot] = {"beam-gate": "beam_gate", "beam_gate": "beam_gate",
                                 "imaging": "imaging", "xray-imaging": "imaging"}
FILE_NAMES: dict[Slot, str] = {"beam_gate": "beam-gate", "imaging": "imaging"}
TRUTH_FLUSH_S = 0.25


class UsageError(Exception):
    """Bad command line (exit 2)."""


@dataclass
class DeviceSim:
    slot: Slot
    interface: DeviceInterface
    adapter: Adapter
    link: LinkFaults
    truth: BeamGateTruth | ImagingTruth | None = None
    writer: TruthWriter | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m firmware_sim",
        description="Simulated beam-gate and X-ray imaging controllers (Modbus), with a "
                    "fault-injection backdoor. Prints one JSON ready line on stdout.")
    p.add_argument("--config", required=True, type=Path, help="room file (YAML)")
    p.add_argument("--devices", default="beam-gate,imaging",
                   help="comma-separated: beam-gate, imaging (default both)")
    p.add_argument("--seed", type=int, default=1,
                   help="seed of the breathing motion and the link-fault dice (default 1)")
    p.add_argument("--trace", type=Path,
                   help="replay this motion trace (CSV t_s,x_mm,y_mm,z_mm[,confidence]) "
                        "instead of the breathing model")
    p.add_argument("--truth", type=Path, help="write ground-truth JSON lines to this directory")
    p.add_argument("--bind", help="bind TCP device servers here instead of the config's host")
    for slot in ("beam-gate", "imaging"):
        p.add_argument(f"--{slot}-port", type=int, metavar="N",
                       help=f"TCP port of the {slot} server (0 = a free one); TCP kinds only")
        p.add_argument(f"--{slot}-link", type=Path, metavar="PATH",
                       help=f"symlink path of the {slot} serial port; modbus-rtu only")
        p.add_argument(f"--{slot}-watchdog-scale", type=float, default=1.0, metavar="F",
                       help=f"the {slot} watchdog acts after its timeout x F (a faulty "
                            "firmware; its register still reads the configured timeout)")
    p.add_argument("--backdoor-host", default="127.0.0.1")
    p.add_argument("--backdoor-port", type=int, default=0, metavar="N",
                   help="TCP port of the backdoor (default 0 = a free one)")
    p.add_argument("--backdoor-layout", type=Path, default=DEFAULT_LAYOUT,
                   help="backdoor register layout (default configs/registers/backdoor.yaml)")
    defaults = BeamGateModel()
    p.add_argument("--spill-on-s", type=float, default=defaults.spill_on_s,
                   help="extraction time per synchrotron cycle (default %(default)s s)")
    p.add_argument("--spill-off-s", type=float, default=defaults.spill_off_s,
                   help="gap between spills (default %(default)s s)")
    p.add_argument("--dose-rate", type=float, default=defaults.dose_rate_mu_per_s,
                   help="dose rate during spill, MU/s (default %(default)s)")
    p.add_argument("--rt-priority", type=int, default=RT_PRIORITY, metavar="N",
                   help="run under SCHED_FIFO at priority N (0: ordinary scheduling; default "
                   f"{RT_PRIORITY}): the simulators stand in for firmware on processors of its "
                   "own, which other load on this machine should not stall")
    p.add_argument("--tick-hz", type=float, default=1000.0,
                   help="physics rate (default %(default)s; reads also advance the models)")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    try:
        args.slots = _parse_devices(args.devices)
    except UsageError as exc:
        p.error(str(exc))
    if not (0 < args.beam_gate_watchdog_scale <= 100 and 0 < args.imaging_watchdog_scale <= 100):
        p.error("--beam-gate-watchdog-scale, --imaging-watchdog-scale must be in (0, 100]")
    if not 0 <= args.rt_priority <= 99:
        p.error("--rt-priority must be 0..99")
    if args.tick_hz <= 0 or args.spill_on_s <= 0 or args.spill_off_s < 0 or args.dose_rate < 0:
        p.error("--tick-hz, --spill-on-s must be > 0; --spill-off-s, --dose-rate >= 0")
    return args


def _parse_devices(text: str) -> list[Slot]:
    slots: list[Slot] = []
    for name in filter(None, (n.strip() for n in text.split(","))):
        if name not in DEVICE_NAMES:
            raise UsageError(f"--devices: unknown device {name!r} (beam-gate, imaging)")
        if DEVICE_NAMES[name] not in slots:
            slots.append(DEVICE_NAMES[name])
    if not slots:
        raise UsageError("--devices: name at least one device")
    return slots


def _make_adapter(slot: Slot, config: RoomConfig, args: argparse.Namespace,
                  link: LinkFaults, interface: DeviceInterface) -> Adapter:
    transport = getattr(config.room.devices, slot).transport
    dash = FILE_NAMES[slot]
    port_override = getattr(args, f"{slot}_port")
    link_override = getattr(args, f"{slot}_link")
    devices = [sim_device(transport.unit, interface)]
    if transport.kind == "modbus-rtu":
        if port_override is not None:
            raise UsageError(f"--{dash}-port: devices.{slot}.transport is modbus-rtu; "
                             f"use --{dash}-link PATH")
        serial = {"baudrate": transport.baudrate, "parity": transport.parity,
                  "stopbits": transport.stopbits, "bytesize": transport.bytesize}
        return PtyRtuAdapter(slot, devices, link_override or Path(transport.port),
                             transport.unit, serial, link)
    if link_override is not None:
        raise UsageError(f"--{dash}-link: devices.{slot}.transport is {transport.kind}; "
                         f"use --{dash}-port N")
    port = transport.port if port_override is None else port_override
    if not 0 <= port <= 65535:
        raise UsageError(f"--{dash}-port: {port} is not a TCP port")
    return TcpAdapter(slot, devices, args.bind or transport.host, port, transport.unit,
                      transport.kind, link)


def _motion(config: RoomConfig, args: argparse.Namespace) -> Motion:
    if args.trace is not None:
        try:
            return TraceMotion.from_csv(args.trace)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--trace: {exc}") from None
    x, y, z = config.room.plans[0].target_mm
    return BreathingMotion(centre=(x, y, z), seed=args.seed)


def build_devices(config: RoomConfig, args: argparse.Namespace, clock: Clock
                  ) -> dict[Slot, DeviceSim]:
    watchdog_s = config.room.limits.device_watchdog_timeout_ms / 1000
    sims: dict[Slot, DeviceSim] = {}
    for index, slot in enumerate(args.slots):
        link = LinkFaults(rng=random.Random(args.seed * 1000 + index))
        interface: DeviceInterface
        if slot == "beam_gate":
            interface = BeamGateInterface(
                BeamGateModel(spill_on_s=args.spill_on_s, spill_off_s=args.spill_off_s,
                              dose_rate_mu_per_s=args.dose_rate,
                              watchdog_timeout_s=watchdog_s,
                              watchdog_scale=args.beam_gate_watchdog_scale),
                config.beam_gate_map, clock)
        else:
            dev = config.room.devices.imaging
            interface = ImagingInterface(
                ImagingModel(motion=_motion(config, args), frame_rate_fps=dev.frame_rate_fps,
                             kv=dev.kv, ma=dev.ma, pulse_width_ms=dev.pulse_width_ms,
                             watchdog_timeout_s=watchdog_s,
                             watchdog_scale=args.imaging_watchdog_scale),
                config.imaging_map, clock)
        interface.refresh()
        sims[slot] = DeviceSim(slot, interface, _make_adapter(slot, config, args, link,
                                                              interface), link)
    return sims


def _model_params(sim: DeviceSim) -> dict[str, Any]:
    m = sim.interface.model
    if isinstance(m, BeamGateModel):
        return {"spill_on_s": m.spill_on_s, "spill_off_s": m.spill_off_s,
                "dose_rate_mu_per_s": m.dose_rate_mu_per_s, "gate_delay_s": m.gate_delay_s,
                "watchdog_timeout_s": m.watchdog_timeout_s, "watchdog_scale": m.watchdog_scale}
    motion = type(m.motion).__name__
    return {"frame_rate_fps": m.frame_rate_fps, "kv": m.kv, "ma": m.ma,
            "pulse_width_ms": m.pulse_width_ms, "prepare_time_s": m.prepare_time_s,
            "watchdog_timeout_s": m.watchdog_timeout_s, "watchdog_scale": m.watchdog_scale,
            "motion": motion}


def open_truth(sims: dict[Slot, DeviceSim], backdoor: Backdoor, directory: Path,
               config: RoomConfig, args: argparse.Namespace) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    digest = config_hash(config)
    for slot, sim in sims.items():
        header = {"device": FILE_NAMES[slot], "config": str(config.path.resolve()),
                  "config_hash": digest, "seed": args.seed, "clock": "time.monotonic",
                  "t_origin": round(sim.interface.t_origin, 6),
                  "transport": sim.adapter.describe(), "model": _model_params(sim),
                  "identity": sim.interface.IDENTITY,
                  "firmware_version": sim.interface.FIRMWARE_VERSION}
        if args.trace is not None and slot == "imaging":
            header["trace"] = str(args.trace)
        writer = TruthWriter(directory / f"{FILE_NAMES[slot]}.jsonl", header)
        model = sim.interface.model
        truth: BeamGateTruth | ImagingTruth
        if isinstance(model, BeamGateModel):
            truth = BeamGateTruth(writer, model)
            sim.interface.write_listeners.append(truth.on_write)
        else:
            truth = ImagingTruth(writer, model)
        sim.interface.advance_listeners.append(truth.on_advance)
        backdoor.write_listeners.append(_fault_listener(slot, truth))
        sim.truth, sim.writer = truth, writer


def _fault_listener(slot: Slot, truth: BeamGateTruth | ImagingTruth) -> Any:
    prefix = f"{slot}."

    def listener(event: WriteEvent) -> None:
        if event.name.startswith(prefix):
            truth.on_fault(WriteEvent(event.t, event.name[len(prefix):], event.value))

    return listener


async def physics(interfaces: list[DeviceInterface], period_s: float) -> None:
    """Advance every model to now, about ``1/period_s`` times a second. Reads advance them
    too; this keeps the watchdogs, spills and frames going when nobody reads."""
    while True:
        for interface in interfaces:
            interface.advance()
        await asyncio.sleep(period_s)


async def flush_truth(writers: list[TruthWriter]) -> None:
    while True:
        await asyncio.sleep(TRUTH_FLUSH_S)
        for writer in writers:
            writer.flush()


def ready_line(sims: dict[Slot, DeviceSim], backdoor_info: dict[str, Any],
               layout: BackdoorLayout) -> dict[str, Any]:
    ready: dict[str, Any] = {"ready": True, "pid": os.getpid()}
    for slot, sim in sims.items():
        ready[slot] = sim.adapter.describe()
    ready["backdoor"] = {
        slot: {**backdoor_info, "block": list(layout.block_span(slot))} for slot in sims
    }
    return ready


def request_realtime(priority: int) -> str:
    """SCHED_FIFO for this (single-threaded) process, as firmware would not be stalled by other
    load; a refusal leaves ordinary scheduling. Children do not inherit it."""
    if priority == 0:
        return "ordinary scheduling"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK,
                              os.sched_param(priority))
    except (OSError, AttributeError) as exc:
        return f"ordinary scheduling (SCHED_FIFO refused: {exc})"
    return f"SCHED_FIFO priority {priority}"


def help_lines(sims: dict[Slot, DeviceSim], backdoor_info: dict[str, Any],
               layout: BackdoorLayout, args: argparse.Namespace) -> list[str]:
    host, port, unit = backdoor_info["host"], backdoor_info["port"], backdoor_info["unit"]
    lines = []
    for slot, sim in sims.items():
        d = sim.adapter.describe()
        where = (f"{d['port']} -> {d['pty']}" if d["kind"] == "modbus-rtu"
                 else f"{d['host']}:{d['port']}")
        lines.append(f"{FILE_NAMES[slot]:9} {d['kind']} {where} unit {d['unit']}")
    lines.append(f"backdoor  modbus-tcp {host}:{port} unit {unit} "
                 f"(layout {args.backdoor_layout})")
    lines.append(f"scheduling: {args.scheduling}")
    first = next(iter(sims))
    block = layout.devices[first].registers
    example = next(iter(block))
    address = block[example].address
    lines += [
        f"inject a fault ({first}.{example} on):  "
        f"mbpoll -m tcp -a {unit} -r {address + 1} -t 4 -p {port} {host} 1",
        f"clear it:                            "
        f"mbpoll -m tcp -a {unit} -r {address + 1} -t 4 -p {port} {host} 0",
        f"show the faults:                     "
        f"mbpoll -m tcp -a {unit} -r {address + 1} -c 16 -t 4 -1 -p {port} {host}",
        "(mbpoll's -r counts from 1: register N is address N-1)",
    ]
    if args.truth is not None:
        lines.append(f"ground truth: {args.truth}/<device>.jsonl (t = time.monotonic() s)")
    lines.append("stop with Ctrl-C or SIGTERM")
    return lines


async def run(args: argparse.Namespace, clock: Clock = time.monotonic) -> int:
    config = load_room(args.config)
    args.scheduling = request_realtime(args.rt_priority)
    try:
        layout = BackdoorLayout.load(args.backdoor_layout)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    sims = build_devices(config, args, clock)
    backdoor = Backdoor(
        layout, {slot: BackdoorTarget(sim.interface, sim.link, sim.adapter)
                 for slot, sim in sims.items()}, clock)
    backdoor_adapter = TcpAdapter("backdoor", [sim_device(layout.unit, backdoor)],
                                  args.backdoor_host, args.backdoor_port, layout.unit)
    writers: list[TruthWriter] = []
    started: list[Adapter] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for sim in sims.values():
            await sim.adapter.start()
            started.append(sim.adapter)
        if args.truth is not None:  # after start: the headers name the ports in use
            open_truth(sims, backdoor, args.truth, config, args)
            writers = [sim.writer for sim in sims.values() if sim.writer is not None]
        await backdoor_adapter.start()
        started.append(backdoor_adapter)
        tasks.append(asyncio.create_task(
            physics([sim.interface for sim in sims.values()], 1.0 / args.tick_hz),
            name="physics"))
        tasks.append(asyncio.create_task(flush_truth(writers), name="truth-flush"))

        backdoor_info = {"host": backdoor_adapter.host, "port": backdoor_adapter.port,
                         "unit": layout.unit}
        # Help first, so that whoever sees the ready line can also find the help.
        for line in help_lines(sims, backdoor_info, layout, args):
            print(f"firmware_sim: {line}", file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.write(json.dumps(ready_line(sims, backdoor_info, layout)) + "\n")
        sys.stdout.flush()

        waiter = asyncio.create_task(stop.wait(), name="stop")
        done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        for task in done:
            if task is not waiter and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return 0
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for adapter in reversed(started):
            await adapter.stop()
        for sim in sims.values():  # a started-then-failed adapter may hold a symlink
            if sim.adapter not in started:
                await sim.adapter.stop()
        for sim in sims.values():
            if sim.writer is not None:
                sim.writer.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="firmware_sim: %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(run(args))
    except ConfigError as exc:
        print(f"firmware_sim: configuration error:\n{exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"firmware_sim: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"firmware_sim: {exc}", file=sys.stderr)
        return 1
