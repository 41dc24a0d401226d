"""Caffe's shape rules: top shapes, learnable blob shapes and multiply-adds per layer.

One function per layer type maps (LayerParameter, bottom shapes) to a `LayerShapes`.
The generator prints tables from it and the converter's layers size their blobs with
it, so both agree with Caffe by construction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

Shape = tuple[int, ...]


class ShapeError(ValueError):
    """A layer's parameters do not fit its bottoms (names the layer)."""


@dataclass
class LayerShapes:
    tops: list[Shape]
    blobs: list[Shape] = field(default_factory=list)
    macs: int = 0  # multiply-adds for the whole batch


_RULES: dict[str, Callable] = {}


def rule(*types: str):
    def wrap(fn):
        for t in types:
            _RULES[t] = fn
        return fn
    return wrap


def known_types() -> list[str]:
    return sorted(_RULES)


INT_MAX = 2**31 - 1   # Caffe's Blob::Reshape refuses a count above it ("blob size exceeds INT_MAX")
MAX_BLOB_AXES = 32    # Caffe's kMaxBlobAxes: Blob::Reshape refuses more axes


def infer_layer(lp, bottoms: list[Shape]) -> LayerShapes:
    """Shapes for one layer given its bottom shapes; every top and blob is checked
    against Caffe's limits before anything is allocated."""
    fn = _RULES.get(lp.type)
    if fn is None:
        raise ShapeError(f"layer '{lp.name}': no shape rule for type '{lp.type}'")
    try:
        result = fn(lp, [tuple(int(d) for d in b) for b in bottoms])
    except ShapeError:
        raise
    except (ValueError, IndexError, ZeroDivisionError, OverflowError) as exc:
        raise ShapeError(f"layer '{lp.name}' ({lp.type}): {exc}") from None
    for what, shapes in (("top", result.tops), ("blob", result.blobs)):
        for i, shape in enumerate(shapes):
            check_blob_size(shape, f"layer '{lp.name}' ({lp.type}): {what} {i}")
    return result


def check_blob_size(shape: Shape, what: str) -> None:
    """Refuse more than 32 axes, negative dimensions and more than INT_MAX elements, as
    Caffe's Blob::Reshape."""
    if len(shape) > MAX_BLOB_AXES:
        raise ShapeError(f"{what}: shape has {len(shape)} axes, more than Caffe's limit of "
                         f"{MAX_BLOB_AXES}")
    if any(d < 0 for d in shape):
        raise ShapeError(f"{what}: shape {list(shape)} has a negative dimension")
    if math.prod(shape) > INT_MAX:
        raise ShapeError(f"{what}: shape {list(shape)} holds {math.prod(shape)} elements, "
                         f"more than Caffe's limit of {INT_MAX}")


def canonical_axis(axis: int, ndim: int, name: str = "") -> int:
    if not -ndim <= axis < ndim:
        raise ShapeError(f"layer '{name}': axis {axis} out of range for {ndim}-D blob")
    return axis % ndim


def count(shape: Shape, start: int = 0, end: int | None = None) -> int:
    return math.prod(shape[start:end])


# ---- spatial geometry -------------------------------------------------------------

def spatial_params(p, n_spatial: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """kernel, stride, pad, dilation per spatial axis of a ConvolutionParameter."""
    def pick(rep, h, w, has_h, default, what):
        if has_h:
            if n_spatial != 2:
                raise ValueError(f"{what}_h/_w only for 2D convolution")
            return [h, w]
        vals = list(rep) or [default]
        if len(vals) == 1:
            vals = vals * n_spatial
        if len(vals) != n_spatial:
            raise ValueError(f"{what} must have 1 or {n_spatial} values, got {len(vals)}")
        return vals

    if p.HasField("kernel_h") != p.HasField("kernel_w"):
        raise ValueError("kernel_h and kernel_w must be given together")
    if not p.HasField("kernel_h") and not p.kernel_size:
        raise ValueError("kernel_size (or kernel_h and kernel_w) is required")
    kernel = pick(p.kernel_size, p.kernel_h, p.kernel_w, p.HasField("kernel_h"), 0, "kernel")
    stride = pick(p.stride, p.stride_h, p.stride_w, p.HasField("stride_h"), 1, "stride")
    pad = pick(p.pad, p.pad_h, p.pad_w, p.HasField("pad_h") or p.HasField("pad_w"), 0, "pad")
    dilation = pick(p.dilation, 0, 0, False, 1, "dilation")
    if min(kernel) <= 0 or min(stride) <= 0:
        raise ValueError("kernel and stride must be positive")
    return kernel, stride, pad, dilation


def conv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def pooling_geometry(p, h: int, w: int) -> tuple[list[int], list[int], list[int]]:
    """kernel, stride, pad (h, w) of a PoolingParameter, global pooling resolved."""
    if p.global_pooling:
        if p.HasField("kernel_size") or p.HasField("kernel_h"):
            raise ValueError("global_pooling takes no kernel size")
        kernel = [h, w]
    elif p.HasField("kernel_h") or p.HasField("kernel_w"):
        if not (p.HasField("kernel_h") and p.HasField("kernel_w")):
            raise ValueError("kernel_h and kernel_w must be given together")
        kernel = [p.kernel_h, p.kernel_w]
    elif p.HasField("kernel_size"):
        kernel = [p.kernel_size, p.kernel_size]
    else:
        raise ValueError("kernel_size (or kernel_h and kernel_w) is required")
    pad = [p.pad_h, p.pad_w] if (p.HasField("pad_h") or p.HasField("pad_w")) else [p.pad] * 2
    if p.HasField("stride_h") or p.HasField("stride_w"):
        stride = [p.stride_h, p.stride_w]
    else:
        stride = [p.stride] * 2
    if p.global_pooling:
        pad, stride = [0, 0], [1, 1]
    if min(kernel) <= 0 or min(stride) <= 0:
        raise ValueError("kernel and stride must be positive")
    if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
        raise ValueError("pad must be smaller than kernel")
    if max(stride) > INT_MAX:
        raise ValueError(f"stride {max(stride)} is beyond Caffe's int (at most {INT_MAX}), in "
                         "which its pooling layer keeps it")
    for size, k, s, q in zip((h, w), kernel, stride, pad):
        # Caffe's int window arithmetic (hstart + kernel_h) must not overflow.
        if (pool_out(size, k, s, q) - 1) * s + k > INT_MAX:
            raise ValueError(f"stride {s} and kernel {k} place pooling windows past "
                             f"{INT_MAX}, beyond Caffe's int arithmetic")
    return kernel, stride, pad


def pool_out(size: int, k: int, s: int, p: int, ceil_mode: bool = True,
             padded: bool | None = None) -> int:
    """Caffe's pooled size: ceil (default) or floor, then clip a window starting in the pad.

    Caffe applies the clip on both axes when either pad is non-zero: pass `padded`
    (pad_h or pad_w) for 2-D pooling; it defaults to p > 0.
    """
    rounding = math.ceil if ceil_mode else math.floor
    out = int(rounding((size + 2 * p - k) / s)) + 1
    if (p > 0 if padded is None else padded) and (out - 1) * s >= size + p:
        out -= 1
    return out


# ---- data sources -----------------------------------------------------------------

@rule("Input")
def _input(lp, bottoms):
    shapes = [tuple(s.dim) for s in lp.input_param.shape]
    n = len(lp.top)
    if len(shapes) not in (1, n):
        raise ValueError("input_param needs one shape, or one per top")
    return LayerShapes(tops=[shapes[0]] * n if len(shapes) == 1 else shapes)


@rule("DummyData")
def _dummy(lp, bottoms):
    p = lp.dummy_data_param
    n = len(lp.top)
    if p.shape:
        shapes = [tuple(s.dim) for s in p.shape]
    else:
        shapes = [tuple(x) for x in zip(p.num, p.channels, p.height, p.width)]
    if len(shapes) not in (1, n):
        raise ValueError("dummy_data_param needs one shape, or one per top")
    return LayerShapes(tops=[shapes[0]] * n if len(shapes) == 1 else shapes)


# ---- vision -----------------------------------------------------------------------

@rule("Convolution", "Deconvolution")
def conv_shapes(lp, bottoms):
    p = lp.convolution_param
    b = bottoms[0]
    axis = canonical_axis(p.axis, len(b), lp.name)
    spatial = b[axis + 1:]
    kernel, stride, pad, dil = spatial_params(p, len(spatial))
    channels, group, n_out = b[axis], p.group, p.num_output
    if n_out <= 0:
        raise ValueError("num_output must be positive")
    if channels % group or n_out % group:
        raise ValueError(f"channels ({channels}) and num_output ({n_out}) must divide by group ({group})")
    if lp.type == "Convolution":
        out = [conv_out(*a) for a in zip(spatial, kernel, stride, pad, dil)]
        weight = (n_out, channels // group, *kernel)
        per_out = (channels // group) * math.prod(kernel)
        macs = count(b, 0, axis) * n_out * math.prod(out) * per_out
    else:
        out = [s * (i - 1) + d * (k - 1) + 1 - 2 * q
               for i, k, s, q, d in zip(spatial, kernel, stride, pad, dil)]
        weight = (channels, n_out // group, *kernel)
        macs = count(b, 0, axis) * channels * math.prod(spatial) * (n_out // group) * math.prod(kernel)
    if min(out) <= 0:
        raise ValueError(f"output size {out} is not positive (input {list(spatial)})")
    if any(bb != b for bb in bottoms[1:]):
        raise ValueError(f"all bottoms must have the same shape, got {[list(bb) for bb in bottoms]}")
    blobs = [weight] + ([(n_out,)] if p.bias_term else [])
    return LayerShapes([(*b[:axis], n_out, *out)] * len(bottoms), blobs, macs * len(bottoms))


@rule("Pooling")
def _pool(lp, bottoms):
    p = lp.pooling_param
    if p.HasField("ceil_mode"):
        raise ValueError("ceil_mode is read through upgrade_net (it becomes round_mode)")
    n, c, h, w = bottoms[0]
    kernel, stride, pad = pooling_geometry(p, h, w)
    ceil_mode = p.round_mode == p.CEIL
    out = [pool_out(size, k, s, q, ceil_mode, padded=any(pad))
           for size, k, s, q in zip((h, w), kernel, stride, pad)]
    tops = [(n, c, *out)] * len(lp.top)
    return LayerShapes(tops)


def spp_geometry(level: int, h: int, w: int) -> tuple[list[int], list[int], list[int]]:
    """kernel, stride, pad (h, w) of SPP pyramid level `level` (2^level bins per axis),
    as Caffe's SPPLayer::GetPoolingParam."""
    bins = 2 ** level
    kernel = [math.ceil(n / bins) for n in (h, w)]
    pad = [(k * bins - n + 1) // 2 for k, n in zip(kernel, (h, w))]
    if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
        raise ValueError(f"pyramid level {level} of a {h}x{w} input needs pad {pad} >= kernel "
                         f"{kernel}, which Caffe's pooling refuses")
    return kernel, list(kernel), pad


@rule("SPP")
def _spp(lp, bottoms):
    n, c, h, w = bottoms[0]
    levels = lp.spp_param.pyramid_height
    if levels < 1:
        raise ValueError("spp_param.pyramid_height must be at least 1")
    outs = []
    for level in range(levels):
        kernel, stride, pad = spp_geometry(level, h, w)
        outs.append([pool_out(size, k, s, q, True, padded=any(pad))
                     for size, k, s, q in zip((h, w), kernel, stride, pad)])
    if levels == 1:  # Caffe's SPP is then a plain pooling layer
        return LayerShapes([(n, c, *outs[0])])
    return LayerShapes([(n, sum(c * oh * ow for oh, ow in outs))])


@rule("InnerProduct")
def _ip(lp, bottoms):
    p = lp.inner_product_param
    b = bottoms[0]
    axis = canonical_axis(p.axis, len(b), lp.name)
    k, n_out = count(b, axis), p.num_output
    if n_out <= 0:
        raise ValueError("num_output must be positive")
    weight = (k, n_out) if p.transpose else (n_out, k)
    blobs = [weight] + ([(n_out,)] if p.bias_term else [])
    return LayerShapes([(*b[:axis], n_out)], blobs, count(b, 0, axis) * k * n_out)


@rule("Embed")
def _embed(lp, bottoms):
    p = lp.embed_param
    blobs = [(p.input_dim, p.num_output)] + ([(p.num_output,)] if p.bias_term else [])
    return LayerShapes([(*bottoms[0], p.num_output)], blobs)


# ---- element-wise and normalisation -------------------------------------------------

@rule("ReLU", "ReLU6", "ELU", "Sigmoid", "TanH", "AbsVal", "BNLL", "Power", "Exp", "Log",
      "Threshold", "Dropout", "Swish", "Clip", "LRN", "MVN", "Softmax")
def _same(lp, bottoms):
    return LayerShapes([bottoms[0]])


@rule("PReLU")
def _prelu(lp, bottoms):
    channels = bottoms[0][1] if len(bottoms[0]) > 1 else 1
    return LayerShapes([bottoms[0]], [(1,) if lp.prelu_param.channel_shared else (channels,)])


@rule("BatchNorm")
def _bn(lp, bottoms):
    channels = bottoms[0][1] if len(bottoms[0]) > 1 else 1
    return LayerShapes([bottoms[0]], [(channels,), (channels,), (1,)])


def _scale_shape(lp, bottoms, axis, num_axes) -> Shape:
    b = bottoms[0]
    if len(bottoms) > 1:
        return ()
    axis = canonical_axis(axis, len(b), lp.name)
    end = len(b) if num_axes == -1 else axis + num_axes
    if end > len(b):
        raise ValueError(f"num_axes {num_axes} past the end of a {len(b)}-D bottom")
    return b[axis:end]


@rule("Scale")
def _scale(lp, bottoms):
    p = lp.scale_param
    shape = _scale_shape(lp, bottoms, p.axis, p.num_axes)
    blobs = [shape] if len(bottoms) == 1 else []
    if p.bias_term:
        b = bottoms[0]
        if len(bottoms) > 1:
            canonical_axis(p.axis, len(b), lp.name)   # refuses an axis out of range
            shape = bottoms[1]
        blobs.append(shape)
    return LayerShapes([bottoms[0]], blobs)


@rule("Bias")
def _bias(lp, bottoms):
    p = lp.bias_param
    shape = _scale_shape(lp, bottoms, p.axis, p.num_axes)
    return LayerShapes([bottoms[0]], [shape] if len(bottoms) == 1 else [])


@rule("Eltwise")
def _eltwise(lp, bottoms):
    if any(b != bottoms[0] for b in bottoms):
        raise ValueError(f"all bottoms must have the same shape, got {bottoms}")
    return LayerShapes([bottoms[0]])


# ---- blob plumbing ----------------------------------------------------------------

@rule("Split")
def _split(lp, bottoms):
    return LayerShapes([bottoms[0]] * len(lp.top))


@rule("Silence")
def _silence(lp, bottoms):
    return LayerShapes([])


@rule("Concat")
def _concat(lp, bottoms):
    p = lp.concat_param
    axis = p.concat_dim if p.HasField("concat_dim") else p.axis
    axis = canonical_axis(axis, len(bottoms[0]), lp.name)
    for b in bottoms[1:]:
        if len(b) != len(bottoms[0]) or any(x != y for i, (x, y) in enumerate(zip(b, bottoms[0])) if i != axis):
            raise ValueError(f"bottoms {bottoms} differ outside concat axis {axis}")
    top = list(bottoms[0])
    top[axis] = sum(b[axis] for b in bottoms)
    return LayerShapes([tuple(top)])


def slice_sizes(lp, bottom: Shape) -> tuple[int, list[int]]:
    """Axis and per-top sizes of a Slice layer."""
    p = lp.slice_param
    axis = p.slice_dim if p.HasField("slice_dim") else p.axis
    axis = canonical_axis(axis, len(bottom), lp.name)
    n, total = len(lp.top), bottom[axis]
    if p.slice_point:
        if len(p.slice_point) != n - 1:
            raise ValueError(f"{len(p.slice_point)} slice_point(s) for {n} tops")
        points = [0, *p.slice_point, total]
        sizes = [b - a for a, b in zip(points, points[1:])]
        if min(sizes) <= 0:
            raise ValueError(f"slice_point {list(p.slice_point)} not increasing inside {total}")
    else:
        if total % n:
            raise ValueError(f"axis size {total} does not divide into {n} tops")
        sizes = [total // n] * n
    return axis, sizes


@rule("Slice")
def _slice(lp, bottoms):
    axis, sizes = slice_sizes(lp, bottoms[0])
    return LayerShapes([tuple(s if i == axis else d for i, d in enumerate(bottoms[0])) for s in sizes])


@rule("Flatten")
def _flatten(lp, bottoms):
    b = bottoms[0]
    p = lp.flatten_param
    start = canonical_axis(p.axis, len(b), lp.name)
    end = canonical_axis(p.end_axis, len(b), lp.name)
    return LayerShapes([(*b[:start], count(b, start, end + 1), *b[end + 1:])])


def reshape_target(lp, b: Shape) -> Shape:
    """Caffe's Reshape: 0 copies a bottom dim, one -1 is inferred, within [axis, axis+num_axes)."""
    p = lp.reshape_param
    start = p.axis if p.axis >= 0 else len(b) + p.axis + 1
    if not 0 <= start <= len(b):
        raise ValueError(f"axis {p.axis} out of range")
    end = len(b) if p.num_axes == -1 else start + p.num_axes
    dims = list(p.shape.dim)
    if dims.count(-1) > 1:
        raise ValueError("at most one -1 in reshape_param.shape")
    new = [b[start + i] if d == 0 else d for i, d in enumerate(dims)]
    replaced = count(b, start, end)
    if -1 in new:
        known = math.prod(d for d in new if d != -1)
        if known == 0 or replaced % known:
            raise ValueError(f"cannot infer -1: {replaced} elements into {dims}")
        new[new.index(-1)] = replaced // known
    top = (*b[:start], *new, *b[end:])
    if count(top) != count(b):
        raise ValueError(f"reshape {list(b)} -> {list(top)} changes the element count")
    return top


@rule("Reshape")
def _reshape(lp, bottoms):
    return LayerShapes([reshape_target(lp, bottoms[0])])


@rule("Crop")
def _crop(lp, bottoms):
    a, ref = bottoms
    axis = canonical_axis(lp.crop_param.axis, len(a), lp.name)
    return LayerShapes([(*a[:axis], *ref[axis:])])


@rule("Tile")
def _tile(lp, bottoms):
    b = list(bottoms[0])
    axis = canonical_axis(lp.tile_param.axis, len(b), lp.name)
    b[axis] *= lp.tile_param.tiles
    return LayerShapes([tuple(b)])


@rule("Reduction")
def _reduction(lp, bottoms):
    b = bottoms[0]
    axis = canonical_axis(lp.reduction_param.axis, len(b), lp.name)
    return LayerShapes([b[:axis]])


@rule("ArgMax")
def _argmax(lp, bottoms):
    p = lp.argmax_param
    b = bottoms[0]
    if p.HasField("axis"):
        axis = canonical_axis(p.axis, len(b), lp.name)
        return LayerShapes([tuple(p.top_k if i == axis else d for i, d in enumerate(b))])
    # Caffe keeps at least 3 axes, extra trailing axes are 1: (N, 1 or 2, top_k, 1, ...)
    return LayerShapes([(b[0], 2 if p.out_max_val else 1, p.top_k) + (1,) * (len(b) - 3)])


# ---- losses and metrics ------------------------------------------------------------

def _check_label_count(lp, bottoms, axis_field: int) -> int:
    """Caffe's Reshape check of SoftmaxWithLoss and Accuracy: one label per prediction
    (all axes of the predictions but the class axis); returns the class axis."""
    b = bottoms[0]
    axis = canonical_axis(axis_field, len(b), lp.name)
    wanted = math.prod(b[:axis]) * math.prod(b[axis + 1:])
    labels = math.prod(bottoms[1]) if len(bottoms) > 1 else wanted
    if labels != wanted:
        raise ShapeError(
            f"layer '{lp.name}' ({lp.type}): bottom '{lp.bottom[1]}' holds {labels} labels "
            f"for predictions of shape {list(b)} (class axis {axis}), which need {wanted}: "
            "one per prediction")
    return axis


@rule("SoftmaxWithLoss")
def _softmax_loss(lp, bottoms):
    _check_label_count(lp, bottoms, lp.softmax_param.axis)
    return LayerShapes([()] + [bottoms[0]] * (len(lp.top) - 1))


@rule("EuclideanLoss", "SigmoidCrossEntropyLoss", "HingeLoss", "InfogainLoss",
      "MultinomialLogisticLoss", "ContrastiveLoss")
def _loss(lp, bottoms):
    return LayerShapes([()] * len(lp.top))


@rule("Accuracy")
def _accuracy(lp, bottoms):
    axis = _check_label_count(lp, bottoms, lp.accuracy_param.axis)
    return LayerShapes([()] + [(bottoms[0][axis],)] * (len(lp.top) - 1))


# The SSD, other fork and recurrent/indexing layers' rules live in their own modules; importing
# them registers them.
from runner import shapes_detection, shapes_flownet, shapes_forks, shapes_sequence  # noqa: E402,F401
