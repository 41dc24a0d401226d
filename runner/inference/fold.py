"""Merge a layer into the layer that produces its input, on the net's step list (layer,
bottoms, tops): BatchNorm, Scale, Bias and SegNet's BN in INFERENCE mode folded into the
Convolution or InnerProduct before them here; ReLU and sums fused into convolutions in packed.py.

A merge happens only where the result is the same function: the value the merged layer
reads is read by nothing else (no other layer, and not an output the caller keeps), and
moving its work back to the producer changes what no layer in between sees.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from runner.proto import caffe_pb2


@dataclass
class Step:
    """One layer of the net as it will run: the module, the blob names it reads and writes."""
    key: str
    layer: nn.Module
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]


# combine(producer, step, k) -> the merged step (step read producer's top as bottom k), or None
Combine = Callable[[Step, Step, int], "Step | None"]


def absorb_into_producers(steps: list[Step], input_names, keep, combine: Combine) -> list[Step]:
    """The steps with each step merged into the producer of one of its bottoms wherever
    `combine` returns a merged step and the merge is safe (see the module docstring)."""
    steps = list(steps)
    current = {name: ("input", name) for name in input_names}
    read_values, readers = [], {}
    for i, step in enumerate(steps):
        values = tuple(current[b] for b in step.bottoms)
        read_values.append(values)
        for v in values:
            readers.setdefault(v, []).append(i)
        for j, top in enumerate(step.tops):
            current[top] = (i, j)
    kept = {current[name] for name in keep if name in current}
    owner = list(range(len(steps)))   # step index -> the step that now computes its tops
    removed: set[int] = set()
    for i, step in enumerate(steps):
        for k, value in enumerate(read_values[i]):
            if value[0] == "input" or value in kept or readers[value] != [i]:
                continue
            target = owner[value[0]]
            others = [v for j, v in enumerate(read_values[i]) if j != k]
            if len(steps[target].tops) != 1 or any(v[0] != "input" and owner[v[0]] >= target
                                                   for v in others):
                continue
            moved = set(step.tops) | {n for j, n in enumerate(step.bottoms) if j != k}
            if _touched_between(steps, target, i, moved, removed):
                continue
            merged = combine(steps[target], step, k)
            if merged is not None:
                steps[target] = merged
                owner[i] = target
                removed.add(i)
                break
    return [s for i, s in enumerate(steps) if i not in removed]


def _touched_between(steps: list[Step], start: int, end: int, names: set, removed: set) -> bool:
    """Whether a live step strictly between start and end reads or writes any of `names`."""
    return any(names & (set(s.bottoms) | set(s.tops))
               for k, s in enumerate(steps[start + 1:end], start=start + 1) if k not in removed)


class FoldedAffine(nn.Module):
    """A Convolution or InnerProduct whose weights and bias absorbed the per-channel affine
    layers after it (Caffe's BatchNorm with global statistics, Scale, Bias, SegNet's BN in
    INFERENCE mode, TSN's BN on its running statistics)."""

    def __init__(self, producer: nn.Module, weight: torch.Tensor, bias: torch.Tensor, names: list[str]):
        super().__init__()
        self.type = producer.type
        self.name = "+".join(names)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False)
        if producer.type == "Convolution":   # a Convolution layer, or a FoldedAffine of one
            self._op, self._kw = producer._op, dict(producer._kw)

    def forward(self, x):
        if self.type == "Convolution":
            return (self._op(x, self.weight, self.bias, **self._kw),)
        if x.dim() != 2:
            x = x.flatten(1)
        return (F.linear(x, self.weight, self.bias),)

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


def affine_base(layer: nn.Module, out_dims: int) -> tuple[torch.Tensor, torch.Tensor, list[str]] | None:
    """(weight as (out, ...), bias, names) of a layer that can absorb a per-channel affine
    map of its single top, else None."""
    if isinstance(layer, FoldedAffine):
        return layer.weight.detach(), layer.bias.detach(), layer.name.split("+")
    if layer.type == "Convolution" and layer.axis == 1:
        weight = layer.blobs[0].detach()
    elif layer.type == "InnerProduct" and layer.axis == 1 and out_dims == 2:
        weight = layer.blobs[0].detach()
        weight = weight.t() if layer.transpose else weight
    else:
        return None
    bias = layer.blobs[1].detach() if layer.bias_term else weight.new_zeros(weight.shape[0])
    return weight, bias, [layer.name]


def channel_affine(layer: nn.Module, channels: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(a, b) in float64 with layer(x) == a * x + b per channel of axis 1, or None when
    the layer is not such a map (batch statistics, another axis, a bottom-given operand)."""
    kind = getattr(layer, "type", None)
    if kind == "BatchNorm":
        if layer.use_global_stats is False or layer.training and layer.use_global_stats is None:
            return None
        mean_acc, var_acc, s = (b.detach().double() for b in layer.blobs)
        factor = torch.where(s == 0, torch.zeros_like(s), 1 / s)
        a = 1 / torch.sqrt(var_acc * factor + layer.eps)
        return a, -mean_acc * factor * a
    if kind == "BN" and layer.tsn and (layer.lp.bn_param.frozen or not layer.training):
        slope, bias, mean, var = (b.detach().double().reshape(-1) for b in layer.blobs)
        a = slope / torch.sqrt(var + layer.lp.bn_param.eps)
        return a, bias - mean * a
    if kind == "BN" and not layer.tsn and layer.lp.bn_param.bn_mode == caffe_pb2.BNParameter.INFERENCE:
        scale, shift = (b.detach().double().reshape(-1) for b in layer.blobs)
        return scale, shift
    if kind in ("Scale", "Bias") and len(layer.blobs) and not layer.from_bottom and layer.axis == 1:
        first = layer.blobs[0].detach().double()
        if first.shape != (channels,):
            return None
        if kind == "Bias":
            return torch.ones_like(first), first
        bias = layer.blobs[1].detach().double() if layer.bias_term else torch.zeros_like(first)
        return first, bias
    return None


def fold_affine_layers(steps: list[Step], input_names, blob_shapes: dict, keep) -> list[Step]:
    """The steps with every foldable BatchNorm/Scale/Bias merged into its producer."""
    def combine(producer: Step, step: Step, k: int) -> Step | None:
        if len(step.bottoms) != 1 or len(producer.bottoms) != 1:
            return None
        shape = blob_shapes[step.bottoms[0]]
        if len(shape) < 2:
            return None
        affine = channel_affine(step.layer, shape[1])
        base = affine_base(producer.layer, len(shape)) if affine is not None else None
        if base is None:
            return None
        weight, bias, names = base
        a, b = affine   # computed in float64, applied in the weights' precision
        view = (-1,) + (1,) * (weight.dim() - 1)
        a, b = a.to(weight.dtype), b.to(weight.dtype)
        folded = FoldedAffine(producer.layer, weight * a.reshape(view), bias * a + b,
                              names + [step.layer.name])
        return Step(producer.key, folded, producer.bottoms, step.tops)

    return absorb_into_producers(steps, input_names, keep, combine)
