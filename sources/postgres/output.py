"""Where the source's records go: through the source-side transforms, into Kafka, in their transaction's slot."""

from __future__ import annotations

from core.delivery import KafkaDelivery, TxSlot
from core.records import Record, RecordChain


class RecordOutput:
    """Produces records after the configured transforms (an empty chain passes them through untouched)."""

    def __init__(self, chain: RecordChain, delivery: KafkaDelivery) -> None:
        self._chain = chain
        self._delivery = delivery
        self.passthrough = not len(chain)
        """No transforms: records reach Kafka as built, so changes may be encoded straight to wire bytes."""

    def produce_all(self, records: list[Record], slot: TxSlot) -> None:
        chain = self._chain
        produce = self._delivery.produce
        for record in records:
            for out in (record,) if self.passthrough else chain.apply(record):
                produce(out, slot)

    def produce_everywhere(self, record: Record, slot: TxSlot) -> None:
        """`record` (after transforms) to every partition of its topic: each partition's consumer then meets it
        after that partition's share of the records produced before it."""
        delivery = self._delivery
        for out in (record,) if self.passthrough else self._chain.apply(record):
            for partition in range(delivery.partitions(out.topic)):
                delivery.produce(out, slot, partition=partition)
