"""The pre-hashed change-id formatting equals the reference layout for many names, positions and namespaces."""

from __future__ import annotations

import random
import uuid

import pytest

from core.change_ids import ordered_uuid
from sources.postgres.change_id import ChangeIds

pytestmark = pytest.mark.unit


def test_ids_equal_the_reference_on_many_names() -> None:
    rng = random.Random(11)
    for _ in range(20):
        namespace = uuid.UUID(int=rng.getrandbits(128))
        ids = ChangeIds(namespace)
        for _ in range(1000):
            commit_lsn = rng.getrandbits(rng.choice((16, 48, 64)))
            lsn, ordinal = rng.getrandbits(48), rng.randint(0, 10**6)
            assert ids.streamed(commit_lsn, lsn, ordinal) == str(
                ordered_uuid(namespace, commit_lsn, f"{commit_lsn}:{lsn}:{ordinal}")
            )
            assert ids.key_change_delete(commit_lsn, lsn, ordinal) == str(
                ordered_uuid(namespace, commit_lsn, f"{commit_lsn}:{lsn}:{ordinal}:d")
            )
