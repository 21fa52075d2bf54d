"""Test support: tiny randomly initialised models of the real architectures.

Used by the test suite, the benchmarks and the smoke mode. Each builder writes
a checkpoint in its library's real on-disk format, so loading it goes through
exactly the code a user's real checkpoint takes.
"""
