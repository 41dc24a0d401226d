"""ONNX forms of the SSD layers: ReLU6, Permute, Normalize, PriorBox (a constant: the boxes
depend only on the blob shapes, which the graph fixes) and DetectionOutput (decoding, TopK,
NonMaxSuppression and stable TopK sorts into its variable number of rows)."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from runner.onnx_export.graph import GraphBuilder, OnnxExportError
from runner.onnx_export.registry import blob_array, converter
from runner.proto import caffe_pb2


@converter("ReLU6")
def _relu6(b: GraphBuilder, layer, ins, outs):
    b.node("Clip", [ins[0], b.const("min", 0.0), b.const("max", 6.0)], outs)


@converter("Permute")
def _permute(b: GraphBuilder, layer, ins, outs):
    if layer.order == sorted(layer.order):
        b.node("Identity", ins, outs)
        return
    if layer.order[0] != 0:
        b.fix_batch("moves the batch axis")
    b.node("Transpose", ins, outs, perm=layer.order)


@converter("Normalize")
def _normalize(b: GraphBuilder, layer, ins, outs):
    """x / sqrt(sum of squares + eps) * scale, the sum over channels (and space when
    across_spatial), the scale shared or one per channel."""
    x = ins[0]
    ndim = len(layer.bottom_shapes[0])
    axes = list(range(1, ndim)) if layer.across_spatial else [1]
    squares = b.node("ReduceSumSquare", [x, b.ints("axes", axes)], keepdims=1)
    norm = b.node("Sqrt", [b.node("Add", [squares, b.const("eps", layer.eps)])])
    scale = blob_array(layer.blobs[0])
    if scale.size > 1:
        scale = scale.reshape((-1,) + (1,) * (ndim - 2))
    b.node("Mul", [b.node("Div", [x, norm]), b.const("scale", scale)], outs)


@converter("PriorBox")
def _prior_box(b: GraphBuilder, layer, ins, outs):
    feature, image = layer.bottom_shapes
    img_h, img_w = layer.image_size or (image[-2], image[-1])
    b.node("Identity", [b.const("priors", layer.boxes(feature[2], feature[3], img_h, img_w))], outs)


def _coordinate(b: GraphBuilder, boxes: str, i: int) -> str:
    """Column i of the last axis (xmin, ymin, xmax, ymax, or a delta), kept as an axis."""
    return b.node("Slice", [boxes, b.ints("from", [i]), b.ints("to", [i + 1]), b.ints("axis", [-1])])


def _decode(b: GraphBuilder, layer, priors: str, variances: str, loc: str) -> str:
    """DecodeBBoxes of loc (..., P, 4) against priors and variances (P, 4), in the float and
    double steps of runner.layers.bbox.decode_boxes."""
    offsets = loc if layer.encoded_in_target else b.node("Mul", [variances, loc])
    if layer.code_type == caffe_pb2.PriorBoxParameter.CORNER:
        return b.node("Add", [priors, offsets])
    xmin, ymin, xmax, ymax = (_coordinate(b, priors, i) for i in range(4))
    prior_w, prior_h = b.node("Sub", [xmax, xmin]), b.node("Sub", [ymax, ymin])
    if layer.code_type == caffe_pb2.PriorBoxParameter.CORNER_SIZE:
        sides = b.node("Concat", [prior_w, prior_h, prior_w, prior_h], axis=-1)
        return b.node("Add", [priors, b.node("Mul", [offsets, sides])])
    two = b.const("two", 2.0)
    dx, dy, dw, dh = (_coordinate(b, offsets, i) for i in range(4))
    x = b.node("Add", [b.node("Mul", [dx, prior_w]), b.node("Div", [b.node("Add", [xmin, xmax]), two])])
    y = b.node("Add", [b.node("Mul", [dy, prior_h]), b.node("Div", [b.node("Add", [ymin, ymax]), two])])

    def double(v):
        return b.node("Cast", [v], to=TensorProto.DOUBLE)

    def half_side(d, side):   # float(exp(double d) * side), then halved in double
        size = b.node("Cast", [b.node("Mul", [b.node("Exp", [double(d)]), double(side)])], to=TensorProto.FLOAT)
        return b.node("Div", [double(size), b.const("two_d", 2.0, np.float64)])

    half_w, half_h = half_side(dw, prior_w), half_side(dh, prior_h)
    corners = [b.node("Sub", [double(x), half_w]), b.node("Sub", [double(y), half_h]),
               b.node("Add", [double(x), half_w]), b.node("Add", [double(y), half_h])]
    return b.node("Cast", [b.node("Concat", corners, axis=-1)], to=TensorProto.FLOAT)


def _stable_order(b: GraphBuilder, key: str, count: str, largest: int) -> str:
    """Indices sorting `key` (K,) by value, equal values kept in their order (TopK's rule)."""
    order = b.temp("order")
    b.node("TopK", [key, count], [b.temp("sorted"), order], axis=0, largest=largest, sorted=1)
    return order


def _as_caffe_overlaps(b: GraphBuilder, boxes: str) -> str:
    """Boxes for NonMaxSuppression, whose IoU orders each box's corners: an inverted box
    (xmax < xmin or ymax < ymin) becomes an empty one, which overlaps nothing there, as it
    overlaps nothing in the fork's JaccardOverlap (no intersection of positive width and
    height)."""
    xmin, ymin, xmax, ymax = (_coordinate(b, boxes, i) for i in range(4))
    inverted = b.node("Or", [b.node("Less", [xmax, xmin]), b.node("Less", [ymax, ymin])])
    return b.node("Where", [inverted, b.const("empty", [0.0] * 4), boxes])


@converter("DetectionOutput")
def _detection_output(b: GraphBuilder, layer, ins, outs):
    """The fork's DetectionOutput: boxes decoded, per image and class (background left out)
    the top_k best scores above confidence_threshold, NonMaxSuppression (a box is dropped
    when its IoU with a kept one exceeds nms_threshold), then the keep_top_k best of each
    image, rows ordered by image, label, score; one row of -1 per image when nothing is kept.
    Equal scores may keep another of the tied boxes than the fork."""
    if layer.eta < 1:
        raise OnnxExportError(f"adaptive NMS (nms_param.eta {layer.eta:g}) has no ONNX form")
    p, c = layer.num_priors, layer.num_classes
    labels = [k for k in range(c) if k != layer.background]
    classes = len(labels)
    prior_rows = b.node("Reshape", [ins[2], b.ints("priors", [-1, 2, p, 4])])
    priors, variances = (b.node("Gather", [b.node("Gather", [prior_rows, b.const("first", 0, np.int64)], axis=0),
                                           b.const("which", i, np.int64)], axis=0) for i in (0, 1))
    loc = b.node("Transpose", [b.node("Reshape", [ins[0], b.ints("loc", [0, p, layer.loc_classes, 4])])],
                 perm=[0, 2, 1, 3])                                       # N x L x P x 4
    boxes = _decode(b, layer, priors, variances, loc)
    label_index = b.ints("labels", labels)
    scores = b.node("Gather", [b.node("Transpose", [b.node("Reshape", [ins[1], b.ints("conf", [0, p, c])])],
                                      perm=[0, 2, 1]), label_index], axis=1)   # N x C' x P
    if layer.share_location:
        shape = b.node("Concat", [b.node("Slice", [b.node("Shape", [scores]), b.ints("from", [0]), b.ints("to", [2])]),
                                  b.ints("box", [p, 4])], axis=0)
        boxes = b.node("Expand", [boxes, shape])
    else:
        boxes = b.node("Gather", [boxes, label_index], axis=1)
    # each (image, class) a batch entry of its own, with its top_k candidates
    scores = b.node("Reshape", [scores, b.ints("entries", [-1, 1, p])])
    boxes = b.node("Reshape", [boxes, b.ints("entry_boxes", [-1, p, 4])])
    k = p if layer.top_k < 0 else min(layer.top_k, p)
    if k < p:
        best, index = b.temp("best"), b.temp("best_index")
        b.node("TopK", [scores, b.ints("top_k", [k])], [best, index], axis=2, largest=1, sorted=1)
        box_index = b.node("Expand", [b.node("Reshape", [index, b.ints("column", [0, k, 1])]),
                                      b.ints("four", [1, 1, 4])])
        scores, boxes = best, b.node("GatherElements", [boxes, box_index], axis=1)
    selected = b.node("NonMaxSuppression", [_as_caffe_overlaps(b, boxes), scores, b.ints("max_kept", [k]),
                                            b.const("iou", layer.nms_threshold),
                                            b.const("min_score", layer.confidence_threshold)])
    entry = b.node("Gather", [selected, b.const("entry", 0, np.int64)], axis=1)
    score = b.node("GatherND", [scores, selected])
    box = b.node("GatherND", [boxes, b.node("Gather", [selected, b.ints("entry_box", [0, 2])], axis=1)])
    image = b.node("Div", [entry, b.const("classes", classes, np.int64)])
    label = b.node("Gather", [label_index, b.node("Mod", [entry, b.const("classes", classes, np.int64)])])
    rows = (image, label, score, box)
    if layer.keep_top_k > -1:
        rows = _keep_best_per_image(b, rows, layer.keep_top_k, ins[0])
    image, label, score, box = rows
    count = b.node("Shape", [score])
    as_column = [b.node("Unsqueeze", [b.node("Cast", [v], to=TensorProto.FLOAT), b.ints("column", [1])])
                 for v in (image, label)]
    rows = b.node("Concat", [*as_column, b.node("Unsqueeze", [score, b.ints("column", [1])]), box], axis=1)
    _rows_or_placeholders(b, rows, count, ins[0], outs)


def _keep_best_per_image(b: GraphBuilder, rows: tuple, keep_top_k: int, loc: str) -> tuple:
    """The keep_top_k best-scoring of each image's (image, label, score, box) rows (ties in
    label-then-NMS order, TopK keeping equal keys in order), regrouped by image, then label,
    each in score order."""
    def ordered(rows, order):
        return tuple(b.node("Gather", [v, order], axis=0) for v in rows)
    count = b.node("Shape", [rows[2]])
    rows = ordered(rows, _stable_order(b, rows[2], count, largest=1))
    rows = ordered(rows, _stable_order(b, rows[0], count, largest=0))   # by image, in score order
    image = rows[0]
    images = b.node("Gather", [b.node("Shape", [loc]), b.ints("n", [0])])
    per_image = b.node("ReduceSum", [b.node("OneHot", [image, images, b.ints("off_on", [0, 1])], axis=-1),
                                     b.ints("rows", [0])], keepdims=0)
    first = b.node("Gather", [b.node("CumSum", [per_image, b.const("axis", 0, np.int64)], exclusive=1), image])
    position = b.node("Range", [b.const("start", 0, np.int64), b.node("Squeeze", [count]), b.const("step", 1, np.int64)])
    keep = b.node("Less", [b.node("Sub", [position, first]), b.ints("keep_top_k", [keep_top_k])])
    rows = tuple(b.node("Compress", [v, keep], axis=0) for v in rows)
    count = b.node("Shape", [rows[2]])
    rows = ordered(rows, _stable_order(b, rows[1], count, largest=0))   # by label
    return ordered(rows, _stable_order(b, rows[0], count, largest=0))   # then by image


def _rows_or_placeholders(b: GraphBuilder, rows: str, count: str, loc: str, outs) -> None:
    """outs[0] = rows as 1 x 1 x K x 7, or when K is 0 one row [n, -1, ..., -1] per image n."""
    empty = b.node("Equal", [b.node("Squeeze", [count]), b.const("none", 0, np.int64)])
    then, other = b.body(), b.body()
    images = then.node("Range", [then.const("start", 0, np.int64),
                                 then.node("Gather", [then.node("Shape", [loc]), then.const("n", 0, np.int64)]),
                                 then.const("step", 1, np.int64)])
    index = then.node("Unsqueeze", [then.node("Cast", [images], to=TensorProto.FLOAT), then.ints("column", [1])])
    minus_ones = then.node("Expand", [then.const("minus_one", [[-1.0] * 6]),
                                      then.node("Concat", [then.node("Shape", [images]), then.ints("six", [6])], axis=0)])
    placeholders = then.node("Concat", [index, minus_ones], axis=1)
    then_out = then.node("Reshape", [placeholders, then.ints("shape", [1, 1, -1, 7])])
    other_out = other.node("Reshape", [rows, other.ints("shape", [1, 1, -1, 7])])
    branches = {}
    for name, builder, out in (("then_branch", then, then_out), ("else_branch", other, other_out)):
        branches[name] = helper.make_graph(builder.nodes, builder.temp(name), [],
                                           [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])
    b.node("If", [empty], outs, **branches)
