"""Whether a message's schema id belongs to the topic it was read from.

A schema id says nothing about which table it describes: a registry that lost its data hands out ids 1, 2, 3...
again, and an id already written to Kafka then names another topic's schema. Such a message decodes (often
without error) into the wrong columns. The registry says which subjects an id is registered under; an id must be
under one of its topic's subjects (`schemas.registry.topic_subjects`). The answer is looked up once per
(schema id, topic, key or value) and kept, so the check costs a set lookup per message after that.
"""

from __future__ import annotations

import threading
from typing import Protocol

from core.errors import PoisonMessageError
from core.records import AvroSchema
from schemas.registry import topic_subjects


class SubjectsOf(Protocol):
    """What the check needs of a registry (`schemas.registry.SchemaRegistry`)."""

    def subjects_of(self, schema_id: int) -> list[str]: ...


class SubjectMismatchError(PoisonMessageError):
    """A message's schema id is not registered under any subject of its topic."""


class SubjectCheck:
    """Refuses schema ids that belong to another topic's subjects; thread-safe.

    An unreachable registry raises its RetriableError (nothing is decided or kept then).
    """

    def __init__(self, registry: SubjectsOf) -> None:
        self._registry = registry
        self._lock = threading.Lock()
        self._accepted: set[tuple[int, str, bool]] = set()
        self._refused: dict[tuple[int, str, bool], SubjectMismatchError] = {}

    def check(self, topic: str, schema_id: int, schema: AvroSchema, is_key: bool) -> None:
        """Return if `schema_id` is registered under a subject of `topic`, else raise SubjectMismatchError."""
        key = (schema_id, topic, is_key)
        if key in self._accepted:  # only ever added to: a lock-free read is safe
            return
        refused = self._refused.get(key)
        if refused is None:
            refused = self._decide(topic, schema_id, schema, is_key)
            with self._lock:
                if refused is None:
                    self._accepted.add(key)
                else:
                    self._refused[key] = refused
        if refused is not None:
            raise refused

    def _decide(self, topic: str, schema_id: int, schema: AvroSchema, is_key: bool) -> SubjectMismatchError | None:
        expected = topic_subjects(topic, is_key, schema.name)
        found = self._registry.subjects_of(schema_id)
        if any(subject in expected for subject in found):
            return None
        what = "key" if is_key else "value"
        belongs = f"belongs to subjects {', '.join(sorted(found))}" if found else "is registered under no subject"
        return SubjectMismatchError(
            f"the {what} has schema id {schema_id}, which {belongs}, not to topic {topic} "
            f"(expected {' or '.join(expected)})",
            hint="the registry lost its schemas and handed their ids out again, or the message was written "
            "against another registry: restore the registry's data; a producer using RecordNameStrategy needs "
            "`sink.errors.check_schema_subjects: false`",
        )
