"""YAML loading that remembers where each field was written.

The file is parsed once into a node graph (``yaml.SafeLoader``: no arbitrary tags); the line of
every key and list item is indexed from the node marks (1-based), then the data is built from
the same nodes. Before the data is built, the graph is checked for what YAML allows but a
configuration must not contain:

- a key written twice in one mapping (YAML keeps the last one silently: a commissioning
  engineer who adds a second ``hysteresis_mm`` further down would never know which one won);
- a key that is not text (``1:``, ``yes:``, ``null:``, a list as a key);
- an anchor used inside itself (a recursive structure) or aliases that expand to an absurd
  number of nodes (a "billion laughs" file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.reader import ReaderError

from syncctl.config.errors import ConfigError, ConfigIssue

PathKey = tuple[str | int, ...]

MAX_NODES = 100_000
"""More nodes than this (aliases counted each time they are used) is refused. A room file has
a few hundred."""

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_TAG_NAMES = {
    "tag:yaml.org,2002:int": "a number",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "a date",
}


def dotted(path: PathKey) -> str:
    """``("plans", 1, "id")`` -> ``plans[1].id``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


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
        return ConfigIssue(file=self.file, path=dotted(path), line=self.line_of(path),
                           message=message)


class _Indexer:
    """Walks the node graph once: line index plus the structural checks above."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.lines: dict[PathKey, int] = {}
        self.issues: list[ConfigIssue] = []
        self.count = 0
        self._open: set[int] = set()

    def _issue(self, path: PathKey, line: int, message: str) -> None:
        self.issues.append(ConfigIssue(file=self.file, path=dotted(path), line=line,
                                       message=message))

    def walk(self, node: yaml.Node, path: PathKey) -> None:
        self.count += 1
        if self.count > MAX_NODES:
            raise ConfigError([ConfigIssue(
                file=self.file, path=dotted(path), line=node.start_mark.line + 1,
                message=f"the document expands to more than {MAX_NODES} values "
                        "(aliases included): refused")])
        if id(node) in self._open:
            self._issue(path, node.start_mark.line + 1,
                        "an anchor is used inside itself (recursive alias): not allowed")
            return
        self.lines.setdefault(path, node.start_mark.line + 1)
        if not isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            return
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                self._mapping(node, path)
            else:
                for i, item in enumerate(node.value):
                    child = (*path, i)
                    self.lines[child] = item.start_mark.line + 1
                    self.walk(item, child)
        finally:
            self._open.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: PathKey) -> None:
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _MERGE_TAG:
                self.walk(value_node, path)  # "<<: *defaults": merged keys belong here
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self._issue(path, line, "a key must be text; found a list or mapping as a key")
                continue
            key = str(key_node.value)
            child = (*path, key)
            if key_node.tag != _STR_TAG:
                kind = _TAG_NAMES.get(key_node.tag, key_node.tag)
                self._issue(child, line, f"key {key!r} is read as {kind}, not text: "
                                         f"quote it ('{key}') or rename it")
            if key in first_line:
                self._issue(child, line, f"duplicate key {key!r} (first written at line "
                                         f"{first_line[key]}); YAML would silently keep only "
                                         "the last value: write each key once")
                continue
            first_line[key] = line
            self.lines[child] = line
            self.walk(value_node, child)


def load_yaml(file: Path) -> YamlSource:
    """Parse ``file``. A missing or unreadable file, a syntax error, a duplicate or non-text
    key and a recursive alias are each a ConfigError naming the file (and line when known)."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigIssue(file, "", None, "file not found")]) from None
    except IsADirectoryError:
        raise ConfigError([ConfigIssue(file, "", None, "is a directory, not a file")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigIssue(
            file, "", None, f"not UTF-8 text (byte {exc.start}): is this a YAML file?")]) from None
    except OSError as exc:
        raise ConfigError([ConfigIssue(
            file, "", None, f"cannot read: {exc.strerror or exc}")]) from None

    try:
        loader = yaml.SafeLoader(text)
    except ReaderError as exc:  # a control character YAML forbids, found before parsing
        position = exc.position if isinstance(exc.position, int) else 0
        at_line = text.count("\n", 0, position) + 1
        first = str(exc).splitlines()[0]
        raise ConfigError([ConfigIssue(file, "", at_line,
                                       f"YAML syntax error: {first}")]) from None
    try:
        node = loader.get_single_node()
        indexer = _Indexer(file)
        if node is not None:
            indexer.walk(node, ())
        if indexer.issues:
            raise ConfigError(indexer.issues)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = exc.problem or exc.context or "cannot parse"
        raise ConfigError([ConfigIssue(file, "", line, f"YAML syntax error: {what}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(file, "", None, f"YAML error: {exc}")]) from None
    except RecursionError:
        raise ConfigError([ConfigIssue(
            file, "", None, "YAML nested too deeply to be a configuration")]) from None
    finally:
        loader.dispose()

    source = YamlSource(file, data, indexer.lines)
    if not isinstance(data, dict):
        found = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ConfigError([source.issue(
            (), f"expected a mapping of fields (key: value) at the top level; found {found}")])
    return source
