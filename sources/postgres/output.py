"""Where the source's records go: through the source-side transforms, into Kafka, in their transaction's slot."""

from __future__ import annotations

from collections.abc import Sequence

from core.delivery import KafkaDelivery, TxSlot
from core.records import Record, RecordChain
from sources.postgres.events import ChangeEncoder, ChangeEvent, TableEvents


class RecordOutput:
    """Produces records after the configured transforms (an empty chain passes them through untouched)."""

    def __init__(self, chain: RecordChain, delivery: KafkaDelivery) -> None:
        self._chain = chain
        self._delivery = delivery
        self.passthrough = not len(chain)
        """No transforms: records reach Kafka as built, so changes may be encoded straight to wire bytes."""
        self._encoder: ChangeEncoder | None = None
        self._encoder_known = False

    def produce_all(self, records: list[Record], slot: TxSlot) -> None:
        chain = self._chain
        produce = self._delivery.produce
        for record in records:
            for out in (record,) if self.passthrough else chain.apply(record):
                produce(out, slot)

    def produce_events(self, table: TableEvents, events: Sequence[ChangeEvent], slot: TxSlot) -> None:
        """Snapshot rows (initial or incremental) of `table`: with no transforms, straight to wire-format bytes
        through `ChangeEncoder` (its generated writer, the bytes of the records), else as records."""
        encoder = self._encoder
        if not self._encoder_known:
            schema_ids = self._delivery.schema_ids if self.passthrough else None
            encoder = self._encoder = None if schema_ids is None else ChangeEncoder(schema_ids)
            self._encoder_known = True
        if encoder is None:
            self.produce_all(table.records(events), slot)
            return
        produce = self._delivery.produce_raw
        topic = table.topic
        for key, value, headers in encoder.encode(table, events):
            produce(topic, key, value, headers, slot)

    def produce_everywhere(self, record: Record, slot: TxSlot) -> None:
        """`record` (after transforms) to every partition of its topic: each partition's consumer then meets it
        after that partition's share of the records produced before it."""
        delivery = self._delivery
        for out in (record,) if self.passthrough else self._chain.apply(record):
            for partition in range(delivery.partitions(out.topic)):
                delivery.produce(out, slot, partition=partition)
