"""Turning changes into encoded records in worker processes, producing them in WAL order.

The per-event work (text -> Avro values, envelope, change id, Avro encoding) is most of the source's CPU
and holds the GIL, so it moves to `workers` processes. The reading process only frames the stream: it
decodes Begin/Commit/Relation/Truncate, hands Insert/Update/Delete payloads to the workers in batches
(round-robin, so batch `n` goes to worker `n % workers` and results come back in order without a reorder
buffer), and produces each batch's records in sequence. Relation messages are broadcast after the pending
batch is sent, so every change is typed with the relation that preceded it.

Acknowledgement tracking stays exact: a batch holds one pending count on each transaction slot it carries
until its records are produced, so a transaction cannot be confirmed while part of it is still with a worker.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
from typing import Any

import psycopg

from core.delivery import KafkaDelivery, TxSlot
from core.errors import ConnectorError, FatalError
from core.timeouts import libpq_options
from schemas.registry import SchemaRegistryConfig
from schemas.serde import RegistrySerializer
from sources.postgres.change_id import ChangeIds, namespace_for
from sources.postgres.config import PostgresSourceConfig
from sources.postgres.events import ChangeEncoder, EventFactory, TableEvents
from sources.postgres.protocol import Truncate, decode_message
from sources.postgres.renames import Aliases

log = logging.getLogger(__name__)

Item = tuple[bytes, int, int, int, int, int]
"""(pgoutput payload, lsn, commit_lsn, ordinal, xid, commit_ms)"""
Produced = tuple[str, bytes | None, bytes | None, tuple[tuple[str, bytes], ...]]
"""(topic, key, value, headers) of one encoded record."""


class WorkerError(FatalError):
    """A worker process failed or died."""


def _worker_main(
    conn: multiprocessing.connection.Connection,
    *,
    source: PostgresSourceConfig,
    registry: SchemaRegistryConfig,
    connector_name: str,
    system_id: str,
    db: str,
) -> None:
    """Worker loop: relations update the table map; batches come back as encoded records per item."""
    pg = psycopg.connect(
        source.dsn.get_secret_value(),
        autocommit=True,
        application_name="cdc-connector-worker",
        **libpq_options(source.connect_timeout_s),
    )
    serializer = RegistrySerializer(registry)
    encoder = ChangeEncoder(serializer.schema_id)
    factory = EventFactory(
        source, connector_name=connector_name, conn=pg, ids=ChangeIds(namespace_for(system_id, db)), db=db
    )
    relations: dict[int, TableEvents] = {}
    relation_error: Exception | None = None
    try:
        conn.send(("ready",))
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return  # the reading process is gone (stopped or killed)
            if message is None:
                return
            kind = message[0]
            if kind == "relation":
                _, relation, aliases = message
                try:
                    relations[relation.relation_id] = factory.for_relation(relation, aliases)
                except Exception as exc:  # reported with the next batch, which needs this relation
                    relation_error = exc
                continue
            _, seq, items = message
            try:
                if relation_error is not None:
                    raise relation_error
                out: list[list[Produced]] = []
                counts: dict[tuple[str, str], int] = {}
                for payload, lsn, commit_lsn, ordinal, xid, commit_ms in items:
                    change = decode_message(payload)
                    produced: list[Produced] = []
                    if type(change) is Truncate:
                        for index, relation_id in enumerate(change.relation_ids):
                            if source.emit_truncate:
                                events = relations[relation_id]
                                truncate = events.truncate(
                                    lsn=lsn, commit_lsn=commit_lsn, ordinal=ordinal + index, xid=xid,
                                    commit_ms=commit_ms,
                                )  # fmt: skip
                                produced += [(events.topic, *e) for e in encoder.encode(events, (truncate,))]
                    else:
                        events = relations[change.relation_id]  # type: ignore[union-attr]
                        changes = events.changes(
                            change,  # type: ignore[arg-type]
                            lsn=lsn, commit_lsn=commit_lsn, ordinal=ordinal, xid=xid, commit_ms=commit_ms,
                        )  # fmt: skip
                        produced = [(events.topic, *e) for e in encoder.encode(events, changes)]
                        key = (events.table_name, changes[-1].op)
                        counts[key] = counts.get(key, 0) + 1
                    out.append(produced)
                conn.send(("ok", seq, out, counts))
            except OSError:
                return  # the reading process is gone
            except Exception as exc:
                hint = exc.hint if isinstance(exc, ConnectorError) else None
                conn.send(("error", seq, f"{type(exc).__name__}: {exc}", hint))
                return
    finally:
        serializer.close()
        pg.close()


class WorkerPool:
    """The reading process's side: batches out, encoded records back, produced in order."""

    def __init__(
        self,
        source: PostgresSourceConfig,
        registry: SchemaRegistryConfig,
        *,
        connector_name: str,
        system_id: str,
        db: str,
        workers: int,
        delivery: KafkaDelivery,
        counts: dict[tuple[str, str], int],
        batch_size: int = 500,
        in_flight_per_worker: int = 4,
    ) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a process that runs librdkafka threads
        self._conns: list[multiprocessing.connection.Connection] = []
        self._procs: list[Any] = []
        for index in range(workers):
            ours, theirs = context.Pipe(duplex=True)
            process = context.Process(
                target=_worker_main,
                args=(theirs,),
                kwargs={
                    "source": source,
                    "registry": registry,
                    "connector_name": connector_name,
                    "system_id": system_id,
                    "db": db,
                },
                name=f"cdc-encoder-{index}",
                daemon=True,
            )
            process.start()
            theirs.close()
            self._conns.append(ours)
            self._procs.append(process)
        for conn in self._conns:
            try:
                if not conn.poll(120) or conn.recv() != ("ready",):
                    raise WorkerError("an encoder worker did not start", hint="see its log lines above")
            except EOFError as exc:
                self.close()
                raise WorkerError("an encoder worker failed to start", hint="see its log lines above") from exc
        self._delivery = delivery
        self._counts = counts
        self._batch_size = batch_size
        self._max_in_flight = workers * in_flight_per_worker
        self._items: list[Item] = []
        self._slots: list[TxSlot] = []
        self._sent_seq = 0
        self._next_seq = 0
        self._batches: dict[int, list[TxSlot]] = {}

    def relation(self, relation: Any, aliases: Aliases) -> None:
        """A Relation message and the aliases the reading process found for it (workers must agree on them)."""
        self.send_partial()
        for conn in self._conns:
            conn.send(("relation", relation, dict(aliases)))

    def add(self, item: Item, slot: TxSlot) -> None:
        self._items.append(item)
        self._slots.append(slot)
        if len(self._items) >= self._batch_size:
            self.send_partial()

    def send_partial(self) -> None:
        if not self._items:
            return
        while self._sent_seq - self._next_seq >= self._max_in_flight:
            self._receive_one()
        slots = self._slots
        for slot in set(slots):
            slot.pending += 1  # held until this batch's records are produced
        seq = self._sent_seq
        self._conns[seq % len(self._conns)].send(("batch", seq, self._items))
        self._batches[seq] = slots
        self._sent_seq += 1
        self._items = []
        self._slots = []

    def drain(self) -> None:
        """Produce every batch whose result has arrived (in order), without waiting."""
        while self._next_seq < self._sent_seq and self._conns[self._next_seq % len(self._conns)].poll(0):
            self._receive_one()

    def finish(self) -> None:
        """Send the partial batch and produce everything still with the workers."""
        self.send_partial()
        while self._next_seq < self._sent_seq:
            self._receive_one()

    @property
    def idle(self) -> bool:
        return not self._items and self._next_seq == self._sent_seq

    def _receive_one(self) -> None:
        seq = self._next_seq
        conn = self._conns[seq % len(self._conns)]
        try:
            message = conn.recv()
        except (EOFError, OSError) as exc:
            raise WorkerError("an encoder worker process died", hint="see its log lines above; restart") from exc
        if message[0] == "error":
            raise WorkerError(f"encoder worker failed: {message[2]}", hint=message[3] or "restart after fixing")
        _, got, results, counts = message
        assert got == seq, f"worker result out of order: {got} != {seq}"
        slots = self._batches.pop(seq)
        produce = self._delivery.produce_raw
        for slot, records in zip(slots, results, strict=True):
            for topic, key, value, headers in records:
                produce(topic, key, value, headers, slot)
        for slot in set(slots):
            slot.pending -= 1
        for key, count in counts.items():
            self._counts[key] = self._counts.get(key, 0) + count
        self._next_seq += 1

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for process in self._procs:
            process.join(5)
            if process.is_alive():
                process.terminate()
                process.join(5)
        for conn in self._conns:
            conn.close()

