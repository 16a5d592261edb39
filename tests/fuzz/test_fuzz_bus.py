"""Fuzzing the bus's command path: envelope parsing, authorisation and the room service.

Targets (docs/fuzzing.md):

1. ``CommandEnvelope`` parsing (``syncctl.bus.messages.decode``) and the service's
   ``_identify`` (what it reads of an invalid payload to address the refusal) on arbitrary
   bytes and JSON: parsing raises only pydantic's ``ValidationError`` (a ValueError);
   ``_identify`` never raises and returns only well-formed fields.
2. ``authorise`` against an independent table of who may do what (written here from the
   permission table in docs/bus.md, not read from ``syncctl.bus.auth``), for any role, command,
   mode, clinical flag and rule id.
3. The ``RoomService`` (``_on_payload``: one payload as it arrives on the commands topic) fed a
   sequence of envelopes built from valid templates (logins with right and wrong PINs,
   commands in live, stale, foreign and unknown sessions, replayed sequence numbers, other
   rooms, other roles) and mutations of them, and arbitrary bytes. An independent model of
   the sessions decides what may pass. Properties: no exception escapes; every payload is
   answered or handed to the core, never both, never neither; a command reaches the core only
   when the model says the sender is logged in, in this room, with its own role, a new
   sequence number, and a role that may issue it; a login is accepted only with the right PIN
   and role and a fresh session id.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

from hypothesis import event, given
from hypothesis import strategies as st
from pydantic import ValidationError

from syncctl.bus import messages
from syncctl.bus.auth import RoomContext, User, Users, authorise
from syncctl.bus.bus import InProcessBus
from syncctl.bus.messages import Ack, CommandEnvelope
from syncctl.bus.topics import Topics
from syncctl.config import load_room
from syncctl.controller import Controller
from syncctl.core import RULES, Command, Mode, RuleClass
from syncctl.devices import BeamGateClient, ImagingClient, ReadBlock
from syncctl.service.room import RoomService, ServiceSettings, _identify
from tests.fuzz.oracle import FakeBackend
from tests.fuzz.profiles import fuzz

ROOT = Path(__file__).resolve().parents[2]
ROOM = load_room(ROOT / "configs" / "room-sim.yaml")
ROOM_ID = ROOM.room.room.id

# -- the independent permission table --------------------------------------------------------

TREATMENT = {"select_plan", "start_imaging", "stop_imaging", "arm", "beam_on", "pause",
             "resume", "abort", "acknowledge", "reset"}
ALLOWED: dict[str, set[str]] = {
    "operator": TREATMENT,
    "physicist": TREATMENT | {"shelve", "unshelve"},
    "engineer": {"register_read", "register_write", "commission"},
    "viewer": set(),
}
TERMINATIONS = {r.rule_id for r in RULES if r.rule_class is RuleClass.TERMINATION}
COMMANDS = sorted(set().union(*ALLOWED.values()) | {"login", "logout"})


def may(role: str | None, command: str, mode: Mode, clinical: bool, rule_id: str | None) -> bool:
    if role not in ALLOWED or command not in ALLOWED[role]:
        return False
    if command in ALLOWED["engineer"] and (clinical or mode is not Mode.SAFE):
        return False
    return not (command == "shelve" and (rule_id in TERMINATIONS or rule_id
                                         not in {r.rule_id for r in RULES}))


# -- 1. parsing ------------------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=10), inner, max_size=5)),
    max_leaves=15)

SESSION = "s" * 20


def _template(command: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"schema": 1, "command": command, "operator": "oscar",
                            "role": "operator", "room": ROOM_ID, "session": SESSION, "seq": 1}
    if command == "select_plan":
        body["plan_id"] = "lung-01"
    if command == "login":
        body["pin"] = "1111"
    if command in ("shelve", "unshelve"):
        body["rule_id"] = "IL-026"
    if command == "shelve":
        body |= {"reason": "check", "expiry_s": 60.0}
    if command in ("register_read", "register_write"):
        body |= {"device": "imaging", "signal": "kv"}
    if command == "register_write":
        body["value"] = 90
    return body | extra


@st.composite
def mutated(draw: st.DrawFn, body: dict[str, Any]) -> dict[str, Any]:
    out = dict(body)
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.sampled_from(("drop", "set", "add", "type")))
        keys = sorted(out)
        if how == "drop" and keys:
            del out[draw(st.sampled_from(keys))]
        elif how == "set" and keys:
            out[draw(st.sampled_from(keys))] = draw(json_values)
        elif how == "add":
            out[draw(st.sampled_from(("pin", "plan_id", "rule_id", "reason", "expiry_s",
                                      "device", "signal", "value", "admin", "schema")))] = (
                draw(json_values))
        elif how == "type" and keys:
            key = draw(st.sampled_from(keys))
            out[key] = draw(st.sampled_from((str(out[key]), [out[key]], {"v": out[key]},
                                             True, 1.5, -1, 2**53 + 1, "")))
    return out


def _dumps(body: Any) -> bytes:
    return json.dumps(body, allow_nan=True).encode("utf-8")


payloads = st.one_of(
    st.binary(max_size=200),
    json_values.map(_dumps),
    st.sampled_from(COMMANDS).flatmap(lambda c: mutated(_template(c))).map(_dumps),
    st.sampled_from((b"", b"{", b"null", b"[]", b'{"schema":1}', b"\xff\xfe",
                     b'{"seq": NaN}', b'{"seq": Infinity}', b'{"seq": 1e999}',
                     b'{"command":"arm","command":"login"}')),
)


@fuzz("bus")
@given(payload=payloads)
def test_envelope_parsing_raises_only_validation_errors(payload: bytes) -> None:
    try:
        envelope = messages.decode(payload, CommandEnvelope)
    except ValidationError:
        event("invalid")
    else:
        event(f"valid {envelope.command}")
        assert envelope.command in COMMANDS
        assert envelope.room and envelope.operator and envelope.seq >= 1
    fields = _identify(payload)
    assert set(fields) <= {"operator", "session", "command", "role", "room", "seq"}
    for name, value in fields.items():
        if name == "seq":
            assert isinstance(value, int) and not isinstance(value, bool)
        else:
            assert isinstance(value, str) and len(value) <= 64


# -- 2. authorisation ------------------------------------------------------------------------

roles = st.one_of(st.none(), st.sampled_from(sorted(ALLOWED)), st.text(max_size=12),
                  st.sampled_from(("Operator", "operator ", "admin", "root", "")))
command_names = st.one_of(st.sampled_from(COMMANDS), st.text(max_size=15))
rule_ids = st.one_of(st.none(), st.sampled_from([r.rule_id for r in RULES]),
                     st.sampled_from(("IL-000", "IL-1", "", "il-026")))


@fuzz("bus")
@given(role=roles, command=command_names, mode=st.sampled_from(list(Mode)),
       clinical=st.booleans(), rule_id=rule_ids)
def test_authorise_follows_the_permission_table(role: str | None, command: str, mode: Mode,
                                                clinical: bool, rule_id: str | None) -> None:
    why = authorise(role, command, RoomContext(ROOM_ID, mode, clinical), rule_id)
    assert isinstance(why, str)
    assert (why == "") == may(role, command, mode, clinical, rule_id), (role, command, why)


# -- 3. the room service -----------------------------------------------------------------------


def _cheap_hash(pin: str, salt: bytes) -> str:
    """A scrypt hash in the users-file format with a small work factor (n=16), so that a
    login costs microseconds in the fuzz loop; check_pin reads n from the hash."""
    digest = hashlib.scrypt(pin.encode(), salt=salt, n=16, r=8, p=1, dklen=32)
    return f"scrypt$16$8$1${salt.hex()}${digest.hex()}"


PINS = {"oscar": ("operator", "1111"), "phil": ("physicist", "2222"),
        "erin": ("engineer", "3333"), "vera": ("viewer", "4444")}
USERS = Users([User(uid, role, _cheap_hash(pin, uid.encode().ljust(16, b"."))) for uid,
               (role, pin) in PINS.items()])  # type: ignore[arg-type]
SESSIONS = ("a" * 16, "b" * 20, "c" * 32, "d" * 64)


@st.composite
def envelopes(draw: st.DrawFn, seqs: dict[str, int], owners: dict[str, str]) -> bytes:
    """One payload of a sequence: mostly well-formed envelopes with chosen flaws."""
    shape = draw(st.sampled_from(("login", "login", "command", "command", "command",
                                  "logout", "mutated", "junk")))
    if shape == "junk":
        return draw(st.one_of(st.binary(max_size=60), json_values.map(_dumps)))
    user = draw(st.sampled_from(sorted(PINS)))
    session = draw(st.sampled_from(SESSIONS))
    if shape != "login" and owners and draw(st.integers(0, 3)):
        # Mostly from a session someone tried to log in to, by that someone.
        session = draw(st.sampled_from(sorted(owners)))
        user = owners[session]
    role, pin = PINS[user]
    seq = seqs.get(session, 0) + draw(st.sampled_from((1, 1, 1, 0, -1, 5)))
    body: dict[str, Any]
    if shape == "login":
        body = _template("login", operator=user, role=role, session=session, seq=max(1, seq),
                         pin=draw(st.sampled_from((pin, pin, "0000", pin + " ", ""))))
        owners.setdefault(session, user)
    elif shape == "logout":
        body = _template("logout", operator=user, role=role, session=session, seq=max(1, seq))
    else:
        command = draw(st.sampled_from(COMMANDS))
        body = _template(command, operator=user, role=role, session=session, seq=max(1, seq))
        if shape == "mutated" or draw(st.integers(0, 4)) == 0:
            body = draw(mutated(body))
        if draw(st.integers(0, 5)) == 0:
            body["role"] = draw(st.sampled_from(sorted(ALLOWED)))
        if draw(st.integers(0, 7)) == 0:
            body["room"] = "other-room"
    if isinstance(body.get("session"), str) and isinstance(body.get("seq"), int):
        seqs[body["session"]] = max(seqs.get(body["session"], 0), body["seq"])
    return _dumps(body)


class Model:
    """The sessions as the rules say they must be, kept from the service's own answers only
    where a login's success cannot be known otherwise (never)."""

    def __init__(self) -> None:
        self.live: dict[str, tuple[str, str, int]] = {}
        self.used: set[str] = set()

    def judge(self, payload: bytes) -> tuple[str, Any]:
        """("login", session) when a login must be accepted, ("pass", command) when the
        envelope must reach authorisation, else ("refuse", why)."""
        try:
            env = CommandEnvelope.model_validate_json(payload)
        except ValidationError:
            return "refuse", "invalid"
        if env.room != ROOM_ID:
            return "refuse", "room"
        if env.command == "login":
            known = PINS.get(env.operator)
            ok = (known is not None and known == (env.role, env.pin)
                  and env.session not in self.used)
            return ("login", env) if ok else ("refuse", "login")
        live = self.live.get(env.session)
        if live is None or live[:2] != (env.operator, env.role) or env.seq <= live[2]:
            return "refuse", "session"
        return "pass", env


@st.composite
def sequences(draw: st.DrawFn) -> list[bytes]:
    seqs: dict[str, int] = {}
    owners: dict[str, str] = {}
    return [draw(envelopes(seqs, owners)) for _ in range(draw(st.integers(1, 25)))]


def _service() -> tuple[RoomService, list[Command], list[Any]]:
    params = ROOM.to_core_params()
    clients = [cls(ROOM, backend=FakeBackend(ReadBlock("input", 0, 1, ())))
               for cls in (BeamGateClient, ImagingClient)]
    controller = Controller(params, clients[0], clients[1])  # type: ignore[arg-type]
    submitted: list[Command] = []
    controller.submit = submitted.append  # type: ignore[method-assign]
    bus = InProcessBus(Topics("syncctl", ROOM_ID))
    published: list[Any] = []
    bus.publish = lambda message: published.append(message) or True  # type: ignore[method-assign]
    service = RoomService(controller, bus, USERS, ServiceSettings(room_id=ROOM_ID))
    return service, submitted, published


@fuzz("bus_service", slow=True)
@given(payloads_=sequences())
def test_service_accepts_nothing_without_credentials(payloads_: list[bytes]) -> None:
    asyncio.run(_run_service(payloads_))


async def _run_service(payloads_: list[bytes]) -> None:
    service, submitted, published = _service()
    model = Model()
    mode = service.controller.state.mode
    for payload in payloads_:
        verdict, detail = model.judge(payload)
        n_sub, n_pub = len(submitted), len(published)
        await service._on_payload(payload)
        acks = [m for m in published[n_pub:] if isinstance(m, Ack)]
        new_commands = submitted[n_sub:]
        assert len(acks) + len(new_commands) == 1, (payload, acks, new_commands)
        accepted = bool(acks) and acks[0].result == "accepted"
        if verdict == "refuse":
            assert not new_commands and not accepted, (
                f"{payload!r} passed ({acks or new_commands}); the model says: {detail}")
            event(f"refused ({detail})")
            continue
        env = detail
        if verdict == "login":
            assert accepted, f"a valid login was refused: {acks}"
            model.live[env.session] = (env.operator, env.role, env.seq)
            model.used.add(env.session)
            event("login accepted")
            continue
        model.live[env.session] = (env.operator, env.role, env.seq)
        if env.command == "logout":
            assert accepted
            del model.live[env.session]
            event("logout")
            continue
        allowed = may(env.role, env.command, mode, False, env.rule_id)
        if new_commands:
            assert allowed and env.command in TREATMENT, f"{env.command} by {env.role}"
            assert new_commands[0].operator == env.operator
            event("command handed to the core")
        elif accepted:
            assert allowed, f"{env.command} by {env.role} accepted"
            event(f"{env.command} accepted by the service")
        else:
            event(f"{env.command} {acks[0].result}")
