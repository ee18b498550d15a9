"""The local development stack: PostgreSQL, Apache Kafka and a Schema Registry as plain processes."""
