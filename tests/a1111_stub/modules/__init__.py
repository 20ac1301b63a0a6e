"""Test-only stand-in for A1111 v1.10.1's ``modules`` package (see tests/a1111_stub/README.md)."""
