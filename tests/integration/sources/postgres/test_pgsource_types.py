"""Many PostgreSQL types through both paths (snapshot `::text` and pgoutput), TOAST placeholders, unicode."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from pgsource_support import SourceEnv, without_markers

from schemas.types import UNAVAILABLE_VALUE

pytestmark = pytest.mark.integration

COLUMNS = """
    id int PRIMARY KEY, s smallint, i int, b bigint, r real, d double precision, n numeric(12,3), nu numeric,
    flag boolean, t text, vc varchar(20), ch char(3), by bytea, u uuid, dt date, tm time, ttz timetz,
    ts timestamp, tstz timestamptz, iv interval, j json, jb jsonb, arr int[], tarr text[], mood {t}_mood,
    ip inet, net cidr, mac macaddr, m money, pos {t}_pos, big text
"""

ROW = """(%s, -32768, 2147483647, -9223372036854775808, 'NaN', '-Infinity', 123456789.125, '1e-20',
    true, 'zoë ✓ 漢字 🚀', 'vc', 'ab', '\\xdeadbeef', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'infinity',
    '23:59:59.999999', '10:00:00+05:30', '10000-01-01 00:00:00', '2024-02-29 12:34:56.789+00',
    '1 year 2 mons 3 days 04:05:06.5',
    '{"a": 1}', '{"b": [1, null, "x"]}', ARRAY[1, NULL, 3], ARRAY['a,b', 'c"d', NULL], 'happy',
    '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', 12.34, 5, repeat('toast ', 5000))"""


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "encode-workers"])
def test_types_stream_like_they_snapshot(source_env: SourceEnv, workers: int) -> None:
    env = source_env
    env.source_options["encode_workers"] = workers
    name = f"{env.name}_types"
    env.cleanup += [f"DROP TYPE IF EXISTS {name}_mood", f"DROP DOMAIN IF EXISTS {name}_pos"]
    env.sql(f"CREATE TYPE {name}_mood AS ENUM ('sad', 'happy')")
    env.sql(f"CREATE DOMAIN {name}_pos AS int CHECK (VALUE > 0)")
    env.table("types", "CREATE TABLE {t} (" + COLUMNS.format(t=name) + ")")
    env.sql(f"ALTER TABLE {name} ALTER big SET STORAGE EXTERNAL")  # out of line even though it compresses well
    env.sql(f"INSERT INTO {name} VALUES " + ROW, (1,))
    with env.running(snapshot={"mode": "initial"}) as source:
        source.wait_ready()
        env.sql(f"INSERT INTO {name} VALUES " + ROW, (2,))
        env.sql(f"UPDATE {name} SET i = 7 WHERE id = 2")  # `big` is TOASTed and unchanged
        env.sql(f"ALTER TABLE {name} REPLICA IDENTITY FULL")
        env.sql(f"UPDATE {name} SET i = 8 WHERE id = 2")
        env.sql(f"DELETE FROM {name} WHERE id = 1")
        env.sql(f"TRUNCATE {name}")
        events = without_markers(env.read(env.topic(name), min_count=8))
    ops = [e.value["op"] if e.value else None for e in events]
    assert ops == ["r", "c", "u", "u", "d", None, "t"]
    snap, streamed = events[0].value["after"], events[1].value["after"]
    assert {k: v for k, v in snap.items() if k not in ("id", "r")} == {
        k: v for k, v in streamed.items() if k not in ("id", "r")
    }
    assert math.isnan(snap["r"]) and math.isnan(streamed["r"])
    assert streamed["ch"] == "ab "
    assert streamed["s"] == -32768 and streamed["b"] == -9223372036854775808
    assert streamed["n"] == Decimal("123456789.125")
    assert streamed["flag"] is True
    assert streamed["t"] == "zoë ✓ 漢字 🚀"
    assert streamed["by"] == bytes.fromhex("deadbeef")
    assert streamed["arr"] == [1, None, 3] and streamed["tarr"] == ["a,b", 'c"d', None]
    assert streamed["mood"] == "happy" and streamed["pos"] == 5
    assert streamed["big"] == "toast " * 5000
    # REPLICA IDENTITY DEFAULT: the unchanged TOASTed value is not sent -> placeholder + flag.
    toast = events[2].value
    assert toast["unchanged_toast"] == ["big"] and toast["after"]["big"] == UNAVAILABLE_VALUE
    assert toast["after"]["i"] == 7
    # REPLICA IDENTITY FULL: the full value is there.
    full = events[3].value
    assert full["unchanged_toast"] == [] and full["after"]["big"] == "toast " * 5000
    assert full["before"]["i"] == 7
    assert events[4].value["before"]["id"] == 1
