"""RNN, LSTM and LSTMUnit against numpy transcriptions of Caffe's rnn_layer.cpp,
lstm_layer.cpp and lstm_unit_layer.cpp: gate order i, f, o, g, `cont` resets, state carried
between forwards, expose_hidden, static input, blob order, gradients and .caffemodel I/O."""
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from runner import Net
from layer_helpers import layer_from_text
from runner.proto import caffe_pb2, read_caffemodel


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def np_lstm_unit(c_prev, x, cont):
    """lstm_unit_layer.cpp Forward_cpu: returns c, h."""
    d = c_prev.shape[-1]
    i, o, g = sigmoid(x[..., :d]), sigmoid(x[..., 2 * d:3 * d]), np.tanh(x[..., 3 * d:])
    f = np.where(cont[..., None] == 0, 0, cont[..., None] * sigmoid(x[..., d:2 * d]))
    c = f * c_prev + i * g
    return c, o * np.tanh(c)


def np_lstm_unit_backward(c_prev, x, cont, c_diff, h_diff):
    """lstm_unit_layer.cpp Backward_cpu: returns c_prev_diff, x_diff."""
    d = c_prev.shape[-1]
    i, o, g = sigmoid(x[..., :d]), sigmoid(x[..., 2 * d:3 * d]), np.tanh(x[..., 3 * d:])
    f = np.where(cont[..., None] == 0, 0, cont[..., None] * sigmoid(x[..., d:2 * d]))
    c = f * c_prev + i * g
    tanh_c = np.tanh(c)
    c_term = c_diff + h_diff * o * (1 - tanh_c ** 2)
    x_diff = np.concatenate([c_term * g * i * (1 - i), c_term * c_prev * f * (1 - f),
                             h_diff * tanh_c * o * (1 - o), c_term * i * (1 - g * g)], -1)
    return c_term * f, x_diff


def np_lstm(x, cont, w_xc, b_c, w_hc, h0, c0, x_static=None, w_static=None):
    """The net lstm_layer.cpp unrolls, step by step: returns h (T x N x H), h_T, c_T."""
    h, c, hs = h0, c0, []
    x_proj = x.reshape(x.shape[0], x.shape[1], -1) @ w_xc.T + b_c
    for t in range(x.shape[0]):
        gates = (h * cont[t][None, :, None]) @ w_hc.T + x_proj[t:t + 1]
        if x_static is not None:
            gates = gates + (x_static.reshape(x.shape[1], -1) @ w_static.T)[None]
        c, h = np_lstm_unit(c, gates, cont[t:t + 1])
        hs.append(h)
    return np.concatenate(hs, 0), h, c


def np_rnn(x, cont, w_xh, b_h, w_hh, w_ho, b_o, h0):
    """The net rnn_layer.cpp unrolls: returns o (T x N x H) and h_T."""
    h, outs = h0, []
    x_proj = x.reshape(x.shape[0], x.shape[1], -1) @ w_xh.T + b_h
    for t in range(x.shape[0]):
        h = np.tanh((h * cont[t][None, :, None]) @ w_hh.T + x_proj[t:t + 1])
        outs.append(np.tanh(h @ w_ho.T + b_o))
    return np.concatenate(outs, 0), h


def recurrent_net(kind, T=4, N=3, D=5, H=6, expose=False, static=0):
    inputs = [("x", [T, N, D]), ("cont", [T, N])]
    if static:
        inputs.append(("x_static", [N, static]))
    hidden = ["h0", "c0"][:2 if kind == "LSTM" else 1] if expose else []
    inputs += [(name, [1, N, H]) for name in hidden]
    text = "".join(f'layer {{ name: "in_{n}" type: "Input" top: "{n}" '
                   f'input_param {{ shape {{ {" ".join(f"dim: {d}" for d in s)} }} }} }}\n'
                   for n, s in inputs)
    tops = ' top: "y"' + "".join(f' top: "{n}T"' for n in hidden)
    bottoms = "".join(f' bottom: "{n}"' for n, _ in inputs)
    text += (f'layer {{ name: "rec" type: "{kind}"{bottoms}{tops} recurrent_param {{ num_output: {H} '
             f'expose_hidden: {str(expose).lower()} weight_filler {{ type: "uniform" min: -0.5 max: 0.5 }} '
             'bias_filler { type: "uniform" min: -0.5 max: 0.5 } } }')
    return Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase="TRAIN").double()


def blobs_np(net):
    return [b.detach().numpy() for b in net.layers["rec"].blobs]


def test_lstm_unit_forward_and_caffes_backward_rule():
    rng = np.random.default_rng(0)
    c_prev, x = rng.normal(size=(1, 4, 3)), rng.normal(size=(1, 4, 12))
    cont = np.array([[1.0, 0.0, 0.5, 2.0]])  # 0.5 and 2: Caffe's f diff is not the true one
    layer = layer_from_text('type: "LSTMUnit" name: "u" top: "c" top: "h"',
                            [(1, 4, 3), (1, 4, 12), (1, 4)]).double()
    tc, tx = torch.tensor(c_prev, requires_grad=True), torch.tensor(x, requires_grad=True)
    c, h = layer(tc, tx, torch.tensor(cont))
    ref_c, ref_h = np_lstm_unit(c_prev, x, cont)
    np.testing.assert_allclose(c.detach().numpy(), ref_c, rtol=1e-12)
    np.testing.assert_allclose(h.detach().numpy(), ref_h, rtol=1e-12)
    c_diff, h_diff = rng.normal(size=(1, 4, 3)), rng.normal(size=(1, 4, 3))
    torch.autograd.backward([c, h], [torch.tensor(c_diff), torch.tensor(h_diff)])
    ref_cp, ref_x = np_lstm_unit_backward(c_prev, x, cont, c_diff, h_diff)
    np.testing.assert_allclose(tc.grad.numpy(), ref_cp, rtol=1e-12)
    np.testing.assert_allclose(tx.grad.numpy(), ref_x, rtol=1e-12)


def test_lstm_unit_gradient_check_with_binary_cont():
    rng = np.random.default_rng(1)
    layer = layer_from_text('type: "LSTMUnit" name: "u" top: "c" top: "h"',
                            [(1, 3, 2), (1, 3, 8), (1, 3)]).double()
    cont = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
    c = torch.tensor(rng.normal(size=(1, 3, 2)), requires_grad=True)
    x = torch.tensor(rng.normal(size=(1, 3, 8)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: layer(a, b, cont), (c, x))


def test_lstm_equals_hand_unrolled_numpy_with_cont_resets_and_carried_state():
    net = recurrent_net("LSTM")
    w_xc, b_c, w_hc = blobs_np(net)
    assert [w.shape for w in (w_xc, b_c, w_hc)] == [(24, 5), (24,), (24, 6)]
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 3, 5))
    cont = np.array([[0, 0, 0], [1, 1, 0], [1, 0, 1], [1, 1, 1]], dtype=float)
    zeros = np.zeros((1, 3, 6))
    out = net({"x": torch.tensor(x), "cont": torch.tensor(cont)})["y"].detach().numpy()
    ref, h_T, c_T = np_lstm(x, cont, w_xc, b_c, w_hc, zeros, zeros)
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)
    # the next forward starts from h_T, c_T where cont_1 is 1 (stream 0), fresh where 0
    cont2 = np.array([[1, 0, 1]] + [[1, 1, 1]] * 3, dtype=float)
    out2 = net({"x": torch.tensor(x), "cont": torch.tensor(cont2)})["y"].detach().numpy()
    ref2, _, _ = np_lstm(x, cont2, w_xc, b_c, w_hc, h_T, c_T)
    np.testing.assert_allclose(out2, ref2, rtol=1e-10, atol=1e-12)
    assert not np.allclose(out2[0, 0], out[0, 0])
    np.testing.assert_allclose(out2[0, 1], ref[0, 1], rtol=1e-10)  # cont 0: reset
    net.layers["rec"].reset()   # Caffe's RecurrentLayer::Reset: start again from zeros
    out3 = net({"x": torch.tensor(x), "cont": torch.tensor(cont2)})["y"].detach().numpy()
    np.testing.assert_allclose(out3, np_lstm(x, cont2, w_xc, b_c, w_hc, zeros, zeros)[0], rtol=1e-10)


def test_lstm_expose_hidden_and_static_input():
    net = recurrent_net("LSTM", expose=True, static=2)
    w_xc, b_c, w_static, w_hc = blobs_np(net)
    assert w_static.shape == (24, 2)
    rng = np.random.default_rng(3)
    feed = {"x": rng.normal(size=(4, 3, 5)), "cont": np.ones((4, 3)), "x_static": rng.normal(size=(3, 2)),
            "h0": rng.normal(size=(1, 3, 6)), "c0": rng.normal(size=(1, 3, 6))}
    blobs = net({k: torch.tensor(v) for k, v in feed.items()})
    ref, h_T, c_T = np_lstm(feed["x"], feed["cont"], w_xc, b_c, w_hc, feed["h0"], feed["c0"],
                            feed["x_static"], w_static)
    for name, want in (("y", ref), ("h0T", h_T), ("c0T", c_T)):
        np.testing.assert_allclose(blobs[name].detach().numpy(), want, rtol=1e-10, atol=1e-12)


def test_lstm_gradients_reach_x_static_and_weights_but_not_cont_or_exposed_state():
    net = recurrent_net("LSTM", T=3, N=2, D=3, H=2, expose=True, static=2)
    rng = np.random.default_rng(4)
    x = torch.tensor(rng.normal(size=(3, 2, 3)), requires_grad=True)
    xs = torch.tensor(rng.normal(size=(2, 2)), requires_grad=True)
    h0 = torch.tensor(rng.normal(size=(1, 2, 2)), requires_grad=True)
    c0 = torch.tensor(rng.normal(size=(1, 2, 2)), requires_grad=True)
    cont = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    layer = net.layers["rec"]
    weights = tuple(b.detach().clone().requires_grad_() for b in layer.blobs)

    def h(x, xs, *blobs):
        params = {f"blobs.{i}": b for i, b in enumerate(blobs)}
        return torch.func.functional_call(layer, params, (x, cont, xs, h0, c0))[0]

    assert torch.autograd.gradcheck(h, (x, xs, *weights))
    out = layer(x, cont, xs, h0, c0)
    (out[0].sum() + out[1].sum() * 10 + out[2].sum() * 10).backward()
    assert h0.grad is None and c0.grad is None   # Caffe shares data, not diffs, of h_0/c_0


def test_rnn_equals_hand_unrolled_numpy():
    net = recurrent_net("RNN", expose=True)
    w_xh, b_h, w_hh, w_ho, b_o = blobs_np(net)
    assert [w.shape for w in (w_xh, b_h, w_hh, w_ho, b_o)] == [(6, 5), (6,), (6, 6), (6, 6), (6,)]
    rng = np.random.default_rng(5)
    x, h0 = rng.normal(size=(4, 3, 5)), rng.normal(size=(1, 3, 6))
    cont = np.array([[0, 1, 1], [1, 1, 0], [1, 0, 1], [1, 1, 1]], dtype=float)
    blobs = net({"x": torch.tensor(x), "cont": torch.tensor(cont), "h0": torch.tensor(h0)})
    ref, h_T = np_rnn(x, cont, w_xh, b_h, w_hh, w_ho, b_o, h0)
    np.testing.assert_allclose(blobs["y"].detach().numpy(), ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(blobs["h0T"].detach().numpy(), h_T, rtol=1e-10, atol=1e-12)
    layer = net.layers["rec"]
    xt = torch.tensor(x, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: layer(v, torch.tensor(cont), torch.tensor(h0))[0], (xt,))


def test_recurrent_shape_errors_name_the_problem():
    with pytest.raises(ValueError, match="cont must be T x N"):
        layer_from_text('type: "LSTM" name: "l" recurrent_param { num_output: 2 }', [(3, 2, 4), (2, 3)])
    with pytest.raises(ValueError, match="num_output must be positive"):
        layer_from_text('type: "RNN" name: "l"', [(3, 2, 4), (3, 2)])


LSTM_TRAIN_NET = '''name: "seq"
layer { name: "x" type: "DummyData" top: "x" top: "target"
  dummy_data_param { shape { dim: 5 dim: 2 dim: 3 } shape { dim: 5 dim: 2 dim: 4 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 0.5 } } }
layer { name: "cont" type: "DummyData" top: "cont"
  dummy_data_param { shape { dim: 5 dim: 2 } data_filler { type: "constant" value: 1 } } }
layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
  recurrent_param { num_output: 4 weight_filler { type: "uniform" min: -0.1 max: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "target" top: "loss" }'''


def test_trained_lstm_caffemodel_saves_in_caffes_blob_order_and_reloads(tmp_path):
    from solver_helpers import make_solver
    solver = make_solver(LSTM_TRAIN_NET, tmp_path / "seq", max_iter=30, base_lr=0.5, weight_decay=0)
    before = [b.detach().clone() for b in solver.net.layers["lstm"].blobs]
    solver.solve()
    path = tmp_path / "seq_iter_30.caffemodel"
    saved = {lp.name: lp for lp in read_caffemodel(str(path)).layer}
    assert [list(b.shape.dim) for b in saved["lstm"].blobs] == [[16, 3], [16], [16, 4]]
    trained = solver.net.layers["lstm"].blobs
    assert any(not torch.equal(a, b) for a, b in zip(before, trained))
    deploy = Net(text_format.Parse(LSTM_TRAIN_NET, caffe_pb2.NetParameter()), phase="TEST",
                 weights=str(path))
    for a, b in zip(deploy.layers["lstm"].blobs, trained):
        assert torch.equal(a, b)
    resaved = tmp_path / "again.caffemodel"
    deploy.save_caffemodel(resaved)
    again = {lp.name: lp for lp in read_caffemodel(str(resaved)).layer}
    assert [b.SerializeToString() for b in again["lstm"].blobs] == \
        [b.SerializeToString() for b in saved["lstm"].blobs]


def test_rnn_with_static_input_saves_blobs_in_caffes_order_and_reloads(tmp_path):
    net = recurrent_net("RNN", static=2)
    path = tmp_path / "rnn.caffemodel"
    net.save_caffemodel(path)
    (saved,) = [lp for lp in read_caffemodel(str(path)).layer if lp.name == "rec"]
    # W_xh, b_h, W_xh_static, W_hh, W_ho, b_o: the order rnn_layer.cpp's unrolled net owns them
    assert [list(b.shape.dim) for b in saved.blobs] == [[6, 5], [6], [6, 2], [6, 6], [6, 6], [6]]
    again = recurrent_net("RNN", static=2)
    again.load_caffemodel(str(path))
    for a, b in zip(again.layers["rec"].blobs, net.layers["rec"].blobs):
        assert torch.equal(a, b)
    feed = {"x": torch.randn(4, 3, 5, dtype=torch.float64), "cont": torch.ones(4, 3, dtype=torch.float64),
            "x_static": torch.randn(3, 2, dtype=torch.float64)}
    assert torch.equal(again(feed)["y"], net(feed)["y"])
