"""DeepLab v2's remaining test-time layers (deeplab-public-ver2: densecrf_layer.cpp with
src/caffe/util/densecrf_pairwise.cpp, densecrf_util.hpp and permutohedral.cpp;
mat_write_layer.cpp, mat_read_layer.cpp and matio_io.cpp).

DenseCRF: per item n, with (h, w) the item's data_dim truncated to int, the CRF covers the
whole H x W bottom when H <= h and W <= w, else the top-left h x w; its M labels' unary is
minus the scores there (bottom 0 read as scores, not probabilities: no log, no clipping).
Mean field as the layer's RunInference:

    Q = softmax(scores)                                     (StartInference)
    max_iter times:  Q = softmax(scores + sum_k w_k * norm_k * filter_k(Q))

with softmax the fork's ExpAndNormalize (max subtracted, densecrf_util's fast_exp: a degree-7
polynomial for exp(-x) on x <= 0.69 squared back up, 0 below -20, a sequential float sum),
filter_k the permutohedral lattice (runner.layers.permutohedral, which the fork's lattice is)
over (x / pos_xy_std_k, y / pos_xy_std_k) for each Gaussian kernel, then (x, y / bi_xy_std_k,
the image's three channels / bi_rgb_std_k) for each bilateral kernel, and norm_k
1 / (filter_k(1) + 1e-20) per pixel (PottsPotential: Potts compatibility, a pixel's own value
included). The top is Q (or log max(Q, FLT_MIN) with output_probability false) on the
covered region and 0 elsewhere.

Quirks kept: the bilateral features of every item come from the first image of the batch
(the fork never offsets its image pointer by n); everything is float. Refused where the
fork reads outside its blobs: a two-bottom layer (no image), a data_dim larger than the
bottom in one direction only, a negative or non-finite data_dim. DenseCRF has no gradient
(its Backward_cpu is empty), and neither have MatWrite and MatRead.
"""
from __future__ import annotations

import numpy as np
import torch

from runner import matfile
from runner.layers.base import Layer, register
from runner.layers.permutohedral import named_lattice, normaliser, pixel_positions
from runner.shapes_forks import dense_crf_kernels

FLT_MIN = float(np.finfo(np.float32).tiny)
# very_fast_exp's coefficients (densecrf_util.hpp), as float: exp(-x) ~ 1 - x(c0 - x(c1 - ...))
_EXP_POLY = [float(np.float32(c)) for c in (0.9999999995, 0.4999999206, 0.1666653019,
                                            0.0416573475, 0.0083013598, 0.0013298820, 0.0001413161)]


def _below(limit: float) -> float:
    """The largest float32 under the double `limit`: for float32 x, x > it iff x > limit."""
    f = np.float32(limit)
    return float(np.nextafter(f, np.float32(-np.inf)) if float(f) >= limit else f)


# fast_exp's range reduction: while x > 0.69 * 8, 0.69 * 4, 0.69 * 2 (compares in double),
# divide by 8, 4, 2 and count 3, 2, 1; for x <= 20 those loops run at most 1, 1, 2 times.
_REDUCE = ((_below(0.69 * 2 * 2 * 2), 8.0, 3, 1), (_below(0.69 * 2 * 2), 4.0, 2, 1),
           (_below(0.69), 2.0, 1, 2))


def fast_exp(t: torch.Tensor) -> torch.Tensor:
    """densecrf_util.hpp's scalar fast_exp of float32 values: |t| > 20 gives 0 (whatever the
    sign), else |t| halved m times (m the fewest that bring it to <= 0.69), very_fast_exp's
    polynomial (an approximation of exp(-x)), squared m times, inverted for t >= 0."""
    magnitude = t.abs()
    x = magnitude.clamp(max=20.0)   # beyond 20 the result is 0 anyway
    mult = torch.zeros_like(x)
    for limit, divisor, count, passes in _REDUCE:
        for _ in range(passes):
            over = x > limit
            x = torch.where(over, x / divisor, x)
            mult += over * float(count)
    p = x * _EXP_POLY[6]
    for c in reversed(_EXP_POLY[:6]):
        p = x * (c - p)
    x = 1.0 - p
    for k in range(5):   # m <= 5 for |t| <= 20
        x = torch.where(mult > k, x * x, x)
    x = torch.where(t < 0, x, 1.0 / x)
    return torch.where(magnitude > 20, torch.zeros_like(x), x)


def exp_and_normalize(values: torch.Tensor) -> torch.Tensor:
    """ExpAndNormalize over the labels (axis 0 of M x N float32): fast_exp(v - max), divided
    by their sum taken label by label in order, as the fork's loop."""
    e = fast_exp(values - values.max(0).values)
    total = e[0].clone()
    for j in range(1, e.shape[0]):
        total = total + e[j]
    return e / total


def crf_region(dims: torch.Tensor, pad_h: int, pad_w: int, where: str) -> tuple[int, int]:
    """(H, W) the fork's Forward_cpu infers on for one item's data_dim values."""
    if not bool(torch.isfinite(dims[:2]).all()):
        raise ValueError(f"{where}: data_dim {dims[:2].tolist()} is not finite")
    real_h, real_w = (int(v) for v in dims[:2].tolist())   # static_cast<int>: toward zero
    if pad_h <= real_h and pad_w <= real_w:
        return pad_h, pad_w
    if real_h < 0 or real_w < 0 or real_h > pad_h or real_w > pad_w:
        raise ValueError(f"{where}: data_dim ({real_h}, {real_w}) does not fit the {pad_h} x {pad_w} "
                         f"scores: the fork's loops would then read outside its rows or blob")
    return real_h, real_w


@register("DenseCRF")
class DenseCRF(Layer):
    """DeepLab v2's fully connected CRF (see the module docstring): bottoms scores, data_dim
    and image; top the marginals (or their log) at the scores' shape; no gradient."""

    bottom_count, top_count = (2, 3), (1, 1)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        self.gaussian, self.bilateral = dense_crf_kernels(lp)
        self._spatial_key = None   # the (h, w, device) of the cached Gaussian kernels
        self._spatial: dict = {}

    def _gaussian(self, h: int, w: int, k: int, like: torch.Tensor):
        """The k-th Gaussian kernel's lattice and normaliser for an h x w region, cached for
        the last region size only (each image of a test set may have its own)."""
        key = (h, w, str(like.device))
        if key != self._spatial_key:
            self._spatial_key, self._spatial = key, {}
        if k not in self._spatial:
            lattice = named_lattice(pixel_positions(h, w, self.gaussian[k][1]),
                                    f"layer '{self.name}': Gaussian kernel {k}")
            self._spatial[k] = (lattice, normaliser(lattice, like))
        return self._spatial[k]

    def _kernels(self, h: int, w: int, image: torch.Tensor, like: torch.Tensor):
        """[(weight, lattice, normaliser)] in the fork's order: Gaussian, then bilateral."""
        kernels = [(weight, *self._gaussian(h, w, k, like)) for k, (weight, _) in enumerate(self.gaussian)]
        colours = image[:, :h, :w].reshape(3, h * w).t().cpu().numpy()
        for k, (weight, xy_std, rgb_std) in enumerate(self.bilateral):
            features = np.concatenate([pixel_positions(h, w, xy_std), colours / np.float32(rgb_std)], 1)
            lattice = named_lattice(features, f"layer '{self.name}': bilateral kernel {k}")
            kernels.append((weight, lattice, normaliser(lattice, like)))
        return kernels

    def infer(self, scores: torch.Tensor, kernels) -> torch.Tensor:
        """RunInference on one item's M x (H W) float32 scores: the marginals Q."""
        q = exp_and_normalize(scores)
        for _ in range(self.lp.dense_crf_param.max_iter):
            message = scores.clone()
            for weight, lattice, norm in kernels:
                message += (weight * norm) * lattice.compute(q)
            q = exp_and_normalize(message)
        return q

    @torch.no_grad()
    def forward(self, scores, data_dim, image):
        n, m, pad_h, pad_w = self.top_shapes[0]
        x = scores.detach().to(torch.float32).reshape(n, m, pad_h, pad_w)
        dims = data_dim.detach().reshape(n, -1).to(torch.float64)
        # the fork reads the image through bottom[2]->cpu_data() for every item: item 0's
        first_image = image.detach().to(torch.float32).reshape(n, 3, pad_h, pad_w)[0]
        out = torch.zeros_like(x)
        for i in range(n):
            h, w = crf_region(dims[i], pad_h, pad_w, f"layer '{self.name}': item {i}")
            if not h * w:
                continue
            region = x[i, :, :h, :w].reshape(m, h * w)
            q = self.infer(region, self._kernels(h, w, first_image, region))
            if not self.lp.dense_crf_param.output_probability:
                q = torch.log(q.clamp(min=FLT_MIN))
            out[i, :, :h, :w] = q.reshape(m, h, w)
        return (out.to(scores.dtype).reshape(self.top_shapes[0]),)

    def extra_repr(self):
        p = self.lp.dense_crf_param
        return (f"name={self.name!r}, max_iter={p.max_iter}, gaussian={self.gaussian}, "
                f"bilateral={self.bilateral}, output_probability={p.output_probability}")


@register("MatWrite")
class MatWrite(Layer):
    """DeepLab v2's MatWrite: on every period-th forward (counting from the first), each bottom
    i as prefix + name + "_blob_<i>.mat" (runner.matfile's layout), the name the forward's
    line of `source` or "iter_<forward>"; a forward past the list's end is the fork's error.
    No tops; no gradient."""

    bottom_count, top_count = (0, None), (0, 0)
    forward_state = ("iteration",)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        self.where = f"layer '{lp.name}' (MatWrite)"
        self.names = matfile.list_names(lp.mat_write_param, self.where)
        self.iteration = 0

    def forward(self, *bottoms):
        p, at = self.lp.mat_write_param, self.iteration
        if at % p.period == 0:
            if self.names is not None and at >= len(self.names):
                raise matfile.MatFileError(
                    f"{self.where}: forward {at} has no name in {p.source} ({len(self.names)} "
                    f"lines): the test has run for more iterations than it was supposed to")
            for i, blob in enumerate(bottoms):
                values = blob.detach().to("cpu", torch.float32).numpy()
                matfile.write_blob(matfile.blob_file(p.prefix, self.names, at, i), values, self.where)
        self.iteration += 1
        return ()

    def extra_repr(self):
        p = self.lp.mat_write_param
        return f"name={self.name!r}, prefix={p.prefix!r}, period={p.period}"


@register("MatRead")
class MatRead(Layer):
    """DeepLab v2's MatRead: a top of batch_size items, item k of a forward read from prefix +
    the next name of `source` (cycling) + "_blob_0.mat", each a num-1 blob of the first
    file's channels, height and width. No bottoms; no gradient."""

    bottom_count, top_count = (0, 0), (1, 1)
    forward_state = ("iteration",)

    def __init__(self, lp, bottom_shapes, phase):
        super().__init__(lp, bottom_shapes, phase)
        self.where = f"layer '{lp.name}' (MatRead)"
        self.names = matfile.list_names(lp.mat_read_param, self.where)
        self.iteration = 0
        self.register_buffer("_like", torch.zeros(0), persistent=False)   # device and dtype

    def forward(self):
        p = self.lp.mat_read_param
        shape = self.top_shapes[0]
        items = []
        for _ in range(p.batch_size):
            if self.iteration >= len(self.names):
                self.iteration = 0
            path = matfile.blob_file(p.prefix, self.names, self.iteration, 0)
            blob = matfile.read_blob(path, self.where)
            if blob.shape[0] != 1 or blob.shape[1:] != tuple(shape[1:]):
                raise matfile.MatFileError(f"{self.where}: {path} holds a {list(blob.shape)} blob; "
                                           f"the top takes 1 x {list(shape[1:])}")
            items.append(torch.from_numpy(blob))
            self.iteration += 1
        return (torch.cat(items).to(self._like.device, self._like.dtype),)

    def extra_repr(self):
        p = self.lp.mat_read_param
        return f"name={self.name!r}, prefix={p.prefix!r}, batch_size={p.batch_size}"
