"""Timestamps parsed in C (`datetime.fromisoformat`) equal the full parser on every shape PostgreSQL prints."""

from __future__ import annotations

import random

import pytest

from schemas.types import _parse_timestamp, _parse_timestamptz, _timestamp_micros

pytestmark = pytest.mark.unit


def _texts(rng: random.Random) -> str:
    year = rng.choice([1, 2, 999, 1969, 1970, 2024, 9999, rng.randint(1, 9999)])
    text = f"{year:04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
    text += f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
    if rng.random() < 0.6:
        text += "." + f"{rng.randint(0, 999999):06d}"[: rng.randint(1, 6)]
    return text


_OFFSETS = ["+00", "-00", "+05", "-07", "+05:30", "-03:30", "+14", "-12", "+00:19:32", "-00:25:21"]
_ODD = ["infinity", "-infinity", "0001-01-01 00:00:00 BC", "2024-02-29 12:00:00 BC", "12345-06-07 01:02:03",
        "294276-12-31 23:59:59.999999"]  # fmt: skip


def test_timestamps_match_the_full_parser() -> None:
    rng = random.Random(5)
    for _ in range(20_000):
        text = _texts(rng)
        assert _parse_timestamp(text) == _timestamp_micros(text, with_offset=False), text
        tz = text + rng.choice(_OFFSETS)
        assert _parse_timestamptz(tz) == _timestamp_micros(tz, with_offset=True), tz
    for text in _ODD:
        assert _parse_timestamp(text) == _timestamp_micros(text, with_offset=False), text
        tz = text if "infinity" in text else text.replace(" BC", "+02 BC") if "BC" in text else text + "-05"
        assert _parse_timestamptz(tz) == _timestamp_micros(tz, with_offset=True), tz
