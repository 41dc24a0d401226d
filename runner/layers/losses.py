"""Loss layers other than SoftmaxWithLoss; each returns a 0-dim loss with Caffe's gradient."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from google.protobuf.message import DecodeError

from runner.layers.base import Layer, register
from runner.layers.common import (LOG_THRESHOLD, clip_value_keep_grad, flatten_from,
                                  label_index, loss_normalizer, normalization_mode,
                                  split_at_axis)
from runner.proto import ProtoError, caffe_pb2, read_file_bytes


class _Loss(Layer):
    """Caffe's LossLayer: predictions and labels (or targets) in, one loss top out."""

    is_loss = True
    force_backward_blocked = (1,)  # Caffe's LossLayer: not the labels
    bottom_count, top_count = (2, 2), (1, 1)


class _PerSampleLabels:
    """Mixin: one label per sample, a class among the count / num values of bottom 0."""

    @property
    def label_limit(self) -> tuple[int, None]:
        return math.prod(self.bottom_shapes[0][1:]), None


@register("EuclideanLoss")
class EuclideanLoss(_Loss):
    """sum((a - b)^2) / (2 N)."""

    force_backward_blocked = ()  # both bottoms, as Caffe's EuclideanLossLayer

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        a, b = (math.prod(s) for s in bottom_shapes)
        if a != b:
            raise ValueError(f"layer '{lp.name}': EuclideanLoss bottoms must have the same count, "
                             f"got {list(bottom_shapes[0])} and {list(bottom_shapes[1])}")

    def forward(self, a, b):
        diff = a - b
        return ((diff * diff).sum() / (2 * a.shape[0]),)


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss(_Loss):
    """Cross-entropy of sigmoid(x) against targets in [0, 1], computed stably; positions
    whose target equals ignore_label are skipped. Normalised by BATCH_SIZE unless
    loss_param says otherwise (Caffe's default for this layer). Gradient sigmoid(x) - t."""

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        self.mode = normalization_mode(lp, caffe_pb2.LossParameter.BATCH_SIZE)
        p = lp.loss_param
        self.ignore_label = p.ignore_label if p.HasField("ignore_label") else None

    def forward(self, x, target):
        if target.numel() != x.numel():
            raise ValueError(f"layer '{self.name}': target has {target.numel()} values, "
                             f"prediction {x.numel()}")
        t = target.reshape(x.shape).to(x.dtype)
        positive = (x >= 0).to(x.dtype).detach()
        # -|x| written as x - 2x[x>=0] so the gradient at 0 is Caffe's t - 1/2
        log_likelihood = x * (t - positive) - torch.log1p(torch.exp(x - 2 * x * positive))
        count = None
        if self.ignore_label is not None:
            valid = target.reshape(x.shape).long() != self.ignore_label
            log_likelihood = torch.where(valid, log_likelihood, torch.zeros_like(log_likelihood))
            count = valid.sum().to(x.dtype)
        outer = x.shape[0]
        norm = loss_normalizer(self.mode, outer, x.numel() // max(outer, 1), count)
        return ((0 - log_likelihood.sum()) / norm,)   # +0 where nothing counts, as Caffe


@register("HingeLoss")
class HingeLoss(_PerSampleLabels, _Loss):
    """sum over samples and classes of max(0, 1 - t * x)^p / N, t = +1 for the label's
    class and -1 elsewhere; p = 1 (L1, default) or 2 (L2)."""

    def forward(self, x, label):
        scores = flatten_from(x, 1)
        labels = label_index(label, scores.shape[0], 1, self.name, scores.shape[1])
        sign = torch.ones_like(scores).scatter_(1, labels, -1.0)
        margin = F.relu(1 + sign * scores)
        if self.lp.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L2:
            margin = margin * margin
        return (margin.sum() / scores.shape[0],)


def read_infogain_matrix(path: str, layer: str) -> torch.Tensor:
    """The H matrix of an InfogainLoss from a binaryproto BlobProto file."""
    try:
        blob = caffe_pb2.BlobProto.FromString(read_file_bytes(path))
    except ProtoError as exc:
        raise ValueError(f"layer '{layer}': cannot read infogain matrix: {exc}") from None
    except DecodeError:
        raise ValueError(f"layer '{layer}': '{path}' is not a binary BlobProto") from None
    values = list(blob.double_data) or list(blob.data)
    if not values:
        raise ValueError(f"layer '{layer}': infogain matrix '{path}' holds no values")
    return torch.tensor(values, dtype=torch.float64)


@register("InfogainLoss")
class InfogainLoss(_Loss):
    """-sum over non-ignored positions of sum_l H[label, l] * log(max(p_l, 1e-20)),
    p = softmax(x) along infogain_loss_param.axis; normalised as SoftmaxWithLoss (VALID).
    H is bottom 2, or the binaryproto named by infogain_loss_param.source. The gradient
    is Caffe's p * rowsum(H)[label] - H[label], unaffected by the clip. An optional
    second top is the softmax."""

    bottom_count, top_count = (2, 3), (1, 2)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.infogain_loss_param
        if lp.loss_param.HasField("normalize"):
            raise ValueError(f"layer '{lp.name}': loss_param.normalize is deprecated for "
                             f"InfogainLoss; use normalization")
        self.axis, _, channels, _ = split_at_axis(bottom_shapes[0], p.axis, lp.name)
        self.mode = lp.loss_param.normalization
        lpp = lp.loss_param
        self.ignore_label = lpp.ignore_label if lpp.HasField("ignore_label") else None
        self.label_limit = (channels, self.ignore_label)
        matrix = None
        if len(bottom_shapes) < 3:
            if not p.source:
                raise ValueError(f"layer '{lp.name}': InfogainLoss needs a third bottom H or "
                                 f"infogain_loss_param.source")
            matrix = read_infogain_matrix(p.source, lp.name)
            if matrix.numel() != channels * channels:
                raise ValueError(f"layer '{lp.name}': infogain matrix '{p.source}' has "
                                 f"{matrix.numel()} values, expected {channels}x{channels}")
            matrix = matrix.reshape(channels, channels)
        self.register_buffer("infogain", matrix, persistent=False)

    def forward(self, x, label, *matrix_bottom):
        _, outer, channels, inner = split_at_axis(tuple(x.shape), self.axis, self.name)
        h = matrix_bottom[0] if matrix_bottom else self.infogain
        h = h.detach().reshape(channels, channels).to(x.dtype)
        log_prob = F.log_softmax(x, dim=self.axis).reshape(outer, channels, inner)
        log_prob = clip_value_keep_grad(log_prob, math.log(LOG_THRESHOLD))
        labels = label_index(label, outer, inner, self.name, channels, self.ignore_label)
        valid = None if self.ignore_label is None else labels != self.ignore_label
        index = labels if valid is None else torch.where(valid, labels, 0)
        weights = h[index].permute(0, 2, 1)  # (outer, channels, inner): H[label, l]
        per_position = (weights * log_prob).sum(1)
        count = None
        if valid is not None:
            per_position = torch.where(valid, per_position, torch.zeros_like(per_position))
            count = valid.sum().to(x.dtype)
        loss = (0 - per_position.sum()) / loss_normalizer(self.mode, outer, inner, count)  # +0, as Caffe
        if len(self.lp.top) > 1:
            return loss, F.softmax(x.detach(), dim=self.axis)
        return (loss,)


@register("MultinomialLogisticLoss")
class MultinomialLogisticLoss(_PerSampleLabels, _Loss):
    """-sum log(max(p[label], 1e-20)) / N over probabilities p; the gradient at the label
    is -1 / max(p, 1e-20) / N, as Caffe's."""

    def forward(self, prob, label):
        p = flatten_from(prob, 1)
        labels = label_index(label, p.shape[0], 1, self.name, p.shape[1])
        picked = p.gather(1, labels).squeeze(1)
        floor = picked.detach().clamp(min=LOG_THRESHOLD)
        # value log(floor); gradient 1 / floor
        log_p = torch.log(floor) + (picked - picked.detach()) / floor
        return (-log_p.sum() / p.shape[0],)


@register("ContrastiveLoss")
class ContrastiveLoss(_Loss):
    """Pairs (a, b) with similarity y: sum of d^2 for similar pairs and
    max(margin - d, 0)^2 for dissimilar ones (legacy: max(margin - d^2, 0)), over 2N.
    The dissimilar gradient uses Caffe's d + 1e-4 in the denominator."""

    force_backward_blocked = (2,)  # not the similarity labels
    bottom_count, top_count = (3, 3), (1, 1)

    def forward(self, a, b, similar):
        p = self.lp.contrastive_loss_param
        n = a.shape[0]
        diff = flatten_from(a, 1) - flatten_from(b, 1)
        dist_sq = (diff * diff).sum(1)
        same = similar.reshape(-1).long() != 0
        if p.legacy_version:
            apart = F.relu(p.margin - dist_sq)
        else:
            dist = torch.sqrt(dist_sq.detach())
            gap = (p.margin - dist).clamp(min=0)
            # value gap^2; gradient -2 * gap / (d + 1e-4) * diff, as Caffe's backward
            surrogate = -(2 * gap / (dist + 1e-4)).unsqueeze(1) * diff * diff.detach()
            apart = gap * gap + surrogate.sum(1) - surrogate.sum(1).detach()
        per_pair = torch.where(same, dist_sq, apart)
        return (per_pair.sum() / n / 2,)
