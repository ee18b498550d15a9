"""The pieces `bench/versus_debezium.py` is built from: processes and their costs (`procs`), what a run reads back
(`probes`), the run's shared state and each side's configuration (`context`), one module per workload (`burst`,
`snapshot`, `steady`, `bigtx`), and the report (`report`, `plots`)."""
