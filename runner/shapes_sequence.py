"""Shape rules of the recurrent, indexing and patch layers (RNN, LSTM, LSTMUnit, Filter,
BatchReindex, Parameter, Im2col, HDF5Output), of CRNN's CTC layers (CtcLoss,
ContinuationIndicator, LabelsequenceAccuracy) and of ChWick's ctc branch (CTCLoss,
CTCGreedyDecoder, Reverse); registered with runner.shapes on import."""
from __future__ import annotations

import math

from runner.shapes import LayerShapes, canonical_axis, conv_out, count, rule, spatial_params


def recurrent_geometry(lp, bottoms) -> tuple[int, int, int, bool, int]:
    """(T, N, num_output, static_input, exposed hidden blobs) of an RNN or LSTM layer,
    checked as Caffe's RecurrentLayer::LayerSetUp does."""
    p = lp.recurrent_param
    if p.num_output <= 0:
        raise ValueError("recurrent_param.num_output must be positive")
    if len(bottoms) < 2:
        raise ValueError("needs bottoms x (T x N x ...) and cont (T x N)")
    x, cont = bottoms[0], bottoms[1]
    if len(x) < 2:
        raise ValueError(f"bottom x must have at least 2 axes (T, N, ...), got {list(x)}")
    if len(cont) != 2 or tuple(cont) != tuple(x[:2]):
        raise ValueError(f"bottom cont must be T x N = {list(x[:2])}, got {list(cont)}")
    hidden = (2 if lp.type == "LSTM" else 1) if p.expose_hidden else 0
    static = len(bottoms) > 2 + hidden
    if len(bottoms) > 3 + hidden:
        raise ValueError(f"takes x, cont, an optional static input and {hidden} hidden "
                         f"state bottom(s); got {len(bottoms)} bottoms")
    if static and (len(bottoms[2]) < 1 or bottoms[2][0] != x[1]):
        raise ValueError(f"static input must be N x ... with N = {x[1]}, got {list(bottoms[2])}")
    T, N, H = x[0], x[1], p.num_output
    for b in bottoms[2 + static:]:
        if tuple(b) != (1, N, H):
            raise ValueError(f"exposed hidden state bottoms must be 1 x N x num_output = "
                             f"{[1, N, H]}, got {list(b)}")
    return T, N, H, static, hidden


@rule("RNN", "LSTM")
def _recurrent(lp, bottoms):
    T, N, H, static, hidden = recurrent_geometry(lp, bottoms)
    gates = 4 * H if lp.type == "LSTM" else H
    x_dim = count(bottoms[0], 2)
    blobs = [(gates, x_dim), (gates,)]
    if static:
        blobs.append((gates, count(bottoms[2], 1)))
    blobs.append((gates, H))
    if lp.type == "RNN":
        blobs += [(H, H), (H,)]
    return LayerShapes([(T, N, H)] + [(1, N, H)] * hidden, blobs)


@rule("LSTMUnit")
def _lstm_unit(lp, bottoms):
    if len(bottoms) != 3:
        raise ValueError("needs bottoms c_prev (1 x N x D), gates (1 x N x 4D), cont (1 x N)")
    c, x, cont = bottoms
    if len(c) != 3 or len(x) != 3 or len(cont) != 2 or c[0] != 1 or x[0] != 1 or cont[0] != 1:
        raise ValueError(f"expected 1 x N x D, 1 x N x 4D and 1 x N bottoms, got "
                         f"{[list(b) for b in bottoms]}")
    if not c[1] == x[1] == cont[1] or x[2] != 4 * c[2]:
        raise ValueError(f"bottom shapes {[list(b) for b in bottoms]} disagree (N, or 4D)")
    return LayerShapes([c, c])


@rule("Filter")
def _filter(lp, bottoms):
    if len(bottoms) < 2:
        raise ValueError("needs the blobs to filter and a selector bottom (last)")
    selector = bottoms[-1]
    if any(d != 1 for d in selector[1:]):
        raise ValueError(f"selector blob dimensions must be 1 except the first, got {list(selector)}")
    if any(b[0] != selector[0] for b in bottoms[:-1]):
        raise ValueError("each bottom must have the selector's first dimension")
    return LayerShapes(list(bottoms[:-1]))


@rule("BatchReindex")
def _batch_reindex(lp, bottoms):
    if len(bottoms) != 2 or len(bottoms[1]) != 1:
        raise ValueError("needs bottoms data and a 1-D index blob")
    return LayerShapes([(bottoms[1][0], *bottoms[0][1:])])


@rule("Parameter")
def _parameter(lp, bottoms):
    shape = tuple(lp.parameter_param.shape.dim)
    return LayerShapes([shape], [shape])


def im2col_geometry(lp, bottom) -> tuple[int, list[int], list[int], list[int], list[int]]:
    """(channel axis, kernel, stride, pad, dilation) of an Im2col layer."""
    p = lp.convolution_param
    axis = canonical_axis(p.axis, len(bottom), lp.name)
    n_spatial = len(bottom) - axis - 1
    if n_spatial < 1:
        raise ValueError(f"needs at least one spatial axis after axis {axis}")
    kernel, stride, pad, dilation = spatial_params(p, n_spatial)
    return axis, kernel, stride, pad, dilation


@rule("Im2col")
def _im2col(lp, bottoms):
    b = bottoms[0]
    axis, kernel, stride, pad, dilation = im2col_geometry(lp, b)
    out = [conv_out(*g) for g in zip(b[axis + 1:], kernel, stride, pad, dilation)]
    return LayerShapes([(*b[:axis], b[axis] * math.prod(kernel), *out)])


@rule("HDF5Output")
def _hdf5_output(lp, bottoms):
    return LayerShapes([])


def label_rows(label, n: int) -> bool:
    """Whether a label blob is N x L (trailing axes of 1 allowed), as the CTC layers read it."""
    return len(label) >= 2 and label[0] == n and count(label, 2) == 1


def ctc_geometry(lp, bottoms) -> tuple[int, int, int]:
    """(T, N, C) of a CtcLoss layer: T x N x C activations and an N x L label, with
    ctc_loss_param's time_step T and alphabet_size C, which warp-ctc takes as given."""
    p, (x, label) = lp.ctc_loss_param, bottoms
    if len(x) < 3 or count(x, 3) != 1 or not label_rows(label, x[1]):
        raise ValueError(f"CtcLoss takes T x N x C activations and an N x L label, got "
                         f"{list(x)} and {list(label)}")
    T, N, C = x[:3]
    if p.time_step != T or p.alphabet_size != C:
        raise ValueError(f"ctc_loss_param time_step {p.time_step} and alphabet_size "
                         f"{p.alphabet_size} must equal the activations' T {T} and C {C} (warp-ctc "
                         f"reads the blob with them)")
    if not 0 <= p.blank_label < C:
        raise ValueError(f"ctc_loss_param.blank_label {p.blank_label} must be within [0, {C})")
    return T, N, C


@rule("CtcLoss")
def _ctc_loss(lp, bottoms):
    ctc_geometry(lp, bottoms)
    return LayerShapes([()])


@rule("ContinuationIndicator")
def _continuation_indicator(lp, bottoms):
    p = lp.continuation_indicator_param
    if p.time_step <= 0:
        raise ValueError("continuation_indicator_param.time_step must be positive")
    axis = canonical_axis(p.axis, len(bottoms[0]), lp.name)
    return LayerShapes([(p.time_step, bottoms[0][axis])])


@rule("LabelsequenceAccuracy")
def _labelsequence_accuracy(lp, bottoms):
    scores, label = bottoms
    if len(scores) < 3 or count(scores, 3) != 1 or not label_rows(label, scores[0]):
        raise ValueError(f"LabelsequenceAccuracy takes N x T x C scores and an N x L label, got "
                         f"{list(scores)} and {list(label)}")
    return LayerShapes([()])


def time_major(lp, bottoms) -> tuple[int, int, int]:
    """(T, N, C) of ChWick's CTC layers: T x N x C scores (a trailing 1 allowed) and T x N
    sequence indicators, then (CTCLoss, or a decoder's third bottom) T x N labels."""
    x = bottoms[0]
    if len(x) < 3 or count(x, 3) != 1:
        raise ValueError(f"{lp.type} takes T x N x C scores, got {list(x)}")
    T, N, C = x[:3]
    for name, b in zip(("sequence indicators", "labels"), bottoms[1:3]):
        if count(b) != T * N or tuple(b[:2]) != (T, N):
            raise ValueError(f"{lp.type}'s {name} must be T x N = {[T, N]}, got {list(b)}")
    return T, N, C


@rule("CTCLoss")
def _ctc_loss_chwick(lp, bottoms):
    time_major(lp, bottoms)
    return LayerShapes([()])


@rule("CTCGreedyDecoder")
def _ctc_greedy_decoder(lp, bottoms):
    T, N, _ = time_major(lp, bottoms)
    tops = [(N, T, 1, 1)]
    if len(lp.top) > 1 and (len(bottoms) == 2 or len(lp.top) == 3):
        tops.append((N, 1, 1, 1))
    if len(bottoms) == 3 and len(lp.top) > 1:
        tops.append((1, 1, 1, 1))
    return LayerShapes(tops)


@rule("Reverse")
def _reverse(lp, bottoms):
    axis = lp.reverse_param.axis
    if not 0 <= axis < len(bottoms[0]):
        raise ValueError(f"reverse_param.axis {axis} must be within [0, {len(bottoms[0])})")
    if list(lp.top) == list(lp.bottom):
        raise ValueError("Reverse does not allow in-place computation (as the fork CHECKs)")
    return LayerShapes([bottoms[0]])
