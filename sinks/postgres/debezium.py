"""Envelopes Debezium's PostgreSQL connector wrote: their change id and row-guard position (docs/event-format.md,
"Reading Debezium's topics").

Debezium's events carry no change id and no commit LSN. Both are derived here from what its `source` block does
carry, so that a replay, a second consumer group or a second region computes the same id and position for the same
event, and the ledger and the row guard work on them as on ours.

Position `(commit_lsn, lsn)`:

- a streamed change (`c`, `u`, `d`, `t`): `(max(sequence[0], lsn), lsn)`, `lsn` when `sequence` is absent or its
  first element null. Debezium 3.6 over pgoutput writes there the LSN of the transaction's first change (null for
  the first transaction after it started), never above the event's own `lsn`, so the first component is in effect
  `lsn`. That orders the changes of one row: PostgreSQL's row locks let a transaction write a row only after the
  previous writer of that row committed, so its change sits in the WAL above that commit.
- a snapshot read (`r`): `(0, lsn)`, `lsn` being the snapshot's LSN. Below every streamed change, including a
  transaction that began before the snapshot and committed after it (its `lsn` values can lie below the
  snapshot's and its `sequence[0]` can be null); a later snapshot's rows are above an earlier snapshot's.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from core.change_ids import ordered_uuid
from core.errors import PoisonMessageError

# Fixed for all time: ids minted under it are stored in destinations' ledgers.
NAMESPACE = uuid.UUID("3b0f5a52-7c1e-5d0b-a8d4-6e2f9c41b7a3")


def _canonical(value: Any) -> Any:
    """A key value in a form JSON writes the same way every time (bytes and decimals have no JSON form)."""
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, Decimal):
        return {"decimal": format(value, "f")}
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def _key_text(key: Any) -> str:
    """The record key as canonical JSON, its fields in the key schema's order (the decoder keeps that order)."""
    return json.dumps(_canonical(key), ensure_ascii=False, separators=(",", ":"), default=str)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def last_commit_lsn(source: Mapping[str, Any]) -> int | None:
    """`sequence[0]` of Debezium's PostgreSQL `source.sequence` (a JSON list of two LSNs in decimal), if any."""
    sequence = source.get("sequence")
    if not isinstance(sequence, str):
        return None
    try:
        parsed = json.loads(sequence)
    except ValueError:
        raise PoisonMessageError('source.sequence is not JSON (Debezium writes ["<commit lsn>","<lsn>"])') from None
    if not isinstance(parsed, list) or not parsed or parsed[0] is None:
        return None
    try:
        return int(parsed[0])
    except (TypeError, ValueError):
        raise PoisonMessageError("source.sequence[0] is not an LSN in decimal") from None


def position(source: Mapping[str, Any], op: str) -> tuple[int, int]:
    """The row-guard position `(commit_lsn, lsn)` of one Debezium event (see the module docstring)."""
    lsn = _int(source.get("lsn"))
    if lsn is None:
        raise PoisonMessageError("envelope has no change_id and its source block no lsn")
    if op == "r":
        return 0, lsn
    commit = last_commit_lsn(source)
    return (lsn if commit is None else max(commit, lsn)), lsn


def change_id(source: Mapping[str, Any], op: str, key: Any) -> uuid.UUID:
    """The deterministic id of one Debezium event: the ordered id (`core.change_ids`) at the event's `lsn` under
    `NAMESPACE` of

    - a snapshot read: `debezium:snapshot:{db}:{schema}.{table}:{lsn}:{key}`;
    - a streamed change: `debezium:{db}:{schema}.{table}:{lsn}:{txId}:{op}:{key}`,

    `key` being the record key as canonical JSON (`null` for none). `lsn` names the change's WAL record; the
    operation and the key tell apart the delete and the create an update of the key becomes (same `lsn`); `db`,
    `schema` and `table` keep changes of different tables apart. `sequence[0]` is left out: it says what the
    connector had seen, not what the change is, and Debezium re-emitting a transaction after its own restart must
    give the same ids. So is the connector's name (`source.name`, the topic prefix): two connectors capturing the
    same database dedupe against each other.
    """
    lsn = _int(source.get("lsn"))
    if lsn is None:
        raise PoisonMessageError("envelope has no change_id and its source block no lsn")
    where = f"{source.get('db') or ''}:{source.get('schema') or ''}.{source.get('table') or ''}"
    if op == "r":
        return ordered_uuid(NAMESPACE, lsn, f"debezium:snapshot:{where}:{lsn}:{_key_text(key)}")
    tx = _int(source.get("txId"))
    return ordered_uuid(NAMESPACE, lsn, f"debezium:{where}:{lsn}:{'' if tx is None else tx}:{op}:{_key_text(key)}")
