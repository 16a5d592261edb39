"""`syncctl audit verify|export` as a user runs it, and the durability bound under SIGKILL."""

from __future__ import annotations

import csv
import io
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from syncctl.audit import AuditTrail, read_records, verify

ROOT = Path(__file__).resolve().parents[2]


def syncctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncctl", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )


def make_trail(path: Path) -> None:
    with AuditTrail(path, room="sim-1", flush_interval_s=0.02) as trail:
        for i in range(12):
            trail.record("mode_changed" if i % 3 == 0 else "command", {"i": i},
                         fraction_id="sim-1-f1" if i < 6 else "sim-1-f2",
                         actor="op-7" if i % 3 else None)


def test_verify_ok_names_count_and_head(tmp_path: Path) -> None:
    path = tmp_path / "trail.db"
    make_trail(path)
    result = syncctl("audit", "verify", str(path))
    assert result.returncode == 0, result.stderr
    assert f"{path}: OK, 13 records, chain intact" in result.stdout
    assert f"head seq 13 hash {verify(path).head_hash}" in result.stdout
    assert result.stderr == ""


def test_verify_finds_a_tampered_row(tmp_path: Path) -> None:
    path = tmp_path / "trail.db"
    make_trail(path)
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("""UPDATE audit SET payload = '{"i":5}' WHERE seq = 5""")  # was {"i":3}
    conn.commit()
    conn.close()
    result = syncctl("audit", "verify", str(path))
    assert result.returncode == 1
    assert "BROKEN at seq 5: hash mismatch" in result.stdout
    assert "records 1..4 verify" in result.stdout
    assert "Traceback" not in result.stderr


def test_verify_finds_a_deleted_row(tmp_path: Path) -> None:
    path = tmp_path / "trail.db"
    make_trail(path)
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER audit_no_delete")
    conn.execute("DELETE FROM audit WHERE seq = 9")
    conn.commit()
    conn.close()
    result = syncctl("audit", "verify", str(path))
    assert result.returncode == 1
    assert "BROKEN at seq 9: seq gap (expected seq 9, found 10)" in result.stdout


def test_verify_refuses_what_is_not_a_trail(tmp_path: Path) -> None:
    missing = syncctl("audit", "verify", str(tmp_path / "nope.db"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    plain = syncctl("audit", "verify", str(text))
    assert plain.returncode == 2 and "not an SQLite database" in plain.stderr
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    foreign = syncctl("audit", "verify", str(other))
    assert foreign.returncode == 2 and "not a syncctl audit trail" in foreign.stderr
    for result in (missing, plain, foreign):
        assert "Traceback" not in result.stderr and result.stdout == ""


def test_export_csv_to_stdout_and_json_of_one_fraction_to_a_file(tmp_path: Path) -> None:
    path = tmp_path / "trail.db"
    make_trail(path)
    result = syncctl("audit", "export", str(path), "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [int(r["seq"]) for r in rows] == list(range(1, 14))
    assert [r["hash"] for r in rows] == [r["hash"] for r in read_records(path)]

    out = tmp_path / "f2.json"
    result = syncctl("audit", "export", str(path), "--format", "json", "--fraction", "sim-1-f2",
                     "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    data = json.loads(out.read_text(encoding="utf-8"))
    assert [d["payload"]["i"] for d in data] == [6, 7, 8, 9, 10, 11]
    assert {d["fraction_id"] for d in data} == {"sim-1-f2"}
    assert [d["actor"] for d in data[:3]] == [None, "op-7", "op-7"]


def test_export_of_a_broken_trail_warns(tmp_path: Path) -> None:
    path = tmp_path / "trail.db"
    make_trail(path)
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET actor = 'nobody' WHERE seq = 3")
    conn.commit()
    conn.close()
    result = syncctl("audit", "export", str(path), "--format", "json")
    assert result.returncode == 0
    assert "chain is BROKEN at seq 3" in result.stderr
    assert json.loads(result.stdout)[2]["actor"] == "nobody"


def test_export_bad_arguments(tmp_path: Path) -> None:
    path = tmp_path / "trail.db"
    make_trail(path)
    bad_format = syncctl("audit", "export", str(path), "--format", "xml")
    assert bad_format.returncode == 2 and "invalid choice: 'xml'" in bad_format.stderr
    missing = syncctl("audit", "export", str(tmp_path / "nope.db"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


# --- SIGKILL: nothing older than the stated bound is lost -----------------------------------

CHILD = """
import sys, time
from syncctl.audit import AuditTrail
trail = AuditTrail(sys.argv[1], room="sim-1")
print("bound", trail.durability_bound_s, flush=True)
for i in range(20000):
    trail.record("tick", {"i": i})
    print(i, repr(time.monotonic()), flush=True)
    time.sleep(0.001)
trail.close()
print("finished", flush=True)
"""


def test_sigkill_loses_nothing_older_than_the_bound(tmp_path: Path) -> None:
    path = tmp_path / "trail.db"
    with subprocess.Popen([sys.executable, "-c", CHILD, str(path)], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as child:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(child.stdout or []), daemon=True)
        reader.start()
        try:
            # Let it hand over records for about 1.5 s (several flush intervals), then kill it.
            deadline = time.monotonic() + 60
            started: float | None = None
            for _ in range(100_000):
                if started is None and len(lines) > 1:
                    started = time.monotonic()
                if started is not None and time.monotonic() - started > 1.5:
                    break
                assert child.poll() is None, "the child ended before it was killed"
                assert time.monotonic() < deadline, "the child printed nothing"
                time.sleep(0.01)
            killed_at = time.monotonic()
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(10)
        reader.join(10)
    assert child.returncode == -signal.SIGKILL
    assert "finished" not in lines

    bound = float(lines[0].split()[1])
    handed: dict[int, float] = {}
    for line in lines[1:]:
        i, at = line.split()
        handed[int(i)] = float(at)
    on_disk = {json.loads(r["payload"])["i"]: r for r in read_records(path) if r["kind"] == "tick"}
    old_enough = [i for i, at in handed.items() if at < killed_at - bound]
    assert len(old_enough) > 100
    lost = [i for i in old_enough if i not in on_disk]
    assert lost == [], f"records handed over more than {bound} s before the kill were lost"
    result = verify(path)
    assert result.ok, result
    assert set(on_disk) == set(range(len(on_disk)))  # what is there is a prefix, no holes
    missing = [at for i, at in handed.items() if i not in on_disk]
    newest_kept = max(handed[i] for i in on_disk if i in handed)
    print(f"bound {bound} s; handed over {len(handed)}, on disk {len(on_disk)}, lost "
          f"{len(missing)}; loss window {1000 * (killed_at - newest_kept):.0f} ms before kill")

    # The next run continues the killed run's chain.
    with AuditTrail(path, room="sim-1", flush_interval_s=0.02) as trail:
        trail.record("after_kill", {})
    again = verify(path)
    assert again.ok and again.records == result.records + 2


def test_a_normal_exit_without_close_still_drains(tmp_path: Path) -> None:
    path = tmp_path / "trail.db"
    code = ("import sys\nfrom syncctl.audit import AuditTrail\n"
            "trail = AuditTrail(sys.argv[1], flush_interval_s=5.0)\n"
            "for i in range(50):\n    trail.record('tick', {'i': i})\n")
    subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, timeout=60, check=True)
    ticks = [json.loads(r["payload"])["i"] for r in read_records(path) if r["kind"] == "tick"]
    assert ticks == list(range(50))
    assert verify(path).ok
