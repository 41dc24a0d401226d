"""Suite-wide settings.

Data layers make batches in the main process here (RUNNER_DATA_WORKERS=0): the suite runs
under pytest-xdist on two cores, and worker processes are exercised by the tests that ask
for them explicitly (tests/test_data_source.py, tests/test_data_prefetch_failures.py).
"""
import os

import pytest

os.environ.setdefault("RUNNER_DATA_WORKERS", "0")


@pytest.fixture
def forget_registered_datasets():
    """Undo datasets a test registers with the generator (make net DATA=... does)."""
    from generator.datasets import DATASETS
    known = dict(DATASETS)
    yield
    DATASETS.clear()
    DATASETS.update(known)
