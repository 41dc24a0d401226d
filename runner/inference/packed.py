"""2-D convolutions and inner products as oneDNN primitives with prepacked weights and
fused ReLU / sum, on channels_last activations (CPU, float32).

oneDNN reorders a convolution's weights into its blocked layout on every call of
F.conv2d; here that happens once per thread count: the layout oneDNN picks depends on the
threads it runs on, and weights packed for 2 threads ran 3.4x slower at 1 (ResNet-50,
batch 1), so each thread count a forward runs at gets its own packed copy, made at its
first use (runner/threads.py changes the count under load). A ReLU that is the only
reader of a convolution's or inner product's top, and an Eltwise SUM (coefficients 1) of a
convolution's top with a blob computed earlier, run inside it as oneDNN post-ops, as
torch.compile's CPU backend does with the same ops. oneDNN's inner product was about 2.5x
faster than MKL's matrix product at batch 8, and at batch 1 as fast (an Intel CPU) or
faster (AMD EPYC: 4.8 against 5.6 ms for 8192 -> 4096). Where the ops are missing (a torch
without oneDNN) nothing is packed.
"""
from __future__ import annotations

import torch
from torch import nn

from runner.inference.fold import FoldedAffine, Step, absorb_into_producers
from runner.proto import caffe_pb2

_MKLDNN = getattr(torch.ops, "mkldnn", None)
CHANNELS_LAST = torch.channels_last


def available() -> bool:
    """Whether this torch has the oneDNN convolution and inner-product ops used here."""
    return (torch.backends.mkldnn.is_available() and _MKLDNN is not None
            and hasattr(_MKLDNN, "_convolution_pointwise")
            and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight")
            and hasattr(_MKLDNN, "_linear_pointwise") and hasattr(_MKLDNN, "_reorder_linear_weight"))


class PackedWeights:
    """A weight reordered by `pack(weight)` for each torch thread count it is used at.
    Shared by the fused variants of one layer."""

    def __init__(self, weight: torch.Tensor, pack):
        self.dense = weight.detach().contiguous()
        self.pack = pack
        self.by_threads: dict[int, torch.Tensor] = {}

    def get(self) -> torch.Tensor:
        """The weight packed for torch's current thread count."""
        threads = torch.get_num_threads()
        packed = self.by_threads.get(threads)
        if packed is None:
            packed = self.by_threads[threads] = self.pack(self.dense)
        return packed


class PackedConv(nn.Module):
    """One oneDNN convolution: weight prepacked for the input shape, optional bias, optional
    fused add of a second input and then optional relu. Returns channels_last tensors."""

    def __init__(self, name: str, weight: torch.Tensor | PackedWeights, bias: torch.Tensor | None,
                 kw: dict, input_shape, add: bool = False, relu: bool = False):
        super().__init__()
        self.name = name
        self.geometry = ([int(v) for v in kw["padding"]], [int(v) for v in kw["stride"]],
                         [int(v) for v in kw["dilation"]], int(kw["groups"]))
        if not isinstance(weight, PackedWeights):
            padding, stride, dilation, groups = self.geometry
            weight = PackedWeights(weight, lambda w: torch._C._nn.mkldnn_reorder_conv2d_weight(
                w.to_mkldnn(), padding, stride, dilation, groups, list(input_shape)))
        self.weights = weight
        self.register_buffer("bias", None if bias is None else bias.detach().contiguous(),
                             persistent=False)
        self.kw, self.input_shape = kw, input_shape
        self.add, self.relu = add, relu

    def fused(self, name: str, add: bool = False, relu: bool = False) -> "PackedConv":
        """This convolution (the same packed weights) with one more post-op."""
        return PackedConv(f"{self.name}+{name}", self.weights, self.bias, self.kw,
                          self.input_shape, self.add or add, self.relu or relu)

    def forward(self, x, *other):
        x = x.contiguous(memory_format=CHANNELS_LAST)
        padding, stride, dilation, groups = self.geometry
        weight = self.weights.get()
        if self.add:
            other = other[0].contiguous(memory_format=CHANNELS_LAST)
            y = _MKLDNN._convolution_pointwise.binary(
                x, other, weight, self.bias, padding, stride, dilation, groups, "add", None,
                "relu" if self.relu else None, [], None)
            return (y,)
        return (_MKLDNN._convolution_pointwise(x, weight, self.bias, padding, stride,
                                                dilation, groups, "relu" if self.relu else "none",
                                                [], None),)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, add={self.add}, relu={self.relu}"


class PackedLinear(nn.Module):
    """One oneDNN inner product: weight prepacked for the batch size, optional fused relu."""

    def __init__(self, name: str, weight: torch.Tensor | PackedWeights, bias: torch.Tensor | None,
                 batch: int, relu: bool = False):
        super().__init__()
        self.name, self.batch, self.relu = name, batch, relu
        if not isinstance(weight, PackedWeights):
            weight = PackedWeights(weight, lambda w: _MKLDNN._reorder_linear_weight(w, batch))
        self.weights = weight
        self.register_buffer("bias", None if bias is None else bias.detach().contiguous(),
                             persistent=False)

    def fused(self, name: str, relu: bool = False) -> "PackedLinear":
        """This inner product (the same packed weights) with a fused relu."""
        return PackedLinear(f"{self.name}+{name}", self.weights, self.bias, self.batch, relu)

    def forward(self, x):
        if x.dim() != 2:
            x = x.flatten(1)
        return (_MKLDNN._linear_pointwise(x, self.weights.get(), self.bias,
                                          "relu" if self.relu else "none", [], ""),)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, relu={self.relu}"


def _linear_parts(layer: nn.Module, out_shape):
    """(weight as (out, in), bias) of an axis-1 InnerProduct with a 2-D top, else None."""
    if len(out_shape) != 2:
        return None
    if isinstance(layer, FoldedAffine) and layer.type == "InnerProduct":
        weight, bias = layer.weight, layer.bias
    elif getattr(layer, "type", None) == "InnerProduct" and layer.axis == 1:
        weight = layer.blobs[0].t() if layer.transpose else layer.blobs[0]
        bias = layer.blobs[1] if layer.bias_term else None
    else:
        return None
    if weight.dtype != torch.float32 or weight.device.type != "cpu":
        return None
    return weight.detach(), None if bias is None else bias.detach()


def _conv_parts(layer: nn.Module):
    """(weight, bias, kw) of a 2-D channel-axis-1 convolution with one bottom, else None."""
    if isinstance(layer, FoldedAffine) and layer.type == "Convolution":
        weight, bias, kw = layer.weight, layer.bias, layer._kw
    elif getattr(layer, "type", None) == "Convolution" and layer.axis == 1:
        weight, kw = layer.blobs[0], layer._kw
        bias = layer.blobs[1] if layer.bias_term else None
    else:
        return None
    if weight.dim() != 4 or weight.dtype != torch.float32 or weight.device.type != "cpu":
        return None
    return weight.detach(), None if bias is None else bias.detach(), kw


def pack_layers(steps: list[Step], blob_shapes: dict) -> list[Step]:
    """Every 2-D float32 CPU convolution with one bottom as a PackedConv, every
    axis-1 float32 CPU InnerProduct as a PackedLinear."""
    out = []
    for step in steps:
        packed = None
        if len(step.bottoms) == 1 == len(step.tops):
            conv = _conv_parts(step.layer)
            top_shape = blob_shapes[step.tops[0]]
            linear = _linear_parts(step.layer, top_shape)
            if conv is not None:
                weight, bias, kw = conv
                packed = PackedConv(step.layer.name, weight, bias, kw, blob_shapes[step.bottoms[0]])
            elif linear is not None:
                packed = PackedLinear(step.layer.name, *linear, batch=top_shape[0])
        out.append(step if packed is None else Step(step.key, packed, step.bottoms, step.tops))
    return out


def _is_plain_relu(layer) -> bool:
    return getattr(layer, "type", None) == "ReLU" and layer.slope == 0


def _is_plain_sum(layer) -> bool:
    return (getattr(layer, "type", None) == "Eltwise"
            and layer.op == caffe_pb2.EltwiseParameter.SUM and len(layer.coeffs) == 2
            and all(c == 1 for c in layer.coeffs))


def fuse_post_ops(steps: list[Step], input_names, blob_shapes: dict, keep) -> list[Step]:
    """ReLUs and two-input SUMs merged into the PackedConv (ReLUs also into the
    PackedLinear) that produces their input."""
    def combine(producer: Step, step: Step, k: int) -> Step | None:
        conv = producer.layer
        if not isinstance(conv, (PackedConv, PackedLinear)) or conv.relu:
            return None
        if _is_plain_relu(step.layer):
            return Step(producer.key, conv.fused(step.layer.name, relu=True), producer.bottoms,
                        step.tops)
        if _is_plain_sum(step.layer) and isinstance(conv, PackedConv) and not conv.add:
            other = step.bottoms[1 - k]
            if blob_shapes[other] != blob_shapes[step.bottoms[k]]:
                return None
            return Step(producer.key, conv.fused(step.layer.name, add=True),
                        producer.bottoms + (other,), step.tops)
        return None

    return absorb_into_producers(steps, input_names, keep, combine)
