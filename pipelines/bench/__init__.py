"""Benchmarks: the project's figures beside the naive approach (`make bench`)."""
