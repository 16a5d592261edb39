"""A room for the console tests: controller on in-memory device ports (the scripted room of
tests/unit/test_controller.py), the real room service over an InProcessBus, and the console
app with its own BusClient; plus bounded waits and the snapshot comparison."""

from __future__ import annotations

import asyncio
import html
import os
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from textual import events
from textual.pilot import Pilot

from syncctl.bus import BusClient, InProcessBus, Topics, User, Users, hash_pin
from syncctl.console import ConsoleApp, PlanChoice
from syncctl.controller import Controller
from syncctl.core import RULES, Mode, Plan
from syncctl.service import RoomService, ServiceSettings
from tests.unit.harness import PARAMS, TARGET
from tests.unit.test_controller import RoomPorts

ROOM = "console-room"
PINS = {"olga": "1111", "phil": "2222", "vera": "4444"}
ROLE_OF = {"olga": "operator", "phil": "physicist", "vera": "viewer"}
SIZE = (170, 52)
SNAPSHOTS = Path(__file__).parent / "snapshots"
# Plans long enough to watch TREATING (the scripted room delivers 10 MU/s while the gate is
# open); freshness limits relaxed: the console renders in the controller's event loop on a
# loaded machine, and these tests are about the console, not the cycle's timing.
PARAMS_CONSOLE = replace(
    PARAMS,
    plans=(Plan("lung-01", 400.0, TARGET), Plan("liver-02", 300.0, TARGET)),
    max_frame_age_s=0.5, device_stale_s=1.0, device_watchdog_timeout_s=2.0,
    gate_actuation_timeout_s=0.5, xray_actuation_timeout_s=0.5, max_time_step_s=2.0)


def make_users() -> Users:
    return Users([User(uid, ROLE_OF[uid], hash_pin(pin))  # type: ignore[arg-type]
                  for uid, pin in PINS.items()])


@dataclass
class Room:
    ports: RoomPorts
    controller: Controller
    bus: InProcessBus
    service: RoomService
    users: Users

    def app(self) -> ConsoleApp:
        def role_of(uid: str) -> str | None:
            user = self.users.get(uid)
            return None if user is None else user.role
        return ConsoleApp(BusClient(self.bus), room_id=ROOM,
                          plans=[PlanChoice(p.plan_id, p.planned_dose_mu)
                                 for p in PARAMS_CONSOLE.plans],
                          role_of=role_of)  # type: ignore[arg-type]


async def open_room(users: Users) -> AsyncIterator[Room]:
    ports = RoomPorts()
    controller = Controller(PARAMS_CONSOLE, ports.beam_gate, ports.imaging, period_s=0.002,
                            imaging_period_s=0.01)
    bus = InProcessBus(Topics("syncctl", ROOM))
    service = RoomService(controller, bus, users, ServiceSettings(room_id=ROOM))
    stop = asyncio.Event()
    await service.start()
    run = asyncio.create_task(controller.run(stop))
    try:
        yield Room(ports, controller, bus, service, users)
    finally:
        stop.set()
        await asyncio.wait_for(run, 20)
        await service.stop()
        await bus.close()


async def until(pilot: Pilot[None], condition: Callable[[], bool], what: str,
                timeout_s: float = 20.0) -> None:
    """Wait (bounded) for ``condition``, letting the app run."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not in time: {what}"
        await pilot.pause(0.05)


async def press(pilot: Pilot[None], *keys: str) -> None:
    """Key presses as the terminal sends them. (``Pilot.press`` waits for the process to be
    idle after each key, up to 2 s, which a running controller in the same process never is.)"""
    for key in keys:
        char = {"enter": "\r", "escape": "\x1b", "space": " "}.get(key, key)
        pilot.app.post_message(events.Key(key, char if len(char) == 1 else None))
        await pilot.pause(0.05)


def mode_is(app: ConsoleApp, mode: Mode) -> Callable[[], bool]:
    return lambda: app.client.state is not None and app.client.state.mode == mode.value


def screen_text(svg: str) -> list[str]:
    """The text of a Textual SVG screenshot, one string per terminal line."""
    lines: dict[int, list[tuple[float, str]]] = {}
    for m in re.finditer(r'<text class="[^"]*" x="([\d.]+)" y="[\d.]+" textLength="[\d.]+" '
                         r'clip-path="url\(#[\w-]+-line-(\d+)\)">(.*?)</text>', svg):
        lines.setdefault(int(m[2]), []).append((float(m[1]), html.unescape(m[3])))
    return ["".join(t for _, t in sorted(parts)).replace("\xa0", " ").rstrip()
            for _, parts in sorted(lines.items())]


WORD = re.compile(r"[A-Za-z][A-Za-z-]{2,}")
WITH_DIGITS = re.compile(r"[\w.:-]*\d[\w.:-]*")


def words_of(text: str) -> list[str]:
    """Words of three letters or more; tokens with digits (times, ids, figures) left out."""
    return WORD.findall(WITH_DIGITS.sub(" ", text))


def live_words(app: ConsoleApp) -> set[str]:
    """Words that may come and go with live values: rule names and texts, event and ack
    messages, plan ids, operators."""
    texts = [f"{r.rule_id} {r.name} {r.description}" for r in RULES]
    texts += [f"{e.kind} {e.message} {e.operator or ''}" for e in app.client.events]
    texts += [f"{a.command} {a.reason} {a.result}" for a in app.acks]
    texts += [m.value for m in Mode] + ["open", "close", "expose", "stop", "INSIDE", "outside",
                                        "none", "ACTIVE", "LATCHED", "shelved"]
    texts += [p.plan_id for p in app.plans]
    return {w for t in texts for w in words_of(t)}


def compare_words(kept: list[str], now: list[str], live: set[str]) -> list[str]:
    """What differs between two screens' texts, ignoring numbers, drawing characters and the
    words of live values: the labels, titles, headings and actions must be the same."""
    def words(lines: list[str]) -> Counter[str]:
        return Counter(w for line in lines for w in words_of(line) if w not in live)
    a, b = words(kept), words(now)
    return ([f"missing now: {w}" for w in sorted(a - b)]
            + [f"new now: {w}" for w in sorted(b - a)])


async def check_snapshot(app: ConsoleApp, name: str) -> None:
    """Save the screen as ``snapshots/<name>.svg`` when SYNCCTL_UPDATE_SNAPSHOTS=1, else
    compare its text with the kept one."""
    path = SNAPSHOTS / f"{name}.svg"
    if os.environ.get("SYNCCTL_UPDATE_SNAPSHOTS") == "1":
        app.save_screenshot(path.name, str(path.parent))
        return
    assert path.exists(), f"no kept snapshot {path}: run with SYNCCTL_UPDATE_SNAPSHOTS=1"
    kept = screen_text(path.read_text(encoding="utf-8"))
    now = screen_text(app.export_screenshot())
    assert len(kept) > 10 and len(now) > 10
    diff = compare_words(kept, now, live_words(app))
    assert not diff, f"screen {name} differs from the kept snapshot: {diff}"
