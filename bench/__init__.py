"""Benchmarks of RIVAL against plain generation (not part of the extension)."""
