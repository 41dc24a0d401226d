"""ONNX forms of Caffe's neuron layers, Softmax and Eltwise."""
from __future__ import annotations

from runner.onnx_export.graph import GraphBuilder, OnnxExportError
from runner.onnx_export.registry import blob_array, converter
from runner.proto import caffe_pb2

_SAME_OP = {"Sigmoid": "Sigmoid", "TanH": "Tanh", "AbsVal": "Abs", "BNLL": "Softplus",
            "Dropout": "Identity", "Split": "Identity"}


@converter(*_SAME_OP)
def _one_op(b: GraphBuilder, layer, ins, outs):
    if layer.type == "Dropout" and layer.sample_in_test:
        raise OnnxExportError("Dropout with sample_weights_test drops units at inference "
                              "(Bayesian SegNet's Monte Carlo dropout); an ONNX graph here "
                              "is deterministic")
    for y in outs:  # Split: the bottom once per top
        b.node(_SAME_OP[layer.type], ins, [y])


@converter("ReLU")
def _relu(b: GraphBuilder, layer, ins, outs):
    if layer.slope == 0:
        b.node("Relu", ins, outs)
    else:
        b.node("LeakyRelu", ins, outs, alpha=float(layer.slope))


@converter("PReLU")
def _prelu(b: GraphBuilder, layer, ins, outs):
    slope = blob_array(layer.blobs[0])
    ndim = len(layer.bottom_shapes[0])
    if slope.size > 1:  # one per channel (axis 1), broadcast over the axes after it
        slope = slope.reshape((-1,) + (1,) * (ndim - 2))
    b.node("PRelu", [ins[0], b.const("slope", slope)], outs)


@converter("ELU")
def _elu(b: GraphBuilder, layer, ins, outs):
    b.node("Elu", ins, outs, alpha=float(layer.lp.elu_param.alpha))


def _affine(b: GraphBuilder, x: str, scale: float, shift: float) -> str:
    """scale * x + shift, skipping the identity parts."""
    if scale != 1:
        x = b.node("Mul", [x, b.const("scale", scale)])
    if shift != 0:
        x = b.node("Add", [x, b.const("shift", shift)])
    return x


def _finish(b: GraphBuilder, x: str, outs) -> None:
    """Route the last value into the layer's top."""
    b.node("Identity", [x], outs)


@converter("Power")
def _power(b: GraphBuilder, layer, ins, outs):
    p = layer.lp.power_param
    if p.power * p.scale == 0:
        value = 1.0 if p.power == 0 else float(p.shift) ** p.power
        zero = b.node("Mul", [ins[0], b.const("zero", 0.0)])
        b.node("Add", [zero, b.const("value", value)], outs)
        return
    y = _affine(b, ins[0], p.scale, p.shift)
    if p.power != 1:
        y = b.node("Pow", [y, b.const("power", p.power)])
    _finish(b, y, outs)


@converter("Exp")
def _exp(b: GraphBuilder, layer, ins, outs):
    y = b.node("Exp", [_affine(b, ins[0], layer.inner_scale, 0.0)])
    _finish(b, _affine(b, y, layer.outer_scale, 0.0), outs)


@converter("Log")
def _log(b: GraphBuilder, layer, ins, outs):
    p = layer.lp.log_param
    y = b.node("Log", [_affine(b, ins[0], p.scale, p.shift)])
    _finish(b, _affine(b, y, layer.base_scale, 0.0), outs)


@converter("Threshold")
def _threshold(b: GraphBuilder, layer, ins, outs):
    above = b.node("Greater", [ins[0], b.const("threshold", layer.lp.threshold_param.threshold)])
    b.node("Cast", [above], outs, to=1)  # FLOAT


@converter("Clip")
def _clip(b: GraphBuilder, layer, ins, outs):
    p = layer.lp.clip_param
    b.node("Clip", [ins[0], b.const("min", p.min), b.const("max", p.max)], outs)


@converter("Swish")
def _swish(b: GraphBuilder, layer, ins, outs):
    gate = b.node("Sigmoid", [_affine(b, ins[0], layer.lp.swish_param.beta, 0.0)])
    b.node("Mul", [ins[0], gate], outs)


@converter("Softmax")
def _softmax(b: GraphBuilder, layer, ins, outs):
    b.node("Softmax", ins, outs, axis=layer.axis)


@converter("Eltwise")
def _eltwise(b: GraphBuilder, layer, ins, outs):
    E = caffe_pb2.EltwiseParameter
    if layer.op == E.PROD:
        _chain(b, "Mul", ins, outs)
    elif layer.op == E.MAX:
        b.node("Max", ins, outs)
    elif all(c == 1 for c in layer.coeffs):
        b.node("Sum", ins, outs)
    else:
        terms = [x if c == 1 else b.node("Mul", [x, b.const("coeff", c)])
                 for x, c in zip(ins, layer.coeffs)]
        b.node("Sum", terms, outs)


def _chain(b: GraphBuilder, op: str, ins, outs) -> None:
    y = ins[0]
    for x in ins[1:-1]:
        y = b.node(op, [y, x])
    b.node(op, [y, ins[-1]], outs)

