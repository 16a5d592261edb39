"""`syncctl users add|list|check FILE`: the room's operator accounts.

The file holds operator ids, roles and salted scrypt hashes of their PINs, never a PIN. The
PIN is asked twice at the terminal, or read as one line from standard input with
``--pin-stdin`` (for scripts: ``printf '%s\\n' "$PIN" | syncctl users add ...``).

    syncctl users add configs/users.yaml --id alice --role operator
    syncctl users list configs/users.yaml
    syncctl users check configs/users.yaml --id alice       # exit 0 when the PIN matches

Exit status: 0 done (check: the PIN and role match), 1 check failed, 2 bad command line or
unreadable file.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from syncctl.bus import ROLES, Users, UsersFileError, load_users
from syncctl.bus.auth import MIN_PIN_LENGTH

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _read_pin(args: argparse.Namespace, confirm: bool) -> str | None:
    if args.pin_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n") or None
    pin = getpass.getpass("PIN: ")
    if confirm and getpass.getpass("PIN again: ") != pin:
        print("error: the two PINs differ", file=sys.stderr)
        return None
    return pin or None


def _load(path: Path, *, missing_ok: bool) -> Users | None:
    if missing_ok and not path.exists():
        return Users([], path)
    try:
        return load_users(path)
    except UsersFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _add(args: argparse.Namespace) -> int:
    path = Path(args.file)
    users = _load(path, missing_ok=True)
    if users is None:
        return EXIT_USAGE
    pin = _read_pin(args, confirm=True)
    if pin is None or len(pin) < MIN_PIN_LENGTH:
        print(f"error: a PIN of at least {MIN_PIN_LENGTH} characters is needed",
              file=sys.stderr)
        return EXIT_USAGE
    replaced = users.get(args.id) is not None
    try:
        users = users.with_user(args.id, args.role, pin)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    users.save(path)
    print(f"{'updated' if replaced else 'added'} {args.id} ({args.role}) in {path}")
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    users = _load(Path(args.file), missing_ok=False)
    if users is None:
        return EXIT_USAGE
    width = max([len(u.id) for u in users] + [2])
    print(f"{'id':<{width}}  role")
    for user in users:
        print(f"{user.id:<{width}}  {user.role}")
    print(f"{len(users)} user(s)")
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    users = _load(Path(args.file), missing_ok=False)
    if users is None:
        return EXIT_USAGE
    pin = _read_pin(args, confirm=False) or ""
    user = users.get(args.id)
    role = args.role or (user.role if user is not None else "operator")
    why = users.authenticate(args.id, role, pin)
    if why:
        print(f"{args.id}: REFUSED: {why}")
        return EXIT_FAILED
    print(f"{args.id}: OK ({role})")
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("users", help="manage a room's users file (operator ids, roles, PINs)",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    add = actions.add_parser("add", help="add a user, or replace a user's role and PIN")
    add.add_argument("file", help="users file (created when missing)")
    add.add_argument("--id", required=True, help="operator id")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--pin-stdin", action="store_true",
                     help="read the PIN as one line from standard input")
    add.set_defaults(handler=_add)
    lst = actions.add_parser("list", help="list the users and their roles (never the hashes)")
    lst.add_argument("file")
    lst.set_defaults(handler=_list)
    check = actions.add_parser("check", help="check a user's PIN (and role)")
    check.add_argument("file")
    check.add_argument("--id", required=True)
    check.add_argument("--role", choices=ROLES, help="also require this role")
    check.add_argument("--pin-stdin", action="store_true",
                       help="read the PIN as one line from standard input")
    check.set_defaults(handler=_check)
