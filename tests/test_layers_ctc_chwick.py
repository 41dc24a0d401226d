"""ChWick/caffe's ctc branch (CTCLoss, CTCGreedyDecoder, Reverse): CTCLoss against a
scalar-loop transcription of its ctc_loss_layer.cpp (sequence and label lengths,
PopulateLPrimes, Graves' forward and backward variables with its LogSumExp, the loss at
t = 0, CalculateGradient) in both alignment graphs, and against torch's own CTC loss where
the two agree (ctc_merge_repeated); the decoder and Reverse against loops written from
their C++; and a BLSTM net shaped like the branch's dummy example that learns with the
solver."""
import math

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from runner import Net
from runner.layers.common import LabelError
from runner.proto import parse_net_text
from runner.shapes import ShapeError

F = np.float32
LOG_ZERO = -math.inf


def log_sum_exp(a, b):
    if a == LOG_ZERO and b == LOG_ZERO:
        return LOG_ZERO
    return a + math.log1p(math.exp(b - a)) if a > b else b + math.log1p(math.exp(a - b))


def ref_ctc_loss(acts, cont, labels, blank=-1, delay=0, collapse=False, merge=True):
    """CTCLossLayer::Forward_cpu and Backward_cpu, loop by loop: (top, bottom diff)."""
    T, N, C = acts.shape
    blank = C - 1 if blank < 0 else blank
    loss, diff = F(0), np.zeros_like(acts)
    for b in range(N):
        seq_len = T
        for t in range(1, T):
            if int(cont[t, b] + 0.5) == 0:
                seq_len = t
                break
        label_len = T
        for t in range(T):
            if labels[t, b] < 0:
                label_len = t
                break
        if label_len == 0:
            continue
        l = []
        for i in range(label_len):
            if i == 0 or not collapse or labels[i, b] != labels[i - 1, b]:
                k = int(labels[i, b] + 0.5)
                if k < C and k != blank:
                    l.append(k)
        lp = [blank]
        for k in l:
            lp += [k, blank]
        U, bT = len(lp), seq_len - delay
        y = np.zeros((seq_len, C), F)
        for t in range(seq_len):
            m = max(acts[t, b])
            e = [F(math.exp(F(v - m))) for v in acts[t, b]]
            s = F(0)
            for v in e:
                s = F(s + v)
            y[t] = [F(v / s) for v in e]
        alpha = [[LOG_ZERO] * bT for _ in range(U)]
        alpha[0][0] = math.log(y[delay, blank])
        alpha[1][0] = math.log(y[delay, lp[1]])
        for t in range(1, bT):
            for u in range(max(0, U - 2 * (bT - t)), min(U, 2 * (t + 1))):
                s = alpha[u][t - 1] if merge or lp[u] == blank else LOG_ZERO
                if u > 0:
                    s = log_sum_exp(s, alpha[u - 1][t - 1])
                if u > 1 and lp[u] != blank and not (merge and lp[u] == lp[u - 2]):
                    s = log_sum_exp(s, alpha[u - 2][t - 1])
                alpha[u][t] = math.log(y[delay + t, lp[u]]) + s
        beta = [[LOG_ZERO] * bT for _ in range(U)]
        beta[U - 2][bT - 1] = beta[U - 1][bT - 1] = 0.0
        for t in range(bT - 2, -1, -1):
            for u in range(max(0, U - 2 * (bT - t)), min(U, 2 * (t + 1))):
                v = LOG_ZERO
                if merge or lp[u] == blank:
                    v = log_sum_exp(v, beta[u][t + 1] + math.log(y[delay + t + 1, lp[u]]))
                if u + 1 < U:
                    v = log_sum_exp(v, beta[u + 1][t + 1] + math.log(y[delay + t + 1, lp[u + 1]]))
                if u + 2 < U and lp[u] != blank and not (merge and lp[u] == lp[u + 2]):
                    v = log_sum_exp(v, beta[u + 2][t + 1] + math.log(y[delay + t + 1, lp[u + 2]]))
                beta[u][t] = v
        log_p = LOG_ZERO
        for u in range(U):
            log_p = log_sum_exp(log_p, alpha[u][0] + beta[u][0])
        loss = F(float(loss) - log_p)
        for t in range(bT):
            if log_p == LOG_ZERO:
                diff[delay + t, b] = y[delay + t]
                continue
            occupancy = [LOG_ZERO] * C
            for u in range(U):
                occupancy[lp[u]] = log_sum_exp(occupancy[lp[u]], alpha[u][t] + beta[u][t])
            for k in range(C):
                diff[delay + t, b, k] = y[delay + t, k] - math.exp(occupancy[k] - log_p)
    return F(loss / F(N)), diff


def _net(T, N, C, param="", extra=""):
    return parse_net_text(f'''name: "ctc"
layer {{ name: "in" type: "Input" top: "x" top: "cont" top: "label"
  input_param {{ shape {{ dim: {T} dim: {N} dim: {C} }} shape {{ dim: {T} dim: {N} }}
                 shape {{ dim: {T} dim: {N} }} }} }}
layer {{ name: "loss" type: "CTCLoss" bottom: "x" bottom: "cont" bottom: "label" top: "loss"
  {extra} ctc_loss_param {{ {param} }} }}''')


def _ours(acts, cont, labels, param="", extra=""):
    T, N, C = acts.shape
    net = Net(_net(T, N, C, param, extra))
    x = torch.from_numpy(acts).requires_grad_()
    out = net({"x": x, "cont": torch.from_numpy(cont), "label": torch.from_numpy(labels)})
    net.objective(out).backward()
    return float(out["loss"].detach()), x.grad.numpy()


def _case(seed, T=9, N=5, C=5):
    """Activations, indicators and labels with a sequence ended early by its indicator, a
    label row ended early, one ended by the blank, repeats, and an empty padding sample."""
    rng = np.random.default_rng(seed)
    acts = rng.normal(0, 1.5, (T, N, C)).astype(F)
    cont = np.ones((T, N), F)
    cont[0] = 0
    cont[7:, 1] = 0                      # sample 1: 7 steps
    cont[1:, 4] = 0                      # sample 4: padding, one step, no labels
    labels = np.full((T, N), -1, F)
    labels[:3, 0] = [0, 1, 1]            # a repeat
    labels[:2, 1] = [2.2, 3]             # 2.2 rounds to 2
    labels[:3, 2] = [1, 1, C - 1]        # the blank (last class) ends the sequence: 1 1
    labels[:4, 3] = [3, 0, 2, 3]
    return acts, cont, labels


@pytest.mark.parametrize("param, kwargs", [
    ("", {}),
    ("ctc_merge_repeated: false", {"merge": False}),
    ("preprocess_collapse_repeated: true", {"collapse": True}),
    ("output_delay: 1", {"delay": 1}),
    ("blank_index: 0 ctc_merge_repeated: false", {"blank": 0, "merge": False}),
])
def test_ctc_loss_equals_the_branch_loop_by_loop(param, kwargs):
    acts, cont, labels = _case(3)
    if kwargs.get("blank") == 0:
        labels = np.where(labels >= 0, labels + 1, labels)   # no label 0, which is the blank
    loss, grad = _ours(acts, cont, labels, param)
    want_loss, want_grad = ref_ctc_loss(acts, cont, labels, **kwargs)
    assert loss == pytest.approx(float(want_loss), rel=1e-5)
    np.testing.assert_allclose(grad, want_grad, atol=1e-5)
    assert np.abs(grad[:, 4]).max() == 0                     # the padding sample is skipped


def test_ctc_loss_with_merged_repeats_equals_torch_ctc_loss():
    """An independent check: with ctc_merge_repeated (the default) the loss is the usual
    CTC, which torch computes too; the branch sums the samples' gradients."""
    acts, cont, labels = _case(5)
    loss, grad = _ours(acts, cont, labels)
    T, N, C = acts.shape
    x = torch.from_numpy(acts).double().requires_grad_()
    lengths = [9, 7, 9, 9]
    targets = [[0, 1, 1], [2, 3], [1, 1], [3, 0, 2, 3]]
    costs = TF.ctc_loss(TF.log_softmax(x[:, :4], 2), torch.tensor(sum(targets, [])),
                        torch.tensor(lengths), torch.tensor([len(t) for t in targets]),
                        blank=C - 1, reduction="none")
    costs.sum().backward()
    assert loss == pytest.approx(float(costs.sum().detach()) / N, rel=1e-5)
    np.testing.assert_allclose(grad[:, :4], x.grad[:, :4].numpy(), atol=1e-5)


def test_ctc_loss_gradient_ignores_loss_weight_as_the_branch():
    acts, cont, labels = _case(7)
    loss1, grad1 = _ours(acts, cont, labels)
    loss3, grad3 = _ours(acts, cont, labels, extra="loss_weight: 3")
    assert loss1 == loss3
    np.testing.assert_array_equal(grad1, grad3)


@pytest.mark.parametrize("edit, message", [
    (lambda c, l: l.__setitem__((slice(0, 3), 0), [0, 4, 1]),
     "sample 0: label 1 follows a blank or out-of-range label"),
    (lambda c, l: l.__setitem__((slice(None), 1), -1),
     "sample 1 has no labels but a sequence of 7 steps"),
    (lambda c, l: l.__setitem__((slice(0, 8), 1), 0),
     "sample 1 has 8 labels for 7 steps less output_delay 0"),
    (lambda c, l: l.__setitem__((slice(0, 3), 0), [4, 4, -1]),
     "sample 0: every label is the blank 4"),
])
def test_ctc_loss_refuses_what_the_branch_checks(edit, message):
    acts, cont, labels = _case(1)
    edit(cont, labels)
    with pytest.raises(LabelError, match=f"layer 'loss': {message}"):
        _ours(acts, cont, labels)


def test_ctc_loss_refuses_bad_shapes_and_parameters():
    with pytest.raises(ValueError, match="output_delay must be >= 0"):
        Net(_net(4, 2, 3, "output_delay: -1"))
    with pytest.raises(ValueError, match="blank_index 3 must be below the 3 classes"):
        Net(_net(4, 2, 3, "blank_index: 3"))
    text = '''layer { name: "in" type: "Input" top: "x" top: "cont" top: "label"
      input_param { shape { dim: 4 dim: 2 dim: 3 } shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
    layer { name: "loss" type: "CTCLoss" bottom: "x" bottom: "cont" bottom: "label" top: "loss" }'''
    with pytest.raises(ShapeError, match=r"sequence indicators must be T x N = \[4, 2\], got \[4, 3\]"):
        Net(parse_net_text(text))


# ---- CTCGreedyDecoder and Reverse ------------------------------------------------------------

def ref_decode(scores, cont, blank, merge):
    T, N, C = scores.shape
    sequences, sums = [], []
    for n in range(N):
        out, prev, total = [], -1, F(0)
        for t in range(T):
            best, value = 0, scores[t, n, 0]
            for c in range(1, C):
                if scores[t, n, c] > value:
                    best, value = c, scores[t, n, c]
            total = F(total - value)
            if best != blank and not (merge and best == prev):
                out.append(best)
            prev = best
            if t + 1 == T or cont[t + 1, n] == 0:
                break
        sequences.append(out)
        sums.append(total)
    return sequences, sums


def _decoder(T, N, C, tops, targets=True, param=""):
    bottoms = 'bottom: "s" bottom: "cont"' + (' bottom: "label"' if targets else "")
    top_text = " ".join(f'top: "{t}"' for t in tops)
    return Net(parse_net_text(f'''layer {{ name: "in" type: "Input" top: "s" top: "cont" top: "label"
      input_param {{ shape {{ dim: {T} dim: {N} dim: {C} }} shape {{ dim: {T} dim: {N} }}
                     shape {{ dim: {T} dim: {N} }} }} }}
    layer {{ name: "dec" type: "CTCGreedyDecoder" {bottoms} {top_text} ctc_decoder_param {{ {param} }} }}
    layer {{ name: "quiet" type: "Silence" bottom: "label" }}'''))


@pytest.mark.parametrize("merge", [True, False])
def test_greedy_decoder_equals_the_branch(merge):
    acts, cont, labels = _case(11, T=9, N=5, C=5)
    net = _decoder(9, 5, 5, ["seq", "score", "acc"], param=f"ctc_merge_repeated: {str(merge).lower()}")
    out = net({"s": torch.from_numpy(acts), "cont": torch.from_numpy(cont),
               "label": torch.from_numpy(labels)})
    sequences, sums = ref_decode(acts, cont, 4, merge)
    want = np.full((5, 9), -1, F)
    for n, s in enumerate(sequences):
        want[n, :len(s)] = s
    np.testing.assert_array_equal(out["seq"].numpy().reshape(5, 9), want)
    np.testing.assert_array_equal(out["score"].numpy().ravel(), sums)
    assert out["acc"].shape == (1, 1, 1, 1)


def test_greedy_decoder_accuracy_by_hand():
    """Blank 2 (last of 3). Sample 0 decodes [0, 1] for the target [0, 1]: no error; sample 1
    decodes [1] for [0, 1, 1]: 2 edits over 3; sample 2 (one step, blank) decodes [] for []:
    skipped. Accuracy 1 - (0 + 2/3) / 3."""
    T, N, C = 4, 3, 3
    scores = np.zeros((T, N, C), F)
    for t, c in enumerate([0, 0, 2, 1]):
        scores[t, 0, c] = 1
    for t, c in enumerate([1, 1, 1, 2]):
        scores[t, 1, c] = 1
    scores[:, 2, 2] = 1
    cont = np.ones((T, N), F)
    cont[0] = 0
    cont[1:, 2] = 0
    labels = np.full((T, N), -1, F)
    labels[:2, 0] = [0, 1]
    labels[:3, 1] = [0, 1, 1]
    net = _decoder(T, N, C, ["seq", "acc"])
    out = net({"s": torch.from_numpy(scores), "cont": torch.from_numpy(cont),
               "label": torch.from_numpy(labels)})
    assert out["seq"].reshape(N, T).tolist() == [[0, 1, -1, -1], [1, -1, -1, -1], [-1] * 4]
    assert float(out["acc"]) == pytest.approx(1 - (2 / 3) / 3, rel=1e-6)


def test_greedy_decoder_top_counts_as_the_branch():
    with pytest.raises(ValueError, match="with two bottoms the tops are the sequences"):
        _decoder(3, 2, 3, ["a", "b", "c"], targets=False)
    net = _decoder(3, 2, 3, ["seq", "score"], targets=False)
    out = net({"s": torch.randn(3, 2, 3), "cont": torch.ones(3, 2), "label": torch.zeros(3, 2)})
    assert out["score"].shape == (2, 1, 1, 1)


def test_reverse_flips_its_axis_forward_and_backward():
    net = Net(parse_net_text('''layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 2 dim: 3 } } }
      layer { name: "rev" type: "Reverse" bottom: "x" top: "r" reverse_param { axis: 1 } }'''))
    x = torch.arange(24.0).reshape(4, 2, 3).requires_grad_()
    out = net({"x": x})["r"]
    want = np.stack([x.detach().numpy()[:, 1], x.detach().numpy()[:, 0]], 1)
    np.testing.assert_array_equal(out.detach().numpy(), want)
    grad = torch.randn(4, 2, 3)
    out.backward(grad)
    np.testing.assert_array_equal(x.grad.numpy()[:, 0], grad.numpy()[:, 1])
    for layer, message in (('top: "x" reverse_param { axis: 0 }', "does not allow in-place"),
                           ('top: "r" reverse_param { axis: 3 }', r"axis 3 must be within \[0, 3\)")):
        with pytest.raises(ShapeError, match=message):
            Net(parse_net_text('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 2 dim: 3 } } }'
                               f'layer {{ name: "rev" type: "Reverse" bottom: "x" {layer} }}'))


# ---- a BLSTM shaped like the branch's dummy example learns ---------------------------------

BLSTM = '''layer {{ name: "data" type: "HDF5Data" top: "data" top: "seq_ind" top: "labels"
  hdf5_data_param {{ source: "{root}/{split}.txt" batch_size: {T} }} include {{ phase: {phase} }} }}
'''
BODY = '''layer { name: "lstm1" type: "LSTM" bottom: "data" bottom: "seq_ind" top: "lstm1"
  recurrent_param { num_output: 24 weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" } } }
layer { name: "ip1" type: "InnerProduct" bottom: "lstm1" top: "ip1"
  inner_product_param { num_output: 6 axis: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "rev1" type: "Reverse" bottom: "data" top: "rev_data" }
layer { name: "lstm2" type: "LSTM" bottom: "rev_data" bottom: "seq_ind" top: "lstm2"
  recurrent_param { num_output: 24 weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" } } }
layer { name: "ip2" type: "InnerProduct" bottom: "lstm2" top: "ip2"
  inner_product_param { num_output: 6 axis: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "rev2" type: "Reverse" bottom: "ip2" top: "rev2" }
layer { name: "sum" type: "Eltwise" bottom: "ip1" bottom: "rev2" top: "sum" eltwise_param { operation: SUM } }
layer { name: "loss" type: "CTCLoss" bottom: "sum" bottom: "seq_ind" bottom: "labels" top: "ctc_loss" }
layer { name: "decoder" type: "CTCGreedyDecoder" bottom: "sum" bottom: "seq_ind" bottom: "labels"
  top: "decoded" top: "accuracy" include { phase: TEST } }
layer { name: "quiet" type: "Silence" bottom: "decoded" include { phase: TEST } }
'''


def _sequences(rng, blocks, T, N, classes):
    """`blocks` time-major blocks of N sequences: each class of its label shown for two steps
    (a one-hot feature), with a gap of noise between, the label row ending in -1."""
    data = rng.normal(0, 0.1, (blocks * T, N, classes)).astype(F)
    cont = np.ones((blocks * T, N), F)
    labels = np.full((blocks * T, N), -1, F)
    for b in range(blocks):
        cont[b * T] = 0
        for n in range(N):
            row = rng.integers(0, classes, rng.integers(1, 4))
            for j, c in enumerate(row):
                data[b * T + 3 * j: b * T + 3 * j + 2, n, c] += 1
                labels[b * T + j, n] = c
    return data, cont, labels


def test_a_blstm_with_the_branch_layers_learns_to_read_sequences(tmp_path):
    T, N, classes = 10, 16, 5       # 5 classes and the blank, the last of 6 outputs
    rng = np.random.default_rng(2)
    for split, blocks in (("train", 16), ("test", 2)):
        data, cont, labels = _sequences(rng, blocks, T, N, classes)
        with h5py.File(tmp_path / f"{split}.h5", "w") as f:
            f["data"], f["seq_ind"], f["labels"] = data, cont, labels
        (tmp_path / f"{split}.txt").write_text(str(tmp_path / f"{split}.h5"))
    from solver_helpers import make_solver

    text = ('name: "blstm-ctc"\n' + BLSTM.format(root=tmp_path, split="train", T=T, phase="TRAIN")
            + BLSTM.format(root=tmp_path, split="test", T=T, phase="TEST") + BODY)
    solver = make_solver(text, tmp_path / "s", base_lr=0.01, max_iter=300, weight_decay=0,
                         type='"Adam"', momentum=0.9, test_iter=2, test_interval=300,
                         test_initialization="false")
    solver.solve()
    iteration, _, means = solver.scores[-1]
    assert iteration == 300 and means["accuracy"][0] > 0.9, means
