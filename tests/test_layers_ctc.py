"""CRNN's CTC layers (CtcLoss, ContinuationIndicator, LabelsequenceAccuracy, as in BVLC's
warpctc_captcha example): CtcLoss against a float64 numpy transcription of warp-ctc's CPU
forward-backward (cpu_ctc.h: alphas, betas, the gradient per label) and the ports'
FlattenLabels and Forward/Backward; the other two against loops written from their C++; and a
small CRNN-shaped net that learns to read sequences with the solver."""
import h5py
import numpy as np
import pytest
import torch

from runner import Net
from runner.layers.common import LabelError
from runner.proto import parse_net_text
from runner.shapes import ShapeError

NEG_INF = -np.inf


def _logsumexp(*values):
    values = [v for v in values if v != NEG_INF]
    if not values:
        return NEG_INF
    top = max(values)
    return top + np.log(sum(np.exp(v - top) for v in values))


def warp_ctc_sample(acts: np.ndarray, labels: list[int], blank: int):
    """warp-ctc's cost and gradient (w.r.t. the activations) of one T x C sample, in float64;
    (0, zeros) where the labels cannot fit (L + repeats > T), whose gradient warp-ctc never
    writes."""
    T, C = acts.shape
    probs = np.exp(acts - acts.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    L = len(labels)
    repeats = sum(labels[i] == labels[i - 1] for i in range(1, L))
    if L + repeats > T:
        return 0.0, np.zeros_like(acts)
    S = 2 * L + 1
    ext = [blank if s % 2 == 0 else labels[s // 2] for s in range(S)]
    logp = np.log(probs)
    alphas = np.full((T, S), NEG_INF)
    alphas[0, 0] = logp[0, blank]
    if S > 1:
        alphas[0, 1] = logp[0, ext[1]]
    for t in range(1, T):
        for s in range(S):
            skip = alphas[t - 1, s - 2] if s >= 2 and ext[s] != blank and ext[s] != ext[s - 2] \
                else NEG_INF
            prev = _logsumexp(alphas[t - 1, s], alphas[t - 1, s - 1] if s >= 1 else NEG_INF, skip)
            alphas[t, s] = prev + logp[t, ext[s]] if prev != NEG_INF else NEG_INF
    loglike = _logsumexp(alphas[T - 1, S - 1], alphas[T - 1, S - 2] if S > 1 else NEG_INF)
    betas = np.full((T, S), NEG_INF)
    betas[T - 1, S - 1] = logp[T - 1, blank]
    if S > 1:
        betas[T - 1, S - 2] = logp[T - 1, ext[S - 2]]
    for t in range(T - 2, -1, -1):
        for s in range(S):
            skip = betas[t + 1, s + 2] if s + 2 < S and ext[s] != blank and ext[s] != ext[s + 2] \
                else NEG_INF
            nxt = _logsumexp(betas[t + 1, s], betas[t + 1, s + 1] if s + 1 < S else NEG_INF, skip)
            betas[t, s] = nxt + logp[t, ext[s]] if nxt != NEG_INF else NEG_INF
    grad = np.empty_like(acts)
    for t in range(T):
        for c in range(C):
            occupancy = _logsumexp(*[alphas[t, s] + betas[t, s] for s in range(S) if ext[s] == c])
            grad[t, c] = probs[t, c] if occupancy == NEG_INF else \
                probs[t, c] - np.exp(occupancy - logp[t, c] - loglike)
    return -loglike, grad


def ports_ctc_loss(acts: np.ndarray, label: np.ndarray, blank: int):
    """The ports' CtcLoss: FlattenLabels (blank entries dropped anywhere in a row), warp-ctc
    per sample, top = sum / N, bottom diff = warp-ctc's gradients times the top's diff."""
    T, N, C = acts.shape
    costs, grads = [], np.zeros_like(acts, dtype=np.float64)
    for n in range(N):
        row = [int(v) for v in label[n] if int(v) != blank]
        cost, grads[:, n] = warp_ctc_sample(acts[:, n].astype(np.float64), row, blank)
        costs.append(cost)
    return sum(costs) / N, grads


def _ctc_net(T, N, C, L, blank, extra=""):
    return parse_net_text(f'''name: "ctc"
layer {{ name: "in" type: "Input" top: "x" top: "label"
  input_param {{ shape {{ dim: {T} dim: {N} dim: {C} }} shape {{ dim: {N} dim: {L} }} }} }}
layer {{ name: "loss" type: "CtcLoss" bottom: "x" bottom: "label" top: "loss" {extra}
  ctc_loss_param {{ alphabet_size: {C} time_step: {T} blank_label: {blank} }} }}
''')


def _ours(T, N, C, label, blank, acts, extra=""):
    net = Net(_ctc_net(T, N, C, label.shape[1], blank, extra))
    x = torch.from_numpy(acts).requires_grad_()
    out = net({"x": x, "label": torch.from_numpy(label)})
    net.objective(out).backward()
    return float(out["loss"].detach()), x.grad.numpy()


@pytest.mark.parametrize("blank", [0, 5])
def test_ctc_loss_equals_warp_ctc_with_blanks_repeats_and_an_unfittable_row(blank):
    T, N, C = 7, 5, 6
    acts = np.random.default_rng(blank).normal(0, 2, (T, N, C)).astype(np.float32)
    letters = [c for c in range(C) if c != blank]
    a, b, c = letters[:3]
    label = np.array([[a, b, c, blank],      # padded at the end
                      [a, blank, a, b],      # a blank inside the row is dropped too: a a b
                      [b, b, b, b],          # 4 repeats need 7 steps: fits exactly
                      [a, a, a, a],          # also 7 steps
                      [blank] * 4],          # an empty sequence: all blanks
                     dtype=np.float32)
    loss, grad = _ours(T, N, C, label, blank, acts)
    want_loss, want_grad = ports_ctc_loss(acts, label, blank)
    assert loss == pytest.approx(want_loss, rel=1e-5)
    np.testing.assert_allclose(grad, want_grad, atol=2e-5)
    # what cannot fit costs 0 and gets no gradient: 5 distinct labels with 2 repeats in 6 steps
    unfit = np.array([[a, a, b, b, c], [a, b, c, blank, blank]], dtype=np.float32)
    acts2 = acts[:6, :2].copy()
    loss, grad = _ours(6, 2, C, unfit, blank, acts2)
    want_loss, want_grad = ports_ctc_loss(acts2, unfit, blank)
    assert want_grad[:, 0].max() == 0 and loss == pytest.approx(want_loss, rel=1e-5)
    np.testing.assert_allclose(grad, want_grad, atol=2e-5)


def test_ctc_loss_is_the_mean_but_its_gradient_that_of_the_sum_times_loss_weight():
    """The ports' Backward scales warp-ctc's per-sample gradients by the top's diff alone,
    never dividing by N as the top does."""
    T, N, C = 5, 3, 4
    acts = np.random.default_rng(1).normal(size=(T, N, C)).astype(np.float32)
    label = np.array([[1, 2], [3, 0], [2, 2]], dtype=np.float32)
    loss, grad = _ours(T, N, C, label, 0, acts, extra="loss_weight: 2.5")
    want_loss, want_grad = ports_ctc_loss(acts, label, 0)
    assert loss == pytest.approx(want_loss, rel=1e-5)
    np.testing.assert_allclose(grad, 2.5 * want_grad, atol=5e-5)
    assert np.abs(grad).sum() > N * 0.5   # not the mean's N-times-smaller gradient


def test_ctc_loss_label_truncation_and_errors():
    T, N, C = 4, 2, 3
    acts = np.zeros((T, N, C), np.float32)
    # 1.9 reads as 1 (static_cast<int>), as the numpy loop does
    loss, _ = _ours(T, N, C, np.array([[1.9, 2], [2, 0]], np.float32), 0, acts)
    assert loss == pytest.approx(ports_ctc_loss(acts, np.array([[1, 2], [2, 0]]), 0)[0], rel=1e-6)
    net = Net(_ctc_net(T, N, C, 2, 0))
    with pytest.raises(LabelError, match=r"layer 'loss': label 3 is outside \[0, 3\)"):
        net({"x": torch.zeros(T, N, C), "label": torch.tensor([[1.0, 3.0], [1.0, 1.0]])})
    with pytest.raises(LabelError, match="every label is blank_label 0"):
        net({"x": torch.zeros(T, N, C), "label": torch.zeros(N, 2)})


@pytest.mark.parametrize("field, message", [
    ("alphabet_size: 4 time_step: 4", "alphabet_size 4 must equal the activations' T 4 and C 3"),
    ("alphabet_size: 3 time_step: 5", "time_step 5 and alphabet_size 3 must equal"),
    ("alphabet_size: 3 time_step: 4 blank_label: 3", r"blank_label 3 must be within \[0, 3\)"),
])
def test_ctc_loss_refuses_parameters_warp_ctc_would_misread(field, message):
    text = '''layer { name: "in" type: "Input" top: "x" top: "label"
      input_param { shape { dim: 4 dim: 2 dim: 3 } shape { dim: 2 dim: 2 } } }
    layer { name: "loss" type: "CtcLoss" bottom: "x" bottom: "label" top: "loss"
      ctc_loss_param { %s } }''' % field
    with pytest.raises(ShapeError, match=f"layer 'loss' \\(CtcLoss\\): ctc_loss_param.*{message}"):
        Net(parse_net_text(text))


def test_continuation_indicator_is_zero_at_the_first_step_then_one():
    net = Net(parse_net_text('''layer { name: "in" type: "Input" top: "x"
        input_param { shape { dim: 6 dim: 3 dim: 2 } } }
      layer { name: "cont" type: "ContinuationIndicator" bottom: "x" top: "cont"
        continuation_indicator_param { time_step: 6 axis: -2 } }'''))
    cont = net({"x": torch.randn(6, 3, 2)})["cont"]
    want = np.ones((6, 3), np.float32)
    want[0] = 0
    np.testing.assert_array_equal(cont.numpy(), want)


def labelsequence_accuracy(scores: np.ndarray, label: np.ndarray, blank: int) -> float:
    """The ports' Forward_cpu: max_element per step, GetLabelseqs, the label row without
    blanks, hit."""
    hits = 0
    for n in range(scores.shape[0]):
        prediction, prev = [], blank
        for t in range(scores.shape[1]):
            cur = int(np.argmax(scores[n, t]))
            if cur != prev and cur != blank:
                prediction.append(cur)
            prev = cur
        truth = [int(v) for v in label[n] if v != blank]
        hits += prediction == truth
    return hits / scores.shape[0]


def test_labelsequence_accuracy_equals_the_ports_loop():
    N, T, C, blank = 4, 6, 4, 3

    def path(*classes):
        return np.eye(C, dtype=np.float32)[list(classes)]

    scores = np.stack([path(1, 1, 3, 1, 2, 3),     # 1 1 2: a blank between the 1s keeps both
                       path(1, 1, 1, 2, 2, 3),     # 1 2: repeats merge
                       path(3, 0, 3, 3, 0, 0),     # 0 0
                       path(2, 2, 2, 2, 2, 2)])    # 2
    label = np.array([[1, 1, 2, 3], [1, 2, 3, 3], [0, 3, 0, 3], [1, 3, 3, 3]], np.float32)
    net = Net(parse_net_text(f'''layer {{ name: "in" type: "Input" top: "s" top: "label"
        input_param {{ shape {{ dim: {N} dim: {T} dim: {C} }} shape {{ dim: {N} dim: 4 }} }} }}
      layer {{ name: "acc" type: "LabelsequenceAccuracy" bottom: "s" bottom: "label" top: "acc"
        labelsequence_accuracy_param {{ blank_label: {blank} }} }}'''))
    got = float(net({"s": torch.from_numpy(scores), "label": torch.from_numpy(label)})["acc"])
    assert got == labelsequence_accuracy(scores, label, blank) == 0.75
    noisy = np.random.default_rng(4).normal(size=(N, T, C)).astype(np.float32) + 3 * scores
    got = float(net({"s": torch.from_numpy(noisy), "label": torch.from_numpy(label)})["acc"])
    assert got == labelsequence_accuracy(noisy, label, blank)


# ---- a CRNN-shaped net reads sequences ----------------------------------------------------------

CRNN = '''name: "crnn-tiny"
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label" include {{ phase: TRAIN }}
  hdf5_data_param {{ source: "{root}/train.txt" batch_size: 16 shuffle: true }} }}
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label" include {{ phase: TEST }}
  hdf5_data_param {{ source: "{root}/test.txt" batch_size: 32 }} }}
layer {{ name: "reshape" type: "Reshape" bottom: "data" top: "columns"
  reshape_param {{ shape {{ dim: 0 dim: {H} dim: {T} }} }} }}
layer {{ name: "permuted" type: "Permute" bottom: "columns" top: "permuted"
  permute_param {{ order: 2 order: 0 order: 1 }} }}
layer {{ name: "indicator" type: "ContinuationIndicator" bottom: "permuted" top: "indicator"
  continuation_indicator_param {{ time_step: {T} axis: 1 }} }}
layer {{ name: "lstm" type: "LSTM" bottom: "permuted" bottom: "indicator" top: "lstm"
  recurrent_param {{ num_output: 24 weight_filler {{ type: "xavier" }}
    bias_filler {{ type: "constant" value: 0 }} }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "lstm" top: "fc"
  inner_product_param {{ num_output: {C} axis: 2 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "ctc_loss" type: "CtcLoss" bottom: "fc" bottom: "label" top: "ctc_loss"
  ctc_loss_param {{ blank_label: {blank} alphabet_size: {C} time_step: {T} }} }}
layer {{ name: "permute_fc" type: "Permute" bottom: "fc" top: "permuted_fc"
  include {{ phase: TEST }} permute_param {{ order: 1 order: 0 order: 2 }} }}
layer {{ name: "accuracy" type: "LabelsequenceAccuracy" bottom: "permuted_fc" bottom: "label"
  top: "accuracy" include {{ phase: TEST }} labelsequence_accuracy_param {{ blank_label: {blank} }} }}
'''


def _sequences(rng, count, H, T, blank, max_len=3):
    """Images of T columns, each a one-hot class (of H) or empty, and their label rows: the
    classes left to right, padded with blank."""
    data = rng.normal(0, 0.1, (count, 1, H, T)).astype(np.float32)
    label = np.full((count, max_len), blank, np.float32)
    for i in range(count):
        classes = rng.integers(0, H, rng.integers(1, max_len + 1))
        columns = np.sort(rng.choice(T // 2, len(classes), replace=False)) * 2
        for j, (c, col) in enumerate(zip(classes, columns)):
            data[i, 0, c, col:col + 2] += 1
            label[i, j] = c
    return data, label


def test_a_crnn_shaped_net_learns_to_read_sequences(tmp_path):
    H, T, blank = 5, 8, 5
    rng = np.random.default_rng(0)
    for split, count in (("train", 256), ("test", 32)):
        data, label = _sequences(rng, count, H, T, blank)
        with h5py.File(tmp_path / f"{split}.h5", "w") as f:
            f["data"], f["label"] = data, label
        (tmp_path / f"{split}.txt").write_text(str(tmp_path / f"{split}.h5"))
    from solver_helpers import make_solver

    text = CRNN.format(root=tmp_path, H=H, T=T, C=H + 1, blank=blank)
    solver = make_solver(text, tmp_path / "s", base_lr=0.01, max_iter=300, weight_decay=0,
                         type='"Adam"', momentum=0.9, test_iter=1, test_interval=300,
                         test_initialization="false")
    solver.solve()
    iteration, _, means = solver.scores[-1]
    assert iteration == 300 and means["accuracy"][0] > 0.8, means
