"""ONNX forms of the SSD layers that have one: ReLU6, Permute, Normalize and PriorBox (a
constant: the boxes depend only on the blob shapes, which the graph fixes).
DetectionOutput (NMS into a variable number of rows) has none: export the blobs it reads
(`outputs=["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]`)."""
from __future__ import annotations

from runner.onnx_export.graph import GraphBuilder
from runner.onnx_export.registry import blob_array, converter


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
