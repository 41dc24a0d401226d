"""Layers that combine, split or rearrange blobs: Eltwise, Concat, Slice, Split, Flatten,
Permute, Reshape, Crop, Tile, Reduction, Silence."""
from __future__ import annotations

import torch

from runner.layers.base import Layer, register
from runner.layers.common import flatten_from
from runner.proto import caffe_pb2
from runner.shapes import canonical_axis, reshape_target, slice_sizes
from runner.shapes_detection import permute_order


@register("Eltwise")
class Eltwise(Layer):
    """SUM (with one coefficient per bottom), PROD or MAX of same-shaped bottoms; a single
    bottom for SUM with one coeff, as FlowNet 2.0's Caffe allows.

    MAX routes the gradient as Caffe's mask: between bottoms 0 and 1 a tie goes to 1,
    later bottoms win only when strictly greater.
    """

    bottom_count, top_count = (2, None), (1, 1)

    @classmethod
    def check_blob_counts(cls, lp, n_bottoms):
        # FlowNet 2.0's Caffe (MinBottomBlobs 1) scales a blob by a one-bottom SUM with one
        # coeff in its deploy nets; BVLC Caffe refuses one bottom, as here otherwise.
        p = lp.eltwise_param
        if n_bottoms == 1 and len(p.coeff) == 1 and p.operation == caffe_pb2.EltwiseParameter.SUM:
            n_bottoms = 2
        super().check_blob_counts(lp, n_bottoms)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.eltwise_param
        E = caffe_pb2.EltwiseParameter
        self.op = p.operation
        if p.coeff and len(p.coeff) != len(bottom_shapes):
            raise ValueError(f"layer '{lp.name}': Eltwise takes one coeff per bottom "
                             f"({len(bottom_shapes)}), got {len(p.coeff)}")
        if p.coeff and self.op != E.SUM:
            raise ValueError(f"layer '{lp.name}': Eltwise coeff is only for SUM")
        if self.op == E.MAX and len(bottom_shapes) < 2:
            raise ValueError(f"layer '{lp.name}': Eltwise MAX needs at least 2 bottoms")
        self.coeffs = [float(c) for c in p.coeff] or [1.0] * len(bottom_shapes)

    def forward(self, *bottoms):
        E = caffe_pb2.EltwiseParameter
        if self.op == E.SUM:
            c0 = self.coeffs[0]
            y = bottoms[0] if c0 == 1 else bottoms[0] * c0
            for b, c in zip(bottoms[1:], self.coeffs[1:]):
                y = torch.add(y, b, alpha=c) if c != 1 else y + b
            return (y,)
        if self.op == E.PROD:
            y = bottoms[0]
            for b in bottoms[1:]:
                y = y * b
            return (y,)
        y = torch.where(bottoms[0] > bottoms[1], bottoms[0], bottoms[1])
        for b in bottoms[2:]:
            y = torch.where(b > y, b, y)
        return (y,)

    def extra_repr(self):
        return f"name={self.name!r}, op={caffe_pb2.EltwiseParameter.EltwiseOp.Name(self.op)}"


@register("Concat")
class Concat(Layer):
    """Concatenate bottoms along `axis` (or legacy concat_dim)."""

    bottom_count, top_count = (1, None), (1, 1)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.concat_param
        axis = p.concat_dim if p.HasField("concat_dim") else p.axis
        self.axis = canonical_axis(axis, len(bottom_shapes[0]), lp.name)

    def forward(self, *bottoms):
        return (torch.cat(bottoms, dim=self.axis) if len(bottoms) > 1 else bottoms[0],)


@register("Slice")
class Slice(Layer):
    """Split one bottom along `axis` at slice_point(s), or into equal parts."""

    bottom_count, top_count = (1, 1), (1, None)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        self.axis, self.sizes = slice_sizes(lp, bottom_shapes[0])

    def forward(self, x):
        sizes = self.sizes
        if x.shape[self.axis] != sum(sizes):
            _, sizes = slice_sizes(self.lp, tuple(x.shape))
        return tuple(torch.split(x, sizes, dim=self.axis))


@register("Split")
class Split(Layer):
    """The bottom, once per top (gradients of the tops add up)."""

    bottom_count, top_count = (1, 1), (1, None)

    def forward(self, x):
        return (x,) * len(self.lp.top)


@register("Silence")
class Silence(Layer):
    """Consumes its bottoms; no tops."""

    bottom_count, top_count = (1, None), (0, 0)

    def forward(self, *bottoms):
        return ()


@register("Flatten")
class Flatten(Layer):
    """Merge axes [axis, end_axis] into one."""

    bottom_count = top_count = (1, 1)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        p, n = lp.flatten_param, len(bottom_shapes[0])
        self.start = canonical_axis(p.axis, n, lp.name)
        self.end = canonical_axis(p.end_axis, n, lp.name)

    def forward(self, x):
        return (torch.flatten(x, self.start, self.end),)


@register("Permute")
class Permute(Layer):
    """SSD's Permute: reorder the axes (permute_param.order, then the axes it leaves out);
    the identity order passes the bottom through, as the fork shares the blob."""

    bottom_count = top_count = (1, 1)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        self.order = permute_order(lp, len(bottom_shapes[0]))

    def forward(self, x):
        if self.order == sorted(self.order):
            return (x,)
        return (x.permute(self.order).contiguous(),)

    def extra_repr(self):
        return f"name={self.name!r}, order={self.order}"


@register("Reshape")
class Reshape(Layer):
    """Caffe's Reshape: 0 copies a bottom dimension, one -1 is inferred."""

    bottom_count = top_count = (1, 1)

    def forward(self, x):
        return (x.reshape(reshape_target(self.lp, tuple(x.shape))),)


@register("Crop")
class Crop(Layer):
    """Crop bottom 0 to bottom 1's shape on axes >= axis, starting at the given offsets
    (none: 0; one: for every axis; else one per cropped axis)."""

    bottom_count, top_count = (2, 2), (1, 1)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.crop_param
        a, ref = bottom_shapes
        self.axis = canonical_axis(p.axis, len(a), lp.name)
        n_crop = len(a) - self.axis
        if len(p.offset) > 1 and len(p.offset) != n_crop:
            raise ValueError(f"layer '{lp.name}': crop_param gives {len(p.offset)} offsets for "
                             f"{n_crop} cropped axes (give 0, 1 or {n_crop})")
        self.offsets = [0] * n_crop if not p.offset else (
            [p.offset[0]] * n_crop if len(p.offset) == 1 else list(p.offset))
        for i, off in enumerate(self.offsets):
            ax = self.axis + i
            if off + ref[ax] > a[ax]:
                raise ValueError(f"layer '{lp.name}': crop of {ref[ax]} at offset {off} exceeds "
                                 f"size {a[ax]} of axis {ax}")

    def forward(self, x, ref):
        for i, off in enumerate(self.offsets):
            ax = self.axis + i
            if off != 0 or ref.shape[ax] != x.shape[ax]:
                x = x.narrow(ax, off, ref.shape[ax])
        return (x,)


@register("Tile")
class Tile(Layer):
    """Repeat the blob `tiles` times along `axis` (each block of axes >= axis is copied)."""

    bottom_count = top_count = (1, 1)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        n = len(bottom_shapes[0])
        self.axis = canonical_axis(lp.tile_param.axis, n, lp.name)
        if lp.tile_param.tiles < 1:
            raise ValueError(f"layer '{lp.name}': tile_param.tiles must be positive")
        self.repeats = [lp.tile_param.tiles if i == self.axis else 1 for i in range(n)]

    def forward(self, x):
        return (x.repeat(*self.repeats),)


@register("Reduction")
class Reduction(Layer):
    """coeff * SUM / ASUM / SUMSQ / MEAN over all axes from `axis` on."""

    bottom_count = top_count = (1, 1)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        self.axis = canonical_axis(lp.reduction_param.axis, len(bottom_shapes[0]), lp.name)

    def forward(self, x):
        p = self.lp.reduction_param
        R = caffe_pb2.ReductionParameter
        flat = flatten_from(x, self.axis)
        if p.operation == R.SUM:
            y = flat.sum(-1)
        elif p.operation == R.ASUM:
            y = flat.abs().sum(-1)
        elif p.operation == R.SUMSQ:
            y = (flat * flat).sum(-1)
        else:
            y = flat.mean(-1)
        return (y if p.coeff == 1 else y * p.coeff,)
