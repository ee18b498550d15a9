"""PostgreSQL source (pgoutput logical replication): `sources.postgres.source.PostgresSource`. See docs/source.md."""
