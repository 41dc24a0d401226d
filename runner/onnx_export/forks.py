"""ONNX forms of the other fork layers: ShuffleChannel and Reorg (Reshape, Transpose, Reshape),
SegNet's BN in INFERENCE mode (Mul, Add), TSN's BN (BatchNormalization), Interp (Slice for
its crop, then Resize, linear with corners aligned), ROIPooling (MaxRoiPool, whose
definition is Fast R-CNN's), PSROIPooling (bin masks and Einsum), Proposal (anchors, TopK
and NonMaxSuppression), Axpy (Mul, Add) and Upsample (Resize, nearest; with SegNet's
pooling mask, ScatterElements into a zero top). The depthwise convolutions are Convolution
modules and export as Conv (runner/onnx_export/vision.py)."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from runner.onnx_export.graph import GraphBuilder, OnnxExportError
from runner.onnx_export.registry import blob_array, converter
from runner.proto import caffe_pb2
from runner.shapes_forks import interp_geometry


@converter("ShuffleChannel")
def _shuffle_channel(b: GraphBuilder, layer, ins, outs):
    shape = layer.bottom_shapes[0]
    group = layer.lp.shuffle_channel_param.group
    grouped = b.node("Reshape", [ins[0], b.ints("grouped", [0, group, shape[1] // group, -1])])
    swapped = b.node("Transpose", [grouped], perm=[0, 2, 1, 3])
    b.node("Reshape", [swapped, b.ints("shape", [0, *shape[1:]])], outs)


@converter("Reorg")
def _reorg(b: GraphBuilder, layer, ins, outs):
    _, c, h, w = layer.bottom_shapes[0]
    s = layer.lp.reorg_param.stride
    if layer.lp.reorg_param.reverse:
        blocks, perm = [0, s, s, c // (s * s), h, w], [0, 3, 4, 1, 5, 2]
    else:
        blocks, perm = [0, c // (s * s), h, s, w, s], [0, 3, 5, 1, 2, 4]
    grouped = b.node("Reshape", [ins[0], b.ints("blocks", blocks)])
    moved = b.node("Transpose", [grouped], perm=perm)
    b.node("Reshape", [moved, b.ints("shape", [0, *layer.top_shapes[0][1:]])], outs)


@converter("BN")
def _bn(b: GraphBuilder, layer, ins, outs):
    if layer.tsn:   # inference uses the running statistics
        slope, bias, mean, var = (blob_array(blob).reshape(-1) for blob in layer.blobs)
        b.node("BatchNormalization", [ins[0], b.const("scale", slope), b.const("bias", bias),
                                      b.const("mean", mean), b.const("var", var)],
               outs, epsilon=float(layer.lp.bn_param.eps))
        return
    if layer.lp.bn_param.bn_mode != caffe_pb2.BNParameter.INFERENCE:
        raise OnnxExportError("BN in LEARN mode normalises by batch statistics, which ONNX "
                              "inference does not do; export the bn_mode: INFERENCE net with "
                              "the weights SegNet's compute_bn_statistics.py writes")
    view = (1, layer.bottom_shapes[0][1]) + (1,) * (len(layer.bottom_shapes[0]) - 2)
    scale, shift = (b.const(name, blob_array(blob).reshape(view))
                    for name, blob in zip(("scale", "shift"), layer.blobs))
    b.node("Add", [b.node("Mul", [ins[0], scale]), shift], outs)


@converter("Interp")
def _interp(b: GraphBuilder, layer, ins, outs):
    pad_beg, h_eff, w_eff, _, _ = interp_geometry(layer.lp, layer.bottom_shapes)
    start = -pad_beg
    x = ins[0]
    if (h_eff, w_eff) != tuple(layer.bottom_shapes[0][2:]):
        x = b.node("Slice", [x, b.ints("starts", [start, start]),
                             b.ints("ends", [start + h_eff, start + w_eff]), b.ints("axes", [2, 3])])
    b.node("Resize", [x, "", "", _sizes(b, x, layer)], outs, mode="linear",
           coordinate_transformation_mode="align_corners")


def _sizes(b: GraphBuilder, x: str, layer) -> str:
    """Resize's sizes: x's own leading dims (the batch stays free), then the top's H, W."""
    ndim = len(layer.bottom_shapes[0])
    lead = b.node("Slice", [b.node("Shape", [x]), b.ints("from", [0]), b.ints("to", [ndim - 2])])
    return b.node("Concat", [lead, b.ints("hw", layer.top_shapes[0][-2:])], axis=0)


@converter("ROIPooling")
def _roi_pooling(b: GraphBuilder, layer, ins, outs):
    p = layer.lp.roi_pooling_param
    rois = b.node("Flatten", [ins[1]], axis=1)   # (R, 5, 1, 1) -> (R, 5)
    b.node("MaxRoiPool", [ins[0], rois], outs, pooled_shape=[p.pooled_h, p.pooled_w],
           spatial_scale=p.spatial_scale)


@converter("PSROIPooling")
def _psroi_pooling(b: GraphBuilder, layer, ins, outs):
    """Each region's bins as row and column masks over the map (the fork's floor/ceil bin
    edges, clipped), the masked sums as two Einsum contractions over all images, the region's
    image then picked (GatherND), divided by the bin's area (0 for an empty bin)."""
    p = layer.lp.psroi_pooling_param
    groups, dim = p.group_size, p.output_dim
    _, _, height, width = layer.bottom_shapes[0]
    rois = b.node("Reshape", [ins[1], b.ints("rois", [-1, 5])])

    def column(i):
        return b.node("Slice", [rois, b.ints("from", [i]), b.ints("to", [i + 1]), b.ints("axis", [1])])
    scale = b.const("scale", p.spatial_scale)

    def c_round(v):   # halves away from zero
        return b.node("Mul", [b.node("Sign", [v]), b.node("Floor", [b.node("Add", [b.node("Abs", [v]),
                                                                                  b.const("half", 0.5)])])])
    one = b.const("one", 1.0)
    x1, y1 = (b.node("Mul", [c_round(column(i)), scale]) for i in (1, 2))
    x2, y2 = (b.node("Mul", [b.node("Add", [c_round(column(i)), one]), scale]) for i in (3, 4))

    def masks(start, end, size):
        """(R, groups, size): whether each position lies in each bin along one axis."""
        bin_size = b.node("Div", [b.node("Max", [b.node("Sub", [end, start]), b.const("least", 0.1)]),
                                  b.const("groups", float(groups))])
        steps = b.const("steps", np.arange(groups, dtype=np.float32)[None])
        begin = b.node("Floor", [b.node("Add", [b.node("Mul", [steps, bin_size]), start])])
        finish = b.node("Ceil", [b.node("Add", [b.node("Mul", [b.node("Add", [steps, one]), bin_size]), start])])
        begin, finish = (b.node("Unsqueeze", [b.node("Clip", [v, b.const("low", 0.0), b.const("high", float(size))]),
                                              b.ints("positions", [2])]) for v in (begin, finish))
        at = b.const("at", np.arange(size, dtype=np.float32)[None, None])
        inside = b.node("And", [b.node("GreaterOrEqual", [at, begin]), b.node("Less", [at, finish])])
        return b.node("Cast", [inside], to=TensorProto.FLOAT)

    rows, cols = masks(y1, y2, height), masks(x1, x2, width)
    planes = b.node("Reshape", [ins[0], b.ints("planes", [0, dim, groups, groups, height, width])])
    by_cols = b.node("Einsum", [planes, cols], equation="ndijhw,rjw->nrdijh")
    sums = b.node("Einsum", [by_cols, rows], equation="nrdijh,rih->nrdij")
    image = b.node("Cast", [column(0)], to=TensorProto.INT64)
    region = b.node("Unsqueeze", [b.node("Range", [b.const("first", 0, np.int64),
                                                   b.node("Squeeze", [b.node("Shape", [image], start=0, end=1)]),
                                                   b.const("step", 1, np.int64)]), b.ints("column", [1])])
    picked = b.node("GatherND", [b.node("Transpose", [sums], perm=[1, 0, 2, 3, 4]),
                                 b.node("Concat", [region, image], axis=1)])   # (R, dim, g, g)
    area = b.node("Mul", [b.node("Unsqueeze", [b.node("ReduceSum", [rows, b.ints("h", [2])], keepdims=0),
                                               b.ints("j", [2])]),
                          b.node("Unsqueeze", [b.node("ReduceSum", [cols, b.ints("w", [2])], keepdims=0),
                                               b.ints("i", [1])])])                   # (R, g, g)
    area = b.node("Unsqueeze", [area, b.ints("channel", [1])])
    zero = b.const("zero", 0.0)
    b.node("Where", [b.node("Greater", [area, zero]), b.node("Div", [picked, b.node("Max", [area, one])]), zero], outs)


@converter("Axpy")
def _axpy(b: GraphBuilder, layer, ins, outs):
    ndim = len(layer.bottom_shapes[1])
    scale = b.node("Reshape", [ins[0], b.ints("shape", [0, 0] + [1] * (ndim - 2))])
    b.node("Add", [b.node("Mul", [scale, ins[1]]), ins[2]], outs)


@converter("Upsample")
def _upsample(b: GraphBuilder, layer, ins, outs):
    if len(ins) > 1:   # SegNet's: each value written where the mask points, in a zero top
        height, width = layer.top_shapes[0][2:]
        values = b.node("Reshape", [ins[0], b.ints("planes", [0, 0, -1])])
        index = b.node("Cast", [b.node("Reshape", [ins[1], b.ints("planes", [0, 0, -1])])],
                       to=TensorProto.INT64)
        lead = b.node("Slice", [b.node("Shape", [ins[0]]), b.ints("from", [0]), b.ints("to", [2])])
        shape = b.node("Concat", [lead, b.ints("plane", [height * width])], axis=0)
        zeros = b.filled(shape, 0.0)
        top = b.node("ScatterElements", [zeros, index, values], axis=2)
        b.node("Reshape", [top, b.ints("shape", [0, 0, height, width])], outs)
        return
    b.node("Resize", [ins[0], "", "", _sizes(b, ins[0], layer)], outs, mode="nearest",
           coordinate_transformation_mode="asymmetric", nearest_mode="floor")


@converter("Proposal")
def _proposal(b: GraphBuilder, layer, ins, outs):
    """py-faster-rcnn's proposals for one image: the shifted anchors (constants of the
    feature map's size) moved by the deltas as bbox_transform_inv, clipped to im_info's
    height and width, those under min_size * scale dropped (Compress), the pre_nms_topn best
    (TopK), then NonMaxSuppression on boxes grown by one pixel at their far corner, which
    makes its overlap py_cpu_nms's +1 one, at most post_nms_topn kept. Boxes of equal score
    may be taken in another order than the layer's (numpy's argsort, reversed), and so
    another of them kept (a ReLU map with dead cells gives such ties)."""
    p = layer.lp.proposal_param
    b.fix_batch("(Proposal) reads one image, as py-faster-rcnn's layer")
    count = len(layer.anchors)
    _, _, height, width = layer.bottom_shapes[0]
    fg = b.node("Slice", [ins[0], b.ints("from", [count]), b.ints("to", [2 * count]), b.ints("axis", [1])])
    fg = b.node("Reshape", [b.node("Transpose", [fg], perm=[0, 2, 3, 1]), b.ints("flat", [-1])])
    deltas = b.node("Reshape", [b.node("Transpose", [ins[1]], perm=[0, 2, 3, 1]), b.ints("rows", [-1, 4])])
    anchors = layer.cell_anchors(height, width)
    sizes = anchors[:, 2:] - anchors[:, :2] + np.float32(1)
    centres = anchors[:, :2] + np.float32(0.5) * sizes
    shift = b.node("Slice", [deltas, b.ints("from", [0]), b.ints("to", [2]), b.ints("axis", [1])])
    scale = b.node("Slice", [deltas, b.ints("from", [2]), b.ints("to", [4]), b.ints("axis", [1])])
    size_c = b.const("sizes", sizes)
    centre = b.node("Add", [b.node("Mul", [shift, size_c]), b.const("centres", centres)])
    half = b.node("Mul", [b.const("half", 0.5), b.node("Mul", [b.node("Exp", [scale]), size_c])])
    info = b.node("Reshape", [ins[2], b.ints("info", [-1])])

    def item(i):
        return b.node("Gather", [info, b.ints(f"info{i}", [i])])
    one = b.const("one", 1.0)
    far = b.node("Concat", [b.node("Sub", [item(1), one]), b.node("Sub", [item(0), one])], axis=0)
    zero = b.const("zero", 0.0)
    first = b.node("Min", [b.node("Max", [b.node("Sub", [centre, half]), zero]), far])
    last = b.node("Min", [b.node("Max", [b.node("Add", [centre, half]), zero]), far])
    extent = b.node("Add", [b.node("Sub", [last, first]), one])
    least = b.node("Mul", [b.const("min_size", float(p.min_size)), item(2)])
    big = b.node("ReduceMin", [b.node("Cast", [b.node("GreaterOrEqual", [extent, least])], to=TensorProto.INT64),
                               b.ints("corners", [1])], keepdims=0)
    big = b.node("Cast", [big], to=TensorProto.BOOL)
    boxes = b.node("Compress", [b.node("Concat", [first, last], axis=1), big], axis=0)
    fg = b.node("Compress", [fg, big], axis=0)
    kept = b.node("Shape", [fg])
    if p.pre_nms_topn > 0:
        kept = b.node("Min", [kept, b.ints("pre_nms_topn", [p.pre_nms_topn])])
    best, order = b.temp("best"), b.temp("order")
    b.node("TopK", [fg, kept], [best, order], axis=0, largest=1, sorted=1)
    boxes = b.node("Gather", [boxes, order], axis=0)
    grown = b.node("Add", [boxes, b.const("grow", [0.0, 0.0, 1.0, 1.0])])
    selected = b.node("NonMaxSuppression", [b.node("Unsqueeze", [grown, b.ints("batch", [0])]),
                                            b.node("Reshape", [best, b.ints("scores", [1, 1, -1])]),
                                            b.ints("post_nms_topn", [p.post_nms_topn]),
                                            b.const("iou", p.nms_thresh)])
    index = b.node("Gather", [selected, b.const("box", 2, np.int64)], axis=1)
    rois = b.node("Gather", [boxes, index], axis=0)
    b.node("Concat", [b.node("Mul", [b.node("Slice", [rois, b.ints("from", [0]), b.ints("to", [1]),
                                                         b.ints("axis", [1])]), zero]), rois], outs[:1], axis=1)
    if len(outs) > 1:
        b.node("Unsqueeze", [b.node("Gather", [best, index], axis=0), b.ints("column", [1])], outs[1:])
