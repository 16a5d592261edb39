"""A derandomized run of the stateful machine is the same whatever ran before it.

Two things must hold for the main stateful test to mean the same in every selection and order
of tests (docs/safety-invariants.md, "Reproducible runs"):

- *the same examples*: Hypothesis generates the same fractions. It did not: about one draw
  in 20 may take a literal from the source of any loaded local module, so every test that
  imported more of syncctl changed the examples of the tests after it. tests/conftest.py pins
  that pool empty in derandomized runs (``pin_local_constants``);
- *the same verdicts*: the same inputs give byte-for-byte the same outputs, core state and
  oracle view (facts and post-command view), whatever the heap and the hash seed. A pure core
  and an oracle without identity-keyed caches (b6e2d0b) or set-ordered outputs guarantee it.

Each run of the machine is fingerprinted: a digest of its inputs (parameters, world, every
snapshot, command and time) and one of its outputs. The checks compare two runs in one process
with a new local module loaded and the heap churned in between, and one in a fresh process
with another hash seed.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from syncctl.core import NOT_READ, BeamGateReading, Command, CoreState, Outputs, Snapshot
from tests.conftest import LOCAL_CONSTANTS_PINNED
from tests.property.strategies import Perturbation, TimeStep
from tests.property.test_stateful import CoreMachine

pytestmark = pytest.mark.skipif(
    not LOCAL_CONSTANTS_PINNED,
    reason="randomized profile: Hypothesis draws local constants there, as by default")

FINGERPRINT_SETTINGS = settings(
    max_examples=10, stateful_step_count=30, derandomize=True, database=None, deadline=None)
"""Small (about a dozen runs of 30 rules), yet enough for local constants to be drawn."""

Fingerprint = list[tuple[str, str]]
"""Per run: (digest of the inputs, digest of the outputs)."""


def _bytes(obj: object) -> bytes:
    """The repr, which depends neither on identities nor on the hash seed for what is fed
    here: dataclasses, enums, numbers, strings, tuples and dicts (insertion-ordered). The only
    sets, the core state's, are sorted first (their repr follows the hash seed)."""
    return repr(obj).encode()


def _state(state: CoreState) -> CoreState:
    """The core state without its (unchanging) parameters, its sets in a fixed order."""
    return dataclasses.replace(
        state, params=None, latched=tuple(sorted(state.latched)),  # type: ignore[arg-type]
        acknowledged=tuple(sorted(state.acknowledged)))  # type: ignore[arg-type]


class Recorded(CoreMachine):
    """The stateful machine, fingerprinting each run (the tally is not kept)."""

    runs: ClassVar[Fingerprint] = []

    def __init__(self) -> None:
        super().__init__()
        self._inputs = hashlib.sha256()
        self._outputs = hashlib.sha256()
        self._described = False

    def _describe(self) -> None:
        if not self._described and hasattr(self, "params"):
            self._inputs.update(_bytes((self.params, self.world.config)))
            self._described = True

    def _step(self, ts: TimeStep, command: Command | None, p: Perturbation | None) -> None:
        self._describe()
        hist = self.hist
        commit = hist.commit

        def recording_commit(snapshot: Snapshot, command: Command | None, now: float,
                             new: CoreState, out: Outputs) -> None:
            self._inputs.update(_bytes((snapshot, command, now)))
            self._outputs.update(_bytes(
                (out, _state(new), hist.facts(snapshot, now), hist.post(snapshot, out))))
            commit(snapshot, command, now, new, out)

        hist.commit = recording_commit  # type: ignore[method-assign]
        try:
            super()._step(ts, command, p)
        finally:
            del hist.commit

    def teardown(self) -> None:
        self._describe()
        type(self).runs.append((self._inputs.hexdigest()[:16], self._outputs.hexdigest()[:16]))


def fingerprints() -> Fingerprint:
    """Fingerprints of one derandomized run of the machine (about 25 fractions)."""
    machine = type("Fractions", (Recorded,), {"runs": []})
    run_state_machine_as_test(machine, settings=FINGERPRINT_SETTINGS)
    return list(machine.runs)


LOCAL_MODULE_SOURCE = (
    '"""Loaded by test_reproducible: local code with literals, as a test\'s import brings."""\n'
    f"LIMITS = {tuple(round(-2.0 + k * 0.0173, 4) for k in range(600))!r}\n"
    f"TIMES = {tuple(round(0.001 + k * 0.0031, 4) for k in range(300))!r}\n"
    "NAMES = ('lung-02', 'LIVER', 'op2', 'phys', 'plan-9')\n"
)


@contextmanager
def local_module_loaded(directory: Path) -> Iterator[None]:
    """A new local module in sys.modules for the duration (removed afterwards)."""
    path = directory / "reproducible_probe_literals.py"
    path.write_text(LOCAL_MODULE_SOURCE)
    name = "reproducible_probe_literals"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield
    finally:
        del sys.modules[name]


def churned_heap() -> list[Snapshot]:
    """Free many snapshots and keep some: later objects get other (and reused) addresses."""
    junk = [dataclasses.replace(NOT_READ, beam_gate=BeamGateReading(None, float(i), False))
            for i in range(30_000)]
    del junk[::3]
    gc.collect()
    return junk


def explain(first: Fingerprint, second: Fingerprint, what: str) -> str:
    """Why two fingerprints differ: other examples (Hypothesis), or other verdicts (a defect
    in the core or the oracle)."""
    inputs = dict(first)
    same_inputs = [(i, o) for i, o in second if i in inputs]
    verdicts = [i for i, o in same_inputs if inputs[i] != o]
    if verdicts:
        return (f"{what}: {len(verdicts)} run(s) with the same inputs gave other outputs, state"
                f" or oracle facts ({verdicts[:3]}): the core or the oracle depends on process"
                " history")
    index = next((k for k, (a, b) in enumerate(zip(first, second, strict=False)) if a != b),
                 min(len(first), len(second)))
    return (f"{what}: Hypothesis generated other examples from run {index} on ({len(first)} vs"
            f" {len(second)} runs, {len(same_inputs)} with the same inputs): are local"
            " constants pinned (tests/conftest.py, pin_local_constants)?")


@pytest.fixture(scope="module")
def reference() -> Fingerprint:
    return fingerprints()


def test_a_run_is_the_same_after_new_local_code_and_another_heap(
    reference: Fingerprint, tmp_path: Path
) -> None:
    """The same examples and byte-for-byte the same outputs, before and after another local
    module was imported and the heap was churned (in one process)."""
    first = reference
    keep = churned_heap()
    with local_module_loaded(tmp_path):
        second = fingerprints()
    del keep
    assert len(first) >= 10, first
    assert second == first, explain(first, second, "after a new local module and heap churn")


def test_a_run_is_the_same_in_a_fresh_process_with_another_hash_seed(
    reference: Fingerprint,
) -> None:
    """The same fingerprints in a process of its own whose str hashes differ: no output may
    follow the iteration order of a set, nor anything else that changes with the hash seed."""
    here = reference
    root = Path(__file__).resolve().parents[2]
    seed = "4242" if os.environ.get("PYTHONHASHSEED") != "4242" else "17"
    result = subprocess.run(
        [sys.executable, "-c",
         "import json, tests.conftest; from tests.property.test_reproducible import"
         " fingerprints; print(json.dumps(fingerprints()))"],
        capture_output=True, text=True, timeout=600, check=False, cwd=root,
        env={**os.environ, "PYTHONHASHSEED": seed})
    assert result.returncode == 0, result.stderr[-3000:]
    there = [tuple(run) for run in json.loads(result.stdout.strip().splitlines()[-1])]
    assert there == here, explain(here, there, f"in a fresh process, PYTHONHASHSEED={seed}")
