"""Simulated adapter, car and receiver for the demo, tests and benchmarks."""
