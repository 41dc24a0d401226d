"""Reading HDF5 files that may be hostile: the errors h5py raises on a file it cannot read,
and a dataset read that refuses what would read as far more than the file holds."""
from __future__ import annotations

import numpy as np

from runner.shapes import INT_MAX

# What h5py raises on a file it cannot read: not HDF5 or truncated (OSError), a corrupt
# object header or heap, or a link loop (RuntimeError), a broken link (KeyError), a type
# it cannot map to numpy (ValueError, TypeError). A reader catching these re-raises its
# own errors (ValueErrors too) first.
H5PY_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)


def stored_array(dataset, what: str, error: type[Exception] = ValueError) -> np.ndarray:
    """`dataset` as float32, refused (`error`, the caller's own, naming `what`) when it has
    more than INT_MAX values (Caffe's blob limit) or, unfiltered, stores fewer bytes than
    it declares (a few KiB of file that would read as terabytes of fill value)."""
    if dataset.size > INT_MAX:
        raise error(f"{what}: {dataset.size} values, more than Caffe's blob limit of {INT_MAX}")
    stored = dataset.id.get_storage_size()
    unfiltered = dataset.id.get_create_plist().get_nfilters() == 0
    if unfiltered and stored < dataset.nbytes:
        raise error(f"{what}: declares {dataset.nbytes} bytes of values but stores {stored}")
    return np.asarray(dataset, dtype=np.float32)
