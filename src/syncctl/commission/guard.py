"""Is a controller treating? The check an engineering write (and a commissioning run) must
pass first, and its limits (docs/commissioning.md).

What it looks at, on the beam gate (Modbus TCP serves several clients, so a look does not
disturb a running controller): the gate readback and command are closed, and the heartbeat
echo does not change over max(3 heartbeat periods, 100 ms), i.e. no controller is feeding the
watchdog. Only then, if asked, the imaging line is opened (a second master on a serial line
would steal a running controller's answers) to see that the X-ray is neither exposing nor
commanded to.

What it cannot see: a controller that starts right after the check (nothing locks the room
against it), or one that runs without heartbeats (it could not open the gate: the device
watchdog would close it). With the beam gate on a serial line (modbus-rtu), the look itself
is a second master on that line. The hard-wired interlocks stay the authority either way.
"""

from __future__ import annotations

import asyncio

from syncctl.config import RoomConfig
from syncctl.devices import ModbusLink, RemoteError, SignalMap, read_plan

CONNECT_WINDOW_S = 2.0


class Refused(Exception):
    """The action must not happen; the message says why."""


async def open_link(config: RoomConfig, slot: str) -> ModbusLink:
    device = getattr(config.room.devices, slot)
    link = ModbusLink(device.transport, timeout_s=device.timeout_ms / 1000,
                      retries=device.retries)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONNECT_WINDOW_S
    for _ in range(100):
        if await link.connect():
            return link
        if loop.time() >= deadline:
            break
        await asyncio.sleep(0.05)
    await link.close()
    raise RemoteError(f"{device.transport.describe()}: {link.last_error}")


async def no_controller_treating(config: RoomConfig, *, need_imaging: bool,
                                 strict: bool = True) -> list[str]:
    """The check a write needs; the facts it saw. Raises Refused with what it saw otherwise.

    Beam gate (Modbus TCP serves several clients): readback and command closed, and the
    heartbeat echo unchanged for max(3 heartbeat periods, 100 ms), i.e. no controller is
    sending heartbeats. Then, when ``need_imaging``, the X-ray not exposing and not commanded
    to (the imaging line is opened only after the beam gate showed no controller: a second
    master on a serial line would steal a running controller's answers). ``strict=False``
    (before a read): a beam gate that does not answer is reported, not refused."""
    facts: list[str] = []
    signals = SignalMap(config.beam_gate_map)
    plan = signals.plan_reads(("gate_readback", "status", "heartbeat_echo"))
    command_plan = signals.plan_reads(("gate_command",))
    try:
        link = await open_link(config, "beam_gate")
    except RemoteError as exc:
        if not strict:
            return [f"beam gate does not answer ({exc}): no controller seen"]
        raise Refused(f"cannot check that no controller is treating: beam gate: {exc}") from None
    wait_s = max(3 * config.room.limits.heartbeat_period_ms / 1000, 0.1)
    try:
        first, _ = await read_plan(link, plan, asyncio.get_running_loop().time)
        command, _ = await read_plan(link, command_plan, asyncio.get_running_loop().time)
        await asyncio.sleep(wait_s)
        second, _ = await read_plan(link, plan, asyncio.get_running_loop().time)
        bits = second.bits("status")
        gate_open = second.flag("gate_readback") or first.flag("gate_readback")
        commanded = command.flag("gate_command")
        beats = (first.integer("heartbeat_echo"), second.integer("heartbeat_echo"))
    except RemoteError as exc:
        raise Refused(f"cannot check that no controller is treating: beam gate: {exc}") from None
    finally:
        await link.close()
    if gate_open:
        raise Refused("the beam gate reads back OPEN: a controller may be treating")
    if commanded:
        raise Refused("gate_command is 1 (open): a controller may be treating")
    if beats[0] != beats[1]:
        raise Refused(f"the beam gate's heartbeat echo changed ({beats[0]} -> {beats[1]} in "
                      f"{wait_s * 1000:g} ms): a controller is connected and running")
    facts.append(f"beam gate closed (readback and command), spill_active "
                 f"{int(bits['spill_active'])}, heartbeat echo {beats[0]} unchanged over "
                 f"{wait_s * 1000:g} ms")
    if need_imaging:
        xsignals = SignalMap(config.imaging_map)
        try:
            xlink = await open_link(config, "imaging")
        except RemoteError as exc:
            raise Refused(f"cannot check the X-ray: imaging: {exc}") from None
        try:
            values, _ = await read_plan(xlink, xsignals.plan_reads(("status", "expose_command")),
                                        asyncio.get_running_loop().time)
            exposing = values.bits("status")["exposing"]
            expose_cmd = values.flag("expose_command")
        except RemoteError as exc:
            raise Refused(f"cannot check the X-ray: imaging: {exc}") from None
        finally:
            await xlink.close()
        if exposing or expose_cmd:
            raise Refused("the X-ray is exposing (or commanded to): a controller may be "
                          "treating")
        facts.append("X-ray not exposing, not commanded")
    return facts
