"""The CTC layers of ChWick/caffe's ctc branch (carried by TextBoxes++ and OpenVINO's
training toolbox): CTCLoss, CTCGreedyDecoder and Reverse.

Their blobs are time-major with a sequence indicator: activations T x N x C, indicators
T x N (0 at a sequence's first step, then 1: the `cont` blob LSTM reads) and labels T x N
(a row of class indices ended by a negative value).

CTCLoss is the branch's port of TensorFlow's ctc_loss_calculator: per sample the softmax of
its steps in float, Graves' forward and backward variables in double (log space), the
loss -log p(z|x) taken at t = 0, and the gradient y - posterior. The top is the sum over
the samples divided by N; the gradient is the sum's and, as the branch's Backward never
reads the top's diff, loss_weight scales the reported loss only.
"""
from __future__ import annotations

import numpy as np
import torch

from runner.layers.base import Layer, register
from runner.layers.common import LabelError
from runner.layers.ctc import greedy_decode

_F32 = np.float32


def blank_index(index: int, classes: int) -> int:
    """The branch's blank: the last class when blank_index is negative."""
    return classes - 1 if index < 0 else index


def rounded(values):
    """static_cast<int>(x + 0.5) in float, as the branch reads indicators and labels (as
    floats with integer values)."""
    return np.trunc(values + _F32(0.5))


def sequence_lengths(cont: np.ndarray) -> np.ndarray:
    """Per sample, the first t >= 1 whose indicator rounds to 0, else T."""
    T = cont.shape[0]
    ended = rounded(cont[1:]) == 0
    return np.where(ended.any(0), ended.argmax(0) + 1, T)


def label_lengths(labels: np.ndarray) -> np.ndarray:
    """Per sample, the first t whose label is negative, else T."""
    ended = labels < 0
    return np.where(ended.any(0), ended.argmax(0), labels.shape[0])


class _FixedGradient(torch.autograd.Function):
    """A loss whose gradient was computed with it and ignores the top's diff."""

    @staticmethod
    def forward(ctx, x, loss, grad):
        ctx.save_for_backward(grad)
        return loss.clone()

    @staticmethod
    def backward(ctx, _):
        grad, = ctx.saved_tensors
        return grad, None, None


def _softmax_rows(x: np.ndarray) -> np.ndarray:
    """The branch's softmax in float: max subtracted, exp, divided by the sum."""
    shifted = x - x.max(axis=1, keepdims=True)
    e = np.exp(shifted).astype(_F32)
    return e / e.sum(axis=1, dtype=_F32, keepdims=True)


def ctc_sample(y: np.ndarray, l_prime: np.ndarray, blank: int, merge: bool
               ) -> tuple[float, np.ndarray]:
    """log p(z|x) and the gradient rows (T x C) of one sample's T x C probabilities `y`
    for the label sequence with blanks `l_prime` (Graves' Eq. 7.5-7.15 as TensorFlow
    computes them, ctc_merge_repeated choosing between its two alignment graphs)."""
    T, C = y.shape
    U = len(l_prime)
    log_y = np.log(y.astype(np.float64))
    emit = log_y[:, l_prime]                                  # T x U
    stay = np.where(merge | (l_prime == blank), 0.0, -np.inf)
    skip = np.full(U, -np.inf)
    skip[2:] = np.where((l_prime[2:] != blank) & ~(merge & (l_prime[2:] == l_prime[:-2])),
                        0.0, -np.inf)
    alpha = np.full((U, T), -np.inf)
    alpha[0, 0], alpha[1, 0] = emit[0, 0], emit[0, 1]
    for t in range(1, T):
        u = np.arange(max(0, U - 2 * (T - t)), min(U, 2 * (t + 1)))
        prev = alpha[:, t - 1]
        total = prev[u] + stay[u]
        total = np.logaddexp(total, np.where(u > 0, prev[u - 1], -np.inf))
        total = np.logaddexp(total, np.where(u > 1, prev[u - 2] + skip[u], -np.inf))
        alpha[u, t] = emit[t, u] + total
    beta = np.full((U, T), -np.inf)
    beta[U - 2:, T - 1] = 0.0
    for t in range(T - 2, -1, -1):
        u = np.arange(max(0, U - 2 * (T - t)), min(U, 2 * (t + 1)))
        nxt = beta[:, t + 1] + emit[t + 1]
        total = nxt[u] + stay[u]
        total = np.logaddexp(total, np.where(u + 1 < U, nxt[np.minimum(u + 1, U - 1)], -np.inf))
        ahead = np.where(u + 2 < U, nxt[np.minimum(u + 2, U - 1)] + skip[np.minimum(u + 2, U - 1)],
                         -np.inf)
        beta[u, t] = np.logaddexp(total, ahead)
    log_p = np.logaddexp.reduce(alpha[:, 0] + beta[:, 0])
    if log_p == -np.inf:   # no valid path: the branch's gradient is y itself
        return log_p, y.copy()
    grad = np.empty((T, C), _F32)
    for t in range(T):
        occupancy = np.full(C, -np.inf)
        np.logaddexp.at(occupancy, l_prime, alpha[:, t] + beta[:, t])
        grad[t] = y[t] - np.exp(occupancy - log_p)
    return log_p, grad


@register("CTCLoss")
class CTCLoss(Layer):
    """ChWick's CTC loss over T x N x C activations, T x N sequence indicators and T x N
    labels (ctc_loss_param: blank_index, -1 the last class; output_delay;
    preprocess_collapse_repeated; ctc_merge_repeated; loss_calculation_t is reset to 0 by
    the branch and unread). A sample's steps end where its indicator turns 0; its labels
    at the first negative, a label of C or more or the blank ending them early. Samples
    with no labels (and a sequence of at most one step, as the branch CHECKs) are
    skipped. What the branch CHECKs or would read out of bounds on is a LabelError."""

    is_loss = True
    bottom_count, top_count = (3, 3), (1, 1)
    force_backward_blocked = (1, 2)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.ctc_loss_param
        if p.output_delay < 0:
            raise ValueError(f"layer '{lp.name}': ctc_loss_param.output_delay must be >= 0, "
                             f"got {p.output_delay}")
        classes = bottom_shapes[0][2]
        self.blank = blank_index(p.blank_index, classes)
        if not 0 <= self.blank < classes:
            raise ValueError(f"layer '{lp.name}': ctc_loss_param.blank_index {p.blank_index} "
                             f"must be below the {classes} classes")

    def forward(self, x, cont, label):
        T, N, C = x.shape[:3]
        p = self.lp.ctc_loss_param
        delay = p.output_delay
        acts = x.detach().to("cpu", torch.float32).numpy().reshape(T, N, C)
        seq_len = sequence_lengths(cont.detach().cpu().float().numpy().reshape(T, N))
        labels = label.detach().cpu().float().numpy().reshape(T, N)
        lab_len = label_lengths(labels)
        total, grad = _F32(0), np.zeros((T, N, C), _F32)
        for n in range(N):
            if lab_len[n] == 0:
                if seq_len[n] > 1:
                    raise LabelError(f"layer '{self.name}': sample {n} has no labels but a "
                                     f"sequence of {seq_len[n]} steps (the fork CHECKs that an "
                                     f"empty label comes with a sequence of at most 1 step)")
                continue
            if lab_len[n] > seq_len[n] - delay:
                raise LabelError(f"layer '{self.name}': sample {n} has {lab_len[n]} labels for "
                                 f"{seq_len[n]} steps less output_delay {delay}: not enough time "
                                 f"for the target sequence")
            l_prime = self._l_prime(labels[:lab_len[n], n], C, n)
            steps = slice(delay, seq_len[n])
            y = _softmax_rows(acts[:seq_len[n], n])[delay:]
            log_p, g = ctc_sample(y, l_prime, self.blank, p.ctc_merge_repeated)
            total = _F32(float(total) - log_p)
            grad[steps, n] = g
        loss = torch.tensor(total / _F32(N), dtype=x.dtype, device=x.device)
        return (_FixedGradient.apply(x, loss, torch.from_numpy(grad).reshape(x.shape).to(x)),)

    def _l_prime(self, row: np.ndarray, classes: int, n: int) -> np.ndarray:
        """PopulateLPrimes: the labels rounded, repeats collapsed when
        preprocess_collapse_repeated, the sequence finished by a label >= C or the blank;
        blanks put before each label and at the end."""
        collapse = self.lp.ctc_loss_param.preprocess_collapse_repeated
        kept, finished = [], False
        for i, value in enumerate(row):
            if i and collapse and value == row[i - 1]:
                continue
            index = int(rounded(value))
            if index >= classes or index == self.blank:
                finished = True
            elif finished:
                raise LabelError(f"layer '{self.name}': sample {n}: label {index} follows a "
                                 f"blank or out-of-range label that ended its sequence")
            else:
                kept.append(index)
        if not kept:
            raise LabelError(f"layer '{self.name}': sample {n}: every label is the blank "
                             f"{self.blank} or >= {classes}, which the fork cannot score")
        l_prime = np.full(2 * len(kept) + 1, self.blank, np.int64)
        l_prime[1::2] = kept
        return l_prime


def edit_distance(a: list[int], b: list[int]) -> int:
    """Levenshtein distance (unit insertions, deletions and substitutions)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


@register("CTCGreedyDecoder")
class CTCGreedyDecoder(Layer):
    """Bottoms: T x N x C scores, T x N sequence indicators and optionally T x N target
    labels. Per sample, each step's first highest class until the indicator of the next
    step is 0; blanks (ctc_decoder_param.blank_index, -1 the last class) dropped and, with
    ctc_merge_repeated, repeats merged. Tops: the sequences (N x T x 1 x 1, padded with
    -1); with two bottoms optionally the scores (N x 1 x 1 x 1, minus the sum of each
    step's highest score); with targets either the accuracy (1 x 1 x 1 x 1: 1 - the mean
    over samples of edit distance / the longer length, an empty pair counting 0) or the
    scores and the accuracy."""

    bottom_count, top_count = (2, 3), (1, 3)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        if len(bottom_shapes) == 2 and len(lp.top) > 2:
            raise ValueError(f"layer '{lp.name}': with two bottoms the tops are the sequences "
                             f"and optionally the scores")
        self.blank = blank_index(lp.ctc_decoder_param.blank_index, bottom_shapes[0][2])

    @torch.no_grad()
    def forward(self, scores, cont, *target):
        T, N, C = scores.shape[:3]
        x = scores.detach().to("cpu", torch.float32).numpy().reshape(T, N, C)
        ind = cont.detach().cpu().float().numpy().reshape(T, N)
        merge = self.lp.ctc_decoder_param.ctc_merge_repeated
        best, top = x.argmax(2), x.max(2)
        sequences = np.full((N, T), -1, _F32)
        sums = np.zeros(N, _F32)
        decoded = []
        for n in range(N):
            steps = T   # up to the next indicator equal to 0 as a float (CTCLoss rounds it)
            ends = np.flatnonzero(ind[1:, n] == 0)
            if len(ends):
                steps = ends[0] + 1
            for t in range(steps):
                sums[n] = sums[n] - top[t, n]
            decoded.append(greedy_decode(best[:steps, n], self.blank, merge))
            sequences[n, :len(decoded[n])] = decoded[n]
        out = [sequences.reshape(N, T, 1, 1)]
        if len(self.lp.top) > 1 and (not target or len(self.lp.top) == 3):
            out.append(sums.reshape(N, 1, 1, 1))
        if target and len(self.lp.top) > 1:
            out.append(np.array(self._accuracy(target[0], decoded, T, N), _F32).reshape(1, 1, 1, 1))
        return tuple(torch.from_numpy(o).to(device=scores.device, dtype=scores.dtype) for o in out)

    @staticmethod
    def _accuracy(target: torch.Tensor, decoded: list[list[int]], T: int, N: int) -> float:
        labels = target.detach().cpu().float().numpy().reshape(T, N)
        lengths = label_lengths(labels)
        error = _F32(0)   # the branch sums in float
        for n in range(N):
            truth = rounded(labels[:lengths[n], n]).astype(int).tolist()
            longer = max(len(truth), len(decoded[n]))
            if longer:
                error = _F32(float(error) + edit_distance(truth, decoded[n]) / longer)
        return _F32(1) - error / _F32(N)


@register("Reverse")
class Reverse(Layer):
    """The bottom with its axis `reverse_param.axis` (>= 0, default 0: time) reversed;
    not in place, as the branch CHECKs."""

    bottom_count, top_count = (1, 1), (1, 1)

    def forward(self, x):
        return (torch.flip(x, [self.lp.reverse_param.axis]),)
