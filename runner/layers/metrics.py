"""Non-differentiable read-outs: Accuracy and ArgMax."""
from __future__ import annotations

import math

import torch

from runner.layers.base import Layer, register
from runner.layers.common import flatten_from, label_index, split_at_axis
from runner.shapes import canonical_axis


@register("Accuracy")
class Accuracy(Layer):
    """Fraction of non-ignored positions whose true class is among the top_k scores.

    As Caffe counts it: a position is correct when at most top_k classes (the true one
    included) score >= the true class's score, so ties count against it. An optional
    second top gives the accuracy per class (0 for classes without samples).
    """

    bottom_count, top_count = (2, 2), (1, 2)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.accuracy_param
        self.axis, _, channels, _ = split_at_axis(bottom_shapes[0], p.axis, lp.name)
        if p.top_k > channels:
            raise ValueError(f"layer '{lp.name}': top_k {p.top_k} exceeds the {channels} classes")
        self.top_k = p.top_k
        self.ignore_label = p.ignore_label if p.HasField("ignore_label") else None
        self.label_limit = (channels, self.ignore_label)

    @torch.no_grad()
    def forward(self, x, label):
        _, outer, channels, inner = split_at_axis(tuple(x.shape), self.axis, self.name)
        scores = x.detach().reshape(outer, channels, inner)
        labels = label_index(label, outer, inner, self.name, channels, self.ignore_label)
        valid = torch.ones_like(labels, dtype=torch.bool) if self.ignore_label is None \
            else labels != self.ignore_label
        index = torch.where(valid, labels, 0)
        true_score = scores.gather(1, index.unsqueeze(1))
        at_least = (scores >= true_score).sum(1)
        correct = (at_least <= self.top_k) & valid
        count = valid.sum()
        accuracy = torch.where(count > 0, correct.sum() / count.clamp(min=1), 0.0).to(x.dtype)
        if len(self.lp.top) == 1:
            return (accuracy,)
        seen = torch.bincount(labels[valid], minlength=channels)[:channels]
        hits = torch.bincount(labels[correct], minlength=channels)[:channels]
        per_class = torch.where(seen > 0, hits / seen.clamp(min=1), 0.0).to(x.dtype)
        return accuracy, per_class


def caffe_top_k(values: torch.Tensor, k: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest values along `dim` and their indices, ordered as Caffe's
    partial_sort with std::greater on (value, index): equal values, larger index first."""
    size = values.shape[dim]
    ordered, index = torch.sort(values.flip(dim), dim=dim, descending=True, stable=True)
    return ordered.narrow(dim, 0, k), size - 1 - index.narrow(dim, 0, k)


@register("ArgMax")
class ArgMax(Layer):
    """Indices (or, with out_max_val, values) of the top_k entries.

    Without `axis`, per sample over all its values: top shape (N, 1, top_k) or, with
    out_max_val, (N, 2, top_k) holding indices then values (trailing 1s up to the
    bottom's rank). With `axis`, along it: indices, or values when out_max_val.
    """

    bottom_count = top_count = (1, 1)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.argmax_param
        b = bottom_shapes[0]
        self.axis = canonical_axis(p.axis, len(b), lp.name) if p.HasField("axis") else None
        size = b[self.axis] if self.axis is not None else math.prod(b[1:])
        if not 1 <= p.top_k <= size:
            raise ValueError(f"layer '{lp.name}': top_k must be in [1, {size}], got {p.top_k}")

    @torch.no_grad()
    def forward(self, x):
        p = self.lp.argmax_param
        x = x.detach()
        if self.axis is not None:
            values, index = caffe_top_k(x, p.top_k, self.axis)
            return (values if p.out_max_val else index.to(x.dtype),)
        values, index = caffe_top_k(flatten_from(x, 1), p.top_k, 1)
        parts = [index.to(x.dtype)] + ([values] if p.out_max_val else [])
        top = torch.stack(parts, dim=1)
        return (top.reshape(*top.shape, *([1] * (x.dim() - 3))),)
