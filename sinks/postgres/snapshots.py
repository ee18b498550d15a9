"""Whether a snapshot-complete marker removes what its snapshot did not write (docs/sink.md, "Redone snapshots").

A marker (`Change.snapshot_complete`) is applied like a truncate, guarded by its position: every row of the
destination table positioned before the snapshot goes (hard) or is marked deleted (soft). That is right when the
table holds one source table's rows only. A table fed by several source tables (shards merged by routing) would
lose the other sources' rows, so the removal is skipped, with a warning, once the sink has seen changes of more
than one source table for that destination since it started; `snapshot_cleanup: false` turns it off altogether.
In append mode a marker changes nothing (it is no change of the data). Skipped or not, its id is recorded.
"""

from __future__ import annotations

import logging

from sinks.postgres.config import PostgresSinkConfig
from sinks.postgres.tables import TableName

log = logging.getLogger(__name__)

Origin = tuple[str, str, str]
"""(topic, source schema, source table) of a change."""


class SnapshotCleanup:
    """Remembers which source tables each destination table was fed from since start; decides on markers."""

    def __init__(self, config: PostgresSinkConfig) -> None:
        self._enabled = config.mode == "upsert" and config.snapshot_cleanup
        self._origins: dict[TableName, set[Origin]] = {}
        self._warned: set[TableName] = set()

    def saw(self, table: TableName, origin: Origin) -> None:
        """A change of `origin` is meant for `table`."""
        origins = self._origins.get(table)
        if origins is None:
            self._origins[table] = {origin}
        else:
            origins.add(origin)

    def merged(self, table: TableName) -> bool:
        """Whether the sink has seen several source tables feed `table`."""
        return len(self._origins.get(table, ())) > 1

    def applies(self, table: TableName) -> bool:
        """Whether a marker for `table` (already `saw`) removes rows; False: it is only recorded as seen."""
        if not self._enabled:
            return False
        origins = self._origins.get(table, set())
        if len(origins) <= 1:
            return True
        if table not in self._warned:
            self._warned.add(table)
            log.warning(
                "destination table %s is fed by %d source tables (%s): a snapshot of one of them does not remove "
                "rows it did not write, since they may be the others' (set sink.snapshot_cleanup: false to silence "
                "this; see docs/sink.md, Redone snapshots)",
                table, len(origins), ", ".join(sorted(f"{s}.{t} from {topic}" for topic, s, t in origins)),
            )  # fmt: skip
        return False
