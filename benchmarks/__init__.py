"""Benchmarks and harnesses of the repository (not installed): run them from the repository
root as ``python -m benchmarks.<name>``. Each prints a ratio against a baseline measured
in the same run; docs/performance.md has the figures and the machines they came from."""
