"""Layers that pick, reorder or unfold items: Filter, BatchReindex, Parameter, Im2col."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from runner.layers.base import Layer, register
from runner.layers.common import BlobValueError, constant_filler, flatten_from
from runner.shapes_sequence import im2col_geometry

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@register("Filter")
class Filter(Layer):
    """Keep the items (first axis) whose selector value (last bottom) is non-zero, in every
    other bottom. Caffe's backward: kept items get their top diff, dropped ones zero, and
    the selector none."""

    bottom_count, top_count = (2, None), (1, None)

    def forward(self, *bottoms):
        selector = flatten_from(bottoms[-1].detach(), 1)[:, 0]
        keep = torch.nonzero(selector != 0).flatten()
        return tuple(b.index_select(0, keep) for b in bottoms[:-1])


@register("BatchReindex")
class BatchReindex(Layer):
    """Top item k is bottom item permut[k] (indices truncated to int as Caffe's static_cast);
    the backward adds each top diff into the item it came from; the index gets none."""

    bottom_count, top_count = (2, 2), (1, 1)

    def forward(self, x, permut):
        index = permut.detach().to(torch.int64)  # truncates toward zero, as static_cast<int>
        if index.numel() and (index.min() < 0 or index.max() >= x.shape[0]):
            raise BlobValueError(f"layer '{self.name}': BatchReindex index {index.tolist()} out of "
                             f"range for a batch of {x.shape[0]}")
        return (x.index_select(0, index),)


@register("Parameter")
class Parameter(Layer):
    """Its one blob (parameter_param.shape, zero until trained or loaded) as its top."""

    bottom_count, top_count = (0, 0), (1, 1)

    def blob_fillers(self):
        return [constant_filler()]

    def forward(self):
        return (self.blobs[0],)


@register("Im2col")
class Im2col(Layer):
    """Caffe's im2col over 1-3 spatial axes: channel c, kernel offset k go to channel
    c * prod(kernel) + k (row-major over kernel axes); the backward is col2im."""

    bottom_count = top_count = (1, 1)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        b = bottom_shapes[0]
        self.axis, kernel, stride, pad, dilation = im2col_geometry(lp, b)
        n_spatial = len(b) - self.axis - 1
        if n_spatial not in _CONV:
            raise ValueError(f"layer '{lp.name}': Im2col over {n_spatial} spatial axes is not "
                             "supported (1, 2 or 3)")
        self._op = _CONV[n_spatial]
        self.channels = b[self.axis]
        k = math.prod(kernel)
        # One-hot kernels: output channel c*k + j copies input channel c at kernel offset j.
        eye = torch.eye(k).reshape(k, 1, *kernel).repeat(self.channels, 1, *([1] * n_spatial))
        self.register_buffer("one_hot", eye, persistent=False)
        self.conv_args = dict(stride=tuple(stride), padding=tuple(pad), dilation=tuple(dilation),
                        groups=self.channels)

    def forward(self, x):
        lead = x.shape[:self.axis]
        y = self._op(x.reshape(-1, *x.shape[self.axis:]), self.one_hot.to(x.dtype), **self.conv_args)
        return (y.reshape(*lead, *y.shape[1:]),)
