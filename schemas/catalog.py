"""What PostgreSQL's catalog says about the captured tables: columns, types, keys, replica identity.

`describe_tables` reads everything in two catalog queries (tables with their columns and key positions,
then the closure of their types over domains and array elements), so describing a hundred tables costs
the same round trips as describing one. Types are resolved here once: a column over a domain carries
the domain's base type (and the domain's NOT NULL), an array column carries its element type.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import psycopg
from psycopg import sql

KIND_BASE = "b"
KIND_ENUM = "e"
KIND_DOMAIN = "d"
KIND_ARRAY = "a"
KIND_RANGE = "r"
KIND_MULTIRANGE = "m"
KIND_COMPOSITE = "c"
KIND_PSEUDO = "p"


@dataclass(frozen=True, slots=True)
class PgType:
    """A resolved PostgreSQL type (never a domain: domains are unwrapped to their base).

    `kind` is one of `b` base, `e` enum, `a` array, `r` range, `m` multirange, `c` composite, `p` pseudo.
    `name` is the type's SQL name without modifiers (`numeric`, `character varying`, `integer[]`);
    `typname`/`schema` identify it in pg_type (`int4` in `pg_catalog`, `citext` in `public`).
    """

    oid: int
    name: str
    typname: str
    schema: str
    kind: str
    category: str
    element: PgType | None = None
    enum_labels: tuple[str, ...] = ()
    element_typmod: int = -1  # an array of a domain: the domain's typmod, which applies to the elements

    @property
    def is_builtin(self) -> bool:
        return self.schema == "pg_catalog"


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    """One column of a captured table.

    `type_name` is the declared type as `format_type(atttypid, atttypmod)` prints it (`numeric(10,2)`,
    `integer[]`, `character varying(20)`, a domain's own name). `base_kind` is the declared type's kind:
    `b` base, `e` enum, `d` domain, `a` array, `r` range, `m` multirange, `c` composite, `p` pseudo.
    `resolved` is the type values actually have (domains unwrapped, recursively) and `typmod` the
    modifier that applies to it (the column's, or the innermost domain's); for arrays the typmod applies
    to the elements. `not_null` includes NOT NULL constraints of domains. `toastable` says PostgreSQL may
    store the value out of line, so an update may not send it ("unchanged TOAST").
    `generated` columns (STORED) are not sent by pgoutput before PostgreSQL 18.
    """

    name: str
    attnum: int
    type_oid: int
    type_name: str
    not_null: bool
    key_position: int | None
    base_kind: str
    resolved: PgType
    typmod: int = -1
    toastable: bool = False
    generated: bool = False
    default: str | None = None
    """The column's default when it is a constant, in PostgreSQL's text output format (`constant_default`)."""
    aliases: tuple[str, ...] = ()
    """Earlier names of the column's field, newest first (a rename seen in the stream; docs/source.md)."""

    @property
    def element(self) -> PgType | None:
        return self.resolved.element

    @property
    def enum_labels(self) -> tuple[str, ...]:
        element = self.resolved.element
        return element.enum_labels if element is not None else self.resolved.enum_labels


@dataclass(frozen=True, slots=True)
class TableInfo:
    """A table as the catalog describes it now.

    `replica_identity` is pg_class.relreplident: `d` default (primary key), `f` full, `i` index, `n` nothing.
    Key positions come from the primary key, or, without one, from the replica identity index.
    """

    schema: str
    name: str
    oid: int
    replica_identity: str
    columns: tuple[ColumnInfo, ...]
    has_primary_key: bool

    @property
    def key_columns(self) -> tuple[str, ...]:
        keyed = sorted((c for c in self.columns if c.key_position is not None), key=lambda c: c.key_position or 0)
        return tuple(c.name for c in keyed)

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    def column(self, name: str) -> ColumnInfo:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"{self.qualified_name} has no column {name!r}")


_TABLES_QUERY = sql.SQL(
    """
    SELECT n.nspname, c.relname, c.oid, c.relreplident,
           a.attname, a.attnum, a.atttypid, format_type(a.atttypid, a.atttypmod), a.atttypmod,
           a.attnotnull, a.attlen, a.attstorage, a.attgenerated,
           (SELECT k.ord FROM unnest(pk.indkey::int2[]) WITH ORDINALITY AS k(att, ord)
             WHERE k.att = a.attnum AND k.ord <= pk.indnkeyatts) AS pk_position,
           (SELECT k.ord FROM unnest(ri.indkey::int2[]) WITH ORDINALITY AS k(att, ord)
             WHERE k.att = a.attnum AND k.ord <= ri.indnkeyatts) AS ri_position,
           pk.indexrelid IS NOT NULL AS has_pk,
           pg_get_expr(d.adbin, d.adrelid) AS default_expr
      FROM unnest({schemas}::text[], {names}::text[]) AS wanted(nsp, rel)
      JOIN pg_namespace n ON n.nspname = wanted.nsp
      JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = wanted.rel AND c.relkind IN ('r', 'p')
      LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_index pk ON pk.indrelid = c.oid AND pk.indisprimary
      LEFT JOIN pg_index ri ON ri.indrelid = c.oid AND ri.indisreplident
      LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
     ORDER BY n.nspname, c.relname, a.attnum
    """
)

# The closure of the columns' types over domain bases and array elements. typelem is followed only for
# real arrays: fixed-length types such as `name` and `point` also set it.
_TYPES_QUERY = sql.SQL(
    """
    WITH RECURSIVE closure(oid) AS (
        SELECT unnest({oids}::oid[])
        UNION
        SELECT x.oid
          FROM closure
          JOIN pg_type t ON t.oid = closure.oid
          JOIN pg_type x ON x.oid = t.typbasetype OR (t.typcategory = 'A' AND x.oid = t.typelem)
    )
    SELECT t.oid, format_type(t.oid, NULL), t.typname, n.nspname, t.typtype, t.typcategory,
           t.typbasetype, t.typtypmod, t.typnotnull, t.typelem,
           ARRAY(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder),
           t.typlen, t.typstorage
      FROM closure
      JOIN pg_type t ON t.oid = closure.oid
      JOIN pg_namespace n ON n.oid = t.typnamespace
    """
)


@dataclass(frozen=True, slots=True)
class _TypeRow:
    oid: int
    name: str
    typname: str
    schema: str
    typtype: str
    category: str
    basetype: int
    typmod: int
    not_null: bool
    elem: int
    labels: tuple[str, ...]
    length: int = -1
    storage: str = "x"


class _TypeResolver:
    def __init__(self, rows: Iterable[_TypeRow]) -> None:
        self._rows = {row.oid: row for row in rows}
        self._cache: dict[int, PgType] = {}

    def unwrap(self, oid: int, typmod: int) -> tuple[PgType, int, bool]:
        """The non-domain type under `oid`, the typmod that applies to it, and whether a domain forbids NULL."""
        not_null = False
        row = self._rows[oid]
        while row.typtype == KIND_DOMAIN:
            not_null = not_null or row.not_null
            if row.typmod != -1:
                typmod = row.typmod
            row = self._rows[row.basetype]
        resolved = self._resolve(row.oid)
        if typmod == -1 and resolved.kind == KIND_ARRAY:
            typmod = resolved.element_typmod
        return resolved, typmod, not_null

    def known(self, oid: int) -> bool:
        return oid in self._rows

    def toastable(self, oid: int) -> bool:
        row = self._rows[oid]
        return row.length == -1 and row.storage != "p"

    def declared_kind(self, oid: int) -> str:
        row = self._rows[oid]
        if row.category == "A" and row.typtype != KIND_DOMAIN:
            return KIND_ARRAY
        return row.typtype

    def _resolve(self, oid: int) -> PgType:
        cached = self._cache.get(oid)
        if cached is not None:
            return cached
        row = self._rows[oid]
        element = None
        element_typmod = -1
        kind = row.typtype
        if row.category == "A" and row.elem:
            kind = KIND_ARRAY
            element, element_typmod, _ = self.unwrap(row.elem, -1)
        resolved = PgType(
            oid=row.oid,
            name=row.name,
            typname=row.typname,
            schema=row.schema,
            kind=kind,
            category=row.category,
            element=element,
            enum_labels=row.labels,
            element_typmod=element_typmod,
        )
        self._cache[oid] = resolved
        return resolved


def _read_types(conn: psycopg.Connection, oids: Iterable[int]) -> _TypeResolver:
    """The types `oids` and everything they are built on (domain bases, array elements)."""
    wanted = sorted(set(oids))
    if not wanted:
        return _TypeResolver(())
    with conn.cursor() as cur:
        cur.execute(_TYPES_QUERY.format(oids=sql.Literal(wanted)))
        return _TypeResolver(
            _TypeRow(
                oid=r[0], name=r[1], typname=r[2], schema=r[3], typtype=r[4], category=r[5], basetype=r[6],
                typmod=r[7], not_null=r[8], elem=r[9], labels=tuple(r[10] or ()), length=r[11], storage=r[12],
            )
            for r in cur.fetchall()
        )  # fmt: skip


def describe_tables(
    conn: psycopg.Connection, tables: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], TableInfo]:
    """Describe `(schema, table)` pairs; tables that do not exist (or are not tables) are absent from the result."""
    if not tables:
        return {}
    schemas = [schema for schema, _ in tables]
    names = [name for _, name in tables]
    with conn.cursor() as cur:
        cur.execute(_TABLES_QUERY.format(schemas=sql.Literal(schemas), names=sql.Literal(names)))
        table_rows = cur.fetchall()
    resolver = _read_types(conn, {row[6] for row in table_rows if row[6] is not None})

    found: dict[tuple[str, str], tuple[int, str, bool, list[ColumnInfo]]] = {}
    for row in table_rows:
        (nsp, rel, rel_oid, replident, attname, attnum, typid, type_name, typmod, attnotnull,
         attlen, attstorage, attgenerated, pk_position, ri_position, has_pk, default_expr) = row  # fmt: skip
        entry = found.setdefault((nsp, rel), (rel_oid, replident, bool(has_pk), []))
        if attname is None:
            continue
        resolved, effective_typmod, domain_not_null = resolver.unwrap(typid, typmod)
        declared_kind = resolver.declared_kind(typid)
        key_position = pk_position if has_pk else (ri_position if replident == "i" else None)
        entry[3].append(
            ColumnInfo(
                name=attname,
                attnum=attnum,
                type_oid=typid,
                type_name=type_name,
                not_null=bool(attnotnull) or domain_not_null,
                key_position=key_position,
                base_kind=declared_kind,
                resolved=resolved,
                typmod=effective_typmod,
                toastable=attlen == -1 and attstorage != "p",
                generated=bool(attgenerated),
                default=None if attgenerated else constant_default(default_expr),
            )
        )
    return {
        key: TableInfo(
            schema=key[0],
            name=key[1],
            oid=oid,
            replica_identity=replident,
            columns=tuple(columns),
            has_primary_key=has_pk,
        )
        for key, (oid, replident, has_pk, columns) in found.items()
    }


# A default as pg_get_expr prints it, when it is one literal with casts: `0`, `(42)::bigint`, `'dflt'::text`,
# `'-1'::integer`, `true`. Function calls, operators and column references never match (they start with a
# name or a parenthesis other than around a number, or contain characters a type name cannot).
_CONSTANT = re.compile(
    r"(?P<literal>'(?:[^']|'')*'|\(?-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\)?|true|false)"
    r"(?:::[A-Za-z_\"][A-Za-z0-9_ .\"(),\[\]]*?)*"
)


def constant_default(expr: str | None) -> str | None:
    """The value of a constant default in PostgreSQL's text output format, None when it is not a constant.

    `expr` is the default as `pg_get_expr` prints it; a constant there is printed with the type's output
    function (so `'2020-01-01'::date` carries the date as PostgreSQL prints it), except booleans (`true`)
    and plain numbers (`(-1)`), normalised here. `now()`, `nextval(...)`, any function call or operator is
    not a constant: such defaults are evaluated per row and cannot travel as a value.
    """
    if expr is None:
        return None
    found = _CONSTANT.fullmatch(expr.strip())
    if found is None:
        return None
    literal = found.group("literal")
    if literal == "true":
        return "t"
    if literal == "false":
        return "f"
    if literal.startswith("'"):
        return literal[1:-1].replace("''", "'")
    return literal.strip("()")


class StreamedColumn(Protocol):
    """A column as the replication stream describes it (pgoutput's Relation message)."""

    @property
    def name(self) -> str: ...
    @property
    def type_oid(self) -> int: ...
    @property
    def type_modifier(self) -> int: ...
    @property
    def is_key(self) -> bool: ...


_TEXT_OID = 25
_FORMAT_TYPES = sql.SQL(
    "SELECT format_type(x.o, x.m), t.oid IS NOT NULL FROM unnest({oids}::oid[], {mods}::int[]) "
    "WITH ORDINALITY AS x(o, m, i) LEFT JOIN pg_type t ON t.oid = x.o ORDER BY x.i"
)


def describe_streamed(
    conn: psycopg.Connection,
    *,
    schema: str,
    name: str,
    relation_id: int,
    replica_identity: str,
    columns: Sequence[StreamedColumn],
) -> TableInfo:
    """A table as the stream describes it (columns, types, key), completed from the catalog.

    The stream is the truth for which columns a change has and their types, whatever the catalog says now.
    The catalog adds what the stream lacks: NOT NULL, the constant default, the key's order and types' details
    (enum labels, domain bases), taken for a column only when the catalog has it with the same type. A column
    the catalog no longer has (dropped since), or has with another type, is typed from the stream's type OID
    and modifier and carries no NOT NULL and no default. A type that no longer exists is read as text.
    """
    current = describe_tables(conn, [(schema, name)]).get((schema, name))
    by_name: Mapping[str, ColumnInfo] = {c.name: c for c in current.columns} if current is not None else {}
    with conn.cursor() as cur:
        cur.execute(_FORMAT_TYPES.format(
            oids=sql.Literal([c.type_oid for c in columns]), mods=sql.Literal([c.type_modifier for c in columns])
        ))  # fmt: skip
        formatted: list[tuple[str, bool]] = [(r[0], bool(r[1])) for r in cur.fetchall()]
    stale = {
        i for i, (column, (type_name, _)) in enumerate(zip(columns, formatted, strict=True))
        if (known := by_name.get(column.name)) is None
        or known.type_oid != column.type_oid or known.type_name != type_name
    }  # fmt: skip
    resolver = _read_types(conn, {columns[i].type_oid if formatted[i][1] else _TEXT_OID for i in stale})

    def typed(index: int) -> ColumnInfo:
        column = columns[index]
        type_name, exists = formatted[index]
        oid, typmod = (column.type_oid, column.type_modifier) if exists else (_TEXT_OID, -1)
        resolved, effective_typmod, _ = resolver.unwrap(oid, typmod)
        return ColumnInfo(
            name=column.name,
            attnum=index + 1,
            type_oid=oid,
            type_name=type_name if exists else "text",
            not_null=False,
            key_position=None,
            base_kind=resolver.declared_kind(oid),
            resolved=resolved,
            typmod=effective_typmod,
            toastable=resolver.toastable(oid),
        )

    return streamed_table(
        current, schema=schema, name=name, relation_id=relation_id, replica_identity=replica_identity,
        columns=columns, typed={i: typed(i) for i in sorted(stale)},
    )  # fmt: skip


def streamed_table(
    current: TableInfo | None,
    *,
    schema: str,
    name: str,
    relation_id: int,
    replica_identity: str,
    columns: Sequence[StreamedColumn],
    typed: Mapping[int, ColumnInfo],
) -> TableInfo:
    """The stream's columns, each the catalog's (`current`) or, at the positions in `typed`, typed from the stream.

    The key: the catalog's when the stream flags the same columns (its order is the index's), else the flagged
    columns (replica identity default or index); with FULL (every column flagged) or NOTHING, the catalog's key
    while the stream still has its columns, else none.
    """
    by_name = {c.name: c for c in current.columns} if current is not None else {}
    names = [c.name for c in columns]
    catalog_keys = current.key_columns if current is not None else ()
    flagged = tuple(c.name for c in columns if c.is_key)
    if replica_identity in ("d", "i"):
        keys = catalog_keys if set(catalog_keys) == set(flagged) else flagged
    else:
        keys = catalog_keys if set(catalog_keys) <= set(names) else ()
    position = {key: i + 1 for i, key in enumerate(keys)}
    described = tuple(
        replace(typed[i] if i in typed else by_name[column.name], key_position=position.get(column.name))
        for i, column in enumerate(columns)
    )
    return TableInfo(
        schema=schema,
        name=name,
        oid=current.oid if current is not None else relation_id,
        replica_identity=replica_identity,
        columns=described,
        has_primary_key=current.has_primary_key if current is not None else False,
    )
