"""Throughput benchmarks (``python -m bench.relay_bench``); see docs/benchmarks.md.

Speed targets live here, never in the unit tests. Everything talks to 127.0.0.1 only.
"""
