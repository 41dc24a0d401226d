"""Benchmarks that print ratios against a baseline (`make bench` runs them all). Each runs
from the repository root as `python -m bench.<name>` (those that use no sibling also as
`python bench/<name>.py`)."""
