"""CRNN's CTC layers, as the warp-ctc CRNN Caffe ports define them (BVLC's warpctc_captcha
example uses all three): CtcLoss, ContinuationIndicator and LabelsequenceAccuracy.

CtcLoss is warp-ctc's CPU loss: a softmax over each T x N row of C activations, then the
negative log-likelihood of each sample's label sequence summed over CTC's alignments. The
top is the mean over the N samples; the gradient, as the ports' Backward scales warp-ctc's
per-sample gradients by the top's diff only, is that of their sum.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from runner.layers.base import Layer, register
from runner.layers.common import LabelError
from runner.shapes import canonical_axis


def label_matrix(label: torch.Tensor, n: int) -> torch.Tensor:
    """An N x L label blob as int64, truncated toward zero as the ports' static_cast<int>."""
    return label.detach().reshape(n, -1).trunc().long()


@register("CtcLoss")
class CtcLoss(Layer):
    """warp-ctc's loss over T x N x C activations (time_step T, alphabet_size C) and N x L
    labels: each label row, its blank_label entries dropped wherever they stand, is one
    target sequence. Labels outside [0, C) and a batch whose rows are all blank are
    errors, as the ports CHECK them. A sample whose sequence cannot fit in T steps (with a
    blank between repeats) costs 0 and gets no gradient; warp-ctc leaves its diff as the
    blob held it."""

    is_loss = True
    bottom_count, top_count = (2, 2), (1, 1)
    force_backward_blocked = (1,)   # the labels

    def forward(self, x, label):
        T, N, C = x.shape[:3]
        blank = self.lp.ctc_loss_param.blank_label
        labels = label_matrix(label, N)
        bad = (labels < 0) | (labels >= C)
        if bool(bad.any()):
            raise LabelError(f"layer '{self.name}': label {labels[bad][0].item()} is outside "
                             f"[0, {C}) (alphabet_size)")
        keep = labels != blank
        if not bool(keep.any()):
            raise LabelError(f"layer '{self.name}': every label is blank_label {blank}; the "
                             f"ports need at least one label in the batch")
        log_probs = F.log_softmax(x.reshape(T, N, C).float(), dim=2)
        costs = F.ctc_loss(log_probs, labels[keep], torch.full((N,), T, dtype=torch.long),
                           keep.sum(1), blank=blank, reduction="none", zero_infinity=True)
        total = costs.sum()
        mean_value_sum_gradient = total.detach() / N + (total - total.detach())
        return (mean_value_sum_gradient.to(x.dtype),)


@register("ContinuationIndicator")
class ContinuationIndicator(Layer):
    """A time_step x N cont blob for RNN/LSTM: 0 at t = 0, 1 after; N is the size of the
    bottom's axis `axis`, whose values are never read."""

    bottom_count, top_count = (1, 1), (1, 1)

    def forward(self, x):
        p = self.lp.continuation_indicator_param
        n = x.shape[canonical_axis(p.axis, x.dim(), self.name)]
        cont = torch.ones(p.time_step, n, dtype=x.dtype, device=x.device)
        cont[0] = 0
        return (cont,)


def greedy_decode(best, blank: int, merge: bool = True) -> list[int]:
    """A path of per-step classes (a tensor or array) as CTC reads it: repeats merged
    (unless `merge` is false), then blanks dropped."""
    path = best.tolist()
    return [c for i, c in enumerate(path)
            if c != blank and not (merge and i and c == path[i - 1])]


@register("LabelsequenceAccuracy")
class LabelsequenceAccuracy(Layer):
    """The fraction of the N samples whose N x T x C scores, decoded greedily (each step's
    first highest class, repeats merged, blank_label dropped), equal their label row with
    its blank_label entries dropped."""

    bottom_count, top_count = (2, 2), (1, 1)
    force_backward_blocked = (1,)

    @torch.no_grad()
    def forward(self, scores, label):
        N, T, C = scores.shape[:3]
        blank = self.lp.labelsequence_accuracy_param.blank_label
        best = scores.detach().reshape(N, T, C).argmax(2)
        rows = label.detach().reshape(N, -1)
        hits = sum(greedy_decode(best[n], blank) ==
                   rows[n][rows[n] != blank].trunc().long().tolist() for n in range(N))
        return (torch.tensor(hits / N, dtype=scores.dtype, device=scores.device),)
