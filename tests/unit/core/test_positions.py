"""The Lsn value object."""

from __future__ import annotations

import pytest

from core.positions import Lsn

pytestmark = pytest.mark.unit


def test_lsn_round_trips_postgres_text() -> None:
    lsn = Lsn.parse("16/B374D848")
    assert lsn.value == (0x16 << 32) | 0xB374D848
    assert str(lsn) == "16/B374D848"


def test_lsn_orders_totally_and_has_invalid() -> None:
    assert Lsn.INVALID < Lsn.parse("0/1") < Lsn.parse("1/0")
    assert not Lsn.INVALID.is_valid
    assert Lsn.parse("0/10") + 16 == Lsn.parse("0/20")
    assert Lsn.parse("1/0") - Lsn.parse("0/FFFFFFFF") == 1


@pytest.mark.parametrize("text", ["", "16", "16/", "/1", "G/1", "123456789/0"])
def test_lsn_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="not an LSN"):
        Lsn.parse(text)


def test_lsn_range() -> None:
    with pytest.raises(ValueError):
        Lsn(-1)
    with pytest.raises(ValueError):
        Lsn(1 << 64)

