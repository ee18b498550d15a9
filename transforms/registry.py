"""Building the transform chain from config: `build_chain(specs, side=...)`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from pydantic import ValidationError

from core.errors import ConfigError
from core.records import Record
from transforms.base import Transform, TransformChain
from transforms.config import OPTION_MODELS, TransformOptions, TransformSpec
from transforms.fields import Cast, Drop, Flatten, Insert, Keep, Mask, Rename, TimestampConvert
from transforms.predicates import Predicate, build_predicate
from transforms.routing import Filter, Route, RouteByField, TimestampRouter
from transforms.structure import ExtractField, HeadersTransform, Hoist, Outbox, Unwrap, ValueToKey
from transforms.user import PythonTransform

Builder = Callable[[Any, str], Transform]

BUILDERS: dict[str, Builder] = {
    "unwrap": Unwrap,
    "route": Route,
    "route_by_field": RouteByField,
    "timestamp_router": TimestampRouter,
    "filter": Filter,
    "mask": Mask,
    "drop": Drop,
    "keep": Keep,
    "rename": Rename,
    "insert": Insert,
    "cast": Cast,
    "timestamp_convert": TimestampConvert,
    "flatten": Flatten,
    "hoist": Hoist,
    "extract_field": ExtractField,
    "value_to_key": ValueToKey,
    "headers": HeadersTransform,
    "outbox": Outbox,
    "python": PythonTransform,
}
assert set(BUILDERS) == set(OPTION_MODELS), "every transform type needs an option model and a builder"

_HINT = "docs/transforms.md lists every transform with its options"


class Predicated(Transform):
    """Runs `inner` on the records `predicate` selects (or does not, with `negate`); others pass unchanged."""

    def __init__(self, inner: Transform, predicate: Predicate, negate: bool) -> None:
        self.inner = inner
        self._predicate = predicate
        self._negate = negate

    def apply(self, record: Record) -> Sequence[Record]:
        if self._predicate(record) != self._negate:
            return self.inner.apply(record)
        return (record,)


def _option_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] == "predicate":
        del parts[1]  # the predicate's type tag pydantic adds to the location
    return ".".join(parts)


def _validated(spec: TransformSpec | Mapping[str, Any], label: str) -> TransformOptions:
    if isinstance(spec, TransformSpec):
        return spec.settings
    try:
        return TransformSpec.model_validate(dict(spec)).settings
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            path = _option_path(tuple(error["loc"]))
            problems.append(f"option `{path}`: {error['msg']}" if path else str(error["msg"]))
        raise ConfigError(f"{label}: " + "; ".join(dict.fromkeys(problems)), hint=_HINT) from None


def build_chain(
    specs: Sequence[TransformSpec | Mapping[str, Any]], *, side: Literal["source", "sink"]
) -> TransformChain:
    """Validate every spec and build the chain; errors name the transform (`transforms[2] (mask)`) and option."""
    transforms: list[Transform] = []
    for index, spec in enumerate(specs):
        kind = spec.type if isinstance(spec, TransformSpec) else spec.get("type", "?")
        label = f"transforms[{index}] ({kind})"
        settings = _validated(spec, label)
        transform = BUILDERS[settings.kind](settings, label)
        if side == "sink" and isinstance(transform, HeadersTransform) and "change_id" in transform.drops:
            raise ConfigError(
                f"{label}: option `drop`: the sink deduplicates on the `change_id` header; it cannot be dropped",
                hint="drop it on the source side only when the envelope keeps `change_id`",
            )
        if settings.predicate is not None:
            transform = Predicated(transform, build_predicate(settings.predicate), settings.negate)
        transforms.append(transform)
    return TransformChain(transforms)
