"""The workflows behind the commands, one module per step: `prepare` (the label table with
folds), `make_references` (the reference space), `synthesize` (the embedded default archive),
`evaluate` and `export` (a run's tables and bundle), and `demo` (all of them chained). The CLI
parses arguments and calls these; benchmarks and tests call them directly."""
