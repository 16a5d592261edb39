"""`syncctl audit verify PATH` and `syncctl audit export PATH --format csv|json`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from syncctl.audit import AuditFileError, export, verify

EXIT_OK = 0
EXIT_BROKEN = 1
EXIT_NOT_A_TRAIL = 2


def verify_command(path: Path) -> int:
    try:
        result = verify(path)
    except AuditFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NOT_A_TRAIL
    if result.ok:
        print(f"{path}: OK, {result.records} records, chain intact")
        print(f"head seq {result.head_seq} hash {result.head_hash}")
        return EXIT_OK
    assert result.problem is not None
    print(f"{path}: BROKEN at seq {result.broken_seq}: {result.problem.value} "
          f"({result.detail})")
    print(f"records 1..{result.head_seq} verify; last good hash {result.head_hash}")
    return EXIT_BROKEN


def export_command(path: Path, fmt: str, fraction_id: str | None, out: Path | None) -> int:
    try:
        text = export(path, fmt, fraction_id)
        result = verify(path)
    except AuditFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NOT_A_TRAIL
    if not result.ok:
        print(f"warning: {path}: the chain is BROKEN at seq {result.broken_seq} "
              f"({result.problem.value if result.problem else ''}); exported as stored",
              file=sys.stderr)
    if out is None:
        sys.stdout.write(text)
    else:
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as exc:
            print(f"error: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_NOT_A_TRAIL
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    return verify_command(Path(args.path))


def _export(args: argparse.Namespace) -> int:
    return export_command(Path(args.path), args.format, args.fraction,
                          None if args.out is None else Path(args.out))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = sub.add_parser("audit", help="audit trail tools")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="ACTION")
    audit_sub.required = True
    verify_parser = audit_sub.add_parser(
        "verify",
        help="check an audit trail's hash chain",
        description="Walk the hash chain of an audit trail. Exit 0 and print OK with the record "
        "count and the head hash when intact; exit 1 and name the first broken record when "
        "not; exit 2 when the file is missing or not an audit trail.",
    )
    verify_parser.add_argument("path", help="audit trail file (SQLite)")
    verify_parser.set_defaults(handler=_verify)
    export_parser = audit_sub.add_parser(
        "export",
        help="export an audit trail as CSV or JSON",
        description="Write the records of an audit trail, or of one fraction, as CSV or JSON "
        "(to stdout unless --out). A broken chain is exported as stored, with a warning.",
    )
    export_parser.add_argument("path", help="audit trail file (SQLite)")
    export_parser.add_argument("--format", choices=("csv", "json"), default="csv",
                               help="output format (default csv)")
    export_parser.add_argument("--fraction", metavar="ID", default=None,
                               help="only the records of this fraction id")
    export_parser.add_argument("--out", metavar="FILE", default=None,
                               help="write to FILE instead of stdout")
    export_parser.set_defaults(handler=_export)
