"""`syncctl users add|list|check FILE` as an administrator runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from syncctl.bus import load_users

ROOT = Path(__file__).resolve().parents[2]


def users(*args: str, pin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "syncctl", "users", *args],
                          input=None if pin is None else pin + "\n", capture_output=True,
                          text=True, timeout=60, check=False, cwd=ROOT)


def test_add_list_check(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    added = users("add", str(path), "--id", "alice", "--role", "operator", "--pin-stdin",
                  pin="8642")
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == f"added alice (operator) in {path}"
    assert users("add", str(path), "--id", "bob", "--role", "physicist", "--pin-stdin",
                 pin="97531").returncode == 0
    text = path.read_text()
    assert "8642" not in text and "97531" not in text and text.count("scrypt$") == 2

    listed = users("list", str(path))
    assert listed.returncode == 0
    assert listed.stdout.splitlines() == ["id     role", "alice  operator", "bob    physicist",
                                          "2 user(s)"]
    assert "scrypt" not in listed.stdout

    ok = users("check", str(path), "--id", "alice", "--pin-stdin", pin="8642")
    assert (ok.returncode, ok.stdout.strip()) == (0, "alice: OK (operator)")
    wrong = users("check", str(path), "--id", "alice", "--pin-stdin", pin="8643")
    assert wrong.returncode == 1 and "REFUSED: unknown operator or wrong PIN" in wrong.stdout
    role = users("check", str(path), "--id", "alice", "--role", "physicist", "--pin-stdin",
                 pin="8642")
    assert role.returncode == 1 and "not the role" in role.stdout
    stranger = users("check", str(path), "--id", "mallory", "--pin-stdin", pin="8642")
    assert stranger.returncode == 1

    # Replacing a user changes role and PIN; the old PIN stops working.
    updated = users("add", str(path), "--id", "alice", "--role", "viewer", "--pin-stdin",
                    pin="1357")
    assert updated.returncode == 0 and "updated alice (viewer)" in updated.stdout
    loaded = load_users(path)
    assert loaded.authenticate("alice", "viewer", "1357") == ""
    assert loaded.authenticate("alice", "viewer", "8642") != ""


def test_refusals(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    short = users("add", str(path), "--id", "alice", "--role", "operator", "--pin-stdin",
                  pin="12")
    assert short.returncode == 2 and "at least 4" in short.stderr and not path.exists()
    bad_id = users("add", str(path), "--id", "a/b", "--role", "operator", "--pin-stdin",
                   pin="1234")
    assert bad_id.returncode == 2 and "user id" in bad_id.stderr
    bad_role = users("add", str(path), "--id", "alice", "--role", "admin", "--pin-stdin",
                     pin="1234")
    assert bad_role.returncode == 2 and "invalid choice" in bad_role.stderr
    missing = users("list", str(tmp_path / "none.yaml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    plain = tmp_path / "plain.yaml"
    plain.write_text("users:\n  - {id: alice, role: operator, pin: '1234'}\n")
    refused = users("check", str(plain), "--id", "alice", "--pin-stdin", pin="1234")
    assert refused.returncode == 2 and "not a scrypt hash" in refused.stderr
    assert "Traceback" not in short.stderr + bad_id.stderr + missing.stderr + refused.stderr


def test_the_simulated_rooms_file_lists_its_demo_accounts() -> None:
    listed = users("list", "configs/users-sim.yaml")
    assert listed.returncode == 0
    assert listed.stdout.splitlines()[1:] == [
        "engineer1   engineer", "operator1   operator", "physicist1  physicist",
        "viewer1     viewer", "4 user(s)"]
    check = users("check", "configs/users-sim.yaml", "--id", "operator1", "--pin-stdin",
                  pin="1111")
    assert check.returncode == 0
