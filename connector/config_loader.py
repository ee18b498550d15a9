"""Reading a YAML config file: `${VAR}` interpolation, line numbers for every key, clear errors.

Errors name the key path (`source.slot.name`) and the line in the file, never a secret's value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.errors import ConfigError

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

Path_ = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class LoadedDocument:
    """The interpolated YAML data plus the line of every key path (1-based)."""

    data: Any
    lines: Mapping[Path_, int]
    source: str

    def line_of(self, path: Path_) -> int | None:
        """The line of the deepest known prefix of `path` (pydantic may point inside a value)."""
        for cut in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:cut]))
            if line is not None:
                return line
        return None


def format_path(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def interpolate(text: str, env: Mapping[str, str], where: str) -> str:
    """Replace `${VAR}` / `${VAR:-default}`; `$$` is a literal `$`. A missing variable is an error."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise ConfigError(
                    f"{where}: environment variable {name} is not set",
                    hint=f"export {name}=... or write ${{{name}:-default}}",
                )
            return default
        return value

    return _VAR.sub(substitute, text)


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (YAML silently keeps the last one)."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(
                f"line {key_node.start_mark.line + 1}: duplicate key {key!r} "
                f"(first at line {seen[key]})"
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _walk(node: yaml.Node, path: Path_, lines: dict[Path_, int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*path, str(key_node.value))
            lines[child] = key_node.start_mark.line + 1
            _walk(value_node, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), lines)


def _interpolate_tree(value: Any, env: Mapping[str, str], path: Path_, lines: Mapping[Path_, int]) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate_tree(v, env, (*path, str(k)), lines) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate_tree(v, env, (*path, i), lines) for i, v in enumerate(value)]
    if isinstance(value, str) and "$" in value:
        where = f"{format_path(path)} (line {lines.get(path, '?')})"
        text = interpolate(value, env, where)
        # A value that was entirely one variable takes the YAML type of what it expands to
        # (`port: ${PORT}` is an int), so configs can interpolate numbers and booleans.
        if _VAR.fullmatch(value.strip()) and text != "":
            try:
                parsed = yaml.safe_load(text)
            except yaml.YAMLError:
                return text
            if isinstance(parsed, (int, float, bool)) and not isinstance(parsed, str):
                return parsed
        return text
    return value


def load_yaml(text: str, *, source: str = "<config>", env: Mapping[str, str] | None = None) -> LoadedDocument:
    """Parse YAML text, record key lines, and interpolate environment variables in values."""
    environment = os.environ if env is None else env
    try:
        root = yaml.compose(text, Loader=_LineLoader)
        data = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - _LineLoader derives from SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError(f"{source}: {line}not valid YAML: {exc.problem}") from None
    lines: dict[Path_, int] = {}
    if root is not None:
        _walk(root, (), lines)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections (name, source, sink, ...)")
    return LoadedDocument(_interpolate_tree(data, environment, (), lines), lines, source)


def read_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=value` lines (as `cdc dev up` writes them); blank lines and `#` comments are skipped."""
    values: dict[str, str] = {}
    for number, raw in enumerate(read_file(path).splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path}:{number}: expected KEY=value")
        values[key.strip()] = value.strip().strip("'\"")
    return values


def environment_with(env_file: Path | None) -> dict[str, str]:
    """The process environment over the values of `env_file` (the environment wins)."""
    merged = read_env_file(env_file) if env_file is not None else {}
    merged.update(os.environ)
    return merged
