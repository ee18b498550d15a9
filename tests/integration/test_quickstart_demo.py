"""The README's quickstart job: configs/quickstart.yaml's pipeline with a table changing while it streams."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connector.config import load_config
from devstack.demo import digest, run_demo
from tests.integration.pipeline_support import drop_replication_state

pytestmark = pytest.mark.integration

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def test_quickstart_config_streams_the_demo_table_into_the_target(stack: Any, unique_name: Any) -> None:
    env = {
        "CDC_SOURCE_DSN": stack.source_dsn,
        "CDC_TARGET_DSN": stack.target_dsn,
        "CDC_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
        "CDC_SCHEMA_REGISTRY_URL": stack.registry_url,
    }
    base = load_config(QUICKSTART, env=env)
    assert base.source is not None and base.sink is not None
    # The shipped config, with names of this test's own so it shares nothing with other tests or a user's demo.
    name, table = unique_name("qs"), unique_name("customers")
    source = base.source.model_copy(
        update={
            "topic_prefix": name,
            "slot": base.source.slot.model_copy(update={"name": name}),
            "publication": base.source.publication.model_copy(update={"name": name}),
            "tables": base.source.tables.model_copy(update={"include": [f"public.{table}"]}),
        }
    )
    sink = base.sink.model_copy(update={"topics_regex": f"^{name}\\..*"})
    config = base.model_copy(
        update={"name": name, "source": source, "sink": sink, "server": base.server.model_copy(update={"port": 0})}
    )
    try:
        assert run_demo(config, seconds=3, table=table) == 0
        expected = digest(stack.source_dsn, table)
        assert expected is not None and expected[0] >= 1000
        assert digest(stack.target_dsn, table) == expected
    finally:
        drop_replication_state(stack.source_dsn, name, name)
