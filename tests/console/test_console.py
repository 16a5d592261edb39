"""The console, headless (Textual Pilot), against a real room service over an InProcessBus
with a controller on in-memory device ports."""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Button, Input, ProgressBar, Select, Static

from syncctl.bus import Ack
from syncctl.console import ConsoleApp
from syncctl.console.app import (
    BeamOnScreen,
    ConfirmScreen,
    LoginScreen,
    MainScreen,
    PlanScreen,
    ShelveScreen,
)
from syncctl.console.logic import ACTIONS
from syncctl.core import Mode
from tests.console.helpers import (
    PINS,
    SIZE,
    SNAPSHOTS,
    Room,
    check_snapshot,
    compare_words,
    mode_is,
    press,
    screen_text,
    until,
)

DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"


def text_of(app: ConsoleApp, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


async def log_in(pilot: Pilot[None], app: ConsoleApp, operator: str, pin: str) -> None:
    await until(pilot, lambda: isinstance(app.screen, LoginScreen), "the login screen")
    app.screen.query_one("#login-id", Input).value = operator
    app.screen.query_one("#login-pin", Input).value = pin
    app.screen.query_one("#login-go", Button).press()
    await pilot.pause(0.05)


@pytest.mark.asyncio
async def test_login_refused_then_accepted(room: Room) -> None:
    app = room.app()
    async with app.run_test(size=SIZE) as pilot:
        await log_in(pilot, app, "olga", "9999")
        await until(pilot, lambda: "refused" in text_of(app, "#login-why"), "the refusal")
        assert "Login refused: unknown operator or wrong PIN" in text_of(app, "#login-why")
        assert isinstance(app.screen, LoginScreen)
        assert app.screen.query_one("#login-pin", Input).value == ""  # cleared
        assert app.screen.query_one("#login-pin", Input).password
        await log_in(pilot, app, "olga", PINS["olga"])
        await until(pilot, lambda: isinstance(app.screen, MainScreen), "the main screen")
        assert app.client.role == "operator"  # from the users file
        await until(pilot, mode_is(app, Mode.SAFE), "SAFE")
        await pilot.pause(0.3)
        assert "SAFE" in text_of(app, "#mode") and "olga (operator)" in text_of(app, "#mode")
        beam = text_of(app, "#beam")
        assert "DENIED" in beam and "IL-" in beam
        # each denying rule with its plain-language reason
        state = app.client.state
        assert state is not None
        for r in state.beam_permit.denied_by:
            assert r.rule_id in beam and r.text[:20] in beam.replace("\n", " ")
        assert "Dose: no plan selected" in str(app.screen.query_one("#dose-label").render())
        assert app.screen.query_one("#do-arm", Button).disabled
        assert "not allowed in SAFE" in str(app.screen.query_one("#do-arm", Button).tooltip)
        assert not app.screen.query_one("#do-select_plan", Button).disabled
        await check_snapshot(app, "safe")


async def confirm(pilot: Pilot[None], app: ConsoleApp, key: str) -> int:
    """Press an action's key and confirm it with y; returns the number of acks before."""
    command = next(a.command for a in ACTIONS if a.key == key)
    # the ack of the previous command may come before the room's new state
    await until(pilot, lambda: app.why_not(command) == "", f"{command} available")
    before = len(app.acks)
    await press(pilot, key)
    await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), f"confirmation of {key}")
    await press(pilot, "y")
    return before


async def answered(pilot: Pilot[None], app: ConsoleApp, before: int) -> Ack:
    await until(pilot, lambda: len(app.acks) > before, "the ack")
    return app.acks[-1]


async def open_beam_on(pilot: Pilot[None], app: ConsoleApp) -> None:
    """Press b and wait for the beam-on dialog with its phrase field focused: it takes the
    focus once mounted, and under load keys pressed sooner could reach the screen instead."""
    await press(pilot, "b")
    await until(pilot, lambda: isinstance(app.screen, BeamOnScreen), "beam-on dialog")
    await until(pilot, lambda: isinstance(app.focused, Input)
                and app.focused.id == "beam-phrase", "the phrase field focused")


async def select_plan(pilot: Pilot[None], app: ConsoleApp) -> None:
    await until(pilot, lambda: app.why_not("select_plan") == "", "select_plan available")
    before = len(app.acks)
    await press(pilot, "p")
    await until(pilot, lambda: isinstance(app.screen, PlanScreen), "the plan list")
    await press(pilot, "enter")  # the first plan: lung-01
    await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
    assert "Select plan lung-01" in text_of(app, "#confirm-what")
    await press(pilot, "y")
    ack = await answered(pilot, app, before)
    assert ack.result == "accepted", ack
    assert "Select plan: accepted (mode SETUP)" in text_of(app, "#ack")


async def image_and_arm(pilot: Pilot[None], app: ConsoleApp) -> None:
    ack = await answered(pilot, app, await confirm(pilot, app, "i"))
    assert ack.result == "accepted", ack
    await until(pilot, lambda: app.client.state is not None and app.client.state.xray == "expose",
                "X-ray exposing")
    for _ in range(50):  # the core refuses arming until tracking is confirmed
        ack = await answered(pilot, app, await confirm(pilot, app, "a"))
        if ack.result == "accepted":
            break
        assert ack.result == "refused" and ack.reason in text_of(app, "#ack")
        await pilot.pause(0.2)
    assert ack.result == "accepted" and ack.mode == "READY", ack


@pytest.mark.asyncio
async def test_operator_flow_reaches_treating_only_with_typed_confirmation(room: Room) -> None:
    app = room.app()
    async with app.run_test(size=SIZE) as pilot:
        await log_in(pilot, app, "olga", PINS["olga"])
        await until(pilot, lambda: isinstance(app.screen, MainScreen), "the main screen")
        await until(pilot, mode_is(app, Mode.SAFE), "SAFE")
        await select_plan(pilot, app)
        await image_and_arm(pilot, app)
        await pilot.pause(0.3)
        assert not app.screen.query_one("#do-beam_on", Button).disabled
        # beam on without the typed confirmation does nothing
        await open_beam_on(pilot, app)
        await press(pilot, "y", "enter")
        await until(pilot, lambda: "Not confirmed" in text_of(app, "#beam-why"), "the refusal")
        assert isinstance(app.screen, BeamOnScreen)
        assert app.screen.query_one("#beam-yes", Button).disabled
        await press(pilot, "escape")
        await until(pilot, lambda: isinstance(app.screen, MainScreen), "back to main")
        assert "nothing sent" in text_of(app, "#ack")
        await pilot.pause(0.5)
        assert app.client.state is not None and app.client.state.mode == "READY"
        # with the phrase typed: TREATING
        before = len(app.acks)
        await open_beam_on(pilot, app)
        app.screen.query_one("#beam-phrase", Input).value = "BEAM ON"
        await pilot.pause(0.1)
        await press(pilot, "enter")
        ack = await answered(pilot, app, before)
        assert ack.result == "accepted" and ack.mode == "TREATING", ack
        await until(pilot, lambda: (app.client.state is not None
                                    and (app.client.state.delivered_dose_mu or 0) > 5.0),
                    "some dose delivered")
        await pilot.pause(1.0)
        assert "TREATING" in text_of(app, "#mode")
        assert "of 400 MU planned" in str(app.screen.query_one("#dose-label").render())
        bar = app.screen.query_one("#dose-bar", ProgressBar)
        assert bar.total == 400.0 and 0 < (bar.progress or 0) < 400
        trace = "\n".join(app.trace.render())
        assert "●" in trace and "░" in trace and "█" in trace  # target, window, gate open
        await check_snapshot(app, "treating")
        if os.environ.get("SYNCCTL_UPDATE_SNAPSHOTS") == "1":
            app.save_screenshot("console-treating.svg", str(DOCS_IMG))
        # pause, resume, abort: each confirmed, each acknowledged
        ack = await answered(pilot, app, await confirm(pilot, app, "h"))
        assert ack.result == "accepted" and ack.mode == "HOLD", ack
        ack = await answered(pilot, app, await confirm(pilot, app, "r"))
        assert ack.result == "accepted" and ack.mode == "TREATING", ack
        ack = await answered(pilot, app, await confirm(pilot, app, "x"))
        assert ack.result == "accepted" and ack.mode == "SAFE", ack


@pytest.mark.asyncio
async def test_a_trip_shows_as_fault_then_acknowledge_reset_and_start_over(room: Room) -> None:
    app = room.app()
    async with app.run_test(size=SIZE) as pilot:
        await log_in(pilot, app, "olga", PINS["olga"])
        await until(pilot, lambda: isinstance(app.screen, MainScreen), "the main screen")
        await until(pilot, mode_is(app, Mode.SAFE), "SAFE")
        await select_plan(pilot, app)
        room.ports.room.faults.add("estop")  # the emergency stop is pressed
        await until(pilot, mode_is(app, Mode.FAULT), "FAULT")
        await pilot.pause(0.5)
        screen = app.screen
        assert isinstance(screen, MainScreen)
        assert "FAULT" in text_of(app, "#mode")
        assert "IL-005" in text_of(app, "#beam")
        assert "on red" in screen.rule_styles["IL-005"]  # the tripped rule is highlighted
        assert "IL-005 emergency_stop termination ACTIVE LATCHED" in screen.interlocks_plain
        trips = [s for s in screen.events_text.spans if "on red" in str(s.style)]
        assert trips and "IL-005" in screen.events_text.plain[trips[0].start:trips[0].end]
        assert "IL-005" in text_of(app, "#alarms")
        assert screen.query_one("#do-select_plan", Button).disabled
        await check_snapshot(app, "fault")
        # reset before acknowledging is refused by the core, with its reason shown
        room.ports.room.faults.discard("estop")
        ack = await answered(pilot, app, await confirm(pilot, app, "e"))
        assert ack.result == "refused" and ack.reason, ack
        assert "REFUSED" in text_of(app, "#ack") and ack.reason in text_of(app, "#ack")
        ack = await answered(pilot, app, await confirm(pilot, app, "k"))
        assert ack.result == "accepted", ack
        ack = await answered(pilot, app, await confirm(pilot, app, "e"))
        assert ack.result == "accepted" and ack.mode == "SAFE", ack
        await until(pilot, mode_is(app, Mode.SAFE), "SAFE")
        await pilot.pause(0.3)
        await select_plan(pilot, app)  # start over: a new selection of the plan


@pytest.mark.asyncio
async def test_a_viewers_actions_are_disabled_with_the_reason(room: Room) -> None:
    app = room.app()
    async with app.run_test(size=SIZE) as pilot:
        await log_in(pilot, app, "vera", PINS["vera"])
        await until(pilot, lambda: isinstance(app.screen, MainScreen), "the main screen")
        await until(pilot, mode_is(app, Mode.SAFE), "SAFE")
        await pilot.pause(0.3)
        for a in ACTIONS:
            button = app.screen.query_one(f"#do-{a.command}", Button)
            assert button.disabled, a.command
            assert f"role 'viewer' may not {a.command}" in str(button.tooltip)
        await press(pilot, "p")
        await pilot.pause(0.3)
        assert isinstance(app.screen, MainScreen)  # no plan list opened
        assert "not available: role 'viewer' may not select_plan" in text_of(app, "#ack")
        assert app.acks == deque() and app.client.state is not None
        assert app.client.state.mode == "SAFE"


@pytest.mark.asyncio
async def test_a_telemetry_gap_shows_on_the_banner(room: Room) -> None:
    app = room.app()
    async with app.run_test(size=SIZE) as pilot:
        await log_in(pilot, app, "vera", PINS["vera"])
        await until(pilot, lambda: isinstance(app.screen, MainScreen), "the main screen")
        await until(pilot, lambda: app.client.telemetry_gaps.received >= 3, "telemetry")
        await pilot.pause(0.3)
        banner = app.screen.query_one("#banner", Static)
        assert not banner.display and text_of(app, "#banner") == ""
        room.bus._set_connected(False)  # the link fails, for the controller and this console
        await until(pilot, lambda: "BUS OFFLINE" in text_of(app, "#banner"), "bus offline")
        await until(pilot, lambda: room.service.stats.telemetry_dropped >= 10, "drops")
        room.bus._set_connected(True)
        await until(pilot, lambda: "telemetry gap" in text_of(app, "#banner"), "the gap shown")
        text = text_of(app, "#banner")
        gaps = app.client.telemetry_gaps
        assert gaps.gaps == 1 and gaps.missing == gaps.publisher_dropped_total >= 10
        assert gaps.last_gap is not None
        assert text == (f"telemetry gap: {gaps.missing} samples missed in 1 gap (largest "
                        f"{gaps.missing}, last at {gaps.last_gap.utc[11:19]} UTC); the "
                        f"controller could not send {gaps.missing} telemetry samples in this "
                        "run"), text
        assert banner.display


def test_the_snapshot_comparison_fails_on_a_changed_label() -> None:
    kept = screen_text((SNAPSHOTS / "safe.svg").read_text(encoding="utf-8"))
    assert compare_words(kept, kept, set()) == []
    renamed = [line.replace("Beam permit", "Beam allowed") for line in kept]
    assert compare_words(kept, renamed, set()) == ["missing now: permit",
                                                  "new now: allowed"]
    without_panel = [line.replace("Interlocks", "") for line in kept]
    assert "missing now: Interlocks" in compare_words(kept, without_panel, set())


@pytest.mark.asyncio
async def test_a_physicist_shelves_an_interruption_alarm_with_reason_and_expiry(
        room: Room) -> None:
    app = room.app()
    async with app.run_test(size=SIZE) as pilot:
        await log_in(pilot, app, "phil", PINS["phil"])
        await until(pilot, lambda: isinstance(app.screen, MainScreen), "the main screen")
        await until(pilot, mode_is(app, Mode.SAFE), "SAFE")
        await press(pilot, "s")  # nothing to shelve yet
        assert "no active interruption alarm" in text_of(app, "#ack")
        await select_plan(pilot, app)
        await image_and_arm(pilot, app)
        await open_beam_on(pilot, app)
        app.screen.query_one("#beam-phrase", Input).value = "BEAM ON"
        await press(pilot, "enter")
        await until(pilot, mode_is(app, Mode.TREATING), "TREATING")
        room.ports.room.faults.add("tracking_loss")  # low confidence: an interruption

        def alarm_active() -> bool:
            alarms = app.client.alarms
            return alarms is not None and any(a.rule_id == "IL-026" for a in alarms.active)
        await until(pilot, alarm_active, "the IL-026 alarm")
        await press(pilot, "s")
        await until(pilot, lambda: isinstance(app.screen, ShelveScreen), "the shelve dialog")
        dialog = app.screen
        dialog.query_one("#shelve-rule", Select).value = "IL-026"
        dialog.query_one("#shelve-yes", Button).press()  # no reason yet
        await until(pilot, lambda: "A reason is required" in text_of(app, "#shelve-why"),
                    "the dialog asks for the reason")
        assert isinstance(app.screen, ShelveScreen)
        dialog.query_one("#shelve-reason", Input).value = "marker tracking being recalibrated"
        dialog.query_one("#shelve-minutes", Input).value = "10"
        before = len(app.acks)
        dialog.query_one("#shelve-yes", Button).press()
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        assert "Shelve IL-026 for 10 min" in text_of(app, "#confirm-what")
        await press(pilot, "y")
        ack = await answered(pilot, app, before)
        assert ack.result == "accepted", ack
        await until(pilot, lambda: "shelved by phil" in text_of(app, "#alarms"), "the shelf")
        assert "marker tracking being recalibrated" in text_of(app, "#alarms")
        room.ports.room.faults.discard("tracking_loss")
        ack = await answered(pilot, app, await confirm(pilot, app, "x"))
        assert ack.result == "accepted" and ack.mode == "SAFE", ack
