"""InnerProduct on oneDNN (runner/layers/onednn_linear.py): the forward and every gradient
equal a float64 reference, and only the shapes it pays for take that path."""
import time

import pytest
import torch
import torch.nn.functional as F

from runner.layers import onednn_linear
from runner.layers.onednn_linear import MIN_ROWS, MIN_WEIGHT_ELEMENTS, linear, uses_onednn
from runner.net import Net
from runner.proto import parse_net_text

OUT, IN = 1024, 1024   # MIN_WEIGHT_ELEMENTS exactly


def operands(batch=8, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, IN, generator=gen, requires_grad=True)
    w = (torch.randn(OUT, IN, generator=gen) / IN ** 0.5).requires_grad_()
    b = torch.randn(OUT, generator=gen).requires_grad_() if bias else None
    return x, w, b


def relative_gap(a, reference):
    reference = reference.detach()
    return float((a.detach().double() - reference).abs().max() / reference.abs().max())


def test_this_torch_has_the_ops():
    assert onednn_linear._AVAILABLE


@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_gradients_equal_float64(bias):
    x, w, b = operands(bias=bias)
    assert uses_onednn(x, w, b)
    grad = torch.randn(8, OUT, generator=torch.Generator().manual_seed(1))
    y = linear(x, w, b)
    assert y.grad_fn is not None and "OneDnn" in type(y.grad_fn).__name__
    y.backward(grad)
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    bd = b.detach().double().requires_grad_() if bias else None
    yd = F.linear(xd, wd, bd)
    yd.backward(grad.double())
    assert relative_gap(y, yd) < 1e-6
    assert relative_gap(x.grad, xd.grad) < 1e-6
    assert relative_gap(w.grad, wd.grad) < 1e-6
    if bias:
        assert relative_gap(b.grad, bd.grad) < 1e-6


def test_only_the_needed_gradients_are_made():
    x, w, b = operands()
    x.requires_grad_(False)
    b.requires_grad_(False)
    linear(x, w, b).sum().backward()
    assert w.grad is not None and x.grad is None and b.grad is None


def test_no_grad_forward_is_the_same():
    x, w, b = operands()
    with torch.no_grad():
        y = linear(x, w, b)
    assert y.grad_fn is None
    assert relative_gap(y, F.linear(x.double(), w.double(), b.double()).detach()) < 1e-6


def test_shapes_that_do_not_pay_stay_on_f_linear():
    x, w, b = operands()
    assert not uses_onednn(x[:MIN_ROWS - 1], w, b)                 # batch too small
    small = w[:, : MIN_WEIGHT_ELEMENTS // OUT - 1].contiguous()
    assert not uses_onednn(x[:, : small.shape[1]], small, b)           # weight too small
    assert not uses_onednn(x.double(), w.double(), b.double())          # not float32
    assert not uses_onednn(x, w.t(), b)                                # transposed storage
    assert not uses_onednn(x.reshape(8, 2, IN // 2), w, b)             # not 2-D
    y = linear(x[:1], w, b)
    assert "OneDnn" not in type(y.grad_fn).__name__


@pytest.mark.parametrize("level", ["matmul", "mkldnn"])
def test_rounded_fp32_products_are_not_used(level):
    x, w, b = operands()
    where = torch.backends.mkldnn.matmul if level == "matmul" else torch.backends.mkldnn
    before = where.fp32_precision
    where.fp32_precision = "bf16"
    try:
        assert not uses_onednn(x, w, b)
    finally:
        where.fp32_precision = before
    assert uses_onednn(x, w, b)


NET = """
input: "data" input_shape { dim: 8 dim: 16 dim: 8 dim: 8 }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 1024 weight_filler { type: "gaussian" std: 0.01 }
                        bias_filler { type: "constant" value: 0.1 } } }
"""


def test_an_inner_product_layer_takes_the_path_and_matches_float64():
    net = Net(parse_net_text(NET), phase="TRAIN")
    x = torch.randn(8, 16, 8, 8)
    top = net({"data": x})["ip"]
    assert "OneDnn" in type(top.grad_fn).__name__
    w, b = net.layers["ip"].blobs
    reference = x.double().reshape(8, -1) @ w.detach().double().t() + b.detach().double()
    assert relative_gap(top, reference) < 1e-6


def test_disabled_runs_f_linear_and_restores():
    x, w, b = operands()
    with onednn_linear.disabled():
        assert not uses_onednn(x, w, b)
        assert "OneDnn" not in type(linear(x, w, b).grad_fn).__name__
    assert uses_onednn(x, w, b)


def test_torch_compile_traces_f_linear_and_matches_eager():
    torch._dynamo.reset()
    net = Net(parse_net_text(NET), phase="TRAIN")
    x = torch.randn(8, 16, 8, 8)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    top = compiled({"data": x})["ip"]
    top.sum().backward()
    grad = net.layers["ip"].blobs[0].grad.clone()
    net.zero_grad()
    eager = net({"data": x})["ip"]
    assert "OneDnn" in type(eager.grad_fn).__name__
    eager.sum().backward()
    assert relative_gap(top, eager.double()) < 1e-6
    assert relative_gap(grad, net.layers["ip"].blobs[0].grad.double()) < 1e-6


@pytest.fixture
def fresh_weight_gradient_choice(monkeypatch):
    """An empty choice cache, and kernels that can be replaced per test."""
    monkeypatch.setattr(onednn_linear, "_weight_gradient_choice", {})
    monkeypatch.setattr(onednn_linear, "WEIGHT_GRADIENT_KERNELS",
                        dict(onednn_linear.WEIGHT_GRADIENT_KERNELS))
    return onednn_linear.WEIGHT_GRADIENT_KERNELS


def _slowed(kernel, seconds):
    def slow(grad, x):
        time.sleep(seconds)
        return kernel(grad, x)
    return slow


@pytest.mark.parametrize("slow", ["oneDNN", "MKL"])
def test_the_faster_weight_gradient_kernel_is_chosen_once_per_shape(fresh_weight_gradient_choice, slow):
    kernels = fresh_weight_gradient_choice
    kernels[slow] = _slowed(kernels[slow], 0.02)
    gen = torch.Generator().manual_seed(2)
    grad, x = torch.randn(8, 64, generator=gen), torch.randn(8, 96, generator=gen)
    first = onednn_linear.weight_gradient(grad, x)
    assert torch.equal(first, onednn_linear._weight_gradient_onednn(grad, x))
    faster = "MKL" if slow == "oneDNN" else "oneDNN"
    key = ((8, 64), (8, 96), torch.get_num_threads())
    assert onednn_linear._weight_gradient_choice == {key: faster}
    calls = []
    kernels[faster] = lambda g, a, kernel=kernels[faster]: calls.append(1) or kernel(g, a)
    assert torch.equal(onednn_linear.weight_gradient(grad, x), first)
    assert calls == [1]
    onednn_linear.weight_gradient(grad[:4], x[:4])                      # another shape: timed anew
    assert len(onednn_linear._weight_gradient_choice) == 2


def test_a_kernel_with_other_bits_is_never_chosen(fresh_weight_gradient_choice):
    kernels = fresh_weight_gradient_choice
    kernels["oneDNN"] = _slowed(kernels["oneDNN"], 0.02)
    kernels["MKL"] = lambda grad, x: grad.t().mm(x) * (1 + 2 ** -20)   # faster, other bits
    gen = torch.Generator().manual_seed(3)
    grad, x = torch.randn(8, 64, generator=gen), torch.randn(8, 96, generator=gen)
    onednn_linear.weight_gradient(grad, x)
    assert list(onednn_linear._weight_gradient_choice.values()) == ["oneDNN"]


def test_the_weight_gradient_has_onednn_bits_whichever_library_runs():
    x, w, b = operands(batch=16)
    grad = torch.randn(16, OUT, generator=torch.Generator().manual_seed(4))
    for _ in range(2):                       # the first backward chooses, the second uses
        w.grad = None
        linear(x, w, b).backward(grad)
        assert torch.equal(w.grad, onednn_linear._weight_gradient_onednn(grad, x.detach()))
