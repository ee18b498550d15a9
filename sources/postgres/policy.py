"""What to do with the replication slot at startup: the slot / snapshot-mode decision, without I/O.

Inputs: the slot as the server reports it (or None), our own record of it in `cdc.source_state` (or None),
the configured `snapshot.mode`. Output: a `SlotPlan` the source carries out. The rules (docs/source.md):

- an existing slot whose snapshot is still `running` belongs to an interrupted snapshot: its exported snapshot
  died with its connection, so the slot is dropped and the snapshot restarts on a new one;
- an existing slot we have no record of is adopted as it is (recorded as `skipped`: no snapshot);
- a slot that disappeared after we used it is lost (changes may be missing), unless `when_needed` says to
  re-snapshot, or `initial_only` already finished its snapshot (and dropped the slot on purpose);
- no slot and no finished record: create it, with a snapshot unless the mode is `never`;
- `initial_only` never streams: after its snapshot the slot is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sources.postgres.config import SnapshotMode
from sources.postgres.slots import SlotInfo, SlotLostError, SlotState, check_slot


class SlotAction(StrEnum):
    RESUME = "resume"
    """Stream on from the existing slot's confirmed position."""
    ADOPT = "adopt"
    """An existing slot we never recorded: record it (no snapshot), then stream on from it."""
    CREATE = "create"
    """No slot yet: create it."""
    RESTART_SNAPSHOT = "restart_snapshot"
    """The slot of an interrupted snapshot: drop it and create a new one with a new snapshot."""
    RESNAPSHOT = "resnapshot"
    """The slot is missing and `when_needed` asks for a new snapshot: create it with one."""
    NOTHING = "nothing"
    """`initial_only` finished its snapshot earlier and dropped the slot: nothing to do."""


@dataclass(frozen=True, slots=True)
class SlotPlan:
    action: SlotAction
    snapshot: bool
    """A slot is created with an exported snapshot, and the snapshot is taken."""
    stream: bool
    """Stream after the snapshot (or at once); False for `initial_only`, which drops the slot instead."""


def decide(slot: SlotInfo | None, recorded: SlotState | None, mode: SnapshotMode, *, dbname: str) -> SlotPlan:
    """The plan for this start; raises when the slot is unusable or lost (see `check_slot`, `SlotLostError`)."""
    stream = mode is not SnapshotMode.INITIAL_ONLY
    if slot is not None:
        check_slot(slot, dbname)
        if recorded is not None and recorded.snapshot_state == "running":
            return SlotPlan(SlotAction.RESTART_SNAPSHOT, snapshot=True, stream=stream)
        if recorded is None:
            return SlotPlan(SlotAction.ADOPT, snapshot=False, stream=stream)
        return SlotPlan(SlotAction.RESUME, snapshot=False, stream=stream)
    if recorded is not None and recorded.snapshot_state != "running":
        if mode is SnapshotMode.WHEN_NEEDED:
            return SlotPlan(SlotAction.RESNAPSHOT, snapshot=True, stream=stream)
        if mode is SnapshotMode.INITIAL_ONLY and recorded.snapshot_state == "done":
            return SlotPlan(SlotAction.NOTHING, snapshot=False, stream=False)
        raise SlotLostError(
            f"replication slot {recorded.slot_name!r} disappeared after the connector used it: changes since "
            f"{recorded.consistent_point} may be missing from Kafka",
            hint="re-snapshot: set snapshot.mode: when_needed (or delete the slot's row from cdc.source_state "
            "and use initial); the slot is never re-created silently",
        )
    snapshot = mode in (SnapshotMode.INITIAL, SnapshotMode.INITIAL_ONLY, SnapshotMode.WHEN_NEEDED)
    return SlotPlan(SlotAction.CREATE, snapshot=snapshot, stream=stream)
