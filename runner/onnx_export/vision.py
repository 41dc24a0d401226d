"""ONNX forms of Caffe's vision and normalisation layers: (de)convolution, pooling and SPP
with Caffe's rounding and AVE divisor, LRN (both regions), BatchNorm, MVN, Scale, Bias,
InnerProduct, Embed."""
from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto

from runner.layers.common import FLT_MAX
from runner.layers.vision import PoolPlan
from runner.onnx_export.graph import GraphBuilder, OnnxExportError
from runner.onnx_export.registry import blob_array, converter
from runner.proto import caffe_pb2
from runner.shapes import pooling_geometry, spatial_params, spp_geometry


@converter("Convolution", "Deconvolution", "ConvolutionDepthwise", "DepthwiseConvolution")
def _convolution(b: GraphBuilder, layer, ins, outs):
    if layer.axis != 1:
        raise OnnxExportError(f"convolution_param.axis {layer.axis} (ONNX convolves axis 1)")
    n_spatial = len(layer.bottom_shapes[0]) - 2
    _, stride, pad, dilation = spatial_params(layer.lp.convolution_param, n_spatial)
    weights = [b.const("weight", blob_array(layer.blobs[0]))]
    if layer.bias_term:
        weights.append(b.const("bias", blob_array(layer.blobs[1])))
    op = "Conv" if layer.type == "Convolution" else "ConvTranspose"
    for x, y in zip(ins, outs):
        b.node(op, [x, *weights], [y], kernel_shape=list(layer.blobs[0].shape[2:]),
               strides=stride, pads=pad * 2, dilations=dilation,
               group=layer.lp.convolution_param.group)


@converter("Pooling")
def _pooling(b: GraphBuilder, layer, ins, outs):
    h, w = layer.bottom_shapes[0][2:]
    p = layer.lp.pooling_param
    plan = PoolPlan(pooling_geometry(p, h, w), p.round_mode == caffe_pb2.PoolingParameter.CEIL, h, w)
    if layer.with_mask:
        _max_pool_with_mask(b, ins[0], plan, outs)
    else:
        _pool(b, ins[0], plan, layer.is_max, outs)


def _max_pool_with_mask(b: GraphBuilder, x: str, plan: PoolPlan, outs) -> None:
    """MAX pooling and Caffe's mask (h * W + w in the bottom, as float; -1 for a window
    wholly in the padding) from MaxPool's flat indices, which count the unpadded input, or
    the explicitly padded one where Caffe's -FLT_MAX padding is needed."""
    h, w = plan.size
    kernel, stride, before = list(plan.kernel), list(plan.stride), list(plan.pad)
    after = [max(a, 0) for a in plan.after]
    index = b.temp("index")
    if all(a < k for a, k in zip(after, kernel)):
        b.node("MaxPool", [x], [outs[0], index], kernel_shape=kernel, strides=stride, pads=before + after)
        plane = b.node("Mod", [index, b.ints("plane", [h * w])])
    else:
        padded = b.node("Pad", [x, b.ints("pads", [0, 0, *before, 0, 0, *plan.after]),
                                b.const("fill", -FLT_MAX)])
        b.node("MaxPool", [padded], [outs[0], index], kernel_shape=kernel, strides=stride)
        padded_h, padded_w = h + before[0] + plan.after[0], w + before[1] + plan.after[1]
        at = b.node("Mod", [index, b.ints("padded_plane", [padded_h * padded_w])])
        row = b.node("Sub", [b.node("Div", [at, b.ints("padded_w", [padded_w])]), b.ints("top", [before[0]])])
        col = b.node("Sub", [b.node("Mod", [at, b.ints("padded_w", [padded_w])]), b.ints("left", [before[1]])])
        inside = b.node("And", [
            b.node("And", [b.node("GreaterOrEqual", [row, b.ints("zero", [0])]), b.node("Less", [row, b.ints("h", [h])])]),
            b.node("And", [b.node("GreaterOrEqual", [col, b.ints("zero", [0])]), b.node("Less", [col, b.ints("w", [w])])])])
        plane = b.node("Where", [inside, b.node("Add", [b.node("Mul", [row, b.ints("w", [w])]), col]),
                                 b.ints("outside", [-1])])
    b.node("Cast", [plane], [outs[1]], to=TensorProto.FLOAT)


@converter("SPP")
def _spp(b: GraphBuilder, layer, ins, outs):
    """Each pyramid level pooled as Caffe's SPP does, flattened, then concatenated."""
    h, w = layer.bottom_shapes[0][2:]
    levels = layer.lp.spp_param.pyramid_height
    plans = [PoolPlan(spp_geometry(level, h, w), True, h, w) for level in range(levels)]
    if levels == 1:
        _pool(b, ins[0], plans[0], layer.is_max, outs)
        return
    flat = [b.node("Flatten", [_pool(b, ins[0], plan, layer.is_max)], axis=1) for plan in plans]
    b.node("Concat", flat, outs, axis=1)


def _pool(b: GraphBuilder, x: str, plan: PoolPlan, is_max: bool, outs=None) -> str:
    """Explicit pads make ONNX's floor-mode window count Caffe's (ceil or floor, with the
    last-window clip); AVE is a zero-padded sum times Caffe's 1/divisor per output cell."""
    kernel, stride = list(plan.kernel), list(plan.stride)
    before = list(plan.pad)
    pads = [0, 0, *before, 0, 0, *plan.after]
    if is_max:
        after = [max(a, 0) for a in plan.after]  # a negative one drops rows no window reaches
        if all(a < k for a, k in zip(after, kernel)):
            return b.node("MaxPool", [x], outs, kernel_shape=kernel, strides=stride, pads=before + after)
        # windows wholly past the input: Caffe's -FLT_MAX, which ONNX pads cannot give
        padded = b.node("Pad", [x, b.ints("pads", pads), b.const("fill", -FLT_MAX)])
        return b.node("MaxPool", [padded], outs, kernel_shape=kernel, strides=stride)
    padded = b.node("Pad", [x, b.ints("pads", pads)])
    area = kernel[0] * kernel[1]
    divisor = plan.divisor(torch.zeros((), dtype=torch.float64)).numpy()
    if np.all(divisor == area):
        return b.node("AveragePool", [padded], outs, kernel_shape=kernel, strides=stride)
    mean = b.node("AveragePool", [padded], kernel_shape=kernel, strides=stride)
    return b.node("Mul", [mean, b.const("area_over_divisor", (area / divisor)[None, None])], outs)


@converter("LRN")
def _lrn(b: GraphBuilder, layer, ins, outs):
    n = layer.size
    if not layer.within:
        b.node("LRN", ins, outs, size=n, alpha=float(layer.alpha), beta=float(layer.beta),
               bias=float(layer.k))
        return
    x = ins[0]
    half = (n - 1) // 2
    pooled = b.node("AveragePool", [b.node("Mul", [x, x])], kernel_shape=[n, n], strides=[1, 1],
                    pads=[half] * 4, count_include_pad=1)
    base = b.node("Add", [b.node("Mul", [pooled, b.const("alpha", layer.alpha)]), b.const("one", 1.0)])
    b.node("Mul", [x, b.node("Pow", [base, b.const("minus_beta", -layer.beta)])], outs)


@converter("BatchNorm")
def _batch_norm(b: GraphBuilder, layer, ins, outs):
    """Inference with Caffe's global statistics, mean_acc/s and var_acc/s (s = 0 gives 0)."""
    if layer.use_global_stats is False:
        raise OnnxExportError("use_global_stats: false normalises by batch statistics, "
                              "which ONNX inference does not do")
    mean_acc, var_acc, s = (blob_array(blob).astype(np.float64) for blob in layer.blobs)
    factor = 0.0 if s[0] == 0 else 1.0 / s[0]
    channels = mean_acc.shape[0]
    b.node("BatchNormalization",
           [ins[0], b.const("scale", np.ones(channels)), b.const("bias", np.zeros(channels)),
            b.const("mean", mean_acc * factor), b.const("var", var_acc * factor)],
           outs, epsilon=float(layer.eps))


@converter("MVN")
def _mvn(b: GraphBuilder, layer, ins, outs):
    """x - mean, divided by (std + eps) with normalize_variance, per (sample, channel) or
    per sample across channels, as Caffe's MVN."""
    p = layer.lp.mvn_param
    shape = layer.bottom_shapes[0]
    rows = b.node("Reshape", [ins[0], b.ints("rows", [0, -1] if p.across_channels else [0, shape[1], -1])])
    axis = b.ints("axis", [1 if p.across_channels else 2])
    centred = b.node("Sub", [rows, b.node("ReduceMean", [rows, axis], keepdims=1)])
    if p.normalize_variance:
        std = b.node("Sqrt", [b.node("ReduceMean", [b.node("Mul", [centred, centred]), axis], keepdims=1)])
        centred = b.node("Div", [centred, b.node("Add", [std, b.const("eps", p.eps)])])
    b.node("Reshape", [centred, b.ints("shape", [0, *shape[1:]])], outs)


@converter("Embed")
def _embed(b: GraphBuilder, layer, ins, outs):
    """Rows of the table picked by the bottom's values (as integers), plus the bias."""
    index = b.node("Cast", ins, to=7)  # INT64
    table = b.const("weight", blob_array(layer.blobs[0]))
    if not layer.bias_term:
        b.node("Gather", [table, index], outs, axis=0)
        return
    rows = b.node("Gather", [table, index], axis=0)
    b.node("Add", [rows, b.const("bias", blob_array(layer.blobs[1]))], outs)


def _broadcast(array: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """A blob reshaped to broadcast against a rank-`ndim` tensor from `axis` on."""
    return array.reshape(array.shape + (1,) * (ndim - axis - array.ndim))


def _operand(b: GraphBuilder, layer, ins, blob_index: int, what: str) -> str:
    """The Scale/Bias operand (the second bottom, or a learned blob) shaped to broadcast
    against bottom 0 from the layer's axis."""
    ndim = len(layer.bottom_shapes[0])
    if layer.from_bottom:
        shape = layer.bottom_shapes[1]
        target = list(shape) + [1] * (ndim - layer.axis - len(shape))
        return b.node("Reshape", [ins[1], b.ints(f"{what}_shape", target)])
    return b.const(what, _broadcast(blob_array(layer.blobs[blob_index]), layer.axis, ndim))


@converter("Scale")
def _scale(b: GraphBuilder, layer, ins, outs):
    scale = _operand(b, layer, ins, 0, "scale")
    if not layer.bias_term:
        b.node("Mul", [ins[0], scale], outs)
        return
    bias = b.const("bias", _broadcast(blob_array(layer.blobs[-1]), layer.axis, len(layer.bottom_shapes[0])))
    b.node("Add", [b.node("Mul", [ins[0], scale]), bias], outs)


@converter("Bias")
def _bias(b: GraphBuilder, layer, ins, outs):
    b.node("Add", [ins[0], _operand(b, layer, ins, 0, "bias")], outs)


@converter("InnerProduct")
def _inner_product(b: GraphBuilder, layer, ins, outs):
    """Gemm on the bottom flattened from `axis` (axis 1), else MatMul over the lead axes."""
    weight = blob_array(layer.blobs[0])
    weight_t = weight if layer.transpose else weight.T  # (K, N)
    bottom = layer.bottom_shapes[0]
    if layer.axis == 1:
        flat = b.node("Flatten", ins, axis=1)
        inputs = [flat, b.const("weight", weight_t)]
        if layer.bias_term:
            inputs.append(b.const("bias", blob_array(layer.blobs[1])))
        b.node("Gemm", inputs, outs)
        return
    if layer.axis == 0:
        b.fix_batch("flattens the batch axis into its input")
    lead = [0] + list(bottom[1:layer.axis]) if layer.axis > 0 else []
    flat = b.node("Reshape", [ins[0], b.ints("shape", lead + [-1])])
    if not layer.bias_term:
        b.node("MatMul", [flat, b.const("weight", weight_t)], outs)
        return
    product = b.node("MatMul", [flat, b.const("weight", weight_t)])
    b.node("Add", [product, b.const("bias", blob_array(layer.blobs[1]))], outs)
