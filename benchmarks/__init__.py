"""Benchmarks that print one JSON object each; run them from the repository root."""
