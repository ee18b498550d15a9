"""Predicates that limit a transform to some records (`predicate:` on any transform, `negate: true` inverts)."""

from __future__ import annotations

import re
from collections.abc import Callable

from core.records import Record
from transforms.config import HasHeader, IsTombstone, OpIn, PredicateSpec, TableIn, TopicMatches
from transforms.envelope import op_of, table_of

Predicate = Callable[[Record], bool]


def build_predicate(spec: PredicateSpec) -> Predicate:
    if isinstance(spec, TopicMatches):
        pattern = re.compile(spec.pattern)
        return lambda r: pattern.fullmatch(r.topic) is not None
    if isinstance(spec, TableIn):
        tables = frozenset(spec.tables)
        return lambda r: "{}.{}".format(*table_of(r)) in tables
    if isinstance(spec, OpIn):
        ops = frozenset(spec.ops)
        return lambda r: op_of(r) in ops
    if isinstance(spec, HasHeader):
        name = spec.name
        return lambda r: any(key == name for key, _ in r.headers)
    if isinstance(spec, IsTombstone):
        return lambda r: r.value is None
    raise AssertionError(f"unhandled predicate {spec!r}")
