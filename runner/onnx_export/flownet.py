"""ONNX forms of the FlowNet 2.0 layers that have one: NegReLU (Where), ChannelNorm (Sqrt
of ReduceSumSquare over the channels) and Accum (Resize, linear with corners aligned, then
Concat)."""
from __future__ import annotations

from runner.onnx_export.graph import GraphBuilder, OnnxExportError
from runner.onnx_export.registry import converter


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
    h, w = layer.size
    if h == 1 or w == 1:
        raise OnnxExportError(f"a {h} x {w} top: the fork's corner-aligned positions divide "
                              "by the top size minus 1")
    resized = ins[:-1] if layer.lp.accum_param.have_reference else ins
    parts = []
    for x in resized:
        lead = b.node("Slice", [b.node("Shape", [x]), b.ints("from", [0]), b.ints("to", [2])])
        sizes = b.node("Concat", [lead, b.ints("hw", [h, w])], axis=0)
        parts.append(b.node("Resize", [x, "", "", sizes], mode="linear",
                            coordinate_transformation_mode="align_corners"))
    b.node("Concat", parts, outs, axis=1)
