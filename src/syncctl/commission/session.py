"""A commissioning run: the steps, against the devices of one room, over the real clients.

Each step measures, then judges with ``syncctl.commission.checks``. The devices are reached
through the same ``ModbusLink`` and device clients the controller uses, so what is measured is
what the controller will see (a command's latency includes its verifying read-back, as in
the control cycle). While the run lasts, a heartbeat goes to each device at
``limits.heartbeat_period_ms`` (as the controller sends it), except to the device whose
watchdog is being tested.

Nothing here opens the gate or exposes X-ray without a confirmation: in a rehearsal against
the simulators it is always allowed; on hardware the engineer confirms (``--yes`` answers for
scripted runs). Person steps are timed from the prompt to the status change; in a rehearsal
the tool performs them itself through the simulators' backdoor and says so in the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from syncctl.cli.faults import FAULTS, Fault, inject
from syncctl.commission.checks import (
    FrameSample,
    Status,
    StepResult,
    analyse_frames,
    check_register,
    documented_fault_bits,
    expected_value,
    json_safe,
    latency_check,
    register_rules,
    summarize,
    trial_value,
    watchdog_fault_bit,
    watchdog_tolerance_ms,
    watchdog_verdict,
)
from syncctl.commission.prompts import Prompter
from syncctl.config import RoomConfig
from syncctl.config.backdoor import BackdoorLayout
from syncctl.core.types import BeamGateStatus, GateCommand, ImagingStatus, XrayCommand
from syncctl.devices import (
    BeamGateClient,
    ImagingClient,
    ModbusLink,
    RemoteError,
    SignalDevice,
    read_plan,
)

STEPS: tuple[tuple[str, str], ...] = (
    ("connect", "Connectivity"),
    ("identity", "Identity and firmware version"),
    ("registers", "Every register read and range-checked"),
    ("settings", "Settings written, read back and restored"),
    ("door", "Door: a person opens and closes it"),
    ("estop", "Emergency stop: a person presses and releases it"),
    ("watchdog", "Device watchdogs: heartbeat stopped"),
    ("gate_latency", "Gate command-to-readback latency"),
    ("imaging", "Imaging frame rate and frame-age jitter"),
)
STEP_NAMES = tuple(name for name, _ in STEPS)

GATE_TEST_BUDGET_MU = 0.5
"""Dose preset above the delivered dose while the gate is cycled (the hardware limit that
closes the gate should a beam be extracted after all)."""
CONNECT_WINDOW_S = 3.0
WAIT_FOR_GATE_S = 0.5


@dataclass
class Options:
    steps: tuple[str, ...] = STEP_NAMES
    rehearse: bool = False
    gate_cycles: int = 20
    imaging_s: float = 3.0
    person_timeout_s: float = 120.0


@dataclass
class Rehearsal:
    """The simulators' backdoor: how a rehearsal performs the person steps."""

    layout: BackdoorLayout
    host: str
    port: int
    injected: set[tuple[str, str]] = field(default_factory=set)

    async def set(self, fault: Fault, on: bool) -> None:
        value = fault.value if on else 0
        await inject(self.layout, self.host, self.port,
                     Fault(fault.slot, fault.register, value, fault.what))
        if on:
            self.injected.add((fault.slot, fault.register))
        else:
            self.injected.discard((fault.slot, fault.register))

    async def clear_all(self) -> None:
        for slot, register in sorted(self.injected):
            with contextlib.suppress(Exception):
                await inject(self.layout, self.host, self.port, Fault(slot, register, 0, ""))
        self.injected.clear()


class Heartbeat:
    """The heartbeat a controller would send, one task per device; pausable."""

    def __init__(self, client: SignalDevice[Any], period_s: float,
                 clock: Callable[[], float]) -> None:
        self.client = client
        self.period_s = period_s
        self.clock = clock
        self.enabled = True
        self.value = 0
        self.acks = 0
        self.failures = 0
        self.last_sent_at: float | None = None
        self.last_acked_at: float | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"heartbeat-{self.client.name}")

    async def _run(self) -> None:
        while True:
            if self.enabled:
                async with self._lock:
                    if self.enabled:
                        self.value = self.value % 0xFFFF + 1
                        sent = self.clock()
                        if await self.client.write_heartbeat(self.value):
                            self.last_sent_at, self.last_acked_at = sent, self.clock()
                            self.acks += 1
                        else:
                            self.failures += 1
            await asyncio.sleep(self.period_s)

    async def pause(self) -> None:
        """Stop sending; returns once no heartbeat write is in flight."""
        self.enabled = False
        async with self._lock:
            pass

    def resume(self) -> None:
        self.enabled = True

    async def stop(self) -> None:
        # Wait for a write in flight first: cancelling one mid-transaction drops the link.
        await self.pause()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


@dataclass
class Device:
    slot: str
    kind: str
    link: ModbusLink
    client: BeamGateClient | ImagingClient
    heartbeat: Heartbeat
    connected: bool = False
    powerup_settings: dict[str, float] = field(default_factory=dict)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Commissioning:
    """One run of the selected steps against the room's devices."""

    def __init__(self, config: RoomConfig, prompter: Prompter, options: Options,
                 rehearsal: Rehearsal | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.prompter = prompter
        self.options = options
        self.rehearsal = rehearsal
        self.clock = clock
        self.limits = config.room.limits
        self.results: list[StepResult] = []
        self._allowed: dict[str, tuple[bool, str]] = {}
        self._preset_saved: float | None = None
        self._preset_loaded: float | None = None
        """The dose preset the last load_preset wrote (for the readback check)."""
        period_s = self.limits.heartbeat_period_ms / 1000
        devices = config.room.devices
        self.devices: dict[str, Device] = {}
        for slot, kind, device_config, client_type in (
            ("beam_gate", "beam-gate", devices.beam_gate, BeamGateClient),
            ("imaging", "xray-imaging", devices.imaging, ImagingClient),
        ):
            link = ModbusLink(device_config.transport, timeout_s=device_config.timeout_ms / 1000,
                              retries=device_config.retries, clock=clock)
            client = client_type(config, clock, backend=link)
            self.devices[slot] = Device(slot, kind, link, client,
                                        Heartbeat(client, period_s, clock))

    @property
    def bgc(self) -> BeamGateClient:
        client = self.devices["beam_gate"].client
        assert isinstance(client, BeamGateClient)
        return client

    @property
    def xic(self) -> ImagingClient:
        client = self.devices["imaging"].client
        assert isinstance(client, ImagingClient)
        return client

    def say(self, text: str) -> None:
        self.prompter.say(text)

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> list[StepResult]:
        steps: dict[str, Callable[[StepResult], Awaitable[None]]] = {
            "connect": self.step_connect, "identity": self.step_identity,
            "registers": self.step_registers, "settings": self.step_settings,
            "door": self.step_door, "estop": self.step_estop, "watchdog": self.step_watchdog,
            "gate_latency": self.step_gate_latency, "imaging": self.step_imaging,
        }
        try:
            for name, title in STEPS:
                result = StepResult(name, title, started_utc=utc_now())
                self.results.append(result)
                if name != "connect" and name not in self.options.steps:
                    result.skip_reason = "not selected (--steps)"
                    continue
                self.say(f"\n== {name}: {title}")
                t0 = self.clock()
                try:
                    await steps[name](result)
                except (RemoteError, OSError) as exc:
                    result.fail("device", f"remote failure: {exc}")
                result.duration_s = self.clock() - t0
                result.figures = json_safe(result.figures)
                for line in headline(result):
                    self.say(f"   {line}")
                self.say(f"   {name}: {result.status.value.upper()}"
                         + (f" ({result.skip_reason})" if result.skip_reason else ""))
                for check in result.checks:
                    if check.status is Status.FAILED:
                        self.say(f"   FAILED {check.name}: {check.detail or check.measured}")
        finally:
            await self.shutdown()
        return self.results

    async def shutdown(self) -> None:
        """Leave the room safe: gate closed, X-ray off, preset restored, heartbeats stopped,
        faults reset (so a device does not sit in a watchdog fault from our leaving), backdoor
        faults of a rehearsal cleared, links closed."""
        for device in self.devices.values():
            await device.heartbeat.stop()
        if self.rehearsal is not None:
            await self.rehearsal.clear_all()
        for device in self.devices.values():
            if device.connected and not device.client.ready:
                await self.healthy(device)  # reconnect a dropped link for the safe writes
        if self.devices["beam_gate"].connected:
            await self.bgc.write_gate(GateCommand.CLOSE)
            await self.restore_preset()
            await self.bgc.reset_faults()
        if self.devices["imaging"].connected:
            await self.xic.write_xray(XrayCommand.STOP)
            await self.write_signal(self.devices["imaging"], "prepare_command", 0)
            await self.xic.reset_faults()
        for device in self.devices.values():
            await device.client.close()

    # -- helpers ---------------------------------------------------------------------------

    async def need(self, result: StepResult, *slots: str) -> bool:
        """The devices a step needs: connected in the connect step, and healthy now (a link
        that dropped since, e.g. after a timeout, is reconnected and its session verified
        again first, as the controller would)."""
        ok = True
        for slot in slots:
            device = self.devices[slot]
            if not device.connected:
                result.fail(f"{device.kind} connected", "not connected: step not run")
                ok = False
                continue
            if not await self.healthy(device):
                result.fail(f"{device.kind} healthy", f"not healthy within "
                            f"{CONNECT_WINDOW_S:g} s: {device.client.last_error}")
                ok = False
        return ok

    async def healthy(self, device: Device) -> bool:
        """Poll until the reading is healthy (reconnecting and verifying a new session when
        the link dropped), for at most CONNECT_WINDOW_S."""
        t0 = self.clock()
        for _ in range(1000):
            reading = await device.client.poll()
            if reading.healthy:
                return True
            if self.clock() - t0 >= CONNECT_WINDOW_S:
                return False
            await asyncio.sleep(0.05)
        return False

    async def read_signals(self, device: Device, names: tuple[str, ...]) -> dict[str, list[int]]:
        plan = device.client.signals.plan_reads(names)
        values, _ = await read_plan(device.link, plan, self.clock)
        return {name: values.words(name) for name in names}

    async def read_number(self, device: Device, name: str) -> float:
        words = (await self.read_signals(device, (name,)))[name]
        return device.client.signals[name].number(words)

    async def write_signal(self, device: Device, name: str, value: float) -> bool:
        signal = device.client.signals[name]
        try:
            await device.link.write(signal.table, signal.address, signal.encode(value))
        except RemoteError as exc:
            self.say(f"   write {name} = {value:g} failed: {exc}")
            return False
        return True

    async def wait_bgc(self, pred: Callable[[BeamGateStatus], bool], timeout_s: float
                       ) -> tuple[float | None, BeamGateStatus | None, float]:
        """Poll the beam gate back to back until ``pred`` holds. Returns (the time of the
        read that showed it or None, that status, the time of the read before it)."""
        return await self._wait(self.bgc, pred, timeout_s, 0.0)

    async def wait_xic(self, pred: Callable[[ImagingStatus], bool], timeout_s: float
                       ) -> tuple[float | None, ImagingStatus | None, float]:
        period = self.config.room.devices.imaging.poll_period_ms / 1000
        return await self._wait(self.xic, pred, timeout_s, period)

    async def _wait(self, client: BeamGateClient | ImagingClient, pred: Callable[[Any], bool],
                    timeout_s: float, interval_s: float) -> tuple[float | None, Any, float]:
        start = previous = self.clock()
        deadline = start + timeout_s
        status: Any = None
        for _ in range(200_000):  # bounded; the deadline ends it first
            reading = await client.poll()
            now = self.clock()
            if reading.healthy and reading.status is not None:
                status = reading.status
                if pred(status):
                    return now, status, previous
            previous = now
            if now >= deadline:
                break
            await asyncio.sleep(interval_s)
        return None, status, previous

    async def allowed(self, what: str, question: str) -> tuple[bool, str]:
        """Whether the gate may open / X-ray may expose in this run (asked once each)."""
        if what not in self._allowed:
            if self.options.rehearse:
                self._allowed[what] = (True, "rehearsal against the simulators")
            else:
                answer = await self.prompter.confirm(question)
                if answer.kind == "yes":
                    self._allowed[what] = (True, answer.reason)
                elif answer.kind == "skip":
                    self._allowed[what] = (False, answer.reason)
                else:
                    self._allowed[what] = (False, "")
        return self._allowed[what]

    async def gate_allowed(self) -> tuple[bool, str]:
        return await self.allowed(
            "gate", "The beam gate will be opened and closed. Is the room safe for it "
                    "(beam extraction disabled at the accelerator or a beam stop in place, "
                    "nobody in the room)?")

    async def xray_allowed(self) -> tuple[bool, str]:
        return await self.allowed(
            "xray", "The X-ray tube will expose for a few seconds. Is the room clear, with a "
                    "phantom or nothing in the beam?")

    def refuse(self, result: StepResult, allowed: tuple[bool, str]) -> bool:
        """Record why a step that needs the room safe does not run. True if it must not."""
        ok, reason = allowed
        if ok:
            result.notes.append(f"confirmed: {reason}")
            return False
        if reason:
            result.skip_reason = f"not confirmed: {reason}"
        else:
            result.fail("confirmation", "no answer to the confirmation prompt (input closed)")
        return True

    async def load_preset(self) -> bool:
        """Save the dose preset and load one just above the delivered dose."""
        device = self.devices["beam_gate"]
        if self._preset_saved is None:
            self._preset_saved = await self.read_number(device, "dose_preset")
        delivered = await self.read_number(device, "dose_delivered")
        self._preset_loaded = delivered + GATE_TEST_BUDGET_MU
        return await self.bgc.load_dose_preset(self._preset_loaded)

    async def check_preset_readback(self, result: StepResult) -> None:
        """The preset just loaded must show in the status block the controller polls
        (``dose_preset_readback``): the controller holds the beam until it does (IL-032) and
        trips a fraction when it changes (IL-033), so a firmware whose readback does not follow
        the preset register would keep every fraction from being armed."""
        loaded = self._preset_loaded
        if loaded is None:
            return
        tolerance = max(self.bgc.signals["dose_preset"].reg.scale,
                        self.bgc.signals["dose_preset_readback"].reg.scale)
        t0 = self.clock()
        at, status, _ = await self.wait_bgc(
            lambda s: abs(s.dose_preset_mu - loaded) <= tolerance, WAIT_FOR_GATE_S)
        expected = f"{loaded:.2f} MU +- {tolerance:g} in the status block"
        if at is None:
            seen = None if status is None else status.dose_preset_mu
            result.fail("dose preset read back", f"not within {WAIT_FOR_GATE_S:g} s",
                        seen, expected)
        else:
            result.add("dose preset read back", Status.PASSED, round((at - t0) * 1000, 3),
                       expected, "ms from the verified write to the status read showing it")

    async def restore_preset(self) -> None:
        if self._preset_saved is not None and await self.bgc.load_dose_preset(
                self._preset_saved):
            self._preset_saved = None

    async def open_gate(self, result: StepResult) -> float | None:
        """Command the gate open (preset loaded first); the ms until the readback showed it,
        or None (with the reason noted)."""
        if not await self.load_preset():
            result.notes.append(f"dose preset not loaded: {self.bgc.last_error}")
            return None
        t0 = self.clock()
        if not await self.bgc.write_gate(GateCommand.OPEN):
            result.notes.append(f"gate open refused: {self.bgc.last_error}")
            return None
        at, status, _ = await self.wait_bgc(lambda s: s.gate_open_readback, WAIT_FOR_GATE_S)
        if at is None:
            await self.bgc.write_gate(GateCommand.CLOSE)
            result.notes.append(f"the gate did not open within {WAIT_FOR_GATE_S:g} s "
                                f"(status {status})")
            return None
        return (at - t0) * 1000

    # -- steps -----------------------------------------------------------------------------

    async def step_connect(self, result: StepResult) -> None:
        for slot, device in self.devices.items():
            transport = device.link.transport
            figures: dict[str, Any] = {"transport": transport.describe(),
                                       "unit": transport.unit}
            result.figures[slot] = figures
            t0 = self.clock()
            ok = False
            for _ in range(1000):
                if await device.link.connect():
                    ok = True
                    break
                if self.clock() - t0 >= CONNECT_WINDOW_S:
                    break
                await asyncio.sleep(0.05)
            figures["connect_ms"] = round((self.clock() - t0) * 1000, 3)
            figures["connect_attempts"] = device.link.stats["connect_attempts"]
            if not ok:
                result.fail(f"{device.kind} connect", device.link.last_error,
                            expected=f"connected within {CONNECT_WINDOW_S:g} s")
                continue
            result.add(f"{device.kind} connect", Status.PASSED, figures["connect_ms"],
                       f"connected within {CONNECT_WINDOW_S:g} s")
            # What the device holds before syncctl writes anything (its power-up settings).
            names = tuple(device.client.settings)
            try:
                words = await self.read_signals(device, names)
                device.powerup_settings = {
                    n: device.client.signals[n].number(w) for n, w in words.items()}
                figures["settings_found"] = device.powerup_settings
            except RemoteError as exc:
                result.notes.append(f"{device.kind}: settings not read before the session: {exc}")
            t1 = self.clock()
            for _ in range(1000):  # a session that fails is retried (after the backoff)
                reading = await device.client.poll()
                if reading.healthy or self.clock() - t1 >= CONNECT_WINDOW_S:
                    break
                await asyncio.sleep(0.05)
            figures["session_ms"] = round((self.clock() - t1) * 1000, 3)
            stats = device.link.stats
            figures["session_failures"] = stats.get("session_failures", 0)
            figures["link_failures"] = stats["failures"]
            if stats["failures"]:
                result.notes.append(f"{device.kind}: {stats['failures']} failed transaction(s) "
                                    f"while connecting ({stats['timeouts']} timeout(s))")
            if reading.healthy:
                device.connected = True
                result.add(f"{device.kind} session verified", Status.PASSED,
                           figures["session_ms"],
                           "identity read, settings written and read back equal, status read")
            else:
                result.fail(f"{device.kind} session verified", device.client.last_error)
        for device in self.devices.values():
            if device.connected:
                device.heartbeat.start()

    async def step_identity(self, result: StepResult) -> None:
        for slot, device in self.devices.items():
            if not await self.need(result, slot):
                continue
            words = await self.read_signals(device, ("identity", "firmware_version"))
            signals = device.client.signals
            identity = signals["identity"].integer(words["identity"])
            firmware = signals["firmware_version"].integer(words["firmware_version"])
            result.figures[slot] = {"identity": f"0x{identity:04X}", "firmware_version": firmware}
            for name, value, shown in (("identity", identity, f"0x{identity:04X}"),
                                       ("firmware_version", firmware, str(firmware))):
                expected = expected_value(signals[name].reg)
                if expected is None:
                    result.add(f"{device.kind} {name}", Status.RECORDED, shown,
                               "the map states no expected value", "recorded")
                else:
                    result.add(f"{device.kind} {name}",
                               Status.PASSED if value == expected else Status.FAILED, shown,
                               f"0x{expected:04X} (register map description)"
                               if name == "identity" else f"{expected} (register map)")
            session_identity = device.client.identity
            if session_identity is not None and session_identity != identity:
                result.fail(f"{device.kind} identity stable", "differs from the session start",
                            f"0x{session_identity:04X}")

    async def step_registers(self, result: StepResult) -> None:
        rules = register_rules(self.config)
        for slot, device in self.devices.items():
            if not await self.need(result, slot):
                continue
            signals = device.client.signals
            regmap = self.config.beam_gate_map if slot == "beam_gate" else self.config.imaging_map
            names = tuple(regmap.registers)
            words = await self.read_signals(device, names)
            counts = {s.value: 0 for s in Status}
            for name in names:
                check = check_register(f"{device.kind} {name}", regmap.registers[name],
                                       words[name], regmap.word_order,
                                       rules[device.kind].get(name))
                result.checks.append(check)
                counts[check.status.value] += 1
            result.figures[slot] = {"registers": len(names), **counts,
                                    "transactions": len(signals.plan_reads(names).blocks)}
            if slot == "imaging":
                clock_ms = signals["device_clock_ms"].integer(words["device_clock_ms"])
                stamp = signals["frame_timestamp_ms"].integer(words["frame_timestamp_ms"])
                age = (clock_ms - stamp) % (1 << 32)
                result.add("xray-imaging frame timestamp not in the future",
                           Status.PASSED if age < 1 << 31 else Status.FAILED,
                           {"device_clock_ms": clock_ms, "frame_timestamp_ms": stamp},
                           "frame_timestamp_ms <= device_clock_ms (same read)")

    async def step_settings(self, result: StepResult) -> None:
        for slot, device in self.devices.items():
            if not await self.need(result, slot):
                continue
            figures: dict[str, Any] = {}
            result.figures[slot] = figures
            for name, configured in device.client.settings.items():
                signal = device.client.signals[name]
                found = await self.read_number(device, name)
                trial = trial_value(name, configured, signal.reg.scale)
                entry: dict[str, Any] = {"configured": configured, "found": round(found, 6),
                                         "trial": trial,
                                         "power_up": device.powerup_settings.get(name)}
                figures[name] = entry
                result.add(f"{device.kind} {name} as configured",
                           Status.PASSED if signal.encode(found) == signal.encode(configured)
                           else Status.FAILED, round(found, 6), f"= {configured:g}")
                for label, value in (("trial", trial), ("restore", found)):
                    if not await self.write_signal(device, name, value):
                        result.fail(f"{device.kind} {name} {label} write",
                                    f"write of {value:g} failed", expected="accepted")
                        break
                    back = await self.read_number(device, name)
                    entry[f"{label}_read_back"] = round(back, 6)
                    ok = signal.encode(back) == signal.encode(value)
                    result.add(f"{device.kind} {name} {label} read back",
                               Status.PASSED if ok else Status.FAILED, round(back, 6),
                               f"= {value:g} (written)")

    async def _person_change(self, result: StepResult, instruction: str,
                             fault: Fault, on: bool,
                             pred: Callable[[BeamGateStatus], bool]
                             ) -> tuple[str, float, BeamGateStatus | None]:
        """One person action watched on the beam-gate status. Returns (kind, seconds,
        status at the change)."""
        seen: list[BeamGateStatus] = []

        async def watch() -> bool:
            reading = await self.bgc.poll()
            if reading.healthy and reading.status is not None and pred(reading.status):
                seen.append(reading.status)
                return True
            return False

        act: Callable[[], Awaitable[None]] | None = None
        if self.rehearsal is not None:
            rehearsal = self.rehearsal

            async def act() -> None:
                self.say(f"    rehearsal: the tool does this itself through the simulator "
                         f"backdoor ({fault.slot}.{fault.register} = {int(on)})")
                await rehearsal.set(fault, on)

        outcome = await self.prompter.person(instruction, watch, self.options.person_timeout_s,
                                             act)
        if outcome.kind == "skip":
            result.skip_reason = f"skipped by the engineer: {outcome.reason}"
        elif outcome.kind == "timeout":
            result.fail(instruction, f"no change seen within {outcome.elapsed_s:.0f} s",
                        expected="the status bit changes")
        return outcome.kind, outcome.elapsed_s, (seen[-1] if seen else None)

    async def _chain_step(self, result: StepResult, fault: Fault, bit: str,
                          act_text: str, undo_text: str, latch_name: str | None) -> None:
        if not await self.need(result, "beam_gate"):
            return
        if self.rehearsal is not None:
            result.notes.append("rehearsal: the person's actions were performed by the tool "
                                "through the simulator backdoor; times are the device's "
                                "reaction, not a person's")
        _, status, _ = await self.wait_bgc(lambda s: True, 1.0)
        if status is None or not getattr(status, bit):
            result.fail(f"{bit} at start", "must be true before the step (close/release it)",
                        None if status is None else getattr(status, bit))
            return
        gate_open_ms = None
        if (await self.gate_allowed())[0]:
            gate_open_ms = await self.open_gate(result)
            if gate_open_ms is not None:
                result.notes.append("the gate was open when the person acted: the chain must "
                                    "close it")
        else:
            result.notes.append("gate not opened (not confirmed): chain bits only")
        kind, elapsed, at_change = await self._person_change(
            result, act_text, fault, True, lambda s: not getattr(s, bit))
        await self.bgc.write_gate(GateCommand.CLOSE)
        if kind != "done" or at_change is None:
            return
        result.figures["act_s"] = round(elapsed, 3)
        result.add(f"{bit} goes false", Status.PASSED, round(elapsed, 3),
                   "seen within the person timeout", "seconds from the prompt")
        result.add("chain_ok false", Status.PASSED if not at_change.chain_ok else Status.FAILED,
                   at_change.chain_ok, "false in the same read")
        result.add("ready false", Status.PASSED if not at_change.ready else Status.FAILED,
                   at_change.ready, "false in the same read")
        if gate_open_ms is not None:
            result.add("gate closed by the chain",
                       Status.FAILED if at_change.gate_open_readback else Status.PASSED,
                       at_change.gate_open_readback, "readback closed in the same read")
        bits = documented_fault_bits(self.bgc.signals["fault_code"].reg)
        latch = next((v for v, n in bits.items() if latch_name and latch_name in n.lower()), None)
        if latch is not None:
            result.add("fault latched", Status.PASSED if at_change.fault_code & latch
                       else Status.FAILED, at_change.fault_code, f"code bit 0x{latch:X} set")
        kind, elapsed, at_undo = await self._person_change(
            result, undo_text, fault, False, lambda s: bool(getattr(s, bit)))
        if kind != "done" or at_undo is None:
            return
        result.figures["undo_s"] = round(elapsed, 3)
        result.add(f"{bit} true again", Status.PASSED, round(elapsed, 3),
                   "seen within the person timeout", "seconds from the prompt")
        if latch is not None:
            result.add("fault stays latched after release",
                       Status.PASSED if at_undo.fault_code & latch else Status.FAILED,
                       at_undo.fault_code, f"code bit 0x{latch:X} still set until reset")
            await self.bgc.reset_faults()
        at, final, _ = await self.wait_bgc(lambda s: s.ready and s.chain_ok, 1.0)
        result.add("ready again" + (" after fault reset" if latch is not None else ""),
                   Status.PASSED if at is not None else Status.FAILED,
                   None if final is None else {"ready": final.ready, "chain_ok": final.chain_ok,
                                               "fault_code": final.fault_code},
                   "ready and chain_ok within 1 s")

    async def step_door(self, result: StepResult) -> None:
        await self._chain_step(result, FAULTS["door"], "door_closed",
                               "Open the treatment-room door.", "Close the treatment-room door.",
                               None)

    async def step_estop(self, result: StepResult) -> None:
        await self._chain_step(result, FAULTS["estop"], "estop_released",
                               "Press the emergency stop.", "Release the emergency stop.",
                               "stop")

    async def step_watchdog(self, result: StepResult) -> None:
        configured = self.limits.device_watchdog_timeout_ms
        tolerance = watchdog_tolerance_ms(configured)
        result.figures["configured_ms"] = configured
        result.figures["tolerance_ms"] = tolerance
        result.figures["rule"] = "pass within +-20 % of the timeout or +-30 ms, whichever larger"
        for slot, device in self.devices.items():
            if not await self.need(result, slot):
                continue
            figures: dict[str, Any] = {}
            result.figures[slot] = figures
            actuator = False
            if slot == "beam_gate":
                if (await self.gate_allowed())[0]:
                    actuator = await self.open_gate(result) is not None
            elif (await self.xray_allowed())[0] and await self.xic.write_xray(
                    XrayCommand.EXPOSE):
                at, _, _ = await self.wait_xic(lambda s: s.exposing, 2.0)
                actuator = at is not None
            figures["actuator_active"] = actuator
            if not actuator:
                result.notes.append(f"{device.kind}: actuator not active during the test "
                                    "(not confirmed or did not start): fault latch only")
            hb = device.heartbeat
            acks = hb.acks
            for _ in range(100):  # at least two heartbeats acknowledged: the watchdog is armed
                if hb.acks >= acks + 2:
                    break
                await asyncio.sleep(hb.period_s)
            await hb.pause()
            sent, acked = hb.last_sent_at, hb.last_acked_at
            if sent is None or acked is None:
                result.fail(f"{device.kind} heartbeat", "no heartbeat was acknowledged")
                hb.resume()
                continue
            bit = watchdog_fault_bit(device.client.signals["fault_code"].reg)

            def safe(status: Any, bit: int = bit, slot: str = slot) -> bool:
                latched = bool(status.fault_code & bit)
                if slot == "beam_gate":
                    return latched and status.watchdog_tripped and not status.gate_open_readback
                return latched and not status.exposing

            limit_s = (configured * 3 + 500) / 1000
            if slot == "beam_gate":
                at, _, before = await self.wait_bgc(safe, limit_s)
            else:
                at, _, before = await self.wait_xic(safe, limit_s)
            measured = None if at is None else (at - acked) * 1000
            verdict, detail = watchdog_verdict(measured, configured)
            figures["measured_ms"] = None if measured is None else round(measured, 3)
            figures["resolution_ms"] = (None if at is None
                                        else round((at - before + acked - sent) * 1000, 3))
            figures["observed_up_to_ms"] = round(limit_s * 1000)
            result.add(f"{device.kind} watchdog fails safe", verdict,
                       figures["measured_ms"], f"{configured:g} ms +- {tolerance:g} ms", detail)
            # Back to normal: command safe, reset the fault, heartbeats again.
            if slot == "beam_gate":
                await self.bgc.write_gate(GateCommand.CLOSE)
                await self.restore_preset()
            else:
                await self.xic.write_xray(XrayCommand.STOP)
                await self.write_signal(device, "prepare_command", 0)
            reset_ok = await device.client.reset_faults()
            hb.resume()

            def cleared(status: Any, bit: int = bit) -> bool:
                return not status.fault_code & bit

            after: BeamGateStatus | ImagingStatus | None
            if slot == "beam_gate":
                done, after, _ = await self.wait_bgc(cleared, 1.0)
            else:
                done, after, _ = await self.wait_xic(cleared, 1.0)
            result.add(f"{device.kind} watchdog fault reset",
                       Status.PASSED if reset_ok and done is not None else Status.FAILED,
                       None if after is None else after.fault_code, "fault code bit cleared")

    async def step_gate_latency(self, result: StepResult) -> None:
        if not await self.need(result, "beam_gate"):
            return
        if self.refuse(result, await self.gate_allowed()):
            return
        limit_ms = self.limits.gate_actuation_timeout_ms
        if not await self.load_preset():
            result.fail("dose preset", f"not loaded: {self.bgc.last_error}")
            return
        await self.check_preset_readback(result)
        opens: list[float] = []
        closes: list[float] = []
        wait_s = max(10 * limit_ms / 1000, WAIT_FOR_GATE_S)
        for cycle in range(self.options.gate_cycles):
            t0 = self.clock()
            if not await self.bgc.write_gate(GateCommand.OPEN):
                result.fail("gate open", f"cycle {cycle}: {self.bgc.last_error}")
                break
            at, _, _ = await self.wait_bgc(lambda s: s.gate_open_readback, wait_s)
            if at is None:
                result.fail("gate open", f"cycle {cycle}: no open readback within {wait_s:g} s")
                await self.bgc.write_gate(GateCommand.CLOSE)
                break
            opens.append((at - t0) * 1000)
            t1 = self.clock()
            if not await self.bgc.write_gate(GateCommand.CLOSE):
                result.fail("gate close", f"cycle {cycle}: {self.bgc.last_error}")
                break
            at, _, _ = await self.wait_bgc(lambda s: not s.gate_open_readback, wait_s)
            if at is None:
                result.fail("gate close", f"cycle {cycle}: still open after {wait_s:g} s")
                break
            closes.append((at - t1) * 1000)
        await self.bgc.write_gate(GateCommand.CLOSE)
        await self.restore_preset()
        result.figures.update({"cycles": self.options.gate_cycles,
                               "open_ms": summarize(opens), "close_ms": summarize(closes),
                               "measured_from": "command write (verified by read-back) to the "
                                                "first status read showing the readback"})
        why = "limits.gate_actuation_timeout_ms"
        result.checks.append(latency_check("close command to readback", closes, limit_ms, why))
        result.checks.append(latency_check("open command to readback", opens, limit_ms, why))

    async def step_imaging(self, result: StepResult) -> None:
        if not await self.need(result, "imaging"):
            return
        if self.refuse(result, await self.xray_allowed()):
            return
        xic_config = self.config.room.devices.imaging
        t0 = self.clock()
        if not await self.xic.write_xray(XrayCommand.EXPOSE):
            result.fail("expose", self.xic.last_error)
            return
        at, _, _ = await self.wait_xic(lambda s: s.exposing, 2.0)
        if at is None:
            result.fail("expose", "not exposing within 2 s of the command")
            await self.xic.write_xray(XrayCommand.STOP)
            return
        result.figures["expose_ms"] = round((at - t0) * 1000, 3)
        samples: list[FrameSample] = []
        period = xic_config.poll_period_ms / 1000
        end = self.clock() + self.options.imaging_s
        for _ in range(int(self.options.imaging_s / period) + 10):
            reading = await self.xic.poll()
            if reading.healthy and reading.status is not None:
                st = reading.status
                samples.append(FrameSample(self.clock(), st.frame_counter, st.frame_timestamp_ms,
                                           st.device_clock_ms, st.cumulative_mas))
            if self.clock() >= end:
                break
            await asyncio.sleep(period)
        last = self.xic.status
        if last is not None:
            result.figures["at_end"] = {"exposing": last.exposing, "prepared": last.prepared,
                                        "fault_code": last.fault_code,
                                        "frame_counter": last.frame_counter}
        t1 = self.clock()
        stopped = await self.xic.write_xray(XrayCommand.STOP)
        at, _, _ = await self.wait_xic(lambda s: not s.exposing, 1.0)
        await self.write_signal(self.devices["imaging"], "prepare_command", 0)
        stop_ms = None if at is None or not stopped else (at - t1) * 1000
        result.figures["stop_ms"] = None if stop_ms is None else round(stop_ms, 3)
        figures, checks = analyse_frames(samples, xic_config.frame_rate_fps, xic_config.ma,
                                         xic_config.pulse_width_ms,
                                         self.config.room.gating.max_frame_age_ms)
        result.figures.update(figures)
        result.figures["link"] = dict(self.xic.stats)
        hb = self.devices["imaging"].heartbeat
        result.figures["heartbeats"] = {"acknowledged": hb.acks, "failed": hb.failures}
        result.checks.extend(checks)
        result.checks.append(latency_check(
            "stop command to exposing off", [] if stop_ms is None else [stop_ms],
            self.limits.xray_actuation_timeout_ms, "limits.xray_actuation_timeout_ms"))


def _pct(summary: Any) -> str:
    if not isinstance(summary, dict) or not summary.get("count"):
        return "-"
    return (f"p50 {summary['p50']:g} p95 {summary['p95']:g} p99 {summary['p99']:g} "
            f"max {summary['max']:g}")


def headline(result: StepResult) -> list[str]:
    """The figures of a step worth a line on the terminal (the report has them all)."""
    f = result.figures
    lines: list[str] = []
    slots = [(k, v) for k, v in f.items() if k in ("beam_gate", "imaging") and isinstance(v, dict)]
    if result.step == "connect":
        lines = [f"{k}: {v.get('transport')}: connect {v.get('connect_ms')} ms, session "
                 f"{v.get('session_ms', '-')} ms" for k, v in slots]
    elif result.step == "identity":
        lines = [f"{k}: identity {v['identity']}, firmware {v['firmware_version']}"
                 for k, v in slots]
    elif result.step == "registers":
        lines = [f"{k}: {v['registers']} registers: {v['passed']} passed, {v['recorded']} "
                 f"recorded (type only), {v['failed']} failed" for k, v in slots]
    elif result.step == "settings":
        for k, v in slots:
            found = ", ".join(f"{n} {e['found']:g}" for n, e in v.items())
            lines.append(f"{k}: {found}: each as configured; trial and restore read back")
    elif result.step in ("door", "estop") and "act_s" in f:
        lines = [f"change seen {f['act_s']:g} s after the prompt, undone "
                 f"{f.get('undo_s', '-')} s after the next"]
    elif result.step == "watchdog":
        lines = [f"{k}: failed safe after {v.get('measured_ms')} ms (configured "
                 f"{f['configured_ms']:g} +- {f['tolerance_ms']:g} ms, resolution "
                 f"{v.get('resolution_ms')} ms)" for k, v in slots]
    elif result.step == "gate_latency" and "open_ms" in f:
        lines = [f"open  ms: {_pct(f['open_ms'])}", f"close ms: {_pct(f['close_ms'])}"]
    elif result.step == "imaging" and "frame_age_ms" in f:
        lines = [f"{f['frame_rate_device_fps']:g} fps (device clock), {f['missed_frames']} "
                 f"missed by the reads ({f['missed_in_a_row']} in a row), frame age ms: "
                 f"{_pct(f['frame_age_ms'])}",
                 f"frame interval ms: {_pct(f['frame_interval_ms'])}; stop "
                 f"{f.get('stop_ms')} ms"]
    return lines

