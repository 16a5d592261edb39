"""The room service over the in-process bus, with a controller over in-memory device ports
(the scripted room of tests/unit/test_controller.py) and a real audit trail."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from syncctl.audit import AuditTrail, read_records
from syncctl.bus import (
    Ack,
    Alarms,
    BusClient,
    EventMessage,
    InProcessBus,
    InterlockTable,
    LoginRefused,
    RoomState,
    Telemetry,
    Topics,
    User,
    Users,
    hash_pin,
)
from syncctl.controller import Controller
from syncctl.core import RULES_BY_ID, Mode, RuleClass
from syncctl.service import RoomService, ServiceSettings
from tests.unit.test_controller import RoomPorts, make

ROOM = "test-room"
PINS = {"olga": "1111", "phil": "2222", "erin": "3333", "vera": "4444"}
ROLE_OF = {"olga": "operator", "phil": "physicist", "erin": "engineer", "vera": "viewer"}


@pytest.fixture(scope="module")
def users() -> Users:
    return Users([User(uid, ROLE_OF[uid], hash_pin(pin))  # type: ignore[arg-type]
                  for uid, pin in PINS.items()])


@dataclass
class Room:
    ports: RoomPorts
    controller: Controller
    bus: InProcessBus
    service: RoomService
    client: BusClient
    trail: AuditTrail
    audit_path: Path
    received: dict[type, list[object]] = field(default_factory=dict)

    def of(self, kind: type) -> list[object]:
        return self.received.setdefault(kind, [])

    async def until(self, condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, "condition not met in time"
            await asyncio.sleep(0.005)

    async def mode(self, mode: Mode, timeout_s: float = 10.0) -> None:
        await self.until(lambda: self.client.state is not None
                         and self.client.state.mode == mode.value, timeout_s)


async def _open_room(tmp_path: Path, users: Users, *, clinical: bool = False
                     ) -> AsyncIterator[Room]:
    ports = RoomPorts()
    controller = make(ports)
    bus = InProcessBus(Topics("syncctl", ROOM))
    tmp_path.mkdir(parents=True, exist_ok=True)
    audit_path = tmp_path / "audit.sqlite"
    trail = AuditTrail(audit_path, room=ROOM, flush_interval_s=0.05)
    service = RoomService(controller, bus, users,
                          ServiceSettings(room_id=ROOM, clinical_mode=clinical), audit=trail)
    client = BusClient(bus, ack_timeout_s=5.0)
    room = Room(ports, controller, bus, service, client, trail, audit_path)
    for kind in (RoomState, InterlockTable, Alarms, Telemetry, EventMessage):
        client.on(kind, room.of(kind).append)
    await client.start()
    stop = asyncio.Event()
    await service.start()
    run = asyncio.create_task(controller.run(stop))
    try:
        await room.mode(Mode.SAFE)
        yield room
    finally:
        stop.set()
        await asyncio.wait_for(run, 10)
        await service.stop()
        await client.close()
        await bus.close()
        trail.close()


@pytest_asyncio.fixture
async def room(tmp_path: Path, users: Users) -> AsyncIterator[Room]:
    async for opened in _open_room(tmp_path, users):
        yield opened


def audit_commands(path: Path) -> list[dict[str, object]]:
    return [json.loads(r["payload"]) if isinstance(r["payload"], str) else r["payload"]
            for r in read_records(path) if r["kind"] == "command"]


# --- a fraction through the bus ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_an_operator_runs_a_fraction_over_the_bus(room: Room) -> None:
    client = room.client
    await client.login("olga", "operator", PINS["olga"])
    assert (await client.send("select_plan", plan_id="lung-01")).result == "accepted"
    ack = await client.send("start_imaging")
    assert ack.result == "accepted" and ack.mode == "SETUP"
    await room.until(lambda: client.state is not None and client.state.xray == "expose")
    for _ in range(40):  # the core refuses arming until tracking is confirmed
        ack = await client.send("arm")
        if ack.result == "accepted":
            break
        assert ack.result == "refused" and ack.reason
        await asyncio.sleep(0.05)
    assert ack.result == "accepted" and ack.mode == "READY"
    assert (await client.send("beam_on")).result == "accepted"
    await room.mode(Mode.COMPLETE, timeout_s=20)

    state = client.state
    assert state is not None and state.plan_id == "lung-01" and state.planned_dose_mu == 3.0
    assert state.delivered_dose_mu is not None and state.delivered_dose_mu >= 2.9
    assert state.imaging_mas is not None and state.imaging_budget_mas == 400.0
    assert not state.beam_permit.granted
    assert all(r.text == RULES_BY_ID[r.rule_id].description
               for r in state.beam_permit.denied_by)
    # Events: numbered without gaps, mode changes in order, every command by its operator.
    events = [e for e in room.of(EventMessage) if isinstance(e, EventMessage)]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    modes = [e.message for e in events if e.kind == "mode_changed"]
    assert modes[:2] == ["OFFLINE -> SAFE (devices_online)", "SAFE -> SETUP (select_plan)"]
    assert any("TREATING -> COMPLETE" in m for m in modes)
    assert all(e.operator == "olga" for e in events if e.kind.startswith("command_")
               and e.kind != "command_unauthorised")
    # Telemetry comes at the frame rate, not at the 1 kHz of the cycle.
    samples = [t for t in room.of(Telemetry) if isinstance(t, Telemetry)]
    span = samples[-1].t_s - samples[0].t_s
    rate = (len(samples) - 1) / span
    assert 10 < rate <= 35, rate
    assert room.controller.stats.cycles / span > 3 * rate
    assert any(t.gate_command == "open" and t.inside for t in samples)
    # numbered in the service's stream, from 1 without a gap, nothing dropped
    assert [t.seq for t in samples] == list(range(1, len(samples) + 1))
    assert {t.stream for t in samples} == {room.service.stream}
    assert all(t.dropped_total == 0 for t in samples)
    gaps = client.telemetry_gaps
    assert (gaps.received, gaps.gaps, gaps.missing) == (len(samples), 0, 0)


@pytest.mark.asyncio
async def test_telemetry_dropped_while_the_bus_is_down_is_counted_on_both_sides(
        room: Room) -> None:
    client, service = room.client, room.service
    await room.until(lambda: client.telemetry_gaps.received >= 3)
    room.bus._set_connected(False)  # as an MQTT bus whose link failed
    await room.until(lambda: service.stats.telemetry_dropped >= 5)
    room.bus._set_connected(True)
    await room.until(lambda: client.telemetry_gaps.gaps >= 1)
    gaps = client.telemetry_gaps
    dropped = service.telemetry_sequence.dropped_total
    assert dropped == service.stats.telemetry_dropped >= 5
    # in one process nothing is lost on the way: every missed message is one not sent
    assert (gaps.gaps, gaps.missing, gaps.not_sent, gaps.lost_in_transit) == (
        1, dropped, dropped, 0)
    assert gaps.publisher_dropped_total == dropped and gaps.stream == service.stream
    assert client.telemetry is not None and client.telemetry.dropped_total == dropped
    assert service.telemetry_sequence.produced >= client.telemetry.seq


@pytest.mark.asyncio
async def test_retained_values_reach_a_late_subscriber(room: Room) -> None:
    late = BusClient(room.bus)
    await late.start()
    try:
        assert late.state is not None and late.state.mode == "SAFE"
        assert late.state.controller_online
        assert late.interlocks is not None and len(late.interlocks.rules) == len(RULES_BY_ID)
        assert late.alarms is not None
        assert late.status is not None and late.status.controller == "online"
        # the backlog of recent events fills the history of a late subscriber
        await room.until(lambda: len(late.events) > 0, 5)
        assert late.events[0].seq == 1 and late.missing == []
    finally:
        await late.close()


# --- refusals: answered, audited, never reaching the core ---------------------------------------


@pytest.mark.asyncio
async def test_unauthorised_and_invalid_commands_change_nothing(room: Room) -> None:
    client, bus, topics = room.client, room.bus, room.bus.topics
    anonymous = bus.subscribe(topics.acks(None))
    # a wrong PIN, a wrong role for the user
    with pytest.raises(LoginRefused, match="unknown operator or wrong PIN"):
        await client.login("olga", "operator", "9999")
    with pytest.raises(LoginRefused, match="not the role"):
        await client.login("olga", "physicist", PINS["olga"])
    # a viewer can do nothing
    await client.login("vera", "viewer", PINS["vera"])
    ack = await client.send("select_plan", plan_id="lung-01")
    assert ack.result == "unauthorised" and "may not select_plan" in ack.reason
    # wrong room
    await client.login("olga", "operator", PINS["olga"])
    envelope = client.envelope("select_plan", plan_id="lung-01")
    wrong_room = envelope.model_copy(update={"room": "other-room"})
    waiting = client._waiting[(envelope.session, envelope.seq)] = (
        asyncio.get_running_loop().create_future())
    bus.publish(wrong_room)
    ack = await asyncio.wait_for(waiting, 5)
    assert ack.result == "unauthorised" and "wrong room" in ack.reason
    # replayed and old sequence numbers
    good = client.envelope("stop_imaging")
    future = client._waiting[(good.session, good.seq)] = (
        asyncio.get_running_loop().create_future())
    bus.publish(good)
    assert (await asyncio.wait_for(future, 5)).result in ("accepted", "refused")
    replay = client._waiting[(good.session, good.seq)] = (
        asyncio.get_running_loop().create_future())
    bus.publish(good.model_copy(update={"command": "select_plan", "plan_id": "lung-01"}))
    ack = await asyncio.wait_for(replay, 5)
    assert ack.result == "unauthorised" and "replayed or old sequence number" in ack.reason
    # no session at all (anonymous)
    stranger = good.model_copy(update={"session": "x" * 20, "seq": 1000,
                                       "command": "select_plan", "plan_id": "lung-01"})
    stranger_ack = client._waiting[(stranger.session, stranger.seq)] = (
        asyncio.get_running_loop().create_future())
    bus.publish(stranger)
    assert (await asyncio.wait_for(stranger_ack, 5)).reason.startswith("not logged in")
    # malformed JSON, and a valid JSON that is not an envelope
    bus._send(bus.topics.route(good), b"{not json")
    bus._send(bus.topics.route(good), b'{"command": "beam_on", "operator": "olga", "seq": 1}')
    answer = await anonymous.get(5)
    assert answer is not None and Ack.model_validate_json(answer.payload).result == "invalid"

    await asyncio.sleep(0.2)
    assert room.controller.state.mode is Mode.SAFE
    assert client.state is not None and client.state.mode == "SAFE"
    room.trail.close()
    commands = audit_commands(room.audit_path)
    results = [(c.get("command"), c["result"]) for c in commands]
    assert ("login", "unauthorised") in results
    assert ("select_plan", "unauthorised") in results
    assert results.count(("beam_on", "invalid")) == 1
    assert (None, "invalid") in results
    reasons = " | ".join(str(c["reason"]) for c in commands)
    for words in ("wrong PIN", "not the role", "may not select_plan", "wrong room",
                  "replayed or old", "not logged in"):
        assert words in reasons
    assert all("pin" not in c for c in commands)
    kinds = [e.kind for e in room.of(EventMessage) if isinstance(e, EventMessage)]
    assert "command_unauthorised" in kinds and "command_invalid" in kinds


@pytest.mark.asyncio
async def test_the_core_refuses_with_its_reason(room: Room) -> None:
    await room.client.login("olga", "operator", PINS["olga"])
    ack = await room.client.send("beam_on")
    assert ack.result == "refused" and ack.reason and ack.mode == "SAFE"
    ack = await room.client.send("select_plan", plan_id="no-such-plan")
    assert ack.result == "refused" and "no-such-plan" in ack.reason


@pytest.mark.asyncio
async def test_engineering_only_in_safe_and_never_in_a_clinical_room(
        tmp_path: Path, users: Users) -> None:
    async for room in _open_room(tmp_path, users):
        await room.client.login("erin", "engineer", PINS["erin"])
        ack = await room.client.send("register_read", device="beam_gate", signal="status")
        # authorised, but this room has no engineering handler: refused, not unauthorised
        assert ack.result == "refused" and "no engineering access" in ack.reason
        ack = await room.client.send("arm")
        assert ack.result == "unauthorised" and "may not arm" in ack.reason
        await room.client.logout()
        await room.client.login("olga", "operator", PINS["olga"])
        await room.client.send("select_plan", plan_id="lung-01")
        await room.client.login("erin", "engineer", PINS["erin"])
        ack = await room.client.send("register_read", device="beam_gate", signal="status")
        assert ack.result == "unauthorised" and "only in SAFE" in ack.reason
    async for room in _open_room(tmp_path / "clinical", users, clinical=True):
        await room.client.login("erin", "engineer", PINS["erin"])
        ack = await room.client.send("register_read", device="beam_gate", signal="status")
        assert ack.result == "unauthorised" and "clinical mode" in ack.reason


# --- shelving ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_physicist_shelves_an_interruption_never_a_termination(room: Room) -> None:
    client = room.client
    await client.login("phil", "physicist", PINS["phil"])
    ack = await client.send("shelve", rule_id="IL-005", reason="test", expiry_s=60.0)
    assert RULES_BY_ID["IL-005"].rule_class is RuleClass.TERMINATION
    assert ack.result == "unauthorised" and "termination" in ack.reason
    ack = await client.send("shelve", rule_id="IL-026", reason="test", expiry_s=60.0)
    assert ack.result == "refused" and "not an active alarm" in ack.reason

    # Treat, pause (HOLD keeps interruption alarms showing), lose tracking: IL-026 (low
    # confidence, an interruption) stays active; shelve it.
    await client.send("select_plan", plan_id="liver-02")
    await client.send("start_imaging")
    for _ in range(60):
        if (await client.send("arm")).result == "accepted":
            break
        await asyncio.sleep(0.05)
    assert (await client.send("beam_on")).result == "accepted"
    assert (await client.send("pause")).result == "accepted"
    room.ports.room.faults.add("tracking_loss")
    rule_id = "IL-026"
    assert RULES_BY_ID[rule_id].rule_class is RuleClass.INTERRUPTION
    await room.until(lambda: client.alarms is not None
                     and rule_id in {a.rule_id for a in client.alarms.active})
    ack = await client.send("shelve", rule_id=rule_id, reason="marker occluded by couch",
                            expiry_s=1.0)
    assert ack.result == "accepted" and ack.mode == "HOLD"

    def shown_shelved() -> bool:
        alarms, table = client.alarms, client.interlocks
        return (alarms is not None and bool(alarms.shelved) and table is not None
                and {r.rule_id: r for r in table.rules}[rule_id].shelved)

    await room.until(shown_shelved, 5)  # each topic has its own queue in the client
    assert client.alarms is not None
    shelf = {s.rule_id: s for s in client.alarms.shelved}[rule_id]
    assert shelf.by == "phil" and shelf.reason == "marker occluded by couch"
    assert client.interlocks is not None
    row = {r.rule_id: r for r in client.interlocks.rules}[rule_id]
    assert row.shelved and row.active
    # Shown as shelved, and still denying the beam: the core never sees a shelf.
    entry = {a.rule_id: a for a in client.alarms.active}[rule_id]
    assert entry.shelved
    assert client.state is not None
    assert rule_id in {r.rule_id for r in client.state.beam_permit.denied_by}
    assert rule_id in room.controller.last_outputs.beam_permit.denied_by  # type: ignore[union-attr]
    # an operator may not shelve
    await client.login("olga", "operator", PINS["olga"])
    operator_ack = await client.send("shelve", rule_id=rule_id, reason="x", expiry_s=5.0)
    assert operator_ack.result == "unauthorised"
    # the shelf expires by itself
    await room.until(lambda: client.alarms is not None and not client.alarms.shelved, 5)
    kinds = [e.kind for e in room.of(EventMessage) if isinstance(e, EventMessage)]
    assert "alarm_shelved" in kinds and "shelf_expired" in kinds
    room.trail.close()
    records = read_records(room.audit_path)
    shelved = [r for r in records if r["kind"] == "alarm_shelved"]
    assert len(shelved) == 1 and shelved[0]["actor"] == "phil"
    assert [r for r in records if r["kind"] == "shelf_expired"]


# --- the local console path and the listener's cost -----------------------------------------------


@pytest.mark.asyncio
async def test_local_commands_are_checked_against_the_role(room: Room) -> None:
    ack = await asyncio.wait_for(room.service.submit_local("desk", "viewer", "select_plan",
                                                           plan_id="lung-01"), 5)
    assert ack.result == "unauthorised"
    ack = await asyncio.wait_for(room.service.submit_local("desk", "operator", "select_plan",
                                                           plan_id="lung-01"), 5)
    assert ack.result == "accepted" and ack.mode == "SETUP"
    ack = await asyncio.wait_for(room.service.submit_local("desk", "operator", "login",
                                                           pin="1111"), 5)
    assert ack.result == "invalid"


@pytest.mark.asyncio
async def test_the_listener_only_enqueues(room: Room) -> None:
    await room.until(lambda: room.controller.stats.cycles > 500)
    stats = room.service.stats
    assert stats.reports_dropped == 0
    # Far fewer reports queued than cycles run: unchanged cycles cost a comparison only.
    assert stats.reports_queued < room.controller.stats.cycles / 10
    assert stats.listener_max_s < 0.005


@pytest.mark.asyncio
async def test_repeated_wrong_pins_lock_the_operator_out(room: Room) -> None:
    from syncctl.service.room import MAX_FAILED_LOGINS

    for _ in range(MAX_FAILED_LOGINS):
        with pytest.raises(LoginRefused, match="wrong PIN"):
            await room.client.login("olga", "operator", "0000")
    with pytest.raises(LoginRefused, match="failed logins"):
        await room.client.login("olga", "operator", PINS["olga"])  # even the right PIN
    await room.client.login("phil", "physicist", PINS["phil"])  # others are not affected
    room.trail.close()
    refused = [c for c in audit_commands(room.audit_path) if c.get("command") == "login"
               and c["result"] == "unauthorised"]
    assert len(refused) == MAX_FAILED_LOGINS + 1
