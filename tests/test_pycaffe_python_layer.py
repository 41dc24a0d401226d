"""Python layers (type "Python"): a data layer without bottoms and a layer with a learnable
blob, imported from sys.path; their forward and backward run in caffe.Net, in runner.Net's
autograd graph, in runner/solve.py and in a pycaffe solver, checked against numpy."""
import textwrap

import numpy as np
import pytest
import torch

import caffe
from runner import Net
from runner.proto import read_caffemodel
from runner.solve import main as solve_main

LAYERS = '''
import numpy as np
import caffe


class Source(caffe.Layer):
    """Fixed inputs x (4 x 3) and targets t (4 x 2): a data layer without bottoms."""

    def setup(self, bottom, top):
        rng = np.random.default_rng(int(self.param_str))
        self.x = rng.normal(size=(4, 3)).astype(np.float32)
        self.t = rng.normal(size=(4, 2)).astype(np.float32)

    def reshape(self, bottom, top):
        top[0].reshape(4, 3)
        top[1].reshape(4, 2)

    def forward(self, bottom, top):
        top[0].data[...] = self.x
        top[1].data[...] = self.t


class Scale(caffe.Layer):
    """y = w * x, w a learnable scalar starting at float(param_str)."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[0] = float(self.param_str)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] += (top[0].diff * bottom[0].data).sum()
        if propagate_down[0]:
            bottom[0].diff[...] = self.blobs[0].data[0] * top[0].diff


class Broken(caffe.Layer):
    def setup(self, bottom, top):
        raise RuntimeError("setup refused")
'''

NET = """name: "py"
layer { name: "source" type: "Python" top: "x" top: "t"
  python_param { module: "toy_layers" layer: "Source" param_str: "3" } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 }
    bias_filler { type: "constant" value: 0.2 } } }
layer { name: "scale" type: "Python" bottom: "ip" top: "y"
  python_param { module: "toy_layers" layer: "Scale" param_str: "1.5" } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""


@pytest.fixture
def folder(tmp_path, monkeypatch):
    (tmp_path / "toy_layers.py").write_text(LAYERS)
    (tmp_path / "net.prototxt").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def reference(w, b, s, x, t):
    """Loss and gradients of the toy net, by hand."""
    ip = x @ w.T + b
    y = s * ip
    d_y = (y - t) / x.shape[0]
    d_ip = s * d_y
    return {"loss": ((y - t) ** 2).sum() / (2 * x.shape[0]), "w": d_ip.T @ x, "b": d_ip.sum(0),
            "s": (d_y * ip).sum()}


def data_of(seed=3):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(4, 3)).astype(np.float32).astype(np.float64),
            rng.normal(size=(4, 2)).astype(np.float32).astype(np.float64))


def test_pycaffe_forward_backward_through_python_layers(folder):
    net = caffe.Net("net.prototxt", caffe.TRAIN)
    assert net.layer_dict["scale"].type == "Python" and net.layers[0].param_str == "3"
    net.forward()
    net.backward()
    w, b = (p.data.astype(np.float64) for p in net.params["ip"])
    ref = reference(w, b, 1.5, *data_of())
    assert float(net.blobs["loss"].data) == pytest.approx(ref["loss"], rel=1e-5)
    np.testing.assert_allclose(net.params["ip"][0].diff, ref["w"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.params["ip"][1].diff, ref["b"], rtol=1e-5, atol=1e-6)
    assert net.params["scale"][0].diff[0] == pytest.approx(ref["s"], rel=1e-5)


def test_runner_net_runs_python_layers_as_autograd_nodes(folder):
    net = Net("net.prototxt", phase="TRAIN")
    blobs = net({})
    net.objective(blobs).backward()
    ip = net.layers["ip"]
    ref = reference(ip.blobs[0].detach().double().numpy(), ip.blobs[1].detach().double().numpy(),
                    1.5, *data_of())
    np.testing.assert_allclose(ip.blobs[0].grad.numpy(), ref["w"], rtol=1e-5, atol=1e-6)
    assert float(net.layers["scale"].blobs[0].grad) == pytest.approx(ref["s"], rel=1e-5)


def simulate_sgd(net, iters, lr):
    """Plain gradient descent on the toy net, in numpy."""
    w, b = (p.data.astype(np.float64).copy() for p in net.params["ip"])
    s = 1.5
    x, t = data_of()
    for _ in range(iters):
        g = reference(w, b, s, x, t)
        w, b, s = w - lr * g["w"], b - lr * g["b"], s - lr * g["s"]
    return w, b, s


def test_python_layers_train_in_solve_py_and_in_a_pycaffe_solver(folder):
    for prefix in ("runner", "pycaffe"):
        (folder / f"{prefix}_solver.prototxt").write_text(textwrap.dedent(f"""
            net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" momentum: 0 weight_decay: 0
            max_iter: 5 display: 0 random_seed: 1 snapshot_prefix: "{prefix}" """))
    caffe.set_random_seed(1)  # the solver's random_seed fills the same initial weights
    start = caffe.Net("net.prototxt", caffe.TRAIN)
    expected = simulate_sgd(start, 5, 0.1)
    assert solve_main(["runner_solver.prototxt"]) == 0
    trained = {lp.name: [np.array(b.data, np.float64).reshape(tuple(b.shape.dim)) for b in lp.blobs]
               for lp in read_caffemodel("runner_iter_5.caffemodel").layer}
    solver = caffe.SGDSolver("pycaffe_solver.prototxt")
    solver.step(5)
    got = [p.data for p in solver.net.params["ip"]] + [solver.net.params["scale"][0].data[0]]
    for ours, theirs, simulated in zip(got, trained["ip"] + [trained["scale"][0][0]], expected):
        np.testing.assert_array_equal(ours, np.float32(theirs))
        np.testing.assert_allclose(ours, simulated, rtol=1e-4, atol=1e-6)


def test_python_layer_errors_name_the_layer(folder):
    (folder / "bad.prototxt").write_text(NET.replace('"Scale"', '"Missing"'))
    with pytest.raises(ValueError, match="layer 'scale' \\(Python\\): module 'toy_layers' .* has no class 'Missing'"):
        caffe.Net("bad.prototxt", caffe.TRAIN)
    (folder / "bad.prototxt").write_text(NET.replace('module: "toy_layers" layer: "Scale"',
                                                     'module: "no_such_module" layer: "Scale"'))
    with pytest.raises(ValueError, match="layer 'scale' \\(Python\\): cannot import module "
                                         "'no_such_module' from the Python path"):
        caffe.Net("bad.prototxt", caffe.TRAIN)
    (folder / "bad.prototxt").write_text(NET.replace('"Scale"', '"Broken"'))
    with pytest.raises(RuntimeError, match="setup refused"):
        caffe.Net("bad.prototxt", caffe.TRAIN)
