"""Suite-wide settings: a fixed random start for every test, and data layers that make
batches in the main process (RUNNER_DATA_WORKERS=0): the suite runs under pytest-xdist on
two cores, and worker processes are exercised by the tests that ask for them explicitly
(tests/test_data_source.py, tests/test_data_prefetch_failures.py).
"""
import os
import random

import numpy as np
import pytest
import torch

os.environ.setdefault("RUNNER_DATA_WORKERS", "0")


@pytest.fixture(autouse=True)
def same_random_start():
    """Every test starts from the same random state (torch, numpy's global generator,
    random), so its random inputs are the same on every run and in any worker: a tolerance
    holds or fails for good, never by the draw."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


@pytest.fixture
def forget_registered_datasets():
    """Undo datasets a test registers with the generator (make net DATA=... does)."""
    from generator.datasets import DATASETS
    known = dict(DATASETS)
    yield
    DATASETS.clear()
    DATASETS.update(known)
