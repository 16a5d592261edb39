"""YAML loading that remembers where each field was written."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from syncctl.config.errors import ConfigError, ConfigIssue

PathKey = tuple[str | int, ...]


@dataclass
class YamlSource:
    file: Path
    data: Any
    lines: dict[PathKey, int] = field(default_factory=dict)

    def line_of(self, path: PathKey) -> int | None:
        """The line of the deepest part of ``path`` that exists in the file."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None

    def issue(self, path: PathKey, message: str) -> ConfigIssue:
        dotted = ".".join(f"[{p}]" if isinstance(p, int) else p for p in path).replace(".[", "[")
        return ConfigIssue(self.file, dotted, message, self.line_of(path))


def _index(node: yaml.Node, path: PathKey, lines: dict[PathKey, int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            child = (*path, key)
            lines[child] = key_node.start_mark.line + 1
            _index(value_node, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = (*path, i)
            lines[child] = item.start_mark.line + 1
            _index(item, child, lines)


def load_yaml(file: Path) -> YamlSource:
    """Parse ``file``; a missing file or a syntax error is a ConfigError naming file and line."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigIssue(file, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue(file, "", f"cannot read: {exc}")]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(
            [ConfigIssue(file, "", f"YAML syntax error: {exc.problem}", line)]
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(file, "", f"YAML error: {exc}")]) from None
    source = YamlSource(file, data)
    if node is not None:
        _index(node, (), source.lines)
    if not isinstance(data, dict):
        raise ConfigError([source.issue((), "expected a mapping of fields at the top level")])
    return source
