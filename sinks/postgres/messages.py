"""Reading consumed Kafka messages: their coordinates, their headers, and the tail a key change leaves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from confluent_kafka import Message

from core.records import NEW_KEY_HEADER

Partition = tuple[str, int]
"""(topic, partition)."""


def coordinates(message: Message) -> tuple[str, int, int]:
    """(topic, partition, offset) of a consumed message (always set on messages without error)."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None and partition is not None and offset is not None
    return topic, partition, offset


def where(message: Message) -> str:
    """`topic[partition]@offset`, as logs and errors name a message."""
    topic, partition, offset = coordinates(message)
    return f"{topic}[{partition}]@{offset}"


def headers_of(message: Message) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    raw: Any = message.headers() or ()
    for name, value in raw:
        out.append((name, value.encode() if isinstance(value, str) else (value or b"")))
    return out


def key_change_tail(messages: Sequence[Message], partition: Partition, index: int) -> list[int]:
    """The indexes of `partition`'s last messages (its last at `index`) when they are the delete of a key change
    and its tombstone; empty when the partition ends otherwise."""
    tail: list[int] = []
    for i in range(index, -1, -1):
        message = messages[i]
        if (message.topic(), message.partition()) != partition:
            continue
        if _is_key_change_delete(message):
            tail.append(i)
            if message.value() is not None:
                return tail  # the delete itself
        elif i == index and message.value() is None:
            tail.append(i)  # a tombstone that did not copy the delete's headers
        else:
            return []
    return []


def _is_key_change_delete(message: Message) -> bool:
    headers = message.headers()
    if not headers:
        return False
    if isinstance(headers, dict):
        return NEW_KEY_HEADER in headers
    return any(item[0] == NEW_KEY_HEADER for item in headers)
