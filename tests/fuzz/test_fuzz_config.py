"""Fuzzing configuration loading: arbitrary YAML, and mutations of the shipped room file and
register maps, into ``syncctl.config.load_room``.

Properties, for every input:
- ``load_room`` returns a ``RoomConfig`` or raises ``ConfigError``; nothing else escapes;
- every issue of a ConfigError names a file of the configuration, a line inside that file
  (or none), and a non-empty message, printed as ``file:line: field: message``;
- a load never takes long (a "billion laughs" alias bomb is refused, not expanded);
- a loaded configuration yields ``to_core_params()`` whose every number is finite, and a hash.

Each example writes into one temporary copy of configs/ (room file, users file, register
maps), so the relative register-map paths resolve as they do in the repository.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import currently_in_test_context, event, given
from hypothesis import strategies as st

from syncctl.config import ConfigError, RoomConfig, config_hash, load_room
from tests.fuzz.profiles import fuzz

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
ROOM_FILE = "room-sim.yaml"
MAPS = ("registers/beam-gate.yaml", "registers/xray-imaging.yaml")
LOAD_BOUND_S = 5.0
"""A load takes milliseconds; five seconds on a loaded machine is a hang."""


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """A private copy of configs/ (yaml files only), restored by each example."""
    with tempfile.TemporaryDirectory(prefix="syncctl-fuzz-config-") as tmp:
        root = Path(tmp)
        (root / "registers").mkdir()
        for src in [*CONFIGS.glob("*.yaml"), *(CONFIGS / "registers").glob("*.yaml")]:
            shutil.copyfile(src, root / src.relative_to(CONFIGS))
        yield root


def _restore(root: Path) -> None:
    for rel in (ROOM_FILE, *MAPS):
        shutil.copyfile(CONFIGS / rel, root / rel)


def _numbers(value: Any) -> Iterator[tuple[str, float]]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            for name, number in _numbers(getattr(value, f.name)):
                yield f"{f.name}.{name}" if name else f.name, number
    elif isinstance(value, tuple | list):
        for i, item in enumerate(value):
            for name, number in _numbers(item):
                yield f"[{i}].{name}" if name else f"[{i}]", number
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield "", float(value)


def _event(text: str) -> None:
    if currently_in_test_context():
        event(text)


def check_load(root: Path) -> RoomConfig | ConfigError:
    """Load the room in ``root`` and check every property; returns what load_room gave."""
    room = root / ROOM_FILE
    start = time.monotonic()
    try:
        config = load_room(room)
    except ConfigError as exc:
        took = time.monotonic() - start
        assert took < LOAD_BOUND_S, f"refusing took {took:.1f} s"
        assert exc.issues, "a ConfigError without issues"
        for issue in exc.issues:
            assert issue.message.strip(), f"an issue without a message: {issue!r}"
            assert str(issue).startswith(f"{issue.file}"), str(issue)
            assert issue.file.resolve().is_relative_to(root.resolve()), (
                f"an issue names a file outside the configuration: {issue}")
            if issue.line is not None:
                text = issue.file.read_text(encoding="utf-8", errors="replace")
                assert 1 <= issue.line <= text.count("\n") + 2, str(issue)
                assert str(issue).startswith(f"{issue.file}:{issue.line}:"), str(issue)
        _event(f"refused: {len(exc.issues) if len(exc.issues) < 3 else '3+'} issue(s)")
        return exc
    took = time.monotonic() - start
    assert took < LOAD_BOUND_S, f"loading took {took:.1f} s"
    params = config.to_core_params()
    bad = [(name, v) for name, v in _numbers(params) if not math.isfinite(v)]
    assert not bad, f"non-finite core parameters from a valid config: {bad}"
    assert len(config_hash(config)) == 16
    _event("loaded")
    return config


# -- values and mutations -----------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(("", "0", "1e999", "-1", "nan", ".inf", "registers/beam-gate.yaml",
                     "registers/xray-imaging.yaml", "../room-sim.yaml", "/", ".", "box",
                     "sphere", "modbus-tcp", "modbus-rtu", "rtu-over-tcp", "big", "little",
                     "uint16", "int32", "bitfield", "input", "holding", "rw", "lung-01")),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from _paths(child, (*prefix, i))


@st.composite
def mutated_documents(draw: st.DrawFn, original: Any) -> Any:
    """The parsed document with 1-3 changes: a value replaced, a key deleted, an unknown
    key added, a list item dropped or duplicated, a number nudged to an edge."""
    doc = yaml.safe_load(yaml.safe_dump(original))  # a deep copy
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(doc))
        path = draw(st.sampled_from(paths))
        parent: Any = doc
        for part in path[:-1]:
            parent = parent[part]
        how = draw(st.sampled_from(("replace", "replace", "delete", "add", "edge", "dup")))
        if not path:
            if how == "replace":
                doc = draw(values)
            continue
        key = path[-1]
        if how == "replace":
            parent[key] = draw(values)
        elif how == "delete":
            del parent[key]
        elif how == "add" and isinstance(parent[key], dict):
            parent[key][draw(st.text(max_size=12))] = draw(values)
        elif how == "edge" and isinstance(parent[key], int | float):
            parent[key] = draw(st.sampled_from((0, -1, 0.0, -0.0, 1e-300, 1e300, 2**31,
                                                2**64, math.nan, math.inf, -math.inf)))
        elif how == "dup" and isinstance(parent, list):
            parent.append(yaml.safe_load(yaml.safe_dump(parent[key])))
    return doc


@st.composite
def text_edits(draw: st.DrawFn, original: str) -> str:
    """The file's text with 1-4 byte-level edits: characters inserted, deleted, replaced."""
    text = original
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        how = draw(st.sampled_from(("insert", "delete", "replace")))
        piece = draw(st.one_of(st.text(max_size=6), st.sampled_from(
            (":", "- ", "\n", "  ", "\t", "&a ", "*a", "!!python/object:os.system", "{", "[",
             "'", '"', "#", "<<: ", "? ", "|", "\x00", "\ufeff")))) if how != "delete" else ""
        end = at if how == "insert" else min(len(text), at + draw(st.integers(1, 8)))
        text = text[:at] + piece + text[end:]
    return text


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


# -- the targets -----------------------------------------------------------------------------


@fuzz("config_text", slow=True)
@given(text=st.one_of(
    st.text(max_size=400),
    values.map(_dump),
    st.sampled_from((
        "", "---\n...\n", "a: &a [*a]\n", "a: !!binary AAAA\n", "!!set {a, b}\n",
        "a: &x [1,1,1,1,1,1,1,1,1]\nb: &y [*x,*x,*x,*x,*x,*x,*x,*x,*x]\n"
        "c: &z [*y,*y,*y,*y,*y,*y,*y,*y,*y]\nd: &w [*z,*z,*z,*z,*z,*z,*z,*z,*z]\n"
        "e: [*w,*w,*w,*w,*w,*w,*w,*w,*w]\nf: [*w,*w,*w,*w,*w,*w,*w,*w,*w]\n",
        "room: {id: x}\nroom: {id: y}\n", "1: 2\n", "? [a]\n: b\n", "\ufeffroom: 1\n")),
))
def test_arbitrary_yaml_is_refused_with_file_and_line(workdir: Path, text: str) -> None:
    _restore(workdir)
    (workdir / ROOM_FILE).write_text(text, encoding="utf-8")
    assert isinstance(check_load(workdir), ConfigError)


@fuzz("config_mutation", slow=True)
@given(data=st.data(), textual=st.booleans())
def test_mutated_room_files_load_or_are_refused(workdir: Path, data: st.DataObject,
                                                textual: bool) -> None:
    _restore(workdir)
    original = (CONFIGS / ROOM_FILE).read_text(encoding="utf-8")
    if textual:
        text = data.draw(text_edits(original), label="room text")
    else:
        text = _dump(data.draw(mutated_documents(yaml.safe_load(original)), label="room"))
    (workdir / ROOM_FILE).write_text(text, encoding="utf-8")
    check_load(workdir)


@fuzz("regmap_mutation", slow=True)
@given(data=st.data(), which=st.sampled_from(MAPS), textual=st.booleans())
def test_mutated_register_maps_load_or_are_refused(workdir: Path, data: st.DataObject,
                                                   which: str, textual: bool) -> None:
    _restore(workdir)
    original = (CONFIGS / which).read_text(encoding="utf-8")
    if textual:
        text = data.draw(text_edits(original), label="map text")
    else:
        text = _dump(data.draw(mutated_documents(yaml.safe_load(original)), label="map"))
    (workdir / which).write_text(text, encoding="utf-8")
    result = check_load(workdir)
    if isinstance(result, RoomConfig):
        # A map that still loads must still give every signal the clients need.
        from syncctl.devices import BeamGateClient, ImagingClient

        BeamGateClient(result)
        ImagingClient(result)


def test_the_shipped_room_loads(workdir: Path) -> None:
    """The unmutated copy loads: the targets above start from a valid configuration."""
    _restore(workdir)
    assert isinstance(check_load(workdir), RoomConfig)


@pytest.mark.parametrize("char", ["\x1f", "\x00", "\x7f", "\ufffe"])
def test_finding_c1_a_control_character_is_a_config_error(workdir: Path, char: str) -> None:
    """Found by test_arbitrary_yaml_is_refused_with_file_and_line: PyYAML checks the whole
    text for characters it does not allow before parsing, and its ReaderError escaped
    load_room (a traceback from `syncctl config check`). Now a ConfigError at the line."""
    _restore(workdir)
    (workdir / ROOM_FILE).write_text(f"room:\n  id: sim{char}1\n", encoding="utf-8")
    result = check_load(workdir)
    assert isinstance(result, ConfigError)
    (issue,) = result.issues
    assert issue.line == 2 and "unacceptable character" in issue.message, str(issue)


@pytest.mark.parametrize(("signal", "change", "field"), [
    ("kv", {"scale": 0.001}, "devices.imaging.kv"),
    ("pulse_width_ms", {"scale": 1e-320}, "devices.imaging.pulse_width_ms"),
    ("watchdog_timeout_ms", {"type": "int16", "scale": 0.001},
     "limits.device_watchdog_timeout_ms"),
])
def test_finding_c2_a_setting_that_does_not_fit_its_register_is_a_config_error(
        workdir: Path, signal: str, change: dict[str, Any], field: str) -> None:
    """Found by test_mutated_register_maps_load_or_are_refused (long run): a map whose
    register cannot carry a setting the controller writes at every connection (kv = 90 at
    scale 0.001 is 90000, beyond a uint16) was called valid by load_room, and the device
    client then refused it at start-up with a ValueError (or, for a scale so small that the
    value overflows, an OverflowError) out of `syncctl run`. Now a ConfigError at the setting."""
    _restore(workdir)
    path = workdir / "registers/xray-imaging.yaml"
    regmap = yaml.safe_load(path.read_text(encoding="utf-8"))
    regmap["registers"][signal].update(change)
    path.write_text(_dump(regmap), encoding="utf-8")
    result = check_load(workdir)
    assert isinstance(result, ConfigError)
    assert any(issue.path == field and signal in issue.message for issue in result.issues), (
        str(result))
