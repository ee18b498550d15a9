"""Transforms that choose a record's topic or whether it goes on: route, route_by_field, timestamp_router, filter."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from core.records import Record
from transforms.base import Transform, evolve
from transforms.config import FilterOptions, RouteByFieldOptions, RouteOptions, TimestampRouterOptions
from transforms.envelope import is_envelope
from transforms.exceptions import TransformError
from transforms.expression import compile_condition, compile_name
from transforms.timefmt import TimeFormat, from_micros

_TOPIC_CACHE_LIMIT = 10_000
_NOT_TOPIC_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def python_template(replacement: str) -> str:
    """Kafka Connect's `$1` / `${name}` / `$$` replacement as a `re.Match.expand` template."""
    out = []
    for piece in re.split(r"(\$\$|\$\d+|\$\{[A-Za-z_][A-Za-z0-9_]*\})", replacement):
        if piece == "$$":
            out.append("$")
        elif piece.startswith("${"):
            out.append(f"\\g<{piece[2:-1]}>")
        elif piece.startswith("$") and piece[1:].isdigit():
            out.append(f"\\g<{piece[1:]}>")
        else:
            out.append(piece.replace("\\", "\\\\"))
    return "".join(out)


class Route(Transform):
    """Kafka Connect RegexRouter: topics whose whole name matches `regex` become `replacement`."""

    def __init__(self, options: RouteOptions, label: str) -> None:
        self._regex = re.compile(options.regex)
        self._template = python_template(options.replacement)
        self._topics: dict[str, str] = {}

    def apply(self, record: Record) -> Sequence[Record]:
        topic = self._topics.get(record.topic)
        if topic is None:
            match = self._regex.fullmatch(record.topic)
            topic = match.expand(self._template) if match else record.topic
            if len(self._topics) < _TOPIC_CACHE_LIMIT:
                self._topics[record.topic] = topic
        return (record,) if topic == record.topic else (evolve(record, topic=topic),)


class RouteByField(Transform):
    """The topic from a field's value: `format` with `{topic}` and `{value}` (characters Kafka refuses become `_`)."""

    def __init__(self, options: RouteByFieldOptions, label: str) -> None:
        self.label = label
        self.options = options
        self._get = compile_name(options.field)

    def apply(self, record: Record) -> Sequence[Record]:
        value = self._get(record)
        if value is None:
            if self.options.on_missing == "keep":
                return (record,)
            if self.options.on_missing == "drop":
                return ()
            raise TransformError(f"{self.label}: `{self.options.field}` is null or absent (topic {record.topic})")
        text = _NOT_TOPIC_CHARS.sub("_", str(value).lower() if isinstance(value, bool) else str(value))
        return (evolve(record, topic=self.options.format.format(topic=record.topic, value=text)),)


def _literal(text: str) -> Callable[[str, int], str]:
    return lambda _topic, _micros: text


def _moment(fmt: TimeFormat) -> Callable[[str, int], str]:
    return lambda _topic, micros: fmt.format(from_micros(micros))


class TimestampRouter(Transform):
    """Kafka Connect TimestampRouter; the time is the envelope's `source.ts_ms`, else the record timestamp."""

    def __init__(self, options: TimestampRouterOptions, label: str) -> None:
        parts: list[Callable[[str, int], str]] = []
        position = 0
        for match in re.finditer(r"\{([^{}]*)\}", options.format):
            literal = options.format[position : match.start()]
            parts.append(_literal(literal))
            if match.group(1) == "topic":
                parts.append(lambda topic, _us: topic)
            else:
                fmt = TimeFormat(match.group(1))
                parts.append(_moment(fmt))
            position = match.end()
        tail = options.format[position:]
        parts.append(_literal(tail))
        self._parts = tuple(parts)

    def apply(self, record: Record) -> Sequence[Record]:
        millis = None
        value = record.value
        if is_envelope(value) and isinstance(value.get("source"), dict):
            millis = value["source"].get("ts_ms")
        if millis is None:
            millis = record.timestamp_ms
        if millis is None:
            return (record,)
        micros = millis * 1000
        return (evolve(record, topic="".join(part(record.topic, micros) for part in self._parts)),)


class Filter(Transform):
    """Keep the records a condition is true for (`action: drop` inverts); no condition drops everything."""

    def __init__(self, options: FilterOptions, label: str) -> None:
        self._condition = compile_condition(options.condition) if options.condition is not None else None
        self._keep_when = options.action == "keep"

    def apply(self, record: Record) -> Sequence[Record]:
        if self._condition is None:
            return ()
        return (record,) if self._condition(record) == self._keep_when else ()
