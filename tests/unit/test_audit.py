"""The audit trail: hash chain, append-only triggers, tamper detection, export, the
controller listener, and the never-raise, never-block hand-over."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from syncctl.audit import (
    GENESIS_HASH,
    AuditFileError,
    AuditListener,
    AuditTrail,
    Break,
    Kind,
    export,
    read_records,
    verify,
)
from syncctl.config import config_hash, load_room
from syncctl.controller import ControllerReport
from syncctl.core import (
    NOT_READ,
    Command,
    CommandKind,
    CommandResult,
    EventKind,
    GateCommand,
    Mode,
    Outputs,
    Permit,
    XrayCommand,
    initial_state,
)
from tests.unit.harness import PARAMS, Harness

ROOT = Path(__file__).resolve().parents[2]
FAST = 0.02  # flush interval for tests that do not measure anything


def documented_hash(prev_hash: str, rec: dict[str, Any]) -> str:
    """docs/audit.md, re-implemented independently of syncctl.audit."""
    body = json.dumps([rec["seq"], rec["utc"], rec["mono"], rec["room"], rec["kind"],
                       rec["fraction_id"], rec["actor"], rec["payload"]],
                      separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


def write_trail(path: Path, count: int, *, fraction_id: str | None = None) -> None:
    with AuditTrail(path, room="room-a", flush_interval_s=FAST) as trail:
        for i in range(count):
            assert trail.record("test", {"i": i, "name": "é"}, fraction_id=fraction_id,
                                actor="op-1" if i % 2 else None, mono=100.0 + i)


def tamper(path: Path, *statements: str) -> None:
    """What a tamperer with write access does: drop the triggers, then change the table."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("DROP TRIGGER audit_no_update")
        conn.execute("DROP TRIGGER audit_no_delete")
        for sql in statements:
            conn.execute(sql)
        conn.commit()
    finally:
        conn.close()


def wait_for(predicate: Any, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    for _ in range(100_000):
        if predicate():
            return True
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
    return bool(predicate())


# --- the chain -------------------------------------------------------------------------------


def test_records_form_a_gapless_hash_chain(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    write_trail(path, 50)
    records = read_records(path)
    assert [r["seq"] for r in records] == list(range(1, 52))
    assert records[0]["kind"] == Kind.TRAIL_OPENED
    assert records[0]["prev_hash"] == GENESIS_HASH
    prev = GENESIS_HASH
    for rec in records:
        assert rec["prev_hash"] == prev
        assert rec["hash"] == documented_hash(prev, rec)
        prev = rec["hash"]
    tests = records[1:]
    assert [json.loads(r["payload"])["i"] for r in tests] == list(range(50))
    assert tests[3]["payload"] == '{"i":3,"name":"é"}'  # canonical: sorted, compact, UTF-8
    assert [r["mono"] for r in tests] == [100.0 + i for i in range(50)]
    assert {r["room"] for r in records} == {"room-a"}
    assert tests[1]["actor"] == "op-1" and tests[0]["actor"] is None
    result = verify(path)
    assert result.ok and result.records == 51 and result.head_seq == 51
    assert result.head_hash == prev


def test_reopening_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    write_trail(path, 5)
    head = verify(path).head_hash
    with AuditTrail(path, room="room-a", flush_interval_s=FAST) as trail:
        trail.record("again", {})
    records = read_records(path)
    opened = records[6]
    assert opened["seq"] == 7 and opened["kind"] == Kind.TRAIL_OPENED
    assert opened["prev_hash"] == head
    payload = json.loads(opened["payload"])
    assert payload["continues_seq"] == 6 and payload["continues_hash"] == head
    assert payload["version"]
    assert records[-1]["kind"] == "again"
    assert verify(path).ok and verify(path).records == 8


def test_triggers_refuse_update_and_delete(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    write_trail(path, 3)
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only: UPDATE refused"):
            conn.execute("UPDATE audit SET payload = '{}' WHERE seq = 2")
        with pytest.raises(sqlite3.DatabaseError, match="append-only: DELETE refused"):
            conn.execute("DELETE FROM audit WHERE seq = 3")
    finally:
        conn.close()
    assert verify(path).ok and verify(path).records == 4


def test_reopening_restores_dropped_triggers(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    write_trail(path, 2)
    tamper(path)  # triggers dropped, nothing changed
    AuditTrail(path, flush_interval_s=FAST).close()
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM audit WHERE seq = 1")
    finally:
        conn.close()


@pytest.mark.parametrize("seq", [1, 7, 20])
def test_one_changed_payload_byte_is_found_at_its_seq(tmp_path: Path, seq: int) -> None:
    path = tmp_path / "a.db"
    write_trail(path, 20)
    before = read_records(path)[seq - 1]["payload"]
    changed = before.replace('"i":', '"j":') if '"i":' in before else before.replace("{", "[", 1)
    assert changed != before
    tamper(path, f"UPDATE audit SET payload = '{changed}' WHERE seq = {seq}")
    result = verify(path)
    assert not result.ok
    assert result.broken_seq == seq and result.problem is Break.HASH_MISMATCH
    assert result.head_seq == seq - 1 and result.records == seq


def test_a_rehashed_row_breaks_the_next_link(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    write_trail(path, 10)
    rec = read_records(path)[4]
    rec["payload"] = '{"i":999,"name":"é"}'
    forged = documented_hash(rec["prev_hash"], rec)
    tamper(path, f"UPDATE audit SET payload = '{rec['payload']}', hash = '{forged}' "
                 "WHERE seq = 5")
    result = verify(path)
    assert result.broken_seq == 6 and result.problem is Break.PREV_HASH_MISMATCH
    assert result.head_hash == forged


def test_a_changed_time_is_found(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    write_trail(path, 10)
    tamper(path, "UPDATE audit SET mono = mono + 0.001 WHERE seq = 4")
    result = verify(path)
    assert result.broken_seq == 4 and result.problem is Break.HASH_MISMATCH


def test_a_deleted_row_is_a_seq_gap(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    write_trail(path, 10)
    tamper(path, "DELETE FROM audit WHERE seq = 6")
    result = verify(path)
    assert not result.ok
    assert result.broken_seq == 6 and result.problem is Break.SEQ_GAP
    assert "expected seq 6, found 7" in result.detail


def test_a_trail_broken_at_its_end_is_not_continued(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    write_trail(path, 3)
    tamper(path, "UPDATE audit SET actor = 'someone' WHERE seq = 4")
    with pytest.raises(AuditFileError, match="seq 4"):
        AuditTrail(path)


def test_files_that_are_not_trails_are_refused(tmp_path: Path) -> None:
    with pytest.raises(AuditFileError, match="no such file"):
        verify(tmp_path / "missing.db")
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(AuditFileError, match="not an SQLite database"):
        verify(text)
    with pytest.raises(AuditFileError, match="not an SQLite database"):
        AuditTrail(text)
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE audit (x)")
    conn.commit()
    conn.close()
    with pytest.raises(AuditFileError, match="not a syncctl audit trail"):
        verify(other)
    with pytest.raises(AuditFileError, match="not a syncctl audit trail"):
        AuditTrail(other)


def test_an_empty_file_becomes_a_new_trail(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    AuditTrail(path, flush_interval_s=FAST).close()
    assert verify(path).ok and verify(path).records == 1


# --- export ----------------------------------------------------------------------------------


def test_export_csv_and_json_and_filter_by_fraction(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with AuditTrail(path, room="room-a", flush_interval_s=FAST) as trail:
        for i in range(6):
            trail.record("test", {"i": i, "ratio": i / 3}, fraction_id=f"f{i % 2}")
    stored = read_records(path)

    rows = list(csv.DictReader(io.StringIO(export(path, "csv"))))
    assert len(rows) == 7
    for row, rec in zip(rows, stored, strict=True):
        assert int(row["seq"]) == rec["seq"] and row["hash"] == rec["hash"]
        assert float(row["mono"]) == rec["mono"]  # repr: no precision lost
        assert row["payload"] == rec["payload"]
        assert row["fraction_id"] == (rec["fraction_id"] or "")

    only = list(csv.DictReader(io.StringIO(export(path, "csv", fraction_id="f1"))))
    assert [json.loads(r["payload"])["i"] for r in only] == [1, 3, 5]

    data = json.loads(export(path, "json", fraction_id="f0"))
    assert [d["payload"]["i"] for d in data] == [0, 2, 4]
    assert data[1]["payload"]["ratio"] == pytest.approx(2 / 3)
    assert {d["fraction_id"] for d in data} == {"f0"}
    assert json.loads(export(path, "json", fraction_id="nope")) == []
    with pytest.raises(ValueError, match="xml"):
        export(path, "xml")


# --- the hand-over never raises and never blocks -------------------------------------------


def test_a_full_queue_drops_counts_and_records_the_drop(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    trail = AuditTrail(path, flush_interval_s=3.0, queue_size=10)
    try:
        # The writer commits trail_opened at once, then waits out its flush interval.
        assert wait_for(lambda: trail.stats.commits == 1)
        accepted = [trail.record("burst", {"i": i}) for i in range(40)]
    finally:
        trail.close()
    dropped = accepted.count(False)
    assert dropped >= 40 - 11  # at most the queue plus the one the writer holds got in
    assert trail.stats.dropped == dropped
    records = read_records(path)
    burst = [json.loads(r["payload"])["i"] for r in records if r["kind"] == "burst"]
    assert burst == [i for i, ok in enumerate(accepted) if ok]
    notes = [json.loads(r["payload"]) for r in records if r["kind"] == Kind.RECORDS_DROPPED]
    assert notes == [{"count": dropped}]
    assert verify(path).ok


def test_record_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.db"
    with AuditTrail(path, flush_interval_s=FAST) as trail:
        assert trail.record("nan", {"x": float("nan")})
        assert trail.record("object", {"x": object()})
        assert trail.record("tuple_key", {(1, 2): 3})  # type: ignore[dict-item]
        assert trail.record("bad_mono", {}, mono=float("inf"))
        assert trail.record(7, {"enum": Mode.SAFE, "set": {"b", "a"}})  # type: ignore[arg-type]

        def broken(_payload: object) -> str:
            raise RuntimeError("a bug")

        monkeypatch.setattr("syncctl.audit.store.encode_payload", broken)
        assert trail.record("buggy", {}) is False
        monkeypatch.undo()
    assert trail.record("after_close", {}) is False
    assert trail.stats.dropped_after_close == 1
    by_kind = {r["kind"]: r for r in read_records(path)}
    nan = json.loads(by_kind["nan"]["payload"])
    assert "nan" in nan["unencodable_payload"] and "Out of range" in nan["error"]
    assert "object object" in json.loads(by_kind["object"]["payload"])["unencodable_payload"]
    assert "tuple_key" in by_kind
    assert isinstance(by_kind["bad_mono"]["mono"], float)
    assert json.loads(by_kind["7"]["payload"]) == {"enum": "SAFE", "set": ["a", "b"]}
    assert "buggy" not in by_kind
    assert json.loads(by_kind[Kind.RECORDS_DROPPED]["payload"]) == {"count": 1}
    assert verify(path).ok


def test_record_is_thread_safe(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    per_thread = 300
    with AuditTrail(path, flush_interval_s=FAST) as trail:

        def writer(name: str) -> None:
            for i in range(per_thread):
                trail.record("t", {"thread": name, "i": i})

        threads = [threading.Thread(target=writer, args=(f"w{n}",)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    records = read_records(path)
    assert len(records) == 1 + 4 * per_thread
    for n in range(4):
        mine = [json.loads(r["payload"])["i"] for r in records
                if r["kind"] == "t" and json.loads(r["payload"])["thread"] == f"w{n}"]
        assert mine == list(range(per_thread))  # each thread's records in its own order
    assert verify(path).ok


def test_records_are_committed_within_the_flush_interval_while_open(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with AuditTrail(path, flush_interval_s=0.05) as trail:
        trail.record("soon", {})
        assert wait_for(lambda: any(r["kind"] == "soon" for r in read_records(path)),
                        timeout_s=0.05 + 5.0)
        assert trail.stats.commits >= 2 and trail.head[0] == 2


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="flush_interval_s"):
        AuditTrail(tmp_path / "a.db", flush_interval_s=0)
    with pytest.raises(ValueError, match="queue_size"):
        AuditTrail(tmp_path / "a.db", queue_size=0)


# --- the listener ------------------------------------------------------------------------------


class AuditedHarness(Harness):
    """The core harness, handing each step's report to a listener as the controller does."""

    def __init__(self, listener: AuditListener) -> None:
        super().__init__()
        self.listener = listener

    def tick(self, command: Command | None = None, dt: float = 0.002) -> Outputs:
        out = super().tick(command, dt)
        self.listener(ControllerReport(self.t, NOT_READ, self.state, out))
        return out


def payloads(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [json.loads(r["payload"]) for r in records if r["kind"] == kind]


def test_listener_records_a_fraction_with_a_trip(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with AuditTrail(path, room="trail-room", flush_interval_s=FAST) as trail:
        listener = AuditListener(trail, "sim-1")
        h = AuditedHarness(listener)
        h.run(0.05)
        refused = h.command(CommandKind.BEAM_ON)
        assert not refused.accepted
        h.to_treating()
        h.run(1.0)
        h.room.faults.add("estop")
        h.run(0.05)
        assert h.mode is Mode.FAULT
        h.room.faults.discard("estop")
        h.run(0.05)
        assert h.command(CommandKind.ACKNOWLEDGE).accepted
        assert h.command(CommandKind.RESET).accepted
        h.run(0.05)
        first_fraction = listener.fraction_id
        h.to_setup("liver-02")
        h.run(0.05)
        handed_over = trail.stats.handed_over
    records = read_records(path)
    assert verify(path).ok
    assert handed_over == len(records)  # everything handed over (and trail_opened) is there
    assert len(records) < len(h.outputs) / 10  # only changes are recorded
    assert {r["room"] for r in records[1:]} == {"sim-1"}

    # Every mode change the core reported, in order, with from and to.
    events = [e for out in h.outputs for e in out.events]
    expected_modes = [(e.mode_from.value, e.mode_to.value) for e in events  # type: ignore[union-attr]
                      if e.kind is EventKind.MODE_CHANGED]
    recorded_modes = [(p["from"], p["to"]) for p in payloads(records, Kind.MODE_CHANGED)]
    # The first report's mode is recorded as observed (no event names it): OFFLINE, until
    # both devices answer and echo the heartbeat.
    assert recorded_modes[0] == (None, "OFFLINE")
    assert recorded_modes[1:] == expected_modes
    assert ("TREATING", "FAULT") in recorded_modes and ("FAULT", "SAFE") in recorded_modes

    # Every command with who sent it and the result.
    commands = [r for r in records if r["kind"] == Kind.COMMAND]
    results = [out.command_result for out in h.outputs if out.command_result is not None]
    assert len(commands) == len(results)
    for rec, result in zip(commands, results, strict=True):
        p = json.loads(rec["payload"])
        assert rec["actor"] == result.command.operator == "tester"
        assert p["command"] == result.command.kind.value
        assert p["result"] == ("accepted" if result.accepted else "refused")
        assert p["reason"] == result.reason
    assert json.loads(commands[0]["payload"])["result"] == "refused"
    assert "not allowed in SAFE" in json.loads(commands[0]["payload"])["reason"]

    # The trip with its rule ids.
    trips = [r for r in records if r["kind"] == Kind.TRIP]
    assert len(trips) == 1 and "IL-005" in json.loads(trips[0]["payload"])["rule_ids"]

    # Every permit change: when granted flips or the set of denying rules changes.
    for name in ("beam", "xray"):
        expected: list[tuple[bool, set[str]]] = []
        for out in h.outputs:
            permit = out.beam_permit if name == "beam" else out.xray_permit
            now = (permit.granted, set(permit.denied_by))
            if not expected or expected[-1] != now:
                expected.append(now)
        recorded = [(p["granted"], set(p["denied_by"]))
                    for p in payloads(records, Kind.PERMIT_CHANGED) if p["permit"] == name]
        assert recorded == expected
        assert any(granted for granted, _ in recorded)
    beam_denials = [p for p in payloads(records, Kind.PERMIT_CHANGED)
                    if p["permit"] == "beam" and "IL-005" in p["denied_by"]]
    assert beam_denials and beam_denials[0]["before"]["granted"] in (True, False)

    # Fraction ids: none before the first selection, one per selection after it.
    started = [r for r in records if r["kind"] == Kind.FRACTION_STARTED]
    assert [json.loads(r["payload"])["plan_id"] for r in started] == ["lung-01", "liver-02"]
    first, second = started[0]["seq"], started[1]["seq"]
    assert all(r["fraction_id"] is None for r in records if r["seq"] < first)
    assert first_fraction is not None and first_fraction in {started[0]["fraction_id"]}
    assert {r["fraction_id"] for r in records if first <= r["seq"] < second} == {first_fraction}
    assert {r["fraction_id"] for r in records if r["seq"] >= second} == {listener.fraction_id}
    assert listener.fraction_id != first_fraction
    assert "lung-01" in first_fraction and first_fraction.startswith("sim-1-")
    assert trips[0]["fraction_id"] == first_fraction
    fraction_rows = json.loads(export(path, "json", fraction_id=first_fraction))
    assert {d["kind"] for d in fraction_rows} >= {Kind.FRACTION_STARTED, Kind.TRIP,
                                                  Kind.COMMAND, Kind.MODE_CHANGED}


def _report(now: float, beam: Permit, xray: Permit,
            result: CommandResult | None = None) -> ControllerReport:
    out = Outputs(gate=GateCommand.CLOSE, xray=XrayCommand.STOP, beam_permit=beam,
                  xray_permit=xray, heartbeat=None, command_result=result)
    return ControllerReport(now, NOT_READ, initial_state(PARAMS, 0.0), out)


def test_listener_hands_over_only_changes(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with AuditTrail(path, flush_interval_s=FAST) as trail:
        listener = AuditListener(trail, "sim-1")
        denied = Permit(False, ("IL-010", "IL-020"))
        xray = Permit(False, ("IL-101",))
        listener(_report(1.0, denied, xray))
        first = trail.stats.handed_over
        for i in range(1000):
            listener(_report(1.0 + i / 1000, Permit(False, ("IL-010", "IL-020")), xray))
        listener(_report(2.0, Permit(False, ("IL-020", "IL-010")), xray))  # same set
        assert trail.stats.handed_over == first
        listener(_report(2.1, Permit(False, ("IL-020",)), xray))
        listener(_report(2.2, Permit(True, ()), xray))
        cmd = Command(CommandKind.ARM, "")
        listener(_report(2.3, Permit(True, ()), xray, CommandResult(cmd, False, "not ready")))
        assert trail.stats.handed_over == first + 3
    records = read_records(path)
    beam = [p for p in payloads(records, Kind.PERMIT_CHANGED) if p["permit"] == "beam"]
    assert [(p["granted"], p["denied_by"]) for p in beam] == [
        (False, ["IL-010", "IL-020"]), (False, ["IL-020"]), (True, [])]
    assert beam[0]["before"] is None
    assert beam[2]["before"] == {"granted": False, "denied_by": ["IL-020"]}
    command = next(r for r in records if r["kind"] == Kind.COMMAND)
    assert command["actor"] is None and command["mono"] == 2.3
    observed = payloads(records, Kind.MODE_CHANGED)
    assert observed == [{"from": None, "to": "OFFLINE", "message": "mode observed",
                         "rule_ids": []}]


def test_listener_never_raises_into_the_cycle(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with AuditTrail(path, flush_interval_s=FAST) as trail:
        listener = AuditListener(trail, "sim-1")
        listener(ControllerReport(1.0, NOT_READ, initial_state(PARAMS, 0.0),
                                  None))  # type: ignore[arg-type]
        assert listener.errors == 1
    errors = payloads(read_records(path), Kind.LISTENER_ERROR)
    assert len(errors) == 1 and "AttributeError" in errors[0]["error"]


def test_config_and_treatment_records(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    room = load_room(ROOT / "configs" / "room-sim.yaml")
    summary = {"plan_id": "lung-01", "planned_dose_mu": 10.0, "delivered_dose_mu": 9.998,
               "beam_on_time_s": 10.0, "imaging_mas": 123.6, "outcome": "COMPLETE",
               "gating_latency_ms": {"p50": 20.5, "p99": None}}
    with AuditTrail(path, flush_interval_s=FAST) as trail:
        listener = AuditListener(trail, room.room.room.id)
        listener.record_config(room)
        listener.fraction_id = "sim-1-x-lung-01"
        listener.record_treatment(summary)
    records = read_records(path)
    config = payloads(records, Kind.CONFIG)
    assert config[0]["config_hash"] == config_hash(room)
    assert config[0]["room_id"] == "sim-1" and config[0]["path"].endswith("room-sim.yaml")
    treatment = next(r for r in records if r["kind"] == Kind.TREATMENT_RECORD)
    assert json.loads(treatment["payload"]) == summary
    assert treatment["fraction_id"] == "sim-1-x-lung-01" and treatment["room"] == "sim-1"


def test_a_failed_commit_is_retried_without_breaking_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with AuditTrail(path, flush_interval_s=FAST) as trail:
        assert wait_for(lambda: trail.stats.commits == 1)
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
            for i in range(5):
                trail.record("while_locked", {"i": i})
            assert wait_for(lambda: trail.stats.commit_errors >= 1, timeout_s=30)
            blocker.execute("ROLLBACK")
        finally:
            blocker.close()
        trail.record("after", {})
    records = read_records(path)
    assert [r["kind"] for r in records] == [Kind.TRAIL_OPENED, *["while_locked"] * 5, "after"]
    assert verify(path).ok
