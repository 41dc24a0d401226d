"""Layers with learned linear maps: InnerProduct, Scale, Bias, Embed."""
from __future__ import annotations

import torch.nn.functional as F

from runner.layers.base import Layer, register
from runner.layers.onednn_linear import linear
from runner.layers.common import BlobValueError, broadcast_to_axis, filler_or
from runner.shapes import canonical_axis


@register("InnerProduct")
class InnerProduct(Layer):
    """y = x W^T + b with x flattened from `axis` on; `transpose` stores W as (K, N)."""

    bottom_count = top_count = (1, 1)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.inner_product_param
        self.axis = canonical_axis(p.axis, len(bottom_shapes[0]), lp.name)
        self.transpose = p.transpose
        self.bias_term = p.bias_term

    def blob_fillers(self):
        p = self.lp.inner_product_param
        return [filler_or(p, "weight_filler")] + ([filler_or(p, "bias_filler")] if self.bias_term else [])

    def forward(self, x):
        if x.dim() != self.axis + 1:
            x = x.flatten(self.axis)
        weight = self.blobs[0].t() if self.transpose else self.blobs[0]
        return (linear(x, weight, self.blobs[1] if self.bias_term else None),)

    def extra_repr(self):
        return f"name={self.name!r}, num_output={self.lp.inner_product_param.num_output}"


def _check_operand(lp, bottom: tuple, operand: tuple, axis: int, what: str) -> None:
    if tuple(bottom[axis:axis + len(operand)]) != tuple(operand):
        raise ValueError(f"layer '{lp.name}': {what} shape {list(operand)} does not match bottom "
                         f"shape {list(bottom)} from axis {axis}")


@register("Scale")
class Scale(Layer):
    """y = x * scale (+ bias), scale broadcast over axes [axis, axis + scale.dim()).

    The scale is a learned blob, or the second bottom when there is one (then the bias,
    if any, is the only blob).
    """

    bottom_count, top_count = (1, 2), (1, 1)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.scale_param
        b = bottom_shapes[0]
        self.axis = 0 if len(b) == 0 else canonical_axis(p.axis, len(b), lp.name)
        self.from_bottom = len(bottom_shapes) > 1
        if self.from_bottom:
            _check_operand(lp, b, bottom_shapes[1], self.axis, "scale bottom")
        self.bias_term = p.bias_term

    def blob_fillers(self):
        p = self.lp.scale_param
        fillers = [] if self.from_bottom else [filler_or(p, "filler", 1.0)]
        return fillers + ([filler_or(p, "bias_filler")] if self.bias_term else [])

    def forward(self, x, *scale_bottom):
        scale = scale_bottom[0] if self.from_bottom else self.blobs[0]
        y = x * broadcast_to_axis(scale, self.axis, x.dim())
        if self.bias_term:
            y = y + broadcast_to_axis(self.blobs[-1], self.axis, x.dim())
        return (y,)


@register("Bias")
class Bias(Layer):
    """y = x + bias, bias broadcast over axes [axis, axis + bias.dim()); the bias is a
    learned blob or the second bottom."""

    bottom_count, top_count = (1, 2), (1, 1)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        b = bottom_shapes[0]
        self.axis = 0 if len(b) == 0 else canonical_axis(lp.bias_param.axis, len(b), lp.name)
        self.from_bottom = len(bottom_shapes) > 1
        if self.from_bottom:
            _check_operand(lp, b, bottom_shapes[1], self.axis, "bias bottom")

    def blob_fillers(self):
        return [] if self.from_bottom else [filler_or(self.lp.bias_param, "filler")]

    def forward(self, x, *bias_bottom):
        bias = bias_bottom[0] if self.from_bottom else self.blobs[0]
        return (x + broadcast_to_axis(bias, self.axis, x.dim()),)


@register("Embed")
class Embed(Layer):
    """Look up rows of a (input_dim, num_output) table by integer-valued bottom (+ bias)."""

    bottom_count = top_count = (1, 1)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        self.bias_term = lp.embed_param.bias_term

    def blob_fillers(self):
        p = self.lp.embed_param
        return [filler_or(p, "weight_filler")] + ([filler_or(p, "bias_filler")] if self.bias_term else [])

    def forward(self, x):
        index = x.detach().long()
        n = self.blobs[0].shape[0]
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
            raise BlobValueError(f"layer '{self.name}': Embed index outside [0, {n})")
        y = F.embedding(index, self.blobs[0])
        return (y + self.blobs[1] if self.bias_term else y,)
