"""Slot checks that need no server: invalidated and foreign slots are refused with the fix."""

from __future__ import annotations

import pytest

from core.errors import PrerequisiteError
from sources.postgres.slots import SlotLostError, check_slot
from tests.support.slots import slot_info

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("wal_status", ["reserved", "extended", "unreserved", None])
def test_pgoutput_slot_of_this_database_is_usable_whatever_its_wal_status_short_of_lost(wal_status: str | None) -> None:
    usable = slot_info(wal_status=wal_status, active=True, active_pid=42)
    assert check_slot(usable, "db") is None
    # The same slot seen from another database is refused: the check looks at the slot, not only at wal_status.
    with pytest.raises(PrerequisiteError, match="not a pgoutput slot of database 'other'"):
        check_slot(usable, "other")


def test_lost_slot_is_fatal_and_explains_the_resnapshot() -> None:
    with pytest.raises(SlotLostError) as caught:
        check_slot(slot_info(wal_status="lost"), "db")
    text = str(caught.value)
    assert "changes are missing" in text
    assert "pg_drop_replication_slot('s')" in text and "when_needed" in text


def test_slot_of_another_plugin_or_database_is_refused() -> None:
    with pytest.raises(PrerequisiteError):
        check_slot(slot_info(plugin="wal2json"), "db")
    with pytest.raises(PrerequisiteError):
        check_slot(slot_info(database="other"), "db")
