"""Benchmarks that print ratios against a baseline (`make bench` runs them all). Each runs
from the repository root as `python bench/<name>.py`; gpu.py, which uses its siblings, as
`python -m bench.gpu`."""
