"""Softmax and SoftmaxWithLoss (softmax along `axis`, default 1 = channels)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from runner.layers.base import Layer, register
from runner.layers.common import (FLT_MIN, clip_value_keep_grad, label_index, loss_normalizer,
                                  normalization_mode, split_at_axis)
from runner.proto import caffe_pb2
from runner.shapes import canonical_axis


@register("Softmax")
class Softmax(Layer):
    """exp(x) / sum exp(x) along softmax_param.axis."""

    bottom_count = top_count = (1, 1)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        self.axis = canonical_axis(lp.softmax_param.axis, len(bottom_shapes[0]), lp.name)

    def forward(self, x):
        return (F.softmax(x, dim=self.axis),)


@register("SoftmaxWithLoss")
class SoftmaxWithLoss(Layer):
    """-sum over non-ignored positions of log(max(p[label], FLT_MIN)), divided by the
    normaliser (VALID by default; FULL, BATCH_SIZE, NONE; legacy normalize: false means
    BATCH_SIZE). Labels have one value per (outer, inner) position, e.g. N or N x H x W.
    The gradient is Caffe's (p - onehot) / normaliser, unaffected by the FLT_MIN clip.
    An optional second top is the softmax (it carries no gradient, as in Caffe). SegNet's
    loss_param weight_by_label_freqs weighs each position's term (and its gradient) by
    class_weighting[label]; the normaliser still counts positions, as in SegNet.
    """

    bottom_count, top_count = (2, 2), (1, 2)

    is_loss = True
    force_backward_blocked = (1,)  # Caffe's LossLayer: not the labels

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        self.axis, _, channels, _ = split_at_axis(bottom_shapes[0], lp.softmax_param.axis, lp.name)
        self.mode = normalization_mode(lp, caffe_pb2.LossParameter.VALID)
        p = lp.loss_param
        self.ignore_label = p.ignore_label if p.HasField("ignore_label") else None
        self.label_limit = (channels, self.ignore_label)
        weights = None
        if p.weight_by_label_freqs:
            if len(p.class_weighting) != channels:
                raise ValueError(f"layer '{lp.name}': weight_by_label_freqs needs one "
                                 f"class_weighting per class ({channels}), got {len(p.class_weighting)}")
            weights = torch.tensor(list(p.class_weighting))
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, x, label):
        _, outer, channels, inner = split_at_axis(tuple(x.shape), self.axis, self.name)
        log_prob = F.log_softmax(x, dim=self.axis)
        labels = label_index(label, outer, inner, self.name, channels, self.ignore_label)
        valid = None if self.ignore_label is None else labels != self.ignore_label
        index = labels if valid is None else torch.where(valid, labels, 0)
        picked = log_prob.reshape(outer, channels, inner).gather(1, index.unsqueeze(1)).squeeze(1)
        picked = clip_value_keep_grad(picked, math.log(FLT_MIN))
        if self.class_weights is not None:
            picked = picked * self.class_weights.to(picked.dtype)[index]
        if valid is not None:
            picked = torch.where(valid, picked, torch.zeros_like(picked))
        count = None if valid is None else valid.sum().to(x.dtype)
        # 0 - sum, as Caffe's `loss -= ...` from 0: +0 where nothing counts (negation gives -0)
        loss = (0 - picked.sum()) / loss_normalizer(self.mode, outer, inner, count)
        if len(self.lp.top) > 1:
            return loss, F.softmax(x.detach(), dim=self.axis)
        return (loss,)
