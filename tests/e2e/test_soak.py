"""A short treatment day through one `syncctl run` session (bench/soak.py; the long day is a
documented separate run): fractions back to back with a fault in each, and the controller
process must not leak file descriptors, threads or memory, and must end safe."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import soak  # noqa: E402


def test_a_short_day_with_faults_leaks_nothing(tmp_path: Path) -> None:
    result = soak.soak(fractions=4, fault_probability=1.0, seed=3, workdir=tmp_path)
    assert sum(result["outcomes"].values()) == 4
    assert sum(result["faults"].values()) >= 3
    for sample in result["samples"]:
        if sample["outcome"] == "FAULT":
            assert "IL-0" in sample["trip"], sample
    growth = result["growth"]
    # One reconnect in flight can hold a socket for a moment; a leak grows every fraction.
    assert abs(growth["fds_first_to_last"]) <= 2, result["samples"]
    assert growth["threads_first_to_last"] <= 0, result["samples"]
    assert growth["rss_mb_first_to_last"] < 10, result["samples"]
    assert result["safe_state_confirmed_at_end"] is True
