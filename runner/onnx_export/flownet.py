"""ONNX forms of the FlowNet 2.0 layers: Correlation and Correlation1D (Pad, then per
displacement a Slice, Mul or |Sub| and ReduceMean over the channels, then AveragePool over
the kernel), Resample (LINEAR/CUBIC: the layer's two weight matrices as MatMuls, NEAREST:
Gather), FlowWarp (bilinear GatherElements, fill outside), ChannelNorm (Sqrt of
ReduceSumSquare), Accum (Resize, linear with corners aligned, then Concat), NegReLU (Where)
and DataAugmentation once its mean is fixed (Sub)."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from runner.onnx_export.graph import GraphBuilder, OnnxExportError
from runner.onnx_export.registry import blob_array, converter
from runner.proto import caffe_pb2


@converter("NegReLU")
def _neg_relu(b: GraphBuilder, layer, ins, outs):
    slope = b.const("slope", layer.lp.relu_param.negative_slope)
    negative = b.node("Less", [ins[0], b.const("zero", 0.0)])
    b.node("Where", [negative, ins[0], b.node("Mul", [ins[0], slope])], outs)


@converter("ChannelNorm")
def _channel_norm(b: GraphBuilder, layer, ins, outs):
    squares = b.node("ReduceSumSquare", [ins[0], b.ints("channels", [1])], keepdims=1)
    b.node("Sqrt", [squares], outs)


@converter("Accum")
def _accum(b: GraphBuilder, layer, ins, outs):
    h, w = layer.size   # at least 2 x 2: accum_size refuses less at build
    resized = ins[:-1] if layer.lp.accum_param.have_reference else ins
    parts = []
    for x in resized:
        lead = b.node("Slice", [b.node("Shape", [x]), b.ints("from", [0]), b.ints("to", [2])])
        sizes = b.node("Concat", [lead, b.ints("hw", [h, w])], axis=0)
        parts.append(b.node("Resize", [x, "", "", sizes], mode="linear",
                            coordinate_transformation_mode="align_corners"))
    b.node("Concat", parts, outs, axis=1)


def _window(b: GraphBuilder, x: str, y0: int, x0: int, h: int, w: int) -> str:
    return b.node("Slice", [x, b.ints("start", [y0, x0]), b.ints("end", [y0 + h, x0 + w]),
                            b.ints("axes", [2, 3])])


@converter("Correlation", "Correlation1D")
def _correlation(b: GraphBuilder, layer, ins, outs):
    g = layer.geometry
    pads = b.ints("pads", [0, 0, g.pad_y, g.pad_x, 0, 0, g.pad_y, g.pad_x])
    first_padded, second_padded = (b.node("Pad", [x, pads]) for x in ins)
    h, w = (g.top_h - 1) * g.stride1 + g.kernel, (g.top_w - 1) * g.stride1 + g.kernel
    first = _window(b, first_padded, g.origin_y, g.origin_x, h, w)
    maps = []
    for dy, dx in g.displacements:
        second = _window(b, second_padded, g.origin_y + dy, g.origin_x + dx, h, w)
        product = (b.node("Abs", [b.node("Sub", [first, second])]) if layer.subtract
                   else b.node("Mul", [first, second]))
        maps.append(b.node("ReduceMean", [product, b.ints("channels", [1])], keepdims=1))
    stacked = b.node("Concat", maps, axis=1) if len(maps) > 1 else maps[0]
    b.node("AveragePool", [stacked], outs, kernel_shape=[g.kernel, g.kernel],
           strides=[g.stride1, g.stride1])


@converter("Resample")
def _resample(b: GraphBuilder, layer, ins, outs):
    h_out, w_out = layer.out_hw
    if not layer.nearest:
        rows = b.node("MatMul", [b.const("wy", layer.wy.numpy()), ins[0]])
        both = b.node("MatMul", [rows, b.const("wx_t", layer.wx.numpy().T.copy())])
        b.node("Mul", [both, b.const("inv_norm", layer.inv_norm.numpy())], outs)
        return
    n, c, h_in, w_in = layer.bottom_shapes[0]
    index = layer.index.numpy()
    if index.min() >= 0 and index.max() < h_in * w_in:   # each plane reads only itself
        planes = b.node("Reshape", [ins[0], b.ints("planes", [0, 0, -1])])
        picked = b.node("Gather", [planes, b.ints("index", index)], axis=2)
        b.node("Reshape", [picked, b.ints("shape", [0, 0, h_out, w_out])], outs)
        return
    b.fix_batch("(Resample NEAREST) reads across channel planes, as the fork's kernel")
    whole = (np.arange(n * c)[:, None] * (h_in * w_in) + index[None, :]).reshape(-1)
    flat = b.node("Reshape", [ins[0], b.ints("flat", [-1])])
    picked = b.node("Gather", [flat, b.ints("index", whole)], axis=0)
    b.node("Reshape", [picked, b.ints("shape", [n, c, h_out, w_out])], outs)


@converter("FlowWarp")
def _flow_warp(b: GraphBuilder, layer, ins, outs):
    image, flow = ins
    _, _, h, w = layer.bottom_shapes[0]
    zero = b.const("zero", 0.0)
    x2 = b.node("Add", [b.const("xs", np.arange(w)), _channel(b, flow, 0)])
    y2 = b.node("Add", [b.const("ys", np.arange(h)[:, None]), _channel(b, flow, 1)])
    inside = b.node("And", [
        b.node("And", [b.node("GreaterOrEqual", [x2, zero]), b.node("GreaterOrEqual", [y2, zero])]),
        b.node("And", [b.node("Less", [x2, b.const("w", float(w))]), b.node("Less", [y2, b.const("h", float(h))])])])
    x2, y2 = (b.node("Where", [inside, v, zero]) for v in (x2, y2))
    left, top = b.node("Floor", [x2]), b.node("Floor", [y2])
    alpha, beta = b.node("Sub", [x2, left]), b.node("Sub", [y2, top])
    one = b.ints("one", [1])
    left_i, top_i = (b.node("Cast", [v], to=TensorProto.INT64) for v in (left, top))
    right_i = b.node("Min", [b.node("Add", [left_i, one]), b.ints("last_x", [w - 1])])
    bottom_i = b.node("Min", [b.node("Add", [top_i, one]), b.ints("last_y", [h - 1])])
    planes = b.node("Reshape", [image, b.ints("planes", [0, 0, -1])])
    plane_shape = b.node("Shape", [planes])
    image_shape = b.node("Shape", [image])

    def at(row, col):
        index = b.node("Add", [b.node("Mul", [row, b.ints("w", [w])]), col])
        index = b.node("Expand", [b.node("Reshape", [index, b.ints("index", [0, 1, -1])]), plane_shape])
        return b.node("Reshape", [b.node("GatherElements", [planes, index], axis=2), image_shape])

    one_f = b.const("one_f", 1.0)
    not_alpha, not_beta = b.node("Sub", [one_f, alpha]), b.node("Sub", [one_f, beta])
    terms = [b.node("Mul", [b.node("Mul", [wa, wb]), at(row, col)])
             for wa, wb, row, col in ((not_alpha, not_beta, top_i, left_i), (alpha, not_beta, top_i, right_i),
                                      (not_alpha, beta, bottom_i, left_i), (alpha, beta, bottom_i, right_i))]
    warped = b.node("Add", [b.node("Add", [b.node("Add", terms[:2]), terms[2]]), terms[3]])
    nan = layer.lp.flow_warp_param.fill_value == caffe_pb2.FlowWarpParameter.NOT_A_NUMBER
    b.node("Where", [inside, warped, b.const("fill", float("nan") if nan else 0.0)], outs)


def _channel(b: GraphBuilder, x: str, c: int) -> str:
    return b.node("Slice", [x, b.ints("from", [c]), b.ints("to", [c + 1]), b.ints("axes", [1])])


@converter("DataAugmentation")
def _data_augmentation(b: GraphBuilder, layer, ins, outs):
    p = layer.lp.augmentation_param
    if p.recompute_mean:
        count = float(blob_array(layer.blobs[0]).reshape(-1)[0])
        if count < p.recompute_mean:
            raise OnnxExportError(
                f"its running mean still moves for {int(p.recompute_mean - count)} more forwards "
                f"(recompute_mean {p.recompute_mean}, count {count:g}); export with the trained "
                "weights, whose count has passed it")
        mean = blob_array(layer.blobs[1] if p.mean_per_pixel else layer.blobs[2])
        b.node("Sub", [ins[0], b.const("mean", mean)], outs)
    elif len(p.mean) == 3 and not p.mean_per_pixel:
        b.node("Sub", [ins[0], b.const("mean", np.array(p.mean).reshape(1, 3, 1, 1))], outs)
    else:
        b.node("Identity", ins, outs)
