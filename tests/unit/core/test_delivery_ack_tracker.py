"""AckTracker: the confirmable position is the end of the newest fully acknowledged prefix."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from core.delivery import AckTracker
from core.errors import DeliveryError

pytestmark = pytest.mark.unit


def test_prefix_rule() -> None:
    tracker = AckTracker()
    first, second, third = tracker.open(), tracker.open(), tracker.open()
    for slot in (first, second, third):
        slot.pending += 2
    tracker.close(first, 100)
    tracker.close(second, 200)
    assert tracker.confirmable() == 0
    second.on_delivery(None, None)  # type: ignore[arg-type]
    second.on_delivery(None, None)  # type: ignore[arg-type]
    assert tracker.confirmable() == 0  # the first transaction is still in flight
    first.on_delivery(None, None)  # type: ignore[arg-type]
    first.on_delivery(None, None)  # type: ignore[arg-type]
    assert tracker.confirmable() == 200
    third.on_delivery(None, None)  # type: ignore[arg-type]
    third.on_delivery(None, None)  # type: ignore[arg-type]
    assert tracker.confirmable() == 200  # acknowledged but not closed: more records may follow
    tracker.close(third, 300)
    assert tracker.confirmable() == 300
    assert tracker.open_slots == 0


def test_transaction_without_records_counts_as_done() -> None:
    tracker = AckTracker()
    slot = tracker.open()
    tracker.close(slot, 42)
    assert tracker.confirmable() == 42


def test_positionless_slots_do_not_move_the_position_back() -> None:
    tracker = AckTracker()
    tracker.close(tracker.open(), 500)
    tracker.close(tracker.open(), 0)  # a snapshot chunk
    assert tracker.confirmable() == 500


def test_delivery_error_is_sticky() -> None:
    tracker = AckTracker()
    slot = tracker.open()
    slot.pending = 1
    tracker.close(slot, 10)
    slot.on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), None)  # type: ignore[arg-type]
    with pytest.raises(DeliveryError):
        tracker.confirmable()
    with pytest.raises(DeliveryError):
        tracker.confirmable()
