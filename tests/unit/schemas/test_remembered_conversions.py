"""Timestamp columns remember their last text and value (`types._remember_last`): each row still gets exactly the
value the plain conversion gives, whatever the order of repeats, and columns never share what they remember."""

from __future__ import annotations

import random

import pytest

from core.errors import SchemaError
from schemas.envelope import TableSchemas, build_table_schemas
from schemas.types import DecimalHandling, SchemaStyle
from tests.unit.schemas.schemas_support import column, table

pytestmark = pytest.mark.unit

_TEXTS = ["2026-12-02 11:51:31.123456+00", "2026-12-02 11:51:31.123456+02", "1999-01-01 00:00:00+00", "infinity",
          "2026-12-02 11:51:31+05:30", "0044-03-15 12:00:00+00 BC"]  # fmt: skip


def _schemas(style: SchemaStyle) -> TableSchemas:
    return build_table_schemas(
        table(column("id", "int8", not_null=True, key_position=1), column("a", "timestamptz"),
              column("b", "timestamptz"), column("c", "timestamp")),
        topic="p.public.t", topic_prefix="p", decimal_handling=DecimalHandling.PRECISE, schema_style=style,
    )  # fmt: skip


@pytest.mark.parametrize("style", list(SchemaStyle))
def test_rows_equal_fresh_conversions_whatever_repeats(style: SchemaStyle) -> None:
    rng = random.Random(3)
    remembering = _schemas(style)
    for i in range(3000):
        a, b = rng.choice(_TEXTS), rng.choice([*_TEXTS, None])
        c = rng.choice(["2026-12-02 11:51:31.5", "2026-12-02 11:51:31", None])
        texts = (str(i), a, b, c)  # a and b drawn apart: each column keeps its own last value
        fresh = _schemas(style)  # nothing remembered yet
        assert remembering.row(texts) == fresh.row(texts), texts


def test_a_text_that_fails_fails_every_time() -> None:
    schemas = _schemas(SchemaStyle.DEBEZIUM)
    schemas.row(("1", _TEXTS[0], None, None))
    for _ in range(2):
        with pytest.raises(SchemaError):
            schemas.row(("2", "not a time", None, None))
