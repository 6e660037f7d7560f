"""Benchmarks: step/inference timing, the PyTorch reference, device checks (BENCHMARKS.md)."""
