"""Unconstrained numerics arrive as Debezium VariableScaleDecimal records and must convert exactly."""

from __future__ import annotations

from decimal import Decimal

import pytest

from sinks.postgres.types import _variable_decimal

pytestmark = pytest.mark.unit


def _encode(value: Decimal) -> dict[str, object]:
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    unscaled = int("".join(map(str, digits))) * (-1 if sign else 1)
    return {"scale": -exponent, "value": unscaled.to_bytes(64, "big", signed=True)}


@pytest.mark.parametrize(
    "text",
    [
        "3.141592653589793238462643383279502884197",
        "-0.000000000000000000000000000000000001",
        "100000000000000000000000000000007",
        "0",
    ],
)
def test_variable_scale_decimal_is_exact(text: str) -> None:
    converted = _variable_decimal(_encode(Decimal(text)))
    assert converted.as_tuple() == Decimal(text).as_tuple()
