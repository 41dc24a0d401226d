"""ONNX forms of Caffe's blob plumbing: Concat, Slice, Flatten, Reshape, Crop, Tile,
Reduction, Silence, ArgMax, Parameter, Filter, BatchReindex, Im2col, and ChWick's Reverse. Shapes
are static except the batch axis where the layer keeps it."""
from __future__ import annotations

from onnx import TensorProto

from runner.onnx_export.graph import GraphBuilder
from runner.onnx_export.registry import blob_array, converter
from runner.proto import caffe_pb2
from runner.shapes import count


@converter("Concat")
def _concat(b: GraphBuilder, layer, ins, outs):
    b.node("Concat", ins, outs, axis=layer.axis)


@converter("Slice")
def _slice(b: GraphBuilder, layer, ins, outs):
    if layer.axis == 0:
        b.fix_batch("slices the batch axis")
    b.node("Split", [ins[0], b.ints("sizes", layer.sizes)], outs, axis=layer.axis)


def _reshape_to(b: GraphBuilder, x: str, top: tuple, keeps_batch: bool, outs) -> None:
    """Reshape to the top shape; 0 (copy) on axis 0 when the layer keeps the batch."""
    if not keeps_batch:
        b.fix_batch("reshapes across the batch axis")
    target = [0, *top[1:]] if keeps_batch else list(top)
    b.node("Reshape", [x, b.ints("shape", target)], outs)


@converter("Flatten")
def _flatten(b: GraphBuilder, layer, ins, outs):
    top = layer.top_shapes[0]
    if layer.start == 1 and layer.end == len(layer.bottom_shapes[0]) - 1:
        b.node("Flatten", ins, outs, axis=1)
    else:
        _reshape_to(b, ins[0], top, layer.start > 0, outs)


@converter("Reshape")
def _reshape(b: GraphBuilder, layer, ins, outs):
    p = layer.lp.reshape_param
    bottom = layer.bottom_shapes[0]
    start = p.axis if p.axis >= 0 else len(bottom) + p.axis + 1
    keeps = start > 0 or (len(p.shape.dim) > 0 and p.shape.dim[0] == 0)
    _reshape_to(b, ins[0], layer.top_shapes[0], keeps, outs)


@converter("Crop")
def _crop(b: GraphBuilder, layer, ins, outs):
    ref = layer.bottom_shapes[1]
    axes = [layer.axis + i for i in range(len(layer.offsets))]
    if 0 in axes:
        b.fix_batch("crops the batch axis")
    starts = list(layer.offsets)
    ends = [off + ref[ax] for off, ax in zip(starts, axes)]
    b.node("Slice", [ins[0], b.ints("starts", starts), b.ints("ends", ends), b.ints("axes", axes)], outs)


@converter("Reverse")
def _reverse(b: GraphBuilder, layer, ins, outs):
    """A Slice with step -1 over the whole axis (any size, the batch's included)."""
    axis = layer.lp.reverse_param.axis
    b.node("Slice", [ins[0], b.ints("starts", [-1]), b.ints("ends", [-2**63]),
                     b.ints("axes", [axis]), b.ints("steps", [-1])], outs)


@converter("Tile")
def _tile(b: GraphBuilder, layer, ins, outs):
    b.node("Tile", [ins[0], b.ints("repeats", layer.repeats)], outs)


_REDUCE = {caffe_pb2.ReductionParameter.SUM: "ReduceSum",
           caffe_pb2.ReductionParameter.ASUM: "ReduceL1",
           caffe_pb2.ReductionParameter.SUMSQ: "ReduceSumSquare",
           caffe_pb2.ReductionParameter.MEAN: "ReduceMean"}


@converter("Reduction")
def _reduction(b: GraphBuilder, layer, ins, outs):
    p = layer.lp.reduction_param
    ndim = len(layer.bottom_shapes[0])
    axes = list(range(layer.axis, ndim))
    op = _REDUCE[p.operation]
    if p.coeff == 1:
        b.node(op, [ins[0], b.ints("axes", axes)], outs, keepdims=0)
        return
    reduced = b.node(op, [ins[0], b.ints("axes", axes)], keepdims=0)
    b.node("Mul", [reduced, b.const("coeff", p.coeff)], outs)


@converter("Silence")
def _silence(b: GraphBuilder, layer, ins, outs):
    """Nothing to compute; the bottoms are simply not used further."""


def _caffe_top_k(b: GraphBuilder, x: str, k: int, axis: int, size: int) -> tuple[str, str]:
    """(values, float indices) of the k largest along `axis`, ties to the larger index as
    Caffe's partial_sort orders them: ONNX TopK (ties to the smaller) on the reversed axis."""
    flipped = b.node("Slice", [x, b.ints("start", [-1]), b.ints("end", [-(2 ** 63)]),
                               b.ints("axis", [axis]), b.ints("step", [-1])])
    values = b.temp("values")
    index = b.temp("index")
    b.node("TopK", [flipped, b.ints("k", [k])], [values, index], axis=axis)
    position = b.node("Sub", [b.ints("last", [size - 1]), index])
    return values, b.node("Cast", [position], to=1)  # FLOAT


@converter("ArgMax")
def _argmax(b: GraphBuilder, layer, ins, outs):
    p = layer.lp.argmax_param
    bottom = layer.bottom_shapes[0]
    if layer.axis is not None:
        values, index = _caffe_top_k(b, ins[0], p.top_k, layer.axis, bottom[layer.axis])
        b.node("Identity", [values if p.out_max_val else index], outs)
        return
    flat = b.node("Flatten", ins, axis=1)
    values, index = _caffe_top_k(b, flat, p.top_k, 1, count(bottom, 1))
    parts = [index, values] if p.out_max_val else [index]
    stacked = b.node("Concat", [b.node("Unsqueeze", [part, b.ints("axis", [1])]) for part in parts], axis=1)
    _reshape_to(b, stacked, layer.top_shapes[0], True, outs)


@converter("Parameter")
def _parameter(b: GraphBuilder, layer, ins, outs):
    """Its blob as a constant."""
    b.node("Identity", [b.const("blob", blob_array(layer.blobs[0]))], outs)


@converter("Filter")
def _filter(b: GraphBuilder, layer, ins, outs):
    """Compress over the batch axis: the items whose selector (N x 1 x ...) is non-zero."""
    selector = b.node("Reshape", [ins[-1], b.ints("items", [-1])])
    keep = b.node("Not", [b.node("Equal", [selector, b.const("zero", 0.0)])])
    for x, y in zip(ins[:-1], outs):
        b.node("Compress", [x, keep], [y], axis=0)


@converter("BatchReindex")
def _batch_reindex(b: GraphBuilder, layer, ins, outs):
    """A Gather over the batch axis; indices truncated toward zero as Caffe's static_cast."""
    b.fix_batch("gathers items of the batch")
    b.node("Gather", [ins[0], b.node("Cast", [ins[1]], to=TensorProto.INT64)], outs, axis=0)


@converter("Im2col")
def _im2col(b: GraphBuilder, layer, ins, outs):
    """The layer's convolution with one-hot kernels (one group per channel)."""
    bottom = layer.bottom_shapes[0]
    kernel = list(layer.one_hot.shape[2:])
    x = ins[0]
    if layer.axis != 1:
        b.fix_batch("folds the axes before its channel axis into one")
        x = b.node("Reshape", [x, b.ints("folded", [-1, *bottom[layer.axis:]])])
    kw = layer.conv_args
    y = b.node("Conv", [x, b.const("one_hot", layer.one_hot.numpy())], kernel_shape=kernel,
               strides=list(kw["stride"]), pads=list(kw["padding"]) * 2,
               dilations=list(kw["dilation"]), group=kw["groups"])
    b.node("Reshape", [y, b.ints("shape", list(layer.top_shapes[0]) if layer.axis != 1
                                 else [0, *layer.top_shapes[0][1:]])], outs)
