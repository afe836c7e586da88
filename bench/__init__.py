"""Benchmarks run by hand: recognition accuracy and speed on scan-like images (see README)."""
