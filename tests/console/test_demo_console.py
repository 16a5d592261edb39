"""`syncctl demo --console`: simulators (a child process), the room (controller, room service,
InProcessBus) in a worker thread and the console over the loop bridge; a human (here: Pilot)
logs in and sends commands, and quitting the console ends the run safely (safe state confirmed
by readback) with the usual summary. The treatment flow itself is tested in test_console.py
(in-memory device ports), where a loaded machine cannot starve a serial link."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from syncctl.bus import BusClient, InProcessBus
from syncctl.cli.console_cmd import make_app
from syncctl.cli.demo_cmd import CONSOLE_SWITCH_INTERVAL_S, run_demo
from syncctl.cli.main import build_parser
from syncctl.cli.scheduling import console_thread_block
from syncctl.config import load_room
from syncctl.console import ConsoleApp
from syncctl.console.app import ConfirmScreen, MainScreen, PlanScreen
from syncctl.console.bridge import LoopBridgeBus
from syncctl.controller.loop import run as run_loop
from syncctl.core import TERMINATION_REFUSAL, Mode
from syncctl.service import room_topics
from tests.console.helpers import SIZE, mode_is, press, until
from tests.console.test_console import (
    answered,
    confirm,
    log_in,
    text_of,
)

ROOT = Path(__file__).resolve().parents[2]
MAX_RESETS = 2


async def select_plan_as_an_operator(pilot: Pilot[None], app: ConsoleApp,
                                     seen: dict[str, Any]) -> None:
    """Select lung-01. A refusal for a device fault present in SAFE (a watchdog or a stale
    reading when this process was starved before the room was in use) is acknowledged and
    reset, then the plan selected again, as an operator would, at most MAX_RESETS times;
    ``seen["resets"]`` counts them. Anything else refused fails the test."""
    seen["resets"] = 0
    for _ in range(MAX_RESETS + 1):
        await until(pilot, lambda: app.why_not("select_plan") == "", "select_plan available",
                    60)
        before = len(app.acks)
        await press(pilot, "p")
        await until(pilot, lambda: isinstance(app.screen, PlanScreen), "the plan list")
        await press(pilot, "enter")  # the first plan: lung-01
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        await press(pilot, "y")
        ack = await answered(pilot, app, before)
        if ack.result == "accepted":
            return
        assert ack.reason.startswith(TERMINATION_REFUSAL), ack
        assert seen["resets"] < MAX_RESETS, ack
        seen["resets"] += 1
        for key in ("k", "e"):  # acknowledge, reset
            await answered(pilot, app, await confirm(pilot, app, key))


@pytest.mark.asyncio
@pytest.mark.timeout(240)
async def test_demo_console_a_human_drives_and_quitting_ends_the_run_safely(
        tmp_path: Path) -> None:
    config = load_room(ROOT / "configs" / "room-sim.yaml")
    args = build_parser().parse_args(["demo", "--console", "--no-record", "--quiet",
                                      "--max-seconds", "180", "--plan", "lung-01"])
    seen: dict[str, Any] = {}
    # as `_with_console` does: the room in a worker thread (its own loop), the console here
    bridge = LoopBridgeBus(room_topics(config))

    async def room_side() -> dict[str, Any]:
        bus = InProcessBus(room_topics(config))
        try:
            summary: dict[str, Any] = await run_demo(config, args, tmp_path, bus=bus,
                                                     console=bridge.serve)
            return summary
        finally:
            await bus.close()

    # as `_with_console` does: the console thread real-time below the room's (they share
    # the interpreter lock), restored when the block ends
    with console_thread_block(args):
        previous = sys.getswitchinterval()
        sys.setswitchinterval(CONSOLE_SWITCH_INTERVAL_S)
        room = asyncio.ensure_future(asyncio.to_thread(run_loop, room_side()))
        client = BusClient(bridge)
        try:
            await asyncio.wait_for(bridge.attached.wait(), 60)
            await client.start()
            app = make_app(client, config, ends_run=True)
            async with app.run_test(size=SIZE) as pilot:
                # the demo users file: operator1 / 1111, role from the file
                await log_in(pilot, app, "operator1", "1111")
                await until(pilot, lambda: isinstance(app.screen, MainScreen), "main screen", 60)
                await until(pilot, mode_is(app, Mode.SAFE), "SAFE", 60)
                await select_plan_as_an_operator(pilot, app, seen)  # over the bridge
                ack = await answered(pilot, app, await confirm(pilot, app, "i"))
                assert ack.result == "accepted", ack
                await until(pilot, lambda: mode_is(app, Mode.FAULT)() or (
                    app.client.telemetry is not None
                    and app.client.telemetry.target_mm is not None), "tracked telemetry", 30)
                seen["mode"] = app.client.state.mode if app.client.state else None
                await press(pilot, "q")
                await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "quit dialog")
                assert "controller stops safely" in text_of(app, "#confirm-what")
                await press(pilot, "y")
                await until(pilot, lambda: not app.is_running, "the console exits", 20)
            bridge.request_stop()  # what run_beside does when the console exits
            summary = await asyncio.wait_for(room, 60)
        except AssertionError as exc:
            events = [f"{e.kind} {e.rule_ids} {e.message}" for e in client.events][-15:]
            raise AssertionError(f"{exc}; the room's last events: {events}") from None
        finally:
            bridge.request_stop()
            await asyncio.wait([room], timeout=60)
            await client.close()
            sys.setswitchinterval(previous)
    assert bridge.gone.is_set()
    # quitting ended the run: the room stopped safely, confirmed by readback, with a summary
    print(f"set-up resets: {seen['resets']}, mode when quitting: {seen['mode']}")
    assert seen["mode"] in ("SETUP", "FAULT")  # FAULT: a set-up trip on a loaded machine
    assert summary["safe_state_confirmed"] is True
    assert summary["plan_id"] == "lung-01"
    assert summary["final_state"] in ("SETUP", "FAULT")
    assert summary["controller"]["cycles"] > 100
