"""DESIGN.md section 2: imports only go down the layers.

Static: every module's own import statements are read from its source (AST), so a forbidden
import fails here even if nothing executes it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "syncctl"

# What the pure core may import: the standard library's pure parts, transitions (used as a
# table only), and itself.
CORE_ALLOWED = {
    "__future__", "dataclasses", "enum", "math", "typing", "collections", "collections.abc",
    "functools", "itertools", "transitions",
}
LAYERS = {
    "core": 1,
    "config": 2,
    "devices": 3,
    "controller": 4,
    "bus": 5,
    "audit": 5,
    "recording": 5,
    "console": 6,
    "safety": 6,
    "commission": 6,
    "cli": 6,
    "scripted": 6,
    "analysis": 6,
    "service": 6,
}


def imports_of(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}:{node.lineno}: use absolute imports")
            found.append((node.module or "", node.lineno))
    return found


def modules_under(package: str) -> list[Path]:
    base = SRC / package
    return sorted(base.rglob("*.py")) if base.is_dir() else [SRC / f"{package}.py"]


def _layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "syncctl" or len(parts) < 2:
        return None
    return LAYERS.get(parts[1])


@pytest.mark.parametrize("path", modules_under("core"), ids=lambda p: p.name)
def test_core_imports_only_pure_modules(path: Path) -> None:
    for module, line in imports_of(path):
        if module.startswith("syncctl.core"):
            continue
        top = module.split(".")[0]
        assert module in CORE_ALLOWED or top in CORE_ALLOWED, (
            f"{path.relative_to(ROOT)}:{line} imports {module!r}: the core must stay pure "
            "(no I/O, asyncio, clocks, or other syncctl layers)"
        )


def _package_files() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py"))


@pytest.mark.parametrize("path", _package_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_only_go_down(path: Path) -> None:
    rel = path.relative_to(SRC)
    own = rel.parts[0].removesuffix(".py")
    own_layer = LAYERS.get(own)
    for module, line in imports_of(path):
        assert not module.startswith(("tests", "firmware_sim")), (
            f"{rel}:{line}: runtime code must not import {module}"
        )
        target = _layer_of(module)
        if own_layer is None or target is None:
            continue
        assert target <= own_layer, f"{rel}:{line}: layer {own} must not import {module}"
        if target == own_layer and own_layer < 6:
            assert module.split(".")[1] == own, f"{rel}:{line}: {own} imports sibling {module}"


def test_firmware_sim_uses_only_config() -> None:
    sim = ROOT / "firmware_sim"
    for path in sorted(sim.rglob("*.py")):
        for module, line in imports_of(path):
            if module.startswith("syncctl"):
                assert module.startswith("syncctl.config"), (
                    f"{path.relative_to(ROOT)}:{line}: simulators may use syncctl.config only"
                )


def test_every_syncctl_package_has_a_layer() -> None:
    for entry in SRC.iterdir():
        name = entry.name.removesuffix(".py")
        if name.startswith("_") or name in ("py.typed",):
            continue
        assert name in LAYERS, f"syncctl.{name} has no layer in this test (DESIGN.md section 2)"
