"""Benchmarks: our evaluation path against a re-creation of the LOST reference loop."""
