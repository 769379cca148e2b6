"""Benchmarks of the EBFT pipeline (see docs/performance.md): ``python -m benchmarks.run [--quick]``."""
