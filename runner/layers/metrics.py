"""Non-differentiable read-outs: Accuracy, ArgMax and DeepLab's SegAccuracy."""
from __future__ import annotations

import math

import torch

from runner.layers.base import Layer, register
from runner.layers.common import LabelError, flatten_from, label_index, split_at_axis
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


@register("SegAccuracy")
class SegAccuracy(Layer):
    """DeepLab's SegAccuracy: a confusion matrix of each pixel's true class (rows) against
    its top-scoring class (ties to the larger index, as the fork's partial_sort), pixels
    with an ignore_label skipped; top (1, 1, 1, 3): pixel accuracy, the mean of the
    per-class recalls over classes present, and the mean IoU over all classes (a class
    neither present nor predicted counts 1). The matrix is cleared at each forward unless
    `reset: false`, when it adds up over the layer's life."""

    bottom_count, top_count = (2, 2), (1, 1)
    forward_state = ("confusion",)   # summed over forwards with reset: false

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.seg_accuracy_param
        self.ignore = set(p.ignore_label)
        self.reset = p.reset
        classes = bottom_shapes[0][1]
        self.register_buffer("confusion", torch.zeros(classes, classes, dtype=torch.float64),
                             persistent=False)

    @torch.no_grad()
    def forward(self, x, label):
        classes = x.shape[1]
        if self.reset:
            self.confusion.zero_()
        _, best = caffe_top_k(x.detach(), 1, 1)
        truth = label.detach().reshape(-1).trunc()
        keep = torch.ones_like(truth, dtype=torch.bool)
        for value in self.ignore:
            keep &= truth != value
        truth, best = truth[keep], best.reshape(-1)[keep]
        bad = ~((truth >= 0) & (truth < classes))   # NaN counts as bad
        if bool(bad.any()):
            raise LabelError(f"layer '{self.name}': label {truth[bad][0].item():g} is outside "
                             f"[0, {classes}) and not an ignore_label")
        pairs = truth.long() * classes + best.to(self.confusion.device)
        self.confusion += torch.bincount(pairs, minlength=classes * classes).reshape(
            classes, classes).to(self.confusion)
        return (self.metrics().to(x.dtype).reshape(1, 1, 1, 3),)

    def metrics(self) -> torch.Tensor:
        """(accuracy, mean recall over present classes, mean IoU over all classes)."""
        m = self.confusion
        hits, actual, predicted = m.diagonal(), m.sum(1), m.sum(0)
        total = m.sum()
        accuracy = hits.sum() / total if total > 0 else total.new_zeros(())
        present = actual > 0
        recall = (hits[present] / actual[present]).mean() if bool(present.any()) else total.new_zeros(())
        union = actual + predicted - hits
        iou = torch.where(union == hits, torch.ones_like(union), hits / union.clamp(min=1))
        return torch.stack([accuracy, recall, iou.mean()])

    def extra_repr(self):
        return f"name={self.name!r}, ignore_label={sorted(self.ignore)}, reset={self.reset}"
