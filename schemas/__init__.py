"""Schemas: from PostgreSQL's catalog to Avro, the Schema Registry and the Confluent wire format.

- `catalog`: what PostgreSQL says about captured tables (`describe_tables`).
- `types`: per-column Avro type and converter from PostgreSQL's text output (`column_codec`); docs/types.md.
- `envelope`: per-table key/value schemas, rows, keys and Debezium-compatible envelopes.
- `registry`: the Schema Registry client (register, look up, check compatibility).
- `serde` / `codegen`: wire-format encoder and decoder with per-schema generated writers/readers.
- `compat`: explaining schema changes (Avro's resolution rules, naming the field).
- `check`: the registry's verdict per subject for `cdc schemas check`.
"""
