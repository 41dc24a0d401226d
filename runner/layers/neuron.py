"""Element-wise layers (Caffe's "neuron" layers): one bottom, one top of the same shape."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from runner.layers.base import Layer, register
from runner.layers.common import filler_or


class _Neuron(Layer):
    """A layer applying `self.fn` element-wise."""

    bottom_count = top_count = (1, 1)

    def fn(self, x):
        raise NotImplementedError

    def forward(self, x):
        return (self.fn(x),)


@register("ReLU")
class ReLU(_Neuron):
    """max(x, 0) + negative_slope * min(x, 0); the gradient at 0 is the negative side's."""

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        self.slope = lp.relu_param.negative_slope

    def fn(self, x):
        return F.relu(x) if self.slope == 0 else F.leaky_relu(x, self.slope)


@register("ReLU6")
class ReLU6(_Neuron):
    """min(max(x, 0), 6), as OpenCV's importer reads the type (no parameters); the gradient
    passes where 0 < x < 6."""

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        if lp.HasField("relu_param"):
            raise ValueError(f"layer '{lp.name}': ReLU6 takes no relu_param (OpenCV reads the "
                             f"type as a plain clip to [0, 6])")

    def fn(self, x):
        return F.relu6(x)


@register("PReLU")
class PReLU(_Neuron):
    """ReLU with a learned negative slope per channel (or one shared)."""

    def blob_fillers(self):
        return [filler_or(self.lp.prelu_param, "filler", 0.25)]

    def fn(self, x):
        return F.prelu(x, self.blobs[0])


@register("ELU")
class ELU(_Neuron):
    """x if x > 0 else alpha * (exp(x) - 1)."""

    def fn(self, x):
        return F.elu(x, self.lp.elu_param.alpha)


@register("Sigmoid")
class Sigmoid(_Neuron):
    """1 / (1 + exp(-x))."""

    def fn(self, x):
        return torch.sigmoid(x)


@register("TanH")
class TanH(_Neuron):
    """tanh(x)."""

    def fn(self, x):
        return torch.tanh(x)


@register("AbsVal")
class AbsVal(_Neuron):
    """|x|; the gradient at 0 is 0, as Caffe's sign()."""

    def fn(self, x):
        return torch.abs(x)


@register("BNLL")
class BNLL(_Neuron):
    """log(1 + exp(x)), computed stably; Caffe caps exp() at x = 50 in the gradient."""

    def fn(self, x):
        return F.softplus(x, beta=1.0, threshold=50.0)


@register("Power")
class Power(_Neuron):
    """(shift + scale * x) ^ power."""

    def fn(self, x):
        p = self.lp.power_param
        if p.power * p.scale == 0:  # Caffe writes a constant (and a zero gradient)
            value = 1.0 if p.power == 0 else float(p.shift) ** p.power
            return torch.full_like(x, value)
        y = x if p.scale == 1 else x * p.scale
        if p.shift != 0:
            y = y + p.shift
        return y if p.power == 1 else torch.pow(y, p.power)


def _log_base(lp, p, what: str) -> float:
    """ln(base) of an Exp/Log parameter; base -1 means e."""
    if p.base != -1 and p.base <= 0:
        raise ValueError(f"layer '{lp.name}': {what}.base must be positive or -1 (e), got {p.base}")
    return 1.0 if p.base == -1 else math.log(p.base)


@register("Exp")
class Exp(_Neuron):
    """base ^ (shift + scale * x); base -1 means e."""

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.exp_param
        self.inner_scale = _log_base(lp, p, "exp_param") * p.scale
        self.outer_scale = 1.0 if p.shift == 0 else (
            math.exp(p.shift) if p.base == -1 else p.base ** p.shift)

    def fn(self, x):
        y = torch.exp(x if self.inner_scale == 1 else x * self.inner_scale)
        return y if self.outer_scale == 1 else y * self.outer_scale


@register("Log")
class Log(_Neuron):
    """log_base(shift + scale * x); base -1 means e."""

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        self.base_scale = 1.0 / _log_base(lp, lp.log_param, "log_param")

    def fn(self, x):
        p = self.lp.log_param
        y = x if p.scale == 1 else x * p.scale
        if p.shift != 0:
            y = y + p.shift
        y = torch.log(y)
        return y if self.base_scale == 1 else y * self.base_scale


@register("Threshold")
class Threshold(_Neuron):
    """1 where x > threshold, else 0 (no gradient, as in Caffe)."""

    def fn(self, x):
        return (x > self.lp.threshold_param.threshold).to(x.dtype)


@register("Clip")
class Clip(_Neuron):
    """min(max(x, min), max); gradient passes where min <= x <= max."""

    def fn(self, x):
        p = self.lp.clip_param
        return torch.clamp(x, p.min, p.max)


@register("Swish")
class Swish(_Neuron):
    """x * sigmoid(beta * x)."""

    def fn(self, x):
        beta = self.lp.swish_param.beta
        return x * torch.sigmoid(x if beta == 1 else x * beta)


@register("Dropout")
class Dropout(_Neuron):
    """Zero each unit with probability p and scale the kept ones by 1/(1-p) in training;
    identity in evaluation (Caffe's TEST phase), unless Bayesian SegNet's
    sample_weights_test keeps dropping there too (Monte Carlo dropout)."""

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        self.p = lp.dropout_param.dropout_ratio
        self.sample_in_test = lp.dropout_param.sample_weights_test
        if not 0 <= self.p < 1:
            raise ValueError(f"layer '{lp.name}': dropout_ratio must be in [0, 1), got {self.p}")

    def fn(self, x):
        return F.dropout(x, self.p, training=self.training or self.sample_in_test)

    def extra_repr(self):
        sampled = ", sample_weights_test=True" if self.sample_in_test else ""
        return f"name={self.name!r}, p={self.p:g}{sampled}"
