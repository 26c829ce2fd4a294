"""Benchmarks of Handoff against bare-stack ceilings: ``python -m bench`` (see README.md)."""
