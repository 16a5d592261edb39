"""The audit trail: an append-only, hash-chained SQLite file (WAL mode).

Every record carries the SHA-256 of the record before it, so that changing, inserting or
deleting a row breaks the chain at that row; :func:`verify` finds the first broken link.
Triggers refuse UPDATE and DELETE through SQLite, which stops accidents; a deliberate tamperer
can drop them, which is what the chain is for.

Writing never blocks the control cycle: :meth:`AuditTrail.record` encodes the record, stamps
it with the wall time and puts it on a bounded queue; one writer thread assigns the sequence
number and the hashes and commits in batches with ``PRAGMA synchronous=FULL``. A record handed
over is on disk within ``flush_interval_s`` plus one commit (see ``docs/audit.md`` for the
bound measured on the target machine). When the queue is full, the record is dropped, counted,
and a ``records_dropped`` record says so in the next batch; :meth:`record` never raises.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any

from syncctl import __version__

log = logging.getLogger("syncctl.audit")

GENESIS_HASH = "0" * 64
"""prev_hash of the first record of every trail."""

APPLICATION_ID = 0x53594E41
"""``PRAGMA application_id`` of an audit trail file ('SYNA'): how a file is recognised."""
SCHEMA_VERSION = 1

DEFAULT_FLUSH_INTERVAL_S = 0.2
DEFAULT_QUEUE_SIZE = 10_000
COMMIT_ALLOWANCE_S = 0.2
"""What the durability bound allows for one commit (WAL append + fsync). Measured on the
development machine (docs/audit.md): p99 under 5 ms, worst seen 4.5 ms; the allowance leaves
a factor of 40 for a loaded machine or a slower disk."""

BUSY_TIMEOUT_S = 1.0
"""How long a commit waits for another writer's lock before it fails and is retried."""

Row = tuple[int, str, float, str, str, str | None, str | None, str, str, str]
"""One stored record, in FIELDS order."""

FIELDS = ("seq", "utc", "mono", "room", "kind", "fraction_id", "actor", "payload",
          "prev_hash", "hash")

_INSERT = f"INSERT INTO audit ({', '.join(FIELDS)}) VALUES ({', '.join('?' * len(FIELDS))})"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq         INTEGER PRIMARY KEY,
    utc         TEXT    NOT NULL,
    mono        REAL    NOT NULL,
    room        TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    fraction_id TEXT,
    actor       TEXT,
    payload     TEXT    NOT NULL,
    prev_hash   TEXT    NOT NULL,
    hash        TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_fraction ON audit (fraction_id);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit trail is append-only: UPDATE refused');
END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit trail is append-only: DELETE refused');
END;
"""


class AuditFileError(Exception):
    """The path is missing, not SQLite, or not an audit trail (a local error: refuse)."""


class Kind:
    """Record kinds written by syncctl itself. Callers may use their own kinds too."""

    TRAIL_OPENED = "trail_opened"
    RECORDS_DROPPED = "records_dropped"
    CONFIG = "config"
    MODE_CHANGED = "mode_changed"
    PERMIT_CHANGED = "permit_changed"
    TRIP = "trip"
    TRIP_CLEARED = "trip_cleared"
    COMMAND = "command"
    FRACTION_STARTED = "fraction_started"
    FRACTION_COMPLETE = "fraction_complete"
    TREATMENT_RECORD = "treatment_record"
    LISTENER_ERROR = "audit_listener_error"


# --- canonical encoding and the chain --------------------------------------------------------


def _json_default(value: object) -> object:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def canonical_json(value: object) -> str:
    """Sorted keys, no whitespace, no NaN or infinity (ValueError), UTF-8 text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False,
                      ensure_ascii=False, default=_json_default)


def encode_payload(payload: Mapping[str, Any]) -> str:
    """The canonical payload text, or, when the payload cannot be encoded (NaN, an unknown
    type), a payload that says so and keeps its repr: the trail records it, never raises."""
    try:
        return canonical_json(payload)
    except (TypeError, ValueError) as exc:
        return canonical_json({"unencodable_payload": repr(payload)[:4000], "error": str(exc)})


def record_hash(prev_hash: str, seq: int, utc: str, mono: float, room: str, kind: str,
                fraction_id: str | None, actor: str | None, payload: str) -> str:
    """SHA-256 (hex) over the previous hash, a newline, and the canonical JSON array of the
    record's other fields in schema order. ``payload`` enters as the stored text."""
    body = json.dumps([seq, utc, mono, room, kind, fraction_id, actor, payload],
                      separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


def _is_finite_number(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


# --- the trail ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Pending:
    utc: str
    mono: float
    room: str
    kind: str
    fraction_id: str | None
    actor: str | None
    payload: str


@dataclass
class TrailStats:
    """Counters of a running trail (read them from any thread; they are only informative)."""

    handed_over: int = 0
    written: int = 0
    dropped: int = 0
    dropped_after_close: int = 0
    commits: int = 0
    commit_errors: int = 0
    last_commit_s: float = 0.0
    max_commit_s: float = 0.0
    commit_times_s: list[float] = field(default_factory=list)
    """The most recent commit durations (at most 1000)."""


class AuditTrail:
    """An append-only, hash-chained audit trail in one SQLite file.

    Opening an existing trail continues its chain (its head record's hash is checked first);
    every open writes a ``trail_opened`` record. ``record`` is thread-safe and never blocks or
    raises; ``close`` (or leaving the ``with`` block) drains the queue and commits everything.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        room: str = "",
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        queue_size: int = DEFAULT_QUEUE_SIZE,
    ) -> None:
        if not flush_interval_s > 0 or not math.isfinite(flush_interval_s):
            raise ValueError(f"flush_interval_s must be a positive number, not {flush_interval_s}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, not {queue_size}")
        self.path = Path(path)
        self.room = room
        self.flush_interval_s = flush_interval_s
        self.stats = TrailStats()
        self._queue: queue.Queue[_Pending] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._closed = False
        self._dropped_unreported = 0
        self._conn = _open_for_writing(self.path)
        try:
            self._seq, self._head = _check_head(self._conn, self.path)
        except BaseException:
            self._conn.close()
            raise
        previous_seq, previous_head = self._seq, self._head
        self._thread = threading.Thread(target=self._writer, name="audit-writer", daemon=True)
        self.record(Kind.TRAIL_OPENED, {
            "software": "syncctl",
            "version": __version__,
            "pid": os.getpid(),
            "path": str(self.path.resolve()),
            "flush_interval_s": flush_interval_s,
            "continues_seq": previous_seq,
            "continues_hash": previous_head,
        })
        self._thread.start()
        atexit.register(self.close)  # a normal exit without close() still drains

    # -- handing records over (any thread, never blocks, never raises) ---------------------------

    def record(
        self,
        kind: str,
        payload: Mapping[str, Any],
        *,
        fraction_id: str | None = None,
        actor: str | None = None,
        mono: float | None = None,
        room: str | None = None,
    ) -> bool:
        """Hand a record over to the writer. Returns False when it had to be dropped (queue
        full, or the trail closed); the drop is counted and, while open, recorded."""
        try:
            utc = _utc_now()
            if mono is None or not _is_finite_number(mono):
                mono = time.monotonic()  # a given NaN would break the NOT NULL column
            item = _Pending(
                utc=utc,
                mono=float(mono),
                room=self.room if room is None else str(room),
                kind=str(kind),
                fraction_id=None if fraction_id is None else str(fraction_id),
                actor=None if actor is None else str(actor),
                payload=encode_payload(payload),
            )
            with self._lock:
                if self._closed:
                    self.stats.dropped_after_close += 1
                    return False
                try:
                    self._queue.put_nowait(item)
                except queue.Full:
                    self.stats.dropped += 1
                    self._dropped_unreported += 1
                    return False
                self.stats.handed_over += 1
            return True
        except Exception:  # a bug here must never reach the control cycle
            log.exception("audit record %r could not be handed over", kind)
            with self._lock:
                self.stats.dropped += 1
                self._dropped_unreported += 1
            return False

    @property
    def durability_bound_s(self) -> float:
        """A record handed over longer ago than this is committed, while no commit takes longer
        than COMMIT_ALLOWANCE_S. The writer starts a commit at most once per flush interval F
        and drains the queue just before it, so a record waits at most max(F, C) for its
        commit to start (C: one commit's duration, when one is in progress) plus C."""
        return max(self.flush_interval_s, COMMIT_ALLOWANCE_S) + COMMIT_ALLOWANCE_S

    @property
    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last record committed."""
        with self._lock:
            return self._seq, self._head

    # -- closing -------------------------------------------------------------------------------

    def close(self, timeout_s: float = 30.0) -> None:
        """Drain the queue, commit everything and close the file. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self.close)
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("audit writer did not finish within %.1f s; records may be lost",
                      timeout_s)
            return
        self._conn.close()

    def __enter__(self) -> AuditTrail:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- the writer thread ---------------------------------------------------------------------

    def _writer(self) -> None:
        rows: list[Row] = []
        last_commit_start = -math.inf
        while True:
            stopping = self._stop.is_set()
            if not rows:
                first = self._next(block=not stopping)
                if first is None and not self._has_unreported_drops():
                    if stopping:
                        return
                    continue
                # At most one commit per flush interval: what arrives meanwhile joins the batch.
                wait = last_commit_start + self.flush_interval_s - time.monotonic()
                if wait > 0:
                    self._stop.wait(wait)  # close() cuts the wait short
                # Everything queued goes into this commit, so that the bound holds at any rate
                # the queue accepts (10 000 records hash in about 35 ms).
                batch = [] if first is None else [first]
                for _ in range(self._queue.maxsize + 1):
                    item = self._next(block=False)
                    if item is None:
                        break
                    batch.append(item)
                rows = self._chain(batch)
            last_commit_start = time.monotonic()
            if self._commit(rows):
                rows = []
            elif stopping:
                log.error("audit writer stops with %d records not written", len(rows))
                return
            else:
                self._stop.wait(self.flush_interval_s)  # then retry the same rows

    def _next(self, *, block: bool) -> _Pending | None:
        try:
            if block:
                return self._queue.get(timeout=self.flush_interval_s)
            return self._queue.get_nowait()
        except queue.Empty:
            return None

    def _has_unreported_drops(self) -> bool:
        with self._lock:
            return self._dropped_unreported > 0

    def _chain(self, batch: list[_Pending]) -> list[Row]:
        """Give the batch its sequence numbers and hashes, continuing the committed head."""
        with self._lock:
            dropped, self._dropped_unreported = self._dropped_unreported, 0
            seq, head = self._seq, self._head
        if dropped:
            batch.append(_Pending(_utc_now(), time.monotonic(), self.room, Kind.RECORDS_DROPPED,
                                  None, None, canonical_json({"count": dropped})))
        rows: list[Row] = []
        for item in batch:
            seq += 1
            digest = record_hash(head, seq, item.utc, item.mono, item.room, item.kind,
                                 item.fraction_id, item.actor, item.payload)
            rows.append((seq, item.utc, item.mono, item.room, item.kind, item.fraction_id,
                         item.actor, item.payload, head, digest))
            head = digest
        return rows

    def _commit(self, rows: list[Row]) -> bool:
        started = time.perf_counter()
        try:
            with self._conn:  # one transaction; rolled back on error
                self._conn.executemany(_INSERT, rows)
        except sqlite3.Error:
            log.exception("audit commit of %d records failed; retrying", len(rows))
            self.stats.commit_errors += 1
            return False
        elapsed = time.perf_counter() - started
        with self._lock:
            self._seq, self._head = rows[-1][0], rows[-1][9]
            st = self.stats
            st.written += len(rows)
            st.commits += 1
            st.last_commit_s = elapsed
            st.max_commit_s = max(st.max_commit_s, elapsed)
            st.commit_times_s.append(elapsed)
            if len(st.commit_times_s) > 1000:
                del st.commit_times_s[:-1000]
        return True


def _open_for_writing(path: Path) -> sqlite3.Connection:
    new = not path.exists() or (path.is_file() and path.stat().st_size == 0)
    if not new:
        _check_is_sqlite(path)
    try:
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level="DEFERRED",
                               timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise AuditFileError(f"{path}: cannot open: {exc}") from exc
    try:
        if new:
            # Before WAL mode, so that they land in the main file's header at once.
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        else:
            _check_application_id(conn, path)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise AuditFileError(f"{path}: cannot switch to WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)  # IF NOT EXISTS: restores dropped triggers on reopen
        conn.commit()
    except sqlite3.Error as exc:
        conn.close()
        raise AuditFileError(f"{path}: cannot prepare the audit trail: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _check_head(conn: sqlite3.Connection, path: Path) -> tuple[int, str]:
    """The committed head (seq, hash); the head record's own hash must be right, so that a
    trail altered at its end is not silently continued."""
    row = conn.execute(f"SELECT {', '.join(FIELDS)} FROM audit ORDER BY seq DESC LIMIT 1"
                       ).fetchone()
    if row is None:
        return 0, GENESIS_HASH
    problem = _row_problem(row)
    if problem:
        raise AuditFileError(f"{path}: the last record (seq {row[0]}) is broken ({problem}); "
                             "run `syncctl audit verify` and start a new trail file")
    return int(row[0]), str(row[9])


# --- reading: verify and export ---------------------------------------------------------------


class Break(Enum):
    HASH_MISMATCH = "hash mismatch"
    PREV_HASH_MISMATCH = "prev_hash mismatch"
    SEQ_GAP = "seq gap"


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    records: int
    """Records checked (up to and including the first broken one)."""
    head_seq: int
    head_hash: str
    """The last good record's seq and hash (0 and the genesis hash for an empty trail)."""
    broken_seq: int | None = None
    problem: Break | None = None
    detail: str = ""


def _check_is_sqlite(path: Path) -> None:
    if not path.exists():
        raise AuditFileError(f"{path}: no such file")
    if not path.is_file():
        raise AuditFileError(f"{path}: not a file")
    with path.open("rb") as f:
        header = f.read(16)
    if header != b"SQLite format 3\x00":
        raise AuditFileError(f"{path}: not an SQLite database, so not an audit trail")


def _check_application_id(conn: sqlite3.Connection, path: Path) -> None:
    app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
    if app_id != APPLICATION_ID:
        raise AuditFileError(f"{path}: an SQLite database but not a syncctl audit trail "
                             f"(application_id {app_id:#x}, expected {APPLICATION_ID:#x})")


def open_read_only(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """A read-only connection to an audit trail; AuditFileError when it is not one."""
    p = Path(path)
    _check_is_sqlite(p)
    try:
        conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise AuditFileError(f"{p}: cannot open: {exc}") from exc
    try:
        _check_application_id(conn, p)
        conn.execute("SELECT seq FROM audit LIMIT 1").fetchall()
    except sqlite3.Error as exc:
        conn.close()
        raise AuditFileError(f"{p}: not a readable audit trail: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _row_problem(row: tuple[Any, ...]) -> str:
    seq, utc, mono, room, kind, fraction_id, actor, payload, prev_hash, digest = row
    try:
        expected = record_hash(prev_hash, seq, utc, mono, room, kind, fraction_id, actor,
                               payload)
    except (TypeError, ValueError) as exc:
        return f"unreadable field: {exc}"
    if expected == digest:
        return ""
    return f"stored {str(digest)[:16]}..., computed {expected[:16]}..."


def verify(path: str | os.PathLike[str]) -> VerifyResult:
    """Walk the whole chain in seq order; stop at the first broken link."""
    conn = open_read_only(path)
    try:
        expected_seq, prev = 1, GENESIS_HASH
        checked = 0
        cursor = conn.execute(f"SELECT {', '.join(FIELDS)} FROM audit ORDER BY seq")
        for row in cursor:
            checked += 1
            seq = row[0]
            fail: tuple[Break, str] | None = None
            if seq != expected_seq:
                fail = (Break.SEQ_GAP, f"expected seq {expected_seq}, found {seq}")
                seq = expected_seq
            elif row[8] != prev:
                fail = (Break.PREV_HASH_MISMATCH,
                        f"prev_hash {str(row[8])[:16]}... is not the hash of seq "
                        f"{expected_seq - 1} ({prev[:16]}...)")
            else:
                problem = _row_problem(row)
                if problem:
                    fail = (Break.HASH_MISMATCH, problem)
            if fail is not None:
                return VerifyResult(False, checked, expected_seq - 1, prev, seq, fail[0],
                                    fail[1])
            prev = str(row[9])
            expected_seq += 1
        return VerifyResult(True, checked, expected_seq - 1, prev)
    except sqlite3.Error as exc:
        raise AuditFileError(f"{path}: cannot read the audit trail: {exc}") from exc
    finally:
        conn.close()


def read_records(path: str | os.PathLike[str], fraction_id: str | None = None
                 ) -> list[dict[str, Any]]:
    """Every record (or one fraction's) in seq order, as stored (payload as its JSON text)."""
    conn = open_read_only(path)
    try:
        sql = f"SELECT {', '.join(FIELDS)} FROM audit"
        args: tuple[str, ...] = ()
        if fraction_id is not None:
            sql += " WHERE fraction_id = ?"
            args = (fraction_id,)
        rows = conn.execute(sql + " ORDER BY seq", args).fetchall()
    except sqlite3.Error as exc:
        raise AuditFileError(f"{path}: cannot read the audit trail: {exc}") from exc
    finally:
        conn.close()
    return [dict(zip(FIELDS, row, strict=True)) for row in rows]


def export(path: str | os.PathLike[str], fmt: str = "csv",
           fraction_id: str | None = None) -> str:
    """The records as CSV (payload as its canonical JSON text) or as a JSON array (payload as
    an object). ``fraction_id`` keeps only that fraction's records."""
    if fmt not in ("csv", "json"):
        raise ValueError(f"unknown export format {fmt!r} (csv or json)")
    records = read_records(path, fraction_id)
    if fmt == "json":
        out = []
        for rec in records:
            item = dict(rec)
            # A tampered, non-JSON payload is exported as the text it is.
            with contextlib.suppress(ValueError):
                item["payload"] = json.loads(str(rec["payload"]))
            out.append(item)
        return json.dumps(out, indent=2, ensure_ascii=False) + "\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FIELDS)
    for rec in records:
        writer.writerow(["" if rec[name] is None else
                         repr(rec[name]) if isinstance(rec[name], float) else rec[name]
                         for name in FIELDS])
    return buffer.getvalue()
