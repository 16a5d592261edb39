"""`syncctl` entry point: argparse dispatch to the sub-command modules."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from syncctl import __version__
from syncctl.cli import (
    config_cmd,
    demo_cmd,
    docs_cmd,
    dryrun_cmd,
    replay_cmd,
    review_cmd,
    run_cmd,
    sim_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="syncctl",
        description="Irradiation synchronizer: beam gate and X-ray imaging under one interlock.",
    )
    parser.add_argument("--version", action="version", version=f"syncctl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    from syncctl.cli import audit_cmd  # here, so that registering it is one edit

    audit_cmd.register(sub)
    config_cmd.register(sub)
    demo_cmd.register(sub)
    dryrun_cmd.register(sub)
    docs_cmd.register(sub)
    replay_cmd.register(sub)
    review_cmd.register(sub)
    run_cmd.register(sub)
    sim_cmd.register(sub)
    from syncctl.cli import safety_cmd  # here, so that registering it is one edit

    safety_cmd.register(sub)
    from syncctl.cli import commission_cmd, probe_cmd  # here, so that registering is one edit

    commission_cmd.register(sub)
    probe_cmd.register(sub)
    from syncctl.cli import users_cmd  # here, so that registering it is one edit

    users_cmd.register(sub)
    from syncctl.cli import console_cmd  # here, so that registering it is one edit

    console_cmd.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = args.handler
    try:
        result: int = handler(args)
    except BrokenPipeError:
        # The reader went away (`syncctl replay ... | head`): not an error of ours. Point
        # stdout at /dev/null so that the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return result


if __name__ == "__main__":
    sys.exit(main())
