"""LRN (both regions) against numpy transcriptions of Caffe's lrn_layer.cpp, BatchNorm's
running statistics and inference against Caffe's update rule, MVN forward/backward."""
import numpy as np
import pytest
import torch
from test_layers_pooling import caffe_pool_reference

from layer_helpers import layer_from_text

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def f32(*values):
    """Prototxt floats as the layer sees them (float fields hold float32)."""
    return [float(np.float32(v)) for v in values]


def lrn_across_reference(x, size, alpha, beta, k):
    """CrossChannelForward_cpu: zero-padded squares, running window sum over channels."""
    n, c, h, w = x.shape
    pre = (size - 1) // 2
    padded = np.zeros((n, c + size - 1, h, w))
    padded[:, pre:pre + c] = x * x
    scale = np.empty_like(x)
    scale[:, 0] = k + alpha / size * padded[:, :size].sum(axis=1)
    for ch in range(1, c):
        scale[:, ch] = scale[:, ch - 1] + alpha / size * (padded[:, ch + size - 1] - padded[:, ch - 1])
    return x * scale ** -beta


def lrn_within_reference(x, size, alpha, beta):
    """WithinChannelForward: split, square (Power), AVE pool (pad (n-1)/2), Power, Eltwise PROD."""
    pre = (size - 1) // 2
    pooled, _ = caffe_pool_reference(x * x, (size, size), (1, 1), (pre, pre), "AVE")
    return x * (1.0 + alpha * pooled) ** -beta


def lrn(params, shape):
    return layer_from_text(f'name: "norm" type: "LRN" lrn_param {{ {params} }}', [shape]).double()


@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1e-4, 0.75, 1.0), (3, 0.5, 0.6, 2.0), (1, 2.0, 1.0, 1.0)])
def test_lrn_across_channels_matches_caffe(size, alpha, beta, k):
    x = torch.randn(2, 7, 3, 4, dtype=torch.float64) * 3
    layer = lrn(f"local_size: {size} alpha: {alpha} beta: {beta} k: {k}", x.shape)
    np.testing.assert_allclose(layer(x)[0].numpy(), lrn_across_reference(x.numpy(), size, *f32(alpha, beta, k)),
                               rtol=1e-12)


@pytest.mark.parametrize("beta", [0.75, 0.6])
def test_lrn_float32_power_is_within_a_few_ulps(beta):
    """beta 0.75 takes rsqrt(s) * rsqrt(sqrt(s)), others torch.pow: both within 3e-7."""
    x = torch.randn(2, 9, 5, 5, dtype=torch.float64) * 30
    layer = layer_from_text(f'name: "norm" type: "LRN" lrn_param {{ local_size: 5 alpha: 0.01 beta: {beta} }}',
                            [x.shape])
    want = lrn_across_reference(x.numpy(), 5, *f32(0.01, beta, 1.0))
    np.testing.assert_allclose(layer(x.float())[0].double().numpy(), want, rtol=3e-7, atol=0)


def test_lrn_across_channels_keeps_channels_last():
    x = torch.randn(2, 7, 3, 4, dtype=torch.float64) * 3
    layer = lrn("local_size: 5 alpha: 0.01 beta: 0.75 k: 2", x.shape)
    (y,) = layer(x.contiguous(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(y.numpy(), layer(x)[0].numpy(), rtol=1e-15)


@pytest.mark.parametrize("size,alpha,beta", [(3, 1.0, 0.75), (5, 0.3, 0.5)])
def test_lrn_within_channel_matches_caffe(size, alpha, beta):
    x = torch.randn(2, 2, 6, 5, dtype=torch.float64) * 2
    layer = lrn(f"local_size: {size} alpha: {alpha} beta: {beta} k: 7 norm_region: WITHIN_CHANNEL", x.shape)
    (y,) = layer(x)
    assert tuple(y.shape) == layer.top_shapes[0] == tuple(x.shape)
    np.testing.assert_allclose(y.numpy(), lrn_within_reference(x.numpy(), size, *f32(alpha, beta)), rtol=1e-12)


def test_lrn_within_channel_by_hand():
    # one pixel of value 2 in a 1x1 image, local_size 3: the pooled square is 4 / 9
    x = torch.full((1, 1, 1, 1), 2.0, dtype=torch.float64)
    (y,) = lrn("local_size: 3 alpha: 0.9 beta: 0.5 norm_region: WITHIN_CHANNEL", x.shape)(x)
    assert y.item() == pytest.approx(2.0 * (1 + 0.9 * 4 / 9) ** -0.5, rel=1e-6)


def test_lrn_rejects_even_size():
    with pytest.raises(ValueError, match="odd"):
        lrn("local_size: 4", (1, 4, 2, 2))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_gradient_float64(region, device):
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    layer = lrn(f"local_size: 3 alpha: 0.7 beta: 0.75 k: 1.5 norm_region: {region}", x.shape).to(device)
    assert torch.autograd.gradcheck(lambda t: layer(t)[0], (x,))


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
@pytest.mark.parametrize("size,beta", [(5, 0.75), (1, 0.75), (3, 0.6)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_lrn_without_a_graph_gives_the_same_bits_and_leaves_its_input(region, size, beta, layout):
    """Without autograd the temporaries are reused in place: the values must not move."""
    x = (torch.randn(2, 6, 5, 4) * 4).contiguous(memory_format=layout)
    layer = layer_from_text(f'name: "norm" type: "LRN" lrn_param {{ local_size: {size} '
                            f'alpha: 0.3 beta: {beta} k: 1.5 norm_region: {region} }}', [x.shape])
    kept = x.clone()
    with torch.no_grad():
        (fast,) = layer(x)
    (graphed,) = layer(x.clone().requires_grad_())
    assert graphed.grad_fn is not None
    assert torch.equal(fast, graphed.detach()) and torch.equal(x, kept)


def batch_norm(params, shape):
    return layer_from_text(f'name: "bn" type: "BatchNorm" batch_norm_param {{ {params} }}', [shape]).double()


def test_batch_norm_statistics_over_two_train_batches():
    layer = batch_norm("moving_average_fraction: 0.9 eps: 1e-5", (4, 3, 2, 2)).train()
    assert not any(b.requires_grad for b in layer.blobs)
    batches = [torch.randn(4, 3, 2, 2, dtype=torch.float64) * 2 + 1 for _ in range(2)]
    outputs = [layer(x)[0] for x in batches]
    m = 4 * 2 * 2
    means = [x.mean(dim=(0, 2, 3)) for x in batches]
    variances = [x.var(dim=(0, 2, 3), unbiased=False) for x in batches]
    mean_acc, var_acc, s = layer.blobs
    assert s.item() == pytest.approx(0.9 * 1 + 1)
    assert torch.allclose(mean_acc, 0.9 * means[0] + means[1])
    assert torch.allclose(var_acc, 0.9 * variances[0] * m / (m - 1) + variances[1] * m / (m - 1))
    expected = (batches[1] - means[1][:, None, None]) / torch.sqrt(variances[1][:, None, None] + 1e-5)
    assert torch.allclose(outputs[1], expected)


def test_batch_norm_inference_uses_scaled_statistics():
    layer = batch_norm("eps: 0.001", (2, 3)).eval()
    with torch.no_grad():
        layer.blobs[0].copy_(torch.tensor([2.0, -4.0, 6.0]))
        layer.blobs[1].copy_(torch.tensor([8.0, 2.0, 4.0]))
        layer.blobs[2].fill_(2.0)
    x = torch.randn(2, 3, dtype=torch.float64)
    (y,) = layer(x)
    mean, var = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([4.0, 1.0, 2.0])
    assert torch.allclose(y, (x - mean) / torch.sqrt(var + 1e-3))
    assert layer.blobs[2].item() == 2.0  # no update at inference


def test_batch_norm_zero_scale_factor_gives_zero_statistics():
    layer = batch_norm("", (2, 3, 2, 2)).eval()
    with torch.no_grad():
        layer.blobs[0].fill_(5.0)
        layer.blobs[1].fill_(5.0)
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    assert torch.allclose(layer(x)[0], x / np.sqrt(1e-5))


def test_batch_norm_use_global_stats_overrides_mode():
    frozen = batch_norm("use_global_stats: true", (2, 2)).train()
    with torch.no_grad():
        frozen.blobs[2].fill_(1.0)
        frozen.blobs[1].fill_(1.0)
    x = torch.randn(2, 2, dtype=torch.float64)
    assert torch.allclose(frozen(x)[0], x / np.sqrt(1 + 1e-5))
    assert frozen.blobs[2].item() == 1.0
    live = batch_norm("use_global_stats: false", (3, 2)).eval()
    live(torch.randn(3, 2, dtype=torch.float64))
    assert live.blobs[2].item() == 1.0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradient_float64(training, device):
    layer = batch_norm("", (3, 2, 2, 2)).train(training).to(device)
    with torch.no_grad():
        layer.blobs[0].copy_(torch.tensor([0.5, -1.0]))
        layer.blobs[1].copy_(torch.tensor([2.0, 3.0]))
        layer.blobs[2].fill_(1.5)
    x = torch.randn(3, 2, 2, 2, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: layer(t)[0], (x,))


def mvn_reference(x, rows, eps, g):
    """Caffe's MVN forward and Backward_cpu on an (rows, dim) view."""
    flat = x.reshape(rows, -1)
    centred = flat - flat.mean(axis=1, keepdims=True)
    denom = np.sqrt((centred ** 2).mean(axis=1, keepdims=True)) + eps
    y = centred / denom
    gf = g.reshape(rows, -1)
    dx = (gf - gf.mean(axis=1, keepdims=True) - y * (gf * y).mean(axis=1, keepdims=True)) / denom
    return y.reshape(x.shape), dx.reshape(x.shape)


@pytest.mark.parametrize("across", [False, True])
def test_mvn_forward_and_caffe_backward(across):
    x = torch.randn(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    layer = layer_from_text(f'name: "m" type: "MVN" mvn_param {{ across_channels: {str(across).lower()} '
                            f'eps: 0.01 }}', [x.shape]).double()
    (y,) = layer(x)
    g = torch.randn_like(y)
    y.backward(g)
    rows = 2 if across else 6
    ref_y, ref_dx = mvn_reference(x.detach().numpy(), rows, *f32(0.01), g.numpy())
    np.testing.assert_allclose(y.detach().numpy(), ref_y, rtol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), ref_dx, rtol=1e-10, atol=1e-12)


def test_mvn_mean_only_and_gradient():
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    layer = layer_from_text('name: "m" type: "MVN" mvn_param { normalize_variance: false }', [x.shape]).double()
    assert torch.allclose(layer(x)[0], x - x.mean(dim=(2, 3), keepdim=True))
    exact = layer_from_text('name: "m" type: "MVN"', [x.shape]).double()
    assert torch.autograd.gradcheck(lambda t: exact(t)[0], (x,))
