"""The tamper-evident audit trail: a hash-chained, append-only SQLite file, and the
controller listener that records mode and permit changes, trips and operator commands."""

from syncctl.audit.listener import AuditListener
from syncctl.audit.store import (
    COMMIT_ALLOWANCE_S,
    DEFAULT_FLUSH_INTERVAL_S,
    GENESIS_HASH,
    AuditFileError,
    AuditTrail,
    Break,
    Kind,
    TrailStats,
    VerifyResult,
    canonical_json,
    export,
    read_records,
    record_hash,
    verify,
)

__all__ = [
    "COMMIT_ALLOWANCE_S",
    "DEFAULT_FLUSH_INTERVAL_S",
    "GENESIS_HASH",
    "AuditFileError",
    "AuditListener",
    "AuditTrail",
    "Break",
    "Kind",
    "TrailStats",
    "VerifyResult",
    "canonical_json",
    "export",
    "read_records",
    "record_hash",
    "verify",
]
