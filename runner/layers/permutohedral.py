"""The permutohedral lattice of CRF-RNN's Caffe (torrvision/caffe, ModifiedPermutohedral in
src/caffe/util/modified_permutohedral.cpp): a Gaussian filter over d-dimensional features,
approximated by splatting each point onto the d + 1 vertices of its enclosing simplex of the
permutohedral lattice (Adams et al. 2010) with barycentric weights, blurring the lattice
with [1/2, 1, 1/2] along each of its d + 1 directions in turn, and slicing back with the same
weights times alpha = 1 / (1 + 2^-d). The "modified" lattice does not normalise: callers
divide by the filtered ones (MultiStageMeanfield's norm_feed).

The lattice is built in numpy as the fork's x86 (SSE) init_cpu builds it, in float32:
elevation, rounding to the nearest remainder-0 point (ties to even, as _mm_round_ps), the
rank sort with its tie order, the wrap-around, barycentric weights and the vertex keys. The
fork's SSE loop handles points four at a time and pads the last block with zero features,
whose vertices enter the hash table too (never splatted nor sliced, but blurred through);
they are added here as well, as they change results where real points lie near the origin.
The vertices are numbered differently (sorted keys, not first-insertion order), which changes
nothing but the order of float sums.

Filtering (splat, blur, slice) runs in torch, on the values' device and dtype. The blur steps
are symmetric, so the fork's `reverse` filter (blur directions d..0) is the exact transpose
of the forward one (0..d); `filter_values` is a torch autograd Function whose backward is
that reverse filter, as MeanfieldIteration::Backward_cpu calls it.

DeepLab v2's DenseCRF (deeplab-public-ver2's src/caffe/util/permutohedral.cpp, Krahenbuhl's
lattice that the modified one started from) builds and filters the same way in its x86 (SSE)
build: the same elevation, ties-to-even rounding, rank order, zero-feature padding of the last
block of four, barycentric weights, blur order 0..d, and alpha applied to the weights when
slicing; only its hash table differs (open addressing, vertices numbered by first insertion),
which changes nothing but the order of float sums. So it uses this module as it is.

Complexity, for N points of dimension d and C value channels: building is O(N d^2) for the
ranks plus a sort of the N (d + 1) vertex keys, O(N d log(N d)); the lattice has M <= N (d+1)
(+ d + 1 padding) vertices, and neighbour lookup is d + 1 binary searches over them,
O(M d log M). One filter is O((N + M) (d + 1) C) time and O(M C) memory.
"""
from __future__ import annotations

import math

import numpy as np
import torch

KEY_LIMIT = 2 ** 15   # the fork keeps vertex keys in 16-bit shorts
BLOCK = 4             # floats per SSE register: the fork's init pads N to a multiple of it


class LatticeError(ValueError):
    """Features the fork's lattice cannot hold (non-finite, or keys beyond 16 bits)."""


def _scale_factors(d: int) -> np.ndarray:
    """The diagonal of E (Adams et al. p.5) scaled to the filter's expected standard deviation,
    as the fork computes it: double arithmetic on a float inv_std_dev, stored as float."""
    inv_std_dev = float(np.float32(math.sqrt(2.0 / 3.0) * (d + 1)))
    return np.array([1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std_dev for i in range(d)],
                    np.float32)


def lattice_coordinates(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertex keys (N, d + 1, d) int64 and barycentric weights (N, d + 1) float32 of N points
    (N, d), as the fork's SSE init_cpu computes them, remainder r in column r."""
    f = np.ascontiguousarray(features, np.float32)
    n, d = f.shape
    scale = _scale_factors(d)
    one_over = np.float32(1.0 / (d + 1))
    dplus1 = np.float32(d + 1)
    elevated = np.empty((n, d + 1), np.float32)
    sm = np.zeros(n, np.float32)
    with np.errstate(over="ignore", invalid="ignore"):   # overflow is refused just below
        for j in range(d, 0, -1):
            cf = f[:, j - 1] * scale[j - 1]
            elevated[:, j] = sm - np.float32(j) * cf
            sm = sm + cf
    elevated[:, 0] = sm
    largest = float(np.abs(elevated[:, :d]).max(initial=0))   # the columns the keys come from
    if not largest < KEY_LIMIT + d + 1:   # each key lies within d + 1 of its elevated point
        raise LatticeError(f"lattice coordinates reach {largest:.3g}, beyond the fork's 16-bit "
                           "keys (features too large)")
    v = np.rint(one_over * elevated)          # nearest, ties to even (SSE rounding)
    rem0 = v * dplus1
    total = v.sum(1, dtype=np.float32)        # integers: exact in any order
    diff = elevated - rem0
    # rank[i] counts j > i with diff[j] > diff[i] and j < i with diff[j] >= diff[i]
    later = np.triu(np.ones((d + 1, d + 1), bool), 1)
    greater = diff[:, None, :] > diff[:, :, None]          # [n, i, j]: diff[j] > diff[i]
    not_less = diff[:, None, :] >= diff[:, :, None]
    rank = np.where(later, greater, not_less & later.T).sum(2).astype(np.float32)
    rank += total[:, None]
    shift = np.where(rank < 0, dplus1, np.float32(0)) - np.where(rank >= dplus1, dplus1,
                                                                 np.float32(0))
    rank += shift
    rem0 += shift
    delta = (elevated - rem0) * one_over
    slot = (d - rank).astype(np.int64)
    rows = np.arange(n)[:, None]
    bary = np.zeros((n, d + 2), np.float32)
    bary[rows, slot] = delta
    bary[rows, slot + 1] -= delta
    bary[:, 0] += np.float32(1) + bary[:, d + 1]
    # canonical[r][k] = r if k <= d - r else r - (d + 1); vertex r: rem0 + canonical[r][rank]
    r = np.arange(d + 1)[:, None]
    canonical = np.where(np.arange(d + 1)[None, :] <= d - r, r, r - (d + 1))
    keys = rem0[:, None, :d].astype(np.int64) + canonical[r[None], rank[:, None, :d].astype(np.int64)]
    return keys, bary[:, :d + 1]


def _pack(keys: np.ndarray, low: np.ndarray, span: np.ndarray) -> np.ndarray:
    """Each d-integer key as one int64, mixed radix over [low, low + span); -1 outside."""
    inside = ((keys >= low) & (keys < low + span)).all(1)
    codes = np.zeros(len(keys), np.int64)
    for k in range(keys.shape[1]):
        codes = codes * int(span[k]) + np.clip(keys[:, k] - low[k], 0, int(span[k]) - 1)
    return np.where(inside, codes, -1)


class Lattice:
    """A permutohedral lattice over N feature points (N, d), ready to filter (C, N) values.

    `offsets` (N, d + 1) and `weights` (N, d + 1): each point's vertices and barycentric
    weights; `neighbours` (d + 1, 2, M + 1): along each direction, the vertex at key - step
    and at key + step (the fork's n1 and n2), M (a row kept at zero) where there is none.
    """

    def __init__(self, features: np.ndarray):
        features = np.asarray(features, np.float32)
        if features.ndim != 2 or features.shape[1] < 1:
            raise LatticeError(f"lattice features must be N x d, got {list(features.shape)}")
        if not np.isfinite(features).all():
            raise LatticeError("lattice features hold NaN or inf")
        n, d = features.shape
        self.n, self.d = n, d
        keys, self.weights = lattice_coordinates(features)
        all_keys = keys.reshape(-1, d)
        if n % BLOCK:   # the SSE loop's zero-feature padding of its last block of four
            all_keys = np.concatenate([all_keys, lattice_coordinates(np.zeros((1, d)))[0][0]])
        largest = int(np.abs(all_keys).max(initial=0))
        if largest + d >= KEY_LIMIT:
            raise LatticeError(f"lattice coordinates reach {largest}, beyond the fork's 16-bit "
                               f"keys (features too large)")
        low, span = all_keys.min(0), all_keys.max(0) - all_keys.min(0) + 1
        if sum(math.log2(s) for s in span) < 62:
            codes, inverse = np.unique(_pack(all_keys, low, span), return_inverse=True)
            vertices = all_keys[np.unique(inverse.reshape(-1), return_index=True)[1]]

            def find(probe):
                packed = _pack(probe, low, span)
                at = np.searchsorted(codes, packed).clip(0, len(codes) - 1)
                return np.where((codes[at] == packed) & (packed >= 0), at, len(codes))
        else:   # too wide to pack into an int64: rows as structured records
            row = [("", np.int64)] * d
            records = np.ascontiguousarray(all_keys).view(row).ravel()
            codes, inverse = np.unique(records, return_inverse=True)
            vertices = codes.view(np.int64).reshape(-1, d)

            def find(probe):
                packed = np.ascontiguousarray(probe).view(row).ravel()
                at = np.searchsorted(codes, packed).clip(0, len(codes) - 1)
                return np.where(codes[at] == packed, at, len(codes))
        self.m = m = len(codes)
        self.offsets = inverse.reshape(-1)[:n * (d + 1)].reshape(n, d + 1)
        self.neighbours = np.full((d + 1, 2, m + 1), m, np.int64)
        for j in range(d + 1):
            step = -np.ones(d, np.int64)
            if j < d:
                step[j] = d
            self.neighbours[j, 0, :m] = find(vertices + step)
            self.neighbours[j, 1, :m] = find(vertices - step)
        self._on_device: dict = {}

    def _tensors(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = tuple(torch.from_numpy(a).to(device) for a in
                                         (self.offsets.T.copy(), self.weights.T.copy(),
                                          self.neighbours))
        return self._on_device[key]

    def compute(self, values: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        """The fork's compute_cpu(out, in, value_size, reverse): (C, N) values splatted,
        blurred along directions 0..d (d..0 with `reverse`) and sliced, without autograd
        (filter_values gives it one)."""
        c, n = values.shape
        if n != self.n:
            raise LatticeError(f"{n} values per channel for a lattice of {self.n} points")
        offsets, weights, neighbours = self._tensors(values.device)
        weights = weights.to(values.dtype)
        rows = values.t()
        lattice = values.new_zeros(self.m + 1, c)
        for r in range(self.d + 1):
            lattice.index_add_(0, offsets[r], rows * weights[r][:, None])
        for j in (range(self.d, -1, -1) if reverse else range(self.d + 1)):
            # old + 0.5 * (n1 + n2), in the fork's order of operations
            blurred = torch.index_select(lattice, 0, neighbours[j, 0])
            blurred.add_(torch.index_select(lattice, 0, neighbours[j, 1])).mul_(0.5).add_(lattice)
            lattice = blurred
        alpha = 1.0 / (1.0 + 2.0 ** -self.d)
        out = values.new_zeros(n, c)
        for r in range(self.d + 1):
            out.addcmul_(torch.index_select(lattice, 0, offsets[r]), (weights[r] * alpha)[:, None])
        return out.t()


NORM_EPS = 1e-20   # both forks' 1 / (norm + 1e-20f)


def pixel_positions(h: int, w: int, scale: float) -> np.ndarray:
    """(x, y) / scale of the h x w pixels in row-major order, in float, as both forks'
    position features: (p % W, p / W) / theta in CRF-RNN, (i, j) / xy_std in DenseCRF."""
    p = np.arange(h * w)
    return np.stack([(p % w).astype(np.float32), (p // w).astype(np.float32)], 1) / np.float32(scale)


def named_lattice(features: np.ndarray, where: str) -> "Lattice":
    """Lattice(features), its LatticeError prefixed with `where` (the layer and kernel)."""
    try:
        return Lattice(features)
    except LatticeError as err:
        raise LatticeError(f"{where}: {err}") from None


def normaliser(lattice: "Lattice", like: torch.Tensor) -> torch.Tensor:
    """1 / (the filtered ones + 1e-20), per point: the per-pixel normalisation of CRF-RNN's
    norm_feed and of DenseCRF's PottsPotential."""
    ones = torch.ones(1, lattice.n, dtype=like.dtype, device=like.device)
    return 1.0 / (lattice.compute(ones)[0] + NORM_EPS)


class _Filter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, lattice):
        ctx.lattice = lattice
        return lattice.compute(values)

    @staticmethod
    def backward(ctx, grad):
        return ctx.lattice.compute(grad.contiguous(), reverse=True), None


def filter_values(lattice: Lattice, values: torch.Tensor) -> torch.Tensor:
    """(C, N) values filtered by the lattice; backward is the fork's reverse filter."""
    return _Filter.apply(values, lattice)
