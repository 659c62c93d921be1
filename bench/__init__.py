"""Benchmarks for skinray: see bench/README.md."""
