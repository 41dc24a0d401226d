"""ONNX forms of the other fork layers: ShuffleChannel (Reshape, Transpose, Reshape), Interp
(Slice for its crop, then Resize, linear with corners aligned), ROIPooling (MaxRoiPool,
whose definition is Fast R-CNN's) and Axpy (Mul, Add). The depthwise convolutions are
Convolution modules and export as Conv (runner/onnx_export/vision.py)."""
from __future__ import annotations

from runner.onnx_export.graph import GraphBuilder
from runner.onnx_export.registry import converter


@converter("ShuffleChannel")
def _shuffle_channel(b: GraphBuilder, layer, ins, outs):
    shape = layer.bottom_shapes[0]
    group = layer.lp.shuffle_channel_param.group
    grouped = b.node("Reshape", [ins[0], b.ints("grouped", [0, group, shape[1] // group, -1])])
    swapped = b.node("Transpose", [grouped], perm=[0, 2, 1, 3])
    b.node("Reshape", [swapped, b.ints("shape", [0, *shape[1:]])], outs)


@converter("Interp")
def _interp(b: GraphBuilder, layer, ins, outs):
    start, h_eff, w_eff = layer.crop
    x = ins[0]
    if (h_eff, w_eff) != tuple(layer.bottom_shapes[0][2:]):
        x = b.node("Slice", [x, b.ints("starts", [start, start]),
                             b.ints("ends", [start + h_eff, start + w_eff]), b.ints("axes", [2, 3])])
    batch_channels = b.node("Slice", [b.node("Shape", [x]), b.ints("from", [0]), b.ints("to", [2])])
    sizes = b.node("Concat", [batch_channels, b.ints("hw", layer.top_shapes[0][2:])], axis=0)
    b.node("Resize", [x, "", "", sizes], outs, mode="linear",
           coordinate_transformation_mode="align_corners")


@converter("ROIPooling")
def _roi_pooling(b: GraphBuilder, layer, ins, outs):
    p = layer.lp.roi_pooling_param
    rois = b.node("Flatten", [ins[1]], axis=1)   # (R, 5, 1, 1) -> (R, 5)
    b.node("MaxRoiPool", [ins[0], rois], outs, pooled_shape=[p.pooled_h, p.pooled_w],
           spatial_scale=p.spatial_scale)


@converter("Axpy")
def _axpy(b: GraphBuilder, layer, ins, outs):
    ndim = len(layer.bottom_shapes[1])
    scale = b.node("Reshape", [ins[0], b.ints("shape", [0, 0] + [1] * (ndim - 2))])
    b.node("Add", [b.node("Mul", [scale, ins[1]]), ins[2]], outs)
