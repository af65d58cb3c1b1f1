"""Synthetic audio and caches for tests, benchmarks and the demo."""
