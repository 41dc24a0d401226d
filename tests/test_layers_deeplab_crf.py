"""DeepLab v2's DenseCRF, MatWrite and MatRead (deeplab-public-ver2).

DenseCRF is checked against a loop-by-loop numpy transcription, written here from the fork's
C++, of DenseCRFLayer (Forward_cpu, SetupUnaryEnergy, SetupPairwiseFunctions, ExpAndNormalize,
Start/StepInference, ComputeMap), densecrf_pairwise.cpp's PottsPotential, densecrf_util.hpp's
fast_exp and permutohedral.cpp's lattice (the x86 SSE build of init, with its open-addressing
HashTable, and compute); MatWrite's files are read back with scipy as MATLAB sees them
(data(w, h, c, n) = blob[n, c, h, w], class single) and MatRead reads them and files written
as MATLAB writes them; a DeepLab-style TEST net (ImageSegData -> fc8 -> Interp -> DenseCRF ->
MatWrite) runs from its prototxt."""
import math
import os

import cv2
import numpy as np
import pytest
import scipy.io as sio
import torch
from google.protobuf import text_format

from runner import Net
from runner.layers.deeplab_crf import MatRead, MatWrite, exp_and_normalize, fast_exp
from runner.layers.permutohedral import Lattice
from runner.matfile import MatFileError
from runner.proto import caffe_pb2, parse_net_text
from runner.shapes import ShapeError
from tests.layer_helpers import layer_from_text

F32 = np.float32
MASK64 = (1 << 64) - 1


# ---- the fork's code, transcribed ----------------------------------------------------------------

class HashTable:
    """permutohedral.cpp's HashTable: open addressing over short keys, ids by insertion."""

    def __init__(self, key_size, n_elements):
        self.key_size, self.filled, self.capacity = key_size, 0, 2 * n_elements
        self.table = [-1] * self.capacity
        self.keys = []

    def hash(self, k):
        r = 0
        for v in k:
            r = (r + v) & MASK64          # size_t += short
            r = (r * 1664525) & MASK64
        return r

    def grow(self):
        old_table, old_capacity = self.table, self.capacity
        self.capacity *= 2
        self.table = [-1] * self.capacity
        for i in range(old_capacity):
            if old_table[i] >= 0:
                e = old_table[i]
                h = self.hash(self.keys[e]) % self.capacity
                while self.table[h] >= 0:
                    h = h + 1 if h < self.capacity - 1 else 0
                self.table[h] = e

    def find(self, k, create=False):
        if 2 * self.filled >= self.capacity:
            self.grow()
        h = self.hash(k) % self.capacity
        while True:
            e = self.table[h]
            if e == -1:
                if create:
                    self.keys.append(tuple(k))
                    self.table[h] = self.filled
                    self.filled += 1
                    return self.table[h]
                return -1
            if self.keys[e] == tuple(k):
                return e
            h += 1
            if h == self.capacity:
                h = 0


class ForkPermutohedral:
    """Permutohedral::init (SSE_PERMUTOHEDRAL: four points per __m128, the last block padded
    with zero features) and Permutohedral::compute (float* with value_size labels)."""

    def __init__(self, feature, N, d):
        self.N, self.d = N, d
        table = HashTable(d, N)
        bs = 4
        invdplus1, dplus1 = F32(1.0 / (d + 1)), F32(d + 1)
        self.offset = np.zeros((N + 16) * (d + 1), np.int64)
        self.barycentric_ = np.zeros((N + 16) * (d + 1), F32)
        canonical = np.zeros((d + 1) * (d + 1), np.int64)
        for i in range(d + 1):
            for j in range(d - i + 1):
                canonical[i * (d + 1) + j] = i
            for j in range(d - i + 1, d + 1):
                canonical[i * (d + 1) + j] = i - (d + 1)
        inv_std_dev = F32(math.sqrt(2.0 / 3.0) * (d + 1))
        scale_factor = [F32(1.0 / math.sqrt((i + 2) * (i + 1)) * float(inv_std_dev)) for i in range(d)]
        for k in range(0, N, bs):
            f = np.array([[feature[(k + i) * d + j] if k + i < N else 0.0 for i in range(bs)]
                          for j in range(d)], F32)
            elevated = np.zeros((d + 1, bs), F32)
            sm = np.zeros(bs, F32)
            for j in range(d, 0, -1):
                cf = f[j - 1] * scale_factor[j - 1]
                elevated[j] = sm - F32(j) * cf
                sm = sm + cf
            elevated[0] = sm
            rem0 = np.zeros((d + 1, bs), F32)
            total = np.zeros(bs, F32)
            for i in range(d + 1):
                v = np.rint(invdplus1 * elevated[i])      # _mm_round_ps / cvtps: nearest even
                rem0[i] = v * dplus1
                total = total + v
            rank = np.zeros((d + 1, bs), F32)
            for i in range(d):
                di = elevated[i] - rem0[i]
                for j in range(i + 1, d + 1):
                    c = (di < elevated[j] - rem0[j]).astype(F32)
                    rank[i] += c
                    rank[j] += F32(1) - c
            for i in range(d + 1):
                rank[i] += total
                add = np.where(rank[i] < 0, dplus1, F32(0))
                sub = np.where(rank[i] >= dplus1, dplus1, F32(0))
                rank[i] += add - sub
                rem0[i] += add - sub
            bary = np.zeros(bs * (d + 2), F32)
            for i in range(d + 1):
                v = (elevated[i] - rem0[i]) * invdplus1
                for j in range(bs):
                    p = d - int(rank[i][j])
                    bary[j * (d + 2) + p] += v[j]
                    bary[j * (d + 2) + p + 1] -= v[j]
            for j in range(bs):
                bary[j * (d + 2)] += F32(1) + bary[j * (d + 2) + d + 1]
                for remainder in range(d + 1):
                    key = [int(rem0[i][j] + canonical[remainder * (d + 1) + int(rank[i][j])])
                           for i in range(d)]
                    self.offset[(j + k) * (d + 1) + remainder] = table.find(key, True)
                    self.barycentric_[(j + k) * (d + 1) + remainder] = bary[j * (d + 2) + remainder]
        self.M = table.filled
        self.blur = np.zeros(((d + 1) * self.M, 2), np.int64)
        for j in range(d + 1):
            for i in range(self.M):
                key = table.keys[i]
                n1 = [key[k] - 1 for k in range(d)] + [0]
                n2 = [key[k] + 1 for k in range(d)] + [0]
                n1[j] = key[j] + d if j < d else n1[j]
                n2[j] = key[j] - d if j < d else n2[j]
                self.blur[j * self.M + i] = table.find(n1[:d]), table.find(n2[:d])

    def compute(self, inp, value_size):
        """out (N x value_size) from in (N x value_size)."""
        d, M = self.d, self.M
        values = np.zeros((M + 2, value_size), F32)
        new_values = np.zeros((M + 2, value_size), F32)
        for i in range(self.N):
            for j in range(d + 1):
                o = self.offset[i * (d + 1) + j] + 1
                values[o] += self.barycentric_[i * (d + 1) + j] * inp[i]
        for j in range(d + 1):
            for i in range(M):
                n1, n2 = self.blur[j * M + i] + 1
                new_values[i + 1] = values[i + 1] + F32(0.5) * (values[n1] + values[n2])
            values, new_values = new_values, values
        alpha = F32(1.0) / (F32(1) + F32(2.0) ** F32(-d))
        out = np.zeros((self.N, value_size), F32)
        for i in range(self.N):
            for j in range(d + 1):
                o = self.offset[i * (d + 1) + j] + 1
                out[i] += (self.barycentric_[i * (d + 1) + j] * alpha) * values[o]
        return out


class PottsPotential:
    def __init__(self, features, D, N, w):
        self.lattice, self.N, self.w = ForkPermutohedral(features, N, D), N, F32(w)
        norm = self.lattice.compute(np.ones((N, 1), F32), 1)[:, 0]
        self.norm = F32(1) / (norm + F32(1e-20))

    def apply(self, out_values, in_values, value_size):
        tmp = self.lattice.compute(in_values, value_size)
        for i in range(self.N):
            out_values[i] += (self.w * self.norm[i]) * tmp[i]


def very_fast_exp(x):
    c = [F32(v) for v in (0.9999999995, 0.4999999206, 0.1666653019, 0.0416573475,
                          0.0083013598, 0.0013298820, 0.0001413161)]
    return F32(1) - x * (c[0] - x * (c[1] - x * (c[2] - x * (c[3] - x * (c[4] - x * (c[5] - x * c[6]))))))


def scalar_fast_exp(x):
    x = F32(x)
    less_zero = True
    if x < 0:
        less_zero = False
        x = -x
    if x > 20:
        return F32(0)
    mult = 0
    while float(x) > 0.69 * 2 * 2 * 2:   # float promoted to double
        mult += 3
        x = x / F32(8)
    while float(x) > 0.69 * 2 * 2:
        mult += 2
        x = x / F32(4)
    while float(x) > 0.69:
        mult += 1
        x = x / F32(2)
    x = very_fast_exp(x)
    while mult:
        mult -= 1
        x = x * x
    return F32(1) / x if less_zero else x


def fork_exp_and_normalize(inp, scale, N, M):
    out = np.zeros((N, M), F32)
    for i in range(N):
        b = inp[i]
        mx = F32(scale) * b[0]
        for j in range(1, M):
            if mx < F32(scale) * b[j]:
                mx = F32(scale) * b[j]
        V = [scalar_fast_exp(F32(scale) * b[j] - mx) for j in range(M)]
        tt = F32(0)
        for j in range(M):
            tt = tt + V[j]
        for j in range(M):
            out[i, j] = V[j] / tt
    return out


def fork_dense_crf(bottom, data_dims, im, max_iter, pos, bi, output_prob=True):
    """DenseCRFLayer::Forward_cpu: pos [(w, xy_std)], bi [(w, xy_std, rgb_std)]."""
    num, M, pad_h, pad_w = bottom.shape
    top = np.zeros(bottom.shape, F32)
    bottom_flat, dims_flat, im = bottom.reshape(num, -1), data_dims.reshape(num, -1), im.reshape(-1)
    channel_offset = pad_h * pad_w
    for n in range(num):
        real_h, real_w = int(dims_flat[n][0]), int(dims_flat[n][1])
        if pad_h <= real_h and pad_w <= real_w:
            H, W = pad_h, pad_w
        else:
            H, W = real_h, real_w
        N = H * W
        unary = np.zeros((N, M), F32)
        for c in range(M):
            for h in range(H):
                for w in range(W):
                    unary[h * W + w, c] = -bottom_flat[n][(c * pad_h + h) * pad_w + w]
        pairwise = []
        for pw, std in pos:
            features = np.zeros(N * 2, F32)
            for j in range(H):
                for i in range(W):
                    features[(j * W + i) * 2] = F32(i) / F32(std)
                    features[(j * W + i) * 2 + 1] = F32(j) / F32(std)
            pairwise.append(PottsPotential(features, 2, N, pw))
        for bw, xy_std, rgb_std in bi:
            features = np.zeros(N * 5, F32)
            for j in range(H):
                for i in range(W):
                    features[(j * W + i) * 5] = F32(i) / F32(xy_std)
                    features[(j * W + i) * 5 + 1] = F32(j) / F32(xy_std)
                    idx = j * pad_w + i                       # im is never offset by n
                    for c in range(3):
                        features[(j * W + i) * 5 + 2 + c] = im[idx + c * channel_offset] / F32(rgb_std)
            pairwise.append(PottsPotential(features, 5, N, bw))
        current = fork_exp_and_normalize(unary, -1.0, N, M)
        for _ in range(max_iter):
            nxt = -unary
            for p in pairwise:
                p.apply(nxt, current, M)
            current = fork_exp_and_normalize(nxt, 1.0, N, M)
        for h in range(H):
            for w in range(W):
                for c in range(M):
                    v = current[h * W + w, c]
                    top[n, c, h, w] = v if output_prob else np.log(max(v, np.finfo(F32).tiny))
    return top


# ---- fast_exp and the lattice --------------------------------------------------------------------

def test_fast_exp_and_normalisation_equal_the_forks_scalar_code_bit_for_bit():
    edges = np.array([20.0, 0.69, 1.38, 2.76, 5.52, 11.04, 0.345], F32)   # the loops' limits
    near = np.concatenate([edges, np.nextafter(edges, F32(0)), np.nextafter(edges, F32(100))])
    t = np.concatenate([np.linspace(-25, 25, 4001).astype(F32), near, -near, [F32(0)]])
    got = fast_exp(torch.from_numpy(t)).numpy()
    np.testing.assert_array_equal(got, np.array([scalar_fast_exp(v) for v in t], F32))
    assert got[t < -20].max() == 0 and got[t > 20].max() == 0   # the fork's cut-off, both signs
    np.testing.assert_allclose(got[np.abs(t) <= 20], np.exp(t[np.abs(t) <= 20].astype(np.float64)),
                               rtol=2e-5)
    rng = np.random.default_rng(0)
    scores = (rng.normal(size=(40, 5)) * 6).astype(F32)
    np.testing.assert_array_equal(exp_and_normalize(torch.from_numpy(scores.T.copy())).numpy().T,
                                  fork_exp_and_normalize(scores, 1.0, 40, 5))


@pytest.mark.parametrize("d, n", [(2, 42), (5, 23), (5, 36)])
def test_the_shared_lattice_is_deeplabs(d, n):
    """runner.layers.permutohedral builds and filters as deeplab's permutohedral.cpp."""
    rng = np.random.default_rng(d * 10 + n)
    features = (rng.random((n, d)) * 4 - 1).astype(F32)
    fork, ours = ForkPermutohedral(features.reshape(-1), n, d), Lattice(features)
    assert ours.m == fork.M                                    # the zero padding's vertices too
    np.testing.assert_array_equal(ours.weights, fork.barycentric_[:n * (d + 1)].reshape(n, d + 1))
    relabel = {}
    for a, b in zip(ours.offsets.ravel(), fork.offset[:n * (d + 1)]):
        assert relabel.setdefault(a, b) == b
    values = rng.normal(size=(n, 3)).astype(F32)
    np.testing.assert_allclose(ours.compute(torch.from_numpy(values.T.copy())).numpy().T,
                               fork.compute(values, 3), rtol=1e-5, atol=1e-6)


# ---- DenseCRF ------------------------------------------------------------------------------------

def _crf_text(max_iter=3, extra="", pos=((3, 2.0), (1.5, 4.0)), bi=((4, 3.0, 6.0), (2, 5.0, 20.0))):
    fields = " ".join(f"pos_w: {w} pos_xy_std: {s}" for w, s in pos)
    fields += " " + " ".join(f"bi_w: {w} bi_xy_std: {s} bi_rgb_std: {r}" for w, s, r in bi)
    return (f'name: "crf" type: "DenseCRF" bottom: "fc8" bottom: "dim" bottom: "data" top: "crf" '
            f'dense_crf_param {{ max_iter: {max_iter} {fields} {extra} }}')


def _crf_inputs(rng, n=2, m=3, h=6, w=7):
    scores = (rng.normal(size=(n, m, h, w)) * 2).astype(F32)
    image = (rng.random((n, 3, h, w)) * 60 - 30).astype(F32)
    return scores, image


@pytest.mark.parametrize("dims, output_prob", [
    (((6, 7), (4, 5)), True),       # the second item cropped to its real 4 x 5
    (((9, 12), (6.7, 7.9)), False),  # larger than the bottom: all of it; truncated; log output
    (((3, 7), (6, 2)), True),       # cropped in one direction only
])
def test_forward_equals_the_forks_loops(dims, output_prob):
    rng = np.random.default_rng(len(str(dims)))
    scores, image = _crf_inputs(rng)
    data_dim = np.array(dims, F32).reshape(2, 1, 1, 2)
    extra = "" if output_prob else "output_probability: false"
    layer = layer_from_text(_crf_text(extra=extra), [scores.shape, data_dim.shape, image.shape], 1)
    (top,) = layer(torch.from_numpy(scores), torch.from_numpy(data_dim), torch.from_numpy(image))
    expected = fork_dense_crf(scores, data_dim, image, 3, [(3, 2.0), (1.5, 4.0)],
                              [(4, 3.0, 6.0), (2, 5.0, 20.0)], output_prob)
    assert top.shape == (2, 3, 6, 7)
    np.testing.assert_allclose(top.numpy(), expected, rtol=2e-5, atol=2e-6)
    for n, (h, w) in enumerate(dims):
        h, w = (6, 7) if (h >= 6 and w >= 7) else (int(h), int(w))
        outside = np.ones((6, 7), bool)
        outside[:h, :w] = False
        assert not top[n][:, torch.from_numpy(outside)].any()           # zeros outside the region
        region = top[n, :, :h, :w].numpy()
        probs = region if output_prob else np.exp(region)
        np.testing.assert_allclose(probs.sum(0), 1, rtol=1e-5)
        # the CRF changed the softmax of the scores
        soft = torch.softmax(torch.from_numpy(scores[n, :, :h, :w]), 0).numpy()
        assert np.abs(probs - soft).max() > 0.05


def _crf_run(seed, dims, max_iter):
    """A two-item DenseCRF layer, its inputs and its top."""
    scores, image = _crf_inputs(np.random.default_rng(seed))
    data_dim = np.array(dims, F32).reshape(2, 1, 1, 2)
    layer = layer_from_text(_crf_text(max_iter=max_iter), [scores.shape, data_dim.shape, image.shape], 1)
    (top,) = layer(*(torch.from_numpy(x) for x in (scores, data_dim, image)))
    return layer, scores, data_dim, image, top


def test_every_item_takes_the_first_images_colours_as_the_fork():
    layer, scores, data_dim, image, top = _crf_run(4, [6, 7, 6, 7], max_iter=2)
    (own,) = layer(torch.from_numpy(scores[1:]).repeat(2, 1, 1, 1), torch.from_numpy(data_dim),
                   torch.from_numpy(image[1:]).repeat(2, 1, 1, 1))
    (first,) = layer(torch.from_numpy(scores[1:]).repeat(2, 1, 1, 1), torch.from_numpy(data_dim),
                     torch.from_numpy(image[:1]).repeat(2, 1, 1, 1))
    np.testing.assert_array_equal(top[1].numpy(), first[1].numpy())
    assert np.abs(top[1].numpy() - own[1].numpy()).max() > 1e-3


def test_gaussian_kernels_are_cached_for_the_last_region_size_only():
    """A test set's images each have their own data_dim: the cached lattices must not grow
    with them (before, every size seen stayed cached)."""
    layer, scores, _, image, first = _crf_run(7, [6, 7, 6, 7], max_iter=1)
    for h, w in [(5, 6), (4, 7), (6, 5), (3, 3)]:
        dims = np.array([h, w, h, w], F32).reshape(2, 1, 1, 2)
        layer(torch.from_numpy(scores), torch.from_numpy(dims), torch.from_numpy(image))
        assert len(layer._spatial) == len(layer.gaussian)
    whole = np.array([6, 7, 6, 7], F32).reshape(2, 1, 1, 2)
    (again,) = layer(*(torch.from_numpy(x) for x in (scores, whole, image)))
    np.testing.assert_array_equal(again.numpy(), first.numpy())


def test_max_iter_zero_is_the_softmax_and_empty_regions_stay_zero():
    _, scores, _, _, top = _crf_run(5, [6, 7, 0, 5], max_iter=0)
    np.testing.assert_allclose(top[0].numpy(), torch.softmax(torch.from_numpy(scores[0]), 0).numpy(),
                               rtol=3e-5, atol=1e-7)
    assert not top[1].any()


def test_no_gradient_as_the_forks_empty_backward():
    rng = np.random.default_rng(6)
    scores, image = _crf_inputs(rng, n=1)
    net = Net(parse_net_text(f'''name: "n" force_backward: true
layer {{ name: "in" type: "Input" top: "raw" top: "dim" top: "data"
  input_param {{ shape {{ dim: 1 dim: 3 dim: 6 dim: 7 }} shape {{ dim: 1 dim: 2 }} shape {{ dim: 1 dim: 3 dim: 6 dim: 7 }} }} }}
layer {{ name: "fc8" type: "Scale" bottom: "raw" top: "fc8" scale_param {{ filler {{ value: 2 }} }} }}
layer {{ {_crf_text()} }}'''))
    blobs = net({"raw": torch.from_numpy(scores), "dim": torch.tensor([[6.0, 7.0]]),
                 "data": torch.from_numpy(image)})
    assert blobs["crf"].shape == (1, 3, 6, 7) and not blobs["crf"].requires_grad


@pytest.mark.parametrize("param, shapes, match", [
    ("pos_w: 1 bi_w: 1 bi_xy_std: 1 bi_rgb_std: 1", None, "pos_w and pos_xy_std should have the same size"),
    ("bi_w: 1 bi_xy_std: 1", None, "bi_w, bi_xy_std and bi_rgb_std should have the same size"),
    ("pos_w: 1 pos_xy_std: 0 bi_w: 1 bi_xy_std: 1 bi_rgb_std: 1", None, "pos_xy_std must be nonzero"),
    ("pos_w: 1 pos_xy_std: 2", None, "no bilateral parameters"),
    ("bi_w: 1 bi_xy_std: 1 bi_rgb_std: 1", [(1, 3, 4, 4), (1, 2)], "third bottom, the image"),
    ("bi_w: 1 bi_xy_std: 1 bi_rgb_std: 1", [(1, 3, 4, 4), (1, 2), (1, 1, 4, 4)], "3 channels"),
    ("bi_w: 1 bi_xy_std: 1 bi_rgb_std: 1", [(1, 3, 4, 4), (1, 2), (1, 3, 4, 5)], "height and width"),
    ("bi_w: 1 bi_xy_std: 1 bi_rgb_std: 1", [(2, 3, 4, 4), (1, 2), (2, 3, 4, 4)], "same number of items"),
    ("bi_w: 1 bi_xy_std: 1 bi_rgb_std: 1", [(1, 3, 4, 4), (1, 1), (1, 3, 4, 4)], "height and width, got"),
])
def test_bad_parameters_and_bottoms_are_refused_naming_the_layer(param, shapes, match):
    shapes = shapes or [(1, 3, 4, 4), (1, 1, 1, 2), (1, 3, 4, 4)]
    bottoms = " ".join(f'bottom: "b{i}"' for i in range(len(shapes)))
    with pytest.raises(ShapeError, match=f"layer 'crf' \\(DenseCRF\\).*{match}"):
        layer_from_text(f'name: "crf" type: "DenseCRF" {bottoms} dense_crf_param {{ {param} }}', shapes)


@pytest.mark.parametrize("dims, match", [((3, 9), "does not fit"), ((-1, 2), "does not fit"),
                                         ((float("nan"), 2), "not finite")])
def test_data_dims_the_fork_would_read_outside_its_blobs_with_are_refused(dims, match):
    rng = np.random.default_rng(7)
    scores, image = _crf_inputs(rng, n=1)
    layer = layer_from_text(_crf_text(max_iter=1), [scores.shape, (1, 2), image.shape], 1)
    with pytest.raises(ValueError, match=f"layer 'crf': item 0: .*{match}"):
        layer(torch.from_numpy(scores), torch.tensor([dims], dtype=torch.float32), torch.from_numpy(image))


def test_features_beyond_the_lattices_keys_are_refused_naming_the_kernel():
    scores, image = _crf_inputs(np.random.default_rng(8), n=1)
    layer = layer_from_text(_crf_text(max_iter=1, bi=((1, 1.0, 1e-4),)), [scores.shape, (1, 2), image.shape], 1)
    with pytest.raises(ValueError, match="layer 'crf': bilateral kernel 0: .*16-bit"):
        layer(torch.from_numpy(scores), torch.tensor([[6.0, 7.0]]), torch.from_numpy(image))


# ---- MatWrite and MatRead ------------------------------------------------------------------------

def _write_layer(tmp_path, bottoms, extra, name="mat"):
    text = f'name: "{name}" type: "MatWrite" ' + " ".join(f'bottom: "b{i}"' for i in range(len(bottoms)))
    lp = text_format.Parse(text + f" mat_write_param {{ {extra} }}", caffe_pb2.LayerParameter())
    return MatWrite(lp, [b.shape for b in bottoms], 1)


def test_matwrite_names_layout_period_and_list_end(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "ids.txt").write_text("2007_000033.jpg x\n  2007_000042.jpg\n2008_000001.jpg\n")
    rng = np.random.default_rng(9)
    a = rng.normal(size=(2, 3, 4, 5)).astype(F32)
    b = rng.normal(size=(2, 6)).astype(F32)
    layer = _write_layer(tmp_path, [a, b], f'prefix: "{tmp_path}/out/" source: "{tmp_path}/ids.txt" '
                                           f'strip: 4 period: 2')
    for _ in range(3):
        assert layer(torch.from_numpy(a), torch.from_numpy(b)) == ()
    assert sorted(os.listdir(tmp_path / "out")) == [   # forwards 0 and 2, every bottom
        "2007_000033_blob_0.mat", "2007_000033_blob_1.mat", "2008_000001_blob_0.mat",
        "2008_000001_blob_1.mat"]
    info = sio.whosmat(tmp_path / "out" / "2007_000033_blob_0.mat")
    assert info == [("data", (5, 4, 3, 2), "single")]
    data = sio.loadmat(tmp_path / "out" / "2007_000033_blob_0.mat")["data"]
    # MATLAB's data(w, h, c, n), 1-based, is blob[n, c, h, w]
    for n, c, h, w in [(0, 0, 0, 0), (1, 2, 3, 4), (0, 1, 2, 3), (1, 0, 3, 1)]:
        assert data[w, h, c, n] == a[n, c, h, w]
    assert sio.whosmat(tmp_path / "out" / "2007_000033_blob_1.mat") == [("data", (1, 1, 6, 2), "single")]
    np.testing.assert_array_equal(sio.loadmat(tmp_path / "out" / "2007_000033_blob_1.mat")["data"][0, 0],
                                  b.T)
    layer(torch.from_numpy(a), torch.from_numpy(b))    # forward 3: skipped by the period
    with pytest.raises(MatFileError, match="layer 'mat' \\(MatWrite\\): forward 4 has no name .*3 lines"):
        layer(torch.from_numpy(a), torch.from_numpy(b))
    assert not [f for f in os.listdir(tmp_path / "out") if f.startswith(".")]   # no temporaries


def test_matwrite_without_source_numbers_forwards(tmp_path):
    a = np.ones((1, 2, 1, 1), F32)
    layer = _write_layer(tmp_path, [a], f'prefix: "{tmp_path}/f_"')
    layer(torch.from_numpy(a))
    layer(torch.from_numpy(a * 2))
    assert sorted(os.listdir(tmp_path)) == ["f_iter_0_blob_0.mat", "f_iter_1_blob_0.mat"]
    assert sio.loadmat(tmp_path / "f_iter_1_blob_0.mat")["data"].sum() == 4


@pytest.mark.parametrize("extra, match", [
    ('source: "ids.txt"', "prefix is required"),
    ('prefix: "x" period: 0', "period must be positive"),
])
def test_matwrite_bad_parameters(tmp_path, extra, match):
    with pytest.raises(ShapeError, match=f"layer 'mat' \\(MatWrite\\): .*{match}"):
        _write_layer(tmp_path, [np.zeros((1, 1), F32)], extra)


def test_matwrite_list_and_folder_errors_name_the_layer_and_path(tmp_path):
    a = np.zeros((1, 1, 1, 1), F32)
    with pytest.raises(MatFileError, match="layer 'mat' \\(MatWrite\\): failed to open source file '.*nolist.txt'"):
        _write_layer(tmp_path, [a], f'prefix: "p" source: "{tmp_path}/nolist.txt"')
    (tmp_path / "ids.txt").write_text("abc\nde\n")
    with pytest.raises(MatFileError, match="ids.txt:2: too much stripping"):
        _write_layer(tmp_path, [a], f'prefix: "p" source: "{tmp_path}/ids.txt" strip: 2')
    with pytest.raises(MatFileError, match="strip -1 cannot be negative"):
        _write_layer(tmp_path, [a], f'prefix: "p" source: "{tmp_path}/ids.txt" strip: -1')
    layer = _write_layer(tmp_path, [a], f'prefix: "{tmp_path}/missing/"')
    with pytest.raises(MatFileError, match=f"layer 'mat' \\(MatWrite\\): cannot create MAT file "
                                           f"'{tmp_path}/missing/iter_0_blob_0.mat': folder .* does not exist"):
        layer(torch.from_numpy(a))


def _read_layer(extra, name="rd"):
    lp = text_format.Parse(f'name: "{name}" type: "MatRead" top: "x" mat_read_param {{ {extra} }}',
                           caffe_pb2.LayerParameter())
    return MatRead(lp, [], 1)


def test_matread_reads_what_matwrite_wrote_cycling_through_the_list(tmp_path):
    (tmp_path / "ids.txt").write_text("a\nb\nc\n")
    rng = np.random.default_rng(10)
    items = rng.normal(size=(3, 1, 2, 3, 4)).astype(F32)
    writer = _write_layer(tmp_path, [items[0]], f'prefix: "{tmp_path}/" source: "{tmp_path}/ids.txt"')
    for item in items:
        writer(torch.from_numpy(item))
    reader = _read_layer(f'prefix: "{tmp_path}/" source: "{tmp_path}/ids.txt" batch_size: 2')
    assert reader.top_shapes == [(2, 2, 3, 4)]
    (first,) = reader()
    (second,) = reader()
    np.testing.assert_array_equal(first.numpy(), items[[0, 1], 0])
    np.testing.assert_array_equal(second.numpy(), items[[2, 0], 0])   # wraps to the first name


def test_matread_reads_files_as_matlab_writes_them(tmp_path):
    """MATLAB drops trailing singleton dimensions: a W x H x C single is a (1, C, H, W) blob."""
    rng = np.random.default_rng(11)
    blob = rng.normal(size=(3, 4, 5)).astype(F32)             # C, H, W
    (tmp_path / "ids.txt").write_text("img1\nimg2\n")
    sio.savemat(tmp_path / "img1_blob_0.mat", {"data": blob.transpose(2, 1, 0)})
    plane = rng.normal(size=(5, 4)).astype(F32)               # W x H, one channel
    sio.savemat(tmp_path / "plane_blob_0.mat", {"data": np.asfortranarray(plane)})
    reader = _read_layer(f'prefix: "{tmp_path}/" source: "{tmp_path}/ids.txt"')
    assert reader.top_shapes == [(1, 3, 4, 5)]
    np.testing.assert_array_equal(reader()[0].numpy(), blob[None])
    (tmp_path / "plane.txt").write_text("plane\n")
    reader = _read_layer(f'prefix: "{tmp_path}/" source: "{tmp_path}/plane.txt"')
    np.testing.assert_array_equal(reader()[0].numpy(), plane.T[None, None])
    # a later file of another shape is the fork's CHECK
    reader = _read_layer(f'prefix: "{tmp_path}/" source: "{tmp_path}/ids.txt"')
    reader()
    sio.savemat(tmp_path / "img2_blob_0.mat", {"data": blob[:2].transpose(2, 1, 0)})
    with pytest.raises(MatFileError, match="layer 'rd' \\(MatRead\\): .*img2_blob_0.mat holds a \\[1, 2, 4, 5\\]"):
        reader()


@pytest.mark.parametrize("contents, match", [
    ({"data": np.zeros((2, 2))}, "must be of class single .* it is double"),
    ({"other": np.zeros((2, 2), F32)}, "field 'data' not present"),
    ({"data": np.zeros((2, 2, 1, 1, 2), F32)}, "cannot have more than 4 dimensions"),
    ({"data": np.zeros((2, 2, 1, 2), F32)}, "must have num 1"),
    ({"data": np.zeros((2, 2), F32), "diff": np.ones((2, 2))}, "field 'diff' must be of class single"),
    (None, "error opening MAT file .*no such file"),
])
def test_matread_refuses_what_the_fork_checks(tmp_path, contents, match):
    (tmp_path / "ids.txt").write_text("x\n")
    if contents is not None:
        sio.savemat(tmp_path / "x_blob_0.mat", contents)
    with pytest.raises(ShapeError, match=f"layer 'rd' \\(MatRead\\): .*{match}"):
        _read_layer(f'prefix: "{tmp_path}/" source: "{tmp_path}/ids.txt"')


@pytest.mark.parametrize("extra, match", [
    ('prefix: "p"', "source must name at least one file"),
    ('source: "x"', "prefix is required"),
    ('prefix: "p" source: "x" batch_size: 0', "batch_size must be positive"),
])
def test_matread_bad_parameters(extra, match):
    with pytest.raises(ShapeError, match=f"layer 'rd' \\(MatRead\\): .*{match}"):
        _read_layer(extra)


# ---- a DeepLab v2 TEST net -----------------------------------------------------------------------

def test_deeplab_test_net_interp_densecrf_matwrite(tmp_path):
    """As DeepLab v2's test prototxts: ImageSegData with data_dim, fc8, Interp zoom back to
    the crop, MatWrite of the fc8 scores and of DenseCRF's marginals, one file per list id."""
    rng = np.random.default_rng(12)
    for name, size in (("a", (7, 8)), ("b", (9, 5))):
        cv2.imwrite(str(tmp_path / f"{name}.png"), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    (tmp_path / "test.txt").write_text("a.png\nb.png\n")
    (tmp_path / "test_id.txt").write_text("a\nb\n")
    for folder in ("fc8", "crf"):
        (tmp_path / folder).mkdir()
    net = Net(parse_net_text(f'''name: "deeplab-test"
layer {{ name: "data" type: "ImageSegData" top: "data" top: "label" top: "data_dim"
  include {{ phase: TEST }}
  transform_param {{ crop_size: 9 mean_value: 104.008 mean_value: 116.669 mean_value: 122.675 }}
  image_data_param {{ source: "{tmp_path}/test.txt" root_folder: "{tmp_path}/" batch_size: 1 label_type: NONE }} }}
layer {{ name: "fc8" type: "Convolution" bottom: "data" top: "fc8"
  convolution_param {{ num_output: 4 kernel_size: 3 stride: 2 pad: 1 weight_filler {{ type: "gaussian" std: 0.02 }} }} }}
layer {{ name: "fc8_interp" type: "Interp" bottom: "fc8" top: "fc8_interp" interp_param {{ zoom_factor: 2 }} }}
layer {{ name: "fc8_mat" type: "MatWrite" bottom: "fc8_interp"
  mat_write_param {{ prefix: "{tmp_path}/fc8/" source: "{tmp_path}/test_id.txt" strip: 0 period: 1 }}
  include {{ phase: TEST }} }}
layer {{ name: "crf" type: "DenseCRF" bottom: "fc8_interp" bottom: "data_dim" bottom: "data" top: "crf_inf"
  dense_crf_param {{ max_iter: 3 pos_w: 3 pos_xy_std: 3 bi_w: 5 bi_xy_std: 4 bi_rgb_std: 10 }} }}
layer {{ name: "crf_mat" type: "MatWrite" bottom: "crf_inf"
  mat_write_param {{ prefix: "{tmp_path}/crf/" source: "{tmp_path}/test_id.txt" }} include {{ phase: TEST }} }}
layer {{ name: "silence" type: "Silence" bottom: "label" }}
''', "deeplab-test"), phase="TEST", source_kwargs={"workers": 0, "seed": 0})
    source = net.sources[0]
    try:
        for name in ("a", "b"):
            blobs = net(next(source))
            scores, dims, image = (blobs[k].detach().numpy() for k in ("fc8_interp", "data_dim", "data"))
            assert scores.shape == (1, 4, 9, 9)
            expected = fork_dense_crf(scores, dims, image, 3, [(3, 3.0)], [(5, 4.0, 10.0)])
            np.testing.assert_allclose(blobs["crf_inf"].numpy(), expected, rtol=2e-5, atol=2e-6)
            h, w = (int(v) for v in dims.reshape(-1))
            assert (h, w) == {"a": (7, 8), "b": (9, 5)}[name]
            assert not blobs["crf_inf"][0, :, h:].any() and not blobs["crf_inf"][0, :, :, w:].any()
            written = sio.loadmat(tmp_path / "crf" / f"{name}_blob_0.mat")["data"]
            np.testing.assert_array_equal(written, blobs["crf_inf"].numpy().transpose(3, 2, 1, 0))
            fc8 = sio.loadmat(tmp_path / "fc8" / f"{name}_blob_0.mat")["data"]
            np.testing.assert_array_equal(fc8, scores.transpose(3, 2, 1, 0))
        with pytest.raises(MatFileError, match="layer 'fc8_mat' \\(MatWrite\\): forward 2 has no name"):
            net(next(source))
    finally:
        source.close()


def test_malformed_mat_files_are_errors_naming_the_file_not_crashes(tmp_path):
    """scipy's compiled reader crashes the process on a variable holding an element of an
    unknown data type; the elements are checked first. Garbage, a truncated file and a
    MATLAB v7.3 (HDF5) file are errors too."""
    import io
    import struct

    from runner.matfile import read_blob

    buffer = io.BytesIO()
    sio.savemat(buffer, {"data": np.ones((3, 4, 2, 1), np.float32)}, format="5", do_compression=False)
    good = buffer.getvalue()
    real_part = good.index(struct.pack("<II", 7, 96))   # miSINGLE, 24 floats
    cases = {
        "unknown type": good[:real_part] + struct.pack("<I", 20) + good[real_part + 4:],
        "oversized": good[:real_part] + struct.pack("<II", 7, 10 ** 6) + good[real_part + 8:],
        "truncated": good[:-50],
        "garbage": b"garbage" * 10,
        "v7.3": b"MATLAB 7.3 MAT-file".ljust(116) + bytes(8) + b"\x00\x02IM" + bytes(400),
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.mat"
        path.write_bytes(data)
        with pytest.raises(MatFileError, match=f"layer 'rd'.*{name}.mat"):
            read_blob(str(path), "layer 'rd'")
    (tmp_path / "good.mat").write_bytes(good)
    assert read_blob(str(tmp_path / "good.mat"), "layer 'rd'").shape == (1, 2, 4, 3)
