"""The slot / snapshot-mode decision, branch by branch: the slot as found, our record of it, the mode."""

from __future__ import annotations

import pytest

from core.errors import PrerequisiteError
from core.positions import Lsn
from sources.postgres.config import SnapshotMode
from sources.postgres.policy import SlotAction, SlotPlan, decide
from sources.postgres.slots import SlotLostError, SlotState
from tests.support.slots import slot_info

pytestmark = pytest.mark.unit

ALL_MODES = list(SnapshotMode)
STREAMING_MODES = [m for m in SnapshotMode if m is not SnapshotMode.INITIAL_ONLY]


def recorded(snapshot_state: str) -> SlotState:
    return SlotState("s", Lsn(0x16_0000_0000), snapshot_state, {})


# --- the slot exists ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ALL_MODES)
def test_existing_slot_of_an_interrupted_snapshot_is_recreated_with_a_new_snapshot(mode: SnapshotMode) -> None:
    plan = decide(slot_info(), recorded("running"), mode, dbname="db")
    assert plan == SlotPlan(SlotAction.RESTART_SNAPSHOT, snapshot=True, stream=mode is not SnapshotMode.INITIAL_ONLY)


@pytest.mark.parametrize("mode", STREAMING_MODES)
def test_existing_slot_never_recorded_is_adopted_without_snapshot(mode: SnapshotMode) -> None:
    assert decide(slot_info(), None, mode, dbname="db") == SlotPlan(SlotAction.ADOPT, snapshot=False, stream=True)


@pytest.mark.parametrize("mode", STREAMING_MODES)
@pytest.mark.parametrize("state", ["done", "skipped"])
def test_existing_recorded_slot_is_resumed(mode: SnapshotMode, state: str) -> None:
    plan = decide(slot_info(), recorded(state), mode, dbname="db")
    assert plan == SlotPlan(SlotAction.RESUME, snapshot=False, stream=True)


@pytest.mark.parametrize("state", [None, "done", "skipped"])
def test_initial_only_with_an_existing_slot_and_no_snapshot_running_does_not_stream(state: str | None) -> None:
    plan = decide(slot_info(), None if state is None else recorded(state), SnapshotMode.INITIAL_ONLY, dbname="db")
    assert not plan.snapshot and not plan.stream
    assert plan.action is (SlotAction.ADOPT if state is None else SlotAction.RESUME)


def test_invalidated_slot_is_refused_before_anything_else() -> None:
    for state in (None, recorded("running"), recorded("done")):
        with pytest.raises(SlotLostError, match="wal_status = lost"):
            decide(slot_info(wal_status="lost"), state, SnapshotMode.WHEN_NEEDED, dbname="db")


def test_slot_of_another_plugin_or_database_is_refused() -> None:
    with pytest.raises(PrerequisiteError):
        decide(slot_info(plugin="test_decoding"), None, SnapshotMode.INITIAL, dbname="db")
    with pytest.raises(PrerequisiteError):
        decide(slot_info(), recorded("running"), SnapshotMode.INITIAL, dbname="other")


# --- the slot is missing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "snapshot"),
    [
        (SnapshotMode.INITIAL, True),
        (SnapshotMode.INITIAL_ONLY, True),
        (SnapshotMode.WHEN_NEEDED, True),
        (SnapshotMode.NEVER, False),
    ],
)
@pytest.mark.parametrize("state", [None, "running"])
def test_missing_slot_never_completed_is_created(mode: SnapshotMode, snapshot: bool, state: str | None) -> None:
    plan = decide(None, None if state is None else recorded(state), mode, dbname="db")
    assert plan == SlotPlan(SlotAction.CREATE, snapshot=snapshot, stream=mode is not SnapshotMode.INITIAL_ONLY)


@pytest.mark.parametrize("state", ["done", "skipped"])
def test_missing_slot_after_use_is_resnapshotted_when_needed(state: str) -> None:
    plan = decide(None, recorded(state), SnapshotMode.WHEN_NEEDED, dbname="db")
    assert plan == SlotPlan(SlotAction.RESNAPSHOT, snapshot=True, stream=True)


def test_initial_only_whose_snapshot_is_done_has_nothing_to_do() -> None:
    plan = decide(None, recorded("done"), SnapshotMode.INITIAL_ONLY, dbname="db")
    assert plan == SlotPlan(SlotAction.NOTHING, snapshot=False, stream=False)


@pytest.mark.parametrize(
    ("mode", "state"),
    [
        (SnapshotMode.INITIAL, "done"),
        (SnapshotMode.INITIAL, "skipped"),
        (SnapshotMode.NEVER, "done"),
        (SnapshotMode.NEVER, "skipped"),
        (SnapshotMode.INITIAL_ONLY, "skipped"),
    ],
)
def test_missing_slot_after_use_is_lost_and_never_recreated_silently(mode: SnapshotMode, state: str) -> None:
    with pytest.raises(SlotLostError) as caught:
        decide(None, recorded(state), mode, dbname="db")
    text = str(caught.value)
    assert "'s' disappeared after the connector used it" in text
    assert "changes since 16/0 may be missing" in text
    assert "when_needed" in text
