"""`syncctl demo --console`: simulators (a child process), controller, room service and the
console in one process over one InProcessBus; a human (here: Pilot) drives, and quitting the
console ends the run safely (safe state confirmed by readback) with the usual summary."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input

from syncctl.bus import BusClient, InProcessBus
from syncctl.cli.console_cmd import make_app
from syncctl.cli.demo_cmd import CONSOLE_SWITCH_INTERVAL_S, run_demo
from syncctl.cli.main import build_parser
from syncctl.config import load_room
from syncctl.console.app import ConfirmScreen, MainScreen
from syncctl.console.bridge import LoopBridgeBus
from syncctl.core import Mode
from syncctl.service import room_topics
from tests.console.helpers import SIZE, mode_is, press, until
from tests.console.test_console import (
    answered,
    confirm,
    image_and_arm,
    log_in,
    select_plan,
    text_of,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.asyncio
@pytest.mark.timeout(240)
async def test_demo_console_a_human_treats_and_quitting_ends_the_run_safely(
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

    previous = sys.getswitchinterval()
    sys.setswitchinterval(CONSOLE_SWITCH_INTERVAL_S)
    room = asyncio.ensure_future(asyncio.to_thread(asyncio.run, room_side()))
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
            for attempt in range(3):
                try:
                    await select_plan(pilot, app)
                    await image_and_arm(pilot, app)
                    break
                except AssertionError:
                    # A set-up trip (a device read starved on a loaded machine: IL-002 seen
                    # in about 1 run of 5 under load, never during treatment) is a fault like
                    # any other: acknowledged, reset and started over, at most twice, and
                    # counted below.
                    if attempt == 2 or not mode_is(app, Mode.FAULT)():
                        raise
                    seen["setup_trips"] = seen.get("setup_trips", 0) + 1
                    for key in ("k", "e"):
                        await answered(pilot, app, await confirm(pilot, app, key))
                    await until(pilot, mode_is(app, Mode.SAFE), "SAFE again", 30)
            before = len(app.acks)
            await press(pilot, "b")
            app.screen.query_one("#beam-phrase", Input).value = "BEAM ON"
            await press(pilot, "enter")
            await until(pilot, lambda: len(app.acks) > before, "the beam-on ack")
            assert app.acks[-1].result == "accepted", app.acks[-1]
            await until(pilot, lambda: app.client.state is not None and (
                app.client.state.delivered_dose_mu or 0) > 0.5, "dose delivered", 60)
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
    assert seen["mode"] in ("TREATING", "COMPLETE")
    assert summary["safe_state_confirmed"] is True
    assert summary["plan_id"] == "lung-01"
    assert summary["delivered_dose_mu"] > 0.5
    assert summary["final_state"] in ("TREATING", "HOLD", "COMPLETE", "SAFE")
    # no trip once the treatment started; set-up trips only as counted above
    assert len(summary["trips"]) == seen.get("setup_trips", 0), summary["trips"]
