"""Schema evolution: what changed between two versions, and whether Avro can resolve one against the other.

The registry's verdict is authoritative (`SchemaRegistry.check`); this module explains it in a user's
terms (columns added, removed, retyped) and implements Avro's schema-resolution rules locally so the
explanation names the exact field, which Apicurio's compatibility endpoint does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.records import AvroSchema
from schemas.avro import PRIMITIVES, named_types

_PROMOTIONS = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "double": {"double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
}


def _row_record(definition: Any) -> Mapping[str, Any] | None:
    """The record whose fields are columns: `Value` inside an envelope, else the top-level record (a key)."""
    if not isinstance(definition, Mapping) or definition.get("type") != "record":
        return None
    for f in definition.get("fields", []):
        if f.get("name") == "before":
            for branch in f["type"] if isinstance(f["type"], list) else [f["type"]]:
                if isinstance(branch, Mapping) and branch.get("type") == "record":
                    return branch
    return definition


def _short(avro: Any) -> str:
    """A compact human description of an Avro type."""
    if isinstance(avro, list):
        return " | ".join(_short(b) for b in avro)
    if isinstance(avro, Mapping):
        kind = avro.get("type")
        if kind == "array":
            return f"array<{_short(avro['items'])}>"
        if kind == "map":
            return f"map<{_short(avro['values'])}>"
        if kind in ("record", "enum", "fixed"):
            return str(avro.get("name"))
        logical = avro.get("logicalType")
        if logical == "decimal":
            return f"decimal({avro.get('precision')},{avro.get('scale', 0)})"
        return f"{kind}/{logical}" if logical else _short(kind)
    return str(avro)


def _short_value(avro: Any) -> str:
    """Like `_short`, without the null branch of an optional field (nullability is reported apart)."""
    if isinstance(avro, list):
        branches = [b for b in avro if b != "null"]
        return _short(branches[0] if len(branches) == 1 else branches)
    return _short(avro)


def _nullable(avro: Any) -> bool:
    return isinstance(avro, list) and "null" in avro


_NATIVE_LOGICAL_TYPES = frozenset({"date", "time-micros", "timestamp-micros", "local-timestamp-micros", "uuid"})


def encoding_style(schema: AvroSchema) -> str | None:
    """Which `schema_style` wrote `schema` ("debezium" or "avro_native"), when its shape says so, else None.

    An envelope says it by its `source` block (Debezium 3.6's has `ts_us`); any record by its field types (Avro
    logical types for dates, times and uuids are `avro_native`'s; Connect's `connect.type: int16` is Debezium's).
    Used to explain an incompatibility that is a change of style rather than of the table.
    """
    found: set[str] = set()

    def walk(avro: Any) -> None:
        if isinstance(avro, list):
            for branch in avro:
                walk(branch)
        elif isinstance(avro, Mapping):
            if avro.get("logicalType") in _NATIVE_LOGICAL_TYPES:
                found.add("avro_native")
            if avro.get("connect.type") == "int16":
                found.add("debezium")
            for item in avro.get("fields", ()):
                if item.get("name") == "source" and isinstance(item.get("type"), Mapping):
                    names = {f.get("name") for f in item["type"].get("fields", ())}
                    found.add("debezium" if "ts_us" in names else "avro_native")
                else:
                    walk(item.get("type"))
            if avro.get("type") == "array":
                walk(avro.get("items"))

    walk(schema.definition)
    return found.pop() if len(found) == 1 else None


def describe_changes(old: AvroSchema, new: AvroSchema) -> list[str]:
    """Column-level differences from `old` to `new`, in a user's words (empty when the columns are the same)."""
    old_record, new_record = _row_record(old.definition), _row_record(new.definition)
    if old_record is None or new_record is None:
        if old.text == new.text:
            return []
        return [f"type changed from {_short(old.definition)} to {_short(new.definition)}"]
    old_fields = {f["name"]: f for f in old_record.get("fields", [])}
    new_fields = {f["name"]: f for f in new_record.get("fields", [])}
    messages = []
    for name, f in old_fields.items():
        if name not in new_fields:
            required = "" if "default" in f else " (it had no default, so readers of the old schema need it)"
            messages.append(f"column {name} removed{required}")
    for name, f in new_fields.items():
        before = old_fields.get(name)
        if before is None:
            how = "nullable, default null" if "default" in f else "required, no default"
            messages.append(f"column {name} added ({how})")
            continue
        old_type, new_type = before["type"], f["type"]
        old_pg, new_pg = before.get("pg.type"), f.get("pg.type")
        old_desc = f"{old_pg} ({_short_value(old_type)})" if old_pg else _short_value(old_type)
        new_desc = f"{new_pg} ({_short_value(new_type)})" if new_pg else _short_value(new_type)
        if old_desc != new_desc:
            messages.append(f"column {name} changed type: {old_desc} -> {new_desc}")
        if _nullable(old_type) and not _nullable(new_type):
            messages.append(f"column {name} became required (not null)")
        elif not _nullable(old_type) and _nullable(new_type):
            messages.append(f"column {name} became optional (nullable)")
    return messages


class _Names:
    """Named types of one schema, by full and by short name (Avro matches named types by unqualified name)."""

    def __init__(self, definition: Any) -> None:
        self.types: dict[str, Mapping[str, Any]] = dict(named_types(definition))
        for full, avro in list(self.types.items()):
            self.types.setdefault(full.rsplit(".", 1)[-1], avro)

    def resolve(self, avro: Any) -> Any:
        if isinstance(avro, str) and avro not in PRIMITIVES:
            return self.types.get(avro) or self.types.get(avro.rsplit(".", 1)[-1]) or avro
        if isinstance(avro, Mapping) and avro.get("type") in PRIMITIVES:
            return avro["type"]  # a primitive with a logical type or properties: resolution ignores both
        return avro


def _kind(avro: Any) -> str:
    if isinstance(avro, list):
        return "union"
    if isinstance(avro, Mapping):
        return str(avro.get("type"))
    return str(avro)


def _short_name(avro: Mapping[str, Any]) -> str:
    return str(avro["name"]).rsplit(".", 1)[-1]


def incompatibilities(reader: AvroSchema, writer: AvroSchema) -> list[str]:
    """Why data written with `writer` cannot be read with `reader` (Avro schema resolution); empty if it can."""
    resolution = _Resolution(_Names(reader.definition), _Names(writer.definition))
    return resolution.check(reader.definition, writer.definition, "")


class _Resolution:
    def __init__(self, rnames: _Names, wnames: _Names) -> None:
        self.rnames = rnames
        self.wnames = wnames
        self.seen: set[tuple[int, int]] = set()

    def check(self, reader: Any, writer: Any, path: str) -> list[str]:
        reader, writer = self.rnames.resolve(reader), self.wnames.resolve(writer)
        rkind, wkind = _kind(reader), _kind(writer)
        where = path or "<root>"
        mismatch = [f"{where}: {_short(writer)} values cannot be read as {_short(reader)}"]
        if wkind == "union":
            return [p for branch in writer for p in self.check(reader, branch, path)]
        if rkind == "union":
            saved = set(self.seen)
            for branch in reader:
                if not self.check(branch, writer, path):
                    return []
                self.seen = set(saved)  # a failed trial must not hide problems from the explanation below
            # Explain with the branch of the same kind (and name): "field x is missing", not "no branch fits".
            for branch in reader:
                resolved = self.rnames.resolve(branch)
                if _kind(resolved) == wkind and (wkind != "record" or _short_name(resolved) == _short_name(writer)):
                    return self.check(resolved, writer, path)
            return mismatch
        if rkind in PRIMITIVES or wkind in PRIMITIVES:
            if wkind in PRIMITIVES and rkind in _PROMOTIONS.get(wkind, {wkind}):
                return []
            return mismatch
        if rkind != wkind:
            return mismatch
        if rkind == "array":
            return self.check(reader["items"], writer["items"], f"{path}[]")
        if rkind == "map":
            return self.check(reader["values"], writer["values"], f"{path}{{}}")
        if rkind == "enum":
            missing = [s for s in writer.get("symbols", []) if s not in reader.get("symbols", [])]
            if missing and "default" not in reader:
                return [f"{where}: enum symbols {', '.join(missing)} are unknown to the reader"]
            return []
        if rkind == "fixed":
            if reader.get("size") != writer.get("size"):
                return [f"{where}: fixed size {writer.get('size')} cannot be read as size {reader.get('size')}"]
            return []
        if rkind == "record":
            return self._record(reader, writer, path)
        return mismatch

    def _record(self, reader: Mapping[str, Any], writer: Mapping[str, Any], path: str) -> list[str]:
        if _short_name(reader) != _short_name(writer):
            return [f"{path or '<root>'}: record {writer['name']} cannot be read as {reader['name']}"]
        pair = (id(reader), id(writer))
        if pair in self.seen:
            return []
        self.seen.add(pair)
        problems: list[str] = []
        writer_fields = {f["name"]: f for f in writer.get("fields", [])}
        for f in reader.get("fields", []):
            sub = f"{path}.{f['name']}" if path else f["name"]
            found = writer_fields.get(f["name"])
            for alias in f.get("aliases", []):
                found = found or writer_fields.get(alias)
            if found is None:
                if "default" not in f:
                    problems.append(f"{sub}: the reader requires it but the writer does not have it (no default)")
                continue
            problems.extend(self.check(f["type"], found["type"], sub))
        return problems


def problems_for(level: str, new: AvroSchema, versions: list[AvroSchema]) -> list[str]:
    """Local verdict for a registry compatibility level (`versions` oldest first; non-transitive uses the last)."""
    level = level.upper()
    if level == "NONE" or not versions:
        return []
    against = versions if level.endswith("_TRANSITIVE") else versions[-1:]
    problems: list[str] = []
    for old in against:
        if level.startswith(("BACKWARD", "FULL")):
            problems.extend(f"new schema cannot read old data: {p}" for p in incompatibilities(new, old))
        if level.startswith(("FORWARD", "FULL")):
            problems.extend(f"old schema cannot read new data: {p}" for p in incompatibilities(old, new))
    return list(dict.fromkeys(problems))
