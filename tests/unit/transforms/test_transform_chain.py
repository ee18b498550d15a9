"""build_chain, TransformSpec validation at config load, the example config, and both sides of a pipeline."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from connector.config import json_schema, load_config
from core.errors import ConfigError
from tests.support.examples import EXAMPLE_ENV, REPO_ROOT
from tests.unit.transforms.transforms_support import CHANGE_ID, ROW, assert_valid, event, run, tombstone
from transforms import TransformChain, TransformsBySide, TransformSpec, build_chain
from transforms.config import OPTION_MODELS, MaskOptions

pytestmark = pytest.mark.unit


def test_spec_validates_options_and_keeps_them() -> None:
    spec = TransformSpec(type="mask", fields=["email"], mode="hash", salt="pepper")  # type: ignore[call-arg]
    assert spec.options == {"fields": ["email"], "mode": "hash", "salt": "pepper"}
    assert isinstance(spec.settings, MaskOptions)
    assert spec.settings.salt is not None and "pepper" not in repr(spec.settings)
    assert TransformsBySide(source=[spec]).source[0].settings.fields == ["email"]


def test_build_chain_accepts_specs_and_plain_mappings() -> None:
    chain = build_chain(
        [TransformSpec(type="route", regex="(.*)", replacement="x.$1"), {"type": "unwrap"}],  # type: ignore[call-arg]
        side="source",
    )
    assert isinstance(chain, TransformChain) and len(chain) == 2
    [out] = chain.apply(event())
    assert out.topic == "x.shop.public.customers" and out.value == ROW
    assert len(build_chain([], side="sink")) == 0


def test_build_chain_errors_name_index_type_and_option() -> None:
    with pytest.raises(ConfigError) as caught:
        build_chain([{"type": "unwrap"}, {"type": "route", "regex": "a", "replacement": "b"},
                     {"type": "mask", "fields": "email"}], side="source")  # fmt: skip
    assert str(caught.value).startswith("transforms[2] (mask): option `fields`: Input should be a valid list")
    assert caught.value.hint
    with pytest.raises(ConfigError, match=r"transforms\[0\] \(\?\): option `type`: Field required"):
        build_chain([{"fields": ["a"]}], side="source")
    with pytest.raises(ConfigError, match=r"transforms\[0\] \(nope\): unknown transform type `nope` \(known: unwrap, "):
        build_chain([{"type": "nope"}], side="source")


def test_every_transform_documents_every_option() -> None:
    schema = json_schema()
    variants = schema["$defs"]["TransformSpec"]["oneOf"]
    kinds = {v["properties"]["type"]["const"] for v in variants}
    assert kinds == set(OPTION_MODELS)
    for variant in variants:
        for name, prop in variant["properties"].items():
            assert prop.get("description"), f"{variant['properties']['type']['const']}.{name} has no description"
    docs = (REPO_ROOT / "docs" / "transforms.md").read_text()
    for kind, model in OPTION_MODELS.items():
        assert f"### `{kind}`" in docs, f"docs/transforms.md lacks a section for {kind}"
        for option in model.model_fields:
            if option not in ("type", "predicate", "negate"):
                assert f"`{option}`" in docs, f"docs/transforms.md does not mention {kind}.{option}"


def test_example_config_loads_and_builds_both_chains() -> None:
    config = load_config(REPO_ROOT / "configs" / "transforms.yaml", env=EXAMPLE_ENV)
    source = config.transforms_for("source")
    sink = config.transforms_for("sink")
    assert [s.type for s in source] == ["outbox", "route", "mask", "filter", "unwrap"]
    assert [s.type for s in sink] == ["rename", "insert"]
    assert "dev-only-salt" not in config.model_dump_json()
    source_chain, sink_chain = build_chain(source, side="source"), build_chain(sink, side="sink")

    produced = [out for record in (event("c"), event("d"), tombstone()) for out in source_chain.apply(record)]
    produced = assert_valid(produced)
    assert [r.topic for r in produced] == ["shop.customers", "shop.customers"]
    assert produced[0].value["email"] == hashlib.sha256(b"dev-only-salt" + b"ada@example.com").hexdigest()
    assert produced[1].value["__deleted"] == "true"

    consumed = [replace(r, partition=0, offset=i) for i, r in enumerate(produced)]
    applied = assert_valid(out for record in consumed for out in sink_chain.apply(record))
    assert applied[0].value["full_name"] == "Ada" and applied[0].value["origin"] == "shop-eu"
    assert applied[1].value["kafka_offset"] == 1
    assert all(r.header("change_id") == CHANGE_ID.encode() for r in applied)


def test_load_config_reports_transform_options_with_their_key_path(tmp_path: Path) -> None:
    text = (REPO_ROOT / "configs" / "transforms.yaml").read_text().replace("mode: hash", "mode: hashed")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"transforms\.source\[2\]\.mode \(line \d+\): Input should be 'fixed'"):
        load_config(path, env=EXAMPLE_ENV)


def test_source_side_route_mask_unwrap_then_sink_side_rename_insert_on_envelopes() -> None:
    """The end-to-end shape, without services: envelopes on the sink side keep change_id."""
    source = [{"type": "route", "regex": r"shop\.public\.(.*)", "replacement": "app.$1"},
              {"type": "mask", "fields": ["email"], "mode": "null"}]  # fmt: skip
    sink = [{"type": "rename", "renames": {"id": "customer_id"}}, {"type": "insert", "static_field": "origin",
             "static_value": "eu"}]  # fmt: skip
    produced = run(source, event("u", before=ROW), event("d"))
    applied = run(sink, *[replace(r, partition=0, offset=5) for r in produced], side="sink")
    assert [r.value["op"] for r in applied] == ["u", "d"]
    assert applied[0].value["change_id"] == CHANGE_ID
    after = applied[0].value["after"]
    assert after["customer_id"] == 7 and "id" not in after and after["email"] is None and after["origin"] == "eu"
    assert applied[1].value["before"]["customer_id"] == 7 and applied[1].value["after"] is None
    assert applied[1].key == {"customer_id": 7}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "drop"}, r"\(drop\): option `fields`: Field required"),
        ({"type": "drop", "fields": ["a"], "apply_to": "row"}, r"\(drop\): option `apply_to`: Input should be 'value'"),
        ({"type": "keep", "fields": []}, r"\(keep\): option `fields`: List should have at least 1 item"),
        ({"type": "rename", "renames": {"a": "b-c"}}, r"\(rename\): option `renames.a`: String should match pattern"),
        ({"type": "hoist"}, r"\(hoist\): option `field`: Field required"),
        ({"type": "hoist", "field": "f", "record_name": "a..b"}, r"\(hoist\): option `record_name`: String should"),
        ({"type": "hoist", "field": "f", "apply_to": "both"}, r"\(hoist\): option `apply_to`: Input should be"),
        ({"type": "extract_field", "field": "a.-b"}, r"\(extract_field\): option `field`: String should match pattern"),
        ({"type": "value_to_key", "fields": []}, r"\(value_to_key\): option `fields`: List should have at least 1"),
        ({"type": "flatten", "delimiter": ""}, r"\(flatten\): option `delimiter`: String should match pattern"),
        ({"type": "outbox", "id_field": "1d"}, r"\(outbox\): option `id_field`: String should match pattern"),
        ({"type": "unwrap", "add_fields": ["source."]}, r"\(unwrap\): option `add_fields.0`: String should match"),
        ({"type": "unwrap", "prefix": "-"}, r"\(unwrap\): option `prefix`: String should match pattern"),
        ({"type": "filter", "action": "maybe"}, r"\(filter\): option `action`: Input should be 'keep' or 'drop'"),
        ({"type": "timestamp_router", "format": "{topic}-{yyyy"}, r"\(timestamp_router\): option `format`: unbalanced"),
        ({"type": "timestamp_router", "format": "{topic}-{qq}"}, r"\(timestamp_router\): option `format`: unsupported"),
        ({"type": "route_by_field", "field": "key.x", "on_missing": "x"}, r"\(route_by_field\): option `on_missing`"),
        ({"type": "insert", "topic_field": "a", "offset_field": "a"}, r"\(insert\): the inserted field names"),
        ({"type": "headers", "insert": {"a": 1}}, r"\(headers\): option `insert.a`: Input should be a valid string"),
        ({"type": "python", "callable": "m:f", "extra": 1}, r"\(python\): option `extra`: Extra inputs are not"),
    ],
)
def test_bad_options_of_every_transform(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=r"^transforms\[0\] " + message):
        build_chain([spec], side="source")
