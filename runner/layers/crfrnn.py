"""CRF-RNN's MultiStageMeanfield (torrvision/crfasrnn: Zheng et al., "Conditional Random
Fields as Recurrent Neural Networks", ICCV 2015), as torrvision/caffe computes it
(multi_stage_meanfield.cpp, meanfield_iteration.cpp, modified_permutohedral.cpp).

Bottoms: the unaries U (N x C x H x W), the Q initialisation (a copy of the unaries in the
published nets) and the image (its first three channels at H x W). With Q_0 the second
bottom, each of num_iterations stages computes

    P = softmax_C(Q_{i-1})
    S = spatial(P) / spatial(1),    B = bilateral_n(P) / bilateral_n(1)
    Q_i = U - W_c (W_s S + W_b B)

where spatial is the permutohedral filter over the pixel positions / theta_gamma,
bilateral_n that over (x / theta_alpha, y / theta_alpha, image_n channels 0-2 / theta_beta),
the divisions are by the filtered ones plus 1e-20 (norm_feed), and W_s, W_b, W_c are the
layer's three C x C blobs (spatial kernel weights, bilateral kernel weights, compatibility),
each applied to the channels of every pixel. The top is Q_T, not normalised.

Backward is autograd's through these steps with the lattice's own backward, the fork's
reverse filter (the exact transpose), as MeanfieldIteration::Backward_cpu: the unaries get
the sum over stages, the Q initialisation the first stage's softmax gradient, the image
nothing; the blob diffs sum over stages (accumulating over backwards, as BVLC Caffe's
layers; the fork overwrites them).
"""
from __future__ import annotations

import logging
import math
import os
import re

import numpy as np
import torch

from runner.layers.base import Layer, register
from runner.layers.permutohedral import (Lattice, filter_values, named_lattice, normaliser,
                                         pixel_positions)
from runner.shapes_forks import meanfield_geometry

log = logging.getLogger(__name__)

_FLOAT = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan)", re.I)
FLT_MAX = float(np.finfo(np.float32).max)


def stof(token: str, what: str) -> float:
    """std::stof: leading whitespace, then the longest float prefix; an error where there is
    none or it is out of float's range."""
    match = _FLOAT.match(token.lstrip(" \t\n\v\f\r"))
    if not match:
        raise ValueError(f"{what}: '{token}' is not a number")
    value = float(match.group(0))
    if math.isfinite(value) and (abs(value) > FLT_MAX or (value and not np.float32(value))):
        raise ValueError(f"{what}: '{token}' is out of float's range")
    return value


def read_into_the_diagonal(text: str, size: int, what: str) -> list[float]:
    """The crfrnn branch's CommonUtils::read_into_the_diagonal: `size` values from tokens
    separated by single spaces (std::getline with ' '); fewer, or an empty or non-numeric
    token among them, is an error."""
    tokens = text.split(" ") if text else []
    if text.endswith(" "):
        tokens.pop()   # getline finds nothing after the last delimiter
    if len(tokens) < size:
        raise ValueError(f"{what} '{text}' is malformed: couldn't read {size} values")
    return [stof(token, what) for token in tokens[:size]]


def read_par_file(path: str, size: int) -> list[float]:
    """The earlier fork's fscanf("%lf") loop over spatial.par / bilateral.par: whitespace
    separated numbers, read until `size` or the first that does not parse; the rest stay 0."""
    with open(path, encoding="latin-1") as f:
        text = f.read()
    values, at = [], 0
    while len(values) < size:
        while at < len(text) and text[at].isspace():
            at += 1
        match = _FLOAT.match(text, at)
        if not match:
            break
        values.append(float(match.group(0)))
        at = match.end()
    return values + [0.0] * (size - len(values))


@register("MultiStageMeanfield")
class MultiStageMeanfield(Layer):
    """CRF-RNN's mean-field inference (see the module docstring). Blobs: spatial kernel
    weights, bilateral kernel weights and the compatibility matrix, each (1, 1, C, C).

    The kernel weights start diagonal: from spatial_filter_weights_str /
    bilateral_filter_weights_str when set (the crfrnn branch), else from spatial.par /
    bilateral.par in the working directory (the earlier fork, which the published
    crfasrnn model comes with), else spatial_filter_weight / bilateral_filter_weight (that
    fork's fields, which it never reads; it stops there). The compatibility starts as -I
    (POTTS)."""

    bottom_count = (3, 3)
    top_count = (1, 1)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        c = self.top_shapes[0][1]
        with torch.no_grad():
            for blob, which in zip(self.blobs, ("spatial", "bilateral")):
                blob.copy_(torch.diag(torch.tensor(self._initial_weights(which, c))).reshape(blob.shape))
            self.blobs[2].zero_().view(c, c).fill_diagonal_(-1.0)   # POTTS: -1 on the diagonal, +0 off it
        self._spatial: dict = {}

    def _initial_weights(self, which: str, c: int) -> list[float]:
        p = self.lp.multi_stage_meanfield_param
        text_field, value = {
            "spatial": ("spatial_filter_weights_str", p.spatial_filter_weight),
            "bilateral": ("bilateral_filter_weights_str", p.bilateral_filter_weight)}[which]
        if p.HasField(text_field):
            return read_into_the_diagonal(getattr(p, text_field), c,
                                          f"layer '{self.name}': multi_stage_meanfield_param.{text_field}")
        if os.path.isfile(f"{which}.par"):
            return read_par_file(f"{which}.par", c)
        log.info("layer '%s': no %s nor %s.par; the %s kernel weights start at %g on the diagonal "
                 "(%s_filter_weight)", self.name, text_field, which, which, value, which)
        return [value] * c

    def blob_fillers(self):
        return [None, None, None]   # set in __init__

    def _lattice(self, features: np.ndarray, what: str) -> Lattice:
        return named_lattice(features, f"layer '{self.name}': {what}")

    def forward(self, unary, q, image):
        p = self.lp.multi_stage_meanfield_param
        n, c, h, w = meanfield_geometry(self.lp, [unary.shape, q.shape, image.shape])
        pixels = h * w
        key = (h, w, str(unary.device), unary.dtype)
        if key not in self._spatial:
            spatial = self._lattice(pixel_positions(h, w, p.theta_gamma), "spatial kernel")
            self._spatial = {key: (spatial, normaliser(spatial, unary))}
        spatial, spatial_norm = self._spatial[key]
        rgb = image.detach().reshape(n, -1)[:, :3 * pixels].reshape(n, 3, pixels)
        colours = (rgb / p.theta_beta).to(torch.float32).cpu().numpy()
        positions = pixel_positions(h, w, p.theta_alpha)
        bilateral = [self._lattice(np.concatenate([positions, colours[s].T], 1),
                                   f"bilateral kernel of sample {s}") for s in range(n)]
        bilateral_norm = torch.stack([normaliser(b, unary) for b in bilateral])[:, None]
        w_spatial, w_bilateral, compatibility = (b.reshape(c, c) for b in self.blobs)
        u = unary.reshape(n, c, pixels)
        out = q.reshape(n, c, pixels)
        for _ in range(p.num_iterations):
            prob = torch.softmax(out, dim=1)
            smoothed = filter_values(spatial, prob.reshape(n * c, pixels)).reshape(n, c, pixels)
            smoothed = smoothed * spatial_norm
            edges = torch.stack([filter_values(bilateral[s], prob[s]) for s in range(n)]) * bilateral_norm
            message = torch.matmul(w_spatial, smoothed) + torch.matmul(w_bilateral, edges)
            out = u - torch.matmul(compatibility, message)
        return (out.reshape(n, c, h, w),)

    def extra_repr(self):
        p = self.lp.multi_stage_meanfield_param
        return (f"name={self.name!r}, num_iterations={p.num_iterations}, theta_alpha={p.theta_alpha:g}, "
                f"theta_beta={p.theta_beta:g}, theta_gamma={p.theta_gamma:g}")
