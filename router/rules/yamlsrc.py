"""YAML loading that remembers line numbers, refuses duplicate keys, and reports ``file:line``."""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode


class LineDict(dict[str, Any]):
    """A mapping from YAML that knows its own line and the line of each key (1-based)."""

    line: int = 0
    key_lines: dict[str, int]


class LineList(list[Any]):
    line: int = 0
    item_lines: list[int]


class YamlProblem(Exception):
    def __init__(self, line: int, message: str) -> None:
        self.line, self.message = line, message
        super().__init__(f"{line}: {message}")


def _convert(node: Node, loader: yaml.SafeLoader) -> Any:
    if isinstance(node, MappingNode):
        out = LineDict()
        out.line = node.start_mark.line + 1
        out.key_lines = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                key = str(key)
            if key in out:
                raise YamlProblem(key_node.start_mark.line + 1, f"duplicate key {key!r}")
            out[key] = _convert(value_node, loader)
            out.key_lines[key] = key_node.start_mark.line + 1
        return out
    if isinstance(node, SequenceNode):
        seq = LineList(_convert(n, loader) for n in node.value)
        seq.line = node.start_mark.line + 1
        seq.item_lines = [n.start_mark.line + 1 for n in node.value]
        return seq
    if isinstance(node, ScalarNode):
        # Keep timestamps and such as text; the models parse them with clear errors.
        if node.tag == "tag:yaml.org,2002:timestamp":
            return node.value
        return loader.construct_object(node, deep=True)
    return loader.construct_object(node, deep=True)


def load_yaml(text: str) -> Any:
    """Parse one YAML document; raises :class:`YamlProblem` with a 1-based line."""
    try:
        loader = yaml.SafeLoader(text)  # its reader checks the whole text for control characters here
    except yaml.reader.ReaderError as exc:
        raise _reader_problem(text, exc) from exc
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        return _convert(node, loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlProblem(line, f"YAML error: {exc.problem or exc.context}") from exc
    except yaml.YAMLError as exc:
        raise YamlProblem(1, f"YAML error: {exc}") from exc
    except RecursionError as exc:
        raise YamlProblem(1, "YAML error: nested too deeply") from exc
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise YamlProblem(1, f"YAML error: a value that cannot be read ({str(exc)[:120]})") from exc
    finally:
        loader.dispose()


def _reader_problem(text: str, exc: yaml.reader.ReaderError) -> YamlProblem:
    """A character YAML does not allow (a control character, NUL): its line and code point."""
    pos = exc.position if isinstance(exc.position, int) else 0
    line = text.count("\n", 0, pos) + 1
    char = exc.character
    code = f"U+{char:04X}" if isinstance(char, int) else (f"U+{ord(char):04X}" if isinstance(char, str) and
                                                           len(char) == 1 else "a character")
    return YamlProblem(line, f"YAML error: {code} is not allowed in a YAML file (a control character?)")


def line_of(data: Any, loc: tuple[Any, ...]) -> int:
    """Best line for a pydantic error location inside loaded YAML."""
    line = getattr(data, "line", 1) or 1
    cur = data
    for part in loc:
        if isinstance(cur, LineDict) and isinstance(part, str) and part in cur:
            line = cur.key_lines.get(part, line)
            cur = cur[part]
        elif isinstance(cur, LineList) and isinstance(part, int) and 0 <= part < len(cur):
            line = cur.item_lines[part]
            cur = cur[part]
        else:
            break
        line = getattr(cur, "line", line) or line
    return line
