"""Payloads, topics, roles and the users file, sessions, the in-process bus, and telemetry
gaps as a subscriber counts them."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from syncctl.bus import (
    ANONYMOUS,
    PERMISSIONS,
    ROLES,
    Ack,
    BusClient,
    CommandEnvelope,
    Delivery,
    EventMessage,
    InProcessBus,
    MqttSettings,
    RoomContext,
    RoomState,
    Route,
    Sessions,
    Status,
    Telemetry,
    TelemetrySequence,
    Topics,
    Users,
    UsersFileError,
    authorise,
    check_pin,
    decode,
    encode,
    hash_pin,
    load_users,
    matches,
    read_credentials,
)
from syncctl.bus.bus import CredentialsError
from syncctl.bus.messages import MAX_SEQ
from syncctl.config import load_room
from syncctl.console.logic import telemetry_gap_text
from syncctl.core import RULES, Mode, RuleClass

ROOT = Path(__file__).resolve().parents[2]
TOPICS = Topics("syncctl", "sim-1")
SESSION = "abcdefghijklmnopqrstuv"


def envelope(**fields: object) -> dict[str, object]:
    values: dict[str, object] = {"schema": 1, "command": "arm", "operator": "olga",
                                 "role": "operator", "room": "sim-1", "session": SESSION,
                                 "seq": 1}
    values.update(fields)
    return values


# --- payloads ---------------------------------------------------------------------------------


def test_an_envelope_round_trips_and_names_its_schema() -> None:
    env = CommandEnvelope.model_validate(envelope(command="select_plan", plan_id="lung-01"))
    wire = json.loads(encode(env))
    assert wire["schema"] == 1 and wire["command"] == "select_plan"
    assert decode(encode(env), CommandEnvelope) == env


@pytest.mark.parametrize(("fields", "words"), [
    ({"seq": "1"}, "valid integer"),                        # strict: no string numbers
    ({"seq": True}, "valid integer"),                       # nor booleans
    ({"seq": 0}, "greater than or equal to 1"),
    ({"extra": 1}, "Extra inputs"),                         # unknown keys
    ({"schema": 2}, "Input should be 1"),                   # an unknown version
    ({"command": "fire"}, "Input should be"),
    ({"role": "admin"}, "Input should be"),
    ({"operator": "a/b"}, "pattern"),                       # no topic separators in ids
    ({"operator": "+"}, "pattern"),
    ({"session": "short"}, "pattern"),
    ({"command": "select_plan"}, "plan_id is required"),
    ({"plan_id": "lung-01"}, "allowed only there"),
    ({"command": "login"}, "pin is required"),
    ({"command": "shelve", "rule_id": "IL-028", "expiry_s": 60.0}, "reason"),
    ({"command": "shelve", "rule_id": "IL-028", "reason": "   ", "expiry_s": 60.0}, "reason"),
    ({"command": "shelve", "rule_id": "IL-028", "reason": "x"}, "expiry_s"),
    ({"command": "shelve", "rule_id": "IL-028", "reason": "x", "expiry_s": 1e9}, "less than"),
    ({"command": "shelve", "rule_id": "IL-028", "reason": "x", "expiry_s": float("nan")},
     "finite"),
    ({"command": "register_write", "device": "imaging", "signal": "kv"}, "value"),
])
def test_invalid_envelopes_are_refused(fields: dict[str, object], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        CommandEnvelope.model_validate(envelope(**fields))


def test_malformed_json_is_a_validation_error() -> None:
    with pytest.raises(ValueError, match="Invalid JSON"):
        decode(b"{not json", CommandEnvelope)


def test_every_outbound_payload_has_a_topic_qos_and_retain_flag() -> None:
    state = RoomState.model_validate({
        "room": "sim-1", "utc": "u", "mode": "SAFE",
        "beam_permit": {"granted": False, "denied_by": [{"rule_id": "IL-020", "text": "t"}]},
        "xray_permit": {"granted": False, "denied_by": []}, "gate": "close", "xray": "stop",
        "imaging_requested": False, "plan_id": None, "planned_dose_mu": None,
        "delivered_dose_mu": None, "imaging_mas": None, "imaging_budget_mas": 400.0,
        "controller_online": True})
    assert TOPICS.route(state) == TOPICS.route(state)
    route = TOPICS.route(state)
    assert (route.topic, route.qos, route.retain, route.delivery) == (
        "syncctl/sim-1/state", 1, True, Delivery.RETAINED)
    status = TOPICS.route(Status(room="sim-1", controller="online"))
    assert (status.topic, status.retain) == ("syncctl/sim-1/status", True)
    event = EventMessage(room="sim-1", stream="s", seq=1, utc="u", kind="trip",
                         rule_ids=["IL-005"], message="m", operator=None, mode="FAULT")
    assert (TOPICS.route(event).qos, TOPICS.route(event).delivery) == (1, Delivery.EVENT)
    ack = Ack(room="sim-1", operator="olga", session=None, seq=None, command=None,
              result="invalid", reason="r", mode="SAFE", utc="u")
    assert TOPICS.route(ack).topic == "syncctl/sim-1/acks/olga"
    nobody = ack.model_copy(update={"operator": None})
    assert TOPICS.route(nobody).topic == f"syncctl/sim-1/acks/{ANONYMOUS}"
    assert TOPICS.route(CommandEnvelope.model_validate(envelope())).topic == (
        "syncctl/sim-1/commands")


@pytest.mark.parametrize(("prefix", "room"), [("a//b", "r"), ("/a", "r"), ("a/#", "r"),
                                              ("syncctl", "r/x"), ("syncctl", "+")])
def test_topics_refuse_wildcards_and_empty_levels(prefix: str, room: str) -> None:
    with pytest.raises(ValueError):
        Topics(prefix, room)


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), [
    ("a/b", "a/b", True), ("a/+", "a/b", True), ("a/+", "a/b/c", False), ("a/#", "a", True),
    ("a/#", "a/b/c", True), ("a/b", "a/c", False), ("+/+/acks/+", "x/y/acks/z", True),
    ("a/b/c", "a/b", False),
])
def test_topic_filters(topic_filter: str, topic: str, expected: bool) -> None:
    assert matches(topic_filter, topic) is expected


# --- roles, users, sessions ---------------------------------------------------------------------


SAFE = RoomContext("sim-1", Mode.SAFE, clinical_mode=False)


def test_no_role_and_viewers_can_do_nothing() -> None:
    every = {c for allowed in PERMISSIONS.values() for c in allowed}
    for command in every:
        assert "no role" in authorise(None, command, SAFE)
        assert "no role" in authorise("admin", command, SAFE)
        assert authorise("viewer", command, SAFE)


def test_operator_and_physicist_permissions() -> None:
    treatment = {"select_plan", "start_imaging", "stop_imaging", "arm", "beam_on", "pause",
                 "resume", "abort", "acknowledge", "reset"}
    assert PERMISSIONS["operator"] == treatment
    assert PERMISSIONS["physicist"] == treatment | {"shelve", "unshelve"}
    assert "may not shelve" in authorise("operator", "shelve", SAFE, "IL-028")
    assert authorise("physicist", "register_read", SAFE)


def test_a_physicist_never_shelves_a_termination() -> None:
    for rule in RULES:
        why = authorise("physicist", "shelve", SAFE, rule.rule_id)
        if rule.rule_class is RuleClass.TERMINATION:
            assert "termination" in why, rule.rule_id
        else:
            assert why == "", rule.rule_id
    assert "no rule" in authorise("physicist", "shelve", SAFE, "IL-999")


def test_engineering_only_in_safe_and_not_clinical() -> None:
    for command in ("register_read", "register_write", "commission"):
        assert authorise("engineer", command, SAFE) == ""
        for mode in Mode:
            if mode is not Mode.SAFE:
                assert "only in SAFE" in authorise(
                    "engineer", command, RoomContext("r", mode, clinical_mode=False))
        assert "clinical" in authorise("engineer", command,
                                       RoomContext("r", Mode.SAFE, clinical_mode=True))
        assert authorise("operator", command, SAFE)
    assert "may not arm" in authorise("engineer", "arm", SAFE)


def test_pins_are_salted_scrypt_hashes() -> None:
    one, two = hash_pin("2468"), hash_pin("2468")
    assert one != two and "2468" not in one  # a fresh salt each time, never the PIN
    assert one.startswith("scrypt$16384$8$1$")
    assert check_pin("2468", one) and check_pin("2468", two)
    assert not check_pin("2469", one)
    assert not check_pin("2468", one[:-1] + ("0" if one[-1] != "0" else "1"))
    assert not check_pin("2468", "2468")  # a plain value is not a hash
    with pytest.raises(ValueError, match="at least"):
        hash_pin("12")


def test_users_file_round_trip_and_authentication(tmp_path: Path) -> None:
    users = Users([]).with_user("olga", "operator", "1111").with_user("phil", "physicist",
                                                                       "2222")
    path = tmp_path / "users.yaml"
    users.save(path)
    text = path.read_text()
    assert "1111" not in text and "2222" not in text and "scrypt$" in text
    loaded = load_users(path)
    assert [u.id for u in loaded] == ["olga", "phil"]
    assert loaded.authenticate("olga", "operator", "1111") == ""
    assert "wrong PIN" in loaded.authenticate("olga", "operator", "1112")
    assert "wrong PIN" in loaded.authenticate("nobody", "operator", "1111")
    assert "not the role" in loaded.authenticate("olga", "physicist", "1111")


@pytest.mark.parametrize(("text", "words"), [
    ("users:\n  - {id: olga, role: operator, pin: '1111'}\n", "not a scrypt hash"),
    ("users:\n  - {id: olga, role: admin, pin: x}\n", "not one of"),
    ("users:\n  - {id: 'a b', role: operator, pin: x}\n", "not a valid operator id"),
    ("users:\n  - {id: olga, role: operator}\n", "exactly the keys"),
    ("people: []\n", "one key 'users'"),
    ("users: [\n", "not valid YAML"),
])
def test_bad_users_files_are_refused(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "users.yaml"
    path.write_text(text)
    with pytest.raises(UsersFileError, match=words):
        load_users(path)


def test_duplicate_users_and_missing_file(tmp_path: Path) -> None:
    entry = f"  - {{id: olga, role: operator, pin: '{hash_pin('1111')}'}}\n"
    path = tmp_path / "users.yaml"
    path.write_text("users:\n" + entry + entry)
    with pytest.raises(UsersFileError, match="twice"):
        load_users(path)
    with pytest.raises(UsersFileError, match="cannot read"):
        load_users(tmp_path / "none.yaml")


def test_the_simulated_rooms_users_have_the_documented_pins() -> None:
    users = load_users(ROOT / "configs" / "users-sim.yaml")
    for uid, role, pin in (("operator1", "operator", "1111"), ("physicist1", "physicist", "2222"),
                           ("engineer1", "engineer", "3333"), ("viewer1", "viewer", "4444")):
        assert users.authenticate(uid, role, pin) == "", uid
    assert set(ROLES) == {u.role for u in users}


def test_sessions_refuse_replays_and_strangers() -> None:
    sessions = Sessions(max_sessions=2)
    login = CommandEnvelope.model_validate(envelope(command="login", pin="1111"))
    assert sessions.login(login) == ""
    assert "already used" in sessions.login(login)
    arm = CommandEnvelope.model_validate(envelope(seq=2))
    assert sessions.check(arm) == ""
    assert "replayed or old" in sessions.check(arm)
    assert "replayed or old" in sessions.check(arm.model_copy(update={"seq": 1}))
    assert sessions.check(arm.model_copy(update={"seq": 10})) == ""  # gaps are allowed
    assert "another operator" in sessions.check(arm.model_copy(update={"operator": "x",
                                                                       "seq": 11}))
    assert "another operator" in sessions.check(arm.model_copy(update={"role": "physicist",
                                                                       "seq": 12}))
    assert "not logged in" in sessions.check(arm.model_copy(update={"session": "z" * 20}))
    sessions.logout(SESSION)
    assert "not logged in" in sessions.check(arm.model_copy(update={"seq": 20}))
    assert "already used" in sessions.login(login)  # a session id is never reused
    # bounded: the oldest session is forgotten first
    for name in ("a", "b", "c"):
        sessions.login(login.model_copy(update={"session": name * 20}))
    assert len(sessions) == 2
    assert "not logged in" in sessions.check(arm.model_copy(update={"session": "a" * 20,
                                                                    "seq": 5}))


# --- MQTT settings from the room file -----------------------------------------------------------


def test_mqtt_settings_come_from_the_room_file(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "configs" / "registers", tmp_path / "registers")
    (tmp_path / "creds.yaml").write_text("username: syncctl-sim-1\npassword: s3cret\n")
    text = (ROOT / "configs" / "room-sim.yaml").read_text().replace(
        "mqtt:\n  enabled: false\n",
        "mqtt:\n  enabled: true\n  host: broker.example\n  port: 8883\n  tls: true\n"
        "  ca_file: ca.pem\n  credentials_file: creds.yaml\n  keepalive_s: 20\n")
    (tmp_path / "room.yaml").write_text(text)
    settings = MqttSettings.from_config(load_room(tmp_path / "room.yaml"))
    assert (settings.host, settings.port, settings.tls) == ("broker.example", 8883, True)
    assert (settings.username, settings.password) == ("syncctl-sim-1", "s3cret")
    assert settings.ca_file == str(tmp_path / "ca.pem") and settings.keepalive_s == 20


@pytest.mark.parametrize("text", ["username: x\n", "username: x\npassword: ''\n", "[x]\n"])
def test_bad_credentials_files_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "creds.yaml"
    path.write_text(text)
    with pytest.raises(CredentialsError, match="username and password"):
        read_credentials(path)


# --- the in-process bus ---------------------------------------------------------------------------


def sample_fields(t: float) -> dict[str, object]:
    """A telemetry sample without its publisher's counters."""
    return {"room": "sim-1", "t_s": t, "utc": f"2026-12-02T10:00:{t:06.3f}+00:00",
            "target_mm": (0.0, 0.0, 0.0), "tracking_confidence": 0.9,
            "window_centre_mm": None, "window_shape": "box", "window_size_mm": [5.0, 5.0, 5.0],
            "inside": False, "gate_command": "close", "gate_readback_open": False,
            "spill_active": False, "delivered_dose_mu": None, "frame_age_ms": 10.0}


def telemetry(t: float, seq: int = 1, dropped_total: int = 0, stream: str = "run-1"
              ) -> Telemetry:
    return Telemetry.model_validate({**sample_fields(t), "stream": stream, "seq": seq,
                                     "dropped_total": dropped_total})


@pytest.mark.asyncio
async def test_in_process_bus_delivers_retains_and_bounds() -> None:
    bus = InProcessBus(TOPICS)
    live = bus.subscribe(TOPICS.telemetry, maxsize=2)
    assert bus.publish(Status(room="sim-1", controller="online"))
    late = bus.subscribe("syncctl/sim-1/#")
    first = await late.get(1)
    assert first is not None and first.topic == TOPICS.status  # the retained value, at once
    for i in range(5):
        assert bus.publish(telemetry(float(i)))
    got = [live.get_nowait(), live.get_nowait(), live.get_nowait()]
    assert [decode(g.payload, Telemetry).t_s for g in got if g] == [0.0, 1.0]
    assert live.dropped == 3  # a slow subscriber loses, counted; the publisher never waits
    await bus.close()
    assert not bus.publish(telemetry(9.0))  # closed: nothing taken
    assert await live.get(0.1) is None and live.closed


@pytest.mark.asyncio
async def test_every_telemetry_message_counts_what_was_dropped_before_it() -> None:
    bus = InProcessBus(TOPICS)
    sub = bus.subscribe(TOPICS.telemetry)
    publisher = TelemetrySequence("run-1")
    assert publisher.publish(bus, **sample_fields(1.0))
    bus._set_connected(False)  # what an MQTT bus does when its link fails
    assert not publisher.publish(bus, **sample_fields(2.0))
    assert not publisher.publish(bus, **sample_fields(3.0))
    bus._set_connected(True)
    assert publisher.publish(bus, **sample_fields(4.0))
    assert publisher.publish(bus, **sample_fields(5.0))
    received = [decode(i.payload, Telemetry) for i in iter(sub.get_nowait, None)]
    # numbered as produced, sent or not; the count is cumulative, in every later message
    assert [(t.t_s, t.stream, t.seq, t.dropped_total) for t in received] == [
        (1.0, "run-1", 1, 0), (4.0, "run-1", 4, 2), (5.0, "run-1", 5, 2)]
    assert (publisher.produced, publisher.dropped_total) == (5, 2)
    assert bus.stats.telemetry_dropped == 2
    wire = json.loads(encode(received[1]))
    assert wire["schema"] == 2 and "dropped" not in wire
    # a sample that cannot even be built is produced and not sent: counted the same way
    with pytest.raises(ValidationError):
        publisher.publish(bus, **{**sample_fields(6.0), "t_s": "6"})
    assert publisher.publish(bus, **sample_fields(7.0))
    item = sub.get_nowait()
    assert item is not None
    last = decode(item.payload, Telemetry)
    assert (last.seq, last.dropped_total) == (7, 3)
    await bus.close()


class LossyBus(InProcessBus):
    """An in-process bus that loses chosen telemetry messages on the way, as QoS 0 may: the
    publisher is told they were sent."""

    def __init__(self, topics: Topics) -> None:
        super().__init__(topics)
        self.lose: set[int] = set()

    def _send(self, route: Route, payload: bytes) -> bool:
        if route.delivery is Delivery.TELEMETRY and json.loads(payload)["seq"] in self.lose:
            return True
        return super()._send(route, payload)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_a_subscriber_counts_a_gap_whose_announcing_message_was_lost() -> None:
    bus = LossyBus(TOPICS)
    client = BusClient(bus)
    await client.start()
    seen: list[int] = []
    client.on(Telemetry, lambda t: seen.append(t.seq))
    publisher = TelemetrySequence("run-1")
    for t in (1.0, 2.0):
        assert publisher.publish(bus, **sample_fields(t))
    await settle()
    gaps = client.telemetry_gaps
    assert (gaps.received, gaps.gaps, gaps.missing) == (2, 0, 0)  # none: no gap, no words
    assert telemetry_gap_text(gaps) == ""
    bus._set_connected(False)
    for t in (3.0, 4.0, 5.0):  # not sent: counted by the publisher
        assert not publisher.publish(bus, **sample_fields(t))
    bus._set_connected(True)
    bus.lose = {6}  # the first message after the outage, the one saying "3 dropped", is lost
    for t in (6.0, 7.0, 8.0):
        assert publisher.publish(bus, **sample_fields(t))
    await settle()
    assert seen == [1, 2, 7, 8]
    assert (gaps.received, gaps.gaps, gaps.missing, gaps.largest_gap) == (4, 1, 4, 4)
    assert (gaps.not_sent, gaps.lost_in_transit, gaps.publisher_dropped_total) == (3, 1, 3)
    assert gaps.last_gap is not None
    assert (gaps.last_gap.after_seq, gaps.last_gap.seq, gaps.last_gap.size) == (2, 7, 4)
    assert gaps.last_gap.utc == sample_fields(7.0)["utc"]
    assert client.telemetry is not None and client.telemetry.seq == 8
    assert telemetry_gap_text(gaps) == (
        "telemetry gap: 4 samples missed in 1 gap (largest 4, last at 10:00:07 UTC); "
        "the controller could not send 3 telemetry samples in this run")
    # A second, smaller gap: counted, the largest stays.
    bus.lose = {9}
    for t in (9.0, 10.0):
        publisher.publish(bus, **sample_fields(t))
    await settle()
    assert (gaps.gaps, gaps.missing, gaps.largest_gap, gaps.not_sent) == (2, 5, 4, 3)
    await client.close()
    await bus.close()


@pytest.mark.asyncio
async def test_a_late_subscriber_learns_what_the_publisher_dropped_before_it() -> None:
    bus = InProcessBus(TOPICS)
    publisher = TelemetrySequence("run-1")
    bus._set_connected(False)
    for t in range(4):
        publisher.publish(bus, **sample_fields(float(t)))
    bus._set_connected(True)
    for t in range(4, 9):
        publisher.publish(bus, **sample_fields(float(t)))  # nobody listens yet
    client = BusClient(bus)
    await client.start()
    publisher.publish(bus, **sample_fields(9.0))
    await settle()
    gaps = client.telemetry_gaps
    # what came before its first message was not this subscriber's to miss, but it knows
    assert (gaps.received, gaps.gaps, gaps.missing, gaps.last_seq) == (1, 0, 0, 10)
    assert gaps.publisher_dropped_total == 4
    assert telemetry_gap_text(gaps) == (
        "the controller could not send 4 telemetry samples in this run")
    await client.close()
    await bus.close()


@pytest.mark.asyncio
async def test_a_restarted_publisher_is_a_new_stream() -> None:
    bus = InProcessBus(TOPICS)
    client = BusClient(bus)
    await client.start()
    for seq in (1, 2, 3):
        bus.publish(telemetry(float(seq), seq=seq, stream="run-1"))
    bus.publish(telemetry(4.0, seq=1, stream="run-2"))  # restarted, first message received
    await settle()
    gaps = client.telemetry_gaps
    assert (gaps.restarts, gaps.gaps, gaps.stream, gaps.last_seq) == (1, 0, "run-2", 1)
    assert client.telemetry is not None and client.telemetry.stream == "run-2"
    # restarted again; its first three messages missed (one of them not sent)
    bus.publish(telemetry(5.0, seq=4, dropped_total=1, stream="run-3"))
    await settle()
    assert (gaps.restarts, gaps.gaps, gaps.missing, gaps.not_sent) == (2, 1, 3, 1)
    assert gaps.last_gap is not None and (gaps.last_gap.after_seq, gaps.last_gap.seq) == (0, 4)
    # an older stream heard again (a second publisher for the room) goes on where it was
    bus.publish(telemetry(6.0, seq=4, stream="run-2"))
    await settle()
    assert (gaps.restarts, gaps.gaps, gaps.missing, gaps.largest_gap) == (2, 2, 5, 3)
    assert gaps.stream == "run-2" and gaps.publisher_dropped_total == 0
    await client.close()
    await bus.close()


@pytest.mark.asyncio
async def test_telemetry_out_of_order_and_what_is_not_telemetry_of_this_version() -> None:
    bus = InProcessBus(TOPICS)
    client = BusClient(bus)
    await client.start()
    seen: list[int] = []
    client.on(Telemetry, lambda t: seen.append(t.seq))
    for seq in (1, 2, 3, 3, 2):  # a duplicate and a late one: no gap, no step back
        bus.publish(telemetry(float(seq), seq=seq))
    await settle()
    gaps = client.telemetry_gaps
    assert seen == [1, 2, 3] and client.telemetry is not None and client.telemetry.seq == 3
    assert (gaps.received, gaps.out_of_order, gaps.gaps, gaps.last_seq) == (5, 2, 0, 3)
    assert telemetry_gap_text(gaps) == "2 telemetry samples out of order"
    # Never wraps: sequence numbers stay within exact JSON integers, and a message cannot
    # say it follows more dropped ones than were produced before it.
    assert MAX_SEQ == 2**53
    big = telemetry(4.0, seq=MAX_SEQ, dropped_total=MAX_SEQ - 1)
    assert big.seq == MAX_SEQ
    with pytest.raises(ValidationError, match="less than or equal"):
        telemetry(4.0, seq=MAX_SEQ + 1)
    with pytest.raises(ValidationError, match="below seq"):
        telemetry(4.0, seq=3, dropped_total=3)
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        telemetry(4.0, seq=0)
    # Version 1 (a count in one message only) is another version: refused, not guessed at.
    version_1 = {**json.loads(encode(telemetry(5.0, seq=5))), "schema": 1, "dropped": 3}
    for key in ("stream", "seq", "dropped_total"):
        del version_1[key]
    for payload in (version_1, {k: v for k, v in json.loads(encode(telemetry(5.0, seq=5)))
                                .items() if k != "seq"}):
        with pytest.raises(ValidationError):
            Telemetry.model_validate(payload)
        bus._send(TOPICS.route(telemetry(0.0)), json.dumps(payload).encode())
    await settle()
    assert client.invalid_payloads == 2
    assert (gaps.received, gaps.last_seq) == (5, 3) and seen == [1, 2, 3]
    await client.close()
    await bus.close()


@pytest.mark.asyncio
async def test_a_client_dedupes_events_and_fills_gaps_from_the_backlog() -> None:
    from syncctl.bus import EventBacklog

    bus = InProcessBus(TOPICS)
    client = BusClient(bus)
    await client.start()

    def event(seq: int, stream: str = "run-1") -> EventMessage:
        return EventMessage(room="sim-1", stream=stream, seq=seq, utc="u", kind="trip",
                            rule_ids=[], message=f"e{seq}", operator=None, mode="FAULT")

    for seq in (1, 2, 2, 4):  # a duplicate, and 3 is missing
        bus.publish(event(seq))
    await asyncio.sleep(0.01)
    assert [e.seq for e in client.events] == [1, 2, 4] and client.missing == [3]
    bus.publish(EventBacklog(room="sim-1", utc="u", events=[event(2), event(3), event(4)]))
    await asyncio.sleep(0.01)
    assert sorted(e.seq for e in client.events) == [1, 2, 3, 4] and client.missing == []
    bus.publish(event(1, stream="run-2"))  # a restarted service: a new stream, from 1
    await asyncio.sleep(0.01)
    assert client.events[-1].stream == "run-2" and client.missing == []
    with pytest.raises(Exception, match="log in first"):
        client.envelope("arm")
    await client.close()
    await bus.close()
