"""Caffe's HDF5Output layer: writes its bottoms (data, label) to an HDF5 file.

Caffe creates hdf5_output_param.file_name when the net is built and writes datasets
"data" and "label" (float32, legacy 4-D num x channels x height x width) on the first
Forward; a second Forward fails in Caffe (the datasets exist). Here every Forward writes
the file again (atomically) with that batch, so the file holds the latest one.
"""
from __future__ import annotations

import io

import h5py
import numpy as np
import torch

from runner.atomic import atomic_write_bytes
from runner.layers.base import Layer, register


def legacy_4d(shape) -> tuple[int, int, int, int]:
    """Blob::num/channels/height/width of a blob with at most 4 axes."""
    if len(shape) > 4:
        raise ValueError(f"a {len(shape)}-D blob has no legacy 4-D shape")
    return tuple(shape) + (1,) * (4 - len(shape))


@register("HDF5Output")
class HDF5Output(Layer):
    """Bottoms data and label (same first axis); no tops; no backward."""

    bottom_count, top_count = (2, 2), (0, 0)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        if not lp.hdf5_output_param.file_name:
            raise ValueError(f"layer '{lp.name}': hdf5_output_param.file_name is required")
        for shape in bottom_shapes:
            legacy_4d(shape)
        self.file_name = lp.hdf5_output_param.file_name

    def forward(self, data, label):
        if data.shape[0] != label.shape[0]:
            raise ValueError(f"layer '{self.name}': data and label must have the same batch "
                             f"size, got {data.shape[0]} and {label.shape[0]}")
        buffer = io.BytesIO()
        with h5py.File(buffer, "w") as f:
            for name, blob in (("data", data), ("label", label)):
                values = blob.detach().to("cpu", torch.float32).numpy()
                f.create_dataset(name, data=np.ascontiguousarray(values).reshape(legacy_4d(blob.shape)))
        atomic_write_bytes(self.file_name, buffer.getvalue())
        return ()
