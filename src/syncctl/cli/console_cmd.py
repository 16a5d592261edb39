"""`syncctl console`: the operator console (Textual) of a room served over MQTT.

The console connects to the room's broker (the room file's ``mqtt:`` section) with its own
broker account (``--credentials``, a YAML file with ``username`` and ``password``), and the
operator logs in with an operator id and PIN that the room service checks against the users
file. A room whose bus is in-process (``mqtt.enabled: false``, as in the simulated room) can
only have a console inside the controller's own process: use ``syncctl demo --console``.

Keys and screens: docs/console.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

from syncctl.bus import (
    BusClient,
    CredentialsError,
    MqttBus,
    MqttSettings,
    Role,
    UsersFileError,
    read_credentials,
)
from syncctl.cli.fraction import EXIT_USAGE
from syncctl.config import ConfigError, RoomConfig, load_room
from syncctl.console import ConsoleApp, PlanChoice
from syncctl.console.bridge import LoopBridgeBus
from syncctl.service import load_room_users, room_topics


def plans_of(config: RoomConfig) -> list[PlanChoice]:
    return [PlanChoice(p.plan_id, p.planned_dose_mu) for p in config.to_core_params().plans]


def role_lookup(config: RoomConfig) -> tuple[dict[str, Role] | None, str]:
    """Operator id -> role from the room's users file when this machine can read it (the role
    is the one in that file; the service checks the PIN and the role again); else None and
    why, and the login screen asks for the role."""
    try:
        users = load_room_users(config)
    except UsersFileError as exc:
        return None, str(exc)
    if len(users) == 0:
        return None, "no users file is named in the room file"
    return {u.id: u.role for u in users}, ""


def make_app(client: BusClient, config: RoomConfig, *, ends_run: bool = False) -> ConsoleApp:
    roles, _ = role_lookup(config)
    return ConsoleApp(client, room_id=config.room.room.id, plans=plans_of(config),
                      role_of=None if roles is None else roles.get,
                      ends_run=ends_run)


async def run_beside(bridge: LoopBridgeBus, config: RoomConfig,
                     room: asyncio.Future[Any]) -> None:
    """The console of `syncctl demo --console`, in this (main) thread's loop, over ``bridge``
    to the room that ``room`` runs in a worker thread. Quitting the console ends the run (the
    room stops safely); when the room stops for another reason, the console closes."""
    attach = asyncio.ensure_future(bridge.attached.wait())
    await asyncio.wait([attach, room], timeout=120, return_when=asyncio.FIRST_COMPLETED)
    attach.cancel()
    if not bridge.attached.is_set():
        return  # the room did not start: its error is the room's result
    client = BusClient(bridge)
    await client.start()
    app = make_app(client, config, ends_run=True)

    async def close_when_gone() -> None:
        await bridge.gone.wait()
        app.exit()

    closer = asyncio.ensure_future(close_when_gone())
    try:
        await app.run_async()
        if client.session is not None and bridge.connected:
            with contextlib.suppress(TimeoutError):
                await client.logout()
    finally:
        bridge.request_stop()
        closer.cancel()
        await asyncio.gather(closer, return_exceptions=True)
        await client.close()


async def _serve(config: RoomConfig, settings: MqttSettings) -> None:
    bus = MqttBus(room_topics(config), settings)
    client = BusClient(bus)
    try:
        await client.start(timeout_s=settings.timeout_s + 5.0)
        app = make_app(client, config)
        await app.run_async()
        if client.session is not None:
            with contextlib.suppress(TimeoutError):
                await client.logout()
    finally:
        await client.close()
        await bus.close()


def _run(args: argparse.Namespace) -> int:
    try:
        config = load_room(Path(args.config))
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"error: {issue}", file=sys.stderr)
        return EXIT_USAGE
    if not config.room.mqtt.enabled:
        print(f"error: {args.config}: the room's bus is in-process (mqtt.enabled: false), so a "
              "console can only run inside the controller's own process.\n"
              "  Simulated room: `syncctl demo --console` (simulators, controller and console "
              "in one process).\n"
              "  A room served by `syncctl run`: enable mqtt in the room file and point this "
              "console at the broker.", file=sys.stderr)
        return EXIT_USAGE
    overrides: dict[str, object] = {"client_id": None}
    if args.credentials:
        try:
            overrides["username"], overrides["password"] = read_credentials(
                Path(args.credentials))
        except CredentialsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        settings = MqttSettings.from_config(config, **overrides)
    except CredentialsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        asyncio.run(_serve(config, settings))
    except TimeoutError as exc:
        print(f"error: broker {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "console",
        help="the operator console (Textual) of a room served over MQTT",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default="configs/room-sim.yaml", help="room configuration")
    p.add_argument("--credentials", metavar="FILE",
                   help="this console's broker account (YAML: username, password); default: "
                   "the room file's mqtt.credentials_file")
    p.set_defaults(handler=_run)
