"""CRF-RNN's MultiStageMeanfield (torrvision/crfasrnn) and its permutohedral lattice.

The lattice is checked against a loop-by-loop numpy transcription of torrvision/caffe's
ModifiedPermutohedral (init_cpu's SSE build, HashTableCopy, seqCompute), written here from the
C++, and, loosely, against the exact Gaussian filter it approximates. The layer's forward is
checked against a transcription of MultiStageMeanfieldLayer::Forward_cpu and
MeanfieldIteration::Forward_cpu on that lattice, its backward against MeanfieldIteration::
Backward_cpu's steps and against finite differences (the fork's reverse filter is the exact
transpose), and a small FCN-like net with the published net's CRF layer runs forward and
backward, trains, and round-trips its weights through a .caffemodel (ours and one written
with the earlier fork's field 146)."""
import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from runner import Net
from runner.layers.crfrnn import MultiStageMeanfield
from runner.layers.permutohedral import Lattice, LatticeError, _scale_factors, filter_values
from runner.proto import caffe_pb2, parse_net_text
from runner.proto.blobs import _varint
from runner.shapes import ShapeError

F32 = np.float32


# ---- the fork's lattice, transcribed -------------------------------------------------------------

class ForkLattice:
    """ModifiedPermutohedral::init_cpu (the SSE build: blocks of four points, the last padded
    with zero features) with HashTableCopy's first-insertion numbering, and seqCompute."""

    def __init__(self, features, sse_padding=True):
        features = np.asarray(features, F32)
        N, d = features.shape
        self.N, self.d = N, d
        canonical = [[i if j <= d - i else i - (d + 1) for j in range(d + 1)] for i in range(d + 1)]
        inv_std_dev = F32(math.sqrt(2.0 / 3.0) * (d + 1))
        scale = [F32(1.0 / math.sqrt((i + 2) * (i + 1)) * float(inv_std_dev)) for i in range(d)]
        invdplus1, dplus1 = F32(1.0) / F32(d + 1), F32(d + 1)
        table = {}
        padded = -(-N // 4) * 4 if sse_padding else N
        self.offset = np.zeros((padded, d + 1), np.int64)
        self.barycentric = np.zeros((padded, d + 1), F32)
        for k in range(padded):
            f = features[k] if k < N else np.zeros(d, F32)
            elevated = [F32(0)] * (d + 1)
            sm = F32(0)
            for j in range(d, 0, -1):
                cf = F32(f[j - 1] * scale[j - 1])
                elevated[j] = F32(sm - F32(j) * cf)
                sm = F32(sm + cf)
            elevated[0] = sm
            rem0, total = [F32(0)] * (d + 1), F32(0)
            for i in range(d + 1):
                v = np.rint(F32(invdplus1 * elevated[i]))      # _mm_round_ps: nearest, ties even
                rem0[i] = F32(v * dplus1)
                total = F32(total + v)
            rank = [F32(0)] * (d + 1)
            for i in range(d):
                di = F32(elevated[i] - rem0[i])
                for j in range(i + 1, d + 1):
                    if di < F32(elevated[j] - rem0[j]):
                        rank[i] += 1
                    else:
                        rank[j] += 1
            for i in range(d + 1):
                rank[i] = F32(rank[i] + total)
                add = dplus1 if rank[i] < 0 else F32(0)
                sub = dplus1 if rank[i] >= dplus1 else F32(0)
                rank[i] = F32(rank[i] + (add - sub))
                rem0[i] = F32(rem0[i] + (add - sub))
            bary = [F32(0)] * (d + 2)
            for i in range(d + 1):
                v = F32(F32(elevated[i] - rem0[i]) * invdplus1)
                p = d - int(rank[i])
                bary[p] = F32(bary[p] + v)
                bary[p + 1] = F32(bary[p + 1] - v)
            bary[0] = F32(bary[0] + F32(1 + bary[d + 1]))
            for remainder in range(d + 1):
                key = tuple(int(rem0[i] + canonical[remainder][int(rank[i])]) for i in range(d))
                self.offset[k, remainder] = table.setdefault(key, len(table))
                self.barycentric[k, remainder] = bary[remainder]
        self.M = len(table)
        self.keys = list(table)
        self.blur = np.zeros((d + 1, self.M, 2), np.int64)
        for j in range(d + 1):
            for i, key in enumerate(self.keys):
                n1 = [key[k] - 1 for k in range(d)]
                n2 = [key[k] + 1 for k in range(d)]
                if j < d:
                    n1[j], n2[j] = key[j] + d, key[j] - d
                self.blur[j, i] = table.get(tuple(n1), -1), table.get(tuple(n2), -1)

    def compute(self, values, reverse=False):
        """seqCompute(out, in, value_size, reverse): in and out are value_size x N."""
        values_in = np.asarray(values, F32)
        vs, d = values_in.shape[0], self.d
        vals = np.zeros((self.M + 2, vs), F32)
        new_vals = np.zeros((self.M + 2, vs), F32)
        for i in range(self.N):
            for j in range(d + 1):
                o = self.offset[i, j] + 1
                vals[o] += self.barycentric[i, j] * values_in[:, i]
        for j in (range(d, -1, -1) if reverse else range(d + 1)):
            for i in range(self.M):
                n1, n2 = self.blur[j, i] + 1
                new_vals[i + 1] = vals[i + 1] + F32(0.5) * (vals[n1] + vals[n2])
            vals, new_vals = new_vals, vals
        alpha = F32(1.0) / (F32(1) + F32(2.0 ** -d))
        out = np.zeros((vs, self.N), F32)
        for i in range(self.N):
            for j in range(d + 1):
                out[:, i] += self.barycentric[i, j] * vals[self.offset[i, j] + 1] * alpha
        return out


def _features(rng, n, d, spread=3.0):
    return (rng.random((n, d)) * spread - spread / 3).astype(F32)


@pytest.mark.parametrize("d, n", [(2, 30), (2, 32), (5, 23), (5, 40)])
def test_lattice_equals_the_forks_loops(d, n):
    rng = np.random.default_rng(d * 100 + n)
    features = _features(rng, n, d)
    fork, ours = ForkLattice(features), Lattice(features)
    assert ours.m == fork.M                                   # the padding's vertices too
    # the same weights per point, bit for bit, on the same vertices (numbered differently)
    np.testing.assert_array_equal(ours.weights, fork.barycentric[:n])
    relabel = {}
    for a, b in zip(ours.offsets.ravel(), fork.offset[:n].ravel()):
        assert relabel.setdefault(a, b) == b
    values = rng.normal(size=(3, n)).astype(F32)
    for reverse in (False, True):
        got = ours.compute(torch.from_numpy(values), reverse=reverse).numpy()
        np.testing.assert_allclose(got, fork.compute(values, reverse), rtol=1e-5, atol=1e-5)
    ones = ours.compute(torch.ones(1, n)).numpy()
    np.testing.assert_allclose(ones, fork.compute(np.ones((1, n), F32)), rtol=1e-5)


def test_the_sse_padding_vertices_change_results_and_are_matched():
    """With N not a multiple of four the fork's SSE init adds the zero feature's vertices;
    blurring through them changes the result of points near the origin."""
    rng = np.random.default_rng(3)
    features = (rng.random((21, 5)) * 1.5 + 0.4).astype(F32)
    padded, plain = ForkLattice(features), ForkLattice(features, sse_padding=False)
    assert padded.M > plain.M
    values = rng.normal(size=(2, 21)).astype(F32)
    assert np.abs(padded.compute(values) - plain.compute(values)).max() > 1e-3
    got = Lattice(features).compute(torch.from_numpy(values)).numpy()
    np.testing.assert_allclose(got, padded.compute(values), rtol=1e-5, atol=1e-6)


def test_reverse_filter_is_the_transpose_and_the_autograd_backward():
    rng = np.random.default_rng(5)
    lattice = Lattice(_features(rng, 50, 5))
    x = torch.from_numpy(rng.normal(size=(2, 50)))
    y = torch.from_numpy(rng.normal(size=(2, 50)))
    forward = float((lattice.compute(x) * y).sum())
    assert forward == pytest.approx(float((x * lattice.compute(y, reverse=True)).sum()), rel=1e-12)
    # the blur order matters: the forward filter is not symmetric by itself
    assert not torch.allclose(lattice.compute(y), lattice.compute(y, reverse=True), atol=1e-6)
    torch.autograd.gradcheck(lambda v: filter_values(lattice, v), (x.clone().requires_grad_(),))


def test_normalised_lattice_filter_approximates_a_unit_gaussian():
    """Features are scaled so the kernel is exp(-|f_i - f_j|^2 / 2): the normalised filter
    of a smooth signal is close to the exact one at sigma 1, and further from it at other
    sigmas."""
    rng = np.random.default_rng(7)
    for d, n, bound in ((2, 400, 0.05), (3, 400, 0.08)):
        f = (rng.random((n, d)) * 6).astype(F32)
        signal = np.sin(f @ rng.normal(size=d) * 0.8)
        lattice = Lattice(f)
        approx = (lattice.compute(torch.from_numpy(signal[None]))[0] /
                  lattice.compute(torch.ones(1, n, dtype=torch.float64))[0]).numpy()
        sq = ((f[:, None] - f[None]) ** 2).sum(-1).astype(np.float64)
        errors = {}
        for sigma in (0.5, 1.0, 2.0):
            k = np.exp(-sq / (2 * sigma ** 2))
            errors[sigma] = np.abs(approx - k @ signal / k.sum(1)).mean()
        assert errors[1.0] < bound and errors[1.0] < errors[0.5] / 3 and errors[1.0] < errors[2.0] / 3, errors


def test_lattice_refuses_what_the_fork_cannot_hold():
    with pytest.raises(LatticeError, match="NaN or inf"):
        Lattice(np.array([[0.0, np.nan]], F32))
    with pytest.raises(LatticeError, match="16-bit"):
        Lattice(np.array([[0.0, 1e5]], F32))
    # so large that float32 loses the remainders the rank sort needs (it indexed past its row),
    # or overflows to inf while elevating
    for big in (4e9, 3e38):
        with pytest.raises(LatticeError, match="16-bit"):
            Lattice(np.array([[0.0, 1.0, 2.0], [big, 3.0, big]], F32))
    # keys come from the first d elevated coordinates: a last one past the limit is held
    features = np.zeros((4, 5), F32)
    features[:, 4] = [0, 7000 / _scale_factors(5)[4], 2, 3]
    assert Lattice(features).m > 4


# ---- MultiStageMeanfield against the fork's loops ------------------------------------------------

def caffe_softmax(x):
    e = np.exp(x - x.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True)


def fork_meanfield(unary, q0, image, weights, iterations, theta_alpha, theta_beta, theta_gamma,
                   top_diff=None):
    """MultiStageMeanfieldLayer::Forward_cpu / MeanfieldIteration::Forward_cpu per sample (the
    earlier fork's loops over n), and with top_diff Backward_cpu: (top, diffs of unary,
    Q initialisation and the three blobs)."""
    n_, c, h, w = unary.shape
    P = h * w
    ws, wb, wc = (np.asarray(x, F32).reshape(c, c) for x in weights)
    px = np.array([F32(p % w) / F32(theta_gamma) for p in range(P)], F32)
    py = np.array([F32(p // w) / F32(theta_gamma) for p in range(P)], F32)
    spatial = ForkLattice(np.stack([px, py], 1))
    spatial_norm = F32(1) / (spatial.compute(np.ones((1, P), F32))[0] + F32(1e-20))
    tops, diffs = [], [np.zeros_like(unary), np.zeros_like(q0)] + [np.zeros((c, c), F32)] * 3
    diffs[2:] = [np.zeros((c, c), F32) for _ in range(3)]
    for n in range(n_):
        rgb = image[n].reshape(-1)
        kernel = np.stack([np.array([F32(p % w) / F32(theta_alpha) for p in range(P)], F32),
                           np.array([F32(p // w) / F32(theta_alpha) for p in range(P)], F32),
                           rgb[:P] / F32(theta_beta), rgb[P:2 * P] / F32(theta_beta),
                           rgb[2 * P:3 * P] / F32(theta_beta)], 1)
        bilateral = ForkLattice(kernel)
        bilateral_norm = F32(1) / (bilateral.compute(np.ones((1, P), F32))[0] + F32(1e-20))
        u = unary[n].reshape(c, P)
        prev, saved = q0[n].reshape(c, P), []
        for _ in range(iterations):
            prob = caffe_softmax(prev)
            s_out = spatial.compute(prob) * spatial_norm
            b_out = bilateral.compute(prob) * bilateral_norm
            message = ws @ s_out + wb @ b_out
            pairwise = wc @ message
            prev = u - pairwise
            saved.append((prob, s_out, b_out, message))
        tops.append(prev.reshape(c, h, w))
        if top_diff is None:
            continue
        out_diff = top_diff[n].reshape(c, P)
        for prob, s_out, b_out, message in reversed(saved):
            diffs[0][n] += out_diff.reshape(c, h, w)          # Eltwise coeff 1, then the split
            pairwise_diff = -out_diff                          # Eltwise coeff -1
            diffs[4] += pairwise_diff @ message.T
            mp_diff = wc.T @ pairwise_diff
            diffs[2] += mp_diff @ s_out.T
            diffs[3] += mp_diff @ b_out.T
            s_diff = (ws.T @ mp_diff) * spatial_norm
            b_diff = (wb.T @ mp_diff) * bilateral_norm
            prob_diff = spatial.compute(s_diff, reverse=True) + bilateral.compute(b_diff, reverse=True)
            out_diff = prob * (prob_diff - (prob_diff * prob).sum(0, keepdims=True))   # Softmax
        diffs[1][n] = out_diff.reshape(c, h, w)
    return np.stack(tops), diffs


def _layer_text(iterations, extra=""):
    return f'''name: "crf" type: "MultiStageMeanfield" bottom: "u" bottom: "q" bottom: "img" top: "out"
      multi_stage_meanfield_param {{ num_iterations: {iterations} theta_alpha: 5 theta_beta: 2
        theta_gamma: 3 spatial_filter_weights_str: "2 2.5 3" bilateral_filter_weights_str: "1 1.5 2"
        {extra} }}'''


def _layer(iterations, shapes, extra=""):
    lp = text_format.Parse(_layer_text(iterations, extra), caffe_pb2.LayerParameter())
    return MultiStageMeanfield(lp, shapes, 1)


def _inputs(rng, n=2, c=3, h=5, w=7):
    unary = rng.normal(size=(n, c, h, w)).astype(F32)
    q0 = (unary + rng.normal(size=unary.shape) * 0.5).astype(F32)
    image = (rng.random((n, 3, h, w)) * 8).astype(F32)
    return unary, q0, image


@pytest.mark.parametrize("iterations", [2, 3])
def test_forward_and_backward_equal_the_forks_loops(iterations):
    rng = np.random.default_rng(iterations)
    unary, q0, image = _inputs(rng)
    layer = _layer(iterations, [unary.shape, q0.shape, image.shape])
    with torch.no_grad():   # a learned compatibility and kernel weights, not just the init
        layer.blobs[2].add_(torch.from_numpy(rng.normal(size=(1, 1, 3, 3)).astype(F32)) * 0.3)
        layer.blobs[0].add_(torch.from_numpy(rng.normal(size=(1, 1, 3, 3)).astype(F32)) * 0.3)
    weights = [b.detach().numpy().copy() for b in layer.blobs]
    u, q, img = (torch.from_numpy(x).requires_grad_() for x in (unary, q0, image))
    (top,) = layer(u, q, img)
    top_diff = rng.normal(size=top.shape).astype(F32)
    (top * torch.from_numpy(top_diff)).sum().backward()
    expected, diffs = fork_meanfield(unary, q0, image, weights, iterations, 5, 2, 3, top_diff)
    assert top.shape == (2, 3, 5, 7)
    np.testing.assert_allclose(top.detach().numpy(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(u.grad.numpy(), diffs[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(q.grad.numpy(), diffs[1], rtol=1e-4, atol=1e-5)
    for blob, diff in zip(layer.blobs, diffs[2:]):
        np.testing.assert_allclose(blob.grad.numpy().reshape(3, 3), diff, rtol=1e-4, atol=1e-4)
    assert img.grad is None          # the fork sends the image nothing
    # the message passing matters: not just the unaries back
    assert np.abs(expected - unary).max() > 0.1


def test_initial_blobs_as_the_fork_sets_them():
    layer = _layer(2, [(1, 3, 4, 4), (1, 3, 4, 4), (1, 3, 4, 4)])
    np.testing.assert_array_equal(layer.blobs[0].detach().numpy().reshape(3, 3), np.diag([2, 2.5, 3]))
    np.testing.assert_array_equal(layer.blobs[1].detach().numpy().reshape(3, 3), np.diag([1, 1.5, 2]))
    compatibility = layer.blobs[2].detach().numpy().reshape(3, 3)
    np.testing.assert_array_equal(compatibility, -np.eye(3))
    assert not np.signbit(compatibility[0, 1])          # caffe_set(0) then -1 on the diagonal


def test_gradients_equal_finite_differences():
    """The fork's backward is the exact gradient of its forward (the reverse filter is the
    transpose), so float64 finite differences agree with it, blobs included."""
    rng = np.random.default_rng(11)
    unary, q0, image = _inputs(rng, n=1, c=2, h=3, w=4)
    text = _layer_text(2).replace('"2 2.5 3"', '"2 2.5"').replace('"1 1.5 2"', '"1 1.5"')
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    layer = MultiStageMeanfield(lp, [unary.shape, q0.shape, image.shape], 1).double()
    img = torch.from_numpy(image.astype(np.float64))
    blobs = [b.detach().clone() + 0.2 * torch.from_numpy(rng.normal(size=b.shape)) for b in layer.blobs]

    def run(u, q, ws, wb, wc):
        named = {"blobs.0": ws, "blobs.1": wb, "blobs.2": wc}
        return torch.func.functional_call(layer, named, (u, q, img))[0]

    args = [torch.from_numpy(x.astype(np.float64)).requires_grad_() for x in (unary, q0)]
    args += [b.requires_grad_() for b in blobs]
    assert torch.autograd.gradcheck(run, tuple(args), eps=1e-6, atol=1e-6)


# ---- a net: FCN-like convolutions -> MultiStageMeanfield -------------------------------------

# The published deploy net's CRF layer (TVG_CRFRNN_new_deploy.prototxt), as written there.
PUBLISHED_CRF = '''layer {
  name: "inference1"#if you set name "inference1", code will load parameters from caffemodel.
  type: "MultiStageMeanfield"
  bottom: "unary"
  bottom: "Q0"
  bottom: "data"
  top: "pred"
  param {
    lr_mult: 10000#learning rate for W_G
  }
  param {
  lr_mult: 10000#learning rate for W_B
  }
  param {
  lr_mult: 1000 #learning rate for compatiblity transform matrix
  }
  multi_stage_meanfield_param {
   num_iterations: ITERATIONS
   compatibility_mode: POTTS#Initialize the compatilibity transform matrix with a matrix whose diagonal is -1.
   threshold: 2
   theta_alpha: 160
   theta_beta: 3
   theta_gamma: 3
   spatial_filter_weight: 3
   bilateral_filter_weight: 5
  }
}
'''

FCN = '''name: "crf-fcn"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 3 dim: 12 dim: 14 } shape { dim: 2 dim: 1 dim: 12 dim: 14 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "score" type: "Convolution" bottom: "conv1" top: "coarse"
  convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { type: 'Split' name: 'splitting' bottom: 'coarse' top: 'unary' top: 'Q0' }
CRF
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "pred" bottom: "label" top: "loss" }
'''


def _fcn(iterations=3):
    return FCN.replace("CRF", PUBLISHED_CRF.replace("ITERATIONS", str(iterations)))


def _scene(rng):
    """Two images of three flat-coloured regions, their labels, plus noise."""
    label = np.zeros((2, 1, 12, 14), F32)
    label[:, 0, :, 5:] = 1
    label[:, 0, 7:, 9:] = 2
    palette = np.array([[20, 40, 60], [200, 30, 90], [60, 180, 220]], F32)
    data = palette[label[:, 0].astype(int)].transpose(0, 3, 1, 2) + rng.normal(0, 6, (2, 3, 12, 14))
    return {"data": torch.from_numpy(data.astype(F32)), "label": torch.from_numpy(label)}


def test_published_crf_layer_in_an_fcn_net_runs_trains_and_round_trips(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)     # no spatial.par / bilateral.par here
    net = Net(parse_net_text(_fcn()), phase="TRAIN")
    crf = net.layers["inference1"]
    np.testing.assert_array_equal(crf.blobs[0].detach().numpy().reshape(3, 3), 3 * np.eye(3))
    np.testing.assert_array_equal(crf.blobs[1].detach().numpy().reshape(3, 3), 5 * np.eye(3))
    inputs = _scene(np.random.default_rng(0))
    out = net(inputs)
    assert out["pred"].shape == (2, 3, 12, 14)
    out["loss"].backward()
    grads = [net.layers["score"].blobs[0].grad] + [b.grad for b in crf.blobs]
    assert all(g is not None and float(g.abs().sum()) > 0 for g in grads)
    # a few plain SGD steps lower the loss (the CRF blobs learn with the convolutions)
    params = [p for p in net.parameters() if p.requires_grad]
    first = float(out["loss"].detach())
    for _ in range(15):
        for p in params:
            p.grad = None
        loss = net(inputs)["loss"]
        loss.backward()
        with torch.no_grad():
            for p in params:
                p -= 0.05 * p.grad
    assert float(net(inputs)["loss"].detach()) < 0.8 * first
    assert not torch.equal(crf.blobs[2].detach().reshape(3, 3), -torch.eye(3))
    net.save_caffemodel(tmp_path / "crf.caffemodel")
    fresh = Net(parse_net_text(_fcn()), phase="TEST", weights=str(tmp_path / "crf.caffemodel"))
    for ours, theirs in zip(crf.blobs, fresh.layers["inference1"].blobs):
        assert torch.equal(ours.detach(), theirs.detach())
    with torch.no_grad():
        np.testing.assert_array_equal(fresh(inputs)["pred"].numpy(), net(inputs)["pred"].numpy())


def test_a_caffemodel_with_the_earlier_forks_field_146_loads(tmp_path):
    """The published model's layer parameters sit in field 146 (BVLC's recurrent_param here);
    its blobs still load by layer name."""
    net = Net(parse_net_text(_fcn(2)))
    with torch.no_grad():
        for i, blob in enumerate(net.layers["inference1"].blobs):
            blob.copy_(torch.arange(9.0).reshape(blob.shape) + i)
    net.save_caffemodel(tmp_path / "ours.caffemodel")
    param = caffe_pb2.NetParameter.FromString((tmp_path / "ours.caffemodel").read_bytes())
    crf = next(lp for lp in param.layer if lp.type == "MultiStageMeanfield")
    old = crf.multi_stage_meanfield_param.SerializeToString()
    crf.ClearField("multi_stage_meanfield_param")
    rest = [lp for lp in param.layer if lp is not crf]
    head = caffe_pb2.NetParameter(name=param.name, layer=rest).SerializeToString()
    layer_bytes = crf.SerializeToString() + bytes([0x92, 0x09]) + _varint(len(old)) + old  # (146 << 3) | 2
    (tmp_path / "old.caffemodel").write_bytes(head + b"\xa2\x06" + _varint(len(layer_bytes)) + layer_bytes)
    fresh = Net(parse_net_text(_fcn(2)), weights=str(tmp_path / "old.caffemodel"))
    for i, blob in enumerate(fresh.layers["inference1"].blobs):
        np.testing.assert_array_equal(blob.detach().numpy().ravel(), np.arange(9.0) + i)


def test_par_files_in_the_working_directory_give_the_kernel_weights(tmp_path, monkeypatch):
    """The earlier fork reads spatial.par and bilateral.par (fscanf, stopping at what does not
    parse; unread values stay 0); the crfrnn branch's strings take precedence."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spatial.par").write_text("3 3\n4.5")
    (tmp_path / "bilateral.par").write_text("5 x 7")
    crf = Net(parse_net_text(_fcn(2))).layers["inference1"]
    np.testing.assert_array_equal(crf.blobs[0].detach().numpy().reshape(3, 3), np.diag([3, 3, 4.5]))
    np.testing.assert_array_equal(crf.blobs[1].detach().numpy().reshape(3, 3), np.diag([5, 0, 0]))
    text = _fcn(2).replace("spatial_filter_weight: 3", 'spatial_filter_weights_str: "1 2 3"')
    crf = Net(parse_net_text(text)).layers["inference1"]
    np.testing.assert_array_equal(crf.blobs[0].detach().numpy().reshape(3, 3), np.diag([1, 2, 3]))


# ---- refusals --------------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    (("num_iterations: 2", "num_iterations: 1"), r"num_iterations must be greater than 1"),
    (("theta_beta: 2", ""), r"needs theta_beta \(required fields in the fork\)"),
    (("theta_gamma: 3", "theta_gamma: 0"), r"theta_gamma must be a nonzero finite number"),
])
def test_bad_parameters_are_refused_naming_the_layer(change, message):
    text = _layer_text(2).replace(*change)
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    with pytest.raises(ShapeError, match=rf"layer 'crf' \(MultiStageMeanfield\): .*{message}"):
        MultiStageMeanfield(lp, [(1, 3, 4, 4)] * 3, 1)


@pytest.mark.parametrize("weights, message", [
    ('"2 2.5"', "couldn't read 3 values"),
    ('"2  2.5 3"', "'' is not a number"),
    ('"2 a 3"', "'a' is not a number"),
    ('"2 1e60 3"', "out of float's range"),
])
def test_malformed_weight_strings_are_refused(weights, message):
    lp = text_format.Parse(_layer_text(2).replace('"2 2.5 3"', weights), caffe_pb2.LayerParameter())
    with pytest.raises(ValueError, match=rf"layer 'crf': multi_stage_meanfield_param."
                                         rf"spatial_filter_weights_str.*{message}"):
        MultiStageMeanfield(lp, [(1, 3, 4, 4)] * 3, 1)


@pytest.mark.parametrize("shapes, message", [
    ([(1, 3, 4, 4), (1, 3, 4, 5), (1, 3, 4, 4)], r"bottom 1 \(the Q initialisation\) must have"),
    ([(1, 3, 4, 4), (1, 3, 4, 4), (1, 2, 4, 4)], r"bottom 2 \(the image\) must be N x 3"),
    ([(1, 3, 4, 4), (1, 3, 4, 4), (1, 3, 8, 8)], r"bottom 2 \(the image\) must be N x 3"),
    ([(2, 3, 4, 4), (2, 3, 4, 4), (1, 3, 4, 4)], r"bottom 2 \(the image\) must be N x 3"),
    ([(1, 3, 4, 4, 1)] * 3, r"bottoms of at most 4 axes"),
])
def test_bad_bottoms_are_refused(shapes, message):
    lp = text_format.Parse(_layer_text(2), caffe_pb2.LayerParameter())
    with pytest.raises(ShapeError, match=rf"layer 'crf' \(MultiStageMeanfield\): {message}"):
        MultiStageMeanfield(lp, shapes, 1)


def test_two_bottoms_and_a_nan_image_are_refused():
    lp = text_format.Parse(_layer_text(2).replace(' bottom: "img"', ""), caffe_pb2.LayerParameter())
    with pytest.raises(ValueError, match=r"layer 'crf' \(MultiStageMeanfield\) takes exactly 3 bottom"):
        MultiStageMeanfield(lp, [(1, 3, 4, 4)] * 2, 1)
    layer = _layer(2, [(1, 3, 4, 4)] * 3)
    image = torch.zeros(1, 3, 4, 4)
    image[0, 1, 2, 2] = float("nan")
    with pytest.raises(LatticeError, match=r"layer 'crf': bilateral kernel of sample 0: .*NaN"):
        layer(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), image)
