"""Benchmarks of streamgw against nginx-rtmp (run ``python -m benchmarks``; see docs/benchmarks.md)."""
