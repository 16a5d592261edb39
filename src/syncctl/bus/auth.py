"""Who may do what: roles, the users file with hashed PINs, sessions and replay protection.

Permissions are fixed here, in code, not in the room file: what a role may do is part of the
safety case. No role is granted by default; an unknown or anonymous sender can do nothing.

=============  ==================================================================================
role           may
=============  ==================================================================================
operator       select_plan, start_imaging, stop_imaging, arm, beam_on, pause, resume, abort,
               acknowledge, reset
physicist      everything an operator may, and shelve/unshelve an alarm (reason and expiry
               mandatory; never a termination-class rule)
engineer       register_read, register_write, commission: only in SAFE and only when the room
               is not in clinical mode
viewer         nothing (reads the retained topics)
=============  ==================================================================================

``login`` and ``logout`` are open to every user in the file (a login checks the PIN).

The users file (YAML, path from ``users.file`` relative to the room file)::

    users:
      - id: alice
        role: operator
        pin: scrypt$16384$8$1$<salt hex>$<hash hex>

PINs are stored only as salted scrypt hashes (``hashlib.scrypt``, a fresh 16-byte salt per
user, n=2^14, r=8, p=1); checks compare in constant time. ``syncctl users add|list|check``
manages the file.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from syncctl.bus.messages import (
    CORE_COMMANDS,
    ENGINEER_COMMANDS,
    ID_PATTERN,
    ROLES,
    CommandEnvelope,
    Role,
)
from syncctl.core import RULES_BY_ID, Mode, RuleClass

OPERATOR_COMMANDS: frozenset[str] = CORE_COMMANDS
PERMISSIONS: dict[str, frozenset[str]] = {
    "operator": OPERATOR_COMMANDS,
    "physicist": OPERATOR_COMMANDS | {"shelve", "unshelve"},
    "engineer": ENGINEER_COMMANDS,
    "viewer": frozenset(),
}
SESSION_COMMANDS = frozenset({"login", "logout"})
MIN_PIN_LENGTH = 4
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
_HASH_RE = re.compile(r"^scrypt\$(\d+)\$(\d+)\$(\d+)\$([0-9a-f]{32,128})\$([0-9a-f]{64})$")


# --- hashing ----------------------------------------------------------------------------------


def hash_pin(pin: str, *, salt: bytes | None = None) -> str:
    """``scrypt$n$r$p$salt$hash`` of a PIN or password with a fresh random salt."""
    if len(pin) < MIN_PIN_LENGTH:
        raise ValueError(f"a PIN needs at least {MIN_PIN_LENGTH} characters")
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(pin.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            dklen=HASH_BYTES)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def check_pin(pin: str, stored: str) -> bool:
    """Whether ``pin`` matches the stored hash (constant-time compare); False for a stored
    value that is not a hash this module wrote."""
    m = _HASH_RE.match(stored)
    if m is None:
        return False
    n, r, p = int(m[1]), int(m[2]), int(m[3])
    if not (2 <= n <= 2**20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
        return False
    try:
        digest = hashlib.scrypt(pin.encode("utf-8"), salt=bytes.fromhex(m[4]), n=n, r=r, p=p,
                                dklen=len(m[5]) // 2, maxmem=256 * 1024 * 1024)
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(digest.hex(), m[5])


# --- the users file ---------------------------------------------------------------------------


class UsersFileError(Exception):
    """The users file is missing or malformed (a local error: refuse to start)."""


@dataclass(frozen=True)
class User:
    id: str
    role: Role
    pin_hash: str


class Users:
    """The operator accounts of a room."""

    def __init__(self, users: list[User], path: Path | None = None) -> None:
        self.path = path
        self._by_id: dict[str, User] = {}
        for user in users:
            if user.id in self._by_id:
                raise UsersFileError(f"{path}: user {user.id!r} appears twice")
            self._by_id[user.id] = user

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Any:
        return iter(sorted(self._by_id.values(), key=lambda u: u.id))

    def get(self, user_id: str) -> User | None:
        return self._by_id.get(user_id)

    def authenticate(self, user_id: str, role: str, pin: str) -> str:
        """"" when the user exists, has this role and the PIN matches; else why not (the same
        words for an unknown user and a wrong PIN, so that ids cannot be probed)."""
        user = self._by_id.get(user_id)
        if user is None or not check_pin(pin, user.pin_hash):
            return "unknown operator or wrong PIN"
        if user.role != role:
            return f"role {role!r} is not the role of {user_id!r} in the users file"
        return ""

    def with_user(self, user_id: str, role: Role, pin: str) -> Users:
        if not re.match(ID_PATTERN, user_id):
            raise ValueError(f"user id {user_id!r}: letters, digits, '.', '_', '-' (max 64)")
        if role not in ROLES:
            raise ValueError(f"role {role!r}: one of {', '.join(ROLES)}")
        others = [u for u in self if u.id != user_id]
        return Users([*others, User(user_id, role, hash_pin(pin))], self.path)

    def to_yaml(self) -> str:
        body = yaml.safe_dump(
            {"users": [{"id": u.id, "role": u.role, "pin": u.pin_hash} for u in self]},
            sort_keys=False, default_flow_style=False)
        return ("# syncctl users file: operator ids, roles and scrypt hashes of their PINs.\n"
                "# Manage it with `syncctl users add|list|check FILE`; never store a PIN here.\n"
                + body)

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_yaml(), encoding="utf-8")
        os.replace(tmp, path)


def load_users(path: Path) -> Users:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsersFileError(f"{path}: cannot read the users file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UsersFileError(f"{path}: not valid YAML: {exc}") from None
    if raw is None:
        raw = {"users": []}
    if not isinstance(raw, dict) or set(raw) != {"users"} or not isinstance(raw["users"], list):
        raise UsersFileError(f"{path}: expected one key 'users' with a list")
    users: list[User] = []
    for i, entry in enumerate(raw["users"]):
        where = f"{path}: users[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"id", "role", "pin"}:
            raise UsersFileError(f"{where}: expected exactly the keys id, role, pin")
        uid, role, pin = entry["id"], entry["role"], entry["pin"]
        if not isinstance(uid, str) or not re.match(ID_PATTERN, uid):
            raise UsersFileError(f"{where}.id: {uid!r} is not a valid operator id")
        if role not in ROLES:
            raise UsersFileError(f"{where}.role: {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(pin, str) or not _HASH_RE.match(pin):
            raise UsersFileError(f"{where}.pin: not a scrypt hash (a plain PIN is never "
                                 "accepted; use `syncctl users add`)")
        users.append(User(uid, role, pin))
    return Users(users, path)


# --- authorisation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RoomContext:
    """What authorisation needs to know about the room at the moment of the command."""

    room_id: str
    mode: Mode
    clinical_mode: bool


def authorise(role: str | None, command: str, room: RoomContext,
              rule_id: str | None = None) -> str:
    """"" when ``role`` may issue ``command`` now, else why not. ``None`` (no role: unknown
    or anonymous sender) may do nothing."""
    if role is None or role not in PERMISSIONS:
        return "no role: unknown or anonymous senders can do nothing"
    allowed = PERMISSIONS[role]
    if command not in allowed:
        return f"role {role!r} may not {command}"
    if command in ENGINEER_COMMANDS:
        if room.clinical_mode:
            return "engineering commands are refused while the room is in clinical mode"
        if room.mode is not Mode.SAFE:
            return f"engineering commands only in SAFE (the room is in {room.mode.value})"
    if command == "shelve":
        rule = RULES_BY_ID.get(rule_id or "")
        if rule is None:
            return f"no rule {rule_id!r}"
        if rule.rule_class is RuleClass.TERMINATION:
            return f"{rule.rule_id} ({rule.description}) is a termination: it cannot be shelved"
    return ""


# --- sessions and replay protection -----------------------------------------------------------


@dataclass
class Session:
    operator: str
    role: Role
    last_seq: int


class Sessions:
    """Logged-in sessions, bounded (the oldest is forgotten first), and the replay guard:
    within a session every envelope's ``seq`` must be greater than the last one seen."""

    def __init__(self, max_sessions: int = 256) -> None:
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._retired: OrderedDict[str, None] = OrderedDict()

    def login(self, envelope: CommandEnvelope) -> str:
        """Bind a new session id to the (authenticated) operator; "" or why not."""
        if envelope.session in self._sessions or envelope.session in self._retired:
            return "session id already used: log in with a new session"
        self._sessions[envelope.session] = Session(envelope.operator, envelope.role,
                                                   envelope.seq)
        while len(self._sessions) > self.max_sessions:
            old, _ = self._sessions.popitem(last=False)
            self._retire(old)
        return ""

    def logout(self, session: str) -> None:
        if self._sessions.pop(session, None) is not None:
            self._retire(session)

    def _retire(self, session: str) -> None:
        self._retired[session] = None
        while len(self._retired) > 4 * self.max_sessions:
            self._retired.popitem(last=False)

    def check(self, envelope: CommandEnvelope) -> str:
        """"" when the envelope belongs to a live session of its operator and role with a new
        sequence number (which is then consumed); else why not."""
        session = self._sessions.get(envelope.session)
        if session is None:
            return "not logged in (unknown or expired session)"
        if session.operator != envelope.operator or session.role != envelope.role:
            return "the session belongs to another operator or role"
        if envelope.seq <= session.last_seq:
            return (f"replayed or old sequence number {envelope.seq} (last seen "
                    f"{session.last_seq})")
        session.last_seq = envelope.seq
        return ""

    def __len__(self) -> int:
        return len(self._sessions)
