"""`ChangeEncoder` gives the bytes of the events' records encoded by `serde.Encoder` (what `RegistrySerializer`
does for records that went through transforms), whether the generated envelope writer (schemas/fastpath.py)
or the general encoder writes them.

Random rows of every mapped type, as pgoutput text, through inserts, updates (with and without the old row,
with unchanged TOAST, with a changed key) and deletes; each record's key, value and headers are compared.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import uuid
from typing import Any

import pytest

from core.records import AvroSchema
from schemas.envelope import UNCHANGED_TOAST, build_table_schemas
from schemas.fastpath import EnvelopeWriter
from schemas.serde import Encoder
from schemas.types import DecimalHandling, SchemaStyle
from sources.postgres.change_id import ChangeIds, namespace_for
from sources.postgres.events import ChangeEncoder, ChangeEvent, TableEvents
from sources.postgres.protocol import Delete, Insert, Update
from tests.unit.schemas.schemas_support import array_of, column, numeric_typmod, pg_type, table

pytestmark = pytest.mark.unit

_SCALARS = ["int2", "int4", "int8", "float4", "float8", "bool", "text", "bytea", "uuid", "date", "time", "timetz",
            "timestamp", "timestamptz", "interval", "jsonb", "inet"]  # fmt: skip
_TOASTABLE = ("text", "bytea", "jsonb")


def every_type_table(replica_identity: str = "d") -> Any:
    columns = [column("id", "int8", not_null=True, key_position=1), column("k2", "text", not_null=True,
                                                                         key_position=2)]  # fmt: skip
    for typname in _SCALARS:
        columns.append(column(f"c_{typname}", typname, toastable=typname in _TOASTABLE))
        columns.append(column(f"a_{typname}", array_of(pg_type(typname)), toastable=True))
    columns.append(column("n_fixed", "numeric", typmod=numeric_typmod(12, 3), toastable=True))
    columns.append(column("n_var", "numeric", toastable=True))
    columns.append(column("n_arr", array_of(pg_type("numeric")), typmod=numeric_typmod(6, 2), toastable=True))
    columns.append(column("nn_int", "int4", not_null=True))
    columns.append(column("mood", pg_type("mood", kind="e", schema="public", labels=("a", "b"))))
    columns.append(column("Weird Name", "text"))
    return table(*columns, schema="public", name="every", replica_identity=replica_identity)


def _text(rng: random.Random) -> str:
    alphabet = "abc xyz\"'\\{},;é€😀\t\n"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))


def _time(rng: random.Random) -> str:
    base = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
    return base + (f".{rng.randint(0, 999999):06d}".rstrip("0") if rng.random() < 0.5 else "")


def _date(rng: random.Random) -> str:
    if rng.random() < 0.05:
        return rng.choice(["infinity", "-infinity"])
    text = f"{rng.randint(1, 9999):04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    return text + (" BC" if rng.random() < 0.05 else "")


def _decimal(rng: random.Random, integer_digits: int, scale: int) -> str:
    whole = rng.randint(0, 10**integer_digits - 1)
    text = f"{'-' if rng.random() < 0.3 else ''}{whole}"
    return text + (f".{rng.randint(0, 10**scale - 1):0{scale}d}" if scale else "")


def scalar_text(typname: str, rng: random.Random) -> str:
    if typname == "int2":
        return str(rng.randint(-(2**15), 2**15 - 1))
    if typname == "int4":
        return str(rng.randint(-(2**31), 2**31 - 1))
    if typname == "int8":
        return str(rng.randint(-(2**63), 2**63 - 1))
    if typname in ("float4", "float8"):
        return rng.choice(["NaN", "Infinity", "-Infinity", repr(rng.uniform(-1e9, 1e9)), "0", "-1.5e-30"])
    if typname == "bool":
        return rng.choice("tf")
    if typname == "text":
        return _text(rng)
    if typname == "bytea":
        return "\\x" + rng.randbytes(rng.randint(0, 20)).hex()
    if typname == "uuid":
        return str(uuid.UUID(int=rng.getrandbits(128)))
    if typname == "date":
        return _date(rng)
    if typname == "time":
        return _time(rng)
    if typname == "timetz":
        return _time(rng) + rng.choice(["+00", "-05", "+05:30", "+14"])
    if typname == "timestamp":
        return rng.choice([f"{_date(rng)} {_time(rng)}"] * 9 + ["infinity"]).replace("infinity ", "")
    if typname == "timestamptz":
        date = f"{rng.randint(1, 9999):04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        return f"{date} {_time(rng)}{rng.choice(['+00', '+02', '-07:30'])}"
    if typname == "interval":
        return f"{rng.randint(0, 5)} years {rng.randint(0, 11)} mons {rng.randint(-3, 30)} days {_time(rng)}"
    if typname == "jsonb":
        return json.dumps({"k": rng.randint(0, 9), "s": _text(rng), "l": [1, None, True]})
    if typname == "inet":
        return rng.choice(["10.0.0.1", "192.168.0.0/16", "::1", f"172.16.{rng.randint(0, 255)}.{rng.randint(0, 255)}"])
    raise AssertionError(typname)


def _array_item(typname: str, rng: random.Random) -> str:
    if rng.random() < 0.1:
        return "NULL"
    text = scalar_text(typname, rng)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def column_text(name: str, rng: random.Random) -> str | None:
    if name == "id":
        return str(rng.randint(-(2**63), 2**63 - 1))
    if name == "k2":
        return _text(rng)
    if name == "nn_int":
        return str(rng.randint(-(2**31), 2**31 - 1))
    if rng.random() < 0.15:
        return None
    if name.startswith("c_"):
        return scalar_text(name[2:], rng)
    if name.startswith("a_"):
        return "{" + ",".join(_array_item(name[2:], rng) for _ in range(rng.randint(0, 4))) + "}"
    if name == "n_fixed":
        return rng.choice([_decimal(rng, 9, 3), _decimal(rng, 2, 3), "0.000"])
    if name == "n_var":
        return rng.choice([_decimal(rng, 20, 7), _decimal(rng, 1, 0), "NaN", "Infinity", "-0.00100"])
    if name == "n_arr":
        return "{" + ",".join(_decimal(rng, 4, 2) for _ in range(rng.randint(0, 3))) + "}"
    if name == "mood":
        return rng.choice("ab")
    return _text(rng)


class Ids:
    """A stand-in for the registry: one id per (topic, is_key, schema), in registration order."""

    def __init__(self) -> None:
        self.ids: dict[tuple[str, bool, str], int] = {}
        self.order: list[tuple[str, bool]] = []

    def __call__(self, topic: str, schema: AvroSchema, is_key: bool) -> int:
        found = self.ids.get((topic, is_key, schema.text))
        if found is None:
            found = self.ids[(topic, is_key, schema.text)] = len(self.ids) + 41
            self.order.append((topic, is_key))
        return found


class UuidV5Ids(ChangeIds):
    """Change ids of the layout before ordered ids (UUIDv5 of the same names), for the golden bytes below."""

    __slots__ = ("_v5",)

    def __init__(self, namespace: uuid.UUID) -> None:
        super().__init__(namespace)
        self._v5 = namespace

    def streamed(self, commit_lsn: int, lsn: int, ordinal: int) -> str:
        return str(uuid.uuid5(self._v5, f"{commit_lsn}:{lsn}:{ordinal}"))

    def key_change_delete(self, commit_lsn: int, lsn: int, ordinal: int) -> str:
        return str(uuid.uuid5(self._v5, f"{commit_lsn}:{lsn}:{ordinal}:d"))


def make_events(handling: DecimalHandling, *, tombstones: bool = True, relation_columns: list[str] | None = None,
                replica_identity: str = "d", style: SchemaStyle = SchemaStyle.AVRO_NATIVE,
                ids: ChangeIds | None = None) -> TableEvents:  # fmt: skip
    schemas = build_table_schemas(
        every_type_table(replica_identity), topic="p.public.every", topic_prefix="p", decimal_handling=handling,
        schema_style=style,
    )
    return TableEvents(
        schemas, connector_name="conn", db="db", ids=ids or ChangeIds(namespace_for("7", "db")), tombstones=tombstones,
        relation_columns=relation_columns, replica_identity=replica_identity,
    )  # fmt: skip


def from_records(
    events: TableEvents, ids: Ids, changes: tuple[ChangeEvent, ...]
) -> list[tuple[Any, Any, tuple[tuple[str, bytes], ...]]]:
    encoder = Encoder()
    out = []
    for record in events.records(changes):
        key = None if record.key is None else encoder.encode(
            ids(record.topic, record.key_schema, True), record.key_schema, record.key  # type: ignore[arg-type]
        )
        value = None if record.value is None else encoder.encode(
            ids(record.topic, record.value_schema, False), record.value_schema, record.value  # type: ignore[arg-type]
        )
        out.append((key, value, record.headers))
    return out


def ordinary(events: TableEvents, ids: Ids, message: Any, **coords: int) -> list[Any]:
    return from_records(events, ids, events.changes(message, **coords))


class WriterCalls:
    """Counts the envelopes the generated writers wrote (the rest went through the general encoder)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = EnvelopeWriter.value

        def counted(writer: EnvelopeWriter, *args: Any, **kwargs: Any) -> bytes:
            value = original(writer, *args, **kwargs)
            self.count += 1
            return value

        monkeypatch.setattr(EnvelopeWriter, "value", counted)


def random_message(events: TableEvents, rng: random.Random, names: list[str]) -> Any:
    toastable = {c.column.name for c in events._schemas.codecs if c.column.toastable}
    new = tuple(column_text(n, rng) for n in names)
    kind = rng.choice("IUUD")
    if kind == "I":
        return Insert(1, new)
    if kind == "D":
        key_only = rng.random() < 0.5
        old = tuple(column_text(n, rng) if not key_only or n in ("id", "k2") else None for n in names)
        return Delete(1, old, key_only)
    new = tuple(
        UNCHANGED_TOAST if n in toastable and rng.random() < 0.2 else v for n, v in zip(names, new, strict=True)
    )
    shape = rng.choice(["none", "key", "full", "same-key"])
    if shape == "none":
        return Update(1, new, None, False)
    old = tuple(column_text(n, rng) for n in names)
    if shape == "same-key":
        old = tuple(new[i] if n in ("id", "k2") else v for i, (n, v) in enumerate(zip(names, old, strict=True)))
    if shape == "key":
        old = tuple(v if n in ("id", "k2") else None for n, v in zip(names, old, strict=True))
    return Update(1, new, old, shape == "key")


def in_relation_order(message: Any, names: list[str], relation_columns: list[str]) -> Any:
    def remap(row: Any) -> Any:
        if row is None:
            return None
        by_name = dict(zip(names, row, strict=True))
        return tuple(by_name.get(c, "extra value") for c in relation_columns)

    if type(message) is Insert:
        return Insert(1, remap(message.new))
    if type(message) is Delete:
        return Delete(1, remap(message.old), message.old_is_key_only)
    return Update(1, remap(message.new), remap(message.old), message.old_is_key_only)


@pytest.mark.parametrize("style", list(SchemaStyle))
@pytest.mark.parametrize("handling", list(DecimalHandling))
def test_encoded_changes_are_byte_identical_to_their_records(
    handling: DecimalHandling, style: SchemaStyle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_700_000_123.456)
    written = WriterCalls(monkeypatch)
    rng = random.Random(f"fastpath-{handling.value}")
    names = [c.column.name for c in make_events(handling, style=style)._schemas.codecs]
    shuffled = [*names, "extra"]
    rng.shuffle(shuffled)
    key_changes = 0
    for relation_columns in (None, shuffled):
        slow_events = make_events(handling, relation_columns=relation_columns, style=style)
        fast_events = make_events(handling, relation_columns=relation_columns, style=style)
        slow_ids, fast_ids = Ids(), Ids()
        encoder = ChangeEncoder(fast_ids)
        for n in range(300):
            message = random_message(slow_events, rng, names)
            if relation_columns is not None:
                message = in_relation_order(message, names, relation_columns)
            commit_lsn = rng.choice([2**40 + n // 5, 5_000 + n // 5])
            coords = {"lsn": commit_lsn - rng.randint(1, 400), "commit_lsn": commit_lsn, "ordinal": n % 5,
                      "xid": rng.choice([7, 2**31 + n // 5]), "commit_ms": 1_700_000_000_000 + n // 5}  # fmt: skip
            try:
                expected = ordinary(slow_events, slow_ids, message, **coords)
            except Exception as exc:
                with pytest.raises(type(exc)):
                    fast_events.changes(message, **coords)
                continue
            changes = fast_events.changes(message, **coords)
            key_changes += len(changes) == 2
            assert encoder.encode(fast_events, changes) == expected
        assert fast_ids.order == slow_ids.order == [("p.public.every", True), ("p.public.every", False)]
    assert written.count > 300  # most changes went through the generated writers
    assert key_changes > 10  # and key changes (delete + create) among them


def test_values_the_writer_does_not_take_are_left_to_the_general_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)
    written = WriterCalls(monkeypatch)
    events = make_events(DecimalHandling.PRECISE)
    ids = Ids()
    encoder = ChangeEncoder(ids)
    names = [c.column.name for c in events._schemas.codecs]
    row = tuple("5" if n in ("id", "nn_int") else ("k" if n == "k2" else None) for n in names)
    coords = {"lsn": 1, "commit_lsn": 2, "ordinal": 0, "xid": 1, "commit_ms": 0}
    insert = events.changes(Insert(1, row), **coords)
    assert encoder.encode(events, insert) == from_records(events, ids, insert)
    assert written.count == 1
    no_k2 = tuple(None if n == "k2" else v for n, v in zip(names, row, strict=True))  # NOT NULL column without a value
    missing = events.changes(Insert(1, no_k2), **coords)
    with pytest.raises(TypeError, match="k2"):  # the writer fell back; fastavro's own error names the field
        encoder.encode(events, missing)
    assert written.count == 1
    general = ChangeEncoder(ids, envelope_writers=False)
    assert general.encode(events, insert) == from_records(events, ids, insert)
    assert written.count == 1


def test_truncates_and_snapshot_rows_encode_as_their_records(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)
    events = make_events(DecimalHandling.PRECISE)
    ids = Ids()
    encoder = ChangeEncoder(ids)
    truncate = (events.truncate(lsn=10, commit_lsn=20, ordinal=1, xid=3, commit_ms=99),)
    assert encoder.encode(events, truncate) == from_records(events, ids, truncate)
    rng = random.Random("snapshot")
    texts = [column_text(n, rng) for n in events.columns]
    snapshot = (events.snapshot_row(texts, 500, 1234, "last"),)
    assert encoder.encode(events, snapshot) == from_records(events, ids, snapshot)


@pytest.mark.parametrize("style", list(SchemaStyle))
@pytest.mark.parametrize("handling", list(DecimalHandling))
def test_snapshot_reads_through_the_writer_are_byte_identical_to_their_records(
    handling: DecimalHandling, style: SchemaStyle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Initial snapshot rows and incremental chunk rows (re-positioned at their low watermark) take the writer."""
    monkeypatch.setattr(time, "time", lambda: 1_700_000_123.456)
    written = WriterCalls(monkeypatch)
    rng = random.Random(f"snapshot-{handling.value}-{style.value}")
    slow_events = make_events(handling, style=style)
    fast_events = make_events(handling, style=style)
    slow_ids, fast_ids = Ids(), Ids()
    encoder = ChangeEncoder(fast_ids)
    taken = 0
    for n in range(200):
        texts = [column_text(c, rng) for c in fast_events.columns]
        point = rng.choice([2**40 + n // 7, 5_000 + n // 7])
        marker = rng.choice(["true", "last", "incremental"])
        try:
            expected_event = slow_events.snapshot_row(texts, point, 1_700_000_000_000 + n // 3, marker)
        except Exception as exc:
            with pytest.raises(type(exc)):
                fast_events.snapshot_row(texts, point, 1_700_000_000_000 + n // 3, marker)
            continue
        if marker == "incremental":  # read at the chunk's read, placed at its high watermark
            event = fast_events.snapshot_event(fast_events.snapshot_read(texts), point, 1_700_000_000_000 + n // 3,
                                               marker)  # fmt: skip
        else:
            event = fast_events.snapshot_row(texts, point, 1_700_000_000_000 + n // 3, marker)
        before = written.count
        assert encoder.encode(fast_events, (event,)) == from_records(slow_events, slow_ids, (expected_event,))
        taken += written.count - before
    assert taken > 100  # most rows went through the generated writer


def test_tombstones_follow_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)
    names = [c.column.name for c in make_events(DecimalHandling.PRECISE)._schemas.codecs]
    old = tuple("5" if n in ("id", "nn_int") else ("k" if n == "k2" else None) for n in names)
    for tombstones in (True, False):
        events = make_events(DecimalHandling.PRECISE, tombstones=tombstones)
        ids = Ids()
        coords = {"lsn": 10, "commit_lsn": 20, "ordinal": 0, "xid": 3, "commit_ms": 99}
        changes = events.changes(Delete(1, old, True), **coords)
        fast = ChangeEncoder(ids).encode(events, changes)
        assert len(fast) == (2 if tombstones else 1)
        assert fast == from_records(events, ids, changes)


AVRO_NATIVE_DIGEST = "6e60c453dc38a85dbe9bc35854a76c89d160b3577e90c732f8f4f3131d84e496"
"""sha256 of the records below as the encoder wrote them before `schema_style` existed (computed with that code):
`avro_native` is today's wire format, byte for byte (change ids aside: their layout changed since, so the test
mints them as then). Changing the generators above changes it too."""


def test_avro_native_bytes_are_those_from_before_schema_styles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_700_000_123.456)
    digest = hashlib.sha256()
    for handling in DecimalHandling:
        rng = random.Random(f"golden-{handling.value}")
        events = make_events(handling, style=SchemaStyle.AVRO_NATIVE, ids=UuidV5Ids(namespace_for("7", "db")))
        ids = Ids()
        names = [c.column.name for c in events._schemas.codecs]
        for n in range(200):
            message = random_message(events, rng, names)
            coords = {"lsn": 5000 + n, "commit_lsn": 5000 + n + 3, "ordinal": 0, "xid": 7,
                      "commit_ms": 1_700_000_000_000 + n}  # fmt: skip
            try:
                out = ordinary(events, ids, message, **coords)
            except Exception as exc:  # the same failures as then are part of the digest
                digest.update(type(exc).__name__.encode())
                continue
            for key, value, headers in out:
                digest.update(repr((key, value, headers)).encode())
    assert digest.hexdigest() == AVRO_NATIVE_DIGEST
