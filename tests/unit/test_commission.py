"""The pure parts of `syncctl commission`: step verdicts, register range checks, the watchdog
rule, percentile summaries, the frame analysis, prompts over a text stream, the report."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from syncctl.commission.checks import (
    FLAG,
    FrameSample,
    Rule,
    Status,
    StepResult,
    analyse_frames,
    check_register,
    documented_fault_bits,
    documented_raw_range,
    expected_value,
    latency_check,
    nearest_rank,
    register_rules,
    run_passed,
    step_status,
    summarize,
    trial_value,
    watchdog_fault_bit,
    watchdog_tolerance_ms,
    watchdog_verdict,
)
from syncctl.commission.prompts import LineSource, Prompter
from syncctl.commission.report import build_report, report_stem, write_report
from syncctl.config import RegisterDef, encode, load_room

ROOT = Path(__file__).resolve().parents[2]
CONFIG = load_room(ROOT / "configs" / "room-sim.yaml")
BG = CONFIG.beam_gate_map.registers
XI = CONFIG.imaging_map.registers


# --- verdicts -------------------------------------------------------------------------------


def test_step_status_rules() -> None:
    P, F, R = Status.PASSED, Status.FAILED, Status.RECORDED
    assert step_status([P, R], None) is P
    assert step_status([R, R], None) is R
    assert step_status([P, F, R], None) is F
    assert step_status([], None) is F  # nothing shown is not a pass
    assert step_status([F], "bench has no door switch") is Status.SKIPPED
    assert step_status([], "   ") is F  # a skip needs a reason


def test_run_passes_only_without_failed_steps() -> None:
    ok = StepResult("a", "A")
    ok.add("x", Status.PASSED, 1)
    skipped = StepResult("b", "B", skip_reason="not selected (--steps)")
    recorded = StepResult("c", "C")
    recorded.add("firmware", Status.RECORDED, 102)
    assert run_passed([ok, skipped, recorded])
    bad = StepResult("d", "D")
    bad.fail("y", "broken")
    assert not run_passed([ok, bad])
    assert not run_passed([])


# --- summaries ------------------------------------------------------------------------------


def test_summarize_uses_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    s = summarize(values)
    assert (s["count"], s["min"], s["p50"], s["p95"], s["p99"], s["max"]) == (
        100, 1.0, 50.0, 95.0, 99.0, 100.0)
    assert s["mean"] == 50.5
    assert nearest_rank([3.0, 7.0], 0.5) == 3.0
    assert nearest_rank([3.0, 7.0], 0.51) == 7.0
    single = summarize([4.25])
    assert single["p99"] == 4.25 and single["stdev"] == 0.0
    assert summarize([])["count"] == 0 and summarize([])["p50"] is None


# --- the watchdog rule ----------------------------------------------------------------------


@pytest.mark.parametrize(("configured", "tolerance"), [(200, 40), (100, 30), (1000, 200),
                                                       (150, 30)])
def test_watchdog_tolerance_is_20_percent_or_30_ms(configured: float, tolerance: float) -> None:
    assert watchdog_tolerance_ms(configured) == pytest.approx(tolerance)


@pytest.mark.parametrize(("measured", "status", "word"), [
    (200.0, Status.PASSED, ""), (239.9, Status.PASSED, ""), (160.5, Status.PASSED, ""),
    (240.1, Status.FAILED, "late"), (399.6, Status.FAILED, "late"),
    (159.0, Status.FAILED, "early"), (None, Status.FAILED, "did not fail safe"),
])
def test_watchdog_verdict(measured: float | None, status: Status, word: str) -> None:
    got, detail = watchdog_verdict(measured, 200)
    assert got is status
    assert word in detail


def test_watchdog_verdict_small_timeout_uses_30_ms() -> None:
    assert watchdog_verdict(129.0, 100)[0] is Status.PASSED
    assert watchdog_verdict(131.0, 100)[0] is Status.FAILED


# --- what the maps document -----------------------------------------------------------------


def test_expected_identity_comes_from_the_description() -> None:
    assert expected_value(BG["identity"]) == 0x4247
    assert expected_value(XI["identity"]) == 0x5849
    assert expected_value(BG["firmware_version"]) is None  # "major*100 + minor": recorded
    stated = RegisterDef(address=1, table="input", type="uint16",
                         description="major*100 + minor; expected: 103")
    assert expected_value(stated) == 103


def test_documented_ranges_and_fault_bits() -> None:
    assert documented_raw_range(XI["tracking_confidence"]) == (0, 1000)
    assert documented_raw_range(BG["fault_code"]) is None
    assert documented_fault_bits(BG["fault_code"]) == {1: "watchdog", 2: "e-stop",
                                                       8: "gate feedback"}
    assert documented_fault_bits(XI["fault_code"]) == {1: "watchdog", 2: "tube"}
    assert watchdog_fault_bit(BG["fault_code"]) == 1
    other = RegisterDef(address=6, table="input", type="uint16",
                        description="bits: 4 overheat, 16 watchdog timer; 0 = none")
    assert watchdog_fault_bit(other) == 16


# --- register checks ------------------------------------------------------------------------

RULES = register_rules(CONFIG)


def check(regs: dict[str, RegisterDef], name: str, words: list[int], kind: str = "beam-gate"
          ) -> Status:
    return check_register(name, regs[name], words, "big", RULES[kind].get(name)).status


def test_register_checks_pass_good_values() -> None:
    assert check(BG, "status", [0b11111]) is Status.PASSED
    assert check(BG, "gate_readback", [1]) is Status.PASSED
    assert check(BG, "fault_code", [0b1011]) is Status.PASSED
    assert check(BG, "watchdog_timeout_ms", [200]) is Status.PASSED
    assert check(XI, "tracking_confidence", [950], "xray-imaging") is Status.PASSED
    assert check(XI, "ma", [500], "xray-imaging") is Status.PASSED  # 50.0 mA, scale 0.1
    minus_5mm = encode(XI["target_x"], -5.0, "big")
    assert check(XI, "target_x", minus_5mm, "xray-imaging") is Status.PASSED


def test_register_checks_fail_bad_values() -> None:
    assert check(BG, "status", [1 << 9]) is Status.FAILED  # a bit the map does not name
    assert check(BG, "gate_readback", [2]) is Status.FAILED  # a flag holding 2
    assert check(BG, "fault_code", [4]) is Status.FAILED  # an undocumented code bit
    assert check(BG, "watchdog_timeout_ms", [300]) is Status.FAILED  # not the configured
    assert check(XI, "tracking_confidence", [1001], "xray-imaging") is Status.FAILED
    assert check(XI, "kv", [91], "xray-imaging") is Status.FAILED
    far = encode(XI["target_z"], 1500.0, "big")
    assert check(XI, "target_z", far, "xray-imaging") is Status.FAILED
    assert check(BG, "dose_delivered", [1]) is Status.FAILED  # one word for a uint32


def test_register_without_a_documented_range_is_recorded() -> None:
    result = check_register("heartbeat", BG["heartbeat"], [7], "big", None)
    assert result.status is Status.RECORDED
    assert "type checked only" in result.detail
    flag = RegisterDef(address=0, table="coil", type="bool")
    assert check_register("coil", flag, [1], "big", None).status is Status.PASSED
    assert check_register("coil", flag, [3], "big", FLAG).status is Status.FAILED


def test_rule_tolerance_is_half_a_register_step() -> None:
    rule = Rule(50.0, 50.0, "configured")
    ma = XI["ma"]  # scale 0.1
    assert check_register("ma", ma, [500], "big", rule).status is Status.PASSED
    assert check_register("ma", ma, [501], "big", rule).status is Status.FAILED


def test_trial_values_stay_in_range() -> None:
    assert trial_value("frame_rate_fps", 30, 1) == 29
    assert trial_value("kv", 90, 1) == 91
    assert trial_value("kv", 150, 1) == 149
    assert trial_value("ma", 50, 0.1) == pytest.approx(50.1)
    assert trial_value("watchdog_timeout_ms", 200, 1) == 201


# --- frames ---------------------------------------------------------------------------------


def frames(n: int, *, fps: float = 30.0, poll_ms: float = 4.0, start_counter: int = 10,
           delay_ms: int = 0, clock0: int = 1000
           ) -> list[FrameSample]:
    """Reads every poll_ms of a device taking frames at fps (device clock in ms)."""
    samples = []
    period = 1000 / fps
    t = 0.0
    while t < n * period:
        device_ms = clock0 + int(t)
        k = int(max(0.0, t - delay_ms) // period)
        stamp = clock0 + int(k * period)
        counter = (start_counter + k) % (1 << 32)
        mas = 0.2 * k
        samples.append(FrameSample(t / 1000, counter, stamp % (1 << 32), device_ms % (1 << 32),
                                   mas))
        t += poll_ms
    return samples


def test_frames_at_the_configured_rate_pass() -> None:
    figures, checks = analyse_frames(frames(90), 30, 50, 4, 70)
    assert {c.name: c.status for c in checks} == {
        "frame rate (device clock)": Status.PASSED, "frames missed by the reads": Status.PASSED,
        "frame age at first read (max)": Status.PASSED, "mAs per frame": Status.PASSED}
    assert figures["missed_frames"] == 0
    assert figures["frame_rate_device_fps"] == pytest.approx(30, abs=0.5)
    assert figures["frame_age_ms"]["max"] <= 4


def test_frames_across_the_counter_and_clock_wrap() -> None:
    figures, checks = analyse_frames(
        frames(60, start_counter=(1 << 32) - 20, clock0=(1 << 32) - 500), 30, 50, 4, 70)
    assert all(c.status is Status.PASSED for c in checks), checks
    assert figures["frames_counted"] > 50


def test_late_frames_and_slow_rates_fail() -> None:
    _, checks = analyse_frames(frames(90, delay_ms=80), 30, 50, 4, 70)
    assert {c.name: c.status for c in checks}["frame age at first read (max)"] is Status.FAILED
    _, checks = analyse_frames(frames(90, fps=25), 30, 50, 4, 70)
    assert {c.name: c.status for c in checks}["frame rate (device clock)"] is Status.FAILED
    figures, checks = analyse_frames(frames(30, poll_ms=50), 30, 50, 4, 70)  # one in a row
    assert figures["missed_frames"] > 0 and figures["missed_in_a_row"] == 1
    assert {c.name: c.status for c in checks}["frames missed by the reads"] is Status.PASSED
    figures, checks = analyse_frames(frames(30, poll_ms=80), 30, 50, 4, 70)  # two in a row
    assert figures["missed_in_a_row"] == 2
    assert {c.name: c.status for c in checks}["frames missed by the reads"] is Status.FAILED


def test_frames_missed_by_the_reads_are_counted() -> None:
    samples = [FrameSample(0.00, 1, 0, 0, 0.0), FrameSample(0.033, 2, 33, 34, 0.2),
               FrameSample(0.066, 3, 66, 67, 0.4), FrameSample(0.133, 5, 133, 134, 0.8),
               FrameSample(0.166, 6, 166, 167, 1.0), FrameSample(0.266, 9, 266, 267, 1.6),
               FrameSample(0.300, 10, 300, 300, 1.8)]
    figures, checks = analyse_frames(samples, 30, 50, 4, 70)
    assert (figures["missed_frames"], figures["missed_in_a_row"]) == (3, 2)
    assert figures["read_gap_max_ms"] == 100.0
    assert {c.name: c.status for c in checks}["frames missed by the reads"] is Status.FAILED
    # At 70 ms one frame may be missed (two periods, 66.7 ms); at 100 ms two.
    _, checks = analyse_frames(samples, 30, 50, 4, 100)
    assert {c.name: c.status for c in checks}["frames missed by the reads"] is Status.PASSED


def test_a_frozen_counter_fails() -> None:
    samples = [FrameSample(i * 0.004, 7, 100, 100 + 4 * i, 1.0) for i in range(100)]
    _, checks = analyse_frames(samples, 30, 50, 4, 70)
    assert [c.status for c in checks] == [Status.FAILED]


def test_latency_check_judges_the_worst() -> None:
    assert latency_check("close", [3.1, 4.2, 19.9], 20, "limit").status is Status.PASSED
    failed = latency_check("close", [3.1, 20.5], 20, "limit")
    assert failed.status is Status.FAILED and failed.measured == 20.5
    assert latency_check("close", [], 20, "limit").status is Status.FAILED


# --- prompts over a text stream ---------------------------------------------------------------


def prompter(text: str, assume_yes: bool = False) -> tuple[Prompter, io.StringIO]:
    out = io.StringIO()
    lines = LineSource(io.StringIO(text))
    return Prompter(out, lines, assume_yes=assume_yes, answer_timeout_s=1.0), out


def test_confirm_yes_no_with_reason_and_no_answer() -> None:
    p, _ = prompter("y\n")
    assert asyncio.run(p.confirm("open the gate?")).kind == "yes"
    p, out = prompter("n\n\nbeam stop not installed\n")
    answer = asyncio.run(p.confirm("open the gate?"))
    assert (answer.kind, answer.reason) == ("skip", "beam stop not installed")
    assert out.getvalue().count("reason for skipping") == 2  # an empty reason is asked again
    p, _ = prompter("")
    assert asyncio.run(p.confirm("open the gate?")).kind == "no_answer"
    p, out = prompter("", assume_yes=True)
    assert asyncio.run(p.confirm("open the gate?")).kind == "yes"
    assert "(--yes)" in out.getvalue()


def test_person_step_done_skip_and_timeout() -> None:
    polls = 0

    async def after_three_polls() -> bool:
        nonlocal polls
        polls += 1
        return polls >= 3

    async def never() -> bool:
        return False

    p, _ = prompter("")
    done = asyncio.run(p.person("Open the door.", after_three_polls, 5.0))
    assert done.kind == "done" and polls == 3
    p, _ = prompter("skip door switch not wired on this bench\n")
    skipped = asyncio.run(p.person("Open the door.", never, 5.0))
    assert (skipped.kind, skipped.reason) == ("skip", "door switch not wired on this bench")
    p, out = prompter("skip\n")
    timed_out = asyncio.run(p.person("Open the door.", never, 0.2))
    assert timed_out.kind == "timeout" and timed_out.elapsed_s >= 0.2
    assert "a reason is required" in out.getvalue()


def test_person_step_rehearsal_acts_itself() -> None:
    acted: list[bool] = []

    async def act() -> None:
        acted.append(True)

    async def watch() -> bool:
        return bool(acted)

    p, out = prompter("skip should not be read\n")
    outcome = asyncio.run(p.person("Press the emergency stop.", watch, 5.0, act))
    assert outcome.kind == "done" and acted == [True]
    assert "type 'skip REASON'" not in out.getvalue()


# --- the report -----------------------------------------------------------------------------


def test_report_json_and_html(tmp_path: Path) -> None:
    ok = StepResult("watchdog", "Device watchdogs", started_utc="2026-01-01T00:00:00Z")
    ok.figures = {"beam_gate": {"measured_ms": 199.8}, "configured_ms": 200.0}
    ok.add("beam-gate watchdog fails safe", Status.PASSED, 199.8, "200 ms +- 40 ms")
    skipped = StepResult("door", "Door <person>", skip_reason="not selected (--steps)")
    meta = {"room_id": "sim-1", "room_name": "Sim", "engineer": "A. Tester & co",
            "started_utc": "2026-01-01T00:00:00Z", "finished_utc": "2026-01-01T00:00:05Z",
            "config_path": "/x/room.yaml", "config_hash": "0123456789abcdef",
            "software_version": "syncctl 0.1.0", "host": "bench", "mode": "hardware",
            "notes": []}
    report = build_report(results=[ok, skipped], meta=meta)
    assert report["result"] == "PASSED"
    assert report["step_counts"] == {"passed": 1, "skipped": 1}
    stem = report_stem("sim-1", "0123456789abcdef", "20260101T000000Z")
    assert "0123456789abcdef" in stem
    json_path, html_path = write_report(report, tmp_path / "r", stem)
    again = json.loads(json_path.read_text())
    assert again["steps"][0]["checks"][0]["measured"] == 199.8
    page = html_path.read_text()
    assert "A. Tester &amp; co" in page and "Door &lt;person&gt;" in page
    assert "measured_ms 199.8" in page
    assert "not selected (--steps)" in page
