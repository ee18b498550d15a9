"""User transforms (`type: python`): a function or class found by import path `package.module:name`.

A function maps a `Record` to a `Record`, None (drop) or a list of records. A class is instantiated
with `options` as keyword arguments and must have `apply(record)` with the same result; its optional
`derive_schema(key_schema, value_schema) -> (key_schema, value_schema)` is called once per input
schema pair and the results are set on every record `apply` returns for that input.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from core.errors import ConnectorError
from core.records import AvroSchema, Record
from transforms.base import Transform
from transforms.config import PythonOptions
from transforms.exceptions import TransformError, option_error

SchemaPair = tuple[AvroSchema | None, AvroSchema | None]


def load_object(path: str, label: str) -> Any:
    module_name, _, attribute = path.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code is a config problem
        raise option_error(
            label, "callable", f"cannot import `{module_name}`: {type(exc).__name__}: {exc}",
            hint="install the package or add its folder to PYTHONPATH",
        ) from None
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise option_error(label, "callable", f"`{path}`: `{module_name}` has no attribute `{attribute}`")
        found = getattr(found, part)
    return found


def _as_schema(value: Any) -> AvroSchema | None:
    if value is None or isinstance(value, AvroSchema):
        return value
    return AvroSchema.of(value)


class PythonTransform(Transform):
    def __init__(self, options: PythonOptions, label: str) -> None:
        self.label = label
        target = load_object(options.callable, label)
        derive: Callable[[AvroSchema | None, AvroSchema | None], Any] | None = None
        if isinstance(target, type):
            try:
                instance = target(**options.options)
            except Exception as exc:  # a constructor refusing its options is a config problem
                raise option_error(label, "options", f"`{options.callable}` refused its options: {exc}") from None
            apply = getattr(instance, "apply", None)
            if not callable(apply):
                raise option_error(label, "callable", f"`{options.callable}` has no `apply(record)` method")
            derive = getattr(instance, "derive_schema", None)
        elif callable(target):
            if options.options:
                problem = "`options` are passed to a class's constructor; this is a function"
                raise option_error(label, "options", problem)
            apply = target
        else:
            raise option_error(label, "callable", f"`{options.callable}` is neither a function nor a class")
        self._apply: Callable[[Record], Any] = apply
        self._derive = derive
        self._schemas: dict[SchemaPair, SchemaPair] = {}

    def apply(self, record: Record) -> Sequence[Record]:
        try:
            result = self._apply(record)
        except ConnectorError:
            raise
        except Exception as exc:  # the user's code failing on one record poisons that record
            raise TransformError(f"{self.label}: {type(exc).__name__}: {exc}") from exc
        if result is None:
            records: tuple[Record, ...] = ()
        elif isinstance(result, Record):
            records = (result,)
        elif isinstance(result, (list, tuple)) and all(isinstance(r, Record) for r in result):
            records = tuple(result)
        else:
            kind = type(result).__name__
            raise TransformError(f"{self.label}: returned {kind}, not a Record, None or a list of Records")
        if self._derive is None or not records:
            return records
        pair = (record.key_schema, record.value_schema)
        derived = self._schemas.get(pair)
        if derived is None:
            key_schema, value_schema = self._derive(*pair)
            derived = self._schemas[pair] = (_as_schema(key_schema), _as_schema(value_schema))
        return tuple(replace(r, key_schema=derived[0], value_schema=derived[1]) for r in records)
