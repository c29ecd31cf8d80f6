"""Benchmarks behind `dualkv bench <name>`; each prints one line per configuration, or one
JSON document with --json (see dualkv.bench.report). Benchmarks measure; they never assert."""
