"""Builders of catalog objects for unit tests (what `describe_tables` would return, without a database)."""

from __future__ import annotations

from schemas.catalog import ColumnInfo, PgType, TableInfo

_CATEGORY = {"int2": "N", "int4": "N", "int8": "N", "numeric": "N", "float4": "N", "float8": "N", "bool": "B"}


def pg_type(typname: str, *, name: str | None = None, kind: str = "b", schema: str = "pg_catalog",
            labels: tuple[str, ...] = ()) -> PgType:  # fmt: skip
    return PgType(
        oid=1, name=name or typname, typname=typname, schema=schema, kind=kind,
        category=_CATEGORY.get(typname, "S" if kind == "b" else kind.upper()), enum_labels=labels,
    )  # fmt: skip


def array_of(element: PgType) -> PgType:
    return PgType(oid=2, name=f"{element.name}[]", typname=f"_{element.typname}", schema=element.schema, kind="a",
                  category="A", element=element)  # fmt: skip


def column(
    name: str,
    resolved: PgType | str,
    *,
    type_name: str | None = None,
    not_null: bool = False,
    key_position: int | None = None,
    typmod: int = -1,
    toastable: bool = False,
    base_kind: str | None = None,
    attnum: int = 1,
    generated: bool = False,
    default: str | None = None,
) -> ColumnInfo:
    pg = pg_type(resolved) if isinstance(resolved, str) else resolved
    return ColumnInfo(
        name=name,
        attnum=attnum,
        type_oid=pg.oid,
        type_name=type_name or pg.name,
        not_null=not_null,
        key_position=key_position,
        base_kind=base_kind or pg.kind,
        resolved=pg,
        typmod=typmod,
        toastable=toastable,
        generated=generated,
        default=default,
    )


def numeric_typmod(precision: int, scale: int) -> int:
    return ((precision << 16) | (scale & 0x7FF)) + 4


def table(*columns: ColumnInfo, schema: str = "public", name: str = "t", replica_identity: str = "d") -> TableInfo:
    numbered = tuple(
        ColumnInfo(**{**{s: getattr(c, s) for s in ColumnInfo.__slots__}, "attnum": i})  # type: ignore[arg-type]
        for i, c in enumerate(columns, start=1)
    )
    return TableInfo(
        schema=schema,
        name=name,
        oid=1,
        replica_identity=replica_identity,
        columns=numbered,
        has_primary_key=any(c.key_position is not None for c in columns),
    )
