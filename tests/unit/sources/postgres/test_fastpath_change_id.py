"""The pre-hashed change-id formatting equals `uuid.uuid5` for many names and namespaces."""

from __future__ import annotations

import random
import uuid

import pytest

from sources.postgres.change_id import ChangeIds

pytestmark = pytest.mark.unit


def test_ids_equal_uuid5_on_many_names() -> None:
    rng = random.Random(11)
    for _ in range(20):
        namespace = uuid.UUID(int=rng.getrandbits(128))
        ids = ChangeIds(namespace)
        for _ in range(1000):
            commit_lsn, lsn, ordinal = rng.getrandbits(48), rng.getrandbits(48), rng.randint(0, 10**6)
            assert ids.streamed(commit_lsn, lsn, ordinal) == str(uuid.uuid5(namespace, f"{commit_lsn}:{lsn}:{ordinal}"))
            assert ids.key_change_delete(commit_lsn, lsn, ordinal) == str(
                uuid.uuid5(namespace, f"{commit_lsn}:{lsn}:{ordinal}:d")
            )
