"""caffe.Net: Caffe's blobs (Split blobs and in-place tops included), write-through numpy
views, Forward/Backward with Caffe's diff semantics against numpy-derived gradients,
partial passes, force_backward, phases, data layers, reshape and weight files."""
import h5py
import numpy as np
import pytest

import caffe

# data -> ip1 -> relu (in place) -> ip2 -> loss; data also feeds ip_skip (a Split),
# ip2 and ip_skip are summed by an Eltwise.
NET = """name: "small" {force}
layer {{ name: "input" type: "Input" top: "data" top: "target"
  input_param {{ shape {{ dim: 2 dim: 3 }} shape {{ dim: 2 dim: 2 }} }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param {{ num_output: 4 weight_filler {{ type: "gaussian" std: 0.5 }}
    bias_filler {{ type: "constant" value: 0.1 }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param {{ num_output: 2 weight_filler {{ type: "gaussian" std: 0.5 }} }} }}
layer {{ name: "ip_skip" type: "InnerProduct" bottom: "data" top: "skip"
  param {{ lr_mult: 0 }} inner_product_param {{ num_output: 2 bias_term: false
    weight_filler {{ type: "gaussian" std: 0.5 }} }} }}
layer {{ name: "sum" type: "Eltwise" bottom: "ip2" bottom: "skip" top: "out" }}
layer {{ name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "target" top: "loss" }}
"""


@pytest.fixture
def net_file(tmp_path):
    def write(force=False, text=NET):
        path = tmp_path / f"net{int(force)}.prototxt"
        path.write_text(text.format(force="force_backward: true" if force else ""))
        return str(path)
    return write


def numpy_pass(net, x, t):
    """The net's loss and its gradients, derived by hand in numpy."""
    w1, b1 = (b.data.astype(np.float64) for b in net.params["ip1"])
    w2, b2 = (b.data.astype(np.float64) for b in net.params["ip2"])
    (ws,) = (b.data.astype(np.float64) for b in net.params["ip_skip"])
    h = x @ w1.T + b1
    r = np.maximum(h, 0)
    out = r @ w2.T + b2 + x @ ws.T
    loss = ((out - t) ** 2).sum() / (2 * x.shape[0])
    d_out = (out - t) / x.shape[0]
    d_r = d_out @ w2
    d_h = d_r * (h > 0)
    return {"loss": loss, "w1": d_h.T @ x, "b1": d_h.sum(0), "w2": d_out.T @ r,
            "b2": d_out.sum(0), "ws": d_out.T @ x, "x": d_h @ w1 + d_out @ ws, "relu_out": r,
            "d_out": d_out}


def fill(net, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 3)).astype(np.float32)
    t = rng.normal(size=(2, 2)).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.blobs["target"].data[...] = t
    return x.astype(np.float64), t.astype(np.float64)


def test_blobs_layers_and_names_as_caffe_lays_them_out(net_file):
    net = caffe.Net(net_file(), caffe.TRAIN)
    assert list(net.blobs) == ["data", "target", "data_input_0_split_0", "data_input_0_split_1",
                               "ip1", "ip2", "skip", "out", "loss"]
    assert net._layer_names == ["input", "data_input_0_split", "ip1", "relu", "ip2", "ip_skip",
                                "sum", "loss"]
    assert net.layers[1].type == "Split" and net.layer_dict["relu"].type == "ReLU"
    assert net.top_names["relu"] == ["ip1"] and net.bottom_names["ip_skip"] == ["data_input_0_split_1"]
    assert net.inputs == ["data", "target"] and net.outputs == ["loss"]
    assert list(net.params) == ["ip1", "ip2", "ip_skip"]
    assert [b.shape for b in net.params["ip1"]] == [(4, 3), (4,)]
    assert net.blob_loss_weights["loss"] == 1 and net.blob_loss_weights["out"] == 0
    blob = net.blobs["data"]
    assert (blob.num, blob.channels, blob.count) == (2, 3, 6)


def test_data_writes_through_and_held_arrays_see_the_results(net_file):
    net = caffe.Net(net_file(), caffe.TRAIN)
    held = net.blobs["ip1"].data          # an array taken before forward
    x, t = fill(net)
    out = net.forward()
    ref = numpy_pass(net, x, t)
    assert out["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    np.testing.assert_allclose(held, ref["relu_out"], rtol=1e-5, atol=1e-6)  # in-place ReLU's value
    np.testing.assert_array_equal(net.blobs["data_input_0_split_1"].data, net.blobs["data"].data)
    net.params["ip2"][1].data[...] = 5.0  # a weight written through .data is used
    net.forward()
    assert net.blobs["loss"].data > ref["loss"] + 1


def test_backward_diffs_equal_the_numpy_gradient(net_file):
    net = caffe.Net(net_file(force=True), caffe.TRAIN)
    x, t = fill(net, seed=1)
    net.forward()
    diffs = net.backward()
    ref = numpy_pass(net, x, t)
    close = dict(rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(net.params["ip1"][0].diff, ref["w1"], **close)
    np.testing.assert_allclose(net.params["ip1"][1].diff, ref["b1"], **close)
    np.testing.assert_allclose(net.params["ip2"][0].diff, ref["w2"], **close)
    np.testing.assert_allclose(net.params["ip2"][1].diff, ref["b2"], **close)
    # force_backward reaches data through both Split tops: their diffs add up
    np.testing.assert_allclose(diffs["data"], ref["x"], **close)
    np.testing.assert_allclose(net.blobs["data"].diff,
                               net.blobs["data_input_0_split_0"].diff
                               + net.blobs["data_input_0_split_1"].diff, rtol=1e-6)
    # EuclideanLoss lets force_backward reach its second bottom too (AllowForceBackward)
    np.testing.assert_allclose(net.blobs["target"].diff, -ref["d_out"], **close)
    assert net.blobs["loss"].diff == 1  # Caffe keeps the loss weight in the loss top's diff


def test_parameter_diffs_accumulate_until_cleared(net_file):
    net = caffe.Net(net_file(), caffe.TRAIN)
    fill(net, seed=2)
    net.forward()
    net.backward()
    once = net.params["ip1"][0].diff.copy()
    held = net.params["ip1"][0].diff
    net.backward()
    np.testing.assert_allclose(net.params["ip1"][0].diff, 2 * once, rtol=1e-6)
    net.forward()
    net.backward()
    np.testing.assert_allclose(net.params["ip1"][0].diff, 3 * once, rtol=1e-6)
    net.clear_param_diffs()
    assert not held.any()
    # lr_mult 0: no diff is computed for ip_skip, and without force_backward none for data
    assert not net.params["ip_skip"][0].diff.any()
    assert not net.blobs["data"].diff.any()


def test_partial_forward_and_backward_by_layer_name(net_file):
    net = caffe.Net(net_file(), caffe.TRAIN)
    r = np.random.default_rng(3).normal(size=(2, 4)).astype(np.float32)
    net.blobs["ip1"].data[...] = r
    out = net.forward(start="ip2", end="ip2")
    w2, b2 = (b.data for b in net.params["ip2"])
    np.testing.assert_allclose(out["ip2"], r @ w2.T + b2, rtol=1e-5, atol=1e-6)
    g = np.random.default_rng(4).normal(size=(2, 2)).astype(np.float32)
    net.blobs["ip2"].diff[...] = g
    diffs = net.backward(start="ip2", end="ip2")   # no forward of ip2's graph needed
    np.testing.assert_allclose(diffs["ip1"], g @ w2, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no layer 'nope'"):
        net.forward(start="nope")


def test_forward_inputs_by_keyword_and_forward_all(net_file, tmp_path):
    net = caffe.Net(net_file(), caffe.TEST)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = np.zeros((2, 2), np.float32)
    with pytest.raises(Exception, match="Input is not batch sized"):
        net.forward(data=x[:1], target=t[:1])
    with pytest.raises(Exception, match="do not match net inputs"):
        net.forward(data=x)
    ref = numpy_pass(net, x.astype(np.float64), t.astype(np.float64))
    assert float(net.forward(data=x, target=t)["loss"]) == pytest.approx(ref["loss"], rel=1e-5)
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text("""input: "data" input_shape { dim: 2 dim: 3 }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }""")
    net = caffe.Net(str(deploy), caffe.TEST)
    xs = np.random.default_rng(5).normal(size=(5, 3)).astype(np.float32)
    outs = net.forward_all(data=xs)            # two full batches and one padded
    w, b = (p.data for p in net.params["ip"])
    np.testing.assert_allclose(outs["ip"], xs @ w.T + b, rtol=1e-5, atol=1e-6)
    diffs = net.forward_backward_all(data=xs, ip=np.ones((5, 2), np.float32))[1]
    assert diffs["data"].shape == (5, 3)


def test_phase_dropout_and_batchnorm_statistics(tmp_path):
    path = tmp_path / "phase.prototxt"
    path.write_text("""
layer { name: "d" type: "DummyData" top: "x" dummy_data_param { shape { dim: 4 dim: 3 dim: 5 dim: 5 }
  data_filler { type: "gaussian" } } }
layer { name: "drop" type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 0.5 } }
layer { name: "bn" type: "BatchNorm" bottom: "y" top: "z" }""")
    train, test = caffe.Net(str(path), caffe.TRAIN), caffe.Net(str(path), caffe.TEST)
    train.forward()
    y, x = train.blobs["y"].data, train.blobs["x"].data
    assert set(np.unique(y[x != 0] / x[x != 0]).round(4)) <= {0.0, 2.0}
    assert train.params["bn"][2].data[0] == 1  # the statistics count one TRAIN pass
    test.forward()
    np.testing.assert_array_equal(test.blobs["y"].data, test.blobs["x"].data)
    assert test.params["bn"][2].data[0] == 0


def test_data_layers_advance_once_per_forward_and_constant_tops_keep_writes(tmp_path):
    path = tmp_path / "dummy.prototxt"
    path.write_text("""
layer { name: "d" type: "DummyData" top: "x" top: "label"
  dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 }
    data_filler { type: "gaussian" } data_filler { type: "constant" } } }""")
    net = caffe.Net(str(path), caffe.TRAIN)
    net.blobs["label"].data[...] = [1, 2]     # before any forward, as Caffe users do
    net.forward()
    first = net.blobs["x"].data.copy()
    net.forward()
    assert not np.array_equal(first, net.blobs["x"].data)    # refilled each pass
    np.testing.assert_array_equal(net.blobs["label"].data, [1, 2])  # constant: filled once


def test_reshape_propagates_input_shapes(net_file):
    net = caffe.Net(net_file(), caffe.TEST)
    net.blobs["data"].reshape(5, 3)
    net.blobs["target"].reshape(5, 2)
    net.reshape()
    assert net.blobs["ip1"].shape == (5, 4) and net.blobs["out"].shape == (5, 2)
    assert net.blobs["data_input_0_split_0"].shape == (5, 3)
    net.forward()
    assert net.blobs["out"].data.shape == (5, 2)


def test_blob_reshape_refuses_what_caffes_blob_reshape_refuses(net_file):
    """Negative dimensions, and more than INT_MAX elements ("blob size exceeds INT_MAX"),
    named before any memory is asked for; the blob keeps its shape."""
    blob = caffe.Net(net_file(), caffe.TEST).blobs["data"]
    before = blob.shape
    with pytest.raises(ValueError, match=r"shape \[2, -1\] has a negative dimension"):
        blob.reshape(2, -1)
    with pytest.raises(ValueError, match=r"holds 100000000000000 elements, more than "
                                         r"Caffe's limit of 2147483647"):
        blob.reshape(100000, 1000, 1000, 1000)
    with pytest.raises(ValueError, match=r"shape has 33 axes, more than Caffe's limit of 32"):
        blob.reshape(*[1] * 33)
    with pytest.raises(TypeError, match=r"Blob.reshape takes integer dimensions, got \(1.5, 6\)"):
        blob.reshape(1.5, 6)           # pycaffe's bp::extract<int> refuses a float too
    assert blob.shape == before
    blob.reshape(np.int64(3), 6)       # numpy integers are integers
    assert blob.shape == (3, 6)


def test_a_batch_of_zero_runs_as_caffes_blobs_allow_it(tmp_path):
    """Caffe's Blob::Reshape takes 0 dimensions; a forward then gives empty tops."""
    path = tmp_path / "deploy.prototxt"
    path.write_text('''
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 1 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }''')
    net = caffe.Net(str(path), caffe.TEST)
    net.blobs["data"].reshape(0, 1, 8, 8)
    net.reshape()
    assert net.forward()["prob"].shape == (0, 3)
    net.blobs["data"].reshape(2, 1, 8, 8)
    net.reshape()
    assert net.forward()["prob"].shape == (2, 3)


def test_weights_save_copy_share_and_hdf5(net_file, tmp_path):
    net = caffe.Net(net_file(), caffe.TRAIN)
    model, h5 = str(tmp_path / "w.caffemodel"), str(tmp_path / "w.h5")
    net.save(model)
    net.save_hdf5(h5)
    legacy = caffe.Net(net_file(), model, caffe.TEST)
    named = caffe.Net(net_file(), phase=caffe.TEST, weights=model)
    fresh = caffe.Net(net_file(), caffe.TRAIN)
    fresh.load_hdf5(h5)
    for other in (legacy, named, fresh):
        for name in net.params:
            for a, b in zip(net.params[name], other.params[name]):
                np.testing.assert_array_equal(a.data, b.data)
    with h5py.File(h5) as f:
        assert sorted(f["data"]) == sorted(net._layer_names[:1] + ["ip1", "ip2", "ip_skip", "loss",
                                                                    "relu", "sum"])
        assert list(f["data/ip1"]) == ["0", "1"] and f["data/ip1/0"].shape == (4, 3)
    fresh.params["ip1"][0].data[...] = 7
    fresh.copy_from(model)
    np.testing.assert_array_equal(fresh.params["ip1"][0].data, net.params["ip1"][0].data)
    other = caffe.Net(net_file(), caffe.TEST)
    other.share_with(net)
    net.params["ip2"][0].data[...] = 3
    assert (other.params["ip2"][0].data == 3).all()
    with pytest.raises(RuntimeError, match="Could not open file"):
        caffe.Net(str(tmp_path / "missing.prototxt"), caffe.TEST)


def test_module_functions_layer_types_seed_and_mode(net_file, monkeypatch):
    types = caffe.layer_type_list()
    assert types == sorted(types)
    assert {"Data", "Input", "DummyData", "MemoryData", "Python", "Convolution", "Split"} <= set(types)
    caffe.set_random_seed(11)
    a = caffe.Net(net_file(), caffe.TRAIN).params["ip1"][0].data.copy()
    caffe.set_random_seed(11)
    b = caffe.Net(net_file(), caffe.TRAIN).params["ip1"][0].data
    np.testing.assert_array_equal(a, b)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(RuntimeError, match="sees no CUDA device"):
        caffe.set_mode_gpu()
    caffe.set_mode_cpu()
    assert caffe.TRAIN == 0 and caffe.TEST == 1 and caffe.__version__ == "1.0.0"
