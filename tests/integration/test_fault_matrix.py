"""Every backdoor fault, injected while TREATING, over real loopback TCP and a real pty.

The simulators run as their own process (as in the demo); the controller runs here with the
real device clients. Outcomes are judged from the simulators' ground truth (did the gate
really close?) and from the core's outputs (mode, rule ids, X-ray command).

A fault that cuts a link (no answer, late answers, damaged answers, link down) first makes the
device *degraded* (IL-030/IL-031: its last transaction failed, its last good read still fresh):
the beam is denied at the first failed transaction, so the gate closes by readback as fast as
before, and the X-ray goes on. Only once the last good read is older than `device_stale_ms`
(100 ms in configs/room-sim.yaml) is the device *lost* (IL-001/IL-002) and the fraction trips.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from syncctl.analysis.truth import load_truth
from syncctl.cli.faults import FAULTS, inject
from syncctl.cli.operator import ScriptedOperator
from syncctl.cli.simproc import SimProcess, start_simulators
from syncctl.config import load_room
from syncctl.config.backdoor import load_backdoor_layout
from syncctl.controller import Controller, ControllerReport
from syncctl.core import BeamGateReading, EventKind, GateCommand, ImagingReading, Mode, XrayCommand
from syncctl.devices import BeamGateClient, ImagingClient

ROOT = Path(__file__).resolve().parents[2]
ROOM = ROOT / "configs" / "room-sim.yaml"


@dataclass(frozen=True)
class Expect:
    mode: Mode
    rules: frozenset[str]
    """At least one of these rule ids must trip (FAULT) or deny the beam (TREATING)."""
    xray: XrayCommand
    gate_closes_within_s: float | None
    """Deadline for the simulator's actual gate to be closed; None: the gate cannot close."""
    settle_s: float = 1.5
    degraded_first: str | None = None
    """For a cut link: this degraded rule (IL-030/IL-031) holds the beam, in TREATING and
    without a trip, from the first failed transaction; the lost rule trips only on a stale
    read (see check_degraded_then_lost)."""


T = frozenset
BG_CUT, XI_CUT = "IL-030", "IL-031"
EXPECTED: dict[str, Expect] = {
    "door": Expect(Mode.FAULT, T({"IL-006"}), XrayCommand.STOP, 0.1),
    "estop": Expect(Mode.FAULT, T({"IL-005"}), XrayCommand.STOP, 0.1),
    "chain": Expect(Mode.FAULT, T({"IL-007"}), XrayCommand.STOP, 0.1),
    # A stuck gate stays open whatever anyone says: the synchronizer must notice when it next
    # commands it closed (the target leaves the window), trip and stop imaging. Closing it is
    # up to the accelerator's own beam abort (a hardware assumption in the safety case).
    "stuck_gate": Expect(Mode.FAULT, T({"IL-010"}), XrayCommand.STOP, None, settle_s=8.0),
    "slow_gate": Expect(Mode.FAULT, T({"IL-010"}), XrayCommand.STOP, 8.0, settle_s=8.0),
    # Cut beam-gate links: the core commands the gate closed at the first failed transaction
    # the client reports (IL-030, some 52 ms after the last good read: the 50 ms transaction
    # timeout), and trips (IL-001) once that read is older than device_stale_ms (100 ms). The
    # close command cannot get through the cut link: the firmware's own watchdog (200 ms
    # without a heartbeat) closes the gate, measured 212-225 ms after the injection.
    "response_delay": Expect(Mode.FAULT, T({"IL-001"}), XrayCommand.STOP, 0.5,
                             degraded_first=BG_CUT),
    "dropped_responses": Expect(Mode.FAULT, T({"IL-001"}), XrayCommand.STOP, 0.5,
                                degraded_first=BG_CUT),
    "beam_gate_corrupt": Expect(Mode.FAULT, T({"IL-001", "IL-003"}), XrayCommand.STOP, 0.5,
                                degraded_first=BG_CUT),
    "beam_gate_disconnect": Expect(Mode.FAULT, T({"IL-001"}), XrayCommand.STOP, 0.5,
                                   degraded_first=BG_CUT),
    "beam_gate_reboot": Expect(Mode.FAULT, T({"IL-003", "IL-012", "IL-001"}), XrayCommand.STOP,
                               0.5),
    "tracking_loss": Expect(Mode.TREATING, T({"IL-026"}), XrayCommand.EXPOSE, 0.2),
    "frozen_frames": Expect(Mode.TREATING, T({"IL-025", "IL-024"}), XrayCommand.EXPOSE, 0.3),
    "delayed_frames": Expect(Mode.TREATING, T({"IL-024"}), XrayCommand.EXPOSE, 0.3),
    "marker_jump": Expect(Mode.TREATING, T({"IL-027", "IL-028"}), XrayCommand.EXPOSE, 0.2),
    "baseline_shift": Expect(Mode.TREATING, T({"IL-028"}), XrayCommand.EXPOSE, 0.3),
    # Cut imaging links: IL-031 holds the beam when the first transaction fails (60 ms
    # timeout; seen 69-100 ms after the last good read), IL-024 as the frame ages past 70 ms;
    # the close goes out over the healthy beam-gate link (measured 70-71 ms). IL-002 trips
    # once the last good read is older than 100 ms.
    "imaging_corrupt": Expect(Mode.FAULT, T({"IL-002", "IL-004"}), XrayCommand.STOP, 0.3,
                              degraded_first=XI_CUT),
    "imaging_disconnect": Expect(Mode.FAULT, T({"IL-002"}), XrayCommand.STOP, 0.3,
                                 degraded_first=XI_CUT),
    "imaging_reboot": Expect(Mode.FAULT, T({"IL-004", "IL-009", "IL-013", "IL-002"}),
                             XrayCommand.STOP, 0.5),
}


def test_every_named_fault_has_an_expectation() -> None:
    assert set(EXPECTED) == set(FAULTS)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimProcess]:
    with (tmp_path / "sim.log").open("w") as log:
        process = start_simulators(ROOM, [
            "--seed", "4", "--truth", str(tmp_path / "truth"), "--beam-gate-port", "0",
            "--imaging-link", str(tmp_path / "xic"), "--backdoor-port", "0",
        ], stderr=log)
        try:
            yield process
        finally:
            code = process.stop()
            assert process.process.poll() is not None, "simulator still running"
            assert code == 0, f"simulator exited with {code}"


async def treat_then_inject(sim: SimProcess, fault_name: str, expect: Expect,
                            ) -> tuple[list[ControllerReport], float]:
    config = load_room(ROOM).with_endpoints(sim.ready["beam_gate"], sim.ready["imaging"])
    beam_gate, imaging = BeamGateClient(config), ImagingClient(config)
    controller = Controller(config.to_core_params(), beam_gate, imaging,
                            deadline_s=0.05, max_consecutive_overruns=20)
    reports: list[ControllerReport] = []
    operator = ScriptedOperator(controller, "lung-01")
    stop = asyncio.Event()
    gate_opened = asyncio.Event()

    def listen(report: ControllerReport) -> None:
        reports.append(report)
        if report.state.mode is Mode.TREATING and report.outputs.gate is GateCommand.OPEN:
            gate_opened.set()

    controller.listeners += [operator, listen]
    run = asyncio.create_task(controller.run(stop))
    try:
        await asyncio.wait_for(gate_opened.wait(), 20)
        await asyncio.sleep(0.3)  # the gate is really open by now
        controller.listeners.remove(operator)
        injected_at = time.monotonic()
        fault = FAULTS[fault_name]
        where = sim.ready["backdoor"][fault.slot]
        await inject(load_backdoor_layout(), where["host"], int(where["port"]), fault)
        await asyncio.sleep(expect.settle_s)
    finally:
        stop.set()
        await asyncio.wait_for(run, 10)
        await beam_gate.close()
        await imaging.close()
    return reports, injected_at


def timeline(reports: list[ControllerReport], limit: int = 12) -> list[str]:
    """What changed, report by report (for failure messages): time, mode, denials, trips."""
    lines: list[str] = []
    last = None
    for r in reports:
        trips = [rid for e in r.outputs.events if e.kind is EventKind.TRIP for rid in e.rule_ids]
        key = (r.state.mode, r.outputs.beam_permit.denied_by, tuple(trips))
        if key != last:
            lines.append(f"{r.now - reports[0].now:+.3f} s {r.state.mode.name} beam denied by"
                         f" {list(r.outputs.beam_permit.denied_by)} trips {trips}"
                         f" bg healthy={r.snapshot.beam_gate.healthy}"
                         f" xi healthy={r.snapshot.imaging.healthy}")
            last = key
        if len(lines) >= limit:
            break
    return lines


def check_degraded_then_lost(after: list[ControllerReport], degraded: str) -> None:
    """A cut link: at the first failed transaction the core sees (an unhealthy reading whose
    last good read is still fresh) the beam is held by the degraded rule, in TREATING, with no
    trip and the X-ray going on; and the lost rule trips only on a reading whose last good
    read is older than device_stale_s.

    The degraded window can be empty: a transaction already in flight (a heartbeat or gate
    write holds the client's lock, and a failed write does not mark the reading unhealthy)
    may delay the first failed poll until the last good read is already stale; then the
    device goes from healthy straight to lost, which is also correct."""
    lost = "IL-001" if degraded == BG_CUT else "IL-002"

    def reading(r: ControllerReport) -> BeamGateReading | ImagingReading:
        return r.snapshot.beam_gate if lost == "IL-001" else r.snapshot.imaging

    stale_s = after[0].state.params.device_stale_s
    failed = [r for r in after if reading(r).healthy is not True]
    assert failed, f"the link fault never failed a transaction: {timeline(after)}"
    first = failed[0]
    kept = reading(first)
    assert kept.status is not None and kept.read_at is not None, (
        "the client forgot the last good reading")
    if first.now - kept.read_at <= stale_s:
        denied = first.outputs.beam_permit.denied_by
        assert degraded in denied and lost not in denied, timeline(after)
        assert first.state.mode is Mode.TREATING, timeline(after)
        assert not any(e.kind is EventKind.TRIP for r in after[: after.index(first) + 1]
                       for e in r.outputs.events), timeline(after)
        assert first.outputs.gate is GateCommand.CLOSE
        assert first.outputs.xray is XrayCommand.EXPOSE, "the X-ray goes on while degraded"
    for report in after:
        if not any(lost in e.rule_ids for e in report.outputs.events
                   if e.kind is EventKind.TRIP):
            continue
        read_at = reading(report).read_at
        assert read_at is not None, "the client forgot the last good reading"
        age = report.now - read_at
        assert age > stale_s, f"{lost} tripped on a reading {age:.3f} s old"


@pytest.mark.asyncio
@pytest.mark.parametrize("fault_name", sorted(EXPECTED))
async def test_fault_in_treating_ends_safe(sim: SimProcess, tmp_path: Path,
                                           fault_name: str) -> None:
    expect = EXPECTED[fault_name]
    reports, injected_at = await treat_then_inject(sim, fault_name, expect)
    after = [r for r in reports if r.now >= injected_at]
    assert after, "no cycle after the injection"
    final = after[-1]
    if expect.mode is Mode.FAULT:
        tripped = {rid for r in after for e in r.outputs.events if e.kind is EventKind.TRIP
                   for rid in e.rule_ids}
        assert final.state.mode is Mode.FAULT, (fault_name, final.state.mode)
        assert tripped & expect.rules, f"{fault_name}: tripped {sorted(tripped)}"
    else:
        assert final.state.mode is Mode.TREATING, (fault_name, final.state.mode)
        denied = set(final.outputs.beam_permit.denied_by)
        assert denied & expect.rules, f"{fault_name}: denied {sorted(denied)}"
    assert final.outputs.gate is GateCommand.CLOSE
    assert final.outputs.xray is expect.xray
    if expect.degraded_first is not None:
        check_degraded_then_lost(after, expect.degraded_first)

    sim.stop()  # flush the ground truth
    truth = load_truth(tmp_path / "truth")
    after_truth = [g for g in truth.gate if g.t >= injected_at]
    assert after_truth, "no ground truth after the injection"
    if expect.gate_closes_within_s is None:
        assert after_truth[-1].gate_open, "a stuck gate cannot close: the simulator says it did"
    else:
        closed = [g.t - injected_at for g in after_truth if not g.gate_open]
        assert closed, f"{fault_name}: the gate never closed"
        assert closed[0] <= expect.gate_closes_within_s, (
            f"{fault_name}: gate closed {closed[0] * 1000:.0f} ms after the injection")
        assert not after_truth[-1].gate_open
