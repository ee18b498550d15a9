"""Date/time patterns in Java's `SimpleDateFormat` letters (what Kafka Connect users write), UTC.

Supported letters: `yyyy` `yy` `MM` `MMM` `dd` `HH` `hh` `mm` `ss` `SSS` (millis) `SSSSSS` (micros)
`a` `EEE` `Z`/`X`/`XXX` (UTC offset). Text in single quotes is literal; other punctuation is literal.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

_RUN = re.compile(r"'(?:[^']|'')*'|([A-Za-z])\1*|[^A-Za-z']+")

# letter run -> (strftime code or None for a custom part, strptime code)
_CODES: dict[str, str] = {
    "yyyy": "%Y",
    "yy": "%y",
    "MM": "%m",
    "MMM": "%b",
    "MMMM": "%B",
    "dd": "%d",
    "HH": "%H",
    "hh": "%I",
    "mm": "%M",
    "ss": "%S",
    "a": "%p",
    "EEE": "%a",
    "EEEE": "%A",
    "Z": "%z",
    "X": "%z",
    "XX": "%z",
    "XXX": "%z",
}
_FRACTIONS = {"S": 1, "SS": 2, "SSS": 3, "SSSSSS": 6}


def _literal(text: str) -> Callable[[datetime], str]:
    return lambda _moment: text


def _fraction(digits: int) -> Callable[[datetime], str]:
    return lambda moment: f"{moment.microsecond:06d}"[:digits]


def _strftime(code: str) -> Callable[[datetime], str]:
    return lambda moment: moment.strftime(code)


class TimeFormat:
    """A compiled pattern: `format(datetime) -> str` and `parse(str) -> datetime` (UTC when no offset)."""

    def __init__(self, pattern: str) -> None:
        if not pattern:
            raise ValueError("empty date format")
        self.pattern = pattern
        parts: list[Callable[[datetime], str]] = []
        parse = ""
        for match in _RUN.finditer(pattern):
            run = match.group()
            if run.startswith("'"):
                literal = run[1:-1].replace("''", "'") if run != "''" else "'"
                parts.append(_literal(literal))
                parse += literal.replace("%", "%%")
            elif run[0].isalpha():
                if run in _FRACTIONS:
                    digits = _FRACTIONS[run]
                    parts.append(_fraction(digits))
                    parse += "%f"
                elif run in _CODES:
                    code = _CODES[run]
                    parts.append(_strftime(code))
                    parse += code
                else:
                    raise ValueError(f"unsupported date pattern letters `{run}` in `{pattern}`")
            else:
                parts.append(_literal(run))
                parse += run.replace("%", "%%")
        self._parts = tuple(parts)
        self._parse = parse

    def format(self, moment: datetime) -> str:
        return "".join(part(moment) for part in self._parts)

    def parse(self, text: str) -> datetime:
        moment = datetime.strptime(text, self._parse)
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def to_micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
