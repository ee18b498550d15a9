"""The schema-subject check: an id must be registered under a subject of the topic its message came from."""

from __future__ import annotations

import pytest

from core.errors import PoisonMessageError, RetriableError
from core.records import AvroSchema
from schemas.registry import topic_subjects
from schemas.subjects import SubjectCheck, SubjectMismatchError

pytestmark = pytest.mark.unit

VALUE = AvroSchema.of({"type": "record", "name": "Envelope", "namespace": "p.public.a", "fields": []})
KEY = AvroSchema.of({"type": "record", "name": "Key", "namespace": "p.public.a", "fields": []})


class Subjects:
    """Subjects per schema id; `down` simulates an unreachable registry; counts lookups."""

    def __init__(self, by_id: dict[int, list[str]]) -> None:
        self.by_id = by_id
        self.down = False
        self.lookups = 0

    def subjects_of(self, schema_id: int) -> list[str]:
        self.lookups += 1
        if self.down:
            raise RetriableError("schema registry at http://r is unreachable")
        return self.by_id.get(schema_id, [])


def test_topic_subjects_follow_topic_name_and_topic_record_name_strategies() -> None:
    assert topic_subjects("p.public.a", False, "p.public.a.Envelope") == (
        "p.public.a-value",
        "p.public.a-p.public.a.Envelope",
    )
    assert topic_subjects("p.public.a", True, None) == ("p.public.a-key",)


def test_ids_of_the_topics_subjects_pass_and_are_looked_up_once() -> None:
    registry = Subjects(
        {1: ["p.public.a-key"], 2: ["p.public.a-value", "other-value"], 3: ["p.public.a-p.public.a.Envelope"]}
    )
    check = SubjectCheck(registry)
    for _ in range(3):
        check.check("p.public.a", 1, KEY, True)
        check.check("p.public.a", 2, VALUE, False)
        check.check("p.public.a", 3, VALUE, False)
    assert registry.lookups == 3


def test_an_id_of_another_topics_subject_is_refused_naming_id_and_subjects() -> None:
    registry = Subjects({5: ["p.public.b-value", "q.public.c-value"], 6: ["p.public.a-value"]})
    check = SubjectCheck(registry)
    with pytest.raises(SubjectMismatchError) as caught:
        check.check("p.public.a", 5, VALUE, False)
    assert isinstance(caught.value, PoisonMessageError)
    message = caught.value.message
    assert "schema id 5" in message
    assert "p.public.b-value, q.public.c-value" in message
    assert "p.public.a-value" in message
    assert "check_schema_subjects" in (caught.value.hint or "")
    # A value's subject does not make an id right for the key, nor an unknown id right for anything.
    with pytest.raises(SubjectMismatchError, match="schema id 6"):
        check.check("p.public.a", 6, KEY, True)
    with pytest.raises(SubjectMismatchError, match="registered under no subject"):
        check.check("p.public.a", 7, VALUE, False)
    lookups = registry.lookups
    with pytest.raises(SubjectMismatchError):
        check.check("p.public.a", 5, VALUE, False)
    assert registry.lookups == lookups


def test_an_unreachable_registry_is_retriable_and_decides_nothing() -> None:
    registry = Subjects({1: ["p.public.a-value"]})
    registry.down = True
    check = SubjectCheck(registry)
    with pytest.raises(RetriableError):
        check.check("p.public.a", 1, VALUE, False)
    registry.down = False
    check.check("p.public.a", 1, VALUE, False)
    assert registry.lookups == 2
